import ArgumentParser
import Foundation
import Logging

@main
struct Tally: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tally",
        abstract: "Multi-tenant usage metering and billing pipeline.",
        subcommands: [
            DemoCommand.self, BrokerCommand.self, TopicsCommand.self, IngestCommand.self, ProcessCommand.self, TenantsCommand.self,
            ConsumeCommand.self, SinkCommand.self,
        ])
}

/// Options every subcommand shares.
struct CommonOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    /// Sends logs to standard error, keeping standard output for results.
    func bootstrapLogging() {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Writes a line to standard output at once (unbuffered), for progress and for scripts that
/// read it while the process still runs.
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

import ArgumentParser
import Foundation
import Logging
import Metering
import ProcessMemory
import ServiceLifecycle
import Sink
import Synchronization
import Tenancy
import UnixSignals
import UsageProcessing

/// `tally process`: the processors.
struct ProcessCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "process", abstract: "Run a processor as a consumer-group member.", subcommands: [Usage.self])

    struct Usage: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Compute the tenants' meters from `events` into their usage tables.",
            discussion: """
                Run any number of instances with the same --group: they share the partitions. Prints a \
                progress line at most once a second. SIGHUP reloads the tenants and meters files (a bad \
                file is refused and the previous configuration stays); SIGTERM or SIGINT finishes the \
                batch in hand and leaves the group.
                """)

        @OptionGroup var common: CommonOptions

        @Option(help: "Kafka bootstrap servers.")
        var bootstrap: String

        @Option(help: "Postgres connection string or URL of the Sink.")
        var postgres: String

        @Option(help: "Tenants file (time zones).")
        var tenants = "tenants.yaml"

        @Option(help: "Meters file.")
        var meters = "meters.yaml"

        @Option(help: "Consumer group.")
        var group = "usage"

        @Option(help: "Days an event may be late and still correct its window.")
        var graceDays = 7

        @Option(help: "Days event identities are kept for deduplication.")
        var dedupeDays = 32

        @Option(help: "Most records per poll.")
        var maxBatch = 5_000

        @Option(help: "While a backlog waits in its partitions that would fill it, records each commit lane merges in memory (one usage row per window) before it commits them as one; after such a full batch, the lane also merges the rest of the catch-up while more than a poll's records wait in its partitions.")
        var mergeRecords = 200_000

        @Option(help: "The most usage windows each commit lane merges in memory before it commits (bounds the memory of merging).")
        var mergeWindows = 250_000

        @Option(help: "Postgres connections committing batches side by side, each for its share of the partitions.")
        var commitLanes = 2

        @Option(help: "Records polled for a commit lane and not yet taken by it, past which its partitions pause until it is down to half.")
        var laneQueueLimit = 50_000

        @Option(name: .customLong("fold-interval-ms"), help: "Milliseconds between folds of the usage and stats logs into the keyed tables.")
        var foldIntervalMilliseconds = 1_000

        @Option(help: "Postgres connections a fold uses side by side, each folding its share of the logs' partitions.")
        var foldConnections = 2

        @Option(help: "Most seconds a fold waits while the processor catches up on a backlog.")
        var foldDeferralSeconds = 30

        @Option(help: "Usage rows that may wait in the Sink's usage log for a fold before the processor stops polling until one completes.")
        var maxUnfoldedRows = 4_000_000

        @Option(help: "Seconds without a heartbeat before the group gives a member's partitions to the others.")
        var sessionTimeout = 45

        func validate() throws {
            guard graceDays > 0, dedupeDays >= graceDays else { throw ValidationError("--grace-days must be positive and at most --dedupe-days") }
            guard maxBatch > 0, mergeRecords > 0, mergeWindows > 0, commitLanes > 0, laneQueueLimit > 0, foldConnections > 0, sessionTimeout > 0, foldIntervalMilliseconds > 0, maxUnfoldedRows > 0, foldDeferralSeconds >= 0 else {
                throw ValidationError(
                    "--max-batch, --merge-records, --merge-windows, --commit-lanes, --lane-queue-limit, --fold-connections, --session-timeout, --fold-interval-ms and --max-unfolded-rows must be positive, --fold-deferral-seconds not negative")
            }
        }

        func run() async throws {
            common.bootstrapLogging()
            ProcessMemory.mapLargeBlocksApart()
            let logger = Logger(label: "tally.process.usage")
            var configuration = UsageProcessorConfiguration(bootstrapServers: bootstrap)
            configuration.group = group
            configuration.grace = .seconds(graceDays * 86_400)
            configuration.dedupeHorizon = .seconds(dedupeDays * 86_400)
            configuration.maximumBatch = maxBatch
            configuration.mergedRecordsPerCommit = mergeRecords
            configuration.mergedWindowsPerCommit = mergeWindows
            configuration.commitLanes = commitLanes
            configuration.laneQueueLimit = laneQueueLimit
            configuration.foldInterval = .milliseconds(foldIntervalMilliseconds)
            configuration.foldDeferralLimit = .seconds(foldDeferralSeconds)
            configuration.foldConnections = foldConnections
            configuration.maximumUnfoldedRows = maxUnfoldedRows
            configuration.consumerProperties["session.timeout.ms"] = String(sessionTimeout * 1000)
            let lastLine = Mutex(ContinuousClock.now - .seconds(1))
            let processor = UsageProcessor(
                configuration: configuration, sink: SinkStore(conninfo: postgres), calculator: try loadCalculator(), logger: logger
            ) { progress in
                let due = lastLine.withLock { last in
                    guard last.duration(to: .now) >= .seconds(1) else { return false }
                    last = .now
                    return true
                }
                if due {
                    emit("committed \(progress.records) records: \(progress.events) events, \(progress.deadLetters) dead letters, \(progress.batches) batches")
                }
            }
            let reload = ReloadOnHangup(logger: logger) {
                processor.reconfigure(try loadCalculator())
            }
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [ProcessorService(processor: processor), reload], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
            logger.notice("usage processor stopped")
        }

        private func loadCalculator() throws -> UsageCalculator {
            let directory = try TenantDirectory.load(path: tenants)
            return UsageCalculator(catalog: try MeterCatalog.load(path: meters), timeZones: directory.tenants.mapValues(\.timeZone))
        }
    }
}

/// Runs a usage processor until graceful shutdown.
struct ProcessorService: Service {
    let processor: UsageProcessor

    func run() async throws {
        try await cancelWhenGracefulShutdown { try await processor.run() }
    }
}

/// Calls `reload` on every SIGHUP; a failure is logged and changes nothing.
struct ReloadOnHangup: Service {
    let logger: Logger
    let reload: @Sendable () throws -> Void

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            do {
                try reload()
                logger.notice("reloaded the configuration")
            } catch {
                logger.error("kept the previous configuration: \(error)")
            }
        }
    }
}

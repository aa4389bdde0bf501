import ArgumentParser
import Kafka
import Logging
import TopicCatalog

/// `tally topics …`: keep a cluster's topics in line with topics.yaml.
struct TopicsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topics", abstract: "Manage the topics declared in topics.yaml.",
        subcommands: [Apply.self, Validate.self])

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create missing topics and report drift.",
            discussion: "Exits 0 when every topic exists as declared, 3 when drift remains, 1 on errors.")

        @OptionGroup var common: CommonOptions

        @Option(help: "Kafka bootstrap servers (host:port,…).")
        var bootstrap: String

        @Option(help: "Topics file.")
        var file = "topics.yaml"

        @Flag(help: "Only report; create nothing.")
        var dryRun = false

        @Option(help: "Seconds to wait for each request to the cluster.")
        var timeout: Int = 30

        func run() async throws {
            common.bootstrapLogging()
            let catalog = try TopicCatalog.load(path: file)
            let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: bootstrap))
            let reports = try await TopicReconciler(admin: admin).apply(catalog, dryRun: dryRun, timeout: .seconds(timeout))
            await admin.close()
            reports.forEach { print($0.summary) }
            if reports.contains(where: { if case .failed = $0.status { true } else { false } }) { throw ExitCode.failure }
            if !reports.allSatisfy(\.isSettled) { throw ExitCode(3) }
        }
    }

    struct Validate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check a topics file without contacting Kafka.")

        @Option(help: "Topics file.")
        var file = "topics.yaml"

        func run() throws {
            let catalog = try TopicCatalog.load(path: file)
            print("\(file): \(catalog.topics.count) topics ok")
        }
    }
}

import ArgumentParser
import Foundation
import Kafka
import Logging
import ServiceLifecycle
import TopicCatalog

/// `tally broker`: the embedded Kafka broker for local runs and tests.
struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Run librdkafka's mock Kafka cluster on loopback with the topics of topics.yaml.",
        discussion: """
            Prints the bootstrap servers as the first line of standard output and writes them to \
            --bootstrap-file, then serves until SIGINT or SIGTERM. Contents live in memory only.
            """)

    @OptionGroup var common: CommonOptions

    @Option(help: "Number of mock brokers.")
    var brokers: Int32 = 3

    @Option(help: "Topics file to create topics from.")
    var topics = "topics.yaml"

    @Option(help: "File to write the bootstrap servers to.")
    var bootstrapFile = ".tally/bootstrap.servers"

    func validate() throws {
        guard (1...16).contains(brokers) else { throw ValidationError("--brokers must be between 1 and 16") }
    }

    func run() async throws {
        common.bootstrapLogging()
        let logger = Logger(label: "tally.broker")
        let catalog = try TopicCatalog.load(path: topics)
        let cluster = try MockCluster(brokers: brokers, logger: logger)
        defer { cluster.shutdown() }
        for topic in try cluster.createTopics(from: catalog) {
            logger.info("topic \(topic.name): \(topic.partitions) partitions, replication \(topic.replicationFactor)")
        }
        let fileURL = URL(fileURLWithPath: bootstrapFile)
        try FileManager.default.createDirectory(at: fileURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        try (cluster.bootstrapServers + "\n").write(to: fileURL, atomically: true, encoding: .utf8)
        emit(cluster.bootstrapServers)
        logger.info("serving \(brokers) brokers at \(cluster.bootstrapServers); bootstrap written to \(bootstrapFile)")

        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [UntilShutdown()], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("broker stopped")
    }
}

/// A service that only waits for graceful shutdown, keeping its process alive until then.
struct UntilShutdown: Service {
    func run() async throws {
        try? await gracefulShutdown()
    }
}

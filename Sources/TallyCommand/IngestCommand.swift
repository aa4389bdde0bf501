import ArgumentParser
import Events
import Foundation
import IngestGateway
import Logging
import TallySDK

/// `tally ingest`: the HTTP ingest gateway.
struct IngestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Serve the HTTP ingest gateway: POST /v1/events, /healthz, /readyz, /metrics.",
        discussion: """
            Prints `http://HOST:PORT` as the first line of standard output once listening. SIGHUP \
            reloads the tenants file (a bad file is refused and the previous one stays); SIGTERM or \
            SIGINT stops accepting, answers the requests in flight and flushes the producer.
            """)

    @OptionGroup var common: CommonOptions

    @Option(help: "Kafka bootstrap servers.")
    var bootstrap: String

    @Option(help: "Tenants file with API key hashes and rate limits.")
    var tenants = "tenants.yaml"

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on; 0 picks a free one.")
    var port = 8080

    @Option(help: "Largest request body in bytes.")
    var maxBodyBytes = 1 << 20

    @Option(help: "Most events in one batch request.")
    var maxBatchEvents = 1000

    @Option(help: "Seconds Kafka may take to acknowledge a request's events before it is answered 503.")
    var produceTimeout = 10.0

    @Option(help: "Oldest accepted event time, in days before now.")
    var maxEventAgeDays = 35

    @Option(help: "Topic to produce events to.")
    var topic = "events"

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0-65535") }
        guard maxBodyBytes > 0, maxBatchEvents > 0, produceTimeout > 0, maxEventAgeDays > 0 else {
            throw ValidationError("--max-body-bytes, --max-batch-events, --produce-timeout and --max-event-age-days must be positive")
        }
    }

    func run() async throws {
        common.bootstrapLogging()
        let logger = Logger(label: "tally.ingest")
        let registry = try TenantRegistry(path: tenants)
        var configuration = GatewayConfiguration()
        configuration.host = host
        configuration.port = port
        configuration.maximumBodyBytes = maxBodyBytes
        configuration.maximumBatchEvents = maxBatchEvents
        configuration.limits.maximumAge = .seconds(maxEventAgeDays * 86_400)
        var producerConfiguration = EventProducerConfiguration(bootstrapServers: bootstrap)
        producerConfiguration.topic = topic
        producerConfiguration.limits = configuration.limits
        producerConfiguration.deliveryTimeout = .seconds(produceTimeout)
        producerConfiguration.enqueueTimeout = .milliseconds(100)
        let gateway = IngestGateway(
            configuration: configuration, tenants: registry,
            producer: try EventProducer(configuration: producerConfiguration, logger: logger),
            probe: try BrokerProbe(bootstrapServers: bootstrap, topic: topic), logger: logger)
        let host = self.host
        let tenantCount = registry.directory.tenants.count
        let application = gateway.application { port in
            emit("http://\(host):\(port)")
            logger.notice("listening on \(host):\(port) for \(tenantCount) tenants")
        }
        try await application.runService()
        logger.notice("gateway stopped")
    }
}

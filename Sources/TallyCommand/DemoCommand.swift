import ArgumentParser
import Foundation
import Kafka
import LocalPostgres
import Logging
import Postgres
import ServiceLifecycle
import TopicCatalog

/// `tally demo`: the main job on embedded defaults.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run Tally locally: embedded broker, throwaway Postgres, and a smoke run through both.",
        discussion: """
            Starts the mock Kafka cluster with the topics of topics.yaml and a new PostgreSQL cluster, \
            produces tenant-keyed events, consumes them back as a consumer group, and writes per-tenant \
            counts to Postgres through COPY, checking every step. Everything is removed at the end \
            unless --keep-running is given.
            """)

    @OptionGroup var common: CommonOptions

    @Option(help: "Topics file.")
    var topics = "topics.yaml"

    @Option(help: "Events to produce.")
    var events = 20_000

    @Option(help: "Tenants to spread them over.")
    var tenants = 25

    @Flag(help: "Keep the broker and Postgres running until SIGINT or SIGTERM.")
    var keepRunning = false

    func validate() throws {
        guard events > 0, tenants > 0 else { throw ValidationError("--events and --tenants must be positive") }
    }

    func run() async throws {
        common.bootstrapLogging()
        let logger = Logger(label: "tally.demo")
        let catalog = try TopicCatalog.load(path: topics)
        let cluster = try MockCluster(brokers: 3, logger: logger)
        defer { cluster.shutdown() }
        try cluster.createTopics(from: catalog)
        emit("broker    \(cluster.bootstrapServers) (mock cluster, 3 brokers, topics: \(catalog.topics.map(\.name).joined(separator: ", ")))")

        emit("postgres  starting a throwaway cluster …")
        let postgres = try await LocalPostgresServer.start()
        do {
            emit("postgres  \(postgres.connectionString)")
            let perTenant = try await smokeRun(bootstrap: cluster.bootstrapServers, logger: logger)
            try await store(perTenant, in: postgres)
            if keepRunning {
                emit("running   press Ctrl-C to stop")
                try await ServiceGroup(
                    configuration: ServiceGroupConfiguration(
                        services: [UntilShutdown()], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
                ).run()
            }
        } catch {
            await postgres.destroy()
            throw error
        }
        await postgres.destroy()
        emit("done      broker and Postgres stopped")
    }

    /// Produces tenant-keyed events and reads them back; returns the count per tenant.
    private func smokeRun(bootstrap: String, logger: Logger) async throws -> [String: Int] {
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: bootstrap), logger: logger)
        let batchSize = 1_000
        var produced = 0
        while produced < events {
            let batch = (produced..<min(produced + batchSize, events)).map { sequence in
                let tenant = "tenant_\(sequence % tenants)"
                return ProducerRecord(
                    topic: "events", key: tenant, value: #"{"tenant":"\#(tenant)","sequence":\#(sequence)}"#,
                    headers: [KafkaHeader(name: "tenant", value: tenant), KafkaHeader(name: "type", value: "demo.smoke")])
            }
            for result in await producer.send(batch) { _ = try result.get() }
            produced += batch.count
            if produced % 5_000 == 0 || produced == events { emit("produce   \(produced)/\(events) acknowledged") }
        }
        await producer.close()

        let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(bootstrapServers: bootstrap, groupID: "demo-smoke"), logger: logger)
        try await consumer.subscribe(["events"])
        var perTenant: [String: Int] = [:]
        var lastSequence: [String: Int] = [:]
        var consumed = 0
        var reported = 0
        let deadline = ContinuousClock.now + .seconds(120)
        while consumed < events {
            guard ContinuousClock.now < deadline else { throw ValidationError("consumed only \(consumed) of \(events) events in 120 s") }
            let records = try await consumer.poll(maxRecords: 2_000, timeout: .milliseconds(500))
            var nextOffsets: [TopicPartition: Int64] = [:]
            for record in records {
                let tenant = record.header("tenant") ?? "?"
                let value = String(decoding: record.value ?? [], as: UTF8.self)
                let sequence = Int(value.split(separator: ":").last?.dropLast() ?? "") ?? -1
                guard sequence > lastSequence[tenant, default: -1] else {
                    throw ValidationError("tenant \(tenant): event \(sequence) arrived after \(lastSequence[tenant]!)")
                }
                lastSequence[tenant] = sequence
                perTenant[tenant, default: 0] += 1
                nextOffsets[record.topicPartition] = record.offset + 1
            }
            try await consumer.commit(nextOffsets)
            consumed += records.count
            if consumed - reported >= 5_000 || (consumed == events && reported != consumed) {
                reported = consumed
                emit("consume   \(consumed)/\(events) read in per-tenant order")
            }
        }
        await consumer.close()
        return perTenant
    }

    /// Writes the per-tenant counts with COPY and reads the total back.
    private func store(_ perTenant: [String: Int], in postgres: LocalPostgresServer) async throws {
        let connection = try await PostgresConnection.connect(postgres.connectionString)
        try await connection.execute(
            """
            CREATE SCHEMA IF NOT EXISTS tally_demo;
            CREATE TABLE IF NOT EXISTS tally_demo.smoke_counts (tenant text PRIMARY KEY, events bigint NOT NULL);
            TRUNCATE tally_demo.smoke_counts;
            """)
        let rows = perTenant.sorted { $0.key < $1.key }.map { [$0.key, String($0.value)] }
        try await connection.copy(into: "tally_demo.smoke_counts", columns: ["tenant", "events"], rows: rows)
        let summary = try await connection.query("SELECT count(*) AS tenants, sum(events) AS events FROM tally_demo.smoke_counts")
        let storedEvents = try summary[0].int64("events") ?? 0
        let storedTenants = try summary[0].int64("tenants") ?? 0
        await connection.close()
        guard storedEvents == events else { throw ValidationError("Postgres holds \(storedEvents) events, expected \(events)") }
        emit("sink      \(storedTenants) tenants, \(storedEvents) events in tally_demo.smoke_counts")
    }
}

import ArgumentParser
import Foundation
import Kafka
import LocalPostgres
import Logging
import Postgres
import ServiceLifecycle
import Sink
import Synchronization
import Tenancy
import TopicCatalog
import UsageProcessing

/// `tally demo`: the main job on embedded defaults.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run Tally locally: embedded broker, throwaway Postgres, and a smoke run through both.",
        discussion: """
            Starts the mock Kafka cluster with the topics of topics.yaml and a new PostgreSQL cluster, \
            produces tenant-keyed events, consumes them back as a consumer group, and commits per-tenant \
            counts through the Sink into each tenant's schema together with the consumed offsets, \
            checking every step. Everything is removed at the end unless --keep-running is given.
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
            try await produce(bootstrap: cluster.bootstrapServers, logger: logger)
            let sink = SinkStore(conninfo: postgres.connectionString)
            try await sink.prepare()
            try await consume(bootstrap: cluster.bootstrapServers, into: sink, logger: logger)
            try await report(sink, postgres)
            await sink.close()
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

    /// Produces tenant-keyed events, each acknowledged by the brokers.
    private func produce(bootstrap: String, logger: Logger) async throws {
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
    }

    /// Consumes the events as group `demo`, committing each batch's per-tenant counts (deltas
    /// the Sink adds to the stored window) and its
    /// offsets through the Sink, fenced by the ownership taken on assignment.
    private func consume(bootstrap: String, into sink: SinkStore, logger: Logger) async throws {
        let ownership = SinkOwnership(sink: sink, group: "demo")
        let consumer = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(bootstrapServers: bootstrap, groupID: "demo"), rebalanceListener: ownership,
            logger: logger)
        try await consumer.subscribe(["events"])
        let hour = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 / 3600).rounded(.down) * 3600)
        var lastSequence: [String: Int] = [:]
        var consumed = 0
        var reported = 0
        let deadline = ContinuousClock.now + .seconds(120)
        while consumed < events {
            guard ContinuousClock.now < deadline else { throw ValidationError("consumed only \(consumed) of \(events) events in 120 s") }
            let records = try await consumer.poll(maxRecords: 2_000, timeout: .milliseconds(500))
            guard !records.isEmpty else { continue }
            var positions: [LogPartition: CommittedPosition] = [:]
            var counts: [TenantID: Int64] = [:]
            for record in records {
                let tenantName = record.header("tenant") ?? "?"
                let value = String(decoding: record.value ?? [], as: UTF8.self)
                let sequence = Int(value.split(separator: ":").last?.dropLast() ?? "") ?? -1
                guard sequence > lastSequence[tenantName, default: -1] else {
                    throw ValidationError("tenant \(tenantName): event \(sequence) arrived after \(lastSequence[tenantName]!)")
                }
                lastSequence[tenantName] = sequence
                counts[try TenantID(tenantName), default: 0] += 1
                let partition = LogPartition(topic: record.topic, partition: record.partition)
                guard let epoch = ownership.epoch(of: partition) else { throw ValidationError("\(partition) is not owned") }
                positions[partition] = CommittedPosition(nextOffset: record.offset + 1, epoch: epoch)
            }
            let rows = counts.map { tenant, count in
                UsageRow(
                    tenant: tenant, meter: "demo_events", subject: "all", windowSize: .hour, windowStart: hour,
                    value: Decimal(count), eventCount: count, firstEventAt: hour, lastEventAt: hour)
            }
            try await sink.commit(SinkBatch(consumerGroup: "demo", positions: positions, usage: rows))
            consumed += records.count
            if consumed - reported >= 5_000 || (consumed == events && reported != consumed) {
                reported = consumed
                emit("consume   \(consumed)/\(events) read in per-tenant order and committed")
            }
        }
        await consumer.close()
    }

    /// Reads the committed state back from the tenant schemas and the offset store.
    private func report(_ sink: SinkStore, _ postgres: LocalPostgresServer) async throws {
        let connection = try await PostgresConnection.connect(postgres.connectionString)
        let summary = try await connection.query(
            "SELECT count(DISTINCT tenant) AS tenants, sum(event_count) AS events FROM tally.usage WHERE meter = 'demo_events'")
        await connection.close()
        let storedEvents = try summary[0].int64("events") ?? 0
        let storedTenants = try summary[0].int64("tenants") ?? 0
        let offsets = try await sink.offsets(group: "demo").values.reduce(0) { $0 + $1.nextOffset }
        guard storedEvents == events, offsets == events else {
            throw ValidationError("the tenant schemas hold \(storedEvents) events and the offsets \(offsets), expected \(events)")
        }
        emit("sink      \(storedTenants) tenant schemas hold \(storedEvents) events; offsets stored with them")
    }
}

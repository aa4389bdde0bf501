import ArgumentParser
import Events
import Foundation
import IngestGateway
import Kafka
import LocalPostgres
import Logging
import Metering
import Postgres
import ServiceLifecycle
import Sink
import TallySDK
import Tenancy
import TopicCatalog
import UsageProcessing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `tally demo`: the main job on embedded defaults.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run Tally locally: embedded broker, throwaway Postgres, gateway and usage processor, with events over HTTP.",
        discussion: """
            Starts the mock Kafka cluster with the topics of topics.yaml, a new PostgreSQL cluster, the \
            HTTP gateway and the usage processor; sends events for every tenant over HTTP (some requests \
            twice, as retries), waits until the processor committed them into the tenant schemas, and \
            checks that every event was counted once. Everything is removed at the end unless \
            --keep-running is given.
            """)

    @OptionGroup var common: CommonOptions

    @Option(help: "Topics file.")
    var topics = "topics.yaml"

    @Option(help: "Events to produce.")
    var events = 20_000

    @Option(help: "Tenants to spread them over.")
    var tenants = 25

    @Flag(help: "Keep the broker, Postgres, gateway and processor running until SIGINT or SIGTERM.")
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
        let workspace = FileManager.default.temporaryDirectory.appendingPathComponent("tally-demo-\(UUID().uuidString.prefix(8))").path
        do {
            emit("postgres  \(postgres.connectionString)")
            try FileManager.default.createDirectory(atPath: workspace, withIntermediateDirectories: true)
            let setup = try DemoSetup(tenants: tenants, directory: workspace)
            emit("tenants   \(tenants) tenants with API keys and meters in \(workspace) (tenants.yaml, meters.yaml, keys.txt)")
            try await runPipeline(setup, bootstrap: cluster.bootstrapServers, postgres: postgres, logger: logger)
        } catch {
            await postgres.destroy()
            try? FileManager.default.removeItem(atPath: workspace)
            throw error
        }
        await postgres.destroy()
        try? FileManager.default.removeItem(atPath: workspace)
        emit("done      gateway, processor, broker and Postgres stopped")
    }

    /// Runs the gateway and the usage processor, sends the events over HTTP, waits until they
    /// are committed, and checks what the tenant schemas hold.
    private func runPipeline(_ setup: DemoSetup, bootstrap: String, postgres: LocalPostgresServer, logger: Logger) async throws {
        var gatewayConfiguration = GatewayConfiguration()
        gatewayConfiguration.port = 0
        let gateway = IngestGateway(
            configuration: gatewayConfiguration, tenants: try TenantRegistry(path: setup.tenantsFile),
            producer: try EventProducer(configuration: EventProducerConfiguration(bootstrapServers: bootstrap), logger: logger),
            probe: try BrokerProbe(bootstrapServers: bootstrap, topic: "events"), logger: logger)
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        let sink = SinkStore(conninfo: postgres.connectionString)
        let processor = UsageProcessor(
            configuration: UsageProcessorConfiguration(bootstrapServers: bootstrap), sink: sink,
            calculator: UsageCalculator(catalog: try MeterCatalog.load(path: setup.metersFile), timeZones: [:]), logger: logger)
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [gateway.application { portSink.yield($0) }, ProcessorService(processor: processor)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next() else { throw ValidationError("the gateway did not start") }
            emit("gateway   http://127.0.0.1:\(port)/v1/events; usage processor running as group usage")
            do {
                let sent = try await setup.send(events: events, to: "http://127.0.0.1:\(port)")
                try await waitUntilCommitted(sent.records, sink: sink)
                try await report(sent, postgres: postgres)
            } catch {
                await group.triggerGracefulShutdown()
                throw error
            }
            if keepRunning {
                emit("running   gateway on port \(port), keys in \(setup.directory)/keys.txt; press Ctrl-C to stop")
            } else {
                await group.triggerGracefulShutdown()
            }
            try await tasks.waitForAll()
        }
        await sink.close()
    }

    private func waitUntilCommitted(_ records: Int, sink: SinkStore) async throws {
        let deadline = ContinuousClock.now + .seconds(300)
        var reported = -1
        while true {
            let committed = Int(try await sink.offsets(group: "usage").values.reduce(0) { $0 + $1.nextOffset })
            if committed != reported, committed == records || committed - reported >= 5_000 {
                reported = committed
                emit("process   \(committed)/\(records) records committed to the tenant schemas")
            }
            if committed >= records { return }
            guard ContinuousClock.now < deadline else { throw ValidationError("only \(committed) of \(records) records were committed in 300 s") }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// Checks the tenant schemas against what was sent and shows a sample.
    private func report(_ sent: DemoSetup.Sent, postgres: LocalPostgresServer) async throws {
        let db = try await PostgresConnection.connect(postgres.connectionString)
        let stats = try await db.query(
            "SELECT count(DISTINCT tenant) AS tenants, sum(counted)::bigint AS counted, sum(deduplicated)::bigint AS repeats FROM tally.event_stats_current")[0]
        let requests = try await db.query("SELECT sum(value)::bigint AS n FROM tally.usage_current WHERE meter = 'requests' AND window_size = 'day'")[0]
        let sample = try await db.query(
            """
            SELECT subject, group_key, value::text AS tokens FROM tenant_tenant_0.usage
            WHERE meter = 'tokens' AND window_size = 'day' ORDER BY value DESC, subject, group_key LIMIT 3
            """)
        await db.close()
        let counted = try stats.int64("counted") ?? 0
        let repeats = try stats.int64("repeats") ?? 0
        guard counted == sent.distinctEvents, repeats == sent.repeatedEvents, try requests.int64("n") == sent.distinctEvents else {
            throw ValidationError("the tenant schemas counted \(counted) events and \(repeats) repeats, expected \(sent.distinctEvents) and \(sent.repeatedEvents)")
        }
        emit("sink      \(try stats.int64("tenants") ?? 0) tenant schemas counted \(counted) events once each; \(repeats) retried events deduplicated")
        for row in sample {
            emit("sample    tenant_0 tokens today: \(try row.string("subject") ?? "") \(try row.string("group_key") ?? "") = \(try row.string("tokens") ?? "")")
        }
    }
}

/// The demo's tenants, keys and meters, written as the files a deployment would have.
private struct DemoSetup {
    struct Sent {
        var records = 0
        var distinctEvents: Int64 = 0
        var repeatedEvents: Int64 = 0
    }

    let directory: String
    let keys: [(tenant: String, key: String)]
    var tenantsFile: String { directory + "/tenants.yaml" }
    var metersFile: String { directory + "/meters.yaml" }

    init(tenants: Int, directory: String) throws {
        self.directory = directory
        keys = (0..<tenants).map { ("tenant_\($0)", APIKey.generate()) }
        try ("tenants:\n" + keys.map { "  - id: \($0.tenant)\n    api_keys: [\"\(APIKeyHash(hashing: $0.key))\"]\n" }.joined())
            .write(toFile: tenantsFile, atomically: true, encoding: .utf8)
        try keys.map { "\($0.tenant) \($0.key)" }.joined(separator: "\n").appending("\n").write(toFile: directory + "/keys.txt", atomically: true, encoding: .utf8)
        try ("meters:\n" + keys.map { tenant, _ in
            """
              - {tenant: \(tenant), name: requests, event_type: api.request, aggregation: count, windows: [hour, day]}
              - {tenant: \(tenant), name: tokens, event_type: api.request, aggregation: sum, value: tokens, group_by: [model], windows: [day, month]}
              - {tenant: \(tenant), name: users, event_type: api.request, aggregation: unique_count, value: user, windows: [day]}

            """
        }.joined()).write(toFile: metersFile, atomically: true, encoding: .utf8)
    }

    /// Posts `events` events as batches of up to 100 per tenant; every tenth request is sent
    /// twice, as a client retrying after a lost answer would.
    func send(events: Int, to baseURL: String) async throws -> Sent {
        var sent = Sent()
        var number = 0
        var requests = 0
        let now = Date().timeIntervalSince1970
        while number < events {
            for (tenant, key) in keys where number < events {
                let count = min(100, events - number)
                let tenantID = try TenantID(tenant)
                let bodies = (number..<(number + count)).map { index -> [UInt8] in
                    let data: JSONObject = [
                        "tokens": .integer(Int64(index % 997)), "model": .string(index % 3 == 0 ? "large" : "small"), "user": .string("u\(index % 20)"),
                    ]
                    let time = EventTime(date: Date(timeIntervalSince1970: now - Double(index % 3600)))
                    return UsageEvent(
                        id: "evt-\(index)", source: "/demo", type: "api.request", subject: "customer_\(index % 40)", time: time, tenant: tenantID,
                        data: data
                    ).jsonBytes()
                }
                var body: [UInt8] = [UInt8(ascii: "[")]
                for (position, event) in bodies.enumerated() {
                    if position > 0 { body.append(UInt8(ascii: ",")) }
                    body += event
                }
                body.append(UInt8(ascii: "]"))
                let attempts = requests % 10 == 9 ? 2 : 1
                for _ in 0..<attempts { try await post(body, key: key, to: baseURL) }
                requests += 1
                sent.records += count * attempts
                sent.distinctEvents += Int64(count)
                sent.repeatedEvents += Int64(count * (attempts - 1))
                number += count
                if number % 5_000 < count || number == events { emit("ingest    \(number)/\(events) events accepted over HTTP (\(requests) requests, every tenth sent twice)") }
            }
        }
        return sent
    }

    private func post(_ body: [UInt8], key: String, to baseURL: String) async throws {
        var request = URLRequest(url: URL(string: baseURL + "/v1/events")!)
        request.httpMethod = "POST"
        request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization")
        request.setValue("application/cloudevents-batch+json", forHTTPHeaderField: "Content-Type")
        request.httpBody = Data(body)
        let (data, response) = try await URLSession.shared.data(for: request)
        guard let status = (response as? HTTPURLResponse)?.statusCode, status == 202 else {
            throw ValidationError("the gateway answered \((response as? HTTPURLResponse)?.statusCode ?? 0): \(String(decoding: data, as: UTF8.self))")
        }
    }
}

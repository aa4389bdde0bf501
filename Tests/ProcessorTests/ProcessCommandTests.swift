import Events
import Foundation
import Kafka
import LocalPostgres
import Postgres
import Sink
import Subprocess
import Tenancy
import TestSupport
import Testing

/// `tally process usage` as a process: reloading its meters on SIGHUP, pruning dedupe state.
@Suite struct ProcessCommandTests {
    /// A Postgres and a mock cluster in this process with one-partition `events` and
    /// `events.dlq` topics, while `body` runs.
    func withPostgresAndBroker(_ body: (LocalPostgresServer, MockCluster) async throws -> Void) async throws {
        try await withLocalPostgres { server in
            let cluster = try MockCluster(brokers: 1)
            defer { cluster.shutdown() }
            try cluster.createTopic("events", partitions: 1, replicationFactor: 1)
            try cluster.createTopic("events.dlq", partitions: 1, replicationFactor: 1)
            try await body(server, cluster)
        }
    }

    /// `tally process usage` against them.
    func processArguments(_ server: LocalPostgresServer, _ cluster: MockCluster, tenants: String, meters: String, logLevel: String) -> Arguments {
        [
            "process", "usage", "--bootstrap", cluster.bootstrapServers, "--postgres", server.connectionString, "--tenants", tenants, "--meters",
            meters, "--log-level", logLevel,
        ]
    }

    @Test func aBadMetersFileIsRefusedWithItsLineAndTheRunningProcessorKeepsItsMeters() async throws {
        let tenantsFile = try temporaryFile(named: "tenants.yaml", contents: "tenants:\n  - id: acme\n")
        let metersFile = try temporaryFile(
            named: "meters.yaml", contents: "meters:\n  - {tenant: acme, name: requests, event_type: api.request, aggregation: count, windows: [day]}\n")
        let startup = try await TallyProcess.run([
            "process", "usage", "--bootstrap", "127.0.0.1:1", "--postgres", "host=/nonexistent", "--tenants", tenantsFile, "--meters",
            try temporaryFile(named: "bad.yaml", contents: "meters:\n  - {tenant: acme, name: x, event_type: t, aggregation: median}\n"),
        ])
        #expect(startup.status != 0)
        #expect(startup.errors.contains("bad.yaml:2:"), "\(startup.errors)")

        try await withPostgresAndBroker { server, cluster in
            let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers))
            defer { Task { await producer.close() } }
            func send(_ id: String) async throws {
                let event = UsageEvent(
                    id: id, source: "/s", type: "api.request", subject: "c1", time: .now(), tenant: try TenantID("acme"), data: ["tokens": .integer(5)])
                _ = try await producer.send(ProducerRecord(topic: "events", key: Array("acme".utf8), value: event.jsonBytes()))
            }
            let db = try await PostgresConnection.connect(server.connectionString)
            func waitForOffset(_ offset: Int64) async throws {
                let deadline = ContinuousClock.now + .seconds(60)
                while ContinuousClock.now < deadline {
                    if let rows = try? await db.query("SELECT next_offset FROM tally.offsets"), try rows.first?.int64("next_offset") == offset { return }
                    try await Task.sleep(for: .milliseconds(100))
                }
                throw TallyProcess.Failure(description: "offset \(offset) not committed in time")
            }
            let outcome = try await Subprocess.run(
                .path(TallyProcess.executable),
                arguments: processArguments(server, cluster, tenants: tenantsFile, meters: metersFile, logLevel: "notice"),
                input: .none, output: .discarded, error: .sequence
            ) { execution in
                var errors = execution.standardError.strings().makeAsyncIterator()
                func waitForLog(_ text: String) async throws -> String {
                    while let line = try await errors.next() { if line.contains(text) { return line } }
                    throw TallyProcess.Failure(description: "no log line with \(text)")
                }
                try await send("one")
                try await waitForOffset(1)
                try "meters:\n  - {tenant: acme, name: tokens, event_type: api.request, aggregation: sum, value: tokens\n"
                    .write(toFile: metersFile, atomically: true, encoding: .utf8)
                try execution.send(signal: Signal(rawValue: SIGHUP))
                let refusal = try await waitForLog("kept the previous configuration")
                #expect(refusal.contains("\(metersFile):"), "\(refusal)")
                try await send("two")
                try await waitForOffset(2)
                try "meters:\n  - {tenant: acme, name: tokens, event_type: api.request, aggregation: sum, value: tokens, windows: [day]}\n"
                    .write(toFile: metersFile, atomically: true, encoding: .utf8)
                try execution.send(signal: Signal(rawValue: SIGHUP))
                _ = try await waitForLog("reloaded the configuration")
                try await send("three")
                try await waitForOffset(3)
                try execution.send(signal: .terminate)
                while try await errors.next() != nil {}
            }
            #expect(outcome.terminationStatus.isSuccess)
            // The old meter counted the first two events (the bad file changed nothing), the new one the third.
            let rows = try await db.query("SELECT meter, value::text AS v FROM tenant_acme.usage ORDER BY meter")
            #expect(try rows.map { "\(try $0.string("meter")!)=\(try $0.string("v")!)" } == ["requests=2", "tokens=5"])
            await db.close()
        }
    }

    /// A processor prunes at start (then every 10 minutes) the identities past the dedupe
    /// horizon (`--dedupe-days`) and the distinct values of windows that ended before it (it
    /// is later than the grace plus a day), keeping the rest.
    @Test func theProcessorForgetsIdentitiesPastTheHorizonAndDistinctValuesOfClosedWindows() async throws {
        let tenantsFile = try temporaryFile(named: "tenants.yaml", contents: "tenants:\n  - id: acme\n")
        let metersFile = try temporaryFile(
            named: "meters.yaml", contents: "meters:\n  - {tenant: acme, name: users, event_type: api.request, aggregation: unique_count, value: user, windows: [day]}\n")
        try await withPostgresAndBroker { server, cluster in
            let sink = SinkStore(conninfo: server.connectionString)
            try await sink.prepare()
            await sink.close()
            let db = try await PostgresConnection.connect(server.connectionString)
            // Day windows starting 40 and 2 days ago (the horizon is 32 days); identities of 40 and 2 days ago.
            try await db.execute(
                """
                INSERT INTO tally.event_identities (tenant, source, event_id, event_time) VALUES
                    ('acme', '/s', 'old', now() - interval '40 days'), ('acme', '/s', 'recent', now() - interval '2 days');
                INSERT INTO tally.distinct_values (tenant, meter, subject, window_size, window_start, group_key, value_key) VALUES
                    ('acme', 'users', 'c1', 'day', date_trunc('day', now()) - interval '40 days', '', 'old'),
                    ('acme', 'users', 'c1', 'day', date_trunc('day', now()) - interval '2 days', '', 'recent');
                """)
            func remaining() async throws -> [String] {
                try await db.query(
                    "SELECT 'identity ' || event_id AS r FROM tally.event_identities UNION ALL SELECT 'value ' || value_key FROM tally.distinct_values ORDER BY 1"
                ).map { try $0.string("r")! }
            }
            let outcome = try await Subprocess.run(
                .path(TallyProcess.executable),
                arguments: processArguments(server, cluster, tenants: tenantsFile, meters: metersFile, logLevel: "warning"),
                input: .none, output: .discarded, error: .discarded
            ) { execution in
                let deadline = ContinuousClock.now + .seconds(60)
                while case let rows = try await remaining(), rows.count > 2 {
                    try #require(ContinuousClock.now < deadline, "the processor left \(rows)")
                    try await Task.sleep(for: .milliseconds(100))
                }
                try execution.send(signal: .terminate)
            }
            #expect(outcome.terminationStatus.isSuccess)
            #expect(try await remaining() == ["identity recent", "value recent"])
            await db.close()
        }
    }
}

import Foundation
import LocalPostgres
import Postgres
@testable import Sink
import Tenancy
import Testing
import TestSupport

/// Postgres takes a lock on every table partition a transaction writes, in one lock table
/// shared by all sessions (`max_locks_per_transaction` × connections entries, plus some slack).
/// A batch spanning more tenants than that must still commit, and its deltas still fold.
@Suite struct SinkLockTableTests {
    /// A lock table of 10 × 5 connections (+ 2 background processes) = 70 entries, plus slack.
    static let smallLockTable = [
        "max_locks_per_transaction = 10", "max_connections = 5", "max_worker_processes = 0", "max_wal_senders = 0", "autovacuum_max_workers = 1",
    ]

    @Test func aBatchOverMoreTenantsThanTheLockTableHoldsCommitsAndFolds() async throws {
        try await withLocalPostgres(settings: Self.smallLockTable) { server in
            let sink = SinkStore(conninfo: server.connectionString)
            try await sink.prepare()
            let tenants = try (0..<400).map { try TenantID("t\($0)") }
            // Registered by another store, so the committing one looks them up at its first commit.
            let registrar = sink.withOwnConnection()
            for tenant in tenants { try await registrar.ensureTenant(tenant) }
            await registrar.close()
            let hour = Date(timeIntervalSince1970: 1_764_288_000)
            let partition = LogPartition(topic: "events", partition: 0)
            func batch(_ number: Int64) -> SinkBatch {
                SinkBatch(
                    consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: number, epoch: 1)],
                    events: tenants.map { tenant in
                        CountedEvent(
                            tenant: tenant, source: "/api", id: "e1", time: hour,
                            usage: [
                                UsageRow(
                                    tenant: tenant, meter: "calls", subject: "s", windowSize: .hour, windowStart: hour, aggregation: .count, value: 1,
                                    total: 1, eventCount: 1, firstEventAt: hour, lastEventAt: hour),
                                UsageRow(
                                    tenant: tenant, meter: "users", subject: "s", windowSize: .hour, windowStart: hour, aggregation: .uniqueCount,
                                    value: 0, eventCount: 1, firstEventAt: hour, lastEventAt: hour, distinctValues: ["\"u1\""]),
                            ])
                    },
                    rejections: tenants.map { tenant in
                        RejectedInput(tenant: tenant, kind: .meter, meter: "tokens", source: "/api", eventID: "e1", time: hour, partition: partition, offset: number, reason: "data.tokens is missing")
                    })
            }
            _ = try await sink.acquire([partition], group: "usage")
            try await sink.commit(batch(1))
            try await sink.commit(batch(2))  // the same events again: deduplicated
            #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 800, complete: true))
            let db = try await PostgresConnection.connect(server.connectionString)
            for tenant in [tenants[0], tenants[199], tenants[399]] {
                let schema = quoteIdentifier(tenant.schemaName)
                let usage = try await db.query("SELECT meter, value::text AS v FROM \(schema).usage ORDER BY meter")
                #expect(try usage.map { try $0.string("meter")! } == ["calls", "users"])
                #expect(try usage.map { try $0.string("v")! } == ["1", "1"])
                let stats = try await db.query("SELECT counted, deduplicated FROM \(schema).event_stats")
                #expect(try stats.map { try $0.int64("counted")! } == [1])
                #expect(try stats.map { try $0.int64("deduplicated")! } == [1])
                #expect(try await db.query("SELECT count(*) AS n FROM \(schema).rejections")[0].int64("n") == 2)
                #expect(try await db.query("SELECT count(*) AS n FROM \(schema).seen_events")[0].int64("n") == 1)
                #expect(try await db.query("SELECT count(*) AS n FROM \(schema).usage_distinct")[0].int64("n") == 1)
            }
            #expect(try await sink.forgetEvents(before: hour.addingTimeInterval(1)) == 400)
            #expect(try await sink.offsets(group: "usage")[partition]?.nextOffset == 2)
            await db.close()
            await sink.close()
        }
    }

    /// Tenant migration 5 moves a tenant's identities, distinct values and rejections from its
    /// partitions to the keyed control tables: duplicates of events counted before it are still
    /// recognised, known distinct values are not counted again, and old rejections stay visible.
    @Test func aTenantMigratedFromItsPartitionsKeepsIdentitiesDistinctValuesAndRejections() async throws {
        try await withLocalPostgres { server in
            let sink = SinkStore(conninfo: server.connectionString)
            try await sink.prepare()
            let db = try await PostgresConnection.connect(server.connectionString)
            // acme as version 4 left it, with an identity, a distinct value and a rejection.
            try await db.execute(
                """
                CREATE SCHEMA tenant_acme;
                CREATE TABLE tenant_acme.schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
                """)
            for (version, sql) in SinkSchema.tenantMigrations where version <= 4 {
                try await db.execute(sql.replacingOccurrences(of: "{schema}", with: "tenant_acme").replacingOccurrences(of: "{tenant}", with: "'acme'"))
                try await db.query("INSERT INTO tenant_acme.schema_migrations (version) VALUES ($1)", [.int32(Int32(version))])
            }
            try await db.execute(
                """
                INSERT INTO tally.tenants (tenant_id, schema_name, reader_role, schema_version) VALUES ('acme', 'tenant_acme', 'tally_reader_acme', 4);
                INSERT INTO tally.seen_events VALUES ('acme', '/api', 'e1', '2025-11-28 00:00:05+00');
                INSERT INTO tally.usage_distinct VALUES ('acme', 'users', 's', 'hour', '2025-11-28 00:00:00+00', '', '"u1"');
                INSERT INTO tally.rejections (tenant, kind, meter, source, event_id, event_time, topic, partition, record_offset, reason)
                    VALUES ('acme', 'meter', 'tokens', '/api', 'e1', '2025-11-28 00:00:05+00', 'events', 0, 3, 'data.tokens is missing');
                """)
            let acme = try TenantID("acme")
            let hour = Date(timeIntervalSince1970: 1_764_288_000)
            func users(_ values: Set<String>) -> UsageRow {
                UsageRow(
                    tenant: acme, meter: "users", subject: "s", windowSize: .hour, windowStart: hour, aggregation: .uniqueCount, value: 0,
                    eventCount: 1, firstEventAt: hour, lastEventAt: hour, distinctValues: values)
            }
            try await sink.commit(
                SinkBatch(
                    consumerGroup: "usage", positions: [:],
                    events: [
                        CountedEvent(tenant: acme, source: "/api", id: "e1", time: hour, usage: [users(["\"u9\""])]),
                        CountedEvent(tenant: acme, source: "/api", id: "e2", time: hour, usage: [users(["\"u1\"", "\"u2\""])]),
                        CountedEvent(tenant: try TenantID("globex"), source: "/api", id: "e1", time: hour, usage: []),
                    ]))
            #expect(try await db.query("SELECT event_id FROM tenant_globex.seen_events").map { try $0.string("event_id")! } == ["e1"], "first sight")
            #expect(try await db.query("SELECT DISTINCT schema_version FROM tally.tenants").map { try $0.int64("schema_version")! } == [Int64(SinkSchema.latestTenantVersion)])
            #expect(try await db.query("SELECT value::text AS v FROM tenant_acme.usage")[0].string("v") == "1", "e1 was a duplicate, u1 was known: u2")
            let stats = try await db.query("SELECT counted, deduplicated FROM tenant_acme.event_stats")
            #expect(try stats.map { try $0.int64("counted")! } == [1])
            #expect(try stats.map { try $0.int64("deduplicated")! } == [1])
            #expect(try await db.query("SELECT event_id FROM tenant_acme.seen_events ORDER BY event_id").map { try $0.string("event_id")! } == ["e1", "e2"])
            #expect(try await db.query("SELECT value_key FROM tenant_acme.usage_distinct ORDER BY value_key").map { try $0.string("value_key")! } == ["\"u1\"", "\"u2\""])
            #expect(try await db.query("SELECT reason FROM tenant_acme.rejections").map { try $0.string("reason")! } == ["data.tokens is missing"])
            await db.close()
            await sink.close()
        }
    }
}

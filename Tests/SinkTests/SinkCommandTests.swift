import Foundation
import Postgres
import Sink
import Tenancy
import Testing
import TestSupport

/// The Sink's admin commands, run as real processes against a real Postgres.
@Suite struct SinkCommandTests {
    @Test func twoProcessesSeeingTheSameTenantsFirstBothSucceed() async throws {
        try await withLocalPostgres { server in
            let tenants = (0..<8).map { "shop_\($0)" }
            async let first = TallyProcess.run(["sink", "add-tenant", "--postgres", server.connectionString] + tenants)
            async let second = TallyProcess.run(["sink", "add-tenant", "--postgres", server.connectionString] + tenants.reversed())
            let runs = try await [first, second]
            for run in runs { #expect(run.status == 0, "\(run.errors)") }
            let db = try await PostgresConnection.connect(server.connectionString)
            #expect(try await db.query("SELECT count(*) AS n FROM tally.tenants")[0].int64("n") == 8)
            #expect(try await db.query("SELECT count(*) AS n FROM pg_namespace WHERE nspname LIKE 'tenant\\_shop\\_%'")[0].int64("n") == 8)
            await db.close()
        }
    }

    @Test func migrateBringsEveryOldTenantToTheLatestVersionWithProgress() async throws {
        try await withLocalPostgres { server in
            let store = SinkStore(conninfo: server.connectionString)
            try await store.prepare()
            await store.close()
            // Tenants as an older release left them: registered at version 0, schema without tables.
            let db = try await PostgresConnection.connect(server.connectionString)
            for index in 0..<20 {
                let tenant = try TenantID("old_\(index)")
                try await db.execute(
                    """
                    CREATE SCHEMA \(quoteIdentifier(tenant.schemaName));
                    CREATE TABLE \(quoteIdentifier(tenant.schemaName)).schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
                    """)
                try await db.query(
                    "INSERT INTO tally.tenants (tenant_id, schema_name, reader_role, schema_version) VALUES ($1, $2, $3, 0)",
                    [.text(tenant.rawValue), .text(tenant.schemaName), .text(tenant.readerRole)])
            }
            let run = try await TallyProcess.run(["sink", "migrate", "--postgres", server.connectionString, "--parallelism", "4"])
            #expect(run.status == 0, "\(run.errors)")
            let progress = run.output.split(separator: "\n").filter { $0.hasPrefix("migrated ") }
            #expect(progress.count == 20)
            #expect(progress.last?.hasPrefix("migrated 20/20 tenants") == true)
            #expect(try await db.query("SELECT count(*) AS n FROM tally.tenants WHERE schema_version = 6")[0].int64("n") == 20)
            for table in ["usage", "usage_folded", "seen_events", "usage_distinct", "event_stats", "event_stats_folded", "rejections"] {
                #expect(try await db.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = '\(table)' AND table_schema LIKE 'tenant\\_old\\_%'")[0].int64("n") == 20)
            }
            for table in ["usage_folded", "event_stats_folded"] {
                let spacious = "SELECT count(*) AS n FROM pg_class WHERE relname = '\(table)' AND relnamespace::regnamespace::text LIKE 'tenant\\_old\\_%' AND 'fillfactor=70' = ANY(reloptions)"
                #expect(try await db.query(spacious)[0].int64("n") == 20)
            }
            await db.close()
        }
    }

    @Test func foldMovesTheUsageLogIntoTheTenantsTablesAndSaysHowMuch() async throws {
        try await withLocalPostgres { server in
            let store = SinkStore(conninfo: server.connectionString)
            try await store.prepare()
            let hour = Date(timeIntervalSince1970: 1_764_288_000)
            for subject in ["a", "b", "a"] {
                try await store.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [
                    UsageRow(
                        tenant: try TenantID("acme"), meter: "calls", subject: subject, windowSize: .hour, windowStart: hour, value: 2, eventCount: 2,
                        firstEventAt: hour, lastEventAt: hour),
                ]))
            }
            await store.close()
            let run = try await TallyProcess.run(["sink", "fold", "--postgres", server.connectionString])
            #expect(run.status == 0, "\(run.errors)")
            #expect(run.output.contains("folded 3 usage log rows"))
            let db = try await PostgresConnection.connect(server.connectionString)
            #expect(try await db.query("SELECT count(*) AS n FROM tally.usage_log")[0].int64("n") == 0)
            let folded = try await db.query("SELECT subject, value::text AS v FROM tenant_acme.usage_folded ORDER BY subject")
            #expect(try folded.map { "\(try $0.string("subject")!)=\(try $0.string("v")!)" } == ["a=4", "b=2"])
            await db.close()
        }
    }

    @Test func aHostileTenantIDOnTheCommandLineIsRefusedWithTheRule() async throws {
        let run = try await TallyProcess.run(["sink", "add-tenant", "--postgres", "host=127.0.0.1 port=1", "acme\"; DROP SCHEMA tally; --"])
        #expect(run.status != 0)
        #expect(run.errors.contains("^[a-z][a-z0-9_]{0,47}$"))
    }
}

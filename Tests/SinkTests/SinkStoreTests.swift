import Foundation
import LocalPostgres
import Postgres
@testable import Sink
import Tenancy
import Testing
import TestSupport

/// A prepared Sink on a new throwaway Postgres, plus a superuser connection for checking.
func withSink<T: Sendable>(
    writeMethod: SinkWriteMethod = .stagedUpsert, _ body: (SinkStore, PostgresConnection, LocalPostgresServer) async throws -> T
) async throws -> T {
    try await withLocalPostgres { server in
        let sink = SinkStore(conninfo: server.connectionString, writeMethod: writeMethod)
        try await sink.prepare()
        let inspector = try await PostgresConnection.connect(server.connectionString)
        let value = try await body(sink, inspector, server)
        await inspector.close()
        await sink.close()
        return value
    }
}

func usage(_ tenant: String, meter: String = "api_calls", subject: String = "customer_1", value: UsageAmount = 5, count: Int64 = 5) throws -> UsageRow {
    let start = Date(timeIntervalSince1970: 1_764_288_000)  // 2025-11-28 00:00 UTC
    return UsageRow(
        tenant: try TenantID(tenant), meter: meter, subject: subject, windowSize: .hour, windowStart: start, value: value,
        eventCount: count, firstEventAt: start.addingTimeInterval(1.5), lastEventAt: start.addingTimeInterval(3599.999999))
}

func count(_ sql: String, _ db: PostgresConnection) async throws -> Int64 {
    try await db.query(sql)[0].int64("n") ?? -1
}

@Suite struct SinkStoreTests {
    @Test func firstSightCreatesTheSchemaTablesRoleAndRegistryEntry() async throws {
        try await withSink { sink, db, _ in
            try await sink.ensureTenant(try TenantID("acme"))
            try await sink.ensureTenant(try TenantID("acme"))  // a second sight changes nothing
            #expect(try await sink.tenants() == [try TenantID("acme")])
            #expect(try await count("SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'tenant_acme' AND table_name = 'usage'", db) == 1)
            #expect(try await count("SELECT count(*) AS n FROM tenant_acme.schema_migrations", db) == 6)
            #expect(try await count("SELECT count(*) AS n FROM pg_roles WHERE rolname = 'tally_reader_acme' AND NOT rolcanlogin", db) == 1)
        }
    }

    @Test func concurrentFirstSightsFromSeparateSessionsAllSucceed() async throws {
        try await withSink { _, db, server in
            let stores = (0..<6).map { _ in SinkStore(conninfo: server.connectionString) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for store in stores {
                    group.addTask {
                        for tenant in ["alpha", "beta", "gamma"] { try await store.ensureTenant(try TenantID(tenant)) }
                    }
                }
                try await group.waitForAll()
            }
            for store in stores { await store.close() }
            #expect(try await count("SELECT count(*) AS n FROM tally.tenants", db) == 3)
            #expect(try await count("SELECT count(*) AS n FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'", db) == 3)
        }
    }

    @Test(arguments: ["acme'; DROP SCHEMA tally CASCADE; --", "Acme", "9lives", "", "a\"b", "tenant;", "acmé", "a b",
                      String(repeating: "a", count: 200), "a-b", "_acme", "ｆｕｌｌ"])
    func hostileTenantIDsAreRefusedBeforeAnySQL(id: String) async throws {
        #expect(throws: InvalidTenantID.self) { try TenantID(id) }
    }

    @Test(arguments: [SinkWriteMethod.loggedDeltas, .stagedUpsert, .pipelinedUpserts])
    func aBatchWritesEveryTenantsRowsAndTheOffsetsTogether(method: SinkWriteMethod) async throws {
        try await withSink(writeMethod: method) { sink, db, _ in
            let partition = LogPartition(topic: "events", partition: 3)
            let owner = try await sink.acquire([partition], group: "usage")
            #expect(owner[partition] == PartitionOwnership(epoch: 1, nextOffset: nil))
            let batch = SinkBatch(
                consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: 120, epoch: 1)],
                usage: [try usage("acme", value: .decimal(Decimal(string: "12.345")!)), try usage("globex", subject: "c9", value: 7, count: 7)])
            try await sink.commit(batch)
            let acme = try await db.query("SELECT value, event_count, first_event_at, last_event_at FROM tenant_acme.usage")
            #expect(acme.count == 1)
            #expect(try acme[0].string("value") == "12.345")
            #expect(try acme[0].date("last_event_at") == Date(timeIntervalSince1970: 1_764_288_000 + 3599.999999))
            #expect(try await count("SELECT count(*) AS n FROM tenant_globex.usage WHERE subject = 'c9' AND value = 7", db) == 1)
            #expect(try await count("SELECT count(*) AS n FROM tenant_acme.usage WHERE subject = 'c9'", db) == 0)
            #expect(try await sink.offsets(group: "usage") == [partition: CommittedPosition(nextOffset: 120, epoch: 1)])
            #expect(try await sink.acquire([partition], group: "usage")[partition] == PartitionOwnership(epoch: 2, nextOffset: 120))
        }
    }

    @Test(arguments: [SinkWriteMethod.loggedDeltas, .stagedUpsert, .pipelinedUpserts])
    func aFailureInsideTheBatchLeavesNeitherRowsNorOffsets(method: SinkWriteMethod) async throws {
        try await withSink(writeMethod: method) { sink, db, _ in
            let partition = LogPartition(topic: "events", partition: 0)
            _ = try await sink.acquire([partition], group: "usage")
            // The second tenant's row breaks a constraint after the first tenant's rows were staged.
            let batch = SinkBatch(
                consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: 50, epoch: 1)],
                usage: [try usage("aaa"), try usage("zzz", count: -1), try usage("zzz", subject: "after_the_failure")])
            await #expect(throws: SinkError.self) { try await sink.commit(batch) }
            #expect(try await count("SELECT count(*) AS n FROM tenant_aaa.usage", db) == 0)
            #expect(try await count("SELECT count(*) AS n FROM tenant_zzz.usage", db) == 0)
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log", db) == 0)
            #expect(try await sink.offsets(group: "usage").isEmpty)
        }
    }

    @Test func aCommitFromAFencedOffOwnerIsRejectedAndWritesNothing() async throws {
        try await withSink { sink, db, _ in
            let partition = LogPartition(topic: "events", partition: 1)
            let zombie = try await sink.acquire([partition], group: "usage")[partition]!
            let successor = try await sink.acquire([partition], group: "usage")[partition]!
            #expect(successor.epoch == zombie.epoch + 1)
            let stale = SinkBatch(
                consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: 10, epoch: zombie.epoch)],
                usage: [try usage("acme")])
            await #expect(throws: SinkError.fenced(partition: "events[1]", epoch: zombie.epoch, currentEpoch: successor.epoch)) {
                try await sink.commit(stale)
            }
            #expect(try await count("SELECT count(*) AS n FROM tenant_acme.usage", db) == 0)
            #expect(try await sink.offsets(group: "usage").isEmpty)
            var current = stale
            current.positions[partition]!.epoch = successor.epoch
            try await sink.commit(current)
            #expect(try await sink.offsets(group: "usage")[partition]?.nextOffset == 10)
        }
    }

    @Test func aConnectionLostDuringCommitIsResolvedWithoutApplyingTwice() async throws {
        try await withSink { sink, db, _ in
            let partition = LogPartition(topic: "events", partition: 2)
            _ = try await sink.acquire([partition], group: "usage")
            try await sink.commit(SinkBatch(
                consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: 10, epoch: 1)],
                usage: [try usage("acme", value: 5, count: 5)]))
            // At COMMIT, a deferred trigger kills the committing backend: the client loses its
            // connection in the middle of COMMIT and the transaction does not survive.
            try await db.execute(
                """
                CREATE FUNCTION public.die_at_commit() RETURNS trigger LANGUAGE plpgsql AS
                $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
                CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT OR UPDATE ON tally.offsets
                    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.die_at_commit();
                """)
            let next = SinkBatch(
                consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: 25, epoch: 1)],
                usage: [try usage("acme", value: 12, count: 12)])
            await #expect {
                try await sink.commit(next)
            } throws: { error in
                (error as? SinkError)?.isConnectionLoss == true
            }
            // Not stored, and nothing half-stored.
            #expect(try await sink.offsets(group: "usage")[partition]?.nextOffset == 10)
            #expect(try await db.query("SELECT value FROM tenant_acme.usage")[0].string("value") == "5")
            // The caller retries; the store reconnects on its own.
            try await db.execute("DROP TRIGGER die_at_commit ON tally.offsets")
            try await sink.commit(next)
            #expect(try await sink.offsets(group: "usage")[partition]?.nextOffset == 25)
            #expect(try await db.query("SELECT value, event_count FROM tenant_acme.usage")[0].string("value") == "17", "5 + 12, once")
        }
    }

    @Test func aCommitWhoseAnswerIsLostIsFoundStoredAndNotAppliedAgain() async throws {
        try await withLocalPostgres { server in
            let proxy = try CuttingProxy(upstreamPort: server.port)
            defer { proxy.close() }
            let sink = SinkStore(conninfo: "host=127.0.0.1 port=\(proxy.port) user=postgres dbname=postgres sslmode=disable")
            try await sink.prepare()
            let partition = LogPartition(topic: "events", partition: 4)
            _ = try await sink.acquire([partition], group: "usage")
            try await sink.commit(SinkBatch(
                consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: 10, epoch: 1)],
                usage: [try usage("acme", value: 5, count: 5)]))
            // The server commits the next batch, but its answer never reaches the Sink.
            proxy.armCutAfterCommit()
            try await sink.commit(SinkBatch(
                consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: 30, epoch: 1)],
                usage: [try usage("acme", value: 20, count: 20)]))
            #expect(proxy.didCut)
            // The Sink found the batch stored instead of failing or writing it again.
            #expect(try await sink.offsets(group: "usage")[partition] == CommittedPosition(nextOffset: 30, epoch: 1))
            let db = try await PostgresConnection.connect(server.connectionString)
            #expect(try await db.query("SELECT value FROM tenant_acme.usage")[0].string("value") == "25", "5 + 20, once")
            await db.close()
            await sink.close()
        }
    }

    @Test func postgresRestartedMidStreamLosesNothingOnceItIsBack() async throws {
        try await withLocalPostgres { server in
            let sink = SinkStore(conninfo: server.connectionString)
            try await sink.prepare()
            let partition = LogPartition(topic: "events", partition: 0)
            var epoch = try await sink.acquire([partition], group: "usage")[partition]!.epoch
            func batch(_ number: Int) throws -> SinkBatch {
                SinkBatch(
                    consumerGroup: "usage", positions: [partition: CommittedPosition(nextOffset: Int64(number + 1) * 100, epoch: epoch)],
                    usage: [try usage("acme", subject: "s\(number)", value: .integer(Int64(number)), count: Int64(number))])
            }
            for number in 0..<5 { try await sink.commit(try batch(number)) }
            try await server.stop(immediate: true)
            await #expect {
                try await sink.commit(try batch(5))
            } throws: { error in
                (error as? SinkError)?.isConnectionLoss == true
            }
            try await server.restart()
            // After a restart a processor re-acquires its partitions and resumes from the store.
            let resumed = try await sink.acquire([partition], group: "usage")[partition]!
            #expect(resumed.nextOffset == 500)
            epoch = resumed.epoch
            for number in 5..<10 { try await sink.commit(try batch(number)) }
            let check = try await PostgresConnection.connect(server.connectionString)
            #expect(try await check.query("SELECT count(*) AS n, sum(event_count) AS s FROM tenant_acme.usage")[0].int64("s") == 45)
            #expect(try await check.query("SELECT count(*) AS n FROM tenant_acme.usage")[0].int64("n") == 10)
            #expect(try await sink.offsets(group: "usage")[partition]?.nextOffset == 1_000)
            await check.close()
            await sink.close()
        }
    }

    /// One fold of a log part at a time across processes: a fold that finds another folding a
    /// part folds the others, leaves that part to it and says so.
    @Test func aFoldWhileAnotherIsRunningLeavesThatPartToIt() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [try usage("acme"), try usage("globex")]))
            let acmePart = try await logPartition(of: "acme", db)
            try #require(acmePart != (try await logPartition(of: "globex", db)), "the test needs the two tenants in different log partitions")
            try await db.execute("BEGIN")
            try await db.query("SELECT pg_advisory_xact_lock(hashtext('tally.fold'), $1)", [.int32(acmePart)])
            #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 1, complete: false))
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log WHERE tenant = 'acme'", db) == 1)
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log", db) == 1)
            try await db.execute("COMMIT")
            #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 1, complete: true))
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log", db) == 0)
        }
    }

    /// A fold told to wait for a running one (a processor over its back-pressure bound) does,
    /// then folds what is left and says it folded everything.
    @Test func aFoldWaitingForARunningOneFoldsWhatIsLeftOnceItEnds() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, server in
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [try usage("acme"), try usage("globex")]))
            let rival = try await PostgresConnection.connect(server.connectionString)
            let rivalPID = try await rival.query("SELECT pg_backend_pid() AS pid")[0].int64("pid")!
            try await rival.execute("BEGIN")
            try await rival.query("SELECT pg_advisory_xact_lock(hashtext('tally.fold'), $1)", [.int32(try await logPartition(of: "acme", db))])
            let folding = Task { try await sink.foldLogs(waitingForRunningFold: true) }
            let deadline = ContinuousClock.now + .seconds(30)
            while try await db.query("SELECT count(*) AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", [.int32(Int32(rivalPID))])[0].int64("n") == 0 {
                try #require(ContinuousClock.now < deadline, "the fold never waited for the running one")
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log WHERE tenant = 'acme'", db) == 1)
            try await rival.execute("COMMIT")
            #expect(try await folding.value == FoldResult(usageRowsFolded: 2, complete: true))
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log", db) == 0)
            await rival.close()
        }
    }

    /// A fold on several connections folds every part of the logs once: each window ends up
    /// with its deltas merged, none left in the log.
    @Test func aFoldOnTwoConnectionsFoldsEveryPartOnce() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            let tenants = (0..<40).map { "t\($0)" }
            for (index, tenant) in tenants.enumerated() {
                try await sink.commit(
                    SinkBatch(consumerGroup: "usage", positions: [:], usage: [try usage(tenant, value: .integer(Int64(index))), try usage(tenant, subject: "customer_2")]))
            }
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [try usage("t0", value: 7)]))
            #expect(try await count("SELECT count(DISTINCT tableoid) AS n FROM tally.usage_log", db) > 16)
            let other = sink.withOwnConnection()
            #expect(try await SinkStore.foldLogs(on: [sink, other]) == FoldResult(usageRowsFolded: 81, complete: true))
            await other.close()
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log", db) == 0)
            let folded = try await db.query("SELECT tenant, subject, value::text AS v, event_count FROM tally.usage ORDER BY tenant, subject")
            let expected = tenants.sorted().flatMap { tenant in
                let index = Int(tenant.dropFirst())!
                return ["\(tenant) customer_1 \(index == 0 ? 7 : index) \(index == 0 ? 10 : 5)", "\(tenant) customer_2 5 5"]
            }
            #expect(try folded.map { "\(try $0.string("tenant")!) \(try $0.string("subject")!) \(try $0.string("v")!) \(try $0.int64("event_count")!)" } == expected)
        }
    }

    /// The number of the usage log partition holding `tenant`'s rows.
    private func logPartition(of tenant: String, _ db: PostgresConnection) async throws -> Int32 {
        let name = try await db.query("SELECT DISTINCT tableoid::regclass::text AS part FROM tally.usage_log WHERE tenant = $1", [.text(tenant)])[0].string("part")!
        return Int32(name.split(separator: "_").last!)!
    }

    /// Control migration 10 hash-partitions the usage log by tenant: deltas committed before it
    /// stay visible and fold as before, and a reader's query scans its tenant's partition only.
    @Test func theUsageLogIsPartitionedByTenantWithItsDeltasKept() async throws {
        try await withLocalPostgres { server in
            let db = try await PostgresConnection.connect(server.connectionString)
            // The control schema as version 9 left it.
            try await db.execute(
                """
                CREATE SCHEMA tally;
                CREATE TABLE tally.schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
                """)
            for (version, sql) in SinkSchema.controlMigrations where version <= 9 {
                try await db.execute(sql)
                try await db.query("INSERT INTO tally.schema_migrations (version) VALUES ($1)", [.int32(Int32(version))])
            }
            let sink = SinkStore(conninfo: server.connectionString, writeMethod: .loggedDeltas)
            let before = [try usage("acme"), try usage("acme", subject: "customer_2", value: 3), try usage("globex", value: 7)]
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: before))
            #expect(try await count("SELECT count(*) AS n FROM pg_partitioned_table WHERE partrelid = 'tally.usage_log'::regclass", db) == 0)

            try await sink.prepare()
            #expect(try await count("SELECT count(*) AS n FROM pg_partitioned_table WHERE partrelid = 'tally.usage_log'::regclass", db) == 1)
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log", db) == 3, "the deltas moved with the log")
            let plan = try await db.query("EXPLAIN SELECT * FROM tenant_acme.usage").map { try $0.string("QUERY PLAN") ?? "" }
            #expect(plan.filter { $0.contains("Scan on usage_log_") }.count == 1, "one partition of the log: \(plan)")
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [try usage("acme", value: 2)]))
            /// acme's windows as readers see them: subject, value, events.
            func acme() async throws -> [String] {
                try await db.query("SELECT subject, value::text AS v, event_count FROM tenant_acme.usage ORDER BY subject").map {
                    "\(try $0.string("subject")!) \(try $0.string("v")!) \(try $0.int64("event_count")!)"
                }
            }
            #expect(try await acme() == ["customer_1 7 10", "customer_2 3 5"], "merged from the log")
            #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 4, complete: true))
            #expect(try await acme() == ["customer_1 7 10", "customer_2 3 5"], "folded")
            #expect(try await count("SELECT count(*) AS n FROM tally.usage_log", db) == 0)
            #expect(try await count("SELECT value::bigint AS n FROM tenant_globex.usage_folded", db) == 7)
            await sink.close()
            await db.close()
        }
    }

    /// Tenant migration 6 keeps room on the folded windows' pages: a window folded again is
    /// updated on its own page (heap-only, its index entry kept), not moved to a new row
    /// elsewhere, and pruning the old versions makes the room again for the next fold. Without
    /// autovacuum, whose analyze would hold back what pruning may remove while it runs.
    @Test func aWindowFoldedAgainStaysOnItsPage() async throws {
        try await withLocalPostgres(settings: ["autovacuum = off"]) { server in
            let sink = SinkStore(conninfo: server.connectionString, writeMethod: .loggedDeltas)
            try await sink.prepare()
            let db = try await PostgresConnection.connect(server.connectionString)
            let subjects = (0..<1_000).map { "customer_\($0)" }
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: try subjects.map { try usage("acme", subject: $0) }))
            try await sink.foldLogs()
            /// The page of each subject's window.
            func pages() async throws -> [String: String] {
                let rows = try await db.query("SELECT subject, (ctid::text::point)[0]::text AS page FROM tenant_acme.usage_folded")
                return Dictionary(uniqueKeysWithValues: try rows.map { (try $0.string("subject")!, try $0.string("page")!) })
            }
            let firstPages = try await pages()
            #expect(Set(firstPages.values).count > 5, "the windows fill several pages")
            let everyFourth = subjects.enumerated().filter { $0.offset % 4 == 0 }.map(\.element)
            for round in 1...2 {
                try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: try everyFourth.map { try usage("acme", subject: $0, value: 1, count: 1) }))
                try await sink.foldLogs()
                #expect(try await count("SELECT count(*) AS n FROM tenant_acme.usage_folded WHERE value = \(5 + round)", db) == 250)
                #expect(try await pages() == firstPages, "round \(round): every window on the page it was first folded to")
            }
            await db.close()
            await sink.close()
        }
    }

    @Test func aTenantsReaderSeesOnlyItsOwnSchema() async throws {
        try await withSink { sink, db, server in
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [try usage("acme"), try usage("globex")]))
            try await db.execute("CREATE ROLE acme_dashboard LOGIN IN ROLE tally_reader_acme")
            let reader = try await PostgresConnection.connect(server.connectionString(database: "postgres", user: "acme_dashboard"))
            #expect(try await reader.query("SELECT count(*) AS n FROM tenant_acme.usage")[0].int64("n") == 1, "from the usage log")
            try await sink.foldLogs()
            #expect(try await reader.query("SELECT count(*) AS n FROM tenant_acme.usage")[0].int64("n") == 1, "folded")
            #expect(try await reader.query("SELECT count(*) AS n FROM tenant_acme.usage_folded")[0].int64("n") == 1)
            for table in ["event_stats", "rejections", "seen_events", "usage_distinct"] {
                #expect(try await reader.query("SELECT count(*) AS n FROM tenant_acme.\(table)")[0].int64("n") == 0, "readable, nothing yet")
            }
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [try usage("globex", subject: "pending")]))
            for forbidden in [
                "SELECT * FROM tenant_globex.usage", "SELECT * FROM tenant_globex.usage_folded", "SELECT * FROM tally.usage_log",
                "SELECT * FROM tally.usage_current", "SELECT * FROM tally.usage", "SELECT * FROM tally.offsets", "SELECT * FROM tally.tenants",
                "SELECT * FROM tenant_globex.event_stats", "SELECT * FROM tally.event_stats_log", "SELECT * FROM tally.event_stats_current",
                "SELECT * FROM tenant_globex.rejections", "SELECT * FROM tenant_globex.seen_events", "SELECT * FROM tenant_globex.usage_distinct",
                "SELECT * FROM tally.rejected_inputs", "SELECT * FROM tally.event_identities", "SELECT * FROM tally.distinct_values",
            ] {
                await #expect {
                    try await reader.query(forbidden)
                } throws: { error in
                    (error as? PostgresError)?.sqlState == "42501"
                }
            }
            await #expect {
                try await reader.query("INSERT INTO tenant_acme.usage_folded SELECT * FROM tenant_acme.usage_folded")
            } throws: { error in
                (error as? PostgresError)?.sqlState == "42501"
            }
            await reader.close()
        }
    }
}


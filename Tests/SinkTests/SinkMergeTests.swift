import Foundation
import Postgres
import Sink
import Tenancy
import Testing

/// Usage rows are deltas: each aggregation folds batches into the same state as one batch.
@Suite struct SinkMergeTests {
    static let hour = Date(timeIntervalSince1970: 1_764_288_000)

    func delta(
        _ aggregation: Aggregation, meter: String? = nil, value: UsageAmount, total: UsageAmount = 0, count: Int64 = 1, at second: Double = 10,
        distinct: Set<String> = []
    ) throws -> UsageRow {
        UsageRow(
            tenant: try TenantID("acme"), meter: meter ?? aggregation.rawValue, subject: "customer_1", windowSize: .hour, windowStart: Self.hour,
            aggregation: aggregation, value: value, total: total, eventCount: count, firstEventAt: Self.hour.addingTimeInterval(second),
            lastEventAt: Self.hour.addingTimeInterval(second), distinctValues: distinct)
    }

    /// With the usage log, the first batch is folded before the second commits and the second
    /// after the first check: readers see the same values from the log, from folded rows
    /// merged with the log, and from folded rows alone.
    @Test(arguments: [SinkWriteMethod.loggedDeltas, .stagedUpsert, .pipelinedUpserts])
    func everyAggregationMergesAcrossBatches(method: SinkWriteMethod) async throws {
        try await withSink(writeMethod: method) { sink, db, _ in
            // Two batches; the second holds two deltas of one window, which merge first.
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [
                try delta(.count, value: 2, count: 2), try delta(.sum, value: 7, total: 7), try delta(.min, value: 4), try delta(.max, value: 4),
                try delta(.avg, value: 0, total: 10, count: 2), try delta(.latest, value: 3, at: 50), try delta(.uniqueCount, value: 0, count: 2, distinct: ["a", "b"]),
            ]))
            if method == .loggedDeltas { #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 7, complete: true)) }
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [
                try delta(.count, value: 1), try delta(.count, value: 1), try delta(.sum, value: 5, total: 5), try delta(.sum, value: -1, total: -1),
                try delta(.min, value: 9), try delta(.min, value: 1), try delta(.max, value: 9), try delta(.max, value: -3),
                try delta(.avg, value: 0, total: 2), try delta(.avg, value: 0, total: 3),
                try delta(.latest, value: 8, at: 60), try delta(.latest, value: 1, at: 20),
                try delta(.uniqueCount, value: 0, distinct: ["b", "c"]), try delta(.uniqueCount, value: 0, distinct: ["c"]),
            ]))
            try await expectMergedValues(db)
            if method == .loggedDeltas {
                #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 7, complete: true), "the second batch's deltas, one per window")
                #expect(try await db.query("SELECT count(*) AS n FROM tally.usage_log")[0].int64("n") == 0)
                #expect(try await db.query("SELECT count(*) AS n FROM tenant_acme.usage_folded")[0].int64("n") == 7)
                try await expectMergedValues(db)
            }
        }
    }

    /// Integer amounts that outgrow 64 bits, and integers merged with fractions, come out exact
    /// whether they merge in memory, in a commit's upsert or in a fold.
    @Test(arguments: [SinkWriteMethod.loggedDeltas, .stagedUpsert, .pipelinedUpserts])
    func amountsStayExactPastSixtyFourBitsAndBesideFractions(method: SinkWriteMethod) async throws {
        try await withSink(writeMethod: method) { sink, db, _ in
            let half: UsageAmount = .decimal(Decimal(string: "0.5")!)
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [
                try delta(.sum, meter: "past_64_bits", value: .integer(.max), total: .integer(.max)),
                try delta(.sum, meter: "past_64_bits", value: 2, total: 2),
                try delta(.sum, meter: "with_fraction", value: 1, total: 1),
                try delta(.min, meter: "least", value: 2, total: 2),
            ]))
            if method == .loggedDeltas { #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 3, complete: true)) }
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [
                try delta(.sum, meter: "past_64_bits", value: .integer(.max), total: .integer(.max)),
                try delta(.sum, meter: "with_fraction", value: half, total: half), try delta(.sum, meter: "with_fraction", value: 3, total: 3),
                try delta(.min, meter: "least", value: .decimal(Decimal(string: "1.5")!)), try delta(.min, meter: "least", value: 3),
            ]))
            if method == .loggedDeltas { #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 3, complete: true)) }
            let rows = try await db.query("SELECT meter, value::text AS value FROM tenant_acme.usage ORDER BY meter")
            let values = Dictionary(uniqueKeysWithValues: try rows.map { (try $0.string("meter")!, try $0.string("value")!) })
            #expect(values["past_64_bits"] == "18446744073709551616", "2 × Int64.max + 2")
            #expect(values["with_fraction"] == "4.5")
            #expect(values["least"] == "1.5")
        }
    }

    /// A `latest` window takes the value of its latest event and, on a tie, of the later commit:
    /// read from the log, folded from two deltas at once, and folded onto a folded row. The
    /// later values are the smaller ones, so a merge that compared values would keep 5.
    @Test func latestTiesGoToTheLaterCommit() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            func latest() async throws -> String? {
                try await db.query("SELECT value::text AS v FROM tenant_acme.usage")[0].string("v")
            }
            func commit(_ value: UsageAmount, at second: Double) async throws {
                try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], usage: [try delta(.latest, value: value, at: second)]))
            }
            try await commit(5, at: 30)
            try await commit(2, at: 30)
            #expect(try await latest() == "2", "from the log")
            #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 2, complete: true))
            #expect(try await latest() == "2", "both deltas folded in one statement")
            try await commit(1, at: 30)
            try await commit(9, at: 10)
            #expect(try await latest() == "1", "the folded row and the log")
            #expect(try await sink.foldLogs() == FoldResult(usageRowsFolded: 2, complete: true))
            #expect(try await latest() == "1", "folded onto the folded row; the event at second 10 is older")
        }
    }

    /// The values of both batches merged, as tenant acme's reader sees them.
    func expectMergedValues(_ db: PostgresConnection) async throws {
        let rows = try await db.query("SELECT meter, value::text AS value, event_count, last_event_at FROM tenant_acme.usage ORDER BY meter")
        let values = Dictionary(uniqueKeysWithValues: try rows.map { (try $0.string("meter")!, try $0.string("value")!) })
        #expect(values["count"] == "4")
        #expect(values["sum"] == "11")
        #expect(values["min"] == "1")
        #expect(values["max"] == "9")
        #expect(Decimal(string: values["avg"] ?? "") == 3.75, "(10 + 2 + 3) / 4")
        #expect(values["latest"] == "8", "the value at second 60")
        #expect(values["unique_count"] == "3", "a, b, c")
    }

    @Test func eventsCountOncePerIdentityAndStatsExplainEveryInput() async throws {
        try await withSink { sink, db, _ in
            let acme = try TenantID("acme")
            let partition = LogPartition(topic: "events", partition: 0)
            func event(_ id: String, source: String = "/api") throws -> CountedEvent {
                CountedEvent(tenant: acme, source: source, id: id, time: Self.hour.addingTimeInterval(5), usage: [try delta(.count, value: 1)])
            }
            try await sink.commit(SinkBatch(
                consumerGroup: "usage", positions: [:],
                events: [try event("e1"), try event("e2"), try event("e1"), try event("e1", source: "/other")],
                rejections: [
                    RejectedInput(tenant: acme, kind: .late, source: "/api", eventID: "old", time: Self.hour, partition: partition, offset: 7, reason: "older than the grace of 7 days"),
                    RejectedInput(tenant: acme, kind: .meter, meter: "tokens", source: "/api", eventID: "e2", time: Self.hour, partition: partition, offset: 2, reason: "data.tokens is missing"),
                ]))
            try await sink.commit(SinkBatch(
                consumerGroup: "usage", positions: [:], events: [try event("e2"), try event("e3")],
                rejections: [RejectedInput(tenant: acme, kind: .invalid, time: Self.hour, partition: partition, offset: 9, reason: "malformed body")]))
            #expect(try await db.query("SELECT value::text AS v FROM tenant_acme.usage")[0].string("v") == "4", "e1, e2, e1 from /other, e3")
            // The same before the stats log is folded (three commits' rows) and after.
            for folded in [false, true] {
                if folded { try await sink.foldLogs() }
                let stats = try await db.query("SELECT received, counted, deduplicated, late, rejected FROM tenant_acme.event_stats")
                #expect(stats.count == 1)
                #expect(try stats[0].int64("received") == 8)
                #expect(try stats[0].int64("counted") == 4)
                #expect(try stats[0].int64("deduplicated") == 2)
                #expect(try stats[0].int64("late") == 1)
                #expect(try stats[0].int64("rejected") == 1)
                #expect(try await db.query("SELECT count(*) AS n FROM tally.event_stats_log")[0].int64("n") == (folded ? 0 : 2))
            }
            let reasons = try await db.query("SELECT kind, meter, reason FROM tenant_acme.rejections ORDER BY record_offset").map { try $0.string("kind")! }
            #expect(reasons == ["meter", "late", "invalid"])
            // Past the horizon, identities are forgotten.
            #expect(try await sink.forgetEvents(before: Self.hour.addingTimeInterval(60)) == 4)
        }
    }

    /// Commits of events without an owned partition read their tenants' identities and
    /// distinct values from Postgres one at a time: another such commit (here a transaction
    /// holding the same lock) is recording an identity and a distinct value of the batch; the
    /// commit waits for it and, once it commits, counts that event as a repeat and that value
    /// as known.
    @Test func identitiesAndDistinctValuesTakenByAConcurrentWriterCountAsKnown() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, server in
            let acme = try TenantID("acme")
            func event(_ id: String, user: String) throws -> CountedEvent {
                CountedEvent(
                    tenant: acme, source: "/api", id: id, time: Self.hour.addingTimeInterval(5),
                    usage: [try delta(.count, value: 1), try delta(.uniqueCount, value: 0, distinct: [user])])
            }
            try await sink.commit(SinkBatch(consumerGroup: "usage", positions: [:], events: [try event("e0", user: "u0")]))
            let rival = try await PostgresConnection.connect(server.connectionString)
            let rivalPID = try await rival.query("SELECT pg_backend_pid() AS pid")[0].int64("pid")!
            try await rival.execute(
                """
                BEGIN;
                SELECT pg_advisory_xact_lock(hashtext('tally.ownerless-dedupe'));
                INSERT INTO tally.event_identities (tenant, source, event_id, event_time) VALUES ('acme', '/api', 'e1', now());
                INSERT INTO tally.distinct_values (tenant, meter, subject, window_size, window_start, group_key, value_key)
                    VALUES ('acme', 'unique_count', 'customer_1', 'hour', to_timestamp(\(Self.hour.timeIntervalSince1970)), '', 'u2');
                """)
            let batch = SinkBatch(consumerGroup: "usage", positions: [:], events: [try event("e1", user: "u1"), try event("e2", user: "u2")])
            let committing = Task { try await sink.commit(batch) }
            // The commit waits for the rival's transaction.
            let deadline = ContinuousClock.now + .seconds(30)
            while try await db.query("SELECT count(*) AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", [.int32(Int32(rivalPID))])[0].int64("n") == 0 {
                try #require(ContinuousClock.now < deadline, "the commit never waited for the rival's transaction")
                try await Task.sleep(for: .milliseconds(10))
            }
            try await rival.execute("COMMIT")
            try await committing.value
            await rival.close()
            let values = Dictionary(uniqueKeysWithValues: try await db.query("SELECT meter, value::text AS value FROM tenant_acme.usage").map {
                (try $0.string("meter")!, try $0.string("value")!)
            })
            #expect(values["count"] == "2", "e0 and e2; e1 was the rival's")
            #expect(values["unique_count"] == "1", "u0; the rival recorded u2, and e1 with u1 was not counted")
            let stats = try await db.query("SELECT counted, deduplicated FROM tenant_acme.event_stats")
            #expect(try stats[0].int64("counted") == 2)
            #expect(try stats[0].int64("deduplicated") == 1)
        }
    }
}

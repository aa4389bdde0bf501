import Foundation
import Postgres
import Sink
import Tenancy
import Testing

/// The partition owner's identities and distinct values live in memory between commits; they
/// must always equal what Postgres committed: after another owner's commits, after a failed
/// commit, and past the dedupe horizon.
@Suite struct SinkDedupeStateTests {
    static let hour = Date(timeIntervalSince1970: 1_764_288_000)
    static let partition = LogPartition(topic: "events", partition: 3)

    /// An event of acme read from `partition`, counted by a count and a unique-count meter.
    func event(_ id: String, user: String) throws -> CountedEvent {
        let acme = try TenantID("acme")
        func window(_ aggregation: Aggregation, distinct: Set<String> = []) -> UsageRow {
            UsageRow(
                tenant: acme, meter: aggregation.rawValue, subject: "s", windowSize: .hour, windowStart: Self.hour, aggregation: aggregation,
                value: aggregation == .count ? 1 : 0, total: 0, eventCount: 1, firstEventAt: Self.hour.addingTimeInterval(5),
                lastEventAt: Self.hour.addingTimeInterval(5), distinctValues: distinct)
        }
        return CountedEvent(
            tenant: acme, source: "/api", id: id, time: Self.hour.addingTimeInterval(5), usage: [window(.count), window(.uniqueCount, distinct: [user])],
            partition: Self.partition)
    }

    func batch(_ events: [CountedEvent], epoch: Int64, nextOffset: Int64) -> SinkBatch {
        SinkBatch(consumerGroup: "usage", positions: [Self.partition: CommittedPosition(nextOffset: nextOffset, epoch: epoch)], events: events)
    }

    /// acme's `count` and `unique_count` values and its counted and deduplicated events.
    func totals(_ db: PostgresConnection) async throws -> [Int64] {
        let usage = Dictionary(uniqueKeysWithValues: try await db.query("SELECT meter, value::bigint AS v FROM tenant_acme.usage").map {
            (try $0.string("meter")!, try $0.int64("v")!)
        })
        let stats = try await db.query("SELECT counted, deduplicated FROM tenant_acme.event_stats")[0]
        return [usage["count"] ?? 0, usage["unique_count"] ?? 0, try stats.int64("counted")!, try stats.int64("deduplicated")!]
    }

    /// Two processes (two stores, each with its own memory) take the partition from each other:
    /// each new owner reads what the others committed, here a stale state would count e3 and
    /// u2 twice.
    @Test func eachNewOwnerOfAPartitionCountsWhatTheEarlierOwnersCommitted() async throws {
        try await withSink(writeMethod: .loggedDeltas) { first, db, server in
            let second = SinkStore(conninfo: server.connectionString)
            let epoch1 = try await first.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await first.commit(batch([try event("e1", user: "u1"), try event("e2", user: "u1")], epoch: epoch1, nextOffset: 2))
            let epoch2 = try await second.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await second.commit(batch([try event("e2", user: "u1"), try event("e3", user: "u2")], epoch: epoch2, nextOffset: 4))
            let epoch3 = try await first.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await first.commit(batch([try event("e3", user: "u2"), try event("e4", user: "u2")], epoch: epoch3, nextOffset: 6))
            // count: e1 e2 e3 e4; unique_count: u1 u2; e2 and e3 came twice.
            #expect(try await totals(db) == [4, 2, 4, 2])
            #expect(try await count("SELECT count(*) AS n FROM tenant_acme.seen_events", db) == 4)
            #expect(try await count("SELECT count(*) AS n FROM tenant_acme.usage_distinct", db) == 2)
            await second.close()
        }
    }

    /// A commit that fails after its identities and distinct values were checked (a bad usage
    /// row breaks a constraint) leaves them unrecorded in memory too: the retry counts them.
    @Test func aFailedCommitLeavesNothingInTheStateForItsRetry() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            let epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await sink.commit(batch([try event("e1", user: "u1")], epoch: epoch, nextOffset: 1))
            var failing = batch([try event("e2", user: "u2")], epoch: epoch, nextOffset: 2)
            failing.usage = [
                UsageRow(
                    tenant: try TenantID("acme"), meter: "broken", subject: "s", windowSize: .hour, windowStart: Self.hour, aggregation: .count,
                    value: 1, eventCount: -1, firstEventAt: Self.hour, lastEventAt: Self.hour)
            ]
            await #expect(throws: SinkError.self) { try await sink.commit(failing) }
            try await sink.commit(batch([try event("e2", user: "u2")], epoch: epoch, nextOffset: 2))
            #expect(try await totals(db) == [2, 2, 2, 0])
        }
    }

    /// Identities and distinct values recorded without a partition (by tenant migration 5, from
    /// before control migration 8) still count as known for an owner: for a tenant that has rows
    /// of the partition when it is acquired, and for one first seen afterwards. Owned commits
    /// record their partition.
    @Test func rowsWithoutAPartitionCountAsKnownForTheOwner() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            _ = try await sink.acquire([Self.partition], group: "usage")
            let first = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await sink.commit(batch([try event("e1", user: "u1")], epoch: first, nextOffset: 1))
            #expect(try await db.query("SELECT consumer_group, topic, partition FROM tally.event_identities").map {
                "\(try $0.string("consumer_group")!) \(try $0.string("topic")!) \(try $0.int64("partition")!)"
            } == ["usage events 3"])
            try await db.execute(
                """
                INSERT INTO tally.event_identities (tenant, source, event_id, event_time) VALUES
                    ('acme', '/api', 'old', now()), ('globex', '/api', 'old', now());
                INSERT INTO tally.distinct_values (tenant, meter, subject, window_size, window_start, group_key, value_key)
                    VALUES ('acme', 'unique_count', 's', 'hour', to_timestamp(\(Self.hour.timeIntervalSince1970)), '', 'u9');
                """)
            let second = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await sink.commit(batch([try event("old", user: "u9"), try event("e2", user: "u9")], epoch: second, nextOffset: 3))
            // count: e1 e2; unique_count: u1 (u9 was known); old came before.
            #expect(try await totals(db) == [2, 1, 2, 1])
            var globexEvent = try event("old", user: "u1")
            globexEvent.tenant = try TenantID("globex")
            globexEvent.usage = []
            try await sink.commit(batch([globexEvent], epoch: second, nextOffset: 4))
            let globex = try await db.query("SELECT counted, deduplicated FROM tenant_globex.event_stats")[0]
            #expect(try [globex.int64("counted"), globex.int64("deduplicated")] == [0, 1])
        }
    }

    /// A released partition's state is read again at its next commit, even under the same epoch.
    @Test func aReleasedPartitionsStateIsReadAgain() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            let epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await sink.commit(batch([try event("e1", user: "u1")], epoch: epoch, nextOffset: 1))
            sink.release([Self.partition], group: "usage")
            // Recorded behind the store's back, as another member would have.
            try await db.execute(
                "INSERT INTO tally.event_identities (consumer_group, topic, partition, tenant, source, event_id, event_time) VALUES ('usage', 'events', 3, 'acme', '/api', 'e2', now())")
            try await sink.commit(batch([try event("e2", user: "u2")], epoch: epoch, nextOffset: 2))
            #expect(try await totals(db) == [1, 1, 1, 1])
        }
    }

    /// Past the horizon an identity is forgotten in memory as in Postgres: its event counts again.
    @Test func anIdentityPastTheHorizonCountsAgain() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            let epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await sink.commit(batch([try event("e1", user: "u1")], epoch: epoch, nextOffset: 1))
            try await sink.commit(batch([try event("e1", user: "u1")], epoch: epoch, nextOffset: 2))
            #expect(try await sink.forgetEvents(before: Self.hour.addingTimeInterval(60)) == 1)
            try await sink.commit(batch([try event("e1", user: "u1")], epoch: epoch, nextOffset: 3))
            #expect(try await totals(db) == [2, 1, 2, 1])
        }
    }
    /// An event of acme read from `partition` whose user is counted by a unique-count meter
    /// per hour and one per day, both windows starting at `hour`.
    func eventCountingUsers(_ id: String, user: String) throws -> CountedEvent {
        let acme = try TenantID("acme")
        let time = Self.hour.addingTimeInterval(5)
        let usage = [(meter: "users_hourly", size: UsageRow.WindowSize.hour), (meter: "users_daily", size: .day)].map {
            UsageRow(
                tenant: acme, meter: $0.meter, subject: "s", windowSize: $0.size, windowStart: Self.hour, aggregation: .uniqueCount, value: 0,
                eventCount: 1, firstEventAt: time, lastEventAt: time, distinctValues: [user])
        }
        return CountedEvent(tenant: acme, source: "/api", id: id, time: time, usage: usage, partition: Self.partition)
    }

    /// Forgetting the distinct values of windows that ended before a cutoff works in memory as
    /// in Postgres, and on states loaded again: a forgotten value counts again in its window,
    /// while a window that may still be open (a day taken at 25 hours) keeps its values.
    @Test func distinctValuesOfWindowsEndedBeforeTheCutoffAreForgotten() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            func users() async throws -> [String: Int64] {
                Dictionary(uniqueKeysWithValues: try await db.query("SELECT meter, value::bigint AS v FROM tenant_acme.usage").map {
                    (try $0.string("meter")!, try $0.int64("v")!)
                })
            }
            var epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await sink.commit(batch([try eventCountingUsers("e1", user: "u1")], epoch: epoch, nextOffset: 1))
            // The hour window ended at hour + 1 h; the day window may last until hour + 25 h.
            #expect(try await sink.forgetDistinctValues(ofWindowsEndedBefore: Self.hour.addingTimeInterval(2 * 3_600)) == 1)
            try await sink.commit(batch([try eventCountingUsers("e2", user: "u1")], epoch: epoch, nextOffset: 2))
            #expect(try await users() == ["users_hourly": 2, "users_daily": 1])
            // A new owner loads both values again, each with its window's end.
            epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            try await sink.commit(batch([try eventCountingUsers("e3", user: "u1")], epoch: epoch, nextOffset: 3))
            #expect(try await users() == ["users_hourly": 2, "users_daily": 1])
            #expect(try await sink.forgetDistinctValues(ofWindowsEndedBefore: Self.hour.addingTimeInterval(25 * 3_600 - 1)) == 1)
            #expect(try await sink.forgetDistinctValues(ofWindowsEndedBefore: Self.hour.addingTimeInterval(25 * 3_600 + 1)) == 1)
            try await sink.commit(batch([try eventCountingUsers("e4", user: "u1")], epoch: epoch, nextOffset: 4))
            #expect(try await users() == ["users_hourly": 3, "users_daily": 2])
            #expect(try await count("SELECT count(*) AS n FROM tenant_acme.usage_distinct", db) == 2)
        }
    }
}

import Foundation
import Postgres
import Sink
import Tenancy
import Testing

/// Batches merged in memory (`SinkStore.merge`) are deduplicated when they merge, against
/// everything merged before them, committed or not; they commit as one, with one usage log row
/// per window, and what is abandoned or fenced off counts again when read again.
extension SinkDedupeStateTests {
    func usageLogRows(_ db: PostgresConnection) async throws -> Int64 {
        try await count("SELECT count(*) AS n FROM tally.usage_log", db)
    }

    /// Two batches merged into one: the repeat of e2 in the second is dropped when it merges,
    /// nothing is written until the commit, and the commit appends one log row per window
    /// (count and unique count) with the offsets of the second batch.
    @Test func mergedBatchesCountEachEventOnceAndAppendOneLogRowPerWindow() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            let epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            var merged = MergedBatch(consumerGroup: "usage")
            #expect(try await sink.merge(batch([try event("e1", user: "u1"), try event("e2", user: "u1")], epoch: epoch, nextOffset: 2), into: &merged))
            #expect(try await sink.merge(batch([try event("e2", user: "u1"), try event("e3", user: "u2")], epoch: epoch, nextOffset: 4), into: &merged))
            #expect(merged.usageRows == 2)
            #expect(try await count("SELECT count(*) AS n FROM tally.event_identities", db) == 0)
            try await sink.commit(merged)
            #expect(try await usageLogRows(db) == 2)
            #expect(try await totals(db) == [3, 2, 3, 1])
            #expect(try await sink.offsets(group: "usage")[Self.partition] == CommittedPosition(nextOffset: 4, epoch: epoch))
        }
    }

    /// A batch merged while the one before it has not committed yet counts that one's events
    /// as recorded; a commit repeated (after a lost COMMIT) finds its offsets stored and
    /// writes nothing twice.
    @Test func aBatchMergedBeforeTheLastCommitsCountsItsEventsAndARepeatedCommitWritesOnce() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            let epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            var first = MergedBatch(consumerGroup: "usage")
            #expect(try await sink.merge(batch([try event("e1", user: "u1")], epoch: epoch, nextOffset: 1), into: &first))
            var second = MergedBatch(consumerGroup: "usage")
            #expect(try await sink.merge(batch([try event("e1", user: "u1"), try event("e2", user: "u2")], epoch: epoch, nextOffset: 3), into: &second))
            try await sink.commit(first)
            try await sink.commit(first)
            try await sink.commit(second)
            try await sink.commit(second)
            #expect(try await totals(db) == [2, 2, 2, 1])
            #expect(try await count("SELECT count(*) AS n FROM tally.event_identities", db) == 2)
        }
    }

    /// An abandoned merged batch takes its events out of the dedupe state: read again, they
    /// count. One fenced off by a new owner does the same.
    @Test func eventsOfAnAbandonedOrFencedMergedBatchCountWhenReadAgain() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, server in
            var epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            var abandoned = MergedBatch(consumerGroup: "usage")
            #expect(try await sink.merge(batch([try event("e1", user: "u1")], epoch: epoch, nextOffset: 1), into: &abandoned))
            sink.abandon(abandoned)
            var again = MergedBatch(consumerGroup: "usage")
            #expect(try await sink.merge(batch([try event("e1", user: "u1")], epoch: epoch, nextOffset: 1), into: &again))
            try await sink.commit(again)
            #expect(try await totals(db) == [1, 1, 1, 0])

            var fenced = MergedBatch(consumerGroup: "usage")
            #expect(try await sink.merge(batch([try event("e2", user: "u2")], epoch: epoch, nextOffset: 2), into: &fenced))
            let other = SinkStore(conninfo: server.connectionString)
            _ = try await other.acquire([Self.partition], group: "usage")
            await other.close()
            await #expect(throws: SinkError.self) { try await sink.commit(fenced) }
            epoch = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            var reread = MergedBatch(consumerGroup: "usage")
            #expect(try await sink.merge(batch([try event("e2", user: "u2")], epoch: epoch, nextOffset: 2), into: &reread))
            try await sink.commit(reread)
            #expect(try await totals(db) == [2, 2, 2, 0])
        }
    }

    /// A batch that would make a tenant ownerless in the merged batch (its events from another
    /// partition too) is refused and changes nothing; one with a newer owner epoch than the
    /// merged batch fences it off.
    @Test func aBatchFromAnotherPartitionOrEpochOfTheTenantIsNotMerged() async throws {
        try await withSink(writeMethod: .loggedDeltas) { sink, db, _ in
            let other = LogPartition(topic: "events", partition: 4)
            let epochs = try await sink.acquire([Self.partition, other], group: "usage")
            var merged = MergedBatch(consumerGroup: "usage")
            #expect(try await sink.merge(batch([try event("e1", user: "u1")], epoch: epochs[Self.partition]!.epoch, nextOffset: 1), into: &merged))
            var elsewhere = try event("e2", user: "u2")
            elsewhere.partition = other
            let fromOther = SinkBatch(
                consumerGroup: "usage", positions: [other: CommittedPosition(nextOffset: 1, epoch: epochs[other]!.epoch)], events: [elsewhere])
            #expect(try await sink.merge(fromOther, into: &merged) == false)
            #expect(merged.positions.keys.sorted() == [Self.partition])
            let newer = try await sink.acquire([Self.partition], group: "usage")[Self.partition]!.epoch
            await #expect(throws: SinkError.self) {
                try await sink.merge(batch([try event("e3", user: "u3")], epoch: newer, nextOffset: 2), into: &merged)
            }
            try await sink.commit(fromOther)
            #expect(try await totals(db) == [1, 1, 1, 0])
        }
    }
}

import Kafka
import Testing

@testable import UsageProcessing

/// Which partitions the poll loop pauses for lanes that fall behind, and when it resumes them.
@Suite struct LanePausesTests {
    static let partitions = (Int32(0)..<4).map { TopicPartition(topic: "events", partition: $0) }
    /// Partitions 0 and 2 are lane 0's, 1 and 3 lane 1's; all owned under epoch 1.
    static let assignment = Dictionary(uniqueKeysWithValues: partitions.map { ($0, Int64?.some(1)) })

    static func settledPauses() -> LanePauses {
        var pauses = LanePauses(lanes: 2, limit: 100)
        for partition in partitions { pauses.polled(partition, epoch: 1) }
        return pauses
    }

    /// A lane over the limit has its partitions paused, the other lane's keep flowing; they
    /// resume once the lane is down to half the limit, not before (a lane behind till then).
    @Test func aLaneOverTheLimitPausesUntilDownToHalf() {
        var pauses = Self.settledPauses()
        let p = Self.partitions
        #expect(pauses.update(queued: [100, 0], assignment: Self.assignment) == ([], []))
        #expect(!pauses.anyLaneBehind)
        #expect(pauses.update(queued: [101, 0], assignment: Self.assignment) == ([p[0], p[2]], []))
        #expect(pauses.anyLaneBehind)
        #expect(pauses.update(queued: [101, 500], assignment: Self.assignment) == ([p[1], p[3]], []))
        #expect(pauses.update(queued: [51, 500], assignment: Self.assignment) == ([], []))
        #expect(pauses.update(queued: [50, 500], assignment: Self.assignment) == ([], [p[0], p[2]]))
        #expect(pauses.update(queued: [0, 0], assignment: Self.assignment) == ([], [p[1], p[3]]))
        #expect(!pauses.anyLaneBehind)
    }

    /// A partition nothing was polled from in its current ownership, or since the consumer
    /// moved it back, is not paused: librdkafka would resume it after a record of another
    /// ownership, or from before the move. Moving a paused partition back resumes it first.
    @Test func onlyPartitionsPolledSinceTheirAssignmentOrMoveBackPause() {
        var pauses = LanePauses(lanes: 2, limit: 100)
        let p = Self.partitions
        pauses.polled(p[0], epoch: 1)
        pauses.polled(p[2], epoch: 0)
        #expect(pauses.update(queued: [500, 0], assignment: Self.assignment) == ([p[0]], []))
        #expect(pauses.movingBack([p[0], p[2]]) == [p[0]])
        #expect(pauses.update(queued: [500, 0], assignment: Self.assignment) == ([], []))
        pauses.polled(p[0], epoch: 1)
        pauses.polled(p[2], epoch: 1)
        #expect(pauses.update(queued: [500, 0], assignment: Self.assignment) == ([p[0], p[2]], []))
    }

    /// A partition revoked while paused is resumed should it come back to a lane no longer
    /// behind (librdkafka may keep it paused), and paused again, once polled in its new
    /// ownership, should the lane still be behind.
    @Test func aPartitionRevokedWhilePausedIsResumedOrPausedAgainOnItsReturn() {
        var pauses = Self.settledPauses()
        let p = Self.partitions
        #expect(pauses.update(queued: [500, 500], assignment: Self.assignment) == ([p[0], p[1], p[2], p[3]], []))
        let withoutFirstTwo = Self.assignment.filter { $0.key.partition >= 2 }
        #expect(pauses.update(queued: [500, 500], assignment: withoutFirstTwo) == ([], []))
        var returned = Self.assignment
        returned[p[0]] = 2
        returned[p[1]] = 2
        #expect(pauses.update(queued: [0, 500], assignment: returned) == ([], [p[0], p[1], p[2]]))
        pauses.polled(p[1], epoch: 2)
        #expect(pauses.update(queued: [0, 500], assignment: returned) == ([p[1]], []))
    }
}

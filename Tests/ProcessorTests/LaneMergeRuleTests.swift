import Kafka
import Testing

@testable import UsageProcessing

/// When a commit lane merges polls and when it commits them, from its own backlog.
@Suite struct LaneMergeRuleTests {
    static func rule() -> LaneMergeRule {
        var configuration = UsageProcessorConfiguration(bootstrapServers: "unused")
        configuration.maximumBatch = 100
        configuration.mergedRecordsPerCommit = 1_000
        configuration.mergedWindowsPerCommit = 500
        return LaneMergeRule(configuration)
    }

    /// Under a steady load (a backlog short of a batch) every poll commits.
    @Test func aBacklogShortOfABatchCommitsEveryPoll() {
        let rule = Self.rule()
        #expect(rule.commits(records: 50, windows: 40, backlog: 0, logFull: false))
        #expect(rule.commits(records: 50, windows: 40, backlog: 900, logFull: false))
    }

    /// A backlog that would fill the batch merges until the batch is full, in records or
    /// windows, or the usage log is.
    @Test func aBacklogThatFillsABatchMergesUntilTheBatchOrTheLogIsFull() {
        let rule = Self.rule()
        #expect(!rule.commits(records: 50, windows: 40, backlog: 950, logFull: false))
        #expect(!rule.commits(records: 600, windows: 450, backlog: 5_000, logFull: false))
        #expect(rule.commits(records: 1_000, windows: 450, backlog: 5_000, logFull: false))
        #expect(rule.commits(records: 600, windows: 500, backlog: 5_000, logFull: false))
        #expect(rule.commits(records: 600, windows: 450, backlog: 5_000, logFull: true))
    }

    /// After a full merged batch, the catch-up's tail merges while more than a poll's records
    /// wait; a commit that was not merging ends that.
    @Test func afterAFullBatchTheTailMergesWhileMoreThanAPollWaits() {
        var rule = Self.rule()
        rule.committed(records: 1_000, backlog: 700)
        #expect(rule.mergesTail)
        #expect(!rule.commits(records: 300, windows: 200, backlog: 400, logFull: false))
        #expect(!rule.commits(records: 600, windows: 400, backlog: 101, logFull: false))
        #expect(rule.commits(records: 650, windows: 420, backlog: 100, logFull: false), "a poll's records, no more")
        rule.committed(records: 650, backlog: 100)
        #expect(!rule.mergesTail)
        #expect(rule.commits(records: 100, windows: 80, backlog: 400, logFull: false))
    }

    /// A lane's backlog is its own partitions' (number modulo the lane count): a flood in one
    /// lane's partitions leaves the other lane committing every poll.
    @Test func eachLaneJudgesByItsOwnPartitions() {
        let backlog: [TopicPartition: Int64] = [
            TopicPartition(topic: "events", partition: 1): 40_000, TopicPartition(topic: "events", partition: 3): 2_000,
            TopicPartition(topic: "events", partition: 2): 30,
        ]
        let backlogs = LaneMergeRule.laneBacklogs(backlog, lanes: 2)
        #expect(backlogs == [30, 42_000])
        let rule = Self.rule()
        #expect(rule.commits(records: 30, windows: 30, backlog: backlogs[0], logFull: false))
        #expect(!rule.commits(records: 100, windows: 90, backlog: backlogs[1], logFull: false))
        #expect(LaneMergeRule.laneBacklogs([:], lanes: 3) == [0, 0, 0])
    }
}

import Kafka

/// When a commit lane merges its share of the polls instead of committing them (see
/// `UsageProcessorConfiguration.mergedRecordsPerCommit`). It judges by the lane's own backlog,
/// the records waiting for the lane (in its queue and its partitions): a backlog in another
/// lane's partitions, such as one tenant's flood, never holds back this lane's commits.
struct LaneMergeRule: Sendable {
    let mergedRecordsPerCommit: Int
    let mergedWindowsPerCommit: Int
    /// Most records a poll returns: a backlog of no more than this is a catch-up's end.
    let maximumBatch: Int
    /// Set when the lane commits a full merged batch: it merges the rest of the catch-up too,
    /// which would otherwise, shorter than a batch, commit poll by poll and write its windows
    /// to the usage log with every poll.
    private(set) var mergesTail = false

    init(_ configuration: UsageProcessorConfiguration) {
        mergedRecordsPerCommit = configuration.mergedRecordsPerCommit
        mergedWindowsPerCommit = configuration.mergedWindowsPerCommit
        maximumBatch = configuration.maximumBatch
    }

    /// Whether a lane holding `records` merged records and `windows` windows commits them now,
    /// with `backlog` records waiting for it and the usage log full or not. Call
    /// `committed` when it does.
    func commits(records: Int, windows: Int, backlog: Int, logFull: Bool) -> Bool {
        !merges(records: records, backlog: backlog) || records >= mergedRecordsPerCommit || windows >= mergedWindowsPerCommit || logFull
    }

    /// The lane committed what it held, with `backlog` records waiting for it.
    mutating func committed(records: Int, backlog: Int) {
        mergesTail = merges(records: records, backlog: backlog)
    }

    /// Merging goes on while the backlog would fill the batch, or, after a full merged batch,
    /// while more than a poll's records wait.
    private func merges(records: Int, backlog: Int) -> Bool {
        backlog >= mergedRecordsPerCommit - records || (mergesTail && backlog > maximumBatch)
    }

    /// Each lane's backlog: the records waiting in the partitions it owns (partition number
    /// modulo `lanes`).
    static func laneBacklogs(_ backlog: [TopicPartition: Int64], lanes: Int) -> [Int] {
        var backlogs = [Int](repeating: 0, count: lanes)
        for (partition, records) in backlog { backlogs[Int(partition.partition) % lanes] += Int(records) }
        return backlogs
    }
}

import Kafka

/// Which partitions the poll loop keeps paused, so that a lane that falls behind (its commits
/// slow, say, or its partitions flooded) keeps a bounded queue while polling goes on for the
/// others: those of a lane with more than `limit` records queued, until it is down to half that.
///
/// librdkafka resumes a paused partition after the last record `poll` returned of it, dropping
/// what it had fetched beyond. A partition is paused only once a record of it was polled in its
/// current ownership and since the consumer last moved it back: only then is that position
/// where its lane's records end.
struct LanePauses: Sendable {
    let lanes: Int
    let limit: Int
    /// Lanes over the limit, until down to half of it.
    private var behind: Set<Int> = []
    private var paused: Set<TopicPartition> = []
    /// Partitions that left the assignment paused: resumed, or paused again, should they return.
    private var leftPaused: Set<TopicPartition> = []
    /// The owner epoch of the last record polled of each partition since it was last moved back.
    private var settled: [TopicPartition: Int64] = [:]

    /// Whether a lane is over the limit, or not yet down to half of it.
    var anyLaneBehind: Bool { !behind.isEmpty }

    init(lanes: Int, limit: Int) {
        self.lanes = lanes
        self.limit = limit
    }

    /// A record of `partition` was polled while this member owned it under `epoch`.
    mutating func polled(_ partition: TopicPartition, epoch: Int64) {
        settled[partition] = epoch
    }

    /// The consumer is about to move these partitions back: returns those paused, to resume
    /// before it does.
    mutating func movingBack(_ partitions: [TopicPartition]) -> [TopicPartition] {
        for partition in partitions { settled[partition] = nil }
        let resuming = paused.intersection(partitions)
        paused.subtract(resuming)
        return inOrder(resuming)
    }

    /// What to pause and resume, given each lane's queued records and the partitions assigned
    /// with the owner epoch of each (nil when this member holds none).
    mutating func update(queued: [Int], assignment: [TopicPartition: Int64?]) -> (pause: [TopicPartition], resume: [TopicPartition]) {
        for (lane, records) in queued.enumerated() {
            if records > limit { behind.insert(lane) } else if records <= limit / 2 { behind.remove(lane) }
        }
        let assigned = Set(assignment.keys)
        settled = settled.filter { assigned.contains($0.key) }
        let wanted = assigned.filter { partition in
            guard behind.contains(Int(partition.partition) % lanes), let epoch = settled[partition] else { return false }
            return assignment[partition] == epoch
        }
        let returning = leftPaused.intersection(assigned)
        leftPaused = leftPaused.subtracting(assigned).union(paused.subtracting(assigned))
        let stillPaused = paused.intersection(assigned)
        paused = wanted
        return (inOrder(wanted.subtracting(stillPaused)), inOrder(stillPaused.union(returning).subtracting(wanted)))
    }
}

private func inOrder(_ partitions: Set<TopicPartition>) -> [TopicPartition] {
    partitions.sorted { ($0.topic, $0.partition) < ($1.topic, $1.partition) }
}

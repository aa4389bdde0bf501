import Kafka
import Sink
import Synchronization

/// A rebalance listener that takes ownership of assigned partitions from the Sink (a new owner
/// epoch each, fencing off the previous owner) and starts them at the offsets stored there.
public final class SinkOwnership: RebalanceListener {
    public let sink: SinkStore
    public let group: String
    private let epochs = Mutex<[LogPartition: Int64]>([:])

    private let acquireTimeout: Duration

    public init(sink: SinkStore, group: String, acquireTimeout: Duration = .seconds(60)) {
        self.sink = sink
        self.group = group
        self.acquireTimeout = acquireTimeout
    }

    /// The epoch this member holds for `partition`, or nil when it does not own it.
    public func epoch(of partition: LogPartition) -> Int64? {
        epochs.withLock { $0[partition] }
    }

    /// Retries while Postgres is unreachable, for up to `acquireTimeout`, since the partitions
    /// cannot be read before their stored offsets are known.
    public func partitionsAssigned(_ partitions: [TopicPartition]) async throws -> [TopicPartition: Int64] {
        let owned = try await acquireRetrying(partitions.map { LogPartition(topic: $0.topic, partition: $0.partition) })
        epochs.withLock { epochs in for (partition, ownership) in owned { epochs[partition] = ownership.epoch } }
        return Dictionary(uniqueKeysWithValues: partitions.compactMap { partition in
            owned[LogPartition(topic: partition.topic, partition: partition.partition)]?.nextOffset.map { (partition, $0) }
        })
    }

    private func acquireRetrying(_ partitions: [LogPartition]) async throws -> [LogPartition: PartitionOwnership] {
        let deadline = ContinuousClock.now + acquireTimeout
        var delay: Duration = .milliseconds(100)
        while true {
            do {
                return try await sink.acquire(partitions, group: group)
            } catch {
                guard error.isConnectionLoss, ContinuousClock.now + delay < deadline else { throw error }
            }
            try await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }

    public func partitionsRevoked(_ partitions: [TopicPartition], lost: Bool) async {
        let revoked = partitions.map { LogPartition(topic: $0.topic, partition: $0.partition) }
        epochs.withLock { epochs in for partition in revoked { epochs[partition] = nil } }
        sink.release(revoked, group: group)
    }
}

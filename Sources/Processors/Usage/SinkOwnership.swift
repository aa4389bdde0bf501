import Kafka
import Sink
import Synchronization

/// A rebalance listener that takes ownership of assigned partitions from the Sink (a new owner
/// epoch each, fencing off the previous owner) and starts them at the offsets stored there.
public final class SinkOwnership: RebalanceListener {
    public let sink: SinkStore
    public let group: String
    private let epochs = Mutex<[LogPartition: Int64]>([:])

    public init(sink: SinkStore, group: String) {
        self.sink = sink
        self.group = group
    }

    /// The epoch this member holds for `partition`, or nil when it does not own it.
    public func epoch(of partition: LogPartition) -> Int64? {
        epochs.withLock { $0[partition] }
    }

    public func partitionsAssigned(_ partitions: [TopicPartition]) async throws -> [TopicPartition: Int64] {
        let owned = try await sink.acquire(partitions.map { LogPartition(topic: $0.topic, partition: $0.partition) }, group: group)
        epochs.withLock { epochs in for (partition, ownership) in owned { epochs[partition] = ownership.epoch } }
        return Dictionary(uniqueKeysWithValues: partitions.compactMap { partition in
            owned[LogPartition(topic: partition.topic, partition: partition.partition)]?.nextOffset.map { (partition, $0) }
        })
    }

    public func partitionsRevoked(_ partitions: [TopicPartition], lost: Bool) async {
        epochs.withLock { epochs in for partition in partitions { epochs[LogPartition(topic: partition.topic, partition: partition.partition)] = nil } }
    }
}

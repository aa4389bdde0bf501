import CRdKafka
import DedicatedThreads
import Foundation
import Logging
import Synchronization

/// How a consumer group spreads partitions over its members.
public enum AssignmentStrategy: String, Sendable {
    /// Incremental rebalances: members keep the partitions that do not move.
    case cooperativeSticky = "cooperative-sticky"
    /// Stop-the-world rebalances: every member gives up everything, then gets a new share.
    case range
    case roundRobin = "roundrobin"

    var isCooperative: Bool { self == .cooperativeSticky }
}

/// Settings of a `KafkaConsumer`.
public struct KafkaConsumerConfiguration: Sendable {
    /// librdkafka properties. Defaults: no auto commit and no auto offset store (offsets are
    /// the application's to manage), start from the earliest offset when none is stored.
    public var kafka: KafkaConfiguration
    public var assignmentStrategy: AssignmentStrategy

    public init(
        bootstrapServers: String, groupID: String, assignmentStrategy: AssignmentStrategy = .cooperativeSticky,
        properties: [String: String] = [:]
    ) {
        let defaults = [
            "group.id": groupID,
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": "false",
        ]
        var kafka = KafkaConfiguration(
            bootstrapServers: bootstrapServers, properties: defaults.merging(properties) { _, new in new })
        kafka["partition.assignment.strategy"] = assignmentStrategy.rawValue
        self.kafka = kafka
        self.assignmentStrategy = assignmentStrategy
    }
}

/// The application's part in a rebalance. Both calls run while the consumer waits for them,
/// so they must not call back into the consumer.
public protocol RebalanceListener: Sendable {
    /// `partitions` are about to be assigned. Return where to start reading each one (the next
    /// offset to read); partitions left out start at the group's committed offset, or at
    /// `auto.offset.reset` when none is committed. Throwing leaves them unassigned and makes
    /// the next `poll` throw.
    func partitionsAssigned(_ partitions: [TopicPartition]) async throws -> [TopicPartition: Int64]

    /// `partitions` are being taken away. Finish and commit in-flight work for them, unless
    /// `lost` says another member may already own them (then drop it).
    func partitionsRevoked(_ partitions: [TopicPartition], lost: Bool) async
}

/// A consumer-group member.
///
/// Every method runs on the consumer's own thread, so the blocking librdkafka calls behind
/// them never occupy the Swift cooperative pool. Offsets are the application's: nothing is
/// committed unless `commit` is called, and a `RebalanceListener` can choose the start offsets.
/// Call `close()` to leave the group cleanly.
public actor KafkaConsumer {
    private let executor: DedicatedThreadExecutor
    private let handle: NativeHandle
    private let context: ConsumerContext
    private var isClosed = false

    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    public init(
        configuration: KafkaConsumerConfiguration, rebalanceListener: (any RebalanceListener)? = nil,
        logger: Logger = Logger(label: "tally.kafka.consumer")
    ) throws(KafkaError) {
        let context = ConsumerContext(
            logger: logger, listener: rebalanceListener, cooperative: configuration.assignmentStrategy.isCooperative)
        let handle = try makeNativeClient(type: RD_KAFKA_CONSUMER, configuration: configuration.kafka, context: context) {
            rd_kafka_conf_set_rebalance_cb($0, rebalanceCallback)
        }
        rd_kafka_poll_set_consumer(handle)
        self.context = context
        self.handle = NativeHandle(handle)
        self.executor = DedicatedThreadExecutor(name: "kafka-consume")
    }

    deinit {
        if !isClosed {
            // Leaving the group blocks and calls the rebalance callback: do it on a thread of
            // its own, keeping the callback context alive until the handle is gone.
            let (handle, context) = (handle, context)
            Thread.detachNewThread {
                rd_kafka_consumer_close(handle.pointer)
                rd_kafka_destroy(handle.pointer)
                withExtendedLifetime(context) {}
            }
        }
        executor.shutdown()
    }

    /// Joins the group for these topics; assignments follow in `poll`.
    public func subscribe(_ topics: [String]) throws(KafkaError) {
        try checkOpen()
        let list = makePartitionList(topics.map { (TopicPartition(topic: $0, partition: RD_KAFKA_PARTITION_UA), Int64(RD_KAFKA_OFFSET_INVALID)) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let code = rd_kafka_subscribe(handle.pointer, list)
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: "subscribe to \(topics)") }
    }

    /// Waits up to `timeout` for the first record, then returns it with up to `maxRecords - 1`
    /// more that are already fetched. Rebalances are served here too, and a poll that serves
    /// one returns no record fetched before it of a partition it revoked, so every record
    /// returned belongs to the assignment at the poll's end, as it was when the record was
    /// fetched (its new owner, or this consumer once the partition comes back, reads it again).
    public func poll(maxRecords: Int = 500, timeout: Duration = .milliseconds(100)) throws(KafkaError) -> [ConsumerRecord] {
        try checkOpen()
        var records: [ConsumerRecord] = []
        func dropRevoked() {
            let revoked = context.takeRevoked()
            if !revoked.isEmpty { records.removeAll { revoked.contains($0.topicPartition) } }
        }
        var waitMilliseconds = milliseconds(timeout)
        while records.count < maxRecords, let message = rd_kafka_consumer_poll(handle.pointer, waitMilliseconds) {
            defer { rd_kafka_message_destroy(message) }
            if let error = context.takeRebalanceError() { throw error }
            dropRevoked()
            let code = message.pointee.err
            guard code == RD_KAFKA_RESP_ERR_NO_ERROR else {
                if code == RD_KAFKA_RESP_ERR__FATAL || code == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC {
                    throw KafkaError(code: code, context: "consume")
                }
                context.logger.warning("consumer error: \(KafkaErrorCode(code).name): \(String(cString: rd_kafka_err2str(code)))")
                continue
            }
            records.append(Self.record(from: message))
            waitMilliseconds = 0
        }
        if let error = context.takeRebalanceError() { throw error }
        dropRevoked()
        return records
    }

    /// Records and events fetched or raised for this consumer and not polled yet: what tests
    /// wait on to know a rebalance is queued behind fetched records.
    func queuedEvents() -> Int {
        let queue = rd_kafka_queue_get_consumer(handle.pointer)
        defer { rd_kafka_queue_destroy(queue) }
        return Int(rd_kafka_queue_length(queue))
    }

    /// Commits these next-offsets-to-read to the group coordinator and waits for the answer.
    public func commit(_ offsets: [TopicPartition: Int64]) throws(KafkaError) {
        try checkOpen()
        guard !offsets.isEmpty else { return }
        let list = makePartitionList(offsets.map { ($0.key, $0.value) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let code = rd_kafka_commit(handle.pointer, list, 0)
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: "commit offsets") }
        for (partition, _, error) in topicPartitions(list) where error != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(code: error, context: "commit offset of \(partition)")
        }
    }

    /// The group's committed next-offset-to-read per partition; partitions without one are absent.
    public func committedOffsets(for partitions: [TopicPartition], timeout: Duration = .seconds(10)) throws(KafkaError) -> [TopicPartition: Int64] {
        try checkOpen()
        let list = makePartitionList(partitions.map { ($0, Int64(RD_KAFKA_OFFSET_INVALID)) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let code = rd_kafka_committed(handle.pointer, list, milliseconds(timeout))
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: "read committed offsets") }
        var result: [TopicPartition: Int64] = [:]
        for (partition, offset, _) in topicPartitions(list) where offset >= 0 { result[partition] = offset }
        return result
    }

    /// Moves the read position of partitions this consumer is assigned.
    public func seek(_ offsets: [TopicPartition: Int64], timeout: Duration = .seconds(10)) throws(KafkaError) {
        try checkOpen()
        let list = makePartitionList(offsets.map { ($0.key, $0.value) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        if let error = rd_kafka_seek_partitions(handle.pointer, list, milliseconds(timeout)) {
            throw KafkaError(consuming: error, context: "seek")
        }
        for (partition, _, error) in topicPartitions(list) where error != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(code: error, context: "seek \(partition)")
        }
    }

    /// Stops fetching these partitions until `resume`; their assignment is kept. Records of
    /// theirs fetched and not polled yet are dropped: `resume` fetches them again, from after
    /// the last record `poll` returned.
    public func pause(_ partitions: [TopicPartition]) throws(KafkaError) {
        try checkOpen()
        try changeFetching(partitions, name: "pause", rd_kafka_pause_partitions)
    }

    /// Fetches paused partitions again.
    public func resume(_ partitions: [TopicPartition]) throws(KafkaError) {
        try checkOpen()
        try changeFetching(partitions, name: "resume", rd_kafka_resume_partitions)
    }

    /// The partitions this member currently owns.
    public func assignment() throws(KafkaError) -> Set<TopicPartition> {
        try checkOpen()
        var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        let code = rd_kafka_assignment(handle.pointer, &list)
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR, let list else { throw KafkaError(code: code, context: "read assignment") }
        defer { rd_kafka_topic_partition_list_destroy(list) }
        return Set(topicPartitions(list).map(\.0))
    }

    /// Records of each assigned partition that `poll` has not returned yet, as far as this
    /// client knows: the high watermark its last fetch saw less its position (librdkafka's
    /// cached values; no request goes out). Left out: partitions with none, and those `poll`
    /// has returned nothing from since their assignment (their position is not known yet).
    public func backlog() throws(KafkaError) -> [TopicPartition: Int64] {
        try checkOpen()
        var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        let code = rd_kafka_assignment(handle.pointer, &list)
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR, let list else { throw KafkaError(code: code, context: "read assignment") }
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let positions = rd_kafka_position(handle.pointer, list)
        guard positions == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: positions, context: "read positions") }
        var backlog: [TopicPartition: Int64] = [:]
        for (partition, position, _) in topicPartitions(list) where position >= 0 {
            var (low, high): (Int64, Int64) = (0, 0)
            let watermarks = rd_kafka_get_watermark_offsets(handle.pointer, partition.topic, partition.partition, &low, &high)
            if watermarks == RD_KAFKA_RESP_ERR_NO_ERROR, high > position { backlog[partition] = high - position }
        }
        return backlog
    }

    /// Leaves the group (serving the final revocation through the listener) and frees the client.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        let code = rd_kafka_consumer_close(handle.pointer)
        if code != RD_KAFKA_RESP_ERR_NO_ERROR {
            context.logger.warning("consumer close: \(KafkaErrorCode(code).name)")
        }
        rd_kafka_destroy(handle.pointer)
    }

    private func checkOpen() throws(KafkaError) {
        if isClosed { throw KafkaError(kind: .closed, message: "consumer is closed") }
    }

    private func changeFetching(
        _ partitions: [TopicPartition], name: String,
        _ call: (OpaquePointer?, UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) -> rd_kafka_resp_err_t
    ) throws(KafkaError) {
        let list = makePartitionList(partitions.map { ($0, Int64(RD_KAFKA_OFFSET_INVALID)) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let code = call(handle.pointer, list)
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: code, context: name) }
    }

    private static func record(from message: UnsafeMutablePointer<rd_kafka_message_t>) -> ConsumerRecord {
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let timestamp = rd_kafka_message_timestamp(message, &timestampType)
        return ConsumerRecord(
            topic: String(cString: rd_kafka_topic_name(message.pointee.rkt)),
            partition: message.pointee.partition,
            offset: message.pointee.offset,
            key: copyBytes(message.pointee.key, count: message.pointee.key_len),
            value: copyBytes(message.pointee.payload, count: message.pointee.len),
            headers: copyHeaders(of: message),
            timestampMilliseconds: timestampType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : timestamp)
    }
}

func milliseconds(_ duration: Duration) -> Int32 {
    Int32(clamping: duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
}

private let rebalanceCallback:
    @convention(c) (OpaquePointer?, rd_kafka_resp_err_t, UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?, UnsafeMutableRawPointer?) -> Void = {
        rk, code, partitions, opaque in
        guard let rk, let partitions else { return }
        (ClientContext.from(opaque) as! ConsumerContext).rebalance(rk, code, partitions)
    }

/// Rebalance handling of one consumer; runs on the consumer's thread inside librdkafka calls.
final class ConsumerContext: ClientContext, @unchecked Sendable {
    private let listener: (any RebalanceListener)?
    /// The configured protocol; asking librdkafka inside the callback can hang after close (2.0.2).
    private let cooperative: Bool
    private let rebalanceError = Mutex<KafkaError?>(nil)
    /// Partitions revoked since `poll` last asked.
    private let revoked = Mutex<Set<TopicPartition>>([])

    init(logger: Logger, listener: (any RebalanceListener)?, cooperative: Bool) {
        self.listener = listener
        self.cooperative = cooperative
        super.init(logger: logger)
    }

    func takeRebalanceError() -> KafkaError? {
        rebalanceError.withLock { error in
            defer { error = nil }
            return error
        }
    }

    /// The partitions revoked since the last call.
    func takeRevoked() -> Set<TopicPartition> {
        revoked.withLock { revoked in
            defer { revoked = [] }
            return revoked
        }
    }

    func rebalance(_ rk: OpaquePointer, _ code: rd_kafka_resp_err_t, _ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) {
        let partitions = topicPartitions(list).map(\.0)
        var logger = logger
        logger[metadataKey: "kafka.client"] = "\(String(cString: rd_kafka_name(rk)))"
        switch code {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            logger.info("partitions assigned: \(partitions)")
            if let listener {
                do {
                    let offsets = try waitFor { try await listener.partitionsAssigned(partitions) }
                    for index in 0..<Int(list.pointee.cnt) {
                        let element = list.pointee.elems[index]
                        let partition = TopicPartition(topic: String(cString: element.topic), partition: element.partition)
                        if let offset = offsets[partition] { list.pointee.elems[index].offset = offset }
                    }
                } catch {
                    logger.error("rebalance listener failed on assign of \(partitions): \(error)")
                    rebalanceError.withLock {
                        $0 = KafkaError(kind: .rebalance, message: "assigning \(partitions) failed: \(error)")
                    }
                    return
                }
            }
            if cooperative {
                if let error = rd_kafka_incremental_assign(rk, list) {
                    recordFailure(KafkaError(consuming: error, context: "incremental assign"))
                }
            } else {
                let code = rd_kafka_assign(rk, list)
                if code != RD_KAFKA_RESP_ERR_NO_ERROR { recordFailure(KafkaError(code: code, context: "assign")) }
            }
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            let lost = rd_kafka_assignment_lost(rk) != 0
            logger.info("partitions revoked: \(partitions)\(lost ? " (lost)" : "")")
            revoked.withLock { $0.formUnion(partitions) }
            if let listener {
                _ = try? waitFor { await listener.partitionsRevoked(partitions, lost: lost) }
            }
            if cooperative {
                if let error = rd_kafka_incremental_unassign(rk, list) {
                    recordFailure(KafkaError(consuming: error, context: "incremental unassign"))
                }
            } else {
                rd_kafka_assign(rk, nil)
            }
        default:
            logger.error("rebalance error: \(KafkaErrorCode(code).name)")
            if !cooperative { rd_kafka_assign(rk, nil) }
        }
    }

    private func recordFailure(_ error: KafkaError) {
        logger.error("\(error)")
        rebalanceError.withLock { $0 = error }
    }

    /// Runs async listener code while the consumer thread (never a pool thread) waits for it.
    private func waitFor<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let outcome = OutcomeBox<T>()
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            outcome.value.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        return try outcome.value.withLock { $0! }.get()
    }
}

private final class OutcomeBox<T: Sendable>: Sendable {
    let value = Mutex<Result<T, any Error>?>(nil)
}

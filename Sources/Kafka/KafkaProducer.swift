import CRdKafka
import DedicatedThreads
import Foundation
import Logging

/// Settings of a `KafkaProducer`.
public struct KafkaProducerConfiguration: Sendable {
    /// librdkafka properties. Defaults: idempotence on (`acks=all`, ordered retries), a bounded
    /// local queue, a 2-minute delivery timeout. Anything set here wins.
    public var kafka: KafkaConfiguration
    /// How long a `send` waits for room when the local queue is full before failing the
    /// records it could not enqueue with `KafkaError.Kind.queueFull`. Zero fails them at once.
    public var enqueueTimeout: Duration
    /// Topics the producer will write to. Their metadata is fetched with the client's first
    /// request; a topic first named by a record can wait for the next metadata refresh, which
    /// delays that first delivery by up to a second.
    public var topics: [String]

    public init(
        bootstrapServers: String, properties: [String: String] = [:], enqueueTimeout: Duration = .seconds(5), topics: [String] = []
    ) {
        let defaults = [
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "5",
            "message.timeout.ms": "120000",
            "queue.buffering.max.messages": "100000",
        ]
        kafka = KafkaConfiguration(
            bootstrapServers: bootstrapServers, properties: defaults.merging(properties) { _, new in new })
        self.enqueueTimeout = enqueueTimeout
        self.topics = topics
    }
}

/// An idempotent Kafka producer.
///
/// `send` hands records to the producer's own thread and suspends until the broker
/// acknowledged each (with `acks=all`), reporting partition and offset. That one thread does
/// every call into librdkafka for the producer, as a C producer loop does: it enqueues the
/// records of every `send` in the order they came, and serves delivery reports between
/// enqueues; no lock of librdkafka's is fought over by senders, and the Swift pool never
/// blocks on it. A full local queue is never a silent drop: a `send` waits up to
/// `enqueueTimeout` for room, then fails the records it could not enqueue with `queueFull`.
/// Call `close()` when done: it flushes what is queued, then frees the client.
public final class KafkaProducer: Sendable {
    private let context: ProducerContext
    /// The client's main queue: delivery reports, logs and errors; yielding it wakes the thread.
    private let mainQueue: NativeHandle

    public init(configuration: KafkaProducerConfiguration, logger: Logger = Logger(label: "tally.kafka.producer")) throws(KafkaError) {
        let context = ProducerContext(enqueueTimeout: configuration.enqueueTimeout, logger: logger)
        let handle = try makeNativeClient(type: RD_KAFKA_PRODUCER, configuration: configuration.kafka, context: context) {
            rd_kafka_conf_set_events($0, Int32(RD_KAFKA_EVENT_DR))
        }
        self.context = context
        let mainQueue = NativeHandle(rd_kafka_queue_get_main(handle))
        self.mainQueue = mainQueue
        // Made before the client's first metadata request goes out; destroyed with the client.
        let topicHandles = configuration.topics.compactMap { rd_kafka_topic_new(handle, $0, nil).map(NativeHandle.init) }
        Thread.detachNewThread { [context, handle = NativeHandle(handle)] in
            nameCurrentThread("kafka-produce")
            context.runOwnerLoop(handle.pointer, mainQueue: mainQueue.pointer, topicHandles: topicHandles.map(\.pointer))
        }
    }

    deinit {
        context.requestClose(flushTimeout: .seconds(30), waiter: nil, wakingOwnerOn: mainQueue.pointer)
    }

    /// Sends one record and returns its acknowledgement.
    public func send(_ record: ProducerRecord) async throws(KafkaError) -> DeliveryReport {
        try await send([record])[0].get()
    }

    /// Sends records in order and returns one result per record, in the same order, once every
    /// record is acknowledged or has failed.
    public func send(_ records: [ProducerRecord]) async -> [Result<DeliveryReport, KafkaError>] {
        guard !records.isEmpty else { return [] }
        let group = context.submit(records, wakingOwnerOn: mainQueue.pointer)
        let settled = await context.outcomes(of: group)
        // Read once: the group is a class, whose every property access is checked.
        let (outcomes, errors) = (settled.outcomes, settled.errors)
        return records.withUnsafeBufferPointer { records in
            outcomes.withUnsafeBufferPointer { outcomes in
                records.indices.map { index in
                    if !errors.isEmpty, let error = errors[index] { return .failure(error) }
                    return .success(DeliveryReport(topic: records[index].topic, partition: outcomes[index].partition, offset: outcomes[index].offset))
                }
            }
        }
    }

    /// Sends what waits out `linger.ms` at once, and waits until every record sent so far is
    /// acknowledged or failed.
    public func flush(timeout: Duration) async throws(KafkaError) {
        try await context.waitForEmptyQueue(deadline: .now + timeout, wakingOwnerOn: mainQueue.pointer)
    }

    /// Flushes for up to `flushTimeout`, fails whatever is still queued, and frees the client.
    public func close(flushTimeout: Duration = .seconds(30)) async {
        await withCheckedContinuation { continuation in
            context.requestClose(flushTimeout: flushTimeout, waiter: continuation, wakingOwnerOn: mainQueue.pointer)
        }
    }
}

/// An `rd_kafka_t` pointer; librdkafka's API is thread-safe for what Tally calls concurrently.
struct NativeHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

/// What a record's opaque pointer carries to its delivery report: its `send` call's group (the
/// upper 32 bits) and its index in that call (the lower 32).
struct DeliveryTag {
    /// The group id to use after `id`: ids run from 1 to `UInt32.max`, then start again at 1.
    static func group(after id: UInt64) -> UInt64 { id >= UInt64(UInt32.max) ? 1 : id + 1 }

    let group: UInt64
    let index: Int

    init(group: UInt64, index: Int) {
        (self.group, self.index) = (group, index)
    }

    /// Reads a tag back; a record without one reads as group 0, which is never registered.
    init(_ opaque: UnsafeMutableRawPointer?) {
        let bits = UInt64(UInt(bitPattern: opaque))
        (group, index) = (bits >> 32, Int(bits & 0xFFFF_FFFF))
    }

    var opaque: UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: UInt(group << 32 | UInt64(index))) }
}

/// The outcomes of one `send` call's records, filed by delivery reports. Guarded by the
/// producer context's lock until complete, then owned by the sender alone.
final class DeliveryGroup: @unchecked Sendable {
    /// One record's outcome: where it was stored once acknowledged (-1 before), and whether it
    /// is settled at all (a failed record is settled with its error in `errors`).
    struct Outcome {
        var offset: Int64 = -1
        var partition: Int32 = -1
        var settled = false
    }

    var outcomes: [Outcome]
    var errors: [Int: KafkaError] = [:]
    var remaining: Int
    var waiter: CheckedContinuation<DeliveryGroup, Never>?

    init(count: Int) {
        outcomes = Array(repeating: Outcome(), count: count)
        remaining = count
    }

    /// Fails every record still waiting.
    func failUnsettled(with error: KafkaError) {
        for index in outcomes.indices where !outcomes[index].settled {
            outcomes[index].settled = true
            errors[index] = error
        }
        remaining = 0
    }
}


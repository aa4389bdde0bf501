import CRdKafka
import DedicatedThreads
import Foundation
import Logging
import Synchronization

/// Settings of a `KafkaProducer`.
public struct KafkaProducerConfiguration: Sendable {
    /// librdkafka properties. Defaults: idempotence on (`acks=all`, ordered retries), a bounded
    /// local queue, a 2-minute delivery timeout. Anything set here wins.
    public var kafka: KafkaConfiguration
    /// How long one `send` call waits in all for room when the local queue is full before
    /// failing its records that found none with `KafkaError.Kind.queueFull`. Zero fails at once.
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
/// acknowledged each (with `acks=all`), reporting partition and offset. That one thread makes
/// every librdkafka call, as a C producer loop does: it enqueues the records of each call in
/// the order the calls arrived and serves the delivery reports, so neither enqueueing nor
/// polling ever runs on the Swift pool. A full local queue is never a silent drop: the thread
/// waits up to `enqueueTimeout` per call for room, then fails what found none with
/// `queueFull`. Call `close()` when done: it enqueues what was handed over, flushes, then frees
/// the client.
public final class KafkaProducer: Sendable {
    private let context: ProducerContext
    private let handle: NativeHandle

    public init(configuration: KafkaProducerConfiguration, logger: Logger = Logger(label: "tally.kafka.producer")) throws(KafkaError) {
        let context = ProducerContext(logger: logger, enqueueTimeout: configuration.enqueueTimeout)
        let handle = try makeNativeClient(type: RD_KAFKA_PRODUCER, configuration: configuration.kafka, context: context) {
            rd_kafka_conf_set_dr_msg_cb($0, deliveryReportCallback)
        }
        self.context = context
        self.handle = NativeHandle(handle)
        // Made here, before the client's first metadata request goes out.
        let topicHandles = TopicHandles(handle, declared: configuration.topics)
        Thread.detachNewThread { [context, handle = self.handle] in
            nameCurrentThread("kafka-produce")
            context.run(handle.pointer, topicHandles: topicHandles)
        }
    }

    deinit {
        context.requestClose(flushTimeout: .seconds(30), waiter: nil, handle: handle)
    }

    /// Sends one record and returns its acknowledgement.
    public func send(_ record: ProducerRecord) async throws(KafkaError) -> DeliveryReport {
        try await send([record])[0].get()
    }

    /// Sends records in order and returns one result per record, in the same order, once every
    /// record is acknowledged or has failed.
    public func send(_ records: [ProducerRecord]) async -> [Result<DeliveryReport, KafkaError>] {
        guard !records.isEmpty else { return [] }
        let group = DeliveryGroup(count: records.count)
        context.submit(records, to: group, handle: handle)
        await group.completion()
        let errors = group.errors
        return records.indices.map { index in
            if let error = errors[index] { return .failure(error) }
            let slot = group.slots[index]
            return .success(DeliveryReport(topic: records[index].topic, partition: slot.partition, offset: slot.offset))
        }
    }

    /// Waits until every record handed over so far is acknowledged or failed.
    public func flush(timeout: Duration) async throws(KafkaError) {
        try await context.waitForEmptyQueue(deadline: .now + timeout, handle: handle)
    }

    /// Enqueues what was handed over, flushes for up to `flushTimeout`, fails whatever is still
    /// queued, and frees the client. Records sent after this fail with `closed`.
    public func close(flushTimeout: Duration = .seconds(30)) async {
        await withCheckedContinuation { continuation in
            context.requestClose(flushTimeout: flushTimeout, waiter: continuation, handle: handle)
        }
    }
}

/// The message array and key and value bytes of one `rd_kafka_produce_batch` call, kept
/// between calls and grown when a call needs more.
private final class BatchScratch {
    private(set) var bytes = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private(set) var messages = UnsafeMutableBufferPointer<rd_kafka_message_t>(start: nil, count: 0)

    func reserve(bytes byteCount: Int, messages messageCount: Int) {
        if bytes.count < byteCount || bytes.count == 0 {
            bytes.deallocate()
            bytes = .allocate(byteCount: max(byteCount, 2 * bytes.count, 4096), alignment: 8)
        }
        if messages.count < messageCount {
            messages.deallocate()
            messages = .allocate(capacity: messageCount)
        }
    }

    deinit {
        bytes.deallocate()
        messages.deallocate()
    }
}

/// The records of one `send` call, waiting for the producer's thread.
private struct Submission {
    let records: [ProducerRecord]
    let group: DeliveryGroup
}

/// The producer thread's topic handles by name, made on first use and destroyed with the
/// client. The last one used is checked first, since records mostly come in runs of one topic.
/// Made by the initializer and handed to the producer's thread, which alone uses it from then on.
private struct TopicHandles: @unchecked Sendable {
    private var handles: [String: OpaquePointer] = [:]
    private var last: (name: String, handle: OpaquePointer)?

    init(_ rk: OpaquePointer, declared: [String]) {
        for name in declared { _ = handle(for: name, rk) }
    }

    /// `nil` when librdkafka refuses the name.
    mutating func handle(for name: String, _ rk: OpaquePointer) -> OpaquePointer? {
        if let last, last.name == name { return last.handle }
        guard let handle = handles[name] ?? rd_kafka_topic_new(rk, name, nil) else { return nil }
        handles[name] = handle
        last = (name, handle)
        return handle
    }

    mutating func destroyAll() {
        handles.values.forEach(rd_kafka_topic_destroy)
        handles.removeAll()
        last = nil
    }
}

private func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    guard let bytes else { return body(UnsafeRawBufferPointer(start: nil, count: 0)) }
    return bytes.withUnsafeBytes(body)
}

/// An `rd_kafka_t` pointer; librdkafka's API is thread-safe for what Tally calls concurrently.
struct NativeHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

/// Runs once per record on the producer's thread, the only one that polls the handle. It
/// writes the outcome into the record's own slot and takes no lock.
private let deliveryReportCallback: @convention(c) (OpaquePointer?, UnsafePointer<rd_kafka_message_t>?, UnsafeMutableRawPointer?) -> Void = {
    rk, message, _ in
    guard let rk, let message, let opaque = message.pointee._private else { return }
    let slot = opaque.assumingMemoryBound(to: DeliverySlot.self)
    let group = slot.pointee.group.takeUnretainedValue()
    let code = message.pointee.err
    guard code != RD_KAFKA_RESP_ERR_NO_ERROR else {
        slot.pointee.partition = message.pointee.partition
        slot.pointee.offset = message.pointee.offset
        group.settle(slot)
        return
    }
    let persistence: PersistenceStatus =
        switch rd_kafka_message_status(message) {
        case RD_KAFKA_MSG_STATUS_PERSISTED: .persisted
        case RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED: .possiblyPersisted
        default: .notPersisted
        }
    var error = KafkaError(code: code, context: "delivery", persistence: persistence)
    if code == RD_KAFKA_RESP_ERR__FATAL {
        var reason = [CChar](repeating: 0, count: 512)
        let fatalCode = rd_kafka_fatal_error(rk, &reason, reason.count)
        error = KafkaError(
            kind: .fatal, code: KafkaErrorCode(fatalCode), message: "fatal producer error: \(text(ofBuffer: reason))",
            persistence: persistence)
    } else if error.kind == .broker || error.kind == .timedOut {
        error = KafkaError(kind: .deliveryFailed, code: error.code, message: error.message, persistence: persistence)
    }
    group.settle(index: slot - group.slots.baseAddress!, with: error)
}

/// Where one record's delivery report lands; librdkafka carries its address as the message opaque.
struct DeliverySlot {
    /// The group owning this slot; it outlives every report of its records.
    let group: Unmanaged<DeliveryGroup>
    var settled = false
    var partition: Int32 = -1
    var offset: Int64 = -1
}

/// The outcomes of one `send` call's records. Written only by the producer's thread; the
/// sender reads them once `completion()` returned.
final class DeliveryGroup: @unchecked Sendable {
    let slots: UnsafeMutableBufferPointer<DeliverySlot>
    private(set) var errors: [Int: KafkaError] = [:]
    private var remaining: Int
    private let waiter = Mutex<(continuation: CheckedContinuation<Void, Never>?, complete: Bool)>((nil, false))

    init(count: Int) {
        slots = .allocate(capacity: count)
        remaining = count
        let unmanaged = Unmanaged.passUnretained(self)
        _ = slots.initialize(from: repeatElement(DeliverySlot(group: unmanaged), count: count))
    }

    deinit { slots.deallocate() }

    var isComplete: Bool { remaining == 0 }

    func opaque(of index: Int) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(slots.baseAddress! + index) }

    /// Records a successful delivery already written into `slot`.
    func settle(_ slot: UnsafeMutablePointer<DeliverySlot>) {
        slot.pointee.settled = true
        countSettled()
    }

    func settle(index: Int, with error: KafkaError) {
        errors[index] = error
        slots[index].settled = true
        countSettled()
    }

    /// Fails every record from `start` on that has no outcome.
    func failUnsettled(from start: Int = 0, with error: KafkaError) {
        for index in start..<slots.count where !slots[index].settled { settle(index: index, with: error) }
    }

    private func countSettled() {
        remaining -= 1
        guard remaining == 0 else { return }
        let continuation = waiter.withLock { state in
            state.complete = true
            return state.continuation
        }
        continuation?.resume()
    }

    /// Returns once every record is settled.
    func completion() async {
        await withCheckedContinuation { continuation in
            let complete = waiter.withLock { state in
                if !state.complete { state.continuation = continuation }
                return state.complete
            }
            if complete { continuation.resume() }
        }
    }
}

/// The producer's thread and what other threads hand to it.
final class ProducerContext: ClientContext, @unchecked Sendable {
    private struct FlushWaiter {
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    /// Shared between the senders and the producer's thread.
    private struct State {
        var submissions: [Submission] = []
        /// The thread is (about to be) asleep in `rd_kafka_poll` and needs waking for new work.
        var idle = false
        var flushWaiters: [FlushWaiter] = []
        var closeRequest: Duration?
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var closed = false
    }

    private let state = Mutex(State())
    private let enqueueTimeout: Duration
    /// Groups with records in librdkafka; touched only by the producer's thread.
    private var inFlight: [ObjectIdentifier: DeliveryGroup] = [:]
    /// Room for one `rd_kafka_produce_batch` call; touched only by the producer's thread.
    private let scratch = BatchScratch()
    /// Callers waking the thread through the handle right now; it is destroyed only when none are left.
    private let handleUsers = Atomic(0)

    static let closedError = KafkaError(kind: .closed, message: "producer closed before delivery", persistence: .possiblyPersisted)
    static let refusedError = KafkaError(kind: .closed, message: "producer is closed", persistence: .notPersisted)

    init(logger: Logger, enqueueTimeout: Duration) {
        self.enqueueTimeout = enqueueTimeout
        super.init(logger: logger)
    }

    /// Queues a send call's records for the thread; once the producer is closing they fail at once.
    func submit(_ records: [ProducerRecord], to group: DeliveryGroup, handle: NativeHandle) {
        let (accepted, wake) = state.withLock { state in
            guard state.closeRequest == nil, !state.closed else { return (false, false) }
            state.submissions.append(Submission(records: records, group: group))
            defer { state.idle = false }
            return (true, state.idle)
        }
        guard accepted else {
            group.failUnsettled(with: Self.refusedError)
            return
        }
        if wake { wakeThread(handle) }
    }

    /// Interrupts the thread's wait in `rd_kafka_poll`; a wake-up sent before it waits is kept.
    private func wakeThread(_ handle: NativeHandle) {
        handleUsers.add(1, ordering: .sequentiallyConsistent)
        defer { handleUsers.subtract(1, ordering: .sequentiallyConsistent) }
        if !state.withLock({ $0.closed }) { rd_kafka_yield(handle.pointer) }
    }

    func waitForEmptyQueue(deadline: ContinuousClock.Instant, handle: NativeHandle) async throws(KafkaError) {
        do {
            try await withCheckedThrowingContinuation { continuation in
                let closed = state.withLock { state in
                    if state.closed { return true }
                    state.flushWaiters.append(FlushWaiter(deadline: deadline, continuation: continuation))
                    return false
                }
                if closed { continuation.resume() } else { wakeThread(handle) }
            }
        } catch {
            throw error as! KafkaError
        }
    }

    func requestClose(flushTimeout: Duration, waiter: CheckedContinuation<Void, Never>?, handle: NativeHandle) {
        let alreadyClosed = state.withLock { state in
            if state.closed { return true }
            if state.closeRequest == nil { state.closeRequest = flushTimeout }
            if let waiter { state.closeWaiters.append(waiter) }
            return false
        }
        if alreadyClosed { waiter?.resume() } else { wakeThread(handle) }
    }

    /// The body of the producer's thread; it owns `rk` until it destroys it, with `topics`.
    fileprivate func run(_ rk: OpaquePointer, topicHandles: TopicHandles) {
        var topics = topicHandles
        while true {
            let (submissions, closeRequest) = state.withLock { state in
                defer { state.submissions.removeAll() }
                state.idle = state.submissions.isEmpty && state.closeRequest == nil
                return (state.submissions, state.closeRequest)
            }
            for submission in submissions { enqueue(submission, rk, topics: &topics) }
            if let flushTimeout = closeRequest {
                shutDown(rk, flushTimeout: flushTimeout, topics: &topics)
                return
            }
            rd_kafka_poll(rk, submissions.isEmpty ? 100 : 0)
            afterPollCycle(queueLength: rd_kafka_outq_len(rk))
        }
    }

    /// Hands one call's records to librdkafka in order. On a full queue it serves delivery
    /// reports until there is room, for up to `enqueueTimeout` in all; records that then find
    /// no room fail with `queueFull`. Runs of records of one topic without headers or
    /// timestamps go in one `rd_kafka_produce_batch` call per run, which takes the topic's lock
    /// and reads the clock once per run instead of once per record; delivery reports that are
    /// already there are served between runs without waiting, as a C producer loop does.
    private func enqueue(_ submission: Submission, _ rk: OpaquePointer, topics: inout TopicHandles) {
        let group = submission.group
        inFlight[ObjectIdentifier(group)] = group
        var giveUpAt: ContinuousClock.Instant?
        /// Serves delivery reports while the queue is full; false once `enqueueTimeout` is spent.
        func waitForRoom() -> Bool {
            let deadline = giveUpAt ?? .now + enqueueTimeout
            giveUpAt = deadline
            guard ContinuousClock.now < deadline else { return false }
            rd_kafka_poll(rk, 10)
            return true
        }
        submission.records.withUnsafeBufferPointer { records in
            var index = 0
            var enqueuedSincePoll = 0
            while index < records.count {
                let record = records.baseAddress! + index
                guard let topic = topics.handle(for: record.pointee.topic, rk) else {
                    group.settle(index: index, with: KafkaError(kind: .configuration, message: "invalid topic name \(record.pointee.topic)"))
                    index += 1
                    continue
                }
                let runEnd = endOfBatchableRun(records, from: index)
                if runEnd > index + 1 {
                    var next = index
                    while next < runEnd {
                        let (enqueued, queueFull) = enqueueBatch(records, next..<runEnd, topic: topic, group: group, rk)
                        next += enqueued
                        guard queueFull else { continue }
                        if !waitForRoom() {
                            for failed in next..<runEnd { group.settle(index: failed, with: Self.queueFullError(records[failed].topic)) }
                            next = runEnd
                        }
                    }
                    enqueuedSincePoll += runEnd - index
                    index = runEnd
                } else {
                    var code: rd_kafka_resp_err_t
                    repeat {
                        code = enqueue(record, topic: topic, opaque: group.opaque(of: index), rk)
                    } while code == RD_KAFKA_RESP_ERR__QUEUE_FULL && waitForRoom()
                    if code != RD_KAFKA_RESP_ERR_NO_ERROR {
                        group.settle(index: index, with: KafkaError(code: code, context: "enqueue to \(record.pointee.topic)", persistence: .notPersisted))
                    }
                    index += 1
                    enqueuedSincePoll += 1
                }
                if enqueuedSincePoll >= 16 {
                    rd_kafka_poll(rk, 0)
                    enqueuedSincePoll = 0
                }
            }
        }
        if group.isComplete { inFlight[ObjectIdentifier(group)] = nil }
    }

    private static func queueFullError(_ topic: String) -> KafkaError {
        KafkaError(code: RD_KAFKA_RESP_ERR__QUEUE_FULL, context: "enqueue to \(topic)", persistence: .notPersisted)
    }

    /// Records and key and value bytes per `rd_kafka_produce_batch` call at most (a single
    /// larger record still goes alone), which bounds the scratch buffer.
    private static let batchLimit = (records: 256, bytes: 1 << 20)

    /// The end of the run from `start` of records that `rd_kafka_produce_batch` can take: one
    /// topic, no headers, no timestamp of their own, within `batchLimit`.
    private func endOfBatchableRun(_ records: UnsafeBufferPointer<ProducerRecord>, from start: Int) -> Int {
        let topic = records[start].topic
        var end = start
        var bytes = 0
        while end < records.count, end - start < Self.batchLimit.records {
            let record = records.baseAddress! + end
            guard record.pointee.headers.isEmpty, record.pointee.timestampMilliseconds == nil, record.pointee.topic == topic else { break }
            bytes += (record.pointee.key?.count ?? 0) + (record.pointee.value?.count ?? 0)
            guard bytes <= Self.batchLimit.bytes || end == start else { break }
            end += 1
        }
        return end
    }

    /// Enqueues `range` by one `rd_kafka_produce_batch` call, keys and values copied through
    /// the thread's scratch buffer (librdkafka copies them again before returning). Records
    /// it refuses for another reason than a full queue are settled with the error. Returns how
    /// many records from the start of `range` are done, and whether a full queue stopped it.
    private func enqueueBatch(
        _ records: UnsafeBufferPointer<ProducerRecord>, _ range: Range<Int>, topic: OpaquePointer, group: DeliveryGroup, _ rk: OpaquePointer
    ) -> (done: Int, queueFull: Bool) {
        var bytes = 0
        for index in range { bytes += (records[index].key?.count ?? 0) + (records[index].value?.count ?? 0) }
        scratch.reserve(bytes: bytes, messages: range.count)
        var offset = 0
        func copyIn(_ array: [UInt8]?) -> (UnsafeMutableRawPointer?, Int) {
            guard let array else { return (nil, 0) }
            let destination = scratch.bytes.baseAddress! + offset
            array.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            offset += array.count
            return (destination, array.count)
        }
        for (slot, index) in range.enumerated() {
            let record = records.baseAddress! + index
            let (key, keyLength) = copyIn(record.pointee.key)
            let (value, valueLength) = copyIn(record.pointee.value)
            scratch.messages[slot] = rd_kafka_message_t(
                err: RD_KAFKA_RESP_ERR_NO_ERROR, rkt: nil, partition: record.pointee.partition ?? RD_KAFKA_PARTITION_UA,
                payload: value, len: valueLength, key: key, key_len: keyLength, offset: 0, _private: group.opaque(of: index))
        }
        rd_kafka_produce_batch(
            topic, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY | RD_KAFKA_MSG_F_PARTITION, scratch.messages.baseAddress, Int32(range.count))
        for (slot, index) in range.enumerated() {
            let code = scratch.messages[slot].err
            if code == RD_KAFKA_RESP_ERR__QUEUE_FULL { return (slot, true) }
            if code != RD_KAFKA_RESP_ERR_NO_ERROR {
                group.settle(index: index, with: KafkaError(code: code, context: "enqueue to \(records[index].topic)", persistence: .notPersisted))
            }
        }
        return (range.count, false)
    }

    private func enqueue(
        _ record: UnsafePointer<ProducerRecord>, topic: OpaquePointer, opaque: UnsafeMutableRawPointer, _ rk: OpaquePointer
    ) -> rd_kafka_resp_err_t {
        var headers: OpaquePointer?
        if !record.pointee.headers.isEmpty {
            headers = rd_kafka_headers_new(record.pointee.headers.count)
            for header in record.pointee.headers {
                if let value = header.value {
                    value.withUnsafeBytes { _ = rd_kafka_header_add(headers, header.name, -1, $0.baseAddress, $0.count) }
                } else {
                    rd_kafka_header_add(headers, header.name, -1, nil, 0)
                }
            }
        }
        let code = withOptionalBytes(record.pointee.key) { key in
            withOptionalBytes(record.pointee.value) { value in
                tally_produce(
                    rk, topic, record.pointee.partition ?? RD_KAFKA_PARTITION_UA,
                    key.baseAddress, key.count, value.baseAddress, value.count, headers,
                    record.pointee.timestampMilliseconds ?? 0, opaque)
            }
        }
        if code != RD_KAFKA_RESP_ERR_NO_ERROR, let headers { rd_kafka_headers_destroy(headers) }
        return code
    }

    private func afterPollCycle(queueLength: Int32) {
        inFlight = inFlight.filter { !$0.value.isComplete }
        let now = ContinuousClock.now
        let (flushed, expired) = state.withLock { state in
            var flushed: [CheckedContinuation<Void, any Error>] = []
            var expired: [CheckedContinuation<Void, any Error>] = []
            state.flushWaiters.removeAll { waiter in
                if queueLength == 0 && state.submissions.isEmpty {
                    flushed.append(waiter.continuation)
                } else if waiter.deadline <= now {
                    expired.append(waiter.continuation)
                } else {
                    return false
                }
                return true
            }
            return (flushed, expired)
        }
        flushed.forEach { $0.resume() }
        expired.forEach {
            $0.resume(throwing: KafkaError(kind: .timedOut, message: "flush timed out with \(queueLength) records outstanding"))
        }
    }

    private func shutDown(_ rk: OpaquePointer, flushTimeout: Duration, topics: inout TopicHandles) {
        if rd_kafka_flush(rk, milliseconds(flushTimeout)) != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning("producer closing with \(rd_kafka_outq_len(rk)) undelivered records; failing them")
            rd_kafka_purge(rk, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
            rd_kafka_flush(rk, 5_000)  // serves the purged records' delivery reports
        }
        let (flushWaiters, closeWaiters) = state.withLock { state in
            state.closed = true
            defer {
                state.flushWaiters.removeAll()
                state.closeWaiters.removeAll()
            }
            return (state.flushWaiters, state.closeWaiters)
        }
        // `closed` is set, so nobody starts waking the thread; wait out those doing so now.
        while handleUsers.load(ordering: .sequentiallyConsistent) > 0 { Thread.sleep(forTimeInterval: 0.001) }
        topics.destroyAll()
        rd_kafka_destroy(rk)
        // No delivery report can arrive anymore: whatever is still unsettled never will be.
        for group in inFlight.values { group.failUnsettled(with: Self.closedError) }
        inFlight.removeAll()
        flushWaiters.forEach { $0.continuation.resume() }
        closeWaiters.forEach { $0.resume() }
    }
}

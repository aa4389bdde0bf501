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
    /// How long `send` waits for room when the local queue is full before failing a record
    /// with `KafkaError.Kind.queueFull`. Zero fails at once.
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
/// `send` enqueues records without blocking and suspends until the broker acknowledged each
/// (with `acks=all`), reporting partition and offset. A full local queue is never a silent
/// drop: `send` waits up to `enqueueTimeout` for room, then fails that record with `queueFull`.
/// Delivery reports are served by a thread of the producer's own, never by the Swift pool.
/// Call `close()` when done: it flushes what is queued, then frees the client.
public final class KafkaProducer: Sendable {
    private let context: ProducerContext
    private let handle: NativeHandle
    private let enqueueTimeout: Duration

    public init(configuration: KafkaProducerConfiguration, logger: Logger = Logger(label: "tally.kafka.producer")) throws(KafkaError) {
        let context = ProducerContext(logger: logger)
        let handle = try makeNativeClient(type: RD_KAFKA_PRODUCER, configuration: configuration.kafka, context: context) {
            rd_kafka_conf_set_dr_msg_cb($0, deliveryReportCallback)
        }
        self.context = context
        self.handle = NativeHandle(handle)
        self.enqueueTimeout = configuration.enqueueTimeout
        // Made before the client's first metadata request goes out; destroyed with the client.
        let topicHandles = configuration.topics.compactMap { rd_kafka_topic_new(handle, $0, nil).map(NativeHandle.init) }
        Thread.detachNewThread { [context, handle = self.handle] in
            nameCurrentThread("kafka-produce")
            context.runPollLoop(handle.pointer, topicHandles: topicHandles.map(\.pointer))
        }
    }

    deinit {
        context.requestClose(flushTimeout: .seconds(30), waiter: nil)
    }

    /// Sends one record and returns its acknowledgement.
    public func send(_ record: ProducerRecord) async throws(KafkaError) -> DeliveryReport {
        try await send([record])[0].get()
    }

    /// Sends records in order and returns one result per record, in the same order, once every
    /// record is acknowledged or has failed.
    public func send(_ records: [ProducerRecord]) async -> [Result<DeliveryReport, KafkaError>] {
        guard !records.isEmpty else { return [] }
        let group = context.registerGroup(count: records.count)
        var index = 0
        var waitingSince: ContinuousClock.Instant?
        while index < records.count {
            let code: rd_kafka_resp_err_t
            let (runEnd, runBytes) = endOfPlainRun(records, from: index)
            if runEnd > index + 1 {
                let (done, batchCode) = enqueueBatch(records, index..<runEnd, byteCount: runBytes, group: group)
                index += done
                code = batchCode
                if code == RD_KAFKA_RESP_ERR_NO_ERROR || done > 0 { waitingSince = nil }
                if code == RD_KAFKA_RESP_ERR_NO_ERROR { continue }
            } else {
                let opaque = UnsafeMutableRawPointer(bitPattern: UInt(group << 32 | UInt64(index)))
                code = enqueue(records[index], opaque: opaque, serveReadyReports: index % 64 == 63)
                if code == RD_KAFKA_RESP_ERR_NO_ERROR {
                    index += 1
                    waitingSince = nil
                    continue
                }
            }
            if code == RD_KAFKA_RESP_ERR__QUEUE_FULL {
                let start = waitingSince ?? .now
                waitingSince = start
                if start.duration(to: .now) < enqueueTimeout, await context.waitForQueueSpace() {
                    continue
                }
            }
            let error: KafkaError =
                context.isClosing
                ? KafkaError(kind: .closed, message: "producer is closed", persistence: .notPersisted)
                : KafkaError(code: code, context: "enqueue to \(records[index].topic)", persistence: .notPersisted)
            context.fail(group: group, index: index, with: error)
            index += 1
            waitingSince = nil
        }
        let outcomes = await context.outcomes(of: group)
        return records.indices.map { index in
            if let error = outcomes.errors[index] { return .failure(error) }
            return .success(DeliveryReport(topic: records[index].topic, partition: outcomes.partitions[index], offset: outcomes.offsets[index]))
        }
    }

    /// Waits until every record enqueued so far is acknowledged or failed.
    public func flush(timeout: Duration) async throws(KafkaError) {
        try await context.waitForEmptyQueue(deadline: .now + timeout)
    }

    /// Flushes for up to `flushTimeout`, fails whatever is still queued, and frees the client.
    public func close(flushTimeout: Duration = .seconds(30)) async {
        await withCheckedContinuation { continuation in
            context.requestClose(flushTimeout: flushTimeout, waiter: continuation)
        }
    }

    /// Records and key and value bytes per `rd_kafka_produce_batch` call at most.
    private static let batchLimit = (records: 256, bytes: 64 << 10)

    /// The end of the run from `start` of records that `rd_kafka_produce_batch` can take: one
    /// topic, no headers, no timestamp of their own, within `batchLimit`; with the run's key and
    /// value bytes.
    private func endOfPlainRun(_ records: [ProducerRecord], from start: Int) -> (end: Int, bytes: Int) {
        let topic = records[start].topic
        var end = start
        var bytes = 0
        while end < records.count, end - start < Self.batchLimit.records {
            let record = records[end]
            guard record.headers.isEmpty, record.timestampMilliseconds == nil, record.topic == topic else { break }
            let recordBytes = (record.key?.count ?? 0) + (record.value?.count ?? 0)
            guard bytes + recordBytes <= Self.batchLimit.bytes || end == start else { break }
            bytes += recordBytes
            end += 1
        }
        return (end, bytes)
    }

    /// Enqueues `range` by one `rd_kafka_produce_batch` call, which takes the topic's lock and
    /// reads the clock once for the run instead of once per record, then serves delivery reports
    /// that are already there. Keys and values are copied into a buffer for the call (librdkafka
    /// copies them again before it returns). Records refused for another reason than a full
    /// queue are failed in the group. Returns how many records from the start of `range` are
    /// done, and `QUEUE_FULL` when a full queue stopped the call there.
    private func enqueueBatch(
        _ records: [ProducerRecord], _ range: Range<Int>, byteCount: Int, group: UInt64
    ) -> (done: Int, code: rd_kafka_resp_err_t) {
        guard context.beginUsingHandle() else { return (0, RD_KAFKA_RESP_ERR__DESTROY) }
        defer { context.endUsingHandle() }
        guard let topic = rd_kafka_topic_new(handle.pointer, records[range.lowerBound].topic, nil) else {
            return (0, rd_kafka_last_error())
        }
        defer { rd_kafka_topic_destroy(topic) }
        return withUnsafeTemporaryAllocation(byteCount: max(byteCount, 1), alignment: 8) { bytes in
            withUnsafeTemporaryAllocation(of: rd_kafka_message_t.self, capacity: range.count) { messages in
                var offset = 0
                func copyIn(_ array: [UInt8]?) -> (UnsafeMutableRawPointer?, Int) {
                    guard let array else { return (nil, 0) }
                    let destination = bytes.baseAddress! + offset
                    array.withUnsafeBytes { source in
                        if let base = source.baseAddress { destination.copyMemory(from: base, byteCount: source.count) }
                    }
                    offset += array.count
                    return (destination, array.count)
                }
                for (slot, index) in range.enumerated() {
                    let (key, keyLength) = copyIn(records[index].key)
                    let (value, valueLength) = copyIn(records[index].value)
                    messages[slot] = rd_kafka_message_t(
                        err: RD_KAFKA_RESP_ERR_NO_ERROR, rkt: nil, partition: records[index].partition ?? RD_KAFKA_PARTITION_UA,
                        payload: value, len: valueLength, key: key, key_len: keyLength, offset: 0,
                        _private: UnsafeMutableRawPointer(bitPattern: UInt(group << 32 | UInt64(index))))
                }
                rd_kafka_produce_batch(topic, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY | RD_KAFKA_MSG_F_PARTITION, messages.baseAddress, Int32(range.count))
                rd_kafka_poll(handle.pointer, 0)
                for (slot, index) in range.enumerated() {
                    let code = messages[slot].err
                    if code == RD_KAFKA_RESP_ERR__QUEUE_FULL { return (slot, code) }
                    if code != RD_KAFKA_RESP_ERR_NO_ERROR {
                        context.fail(group: group, index: index, with: KafkaError(code: code, context: "enqueue to \(records[index].topic)", persistence: .notPersisted))
                    }
                }
                return (range.count, RD_KAFKA_RESP_ERR_NO_ERROR)
            }
        }
    }

    /// Hands one record to librdkafka. With `serveReadyReports` it then serves delivery reports
    /// that are already there, without waiting (timeout 0), as a C producer loop does: that
    /// saves waking the poll thread for every report.
    private func enqueue(_ record: ProducerRecord, opaque: UnsafeMutableRawPointer?, serveReadyReports: Bool) -> rd_kafka_resp_err_t {
        guard context.beginUsingHandle() else { return RD_KAFKA_RESP_ERR__DESTROY }
        defer { context.endUsingHandle() }
        var headers: OpaquePointer?
        if !record.headers.isEmpty {
            headers = rd_kafka_headers_new(record.headers.count)
            for header in record.headers {
                if let value = header.value {
                    value.withUnsafeBytes { _ = rd_kafka_header_add(headers, header.name, -1, $0.baseAddress, $0.count) }
                } else {
                    rd_kafka_header_add(headers, header.name, -1, nil, 0)
                }
            }
        }
        let code = withOptionalBytes(record.key) { key in
            withOptionalBytes(record.value) { value in
                tally_produce(
                    handle.pointer, record.topic, record.partition ?? RD_KAFKA_PARTITION_UA,
                    key.baseAddress, key.count, value.baseAddress, value.count, headers,
                    record.timestampMilliseconds ?? 0, opaque)
            }
        }
        if code != RD_KAFKA_RESP_ERR_NO_ERROR, let headers { rd_kafka_headers_destroy(headers) }
        if serveReadyReports { rd_kafka_poll(handle.pointer, 0) }
        return code
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

/// Runs on the poll thread once per record: it only files the outcome, so that one thread
/// keeps up with librdkafka's delivery rate.
private let deliveryReportCallback: @convention(c) (OpaquePointer?, UnsafePointer<rd_kafka_message_t>?, UnsafeMutableRawPointer?) -> Void = {
    rk, message, opaque in
    guard let rk, let message, let tag = message.pointee._private, let opaque else { return }
    // The opaque is the producer's own context, passed unretained when the client was made.
    let context = Unmanaged<ProducerContext>.fromOpaque(opaque).takeUnretainedValue()
    let bits = UInt64(UInt(bitPattern: tag))
    let (group, index) = (bits >> 32, Int(bits & 0xFFFF_FFFF))
    let code = message.pointee.err
    guard code != RD_KAFKA_RESP_ERR_NO_ERROR else {
        context.deliver(group: group, index: index, partition: message.pointee.partition, offset: message.pointee.offset)
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
    context.fail(group: group, index: index, with: error)
}

/// The outcomes of one `send` call's records, filed by delivery reports. Guarded by the
/// producer context's lock until complete, then owned by the sender alone.
final class DeliveryGroup: @unchecked Sendable {
    var partitions: [Int32]
    var offsets: [Int64]
    var errors: [Int: KafkaError] = [:]
    var settled: [Bool]
    var remaining: Int
    var waiter: CheckedContinuation<DeliveryGroup, Never>?

    init(count: Int) {
        partitions = Array(repeating: -1, count: count)
        offsets = Array(repeating: -1, count: count)
        settled = Array(repeating: false, count: count)
        remaining = count
    }

    /// Fails every record still waiting.
    func failUnsettled(with error: KafkaError) {
        for index in settled.indices where !settled[index] {
            settled[index] = true
            errors[index] = error
        }
        remaining = 0
    }
}

/// Delivery tracking and lifecycle of one producer, shared with its poll thread.
final class ProducerContext: ClientContext, @unchecked Sendable {
    private struct FlushWaiter {
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var nextGroup: UInt64 = 1
        var groups: [UInt64: DeliveryGroup] = [:]
        var spaceWaiters: [CheckedContinuation<Bool, Never>] = []
        var flushWaiters: [FlushWaiter] = []
        var closeRequest: Duration?
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var closed = false
    }

    private let state = Mutex(State())
    /// Checked once per record, so kept out of the lock.
    private let closing = Atomic(false)
    /// Callers inside librdkafka right now; the handle is destroyed only when none are left.
    private let handleUsers = Atomic(0)

    var isClosing: Bool { closing.load(ordering: .sequentiallyConsistent) }

    /// Registers a caller about to use the handle; false once the producer is closing.
    func beginUsingHandle() -> Bool {
        handleUsers.add(1, ordering: .sequentiallyConsistent)
        if closing.load(ordering: .sequentiallyConsistent) {
            handleUsers.subtract(1, ordering: .sequentiallyConsistent)
            return false
        }
        return true
    }

    func endUsingHandle() {
        handleUsers.subtract(1, ordering: .sequentiallyConsistent)
    }

    func registerGroup(count: Int) -> UInt64 {
        state.withLock { state in
            let id = state.nextGroup
            state.nextGroup += 1
            state.groups[id] = DeliveryGroup(count: count)
            return id
        }
    }

    func deliver(group id: UInt64, index: Int, partition: Int32, offset: Int64) {
        settle(group: id, index: index) { group in
            group.partitions[index] = partition
            group.offsets[index] = offset
        }
    }

    func fail(group id: UInt64, index: Int, with error: KafkaError) {
        settle(group: id, index: index) { $0.errors[index] = error }
    }

    private func settle(group id: UInt64, index: Int, _ record: (DeliveryGroup) -> Void) {
        let finished: (CheckedContinuation<DeliveryGroup, Never>, DeliveryGroup)? = state.withLock { state in
            guard let group = state.groups[id], !group.settled[index] else { return nil }
            group.settled[index] = true
            record(group)
            group.remaining -= 1
            guard group.remaining == 0, let waiter = group.waiter else { return nil }
            state.groups[id] = nil
            return (waiter, group)
        }
        if let (waiter, group) = finished { waiter.resume(returning: group) }
    }

    /// Waits until every record of the group is settled and hands the group over.
    func outcomes(of id: UInt64) async -> DeliveryGroup {
        await withCheckedContinuation { continuation in
            let ready: DeliveryGroup? = state.withLock { state in
                let group = state.groups[id]!
                guard group.remaining > 0 else {
                    state.groups[id] = nil
                    return group
                }
                group.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Suspends until the poll thread finished another cycle; false once the producer closes.
    func waitForQueueSpace() async -> Bool {
        await withCheckedContinuation { continuation in
            let closing = state.withLock { state in
                if state.closeRequest != nil { return true }
                state.spaceWaiters.append(continuation)
                return false
            }
            if closing { continuation.resume(returning: false) }
        }
    }

    func waitForEmptyQueue(deadline: ContinuousClock.Instant) async throws(KafkaError) {
        do {
            try await withCheckedThrowingContinuation { continuation in
                let closed = state.withLock { state in
                    if state.closed { return true }
                    state.flushWaiters.append(FlushWaiter(deadline: deadline, continuation: continuation))
                    return false
                }
                if closed { continuation.resume() }
            }
        } catch {
            throw error as! KafkaError
        }
    }

    func requestClose(flushTimeout: Duration, waiter: CheckedContinuation<Void, Never>?) {
        closing.store(true, ordering: .sequentiallyConsistent)
        let alreadyClosed = state.withLock { state in
            if state.closed { return true }
            if state.closeRequest == nil { state.closeRequest = flushTimeout }
            if let waiter { state.closeWaiters.append(waiter) }
            return false
        }
        if alreadyClosed { waiter?.resume() }
    }

    /// The body of the producer's poll thread; it owns `rk` until it destroys it.
    /// `topicHandles` are destroyed with the client.
    func runPollLoop(_ rk: OpaquePointer, topicHandles: [OpaquePointer]) {
        while true {
            let closeRequest = state.withLock { $0.closeRequest }
            if let flushTimeout = closeRequest {
                shutDown(rk, flushTimeout: flushTimeout, topicHandles: topicHandles)
                return
            }
            rd_kafka_poll(rk, 50)
            afterPollCycle(queueLength: rd_kafka_outq_len(rk))
        }
    }

    private func afterPollCycle(queueLength: Int32) {
        let now = ContinuousClock.now
        let (spaceWaiters, flushed, expired) = state.withLock { state in
            let spaceWaiters = state.spaceWaiters
            state.spaceWaiters.removeAll()
            var flushed: [CheckedContinuation<Void, any Error>] = []
            var expired: [CheckedContinuation<Void, any Error>] = []
            state.flushWaiters.removeAll { waiter in
                if queueLength == 0 {
                    flushed.append(waiter.continuation)
                } else if waiter.deadline <= now {
                    expired.append(waiter.continuation)
                } else {
                    return false
                }
                return true
            }
            return (spaceWaiters, flushed, expired)
        }
        spaceWaiters.forEach { $0.resume(returning: true) }
        flushed.forEach { $0.resume() }
        expired.forEach {
            $0.resume(throwing: KafkaError(kind: .timedOut, message: "flush timed out with \(queueLength) records outstanding"))
        }
    }

    private func shutDown(_ rk: OpaquePointer, flushTimeout: Duration, topicHandles: [OpaquePointer]) {
        let spaceWaiters = state.withLock { state in
            defer { state.spaceWaiters.removeAll() }
            return state.spaceWaiters
        }
        spaceWaiters.forEach { $0.resume(returning: false) }
        if rd_kafka_flush(rk, milliseconds(flushTimeout)) != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning("producer closing with \(rd_kafka_outq_len(rk)) undelivered records; failing them")
            rd_kafka_purge(rk, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
            rd_kafka_flush(rk, 5_000)  // serves the purged records' delivery reports
        }
        // `closing` is set, so no new caller enters; wait out those already inside librdkafka.
        while handleUsers.load(ordering: .sequentiallyConsistent) > 0 { Thread.sleep(forTimeInterval: 0.001) }
        topicHandles.forEach(rd_kafka_topic_destroy)
        rd_kafka_destroy(rk)
        let closedError = KafkaError(kind: .closed, message: "producer closed before delivery", persistence: .possiblyPersisted)
        let (finished, flushWaiters, closeWaiters) = state.withLock { state in
            state.closed = true
            var finished: [(CheckedContinuation<DeliveryGroup, Never>, DeliveryGroup)] = []
            for (id, group) in state.groups {
                group.failUnsettled(with: closedError)
                if let waiter = group.waiter {  // else its sender is still enqueuing: `outcomes(of:)` finds it complete
                    finished.append((waiter, group))
                    state.groups[id] = nil
                }
            }
            defer {
                state.flushWaiters.removeAll()
                state.closeWaiters.removeAll()
            }
            return (finished, state.flushWaiters, state.closeWaiters)
        }
        for (waiter, group) in finished { waiter.resume(returning: group) }
        flushWaiters.forEach { $0.continuation.resume() }
        closeWaiters.forEach { $0.resume() }
    }
}

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
/// Delivery reports arrive as events, a produce response's records at a time, served by a
/// thread of the producer's own (never by the Swift pool) and by senders between enqueues.
/// Call `close()` when done: it flushes what is queued, then frees the client.
public final class KafkaProducer: Sendable {
    private let context: ProducerContext
    private let handle: NativeHandle
    /// The client's main queue: delivery reports, logs and errors.
    private let mainQueue: NativeHandle
    private let enqueueTimeout: Duration

    public init(configuration: KafkaProducerConfiguration, logger: Logger = Logger(label: "tally.kafka.producer")) throws(KafkaError) {
        let context = ProducerContext(logger: logger)
        let handle = try makeNativeClient(type: RD_KAFKA_PRODUCER, configuration: configuration.kafka, context: context) {
            rd_kafka_conf_set_events($0, Int32(RD_KAFKA_EVENT_DR))
        }
        self.context = context
        self.handle = NativeHandle(handle)
        self.mainQueue = NativeHandle(rd_kafka_queue_get_main(handle))
        self.enqueueTimeout = configuration.enqueueTimeout
        // Made before the client's first metadata request goes out; destroyed with the client.
        let topicHandles = configuration.topics.compactMap { rd_kafka_topic_new(handle, $0, nil).map(NativeHandle.init) }
        Thread.detachNewThread { [context, handle = self.handle, mainQueue] in
            nameCurrentThread("kafka-produce")
            context.runPollLoop(handle.pointer, mainQueue: mainQueue.pointer, topicHandles: topicHandles.map(\.pointer))
        }
    }

    deinit {
        context.requestClose(flushTimeout: .seconds(30), waiter: nil, wakingPollThreadOn: mainQueue.pointer)
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
                code = enqueue(records[index], opaque: DeliveryTag(group: group, index: index).opaque, serveReadyReports: index % 64 == 63)
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
            let outcome = outcomes.outcomes[index]
            return .success(DeliveryReport(topic: records[index].topic, partition: outcome.partition, offset: outcome.offset))
        }
    }

    /// Sends what waits out `linger.ms` at once, and waits until every record enqueued so far
    /// is acknowledged or failed.
    public func flush(timeout: Duration) async throws(KafkaError) {
        try await context.waitForEmptyQueue(deadline: .now + timeout, wakingPollThreadOn: mainQueue.pointer)
    }

    /// Flushes for up to `flushTimeout`, fails whatever is still queued, and frees the client.
    public func close(flushTimeout: Duration = .seconds(30)) async {
        await withCheckedContinuation { continuation in
            context.requestClose(flushTimeout: flushTimeout, waiter: continuation, wakingPollThreadOn: mainQueue.pointer)
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
                        _private: DeliveryTag(group: group, index: index).opaque)
                }
                rd_kafka_produce_batch(topic, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY | RD_KAFKA_MSG_F_PARTITION, messages.baseAddress, Int32(range.count))
                context.serveEvents(handle.pointer, mainQueue: mainQueue.pointer, timeoutMilliseconds: 0)
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
        if serveReadyReports { context.serveEvents(handle.pointer, mainQueue: mainQueue.pointer, timeoutMilliseconds: 0) }
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

/// The error a failed delivery report carries, with whether the record may still have been
/// stored; a fatal error names librdkafka's underlying cause.
private func deliveryError(of message: UnsafePointer<rd_kafka_message_t>, client rk: OpaquePointer) -> KafkaError {
    let code = message.pointee.err
    let persistence: PersistenceStatus =
        switch rd_kafka_message_status(message) {
        case RD_KAFKA_MSG_STATUS_PERSISTED: .persisted
        case RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED: .possiblyPersisted
        default: .notPersisted
        }
    let error = KafkaError(code: code, context: "delivery", persistence: persistence)
    if code == RD_KAFKA_RESP_ERR__FATAL {
        var reason = [CChar](repeating: 0, count: 512)
        let fatalCode = rd_kafka_fatal_error(rk, &reason, reason.count)
        return KafkaError(
            kind: .fatal, code: KafkaErrorCode(fatalCode), message: "fatal producer error: \(text(ofBuffer: reason))",
            persistence: persistence)
    }
    if error.kind == .broker || error.kind == .timedOut {
        return KafkaError(kind: .deliveryFailed, code: error.code, message: error.message, persistence: persistence)
    }
    return error
}

/// The outcomes of one `send` call's records, filed by delivery reports. Guarded by the
/// producer context's lock until complete, then owned by the sender alone.
final class DeliveryGroup: @unchecked Sendable {
    /// One record's outcome: where it was stored once acknowledged (-1 before), and whether it
    /// is settled at all (a failed record is settled with its error in `errors`).
    struct Outcome {
        var partition: Int32 = -1
        var offset: Int64 = -1
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
            // Ids wrap after 2^32 - 1 calls; a call still waiting keeps its id.
            var id = state.nextGroup
            while state.groups[id] != nil { id = DeliveryTag.group(after: id) }
            state.nextGroup = DeliveryTag.group(after: id)
            state.groups[id] = DeliveryGroup(count: count)
            return id
        }
    }

    /// Fails one record of a group, unless it is settled already.
    func fail(group id: UInt64, index: Int, with error: KafkaError) {
        let finished: (CheckedContinuation<DeliveryGroup, Never>, DeliveryGroup)? = state.withLock { state in
            guard let group = state.groups[id], !group.outcomes[index].settled else { return nil }
            group.outcomes[index].settled = true
            group.errors[index] = error
            group.remaining -= 1
            guard group.remaining == 0, let waiter = group.waiter else { return nil }
            state.groups[id] = nil
            return (waiter, group)
        }
        if let (waiter, group) = finished { waiter.resume(returning: group) }
    }

    /// Serves the client's main queue: waits up to `timeoutMilliseconds` for the first event,
    /// then takes whatever else is ready. Delivery reports are filed a produce response at a
    /// time; logs and errors go to the logger.
    func serveEvents(_ rk: OpaquePointer, mainQueue queue: OpaquePointer, timeoutMilliseconds: Int32) {
        var timeout = timeoutMilliseconds
        while let event = rd_kafka_queue_poll(queue, timeout) {
            timeout = 0
            switch rd_kafka_event_type(event) {
            case RD_KAFKA_EVENT_DR:
                fileDeliveryReports(of: event, client: rk)
            case RD_KAFKA_EVENT_LOG:
                var facility: UnsafePointer<CChar>?
                var message: UnsafePointer<CChar>?
                var level: Int32 = 0
                if rd_kafka_event_log(event, &facility, &message, &level) == 0, let message {
                    log(level: level, facility: facility, message: message)
                }
            case RD_KAFKA_EVENT_ERROR:
                logger.error("\(rd_kafka_event_error_string(event).map { String(cString: $0) } ?? "unknown error")")
            default:
                break
            }
            rd_kafka_event_destroy(event)
        }
    }

    /// Files the records of one delivery report event under one lock, and resumes the senders
    /// whose every record is now settled.
    private func fileDeliveryReports(of event: OpaquePointer, client rk: OpaquePointer) {
        let batchSize = 1024
        withUnsafeTemporaryAllocation(of: UnsafePointer<rd_kafka_message_t>?.self, capacity: batchSize) { messages in
            var count = rd_kafka_event_message_array(event, messages.baseAddress, batchSize)
            while count > 0 {
                let finished = state.withLock { state in fileRuns(of: messages.prefix(count), in: &state, client: rk) }
                for (waiter, group) in finished { waiter.resume(returning: group) }
                count = count == batchSize ? rd_kafka_event_message_array(event, messages.baseAddress, batchSize) : 0
            }
        }
    }

    /// Files reports a run of one group's records at a time (a produce response holds runs of
    /// records sent together), and returns the groups this completed with their waiters.
    private func fileRuns(
        of messages: Slice<UnsafeMutableBufferPointer<UnsafePointer<rd_kafka_message_t>?>>, in state: inout State, client rk: OpaquePointer
    ) -> [(CheckedContinuation<DeliveryGroup, Never>, DeliveryGroup)] {
        var finished: [(CheckedContinuation<DeliveryGroup, Never>, DeliveryGroup)] = []
        var runStart = messages.startIndex
        while runStart < messages.endIndex {
            let id = DeliveryTag(messages[runStart]?.pointee._private).group
            var runEnd = runStart + 1
            while runEnd < messages.endIndex, DeliveryTag(messages[runEnd]?.pointee._private).group == id { runEnd += 1 }
            defer { runStart = runEnd }
            guard let group = state.groups[id] else { continue }
            var failures: [(index: Int, error: KafkaError)] = []
            let settledNow = group.outcomes.withUnsafeMutableBufferPointer { outcomes in
                var settledNow = 0
                for case let message? in messages[runStart..<runEnd] {
                    let index = DeliveryTag(message.pointee._private).index
                    guard !outcomes[index].settled else { continue }
                    settledNow += 1
                    guard message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                        outcomes[index].settled = true
                        failures.append((index, deliveryError(of: message, client: rk)))
                        continue
                    }
                    outcomes[index] = DeliveryGroup.Outcome(partition: message.pointee.partition, offset: message.pointee.offset, settled: true)
                }
                return settledNow
            }
            for (index, error) in failures { group.errors[index] = error }
            group.remaining -= settledNow
            if group.remaining == 0, let waiter = group.waiter {
                state.groups[id] = nil
                finished.append((waiter, group))
            }
        }
        return finished
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

    /// Waits until no record is outstanding; the poll thread flushes while anyone waits here.
    func waitForEmptyQueue(deadline: ContinuousClock.Instant, wakingPollThreadOn mainQueue: OpaquePointer) async throws(KafkaError) {
        do {
            try await withCheckedThrowingContinuation { continuation in
                let closed = state.withLock { state in
                    if state.closed { return true }
                    state.flushWaiters.append(FlushWaiter(deadline: deadline, continuation: continuation))
                    // Until a close request, the poll thread keeps the queue alive.
                    if state.closeRequest == nil { rd_kafka_queue_yield(mainQueue) }
                    return false
                }
                if closed { continuation.resume() }
            }
        } catch {
            throw error as! KafkaError
        }
    }

    /// Asks the poll thread to shut down, waking it from its wait on `mainQueue`.
    func requestClose(flushTimeout: Duration, waiter: CheckedContinuation<Void, Never>?, wakingPollThreadOn mainQueue: OpaquePointer) {
        closing.store(true, ordering: .sequentiallyConsistent)
        let alreadyClosed = state.withLock { state in
            if state.closed { return true }
            if state.closeRequest == nil {
                state.closeRequest = flushTimeout
                // The poll thread destroys the queue only after it has seen this request.
                rd_kafka_queue_yield(mainQueue)
            }
            if let waiter { state.closeWaiters.append(waiter) }
            return false
        }
        if alreadyClosed { waiter?.resume() }
    }

    /// The body of the producer's poll thread; it owns `rk` until it destroys it.
    /// `mainQueue` and `topicHandles` are destroyed with the client.
    func runPollLoop(_ rk: OpaquePointer, mainQueue: OpaquePointer, topicHandles: [OpaquePointer]) {
        while true {
            let (closeRequest, flushing) = state.withLock { ($0.closeRequest, !$0.flushWaiters.isEmpty) }
            if let flushTimeout = closeRequest {
                shutDown(rk, mainQueue: mainQueue, flushTimeout: flushTimeout, topicHandles: topicHandles)
                return
            }
            if flushing {
                flushCycle(rk, mainQueue: mainQueue)
            } else {
                serveEvents(rk, mainQueue: mainQueue, timeoutMilliseconds: 50)
            }
            afterPollCycle(queueLength: rd_kafka_outq_len(rk))
        }
    }

    /// Serves what is ready; with records still outstanding, then holds librdkafka's flushing
    /// mark for a few milliseconds, so that batches waiting out `linger.ms` go at once. (With
    /// reports as events, `rd_kafka_flush` only marks and waits; it serves nothing.)
    private func flushCycle(_ rk: OpaquePointer, mainQueue: OpaquePointer) {
        serveEvents(rk, mainQueue: mainQueue, timeoutMilliseconds: 0)
        if rd_kafka_outq_len(rk) > 0 { rd_kafka_flush(rk, 5) }
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

    /// Flushes until no record is outstanding or `deadline` passes; true when none is left.
    private func drain(_ rk: OpaquePointer, mainQueue: OpaquePointer, deadline: ContinuousClock.Instant) -> Bool {
        while rd_kafka_outq_len(rk) > 0 {
            guard ContinuousClock.now < deadline else { return false }
            flushCycle(rk, mainQueue: mainQueue)
        }
        return true
    }

    private func shutDown(_ rk: OpaquePointer, mainQueue: OpaquePointer, flushTimeout: Duration, topicHandles: [OpaquePointer]) {
        let spaceWaiters = state.withLock { state in
            defer { state.spaceWaiters.removeAll() }
            return state.spaceWaiters
        }
        spaceWaiters.forEach { $0.resume(returning: false) }
        if !drain(rk, mainQueue: mainQueue, deadline: .now + flushTimeout) {
            logger.warning("producer closing with \(rd_kafka_outq_len(rk)) undelivered records; failing them")
            rd_kafka_purge(rk, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
            _ = drain(rk, mainQueue: mainQueue, deadline: .now + .seconds(5))  // the purged records' reports
        }
        // `closing` is set, so no new caller enters; wait out those already inside librdkafka.
        while handleUsers.load(ordering: .sequentiallyConsistent) > 0 { Thread.sleep(forTimeInterval: 0.001) }
        rd_kafka_queue_destroy(mainQueue)
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

import CRdKafka
import Foundation
import Logging
import Synchronization

/// The records of one `send` call, on their way to librdkafka through the owner thread.
struct SendRequest: Sendable {
    let records: [ProducerRecord]
    let group: UInt64
    /// The first record not handed to librdkafka yet.
    var next = 0
    /// Since when the full local queue has kept this request from making progress.
    var waitingSince: ContinuousClock.Instant?

    var isDone: Bool { next == records.count }
}

/// Delivery tracking and lifecycle of one producer, shared between its senders and its owner
/// thread: the one thread that calls into the producer's librdkafka client (enqueues, serves
/// delivery reports, flushes and finally destroys it), as a C producer's loop does. Senders only
/// submit records and wait; librdkafka's locks and allocations stay on one thread.
final class ProducerContext: ClientContext, @unchecked Sendable {
    private struct FlushWaiter {
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var nextGroup: UInt64 = 1
        var groups: [UInt64: DeliveryGroup] = [:]
        /// Requests submitted since the owner thread last took them.
        var submitted: [SendRequest] = []
        /// The owner thread waits on the main queue with nothing to enqueue: a submit wakes it.
        var ownerIdle = false
        var flushWaiters: [FlushWaiter] = []
        var closeRequest: Duration?
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var closed = false
    }

    /// For records the producer never handed to librdkafka because it was closing.
    private static let closedBeforeEnqueue = KafkaError(kind: .closed, message: "producer is closed", persistence: .notPersisted)

    private let state = Mutex(State())
    private let enqueueTimeout: Duration

    init(enqueueTimeout: Duration, logger: Logger) {
        self.enqueueTimeout = enqueueTimeout
        super.init(logger: logger)
    }

    /// Registers a group for `records` and queues them for the owner thread, waking it when it
    /// idles; once the producer is closing, the group is failed as closed instead.
    func submit(_ records: [ProducerRecord], wakingOwnerOn mainQueue: OpaquePointer) -> UInt64 {
        let group = DeliveryGroup(count: records.count)
        return state.withLock { state in
            // Ids wrap after 2^32 - 1 calls; a call still waiting keeps its id.
            var id = state.nextGroup
            while state.groups[id] != nil { id = DeliveryTag.group(after: id) }
            state.nextGroup = DeliveryTag.group(after: id)
            state.groups[id] = group
            if state.closeRequest != nil {
                group.failUnsettled(with: Self.closedBeforeEnqueue)
            } else {
                state.submitted.append(SendRequest(records: records, group: id))
                if state.ownerIdle {
                    state.ownerIdle = false
                    rd_kafka_queue_yield(mainQueue)
                }
            }
            return id
        }
    }

    /// Fails the records at `indices` of a group, except those settled already.
    private func fail(group id: UInt64, indices: Range<Int>, with error: KafkaError) {
        let finished: (CheckedContinuation<DeliveryGroup, Never>, DeliveryGroup)? = state.withLock { state in
            guard let group = state.groups[id] else { return nil }
            for index in indices where !group.outcomes[index].settled {
                group.outcomes[index].settled = true
                group.errors[index] = error
                group.remaining -= 1
            }
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

    /// Waits until no record is outstanding; the owner thread flushes while anyone waits here.
    func waitForEmptyQueue(deadline: ContinuousClock.Instant, wakingOwnerOn mainQueue: OpaquePointer) async throws(KafkaError) {
        do {
            try await withCheckedThrowingContinuation { continuation in
                let closed = state.withLock { state in
                    if state.closed { return true }
                    state.flushWaiters.append(FlushWaiter(deadline: deadline, continuation: continuation))
                    // Until a close request, the owner thread keeps the queue alive.
                    if state.closeRequest == nil { rd_kafka_queue_yield(mainQueue) }
                    return false
                }
                if closed { continuation.resume() }
            }
        } catch {
            throw error as! KafkaError
        }
    }

    /// Asks the owner thread to shut down, waking it from its wait on `mainQueue`.
    func requestClose(flushTimeout: Duration, waiter: CheckedContinuation<Void, Never>?, wakingOwnerOn mainQueue: OpaquePointer) {
        let alreadyClosed = state.withLock { state in
            if state.closed { return true }
            if state.closeRequest == nil {
                state.closeRequest = flushTimeout
                // The owner thread destroys the queue only after it has seen this request.
                rd_kafka_queue_yield(mainQueue)
            }
            if let waiter { state.closeWaiters.append(waiter) }
            return false
        }
        if alreadyClosed { waiter?.resume() }
    }

    // MARK: - The owner thread

    /// The body of the producer's owner thread; it owns `rk` until it destroys it.
    /// `mainQueue` and `topicHandles` are destroyed with the client.
    func runOwnerLoop(_ rk: OpaquePointer, mainQueue: OpaquePointer, topicHandles: [OpaquePointer]) {
        var backlog: [SendRequest] = []
        while true {
            let (closeRequest, flushing) = state.withLock { state in
                backlog.append(contentsOf: state.submitted)
                state.submitted.removeAll(keepingCapacity: true)
                return (state.closeRequest, !state.flushWaiters.isEmpty)
            }
            if let flushTimeout = closeRequest {
                for request in backlog { fail(group: request.group, indices: request.next..<request.records.count, with: Self.closedBeforeEnqueue) }
                shutDown(rk, mainQueue: mainQueue, flushTimeout: flushTimeout, topicHandles: topicHandles)
                return
            }
            let queueFull = enqueueBacklog(&backlog, client: rk, mainQueue: mainQueue)
            if flushing {
                flushCycle(rk, mainQueue: mainQueue)
            } else if queueFull {
                // As a C loop does on a full queue: wait for reports, which make room.
                serveEvents(rk, mainQueue: mainQueue, timeoutMilliseconds: 10)
            } else if markIdleUnlessRequested() {
                serveEvents(rk, mainQueue: mainQueue, timeoutMilliseconds: 50)
                state.withLock { $0.ownerIdle = false }
            }
            afterCycle(outstanding: Int(rd_kafka_outq_len(rk)) + backlog.reduce(0) { $0 + $1.records.count - $1.next })
        }
    }

    /// Marks the owner thread idle unless a submit, flush or close is waiting for it.
    private func markIdleUnlessRequested() -> Bool {
        state.withLock { state in
            guard state.submitted.isEmpty, state.flushWaiters.isEmpty, state.closeRequest == nil else { return false }
            state.ownerIdle = true
            return true
        }
    }

    /// Hands the backlog's records to librdkafka in order until the local queue is full, and
    /// fails the rest of every request that has found it full for `enqueueTimeout`. Drops the
    /// requests that are done; true when requests are left waiting for room.
    private func enqueueBacklog(_ backlog: inout [SendRequest], client rk: OpaquePointer, mainQueue: OpaquePointer) -> Bool {
        var queueFull = false
        let now = ContinuousClock.now
        for position in backlog.indices {
            if !queueFull { queueFull = !enqueueRecords(of: &backlog[position], client: rk, mainQueue: mainQueue) }
            guard queueFull else { continue }
            let request = backlog[position]
            let since = request.waitingSince ?? now
            backlog[position].waitingSince = since
            if since.duration(to: now) >= enqueueTimeout {
                let error = enqueueError(RD_KAFKA_RESP_ERR__QUEUE_FULL, topic: request.records[request.next].topic)
                fail(group: request.group, indices: request.next..<request.records.count, with: error)
                backlog[position].next = request.records.count
            }
        }
        backlog.removeAll(where: \.isDone)
        return !backlog.isEmpty
    }

    /// Enqueues a request's records from `next` on; false when the full queue stopped it.
    /// Records librdkafka refuses for another reason fail at once. Reports already there are
    /// served between runs, without waiting, as a C producer loop polls between messages.
    /// The records are read in place, through a buffer pointer: copying a record out of the
    /// array would retain and release each of its buffers.
    private func enqueueRecords(of request: inout SendRequest, client rk: OpaquePointer, mainQueue: OpaquePointer) -> Bool {
        let (records, group) = (request.records, request.group)
        return records.withUnsafeBufferPointer { records in
            while !request.isDone {
                let start = request.next
                let (runEnd, runBytes) = endOfPlainRun(records, from: start)
                let code: rd_kafka_resp_err_t
                if runEnd > start + 1 {
                    let (done, batchCode) = enqueueBatch(records, start..<runEnd, byteCount: runBytes, group: group, client: rk)
                    request.next += done
                    code = batchCode
                    if code != RD_KAFKA_RESP_ERR_NO_ERROR, code != RD_KAFKA_RESP_ERR__QUEUE_FULL {  // no handle for the topic
                        fail(group: group, indices: request.next..<runEnd, with: enqueueError(code, topic: records[start].topic))
                        request.next = runEnd
                    }
                    serveEvents(rk, mainQueue: mainQueue, timeoutMilliseconds: 0)
                } else {
                    code = enqueue(records[start], tag: DeliveryTag(group: group, index: start), client: rk)
                    if code != RD_KAFKA_RESP_ERR__QUEUE_FULL { request.next += 1 }
                    if code != RD_KAFKA_RESP_ERR_NO_ERROR, code != RD_KAFKA_RESP_ERR__QUEUE_FULL {
                        fail(group: group, indices: start..<start + 1, with: enqueueError(code, topic: records[start].topic))
                    }
                    if start % 64 == 63 { serveEvents(rk, mainQueue: mainQueue, timeoutMilliseconds: 0) }
                }
                if request.next > start { request.waitingSince = nil }
                if code == RD_KAFKA_RESP_ERR__QUEUE_FULL { return false }
            }
            return true
        }
    }

    /// Records and key and value bytes per `rd_kafka_produce_batch` call at most.
    private static let batchLimit = (records: 256, bytes: 64 << 10)

    /// The end of the run from `start` of records that `rd_kafka_produce_batch` can take: one
    /// topic, no headers, no timestamp of their own, within `batchLimit`; with the run's key and
    /// value bytes.
    private func endOfPlainRun(_ records: UnsafeBufferPointer<ProducerRecord>, from start: Int) -> (end: Int, bytes: Int) {
        let topic = records[start].topic
        var end = start
        var bytes = 0
        while end < records.count, end - start < Self.batchLimit.records {
            guard records[end].headers.isEmpty, records[end].timestampMilliseconds == nil, records[end].topic == topic else { break }
            let recordBytes = (records[end].key?.count ?? 0) + (records[end].value?.count ?? 0)
            guard bytes + recordBytes <= Self.batchLimit.bytes || end == start else { break }
            bytes += recordBytes
            end += 1
        }
        return (end, bytes)
    }

    /// Enqueues `range` by one `rd_kafka_produce_batch` call, which takes the topic's lock and
    /// reads the clock once for the run instead of once per record. Keys and values are copied
    /// into a buffer for the call (librdkafka copies them again before it returns). Records
    /// refused for another reason than a full queue are failed in the group. Returns how many
    /// records from the start of `range` are done, and `QUEUE_FULL` when a full queue stopped
    /// the call there, or librdkafka's error when it gives no handle for the topic (nothing
    /// done; the caller fails the run).
    private func enqueueBatch(
        _ records: UnsafeBufferPointer<ProducerRecord>, _ range: Range<Int>, byteCount: Int, group: UInt64, client rk: OpaquePointer
    ) -> (done: Int, code: rd_kafka_resp_err_t) {
        guard let topic = rd_kafka_topic_new(rk, records[range.lowerBound].topic, nil) else {
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
                for (slot, index) in range.enumerated() {
                    let code = messages[slot].err
                    if code == RD_KAFKA_RESP_ERR__QUEUE_FULL { return (slot, code) }
                    if code != RD_KAFKA_RESP_ERR_NO_ERROR {
                        fail(group: group, indices: index..<index + 1, with: enqueueError(code, topic: records[index].topic))
                    }
                }
                return (range.count, RD_KAFKA_RESP_ERR_NO_ERROR)
            }
        }
    }

    /// Hands one record, with its headers and timestamp, to librdkafka.
    private func enqueue(_ record: ProducerRecord, tag: DeliveryTag, client rk: OpaquePointer) -> rd_kafka_resp_err_t {
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
                    rk, record.topic, record.partition ?? RD_KAFKA_PARTITION_UA,
                    key.baseAddress, key.count, value.baseAddress, value.count, headers,
                    record.timestampMilliseconds ?? 0, tag.opaque)
            }
        }
        if code != RD_KAFKA_RESP_ERR_NO_ERROR, let headers { rd_kafka_headers_destroy(headers) }
        return code
    }

    private func enqueueError(_ code: rd_kafka_resp_err_t, topic: String) -> KafkaError {
        KafkaError(code: code, context: "enqueue to \(topic)", persistence: .notPersisted)
    }

    /// Serves the client's main queue: waits up to `timeoutMilliseconds` for the first event,
    /// then takes whatever else is ready. Delivery reports are filed a produce response at a
    /// time; logs and errors go to the logger.
    private func serveEvents(_ rk: OpaquePointer, mainQueue queue: OpaquePointer, timeoutMilliseconds: Int32) {
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
                    outcomes[index] = DeliveryGroup.Outcome(offset: message.pointee.offset, partition: message.pointee.partition, settled: true)
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

    /// Serves what is ready; with records still outstanding, then holds librdkafka's flushing
    /// mark for a few milliseconds, so that batches waiting out `linger.ms` go at once. (With
    /// reports as events, `rd_kafka_flush` only marks and waits; it serves nothing.)
    private func flushCycle(_ rk: OpaquePointer, mainQueue: OpaquePointer) {
        serveEvents(rk, mainQueue: mainQueue, timeoutMilliseconds: 0)
        if rd_kafka_outq_len(rk) > 0 { rd_kafka_flush(rk, 5) }
    }

    /// Answers flush waiters: done when no record is outstanding (in librdkafka, in the
    /// backlog or just submitted), timed out past their deadline.
    private func afterCycle(outstanding: Int) {
        let now = ContinuousClock.now
        let (flushed, expired) = state.withLock { state in
            var flushed: [CheckedContinuation<Void, any Error>] = []
            var expired: [CheckedContinuation<Void, any Error>] = []
            let empty = outstanding == 0 && state.submitted.isEmpty
            state.flushWaiters.removeAll { waiter in
                if empty {
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
            $0.resume(throwing: KafkaError(kind: .timedOut, message: "flush timed out with \(outstanding) records outstanding"))
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
        if !drain(rk, mainQueue: mainQueue, deadline: .now + flushTimeout) {
            logger.warning("producer closing with \(rd_kafka_outq_len(rk)) undelivered records; failing them")
            rd_kafka_purge(rk, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
            _ = drain(rk, mainQueue: mainQueue, deadline: .now + .seconds(5))  // the purged records' reports
        }
        rd_kafka_queue_destroy(mainQueue)
        topicHandles.forEach(rd_kafka_topic_destroy)
        rd_kafka_destroy(rk)
        let closedBeforeDelivery = KafkaError(kind: .closed, message: "producer closed before delivery", persistence: .possiblyPersisted)
        let (finished, flushWaiters, closeWaiters) = state.withLock { state in
            state.closed = true
            var finished: [(CheckedContinuation<DeliveryGroup, Never>, DeliveryGroup)] = []
            for (id, group) in state.groups {
                group.failUnsettled(with: closedBeforeDelivery)
                if let waiter = group.waiter {  // else its sender has not started waiting: `outcomes(of:)` finds it complete
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

private func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    guard let bytes else { return body(UnsafeRawBufferPointer(start: nil, count: 0)) }
    return bytes.withUnsafeBytes(body)
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


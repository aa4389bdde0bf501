import Kafka
import Sink
import Synchronization

/// What the poll loop hands a commit lane, in poll order.
enum LaneWork: Sendable {
    /// The lane's share of a poll, with the owner epoch each of its partitions had then; an
    /// empty share says a poll happened.
    case records([ConsumerRecord], epochs: [LogPartition: Int64])
    /// The consumer was moved back to the Sink's offsets of these partitions: their records
    /// after this point are read again from there.
    case rewound(Set<LogPartition>)
}

/// A commit lane's queue of polled work. The poll loop sends without waiting, so a lane whose
/// commits are slow never holds up polling for the others; the lane takes everything queued at
/// once, so what piled up while it committed merges into its next batch.
final class LaneInbox: Sendable {
    private struct State {
        var works: [LaneWork] = []
        var records = 0
        var waiter: CheckedContinuation<[LaneWork]?, Never>?
        var finished = false

        mutating func takeWorks() -> [LaneWork] {
            defer { (works, records) = ([], 0) }
            return works
        }
    }

    private let state = Mutex(State())

    /// Records sent and not taken yet.
    var queuedRecords: Int { state.withLock { $0.records } }

    /// Queues `work`, handing it over at once to a lane waiting for some. An empty share is
    /// dropped when work is queued already: the lane is about to look again anyway.
    func send(_ work: LaneWork) {
        let handOver = state.withLock { state -> (CheckedContinuation<[LaneWork]?, Never>, [LaneWork])? in
            guard !state.finished else { return nil }
            if case .records(let records, _) = work {
                guard !records.isEmpty || state.works.isEmpty else { return nil }
                state.records += records.count
            }
            state.works.append(work)
            guard let waiter = state.waiter else { return nil }
            state.waiter = nil
            return (waiter, state.takeWorks())
        }
        if let (waiter, works) = handOver { waiter.resume(returning: works) }
    }

    /// Everything queued, in order, waiting for work while there is none; nil once the inbox
    /// is finished or the calling task cancelled (what was queued then is dropped).
    func takeAll() async -> [LaneWork]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[LaneWork]?, Never>) in
                let ready = state.withLock { state -> [LaneWork]?? in
                    if state.finished { return .some(nil) }
                    if !state.works.isEmpty { return state.takeWorks() }
                    state.waiter = continuation
                    return .none
                }
                if case .some(let works) = ready { continuation.resume(returning: works) }
            }
        } onCancel: {
            finish()
        }
    }

    /// Ends the lane's work: `takeAll` returns nil from now on, and `send` drops what it gets.
    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<[LaneWork]?, Never>? in
            state.finished = true
            state.works = []
            state.records = 0
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }
}

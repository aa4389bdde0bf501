import Foundation

/// An executor that runs every job on one OS thread of its own.
///
/// Blocking C calls (libpq, librdkafka) made by an actor that uses this executor, or by code
/// run under `withTaskExecutorPreference(executor)`, block only this thread and never a thread
/// of the Swift cooperative pool.
public final class DedicatedThreadExecutor: SerialExecutor, TaskExecutor, @unchecked Sendable {
    // `jobs` and `isShuttingDown` are guarded by `condition`.
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var isShuttingDown = false

    /// Starts the thread; `name` shows up in debuggers and `top -H`.
    public init(name: String) {
        Thread.detachNewThread { [self] in
            nameCurrentThread(name)
            runLoop()
        }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Lets the thread finish once it has run every job already enqueued.
    public func shutdown() {
        condition.lock()
        isShuttingDown = true
        condition.signal()
        condition.unlock()
    }

    private func runLoop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !isShuttingDown { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch {
                job.runSynchronously(
                    isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor())
            }
        }
    }
}

extension DedicatedThreadExecutor {
    /// Runs `body`, which may block, on this executor's thread and returns its result.
    public func run<T: Sendable, E: Error>(_ body: @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withTaskExecutorPreference(self) {
            do throws(E) { return .success(try body()) } catch { return .failure(error) }
        }
        return try result.get()
    }
}

/// Names the calling thread for debuggers, `top -H` and `perf` (Linux keeps 15 bytes). A new
/// thread would otherwise carry the name of the thread that started it.
public func nameCurrentThread(_ name: String) {
    Thread.current.name = name
}

import Events
import Foundation
import Kafka
import Logging
import Metering
import Sink
import Synchronization
import Tenancy

/// Settings of a `UsageProcessor`.
public struct UsageProcessorConfiguration: Sendable {
    public var bootstrapServers: String
    /// The consumer group; every instance with the same group shares the partitions.
    public var group = "usage"
    public var topic = "events"
    public var deadLetterTopic = "events.dlq"
    /// Events up to this old update their past windows; older ones are dead-lettered as `late`.
    public var grace: Duration = .seconds(7 * 86_400)
    /// How long event identities are kept for deduplication.
    public var dedupeHorizon: Duration = .seconds(32 * 86_400)
    /// Most records per poll.
    public var maximumBatch = 5_000
    /// While the records waiting for a commit lane (its backlog: in its queue, and in Kafka in
    /// its partitions) would fill it, the lane merges its share of the polls in memory
    /// (`SinkStore.merge`: deduplicated, one usage delta per window) until it holds this many
    /// records or `mergedWindowsPerCommit` windows, then commits them as one, and after such a
    /// full batch merges the catch-up's tail while more than a poll's records wait for it
    /// (`LaneMergeRule`); otherwise what it took commits as soon as the lane's previous
    /// commit is done, so merging never holds back records that a smaller commit would have
    /// made visible sooner, nor waits for a backlog in another lane's partitions. Bigger merges
    /// append fewer usage log rows when a stream meets its windows again only many events later.
    public var mergedRecordsPerCommit = 200_000
    /// The most windows a lane merges before it commits: what bounds the memory of merging, as
    /// a lane holds up to two merged batches (one filling, up to ~320 bytes a window; one
    /// committing, sealed, up to ~220), besides their event identities (~60 bytes each).
    public var mergedWindowsPerCommit = 250_000
    /// Sink connections committing at once. Each lane owns the partitions whose number modulo
    /// this count is its index, so a partition's batches still commit one at a time, in order,
    /// and prepares, merges and commits its share of every poll on a task of its own, side by
    /// side with the other lanes: a lane waiting for Postgres holds up no other.
    public var commitLanes = 2
    /// Records polled for a lane and not yet taken by it, past which the lane's partitions are
    /// paused (until it is down to half): what bounds the memory of a lane that falls behind
    /// while polling goes on for the others. Paused partitions resume after the last record
    /// polled; what librdkafka had fetched beyond is fetched again.
    public var laneQueueLimit = 50_000
    /// How often the processor folds the Sink's usage and stats logs into the keyed tables (on
    /// connections of its own, `foldConnections`); readers see the same values either way.
    public var foldInterval: Duration = .seconds(1)
    /// Sink connections a fold uses side by side, each folding its share of the logs' parts,
    /// so a fold can use that many of Postgres's cores.
    public var foldConnections = 2
    /// While the processor is catching up (a poll within the last half second returned a full
    /// batch, or found a lane's queue past `laneQueueLimit`), folds wait, so the commits have
    /// the machine to themselves and a fold merges more deltas into each window, but never
    /// longer than this since the last fold, so folding goes on under sustained load.
    public var foldDeferralLimit: Duration = .seconds(30)
    /// Back-pressure: while more usage rows than this may wait in the Sink's usage log, counted
    /// by this processor (the rows its commits added since its last complete fold), it polls
    /// no more records and folds without deferral, so the log stays bounded
    /// and a backlog that folds cannot keep up with waits in Kafka. A bigger bound lets folds
    /// merge more deltas into each window (fewer upserts an event), at the cost of more log rows
    /// for readers' queries to merge (each scans its tenant's partition of the log).
    public var maximumUnfoldedRows = 4_000_000
    /// Further librdkafka properties of the consumer, e.g. `session.timeout.ms`. By default a
    /// fetch that finds no records waits at most 100 ms (librdkafka's default is 500 ms; a
    /// broker that does not answer early on new records, like librdkafka's mock cluster, adds
    /// that wait to the lag of the next records).
    public var consumerProperties: [String: String] = ["fetch.wait.max.ms": "100"]

    public init(bootstrapServers: String) {
        self.bootstrapServers = bootstrapServers
    }
}

/// `tally process usage`: reads `events` as a member of a consumer group, computes each
/// tenant's meters into usage deltas, and commits every batch through the Sink together with
/// its offsets, deduplicated and fenced. Undecodable and late events go to the dead-letter
/// topic, with headers naming the original topic, partition, offset, error class and message,
/// before the batch commits; a poison event never blocks its partition.
public final class UsageProcessor: Sendable {
    private let configuration: UsageProcessorConfiguration
    private let sink: SinkStore
    private let calculator: Mutex<UsageCalculator>
    private let logger: Logger
    private let progress: @Sendable (ProcessorProgress) -> Void
    /// When a poll last returned a full batch, or found a lane behind: records were waiting.
    private let lastBacklogSeen = Mutex<ContinuousClock.Instant?>(nil)
    /// Usage rows this processor's commits added to the Sink's usage log since its last
    /// complete fold.
    private let unfoldedRows = Atomic<Int>(0)
    /// Usage rows merged or committing in the lanes, on their way to the usage log.
    private let rowsInLanes = Atomic<Int>(0)
    /// Each lane's backlog as of the last poll (`LaneMergeRule.laneBacklogs`).
    private let laneBacklogs = Mutex<[Int]>([])
    /// Partitions the lanes need read again from the Sink's offsets; the poll loop moves the
    /// consumer back before its next poll.
    private let rewindRequests = Mutex<Set<LogPartition>>([])
    /// What the lanes' commits wrote.
    private let committedTotals = Mutex(ProcessorProgress())
    /// When the fold loop folds, and the usage log's bound.
    private let foldDeferral: FoldDeferral

    public init(
        configuration: UsageProcessorConfiguration, sink: SinkStore, calculator: UsageCalculator, logger: Logger = Logger(label: "tally.usage"),
        progress: @escaping @Sendable (ProcessorProgress) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.sink = sink
        self.calculator = Mutex(calculator)
        self.logger = logger
        self.progress = progress
        foldDeferral = FoldDeferral(configuration, quietPeriod: Self.catchUpQuietPeriod)
    }

    /// Replaces the meters and time zones; the next batch uses them.
    public func reconfigure(_ calculator: UsageCalculator) {
        self.calculator.withLock { $0 = calculator }
    }

    /// Runs until the task is cancelled, then leaves the group.
    public func run() async throws {
        try await sink.prepare()
        let ownership = SinkOwnership(sink: sink, group: configuration.group)
        let consumer = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(
                bootstrapServers: configuration.bootstrapServers, groupID: configuration.group, properties: configuration.consumerProperties),
            rebalanceListener: ownership, logger: logger)
        let producerConfiguration = KafkaProducerConfiguration(
            bootstrapServers: configuration.bootstrapServers, enqueueTimeout: .seconds(30), topics: [configuration.deadLetterTopic])
        let deadLetters = try KafkaProducer(configuration: producerConfiguration, logger: logger)
        let folding = (0..<max(1, configuration.foldConnections)).map { _ in sink.withOwnConnection() }
        // The processor's own connection serves ownership and rewinds: a lane waiting for a
        // commit holds up neither.
        let lanes = (0..<max(1, configuration.commitLanes)).map { _ in sink.withOwnConnection() }
        let pruning = sink.withOwnConnection()
        func closeAll() async {
            await consumer.close()
            await deadLetters.close()
            for store in folding { await store.close() }
            for lane in lanes { await lane.close() }
            await pruning.close()
        }
        do {
            try await consumer.subscribe([configuration.topic])
            let (folds, announceFold) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
            async let folder: Void = foldContinuously(folding, announcing: announceFold)
            try await process(consumer, ownership: ownership, deadLetters: deadLetters, lanes: lanes, pruning: pruning, folds: folds)
            await folder
        } catch {
            await closeAll()
            throw error
        }
        await closeAll()
    }

    /// Folds the Sink's logs every `foldInterval`, deferred while catching up (up to
    /// `foldDeferralLimit`, and never past `maximumUnfoldedRows`), until the task is cancelled;
    /// announces every complete fold. The catch-up ends once polls have found no backlog for
    /// `catchUpQuietPeriod`: one poll that comes back short (a fetch still in flight) does not
    /// end it, and the fold starts within a tenth of that period after it does.
    private func foldContinuously(_ stores: [SinkStore], announcing announceFold: AsyncStream<Void>.Continuation) async {
        defer { announceFold.finish() }
        var lastFold = ContinuousClock.now
        while !Task.isCancelled {
            let counted = unfoldedRows.load(ordering: .relaxed)
            let now = ContinuousClock.now
            guard foldDeferral.folds(at: now, unfoldedRows: counted, lastBacklogSeen: lastBacklogSeen.withLock { $0 }, lastFold: lastFold) else {
                try? await Task.sleep(for: Self.catchUpQuietPeriod / 10)
                continue
            }
            // Past the bound, polling waits for this fold: it waits in turn for another
            // process's fold rather than leave the log to it.
            let overBound = foldDeferral.isOverBound(unfoldedRows: counted)
            lastFold = now
            do {
                // Everything counted had committed before the fold began, so it folded.
                if try await SinkStore.foldLogs(on: stores, waitingForRunningFold: overBound).complete {
                    unfoldedRows.subtract(counted, ordering: .relaxed)
                    announceFold.yield()
                }
            } catch {
                logger.warning("could not fold the usage and stats logs: \(error)")
            }
            try? await Task.sleep(for: configuration.foldInterval)
        }
    }

    /// How long a poll waits for a full batch before it returns what it has.
    private static let pollTimeout: Duration = .milliseconds(200)

    /// How long polls find no backlog before a catch-up counts as over: more than two polls'
    /// timeouts, as a poll with records waiting returns a full batch at once.
    private static let catchUpQuietPeriod = pollTimeout * 5 / 2

    /// A commit lane: its Sink store, the batch merging its share of the polls, and its commit
    /// in flight. Lanes own disjoint partitions and work side by side, each on a task of its
    /// own that takes the poll loop's work from its inbox (`run`), so a lane waiting for
    /// Postgres holds up neither polling nor the other lanes.
    private actor Lane {
        /// The lane owns the partitions whose number modulo the lane count is this.
        let index: Int
        /// The poll loop's work for this lane.
        nonisolated let inbox = LaneInbox()
        private let store: SinkStore
        private let processor: UsageProcessor
        private var open: LaneBatch
        private var committing: (batch: LaneBatch, commit: Task<Bool, Never>)?
        private var mergeRule: LaneMergeRule
        /// Partitions to read again from the Sink's offsets: their records are dropped until
        /// the poll loop says the consumer moved back.
        private var awaitingRewind: Set<LogPartition> = []
        /// `rowsToLog` as last added to the processor's `rowsInLanes`.
        private var reportedRowsToLog = 0

        init(index: Int, store: SinkStore, processor: UsageProcessor) {
            self.index = index
            self.store = store
            self.processor = processor
            open = processor.newLaneBatch()
            mergeRule = LaneMergeRule(processor.configuration)
        }

        /// Usage rows merged or committing, on their way to the usage log.
        private var rowsToLog: Int { open.merged.usageRows + (committing?.batch.merged.usageRows ?? 0) }

        /// Takes the poll loop's work until the inbox is finished or the task cancelled, then
        /// stops: the commit in flight ends, then what the lane merged commits, once.
        func run(deadLetters: KafkaProducer) async {
            working: while let works = await inbox.takeAll() {
                for work in works {
                    switch work {
                    case .rewound(let partitions):
                        awaitingRewind.subtract(partitions)
                    case .records(let records, let epochs):
                        // Records polled before the consumer moved back come again after it.
                        let current = awaitingRewind.isEmpty
                            ? records : records.filter { !awaitingRewind.contains(LogPartition(topic: $0.topic, partition: $0.partition)) }
                        guard !current.isEmpty else { continue }
                        do {
                            readAgain(try await take(current, epochs: epochs, deadLetters: deadLetters))
                        } catch {
                            break working  // cancelled while dead letters waited for the broker
                        }
                    }
                }
                // Records queued behind this work wait as much as those still in Kafka.
                let backlog = processor.laneBacklogs.withLock { $0[index] } + inbox.queuedRecords
                readAgain(await commitUnlessMerging(backlog: backlog, logFull: processor.usageLogFull))
                reportRowsToLog()
            }
            await stop()
            reportRowsToLog()
        }

        /// Prepares the lane's share of a poll, sends its dead letters and merges the rest into
        /// the open batch. Returns the partitions to read again (see `merge`).
        private func take(_ records: [ConsumerRecord], epochs: [LogPartition: Int64], deadLetters: KafkaProducer) async throws -> Set<LogPartition> {
            let batch = processor.prepare(records, epochs: epochs)
            try await processor.sendDeadLetters(batch.deadLetters, with: deadLetters)
            return await merge(batch)
        }

        /// Commits the open batch once the previous commit is done, unless the lane merges on
        /// (`LaneMergeRule`, from the records waiting for the lane, `backlog`, and whether the
        /// usage log is full, `logFull`). Returns the partitions to read again (see
        /// `finishCommit`).
        private func commitUnlessMerging(backlog: Int, logFull: Bool) async -> Set<LogPartition> {
            let (records, windows) = (open.progress.records, open.merged.usageRows)
            guard mergeRule.commits(records: records, windows: windows, backlog: backlog, logFull: logFull) else { return [] }
            mergeRule.committed(records: records, backlog: backlog)
            let rereading = await finishCommit()
            startCommit(nextExpectingAsMany: mergeRule.mergesTail)
            return rereading
        }

        /// Asks the poll loop to move the consumer back to the Sink's offsets of `partitions`.
        private func readAgain(_ partitions: Set<LogPartition>) {
            guard !partitions.isEmpty else { return }
            awaitingRewind.formUnion(partitions)
            processor.rewindRequests.withLock { $0.formUnion(partitions) }
        }

        /// Brings the processor's count of the rows in its lanes up to date.
        private func reportRowsToLog() {
            let rows = rowsToLog
            processor.rowsInLanes.add(rows - reportedRowsToLog, ordering: .relaxed)
            reportedRowsToLog = rows
        }

        /// Stopping: the commit in flight ends, then what the lane merged commits, once.
        private func stop() async {
            _ = await finishCommit()
            startCommit()
            _ = await finishCommit()
        }

        /// Merges a batch into the open batch. Returns the partitions to read again: those of
        /// the lane's batches, when the poll shows them fenced off.
        private func merge(_ batch: PreparedBatch) async -> Set<LogPartition> {
            var delay: Duration = .milliseconds(100)
            while true {
                do {
                    if try await mergeIntoOpen(batch.sink) {
                        open.progress.add(batch)
                        return []
                    }
                    // A tenant's events came from more than one partition: what the lane merged
                    // commits first, then this batch on its own.
                    var rereading = await finishCommit()
                    if rereading.isEmpty {
                        startCommit()
                        rereading = await finishCommit()
                    }
                    guard rereading.isEmpty else { return rereading.union(batch.sink.positions.keys) }
                    let (store, sinkBatch) = (store, batch.sink)
                    let commit = commitInBackground { () async throws(SinkError) in try await store.commit(sinkBatch) }
                    guard await UsageProcessor.value(of: commit) else { return Set(batch.sink.positions.keys) }
                    processor.unfoldedRows.add(batch.usageRows, ordering: .relaxed)
                    var progress = ProcessorProgress()
                    progress.add(batch)
                    processor.recordCommitted(progress)
                    return []
                } catch {
                    if case .fenced = error {
                        // The poll carries a newer owner epoch of a partition than the lane's
                        // merged batch: the partition was assigned again since. The lane's
                        // batches are read again from what the Sink holds, once its commit in
                        // flight has ended.
                        let inFlight = await finishCommit()
                        store.abandon(open.merged)
                        let rereading = inFlight.union(open.merged.positions.keys).union(batch.sink.positions.keys)
                        open = processor.newLaneBatch()
                        return rereading
                    }
                    // Nothing was merged; the dedupe states could not be read from Postgres. When
                    // stopping, the batch is left to whoever reads the partitions next.
                    processor.logger.warning("could not deduplicate a batch, retrying in \(delay): \(error)")
                    try? await Task.sleep(for: delay)
                    if Task.isCancelled { return [] }
                    delay = min(delay * 2, .seconds(10))
                }
            }
        }

        /// `SinkStore.merge` into the open batch. The merged batch is moved out for the merge,
        /// so that the merge holds its only reference and grows its windows in place; an access
        /// to `open` held across the merge's suspension points would be a copy of them.
        private func mergeIntoOpen(_ batch: SinkBatch) async throws(SinkError) -> Bool {
            var merged = open.merged
            open.merged = MergedBatch(consumerGroup: merged.consumerGroup)
            defer { open.merged = merged }
            return try await store.merge(batch, into: &merged)
        }

        /// Commits the open batch in the background, unless it is empty; while merging, the
        /// next one is sized for as many windows.
        private func startCommit(nextExpectingAsMany merging: Bool = false) {
            guard !open.merged.isEmpty else { return }
            var batch = open
            open = processor.newLaneBatch(expectedWindows: merging ? batch.merged.usageRows : 0)
            batch.merged.seal()
            let (store, merged) = (store, batch.merged)
            committing = (batch, commitInBackground { () async throws(SinkError) in try await store.commit(merged) })
        }

        /// Runs a commit with retries (`commitWithRetry`) in a task of its own. Nonisolated, so
        /// that the task does not run on the lane: it neither waits for the lane's work to start
        /// nor to end.
        private nonisolated func commitInBackground(_ commit: @escaping @Sendable () async throws(SinkError) -> Void) -> Task<Bool, Never> {
            Task { [processor] in await processor.commitWithRetry(commit) }
        }

        /// Waits for the commit in flight, if any. When that was fenced off, the open batch,
        /// merged after it, goes too: returns the partitions of both, to read again from what
        /// the Sink holds, where this member still owns them.
        private func finishCommit() async -> Set<LogPartition> {
            guard let (batch, commit) = committing else { return [] }
            committing = nil
            if await UsageProcessor.value(of: commit) {
                processor.unfoldedRows.add(batch.merged.usageRows, ordering: .relaxed)
                processor.recordCommitted(batch.progress)
                return []
            }
            store.abandon(batch.merged)
            store.abandon(open.merged)
            let rereading = Set(batch.merged.positions.keys).union(open.merged.positions.keys)
            open = processor.newLaneBatch()
            return rereading
        }
    }

    /// Polled batches merged for one commit, and what progress lines count of them.
    private struct LaneBatch {
        var merged: MergedBatch
        var progress = ProcessorProgress()
    }

    /// Polls while the lanes prepare, merge and commit what they are handed, each on a task of
    /// its own (merged while a backlog waits, `mergedRecordsPerCommit`): the processor's own
    /// work overlaps Postgres's, and a lane waiting for Postgres holds up no other. Prunes
    /// what the dedupe horizon let go on `pruning` meanwhile.
    private func process(
        _ consumer: KafkaConsumer, ownership: SinkOwnership, deadLetters: KafkaProducer, lanes stores: [SinkStore], pruning: SinkStore,
        folds: AsyncStream<Void>
    ) async throws {
        let lanes = stores.enumerated().map { Lane(index: $0.offset, store: $0.element, processor: self) }
        laneBacklogs.withLock { $0 = Array(repeating: 0, count: lanes.count) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in lanes { group.addTask { await lane.run(deadLetters: deadLetters) } }
            group.addTask { await self.forgetExpiredContinuously(on: pruning) }
            defer { for lane in lanes { lane.inbox.finish() } }
            try await poll(consumer, ownership: ownership, lanes: lanes, folds: folds)
        }
    }

    /// Polls until the task is cancelled and hands each lane its share of every poll; first
    /// moves the consumer back where lanes asked to read again, and pauses the partitions of
    /// lanes that fall behind (`LanePauses`).
    private func poll(_ consumer: KafkaConsumer, ownership: SinkOwnership, lanes: [Lane], folds: AsyncStream<Void>) async throws {
        var foldsDone = folds.makeAsyncIterator()
        var pauses = LanePauses(lanes: lanes.count, limit: configuration.laneQueueLimit)
        func epoch(of partition: TopicPartition) -> Int64? {
            ownership.epoch(of: LogPartition(topic: partition.topic, partition: partition.partition))
        }
        while !Task.isCancelled {
            if foldDeferral.isOverBound(unfoldedRows: unfoldedRows.load(ordering: .relaxed)) {
                logger.info("more than \(configuration.maximumUnfoldedRows) usage rows wait for a fold: polling stops until one completes")
                while foldDeferral.isOverBound(unfoldedRows: unfoldedRows.load(ordering: .relaxed)) {
                    guard await foldsDone.next() != nil else { break }
                }
            }
            let rewinding = rewindRequests.withLock { requests in
                defer { requests = [] }
                return requests
            }
            if !rewinding.isEmpty {
                // A paused partition resumes after the last record polled, wherever it was moved.
                let resuming = pauses.movingBack(rewinding.map { TopicPartition(topic: $0.topic, partition: $0.partition) })
                if !resuming.isEmpty { try await consumer.resume(resuming) }
                try await rewind(consumer, ownership: ownership, partitions: Array(rewinding))
                for (lane, partitions) in Dictionary(grouping: rewinding, by: { Int($0.partition) % lanes.count }) {
                    lanes[lane].inbox.send(.rewound(Set(partitions)))
                }
            }
            let records = try await consumer.poll(maxRecords: configuration.maximumBatch, timeout: Self.pollTimeout)
            // A backlog not known (the client failed to say) merges nothing beyond a poll.
            let backlogs = LaneMergeRule.laneBacklogs((try? await consumer.backlog()) ?? [:], lanes: lanes.count)
            laneBacklogs.withLock { $0 = backlogs }
            // Every lane hears of every poll, with records or none: one that merges decides
            // again on the new backlog.
            let shares = Dictionary(grouping: records, by: { Int($0.partition) % lanes.count })
            for (lane, share) in lanes.indices.map({ ($0, shares[$0] ?? []) }) {
                var epochs: [LogPartition: Int64] = [:]
                for partition in Set(share.map(\.topicPartition)) {
                    guard let epoch = epoch(of: partition) else { continue }  // revoked meanwhile
                    epochs[LogPartition(topic: partition.topic, partition: partition.partition)] = epoch
                    pauses.polled(partition, epoch: epoch)
                }
                lanes[lane].inbox.send(.records(share, epochs: epochs))
            }
            let assignment = try await consumer.assignment()
            let (pause, resume) = pauses.update(
                queued: lanes.map(\.inbox.queuedRecords), assignment: Dictionary(uniqueKeysWithValues: assignment.map { ($0, epoch(of: $0)) }))
            if records.count == configuration.maximumBatch || pauses.anyLaneBehind { lastBacklogSeen.withLock { $0 = .now } }
            if !pause.isEmpty { try await consumer.pause(pause) }
            if !resume.isEmpty { try await consumer.resume(resume) }
        }
    }

    /// At the start and then every ten minutes until the task is cancelled, prunes event
    /// identities past the dedupe horizon and the distinct values of windows closed long
    /// enough (`closedWindowAge`), on a connection of its own: a long prune holds up neither
    /// polling nor the lanes.
    private func forgetExpiredContinuously(on store: SinkStore) async {
        while !Task.isCancelled {
            let now = Date()
            let cutoff = now.addingTimeInterval(-Self.seconds(configuration.dedupeHorizon))
            do { try await store.forgetEvents(before: cutoff) } catch { logger.warning("could not prune event identities: \(error)") }
            do {
                try await store.forgetDistinctValues(ofWindowsEndedBefore: now.addingTimeInterval(-Self.seconds(closedWindowAge)))
            } catch {
                logger.warning("could not prune the distinct values of closed windows: \(error)")
            }
            try? await Task.sleep(for: .seconds(600))
        }
    }

    /// Adds what a lane's commit wrote to the totals, and reports them.
    private func recordCommitted(_ commit: ProcessorProgress) {
        let totals = committedTotals.withLock { totals in
            totals.add(committed: commit)
            return totals
        }
        progress(totals)
    }

    /// Whether the usage rows on their way to the usage log, or in it unfolded, pass its bound.
    private var usageLogFull: Bool {
        foldDeferral.isOverBound(unfoldedRows: unfoldedRows.load(ordering: .relaxed) + rowsInLanes.load(ordering: .relaxed))
    }

    private func newLaneBatch(expectedWindows: Int = 0) -> LaneBatch {
        LaneBatch(merged: MergedBatch(consumerGroup: configuration.group, expectedWindows: expectedWindows))
    }

    /// How long ago a window must have ended for its distinct values to be forgotten: no event
    /// reaches it past the grace, plus a day for processors whose clocks disagree, and never
    /// before the dedupe horizon, so everything a processor remembers lasts that long.
    private var closedWindowAge: Duration { max(configuration.dedupeHorizon, configuration.grace + .seconds(86_400)) }

    /// Waits for a commit; cancelling the wait cancels the commit's retries.
    private static func value(of commit: Task<Bool, Never>) async -> Bool {
        await withTaskCancellationHandler { await commit.value } onCancel: { commit.cancel() }
    }

    /// One polled batch, ready to commit.
    struct PreparedBatch {
        var sink: SinkBatch
        var deadLetters: [ProducerRecord]
        var records = 0
        /// Usage rows of the counted events, before they merge per window.
        var usageRows = 0
    }

    /// Decodes and meters `records`, polled while this member owned their partitions under
    /// `epochs`; records of partitions it did not own are left out.
    func prepare(_ records: [ConsumerRecord], epochs: [LogPartition: Int64]) -> PreparedBatch {
        var calculator = calculator.withLock { $0 }
        let decoder = EventDecoder(limits: .withoutTimeBounds)
        let lateBefore = EventTime.now().advanced(by: .zero - configuration.grace)
        var batch = PreparedBatch(sink: SinkBatch(consumerGroup: configuration.group, positions: [:]), deadLetters: [])
        for record in records {
            let partition = LogPartition(topic: record.topic, partition: record.partition)
            guard let epoch = epochs[partition] else { continue }
            batch.records += 1
            batch.sink.positions[partition] = CommittedPosition(nextOffset: record.offset + 1, epoch: epoch)
            let recordTime = Date(timeIntervalSince1970: Double(record.timestampMilliseconds ?? 0) / 1000)
            let keyTenant = record.key.flatMap { try? TenantID(String(decoding: $0, as: UTF8.self)) }
            let event: UsageEvent
            do {
                event = try decoder.decodeEvent(record.value ?? [])
            } catch {
                batch.deadLetters.append(deadLetter(record, errorClass: "invalid", message: "\(error)"))
                if let keyTenant {
                    batch.sink.rejections.append(
                        RejectedInput(tenant: keyTenant, kind: .invalid, time: recordTime, partition: partition, offset: record.offset, reason: "\(error)"))
                }
                continue
            }
            guard keyTenant == event.tenant else {
                // Recorded for the tenant whose key the record carries, never in the schema of
                // the tenant it claims to be.
                let reason = "the record key names tenant \(keyTenant?.rawValue ?? "(none)") but the event names \(event.tenant)"
                batch.deadLetters.append(deadLetter(record, errorClass: "invalid", message: reason))
                if let keyTenant {
                    batch.sink.rejections.append(
                        RejectedInput(tenant: keyTenant, kind: .invalid, source: event.source, eventID: event.id, time: event.time.date,
                            partition: partition, offset: record.offset, reason: reason))
                }
                continue
            }
            guard event.time >= lateBefore else {
                let reason = "event time \(event.time) is older than the grace period"
                batch.deadLetters.append(deadLetter(record, errorClass: "late", message: reason))
                batch.sink.rejections.append(
                    RejectedInput(tenant: event.tenant, kind: .late, source: event.source, eventID: event.id, time: event.time.date,
                        partition: partition, offset: record.offset, reason: reason))
                continue
            }
            let (rows, failures) = calculator.usage(of: event)
            batch.usageRows += rows.count
            batch.sink.events.append(CountedEvent(tenant: event.tenant, source: event.source, id: event.id, time: event.time.date, usage: rows, partition: partition))
            for failure in failures {
                batch.sink.rejections.append(
                    RejectedInput(tenant: event.tenant, kind: .meter, meter: failure.meter, source: event.source, eventID: event.id,
                        time: event.time.date, partition: partition, offset: record.offset, reason: failure.reason))
            }
        }
        return batch
    }

    private func deadLetter(_ record: ConsumerRecord, errorClass: String, message: String) -> ProducerRecord {
        ProducerRecord(
            topic: configuration.deadLetterTopic, key: record.key, value: record.value,
            headers: record.headers + [
                KafkaHeader(name: "tally.original.topic", value: record.topic),
                KafkaHeader(name: "tally.original.partition", value: String(record.partition)),
                KafkaHeader(name: "tally.original.offset", value: String(record.offset)),
                KafkaHeader(name: "tally.error.class", value: errorClass),
                KafkaHeader(name: "tally.error.message", value: String(message.prefix(1000))),
            ],
            timestampMilliseconds: record.timestampMilliseconds)
    }

    /// Dead letters are durable before the batch that skips them commits.
    private func sendDeadLetters(_ records: [ProducerRecord], with producer: KafkaProducer) async throws {
        guard !records.isEmpty else { return }
        var pending = records
        var delay: Duration = .milliseconds(100)
        while !pending.isEmpty {
            let outcomes = await producer.send(pending)
            pending = zip(pending, outcomes).compactMap { record, outcome in
                if case .failure(let error) = outcome {
                    logger.warning("dead letter not acknowledged, retrying: \(error)")
                    return record
                }
                return nil
            }
            if !pending.isEmpty {
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(10))
            }
        }
    }

    /// Runs a commit, retrying it with backoff while Postgres is unreachable. False when
    /// fenced, or cancelled.
    private func commitWithRetry(_ commit: @Sendable () async throws(SinkError) -> Void) async -> Bool {
        var delay: Duration = .milliseconds(100)
        while true {
            do {
                try await commit()
                return true
            } catch {
                if case .fenced = error {
                    logger.notice("batch fenced off, another member owns its partitions now: \(error)")
                    return false
                }
                if Task.isCancelled { return false }
                logger.warning("commit failed, retrying in \(delay): \(error)")
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(10))
            }
        }
    }

    /// Moves partitions this member still owns back to the Sink's stored offsets.
    private func rewind(_ consumer: KafkaConsumer, ownership: SinkOwnership, partitions: [LogPartition]) async throws {
        let stored = try await sink.offsets(group: configuration.group)
        var offsets: [TopicPartition: Int64] = [:]
        for partition in partitions where ownership.epoch(of: partition) != nil {
            if let position = stored[partition] { offsets[TopicPartition(topic: partition.topic, partition: partition.partition)] = position.nextOffset }
        }
        if !offsets.isEmpty { try await consumer.seek(offsets) }
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// Running totals of a processor, for progress lines.
public struct ProcessorProgress: Sendable {
    public var records = 0
    public var events = 0
    public var deadLetters = 0
    /// Commits.
    public var batches = 0

    /// Adds a lane's share of one poll, before it commits (see `add(committed:)`).
    mutating func add(_ batch: UsageProcessor.PreparedBatch) {
        records += batch.records
        events += batch.sink.events.count
        deadLetters += batch.deadLetters.count
    }

    /// Adds what one commit wrote.
    mutating func add(committed: ProcessorProgress) {
        var commit = committed
        commit.batches = 1
        self += commit
    }

    /// Adds the totals of other commits.
    static func += (totals: inout ProcessorProgress, other: ProcessorProgress) {
        totals.records += other.records
        totals.events += other.events
        totals.deadLetters += other.deadLetters
        totals.batches += other.batches
    }
}

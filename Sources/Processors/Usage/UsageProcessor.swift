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
    /// Most records per poll; a poll's records commit as one batch per commit lane.
    public var maximumBatch = 5_000
    /// Sink connections committing at once. Each owns the partitions whose number modulo
    /// this count is its index, so a partition's batches still commit one at a time, in order.
    public var commitLanes = 2
    /// How often the processor folds the Sink's usage and stats logs into the keyed tables (on
    /// connections of its own, `foldConnections`); readers see the same values either way.
    public var foldInterval: Duration = .seconds(1)
    /// Sink connections a fold uses side by side, each folding its share of the logs' parts,
    /// so a fold can use that many of Postgres's cores.
    public var foldConnections = 2
    /// While the processor is catching up (its polls return full batches), folds wait, so
    /// the commits have the machine to themselves, but never longer than this since the last
    /// fold, so folding goes on under sustained load.
    public var foldDeferralLimit: Duration = .seconds(30)
    /// Back-pressure: while more usage rows than this may wait in the Sink's usage log, counted
    /// by this processor (the rows its commits added since its last complete fold, before
    /// merging), it polls no more records and folds without deferral, so the log stays bounded
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
    /// Whether the last poll returned a full batch: records are waiting.
    private let catchingUp = Atomic<Bool>(false)
    /// Usage rows this processor's commits added to the Sink's usage log since its last
    /// complete fold (an upper bound: counted before a batch's deltas merge).
    private let unfoldedRows = Atomic<Int>(0)

    public init(
        configuration: UsageProcessorConfiguration, sink: SinkStore, calculator: UsageCalculator, logger: Logger = Logger(label: "tally.usage"),
        progress: @escaping @Sendable (ProcessorProgress) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.sink = sink
        self.calculator = Mutex(calculator)
        self.logger = logger
        self.progress = progress
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
        let lanes = [sink] + (1..<max(1, configuration.commitLanes)).map { _ in sink.withOwnConnection() }
        func closeAll() async {
            await consumer.close()
            await deadLetters.close()
            for store in folding { await store.close() }
            for lane in lanes.dropFirst() { await lane.close() }
        }
        do {
            try await consumer.subscribe([configuration.topic])
            let (folds, announceFold) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
            async let folder: Void = foldContinuously(folding, announcing: announceFold)
            try await process(consumer, ownership: ownership, deadLetters: deadLetters, lanes: lanes, folds: folds)
            await folder
        } catch {
            await closeAll()
            throw error
        }
        await closeAll()
    }

    /// Folds the Sink's logs every `foldInterval`, deferred while catching up (up to
    /// `foldDeferralLimit`, and never past `maximumUnfoldedRows`), until the task is cancelled;
    /// announces every complete fold.
    private func foldContinuously(_ stores: [SinkStore], announcing announceFold: AsyncStream<Void>.Continuation) async {
        defer { announceFold.finish() }
        var lastFold = ContinuousClock.now
        while !Task.isCancelled {
            let counted = unfoldedRows.load(ordering: .relaxed)
            // Past the bound, polling waits for this fold: it waits in turn for another
            // process's fold rather than leave the log to it.
            let overBound = counted > configuration.maximumUnfoldedRows
            if overBound || !catchingUp.load(ordering: .relaxed) || lastFold.duration(to: .now) >= configuration.foldDeferralLimit {
                lastFold = .now
                do {
                    // Everything counted had committed before the fold began, so it folded.
                    if try await SinkStore.foldLogs(on: stores, waitingForRunningFold: overBound).complete {
                        unfoldedRows.subtract(counted, ordering: .relaxed)
                        announceFold.yield()
                    }
                } catch {
                    logger.warning("could not fold the usage and stats logs: \(error)")
                }
            }
            try? await Task.sleep(for: configuration.foldInterval)
        }
    }

    /// Polls and prepares the next batches while the previous ones commit, so the processor's
    /// own work overlaps Postgres's; the batches of a poll commit side by side, one per lane.
    private func process(
        _ consumer: KafkaConsumer, ownership: SinkOwnership, deadLetters: KafkaProducer, lanes: [SinkStore], folds: AsyncStream<Void>
    ) async throws {
        var foldsDone = folds.makeAsyncIterator()
        var totals = ProcessorProgress()
        var lastForget = ContinuousClock.now - .seconds(3600)
        var committing: [Int: (batch: PreparedBatch, commit: Task<Bool, Never>)] = [:]
        defer { for (_, commit) in committing.values { commit.cancel() } }
        while !Task.isCancelled {
            if unfoldedRows.load(ordering: .relaxed) > configuration.maximumUnfoldedRows {
                logger.info("more than \(configuration.maximumUnfoldedRows) usage rows wait for a fold: polling stops until one completes")
                while unfoldedRows.load(ordering: .relaxed) > configuration.maximumUnfoldedRows {
                    guard await foldsDone.next() != nil else { break }
                }
            }
            let records = try await consumer.poll(maxRecords: configuration.maximumBatch, timeout: .milliseconds(200))
            catchingUp.store(records.count == configuration.maximumBatch, ordering: .relaxed)
            var next = Dictionary(grouping: records) { Int($0.partition) % lanes.count }.mapValues { prepare($0, ownership: ownership) }
            try await sendDeadLetters(next.values.flatMap(\.deadLetters), with: deadLetters)
            var fenced: Set<LogPartition> = []
            for (lane, (batch, commit)) in committing {
                if await Self.value(of: commit) {
                    unfoldedRows.add(batch.usageRows, ordering: .relaxed)
                    totals.add(batch)
                } else {
                    // Another member owns a partition now: the lane's next batch, read after
                    // the fenced one, goes too, and its partitions are read again from what
                    // the Sink holds, where this member still owns them.
                    fenced.formUnion(batch.sink.positions.keys)
                    if let dropped = next.removeValue(forKey: lane) { fenced.formUnion(dropped.sink.positions.keys) }
                }
            }
            if !committing.isEmpty { progress(totals) }
            committing = [:]
            if !fenced.isEmpty { try await rewind(consumer, ownership: ownership, partitions: Array(fenced)) }
            for (lane, batch) in next {
                let (sinkBatch, store) = (batch.sink, lanes[lane])
                committing[lane] = (batch, Task { await commitWithRetry(sinkBatch, to: store) })
            }
            if lastForget.duration(to: .now) > .seconds(600) {
                lastForget = .now
                let now = Date()
                let cutoff = now.addingTimeInterval(-Self.seconds(configuration.dedupeHorizon))
                do { try await sink.forgetEvents(before: cutoff) } catch { logger.warning("could not prune event identities: \(error)") }
                do {
                    try await sink.forgetDistinctValues(ofWindowsEndedBefore: now.addingTimeInterval(-Self.seconds(closedWindowAge)))
                } catch {
                    logger.warning("could not prune the distinct values of closed windows: \(error)")
                }
            }
        }
        for (_, commit) in committing.values { _ = await Self.value(of: commit) }
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

    func prepare(_ records: [ConsumerRecord], ownership: SinkOwnership) -> PreparedBatch {
        var calculator = calculator.withLock { $0 }
        let decoder = EventDecoder(limits: .withoutTimeBounds)
        let lateBefore = EventTime.now().advanced(by: .zero - configuration.grace)
        var batch = PreparedBatch(sink: SinkBatch(consumerGroup: configuration.group, positions: [:]), deadLetters: [])
        for record in records {
            let partition = LogPartition(topic: record.topic, partition: record.partition)
            guard let epoch = ownership.epoch(of: partition) else { continue }  // revoked meanwhile
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

    /// Commits, retrying with backoff while Postgres is unreachable. False when fenced.
    private func commitWithRetry(_ batch: SinkBatch, to store: SinkStore) async -> Bool {
        var delay: Duration = .milliseconds(100)
        while true {
            do {
                try await store.commit(batch)
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
    public var batches = 0

    mutating func add(_ batch: UsageProcessor.PreparedBatch) {
        records += batch.records
        events += batch.sink.events.count
        deadLetters += batch.deadLetters.count
        batches += 1
    }
}

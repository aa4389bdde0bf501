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
    /// Most records per committed batch.
    public var maximumBatch = 5_000
    /// How often the processor folds the Sink's usage log into the keyed usage tables (on a
    /// connection of its own); readers see the same values either way.
    public var foldInterval: Duration = .seconds(1)
    /// Further librdkafka properties of the consumer, e.g. `session.timeout.ms`.
    public var consumerProperties: [String: String] = [:]

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
        let folding = sink.withOwnConnection()
        do {
            try await consumer.subscribe([configuration.topic])
            async let folder: Void = foldContinuously(folding)
            try await process(consumer, ownership: ownership, deadLetters: deadLetters)
            await folder
        } catch {
            await consumer.close()
            await deadLetters.close()
            await folding.close()
            throw error
        }
        await consumer.close()
        await deadLetters.close()
        await folding.close()
    }

    /// Folds the usage log every `foldInterval` until the task is cancelled.
    private func foldContinuously(_ store: SinkStore) async {
        while !Task.isCancelled {
            do { try await store.foldUsageLog() } catch { logger.warning("could not fold the usage log: \(error)") }
            try? await Task.sleep(for: configuration.foldInterval)
        }
    }

    private func process(_ consumer: KafkaConsumer, ownership: SinkOwnership, deadLetters: KafkaProducer) async throws {
        var totals = ProcessorProgress()
        var lastForget = ContinuousClock.now - .seconds(3600)
        while !Task.isCancelled {
            let records = try await consumer.poll(maxRecords: configuration.maximumBatch, timeout: .milliseconds(200))
            if !records.isEmpty {
                let batch = prepare(records, ownership: ownership)
                try await sendDeadLetters(batch.deadLetters, with: deadLetters)
                if await commitWithRetry(batch.sink) {
                    totals.add(batch)
                    progress(totals)
                } else {
                    // Fenced: another member owns a partition now. Read again from what the
                    // Sink holds for what this member still owns.
                    try await rewind(consumer, ownership: ownership, partitions: Array(batch.sink.positions.keys))
                }
            }
            if lastForget.duration(to: .now) > .seconds(600) {
                lastForget = .now
                let cutoff = Date().addingTimeInterval(-Self.seconds(configuration.dedupeHorizon))
                do { try await sink.forgetEvents(before: cutoff) } catch { logger.warning("could not prune event identities: \(error)") }
            }
        }
    }

    /// One polled batch, ready to commit.
    struct PreparedBatch {
        var sink: SinkBatch
        var deadLetters: [ProducerRecord]
        var records = 0
    }

    func prepare(_ records: [ConsumerRecord], ownership: SinkOwnership) -> PreparedBatch {
        let calculator = calculator.withLock { $0 }
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
            batch.sink.events.append(CountedEvent(tenant: event.tenant, source: event.source, id: event.id, time: event.time.date, usage: rows))
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
    private func commitWithRetry(_ batch: SinkBatch) async -> Bool {
        var delay: Duration = .milliseconds(100)
        while true {
            do {
                try await sink.commit(batch)
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

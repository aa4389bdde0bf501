import Events
import Kafka
import Logging

/// Settings of an `EventProducer`.
public struct EventProducerConfiguration: Sendable {
    /// The Kafka cluster, e.g. `broker1:9092,broker2:9092`.
    public var bootstrapServers: String
    /// The topic events go to.
    public var topic = "events"
    /// What events must satisfy before they are sent.
    public var limits = EventLimits()
    /// How long `send` waits for room in a full local queue before failing with `queueFull`.
    public var enqueueTimeout: Duration = .seconds(5)
    /// How long Kafka may take to acknowledge an event before it fails with `deliveryFailed`
    /// (`message.timeout.ms`): the bound on waiting for an unreachable cluster.
    public var deliveryTimeout: Duration = .seconds(30)
    /// Further librdkafka properties; they win over the producer's defaults.
    public var kafkaProperties: [String: String] = [:]

    public init(bootstrapServers: String) {
        self.bootstrapServers = bootstrapServers
    }
}

/// Where Kafka stored an event: it is durable (`acks=all`) from here on.
public struct EventAcknowledgement: Sendable, Hashable {
    public let partition: Int32
    public let offset: Int64

    public init(partition: Int32, offset: Int64) {
        self.partition = partition
        self.offset = offset
    }
}

/// Why an event was not acknowledged.
public enum EventSendError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The event breaks the event rules; it was not sent.
    case invalid([EventProblem])
    /// The local queue stayed full for `enqueueTimeout`: back off and retry.
    case queueFull
    /// Kafka did not acknowledge the event, e.g. the cluster was unreachable for
    /// `deliveryTimeout`. Retrying is safe: duplicates are counted once downstream.
    case deliveryFailed(KafkaError)

    public var description: String {
        switch self {
        case .invalid(let problems): "invalid event: " + problems.map(\.description).joined(separator: "; ")
        case .queueFull: "the producer queue is full"
        case .deliveryFailed(let error): "delivery failed: \(error)"
        }
    }
}

/// The Swift SDK's way into Tally: validates usage events and produces them to the `events`
/// topic keyed by tenant (so one tenant's events keep their order), with headers naming the
/// tenant and event type and the event time as the record timestamp.
///
/// `send` returns once Kafka holds the event with `acks=all`; the array form is the high-
/// throughput path. Call `close()` on shutdown: it flushes what is still queued.
public final class EventProducer: Sendable {
    private let producer: KafkaProducer
    private let configuration: EventProducerConfiguration

    public init(configuration: EventProducerConfiguration, logger: Logger = Logger(label: "tally.sdk")) throws(KafkaError) {
        let timeout = configuration.deliveryTimeout.components
        let defaults = [
            "message.timeout.ms": String(max(1, timeout.seconds * 1000 + timeout.attoseconds / 1_000_000_000_000_000)),
            // Kafka's Java partitioner, so every client puts a tenant on the same partition.
            "partitioner": "murmur2_random",
        ]
        let properties = defaults.merging(configuration.kafkaProperties) { _, explicit in explicit }
        producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(
                bootstrapServers: configuration.bootstrapServers, properties: properties, enqueueTimeout: configuration.enqueueTimeout,
                topics: [configuration.topic]),
            logger: logger)
        self.configuration = configuration
    }

    /// Sends one event and returns where Kafka stored it.
    public func send(_ event: UsageEvent) async throws(EventSendError) -> EventAcknowledgement {
        try await send([event])[0].get()
    }

    /// Sends events in order; one result per event, in the same order, once each is
    /// acknowledged or has failed. Invalid events fail alone; the others are sent.
    public func send(_ events: [UsageEvent]) async -> [Result<EventAcknowledgement, EventSendError>] {
        let now = EventTime.now()
        var results = [Result<EventAcknowledgement, EventSendError>?](repeating: nil, count: events.count)
        var records: [ProducerRecord] = []
        var positions: [Int] = []
        records.reserveCapacity(events.count)
        positions.reserveCapacity(events.count)
        for (position, event) in events.enumerated() {
            let problems = event.problems(limits: configuration.limits, now: now)
            if problems.isEmpty {
                records.append(record(for: event))
                positions.append(position)
            } else {
                results[position] = .failure(.invalid(problems))
            }
        }
        for (position, outcome) in zip(positions, await producer.send(records)) {
            results[position] = Self.acknowledgement(outcome)
        }
        return results.map { $0! }
    }

    /// Sends events that are already validated, e.g. by the gateway's decoder.
    public func sendValidated(_ events: [UsageEvent]) async -> [Result<EventAcknowledgement, EventSendError>] {
        await producer.send(events.map(record(for:))).map(Self.acknowledgement)
    }

    /// Waits until everything sent so far is acknowledged or failed.
    public func flush(timeout: Duration) async throws(KafkaError) {
        try await producer.flush(timeout: timeout)
    }

    /// Flushes for up to `flushTimeout`, then releases the producer.
    public func close(flushTimeout: Duration = .seconds(30)) async {
        await producer.close(flushTimeout: flushTimeout)
    }

    private static func acknowledgement(_ outcome: Result<DeliveryReport, KafkaError>) -> Result<EventAcknowledgement, EventSendError> {
        outcome.map { EventAcknowledgement(partition: $0.partition, offset: $0.offset) }.mapError { error in
            error.kind == .queueFull ? .queueFull : .deliveryFailed(error)
        }
    }

    private static let contentTypeHeader = KafkaHeader(name: EventHeaders.contentType, value: "application/cloudevents+json")

    private func record(for event: UsageEvent) -> ProducerRecord {
        ProducerRecord(
            topic: configuration.topic,
            key: Array(event.tenant.rawValue.utf8),
            value: event.jsonBytes(),
            headers: [
                KafkaHeader(name: EventHeaders.tenant, value: event.tenant.rawValue),
                KafkaHeader(name: EventHeaders.type, value: event.type),
                Self.contentTypeHeader,
            ],
            timestampMilliseconds: event.time.millisecondsSinceEpoch)
    }
}

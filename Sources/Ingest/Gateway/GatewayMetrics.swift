import Prometheus

/// The gateway's Prometheus metrics, served at `/metrics`.
public struct GatewayMetrics: Sendable {
    /// Why a request was refused; the `reason` label of `tally_ingest_rejections_total`.
    public enum Rejection: String, Sendable {
        case unauthenticated, wrongTenant = "wrong_tenant", unsupportedMediaType = "unsupported_media_type"
        case bodyTooLarge = "body_too_large", malformed, invalidEvents = "invalid_events", tooManyEvents = "too_many_events"
        case rateLimited = "rate_limited", queueFull = "queue_full", kafkaUnavailable = "kafka_unavailable"
    }

    public let registry: PrometheusCollectorRegistry
    private let produceDuration: DurationHistogram
    private let requestDuration: DurationHistogram

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let buckets: [Duration] = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
        ]
        produceDuration = registry.makeDurationHistogram(
            descriptor: Self.descriptor(
                "produce_duration", unit: "seconds", "Time from handing a request's events to the producer until Kafka acknowledged all of them."),
            buckets: buckets)
        requestDuration = registry.makeDurationHistogram(
            descriptor: Self.descriptor("request_duration", unit: "seconds", "Time from the start of handling a POST /v1/events until its answer is ready."),
            buckets: buckets)
    }

    func request(status: Int, after duration: Duration) {
        requestDuration.record(duration)
        registry.makeCounter(descriptor: Self.descriptor("requests", unit: "total", "HTTP requests to /v1/events by status."), labels: [("status", String(status))])
            .increment()
    }

    func accepted(_ count: Int, tenant: String) {
        registry.makeCounter(descriptor: Self.descriptor("events", unit: "total", "Events acknowledged by Kafka, by tenant."), labels: [("tenant", tenant)])
            .increment(by: Int64(count))
    }

    func rejected(_ reason: Rejection, tenant: String, events: Int) {
        let labels = [("tenant", tenant), ("reason", reason.rawValue)]
        registry.makeCounter(
            descriptor: Self.descriptor("rejections", unit: "total", "Refused requests by tenant (empty when unauthenticated) and reason."), labels: labels
        ).increment()
        if events > 0 {
            registry.makeCounter(descriptor: Self.descriptor("rejected_events", unit: "total", "Events in refused requests by tenant and reason."), labels: labels)
                .increment(by: Int64(events))
        }
    }

    func produced(after duration: Duration) {
        produceDuration.record(duration)
    }

    /// The Prometheus text exposition of every metric.
    public func exposition() -> [UInt8] {
        registry.emitToBuffer()
    }

    private static func descriptor(_ name: String, unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "tally", subsystem: "ingest", metricName: name, unitName: unit, helpText: help)
    }
}

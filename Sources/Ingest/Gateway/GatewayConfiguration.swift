import Events

/// Settings of the HTTP ingest gateway.
public struct GatewayConfiguration: Sendable {
    /// The address to listen on.
    public var host = "127.0.0.1"
    /// The port to listen on; 0 picks a free one.
    public var port = 8080
    /// The largest request body accepted, in bytes.
    public var maximumBodyBytes = 1 << 20
    /// The most events one batch request may carry.
    public var maximumBatchEvents = 1000
    /// What each event must satisfy.
    public var limits = EventLimits()

    public init() {}
}

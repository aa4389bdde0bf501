/// The Kafka record headers of an event record in topic `events`.
public enum EventHeaders {
    /// The tenant id; also the record key.
    public static let tenant = "ce_tenant"
    /// The CloudEvents `type`.
    public static let type = "ce_type"
    /// `application/cloudevents+json`: the value is a structured-mode CloudEvent.
    public static let contentType = "content-type"
}

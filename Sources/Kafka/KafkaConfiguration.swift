import CRdKafka

/// librdkafka configuration properties (`bootstrap.servers`, `acks`, …), applied as given,
/// except that every client turns Nagle's algorithm off (`socket.nagle.disable=true`, the
/// default of later librdkafka releases) unless the properties say otherwise.
///
/// Everything Tally needs to run against a real cluster is an ordinary property here; the
/// embedded mock cluster only supplies a different `bootstrap.servers`.
public struct KafkaConfiguration: Sendable, Equatable {
    public var properties: [String: String]

    public init(bootstrapServers: String, properties: [String: String] = [:]) {
        self.properties = properties
        self.properties["bootstrap.servers"] = bootstrapServers
    }

    public subscript(key: String) -> String? {
        get { properties[key] }
        set { properties[key] = newValue }
    }

    /// Builds an `rd_kafka_conf_t`; the caller owns it until `rd_kafka_new` succeeds.
    func makeNativeConfiguration() throws(KafkaError) -> OpaquePointer {
        let conf = rd_kafka_conf_new()!
        var errorText = [CChar](repeating: 0, count: 512)
        for (key, value) in properties.sorted(by: { $0.key < $1.key }) {
            let result = rd_kafka_conf_set(conf, key, value, &errorText, errorText.count)
            if result != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                let reason = text(ofBuffer: errorText)
                throw KafkaError(kind: .configuration, message: "invalid Kafka property \(key)=\(value): \(reason)")
            }
        }
        return conf
    }
}

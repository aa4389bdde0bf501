import Kafka
import Synchronization

/// Answers `/readyz`: whether the Kafka cluster answers a metadata request and has the events
/// topic. Results are cached for a second so probes cannot flood the cluster.
public final class BrokerProbe: Sendable {
    private let admin: KafkaAdmin
    private let topic: String
    private let last = Mutex<(at: ContinuousClock.Instant, ready: Bool, reason: String)?>(nil)

    public init(bootstrapServers: String, topic: String) throws(KafkaError) {
        admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: bootstrapServers))
        self.topic = topic
    }

    /// Whether the cluster is reachable and has the topic; with a reason when not.
    public func check() async -> (ready: Bool, reason: String) {
        if let cached = last.withLock({ $0 }), cached.at.duration(to: .now) < .seconds(1) { return (cached.ready, cached.reason) }
        let outcome: (ready: Bool, reason: String)
        do {
            let topics = try await admin.topics(timeout: .seconds(2))
            outcome = topics.contains { $0.name == topic } ? (true, "ok") : (false, "topic \(topic) does not exist")
        } catch {
            outcome = (false, "Kafka unreachable: \(error)")
        }
        last.withLock { $0 = (.now, outcome.ready, outcome.reason) }
        return outcome
    }

    public func close() async {
        await admin.close()
    }
}

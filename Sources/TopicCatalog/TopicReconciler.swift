import Kafka

/// How one declared topic compares with the cluster.
public enum TopicStatus: Sendable, Equatable {
    /// Exists as declared.
    case matches
    /// Did not exist; `created` tells whether `apply` created it.
    case missing(created: Bool)
    /// Exists but differs; each entry says what and how.
    case drift([String])
    /// Could not be created or checked.
    case failed(String)
}

/// One line of a reconciliation report.
public struct TopicReport: Sendable, Equatable {
    public var topic: DeclaredTopic
    public var status: TopicStatus

    public var summary: String {
        switch status {
        case .matches: "\(topic.name): ok"
        case .missing(created: true): "\(topic.name): created (\(topic.partitions) partitions, replication \(topic.replicationFactor))"
        case .missing(created: false): "\(topic.name): missing"
        case .drift(let differences): "\(topic.name): drift: \(differences.joined(separator: "; "))"
        case .failed(let reason): "\(topic.name): failed: \(reason)"
        }
    }

    /// Whether the topic now exists as declared.
    public var isSettled: Bool {
        switch status {
        case .matches, .missing(created: true): true
        default: false
        }
    }
}

/// Brings a cluster in line with a catalogue: creates missing topics, reports drift.
///
/// Drift is never "fixed" automatically: changing partition counts remaps keys (tenants) to
/// partitions, which an operator must decide on.
public struct TopicReconciler: Sendable {
    public let admin: KafkaAdmin

    public init(admin: KafkaAdmin) { self.admin = admin }

    /// Compares every declared topic with the cluster and, unless `dryRun`, creates the missing ones.
    public func apply(_ catalog: TopicCatalog, dryRun: Bool, timeout: Duration = .seconds(30)) async throws(KafkaError) -> [TopicReport] {
        let existing = Dictionary(uniqueKeysWithValues: try await admin.topics(timeout: timeout).map { ($0.name, $0) })
        let missing = catalog.topics.filter { existing[$0.name] == nil }
        var creationFailures: [String: KafkaError] = [:]
        if !dryRun && !missing.isEmpty {
            let specifications = missing.map {
                TopicSpecification(name: $0.name, partitions: $0.partitions, replicationFactor: $0.replicationFactor, configs: $0.configs)
            }
            do {
                creationFailures = try await admin.createTopics(specifications, timeout: timeout)
            } catch {
                creationFailures = Dictionary(uniqueKeysWithValues: missing.map { ($0.name, error) })
            }
        }
        var reports: [TopicReport] = []
        for topic in catalog.topics {
            guard let actual = existing[topic.name] else {
                let status: TopicStatus = creationFailures[topic.name].map { .failed($0.message) } ?? .missing(created: !dryRun)
                reports.append(TopicReport(topic: topic, status: status))
                continue
            }
            reports.append(TopicReport(topic: topic, status: await compare(topic, with: actual, timeout: timeout)))
        }
        return reports
    }

    private func compare(_ topic: DeclaredTopic, with actual: TopicDescription, timeout: Duration) async -> TopicStatus {
        var differences: [String] = []
        if actual.partitions.count != Int(topic.partitions) {
            differences.append("partitions declared \(topic.partitions), actual \(actual.partitions.count)")
        }
        if actual.replicationFactor != Int(topic.replicationFactor) {
            differences.append("replication_factor declared \(topic.replicationFactor), actual \(actual.replicationFactor)")
        }
        if !topic.configs.isEmpty {
            do {
                let configs = try await admin.topicConfigs(topic.name, timeout: timeout)
                for (name, value) in topic.configs.sorted(by: { $0.key < $1.key }) where configs[name] != value {
                    differences.append("\(name) declared \(value), actual \(configs[name] ?? "unset")")
                }
            } catch {
                differences.append("configs could not be read (\(error.message))")
            }
        }
        return differences.isEmpty ? .matches : .drift(differences)
    }
}

extension MockCluster {
    /// Creates the catalogue's topics in the mock cluster, capping replication at its broker
    /// count; returns the specifications used.
    @discardableResult
    public func createTopics(from catalog: TopicCatalog) throws(KafkaError) -> [TopicSpecification] {
        var created: [TopicSpecification] = []
        for topic in catalog.topics {
            let replication = min(Int32(topic.replicationFactor), Int32(brokerIDs.count))
            try createTopic(topic.name, partitions: topic.partitions, replicationFactor: replication)
            created.append(TopicSpecification(name: topic.name, partitions: topic.partitions, replicationFactor: Int16(replication)))
        }
        return created
    }
}

import Declarations
import Yams

/// A topic declared in `topics.yaml`.
public struct DeclaredTopic: Sendable, Equatable {
    public var name: String
    public var partitions: Int32
    public var replicationFactor: Int16
    /// Topic configs, e.g. `retention.ms`, `cleanup.policy`, as strings the broker accepts.
    public var configs: [String: String]
    /// Where the topic is declared, for messages.
    public var line: Int
}

/// The topics Tally needs, as declared in `topics.yaml`:
///
/// ```yaml
/// topics:
///   - name: events
///     partitions: 12
///     replication_factor: 3
///     configs:
///       retention.ms: "604800000"
/// ```
public struct TopicCatalog: Sendable, Equatable {
    public var topics: [DeclaredTopic]

    public init(topics: [DeclaredTopic]) { self.topics = topics }

    /// Reads and validates a topics file.
    public static func load(path: String) throws(DeclarationError) -> TopicCatalog {
        try Parser(document: try YAMLDocument.load(path: path)).catalog()
    }

    /// Parses and validates topics YAML; `file` names the source in errors.
    public static func parse(_ text: String, file: String) throws(DeclarationError) -> TopicCatalog {
        try Parser(document: try YAMLDocument.parse(text, file: file)).catalog()
    }
}

/// Walks the YAML tree; every rejection names the node's line and the field path.
private struct Parser {
    let document: YAMLDocument
    /// Kafka's rule: 1-249 ASCII letters, digits, '.', '_' or '-', and not "." or "..".
    static func isValidTopicName(_ name: String) -> Bool {
        (1...249).contains(name.utf8.count) && name != "." && name != ".."
            && name.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0)) }
    }

    func catalog() throws(DeclarationError) -> TopicCatalog {
        let root = document.root
        let mapping = try document.mapping(root, field: "", allowedKeys: ["topics"])
        guard let list = mapping["topics"] else { throw document.error(at: root, field: "topics", "missing") }
        var topics: [DeclaredTopic] = []
        var lines: [String: Int] = [:]
        for (index, node) in try document.sequence(list, field: "topics", of: "topics").enumerated() {
            let topic = try self.topic(node, field: "topics[\(index)]")
            if let first = lines[topic.name] {
                throw document.error(at: node, field: "topics[\(index)].name", "topic \(topic.name) is already declared on line \(first)")
            }
            lines[topic.name] = topic.line
            topics.append(topic)
        }
        return TopicCatalog(topics: topics)
    }

    private func topic(_ node: Node, field: String) throws(DeclarationError) -> DeclaredTopic {
        let mapping = try document.mapping(node, field: field, allowedKeys: ["name", "partitions", "replication_factor", "configs"])
        let name = try document.string(mapping["name"], in: node, field: "\(field).name")
        guard Self.isValidTopicName(name) else {
            throw document.error(at: mapping["name"], field: "\(field).name", "must be 1-249 characters of letters, digits, '.', '_' or '-'")
        }
        let partitions = try document.integer(mapping["partitions"], in: node, field: "\(field).partitions", range: 1...100_000)
        let replication = try document.integer(mapping["replication_factor"], in: node, field: "\(field).replication_factor", range: 1...Int(Int16.max))
        var configs: [String: String] = [:]
        if let configNode = mapping["configs"] {
            guard let configMapping = configNode.mapping else {
                throw document.error(at: configNode, field: "\(field).configs", "expected a mapping of config names to values")
            }
            for (key, value) in configMapping {
                guard let name = key.string, !name.isEmpty else { throw document.error(at: key, field: "\(field).configs", "config names must be strings") }
                configs[name] = try document.string(value, in: configNode, field: "\(field).configs.\(name)")
            }
        }
        return DeclaredTopic(
            name: name, partitions: Int32(partitions), replicationFactor: Int16(replication), configs: configs,
            line: node.mark?.line ?? 1)
    }
}

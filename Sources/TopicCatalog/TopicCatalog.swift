import Foundation
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

/// A problem in a topics file, located by file, line and field.
public struct TopicCatalogError: Error, Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    /// The field path, e.g. `topics[1].partitions`; empty for syntax errors.
    public let field: String
    public let reason: String

    public var description: String {
        "\(file):\(line):\(column): \(field.isEmpty ? "" : "\(field): ")\(reason)"
    }
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
    public static func load(path: String) throws(TopicCatalogError) -> TopicCatalog {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw TopicCatalogError(file: path, line: 0, column: 0, field: "", reason: "cannot read file: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    /// Parses and validates topics YAML; `file` names the source in errors.
    public static func parse(_ text: String, file: String) throws(TopicCatalogError) -> TopicCatalog {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw syntaxError(error, file: file)
        } catch {
            throw TopicCatalogError(file: file, line: 1, column: 1, field: "", reason: "\(error)")
        }
        let parser = Parser(file: file)
        guard let root else { throw parser.error(at: nil, field: "", "the file is empty: declare `topics:`") }
        return TopicCatalog(topics: try parser.topics(in: root))
    }

    private static func syntaxError(_ error: YamlError, file: String) -> TopicCatalogError {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            TopicCatalogError(file: file, line: mark.line, column: mark.column, field: "", reason: "invalid YAML: \(problem)")
        default:
            TopicCatalogError(file: file, line: 1, column: 1, field: "", reason: "invalid YAML: \(error)")
        }
    }
}

/// Walks the YAML tree; every rejection names the node's line and the field path.
private struct Parser {
    let file: String
    /// Kafka's rule: 1-249 ASCII letters, digits, '.', '_' or '-', and not "." or "..".
    static func isValidTopicName(_ name: String) -> Bool {
        (1...249).contains(name.utf8.count) && name != "." && name != ".."
            && name.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0)) }
    }
    static let topicKeys: Set = ["name", "partitions", "replication_factor", "configs"]

    func error(at node: Node?, field: String, _ reason: String) -> TopicCatalogError {
        TopicCatalogError(file: file, line: node?.mark?.line ?? 1, column: node?.mark?.column ?? 1, field: field, reason: reason)
    }

    func topics(in root: Node) throws(TopicCatalogError) -> [DeclaredTopic] {
        guard let mapping = root.mapping else { throw error(at: root, field: "", "expected a mapping with a `topics` list") }
        for (key, _) in mapping where key.string != "topics" {
            throw error(at: key, field: key.string ?? "", "unknown key; only `topics` is allowed")
        }
        guard let list = mapping["topics"] else { throw error(at: root, field: "topics", "missing") }
        guard let sequence = list.sequence else { throw error(at: list, field: "topics", "expected a list of topics") }
        var topics: [DeclaredTopic] = []
        var lines: [String: Int] = [:]
        for (index, node) in sequence.enumerated() {
            let topic = try self.topic(node, field: "topics[\(index)]")
            if let first = lines[topic.name] {
                throw error(at: node, field: "topics[\(index)].name", "topic \(topic.name) is already declared on line \(first)")
            }
            lines[topic.name] = topic.line
            topics.append(topic)
        }
        return topics
    }

    private func topic(_ node: Node, field: String) throws(TopicCatalogError) -> DeclaredTopic {
        guard let mapping = node.mapping else { throw error(at: node, field: field, "expected a mapping with name, partitions, replication_factor") }
        for (key, _) in mapping where !Self.topicKeys.contains(key.string ?? "") {
            throw error(at: key, field: "\(field).\(key.string ?? "?")", "unknown key; expected one of \(Self.topicKeys.sorted().joined(separator: ", "))")
        }
        guard let nameNode = mapping["name"] else { throw error(at: node, field: "\(field).name", "missing") }
        guard let name = nameNode.scalar?.string, Self.isValidTopicName(name) else {
            throw error(at: nameNode, field: "\(field).name", "must be 1-249 characters of letters, digits, '.', '_' or '-'")
        }
        let partitions = try positiveInteger(mapping["partitions"], in: node, field: "\(field).partitions", maximum: 100_000)
        let replication = try positiveInteger(mapping["replication_factor"], in: node, field: "\(field).replication_factor", maximum: Int(Int16.max))
        var configs: [String: String] = [:]
        if let configNode = mapping["configs"] {
            guard let configMapping = configNode.mapping else { throw error(at: configNode, field: "\(field).configs", "expected a mapping of config names to values") }
            for (key, value) in configMapping {
                guard let name = key.string, !name.isEmpty else { throw error(at: key, field: "\(field).configs", "config names must be strings") }
                guard let text = value.scalar?.string else { throw error(at: value, field: "\(field).configs.\(name)", "expected a scalar value") }
                configs[name] = text
            }
        }
        return DeclaredTopic(
            name: name, partitions: Int32(partitions), replicationFactor: Int16(replication), configs: configs,
            line: node.mark?.line ?? 1)
    }

    private func positiveInteger(_ node: Node?, in parent: Node, field: String, maximum: Int) throws(TopicCatalogError) -> Int {
        guard let node else { throw error(at: parent, field: field, "missing") }
        guard let text = node.scalar?.string, let value = Int(text), (1...maximum).contains(value) else {
            throw error(at: node, field: field, "must be an integer from 1 to \(maximum), got \(node.scalar?.string.debugDescription ?? "a collection")")
        }
        return value
    }
}

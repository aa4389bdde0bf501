import Foundation
import Yams

/// A parsed YAML file whose every rejection names the file, the node's line and column, and
/// the field path.
public struct YAMLDocument {
    public let file: String
    public let root: Node

    /// Reads and parses a YAML file.
    public static func load(path: String) throws(DeclarationError) -> YAMLDocument {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw DeclarationError(file: path, line: 0, column: 0, field: "", reason: "cannot read file: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    /// Parses YAML text; `file` names the source in errors. An empty document is an error.
    /// Scalars are read as text and parsed by the reader (`integer`, `number`), so every plain
    /// scalar is tagged a string: Yams' default resolver matches each against regular
    /// expressions, again at every key lookup, which made a 4 000-meter file cost 0.3 s.
    public static func parse(_ text: String, file: String) throws(DeclarationError) -> YAMLDocument {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text, .basic)
        } catch let error as YamlError {
            throw syntaxError(error, file: file)
        } catch {
            throw DeclarationError(file: file, line: 1, column: 1, field: "", reason: "\(error)")
        }
        guard let root else { throw DeclarationError(file: file, line: 1, column: 1, field: "", reason: "the file is empty") }
        return YAMLDocument(file: file, root: root)
    }

    /// An error located at `node` (or the file's start).
    public func error(at node: Node?, field: String, _ reason: String) -> DeclarationError {
        DeclarationError(file: file, line: node?.mark?.line ?? 1, column: node?.mark?.column ?? 1, field: field, reason: reason)
    }

    /// The node as a mapping whose keys are all in `allowedKeys`.
    public func mapping(_ node: Node, field: String, allowedKeys: Set<String>) throws(DeclarationError) -> Node.Mapping {
        guard let mapping = node.mapping else {
            throw error(at: node, field: field, "expected a mapping with keys \(allowedKeys.sorted().joined(separator: ", "))")
        }
        for (key, _) in mapping where !allowedKeys.contains(key.string ?? "") {
            let path = field.isEmpty ? key.string ?? "?" : "\(field).\(key.string ?? "?")"
            throw error(at: key, field: path, "unknown key; expected one of \(allowedKeys.sorted().joined(separator: ", "))")
        }
        return mapping
    }

    /// The node as a list.
    public func sequence(_ node: Node, field: String, of what: String) throws(DeclarationError) -> Node.Sequence {
        guard let sequence = node.sequence else { throw error(at: node, field: field, "expected a list of \(what)") }
        return sequence
    }

    /// A required or optional scalar string.
    public func string(_ node: Node?, in parent: Node, field: String) throws(DeclarationError) -> String {
        guard let node else { throw error(at: parent, field: field, "missing") }
        guard let text = node.scalar?.string else { throw error(at: node, field: field, "expected a single value, not a collection") }
        return text
    }

    /// A required integer within `range`.
    public func integer(_ node: Node?, in parent: Node, field: String, range: ClosedRange<Int>) throws(DeclarationError) -> Int {
        try bounded(node, in: parent, field: field, range: range, kind: "an integer")
    }

    /// A required number within `range`.
    public func number(_ node: Node?, in parent: Node, field: String, range: ClosedRange<Double>) throws(DeclarationError) -> Double {
        try bounded(node, in: parent, field: field, range: range, kind: "a number")
    }

    private func bounded<Value: LosslessStringConvertible & Comparable>(
        _ node: Node?, in parent: Node, field: String, range: ClosedRange<Value>, kind: String
    ) throws(DeclarationError) -> Value {
        guard let node else { throw error(at: parent, field: field, "missing") }
        guard let text = node.scalar?.string, let value = Value(text), range.contains(value) else {
            throw error(
                at: node, field: field,
                "must be \(kind) from \(range.lowerBound) to \(range.upperBound), got \(node.scalar?.string.debugDescription ?? "a collection")")
        }
        return value
    }

    private static func syntaxError(_ error: YamlError, file: String) -> DeclarationError {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            DeclarationError(file: file, line: mark.line, column: mark.column, field: "", reason: "invalid YAML: \(problem)")
        default:
            DeclarationError(file: file, line: 1, column: 1, field: "", reason: "invalid YAML: \(error)")
        }
    }
}

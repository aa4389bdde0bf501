/// A problem in a declarative file (topics, tenants, meters), located by file, line and field.
public struct DeclarationError: Error, Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    /// The field path, e.g. `topics[1].partitions`; empty for syntax errors.
    public let field: String
    public let reason: String

    public init(file: String, line: Int, column: Int, field: String, reason: String) {
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.reason = reason
    }

    public var description: String {
        "\(file):\(line):\(column): \(field.isEmpty ? "" : "\(field): ")\(reason)"
    }
}

/// Every failure of the Postgres layer.
public struct PostgresError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// No connection could be made, or it broke; the outcome of an in-flight statement is unknown.
        case connection
        /// The server rejected the statement; `sqlState` says why.
        case server
        /// A value could not be encoded or a result could not be decoded.
        case invalidData
        /// The connection was already closed.
        case closed
    }

    public let kind: Kind
    /// The five-character SQLSTATE of server errors, e.g. `23505` for a unique violation.
    public let sqlState: String?
    public let message: String
    public let detail: String?

    public init(kind: Kind, sqlState: String? = nil, message: String, detail: String? = nil) {
        self.kind = kind
        self.sqlState = sqlState
        self.message = message
        self.detail = detail
    }

    public var isUniqueViolation: Bool { sqlState == "23505" }
    /// A serialization failure or deadlock: the transaction may simply be retried.
    public var isTransient: Bool { sqlState == "40001" || sqlState == "40P01" }

    public var description: String {
        var text = "postgres \(kind)"
        if let sqlState { text += " [\(sqlState)]" }
        text += ": \(message)"
        if let detail { text += " (\(detail))" }
        return text
    }
}

/// A validated tenant id: 1-48 characters, a lowercase letter first, then lowercase letters,
/// digits or `_`. Tenant ids become parts of schema and role names, so nothing else passes.
public struct TenantID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: String

    public init(_ rawValue: String) throws(InvalidTenantID) {
        var length = 0
        var valid = true
        for byte in rawValue.utf8 {
            let isLetter = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
            let isDigitOrUnderscore = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_")
            length += 1
            if length > 48 || !(isLetter || (length > 1 && isDigitOrUnderscore)) {
                valid = false
                break
            }
        }
        guard valid, length > 0 else {
            throw InvalidTenantID(rawValue: rawValue)
        }
        self.rawValue = rawValue
    }

    /// The tenant's schema, e.g. `tenant_acme`.
    public var schemaName: String { "tenant_\(rawValue)" }
    /// The tenant's read-only group role, e.g. `tally_reader_acme`.
    public var readerRole: String { "tally_reader_\(rawValue)" }

    public var description: String { rawValue }
    public static func < (lhs: TenantID, rhs: TenantID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A string that is not a valid tenant id; the message quotes (a prefix of) it and the rule.
public struct InvalidTenantID: Error, Sendable, Equatable, CustomStringConvertible {
    public let rawValue: String
    public var description: String { "tenant id \(rawValue.debugDescription.prefix(80)) must match ^[a-z][a-z0-9_]{0,47}$" }
}

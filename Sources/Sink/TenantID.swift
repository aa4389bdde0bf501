/// A validated tenant id: 1-48 characters, a lowercase letter first, then lowercase letters,
/// digits or `_`. Tenant ids become parts of schema and role names, so nothing else passes.
public struct TenantID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: String

    public init(_ rawValue: String) throws(SinkError) {
        let bytes = Array(rawValue.utf8)
        let valid =
            (1...48).contains(bytes.count)
            && (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(bytes[0])
            && bytes.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                    || byte == UInt8(ascii: "_")
            }
        guard valid else {
            throw SinkError.invalidTenant("tenant id \(rawValue.debugDescription.prefix(80)) must match ^[a-z][a-z0-9_]{0,47}$")
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

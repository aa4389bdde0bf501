import Foundation

/// A bound query parameter. Numbers, booleans, bytes, UUIDs and timestamps are sent in
/// binary; text, numeric and JSON as text. Values never become part of the SQL string.
public enum PostgresParameter: Sendable, Equatable {
    case null
    case bool(Bool)
    case int16(Int16)
    case int32(Int32)
    case int64(Int64)
    case double(Double)
    case text(String)
    /// An exact decimal given as its text form, e.g. `"12.50"`.
    case numeric(String)
    case jsonb(String)
    case bytea([UInt8])
    case uuid(UUID)
    case timestamptz(Date)

    /// The type OID, the wire bytes (nil for NULL) and whether they are binary.
    var encoded: (oid: UInt32, bytes: [UInt8]?, binary: Bool) {
        switch self {
        case .null: (0, nil, false)
        case .bool(let value): (16, [value ? 1 : 0], true)
        case .int16(let value): (21, bigEndianBytes(value), true)
        case .int32(let value): (23, bigEndianBytes(value), true)
        case .int64(let value): (20, bigEndianBytes(value), true)
        case .double(let value): (701, bigEndianBytes(value.bitPattern), true)
        case .text(let value): (25, Array(value.utf8), false)
        case .numeric(let value): (1700, Array(value.utf8), false)
        case .jsonb(let value): (3802, Array(value.utf8), false)
        case .bytea(let value): (17, value, true)
        case .uuid(let value): (2950, withUnsafeBytes(of: value.uuid) { Array($0) }, true)
        case .timestamptz(let value):
            // Microseconds since 2000-01-01 00:00:00 UTC.
            (1184, bigEndianBytes(Int64(((value.timeIntervalSince1970 - 946_684_800) * 1_000_000).rounded())), true)
        }
    }
}

private func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

/// One result row, with values in Postgres' text format.
public struct PostgresRow: Sendable, Equatable {
    public let columns: [String]
    public let values: [String?]

    /// The raw text of a column, nil for NULL.
    public subscript(column: String) -> String? {
        get throws(PostgresError) {
            guard let index = columns.firstIndex(of: column) else {
                throw PostgresError(kind: .invalidData, message: "no column \(column) in result (\(columns))")
            }
            return values[index]
        }
    }

    public func string(_ column: String) throws(PostgresError) -> String? { try self[column] }

    public func int64(_ column: String) throws(PostgresError) -> Int64? {
        try decode(column, as: "bigint") { Int64($0) }
    }

    public func double(_ column: String) throws(PostgresError) -> Double? {
        try decode(column, as: "double") { Double($0) }
    }

    public func bool(_ column: String) throws(PostgresError) -> Bool? {
        try decode(column, as: "boolean") { $0 == "t" ? true : $0 == "f" ? false : nil }
    }

    public func uuid(_ column: String) throws(PostgresError) -> UUID? {
        try decode(column, as: "uuid") { UUID(uuidString: $0) }
    }

    /// `bytea` in the server's default hex output (`\x0a0b…`).
    public func bytes(_ column: String) throws(PostgresError) -> [UInt8]? {
        try decode(column, as: "bytea") { text in
            guard text.hasPrefix("\\x"), text.count % 2 == 0 else { return nil }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(text.utf8.count / 2 - 1)
            var iterator = text.utf8.dropFirst(2).makeIterator()
            while let high = iterator.next(), let low = iterator.next() {
                guard let byte = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) else { return nil }
                bytes.append(byte)
            }
            return bytes
        }
    }

    /// `timestamptz` as the server prints it in ISO style on a UTC session.
    public func date(_ column: String) throws(PostgresError) -> Date? {
        try decode(column, as: "timestamptz", parseTimestamp)
    }

    private func decode<T>(_ column: String, as type: String, _ parse: (String) -> T?) throws(PostgresError) -> T? {
        guard let text = try self[column] else { return nil }
        guard let value = parse(text) else {
            throw PostgresError(kind: .invalidData, message: "column \(column): \"\(text)\" is not a valid \(type)")
        }
        return value
    }
}

/// Parses `2024-03-01 12:34:56.789012+00` (fraction and offset minutes optional).
func parseTimestamp(_ text: String) -> Date? {
    let parts = text.split(separator: " ")
    guard parts.count == 2 else { return nil }
    let dateParts = parts[0].split(separator: "-").compactMap { Int($0) }
    var time = Substring(parts[1])
    var offsetSeconds = 0
    if let signIndex = time.lastIndex(where: { $0 == "+" || $0 == "-" }) {
        let sign = time[signIndex] == "-" ? -1 : 1
        let offset = time[time.index(after: signIndex)...].split(separator: ":").compactMap { Int($0) }
        guard !offset.isEmpty else { return nil }
        offsetSeconds = sign * (offset[0] * 3600 + (offset.count > 1 ? offset[1] * 60 : 0))
        time = time[..<signIndex]
    }
    let timeParts = time.split(separator: ":")
    guard dateParts.count == 3, timeParts.count == 3, let hour = Int(timeParts[0]), let minute = Int(timeParts[1]),
        let seconds = Decimal(string: String(timeParts[2]))
    else { return nil }
    var components = DateComponents()
    components.timeZone = TimeZone(identifier: "UTC")
    (components.year, components.month, components.day) = (dateParts[0], dateParts[1], dateParts[2])
    (components.hour, components.minute) = (hour, minute)
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: "UTC")!
    guard let base = calendar.date(from: components) else { return nil }
    return base.addingTimeInterval(NSDecimalNumber(decimal: seconds).doubleValue - Double(offsetSeconds))
}

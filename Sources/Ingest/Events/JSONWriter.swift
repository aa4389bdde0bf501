/// Writes JSON into a byte buffer: compact, members in the order given, strings escaped per
/// RFC 8259. Numbers are finite by construction of `JSONValue`.
public struct JSONWriter {
    public private(set) var bytes: [UInt8] = []

    public init(reservingCapacity capacity: Int = 256) {
        bytes.reserveCapacity(capacity)
    }

    public mutating func write(_ value: JSONValue) {
        switch value {
        case .null: append("null")
        case .bool(let flag): append(flag ? "true" : "false")
        case .integer(let number): append(String(number))
        case .double(let number): append(number.description)
        case .string(let text): write(string: text)
        case .array(let elements):
            bytes.append(UInt8(ascii: "["))
            for (position, element) in elements.enumerated() {
                if position > 0 { bytes.append(UInt8(ascii: ",")) }
                write(element)
            }
            bytes.append(UInt8(ascii: "]"))
        case .object(let object):
            beginObject()
            for member in object.members { write(member: member.name, member.value) }
            endObject()
        }
    }

    public mutating func beginObject() { bytes.append(UInt8(ascii: "{")) }

    public mutating func endObject() { bytes.append(UInt8(ascii: "}")) }

    /// Writes `"name":value`, with a separating comma unless it is the object's first member.
    public mutating func write(member name: String, _ value: JSONValue) {
        if bytes.last != UInt8(ascii: "{") { bytes.append(UInt8(ascii: ",")) }
        write(string: name)
        bytes.append(UInt8(ascii: ":"))
        write(value)
    }

    public mutating func write(string text: String) {
        bytes.append(UInt8(ascii: "\""))
        var text = text
        text.withUTF8 { utf8 in
            // Copy runs of bytes that need no escape in one go.
            var runStart = 0
            for (index, byte) in utf8.enumerated() where Self.needsEscape(byte) {
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<index]))
                appendEscaped(byte)
                runStart = index + 1
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart...]))
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// Writes `"name":"<time in RFC 3339>"`.
    public mutating func write(member name: String, _ time: EventTime) {
        if bytes.last != UInt8(ascii: "{") { bytes.append(UInt8(ascii: ",")) }
        write(string: name)
        bytes.append(UInt8(ascii: ":"))
        bytes.append(UInt8(ascii: "\""))
        time.appendRFC3339(to: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }

    /// How many bytes `value` takes as compact JSON, without writing it.
    public static func encodedLength(of value: JSONValue) -> Int {
        switch value {
        case .null: 4
        case .bool(let flag): flag ? 4 : 5
        case .integer(let number): number.description.utf8.count
        case .double(let number): number.description.utf8.count
        case .string(let text): encodedLength(of: text)
        case .array(let elements): elements.reduce(max(2, elements.count + 1)) { $0 + encodedLength(of: $1) }
        case .object(let object):
            object.members.reduce(max(2, object.members.count + 1)) { $0 + encodedLength(of: $1.name) + 1 + encodedLength(of: $1.value) }
        }
    }

    private static func encodedLength(of text: String) -> Int {
        text.utf8.reduce(2) { length, byte in
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), 0x0A, 0x0D, 0x09: length + 2
            case 0..<0x20: length + 6
            default: length + 1
            }
        }
    }

    private static func needsEscape(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")
    }

    private mutating func appendEscaped(_ byte: UInt8) {
        switch byte {
        case UInt8(ascii: "\""): append("\\\"")
        case UInt8(ascii: "\\"): append("\\\\")
        case 0x0A: append("\\n")
        case 0x0D: append("\\r")
        case 0x09: append("\\t")
        default:
            append("\\u00")
            bytes.append(Self.hexDigits[Int(byte >> 4)])
            bytes.append(Self.hexDigits[Int(byte & 0xF)])
        }
    }

    private mutating func append(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)
}

import Foundation

/// Writes the rows of a text-format `COPY … FROM STDIN` field by field, straight into the
/// bytes sent to the server: no array or string per row, numbers formatted without
/// intermediate strings. Used through `PostgresConnection.copy(into:columns:rows:write:)`.
public struct CopyRowWriter: ~Copyable {
    /// The COPY text written so far and not sent yet: `count` bytes at `storage`.
    private var storage: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private(set) var count = 0
    /// Fields written into the current row.
    private(set) var fieldsInRow = 0

    init(capacity: Int) {
        storage = .allocate(capacity: capacity)
        self.capacity = capacity
    }

    deinit { storage.deallocate() }

    /// Appends a text field, escaped for COPY; `nil` is SQL NULL.
    public mutating func append(_ text: String?) {
        startField()
        guard var text else {
            put(UInt8(ascii: "\\"))
            put(UInt8(ascii: "N"))
            return
        }
        text.withUTF8 { utf8 in
            guard utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 < 0x20 }) else {
                put(UnsafeRawBufferPointer(utf8))
                return
            }
            for byte in utf8 {
                switch byte {
                case UInt8(ascii: "\\"): put(UInt8(ascii: "\\"), UInt8(ascii: "\\"))
                case UInt8(ascii: "\n"): put(UInt8(ascii: "\\"), UInt8(ascii: "n"))
                case UInt8(ascii: "\r"): put(UInt8(ascii: "\\"), UInt8(ascii: "r"))
                case UInt8(ascii: "\t"): put(UInt8(ascii: "\\"), UInt8(ascii: "t"))
                default: put(byte)
                }
            }
        }
    }

    /// Appends an integer field.
    public mutating func append(_ value: Int64) {
        startField()
        if value < 0 { put(UInt8(ascii: "-")) }
        putDigits(of: value.magnitude)
    }

    /// Appends a numeric field exactly, as `mantissa` or `mantissa e exponent` (Postgres reads
    /// both) rather than through `Decimal.description`, which costs over a microsecond.
    public mutating func append(_ value: Decimal) {
        startField()
        if value.isZero {
            put(UInt8(ascii: "0"))
            return
        }
        let significand = value.significand
        guard value.isFinite, significand < Self.exactMantissaLimit else {
            var text = value.description
            text.withUTF8 { put(UnsafeRawBufferPointer($0)) }
            return
        }
        var mantissa = NSDecimalNumber(decimal: significand).uint64Value
        var exponent = value.exponent
        while exponent < 0, mantissa % 10 == 0 {
            mantissa /= 10
            exponent += 1
        }
        if value.sign == .minus { put(UInt8(ascii: "-")) }
        putDigits(of: mantissa)
        guard exponent != 0 else { return }
        put(UInt8(ascii: "e"))
        if exponent < 0 { put(UInt8(ascii: "-")) }
        putDigits(of: UInt64(exponent.magnitude))
    }

    /// Mantissas below this convert to UInt64 exactly.
    private static let exactMantissaLimit = Decimal(UInt64(1) << 62)

    /// Ends the current row.
    mutating func endRow() {
        put(UInt8(ascii: "\n"))
        fieldsInRow = 0
    }

    /// Hands the bytes written so far to `send`, then forgets them.
    mutating func drain<E: Error>(_ send: (UnsafeRawBufferPointer) throws(E) -> Void) throws(E) {
        guard count > 0 else { return }
        try send(UnsafeRawBufferPointer(start: storage, count: count))
        count = 0
    }

    private mutating func startField() {
        if fieldsInRow > 0 { put(UInt8(ascii: "\t")) }
        fieldsInRow += 1
    }

    private mutating func putDigits(of value: UInt64) {
        reserve(20)
        var digits = 1
        var power: UInt64 = 10
        while digits < 20, value >= power {
            digits += 1
            power = power &* 10
        }
        var rest = value
        for index in stride(from: count + digits - 1, through: count, by: -1) {
            storage[index] = UInt8(ascii: "0") + UInt8(rest % 10)
            rest /= 10
        }
        count += digits
    }

    private mutating func put(_ byte: UInt8) {
        reserve(1)
        storage[count] = byte
        count += 1
    }

    private mutating func put(_ first: UInt8, _ second: UInt8) {
        put(first)
        put(second)
    }

    private mutating func put(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        reserve(bytes.count)
        UnsafeMutableRawPointer(storage + count).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        count += bytes.count
    }

    private mutating func reserve(_ extra: Int) {
        guard count + extra > capacity else { return }
        let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: max(capacity * 2, count + extra))
        grown.update(from: storage, count: count)
        storage.deallocate()
        storage = grown
        capacity = max(capacity * 2, count + extra)
    }
}

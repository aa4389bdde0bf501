import CivilTime
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

    /// Appends a `timestamptz` field, `microseconds` since 1970-01-01 UTC, as
    /// `YYYY-MM-DD HH:MM:SS.ffffff+00` (with ` BC` before year 1), by `CivilDate` rather than
    /// `Calendar`, which costs microseconds a value.
    public mutating func append(timestampMicroseconds microseconds: Int64) {
        startField()
        let (days, microsecondOfDay) = microseconds.floorDivided(by: 86_400_000_000)
        let (year, month, day) = CivilDate.civil(fromDays: days)
        // Year 0 is 1 BC, -1 is 2 BC.
        putDigits(of: UInt64(year > 0 ? year : 1 - year), width: 4)
        put(UInt8(ascii: "-"))
        putDigits(of: UInt64(month), width: 2)
        put(UInt8(ascii: "-"))
        putDigits(of: UInt64(day), width: 2)
        put(UInt8(ascii: " "))
        let secondOfDay = microsecondOfDay / 1_000_000
        putDigits(of: UInt64(secondOfDay / 3_600), width: 2)
        put(UInt8(ascii: ":"))
        putDigits(of: UInt64(secondOfDay / 60 % 60), width: 2)
        put(UInt8(ascii: ":"))
        putDigits(of: UInt64(secondOfDay % 60), width: 2)
        put(UInt8(ascii: "."))
        putDigits(of: UInt64(microsecondOfDay % 1_000_000), width: 6)
        put(UInt8(ascii: "+"), UInt8(ascii: "0"))
        put(UInt8(ascii: "0"))
        if year <= 0 {
            put(UInt8(ascii: " "), UInt8(ascii: "B"))
            put(UInt8(ascii: "C"))
        }
    }

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

    /// Writes `value` in decimal, zero-padded to at least `width` digits, two digits a division.
    private mutating func putDigits(of value: UInt64, width: Int = 1) {
        reserve(20)
        var significant = 1
        var power: UInt64 = 10
        while significant < 20, value >= power {
            significant += 1
            power = power &* 10
        }
        let digits = max(width, significant)
        var index = count + digits
        var rest = value
        while rest >= 100 {
            let pair = Int(rest % 100) * 2
            rest /= 100
            index -= 2
            storage[index] = Self.digitPairs.utf8Start[pair]
            storage[index + 1] = Self.digitPairs.utf8Start[pair + 1]
        }
        if rest >= 10 {
            index -= 2
            storage[index] = Self.digitPairs.utf8Start[Int(rest) * 2]
            storage[index + 1] = Self.digitPairs.utf8Start[Int(rest) * 2 + 1]
        } else {
            index -= 1
            storage[index] = UInt8(ascii: "0") + UInt8(rest)
        }
        (storage + count).update(repeating: UInt8(ascii: "0"), count: index - count)
        count += digits
    }

    /// "00" to "99" in a row.
    private static let digitPairs: StaticString = """
        00010203040506070809101112131415161718192021222324252627282930313233343536373839\
        40414243444546474849505152535455565758596061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899
        """

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

extension Int64 {
    /// The quotient rounded toward negative infinity and the remainder that goes with it
    /// (never negative for a positive divisor).
    fileprivate func floorDivided(by divisor: Int64) -> (quotient: Int64, remainder: Int64) {
        let (quotient, remainder) = quotientAndRemainder(dividingBy: divisor)
        return remainder < 0 ? (quotient - 1, remainder + divisor) : (quotient, remainder)
    }
}

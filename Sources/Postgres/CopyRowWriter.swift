import Foundation

/// Writes the rows of a binary-format `COPY … FROM STDIN` field by field, straight into the
/// bytes sent to the server: no array or string per row, and nothing for the server to parse
/// (numbers and times travel as their binary values). Each field must be written with the
/// `append` of its column's type (the server refuses a field of another width). Used through
/// `PostgresConnection.copy(into:columns:rows:write:)`.
public struct CopyRowWriter: ~Copyable {
    /// The COPY data written so far and not sent yet: `count` bytes at `storage`.
    private var storage: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private(set) var count = 0
    /// Fields written into the current row.
    private(set) var fieldsInRow = 0
    /// Where the current row's field count goes, written when the row ends.
    private var rowStart = 0

    /// Starts with the binary COPY header: its signature, no flags, no header extension.
    init(capacity: Int) {
        storage = .allocate(capacity: capacity)
        self.capacity = capacity
        Self.signature.withUnsafeBytes { put($0) }
        put(UInt32(0))
        put(UInt32(0))
    }

    deinit { storage.deallocate() }

    /// Appends a `text` field; `nil` is SQL NULL.
    public mutating func append(_ text: String?) {
        guard var text else { return appendNull() }
        text.withUTF8 { utf8 in
            startField(length: utf8.count)
            put(UnsafeRawBufferPointer(utf8))
        }
    }

    /// Appends a `bigint` field.
    public mutating func append(_ value: Int64) {
        startField(length: 8)
        put(UInt64(bitPattern: value))
    }

    /// Appends an `integer` field; `nil` is SQL NULL.
    public mutating func append(_ value: Int32?) {
        guard let value else { return appendNull() }
        startField(length: 4)
        put(UInt32(bitPattern: value))
    }

    /// Appends a `numeric` field exactly: the value's decimal digits regrouped in base 10 000,
    /// Postgres's own form, with as many digits after the point as the value has.
    public mutating func append(_ value: Decimal) {
        guard value.isFinite else { return putNumeric(groups: [], weight: 0, sign: Self.numericNaN, scale: 0) }
        let significand = value.significand
        guard significand < Self.exactMantissaLimit else { return appendDigits(ofText: value) }
        var mantissa = NSDecimalNumber(decimal: significand).uint64Value
        var exponent = value.exponent
        while exponent < 0, mantissa != 0, mantissa % 10 == 0 {
            mantissa /= 10
            exponent += 1
        }
        let scale = max(0, -exponent)
        guard mantissa != 0 else { return putNumeric(groups: [], weight: 0, sign: Self.numericPositive, scale: scale) }
        // mantissa × 10^exponent is (mantissa × 10^(exponent mod 4)) × 10 000^groupExponent; the first factor has at most 22 digits.
        let groupExponent = exponent.floorDivided(by: 4)
        putNumeric(
            magnitude: UInt128(mantissa) * UInt128(Self.powersOfTen[exponent - 4 * groupExponent]), groupExponent: groupExponent,
            sign: value.sign == .minus ? Self.numericNegative : Self.numericPositive, scale: scale)
    }

    /// Appends an integer to a `numeric` field, exactly.
    public mutating func append(numeric value: Int64) {
        guard value != 0 else { return putNumeric(groups: [], weight: 0, sign: Self.numericPositive, scale: 0) }
        putNumeric(magnitude: UInt128(value.magnitude), groupExponent: 0, sign: value < 0 ? Self.numericNegative : Self.numericPositive, scale: 0)
    }

    /// `magnitude` × 10 000^`groupExponent` (`magnitude` non-zero, at most 24 digits) as a `numeric`.
    private mutating func putNumeric(magnitude: UInt128, groupExponent: Int, sign: UInt16, scale: Int) {
        var rest = magnitude
        withUnsafeTemporaryAllocation(of: UInt16.self, capacity: 6) { groups in
            // Least significant first; zero groups at that end are left out.
            var count = 0
            while rest > 0 {
                groups[count] = UInt16(rest % 10_000)
                rest /= 10_000
                count += 1
            }
            let lowest = groups.prefix(count).firstIndex { $0 != 0 }!
            startField(length: 8 + 2 * (count - lowest))
            put(UInt16(count - lowest))
            put(UInt16(bitPattern: Int16(groupExponent + count - 1)))
            put(sign)
            put(UInt16(scale))
            for index in (lowest..<count).reversed() { put(groups[index]) }
        }
    }

    /// A `numeric` beyond 62 bits of mantissa, from the digits of its text form: "123.45" is
    /// 12345 × 10⁻².
    private mutating func appendDigits(ofText value: Decimal) {
        let text = value.magnitude.description
        let point = text.firstIndex(of: ".")
        let digits = text.utf8.compactMap { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") ? $0 - UInt8(ascii: "0") : nil }
        let exponent = -(point.map { text.distance(from: $0, to: text.endIndex) - 1 } ?? 0)
        putNumeric(digits: digits, exponent: exponent, negative: value.sign == .minus && !value.isZero)
    }

    /// Appends a `timestamptz` field, `microseconds` since 1970-01-01 UTC (Postgres counts
    /// them from 2000-01-01).
    public mutating func append(timestampMicroseconds microseconds: Int64) {
        append(microseconds - Self.microsecondsFrom1970To2000)
    }

    /// Ends the current row.
    mutating func endRow() {
        let fields = UInt16(fieldsInRow).bigEndian
        withUnsafeBytes(of: fields) { UnsafeMutableRawPointer(storage + rowStart).copyMemory(from: $0.baseAddress!, byteCount: 2) }
        fieldsInRow = 0
    }

    /// Writes the trailer that ends the data.
    mutating func finish() {
        put(UInt16(bitPattern: -1))
    }

    /// Hands the bytes written so far to `send`, then forgets them.
    mutating func drain<E: Error>(_ send: (UnsafeRawBufferPointer) throws(E) -> Void) throws(E) {
        guard count > 0 else { return }
        try send(UnsafeRawBufferPointer(start: storage, count: count))
        count = 0
    }

    /// "PGCOPY\n\377\r\n\0".
    private static let signature: [UInt8] = [0x50, 0x47, 0x43, 0x4F, 0x50, 0x59, 0x0A, 0xFF, 0x0D, 0x0A, 0x00]
    private static let microsecondsFrom1970To2000: Int64 = 946_684_800_000_000
    /// Mantissas below this convert to UInt64 exactly.
    private static let exactMantissaLimit = Decimal(UInt64(1) << 62)
    private static let numericPositive: UInt16 = 0x0000, numericNegative: UInt16 = 0x4000, numericNaN: UInt16 = 0xC000

    private mutating func appendNull() {
        startField(length: nil)
    }

    /// Starts a field of `length` bytes (nil: NULL), and the row with it when it is the first.
    private mutating func startField(length: Int?) {
        if fieldsInRow == 0 {
            rowStart = count
            put(UInt16(0))
        }
        fieldsInRow += 1
        put(UInt32(bitPattern: Int32(length ?? -1)))
    }

    /// `digits` (most significant first, each 0–9) × 10^`exponent` as a `numeric`.
    private mutating func putNumeric(digits: [UInt8], exponent: Int, negative: Bool) {
        let scale = max(0, -exponent)
        guard !digits.isEmpty else { return putNumeric(groups: [], weight: 0, sign: Self.numericPositive, scale: scale) }
        // Digit i stands for 10^power; groups of four such powers make one base-10 000 digit.
        let highest = exponent + digits.count - 1
        let highestGroup = highest.floorDivided(by: 4), lowestGroup = exponent.floorDivided(by: 4)
        var groups = [UInt16](repeating: 0, count: highestGroup - lowestGroup + 1)
        for (index, digit) in digits.enumerated() {
            let power = highest - index
            let group = power.floorDivided(by: 4)
            groups[highestGroup - group] += UInt16(digit) * Self.powersOfTen[power - 4 * group]
        }
        let leadingZeros = groups.prefix { $0 == 0 }.count
        let kept = groups.dropFirst(leadingZeros).reversed().drop { $0 == 0 }.reversed()
        putNumeric(groups: Array(kept), weight: highestGroup - leadingZeros, sign: negative ? Self.numericNegative : Self.numericPositive, scale: scale)
    }

    private static let powersOfTen: [UInt16] = [1, 10, 100, 1000]

    private mutating func putNumeric(groups: [UInt16], weight: Int, sign: UInt16, scale: Int) {
        startField(length: 8 + 2 * groups.count)
        put(UInt16(groups.count))
        put(UInt16(bitPattern: Int16(weight)))
        put(sign)
        put(UInt16(scale))
        for group in groups { put(group) }
    }

    private mutating func put(_ value: UInt16) {
        withUnsafeBytes(of: value.bigEndian) { put($0) }
    }

    private mutating func put(_ value: UInt32) {
        withUnsafeBytes(of: value.bigEndian) { put($0) }
    }

    private mutating func put(_ value: UInt64) {
        withUnsafeBytes(of: value.bigEndian) { put($0) }
    }

    private mutating func put(_ byte: UInt8) {
        reserve(1)
        storage[count] = byte
        count += 1
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

extension Int {
    /// The quotient rounded toward negative infinity.
    fileprivate func floorDivided(by divisor: Int) -> Int {
        let (quotient, remainder) = quotientAndRemainder(dividingBy: divisor)
        return remainder < 0 ? quotient - 1 : quotient
    }
}

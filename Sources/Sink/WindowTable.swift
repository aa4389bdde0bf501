import Foundation
import Tenancy

/// Usage deltas merged per window, compactly: a window's key holds numbers standing for its
/// tenant, meter, subject and group key (each name interned once per table) and its start in
/// microseconds; keys and deltas sit in two dense arrays, in the order the windows were first
/// met, found through a hash index of the keys that `seal` drops once nothing merges anymore.
/// A merge of many batches holds hundreds of thousands of windows: this takes a window about
/// two thirds of the memory of a hash table of names and `Decimal`s, and a key's hashing and
/// comparing down to integers.
struct WindowTable {
    /// A window's primary key, its names interned.
    struct Key: Hashable {
        var tenant: UInt32, meter: UInt32, subject: UInt32, group: UInt32
        var windowStartMicroseconds: Int64
        var windowSize: UsageRow.WindowSize

        func hash(into hasher: inout Hasher) {
            hasher.combine(UInt64(tenant) << 32 | UInt64(meter))
            hasher.combine(UInt64(subject) << 32 | UInt64(group))
            hasher.combine(windowStartMicroseconds)
            hasher.combine(windowSize)
        }
    }

    private(set) var tenants = Interner<TenantID>()
    private(set) var meters = Interner<String>()
    private(set) var subjects = Interner<String>()
    private(set) var groups = Interner<String>()
    /// The number of each window's key in `keys` and `deltas`.
    private var index: [Key: Int32] = [:]
    private(set) var keys: [Key] = []
    /// For `unique_count`, a delta's value is the number of its distinct values in `newDistinctValues`.
    private(set) var deltas: [WindowDelta] = []
    /// Distinct values of `unique_count` windows new to them, by window number.
    private(set) var newDistinctValues: [(window: Int32, value: String)] = []
    /// Distinct values merged since the last `countNewDistinctValues`, by window number.
    private var uncountedDistinctValues: [(window: Int32, value: String)] = []
    private var sealed = false

    var count: Int { keys.count }
    var isEmpty: Bool { keys.isEmpty }

    /// Makes room for this many windows at once, rather than growing step by step (holding the
    /// old and new storage of each step).
    mutating func reserveCapacity(_ windows: Int) {
        index.reserveCapacity(windows)
        keys.reserveCapacity(windows)
        deltas.reserveCapacity(windows)
    }

    /// Merges a row into its window's delta; a `unique_count` row's distinct values wait for
    /// `countNewDistinctValues`.
    mutating func merge(_ row: UsageRow) {
        precondition(!sealed, "nothing merges into a sealed window table")
        let key = Key(
            tenant: tenants.id(of: row.tenant), meter: meters.id(of: row.meter), subject: subjects.id(of: row.subject),
            group: groups.id(of: row.groupKey), windowStartMicroseconds: microseconds(row.windowStart), windowSize: row.windowSize)
        var delta = WindowDelta(row)
        if row.aggregation == .uniqueCount { delta.value = 0 }
        let next = Int32(keys.count)
        // One hash lookup: the subscript inserts `next` when the key is new.
        let window = Self.value(of: &index[key, default: next])
        if window == next {
            keys.append(key)
            deltas.append(delta)
        } else {
            deltas[Int(window)].merge(delta)
        }
        if row.aggregation == .uniqueCount {
            for value in row.distinctValues { uncountedDistinctValues.append((window, value)) }
        }
    }

    private static func value(of slot: inout Int32) -> Int32 { slot }

    /// Records the distinct values merged since the last call that are new to their windows,
    /// for `isNew` (false: recorded before), keeps them to be written and adds their number to
    /// their windows' values.
    mutating func countNewDistinctValues(isNew: (_ tenant: TenantID, _ value: Digest, _ windowEnd: Int64) -> Bool) {
        for (window, value) in uncountedDistinctValues {
            let key = keys[Int(window)]
            let digest = Digest.distinctValue(
                meter: meters[key.meter], subject: subjects[key.subject], windowSize: key.windowSize.rawValue,
                windowStartMicroseconds: key.windowStartMicroseconds, groupKey: groups[key.group], value: value)
            if isNew(tenants[key.tenant], digest, key.windowSize.latestEnd(ofWindowStartingAt: key.windowStartMicroseconds)) {
                newDistinctValues.append((window, value))
                deltas[Int(window)].value += 1
            }
        }
        uncountedDistinctValues.removeAll()
    }

    /// Drops what only merging needs (the hash index, the interners' lookups), for a table that
    /// only waits to be written.
    mutating func seal() {
        precondition(uncountedDistinctValues.isEmpty, "distinct values are counted before the table is sealed")
        sealed = true
        index = [:]
        tenants.seal()
        meters.seal()
        subjects.seal()
        groups.seal()
    }
}

/// Numbers standing for values of one kind, in the order first met.
struct Interner<Value: Hashable & Sendable>: Sendable {
    private var ids: [Value: UInt32] = [:]
    private(set) var values: [Value] = []
    /// The value asked for last: consecutive rows mostly name the same tenant, subject and group.
    private var last: (value: Value, id: UInt32)?

    /// The number of `value`, new when it was not met before.
    mutating func id(of value: Value) -> UInt32 {
        if let last, last.value == value { return last.id }
        let id: UInt32
        if let known = ids[value] {
            id = known
        } else {
            id = UInt32(values.count)
            ids[value] = id
            values.append(value)
        }
        last = (value, id)
        return id
    }

    subscript(id: UInt32) -> Value { values[Int(id)] }

    /// Forgets the lookup by value; `subscript` still answers.
    mutating func seal() {
        ids = [:]
        last = nil
    }
}

/// What a window's deltas add up to: a `UsageRow` without the window's key, its times in
/// microseconds since the epoch.
struct WindowDelta {
    var value: UsageAmount
    var total: UsageAmount
    var eventCount: Int64
    var firstEventMicroseconds: Int64
    var lastEventMicroseconds: Int64
    var aggregation: Aggregation

    init(_ row: UsageRow) {
        (aggregation, value, total, eventCount) = (row.aggregation, row.value, row.total, row.eventCount)
        (firstEventMicroseconds, lastEventMicroseconds) = (microseconds(row.firstEventAt), microseconds(row.lastEventAt))
    }

    /// Adds `later`, which follows this delta in the log.
    mutating func merge(_ later: WindowDelta) {
        switch aggregation {
        case .min: value = Swift.min(value, later.value)
        case .max: value = Swift.max(value, later.value)
        case .latest: value = later.lastEventMicroseconds >= lastEventMicroseconds ? later.value : value
        case .count, .sum, .avg, .uniqueCount: value += later.value
        }
        total += later.total
        eventCount += later.eventCount
        firstEventMicroseconds = Swift.min(firstEventMicroseconds, later.firstEventMicroseconds)
        lastEventMicroseconds = Swift.max(lastEventMicroseconds, later.lastEventMicroseconds)
    }
}

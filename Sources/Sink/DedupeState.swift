import Foundation
import Synchronization
import Tenancy

/// A 96-bit digest of a few fields, standing in for them in memory. Made from two seeded
/// `Hasher`s (SipHash, keyed at random per process, so inputs cannot be crafted to collide),
/// thus never stored: states are rebuilt from Postgres's text rows. Two different identities
/// share a digest with probability about n² / 2⁹⁷ for n identities of a tenant (below 10⁻¹¹
/// for a billion). Ordered by value, for `RecordedDigests`' sorted array.
struct Digest: Comparable {
    /// The first hash, whole: uniform over its range, so `RecordedDigests` places digests by
    /// its bits without hashing them again.
    let high: UInt64
    private let low: UInt32

    init(_ combine: (inout Hasher) -> Void) {
        var first = Hasher()
        first.combine(UInt8(0))
        combine(&first)
        var second = Hasher()
        second.combine(UInt8(1))
        combine(&second)
        high = UInt64(bitPattern: Int64(first.finalize()))
        low = UInt32(truncatingIfNeeded: second.finalize())
    }

    private init(high: UInt64, low: UInt32) {
        self.high = high
        self.low = low
    }

    /// All bits zero: what fills storage that holds no digest (`RecordedDigests`' free slots).
    static let zero = Digest(high: 0, low: 0)

    static func < (lhs: Digest, rhs: Digest) -> Bool { (lhs.high, lhs.low) < (rhs.high, rhs.low) }

    static func identity(source: String, id: String) -> Digest {
        Digest { hasher in
            hasher.combine(source)
            hasher.combine(id)
        }
    }

    static func distinctValue(meter: String, subject: String, windowSize: String, windowStartMicroseconds: Int64, groupKey: String, value: String) -> Digest {
        Digest { hasher in
            hasher.combine(meter)
            hasher.combine(subject)
            hasher.combine(windowSize)
            hasher.combine(windowStartMicroseconds)
            hasher.combine(groupKey)
            hasher.combine(value)
        }
    }
}

/// A partition as one consumer group consumes it: the unit of dedupe state.
struct GroupPartition: Hashable {
    var group: String
    var partition: LogPartition
}

/// What a tenant has counted: its event identities (with their event times) and the distinct
/// values of its `unique_count` windows (with the latest time their window may end), times in
/// microseconds since the epoch.
struct TenantDedupeState {
    var identities = RecordedDigests()
    var distinctValues = RecordedDigests()

    /// Adds what `other` recorded (keeping the later time of an entry in both).
    mutating func formUnion(_ other: TenantDedupeState) {
        identities.formUnion(other.identities)
        distinctValues.formUnion(other.distinctValues)
    }
}

extension UsageRow.WindowSize {
    /// The longest a window of this size lasts, in microseconds: days and months in a
    /// tenant's time zone gain an hour when its clocks go back.
    var longestMicroseconds: Int64 {
        let hour: Int64 = 3_600_000_000
        switch self {
        case .minute: return 60_000_000
        case .hour: return hour
        case .day: return 25 * hour
        case .month: return 31 * 24 * hour + hour
        }
    }

    /// The latest a window of this size starting at `start` (microseconds) may end.
    func latestEnd(ofWindowStartingAt start: Int64) -> Int64 { start + longestMicroseconds }

    /// SQL for the latest end of the window in columns `window_size` and `window_start`; NULL
    /// for a size Tally does not know.
    static let latestEndSQL =
        "window_start + CASE window_size "
        + allCases.map { "WHEN '\($0.rawValue)' THEN \($0.longestMicroseconds) * interval '1 microsecond' " }.joined() + "END"
}

/// What the tenants of one partition have counted, complete as of the owner `epoch` it was
/// loaded for: every identity and distinct value recorded for the partition, plus, for each
/// tenant in `tenants`, those recorded without a partition (before control migration 8, or by
/// commits without an owned partition). A tenant missing from `tenants` has no rows for the
/// partition; its rows without a partition are looked up at its first commit.
struct PartitionDedupeState {
    var epoch: Int64
    var tenants: [TenantID: TenantDedupeState] = [:]
}

/// The dedupe states of the partitions this store's commits own, shared by a store and the
/// stores made by its `withOwnConnection()`. `SinkStore.acquire` loads them; a commit checks
/// its partitions' states out (loading one held for another epoch, or not held, inside its
/// transaction after its epoch check), updates them, and checks them back in; a commit that
/// fails drops its partitions' states, so the next one reloads what was really committed.
final class DedupeStates: Sendable {
    private let states = Mutex<[GroupPartition: PartitionDedupeState]>([:])

    /// Removes and returns the states held for the given epochs; partitions without a state
    /// for their epoch are missing from the result (and a state for another epoch is dropped).
    func checkOut(_ epochs: [GroupPartition: Int64]) -> [GroupPartition: PartitionDedupeState] {
        states.withLock { states in
            var found: [GroupPartition: PartitionDedupeState] = [:]
            for (partition, epoch) in epochs {
                if let state = states.removeValue(forKey: partition), state.epoch == epoch { found[partition] = state }
            }
            return found
        }
    }

    /// Stores states loaded or updated; for a commit in progress, `drop` undoes this when it fails.
    func checkIn(_ checkedOut: [GroupPartition: PartitionDedupeState]) {
        states.withLock { states in states.merge(checkedOut) { _, new in new } }
    }

    /// Forgets the states of `partitions`: their next commit reloads them.
    func drop(_ partitions: some Sequence<GroupPartition>) {
        states.withLock { states in for partition in partitions { states[partition] = nil } }
    }

    /// Forgets every partition state holding one of `tenants`.
    func drop(partitionsHolding tenants: Set<TenantID>) {
        guard !tenants.isEmpty else { return }
        states.withLock { states in
            for partition in Array(states.keys) where tenants.contains(where: { states[partition]?.tenants[$0] != nil }) { states[partition] = nil }
        }
    }

    /// Forgets identities of events before `cutoff`, as `SinkStore.forgetEvents` does in Postgres.
    func forgetIdentities(before cutoff: Date) {
        let cutoff = microseconds(cutoff)
        updateEveryTenant { $0.identities.removeAll(before: cutoff) }
    }

    /// Forgets the distinct values of windows that ended before `cutoff`, as
    /// `SinkStore.forgetDistinctValues` does in Postgres.
    func forgetDistinctValues(ofWindowsEndedBefore cutoff: Date) {
        let cutoff = microseconds(cutoff)
        updateEveryTenant { $0.distinctValues.removeAll(before: cutoff) }
    }

    private func updateEveryTenant(_ update: (inout TenantDedupeState) -> Void) {
        states.withLock { states in
            for partition in Array(states.keys) {
                for tenant in Array(states[partition]!.tenants.keys) { update(&states[partition]!.tenants[tenant]!) }
            }
        }
    }
}

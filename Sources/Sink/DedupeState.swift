import Foundation
import Synchronization
import Tenancy

/// A 128-bit digest of a few fields, standing in for them in memory. Made from two seeded
/// `Hasher`s (SipHash, keyed at random per process, so inputs cannot be crafted to collide),
/// thus never stored: states are rebuilt from Postgres's text rows. Two different identities
/// share a digest with probability about n² / 2¹²⁹ for n identities of a tenant (below 10⁻²⁰
/// for a billion).
struct Digest: Hashable {
    private let high: UInt64
    private let low: UInt64

    init(_ combine: (inout Hasher) -> Void) {
        var first = Hasher()
        first.combine(UInt8(0))
        combine(&first)
        var second = Hasher()
        second.combine(UInt8(1))
        combine(&second)
        high = UInt64(bitPattern: Int64(first.finalize()))
        low = UInt64(bitPattern: Int64(second.finalize()))
    }

    func hash(into hasher: inout Hasher) { hasher.combine(low) }

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

/// What a tenant has counted: its event identities (with their event times, in microseconds)
/// and the distinct values of its `unique_count` windows.
struct TenantDedupeState {
    var identities: [Digest: Int64] = [:]
    var distinctValues: Set<Digest> = []

    /// Adds what `other` recorded (keeping this state's time for an identity in both).
    mutating func formUnion(_ other: TenantDedupeState) {
        identities.merge(other.identities) { mine, _ in mine }
        distinctValues.formUnion(other.distinctValues)
    }
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
        states.withLock { states in
            for partition in Array(states.keys) {
                for tenant in Array(states[partition]!.tenants.keys) {
                    if let kept = states[partition]?.tenants[tenant]?.identities.filter({ $0.value >= cutoff }) {
                        states[partition]?.tenants[tenant]?.identities = kept
                    }
                }
            }
        }
    }
}

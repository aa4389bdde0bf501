import Foundation
import Synchronization
import Tenancy

/// A 128-bit digest of a few fields, standing in for them in memory. Made from two seeded
/// `Hasher`s (SipHash, random per process), so never stored: states are rebuilt from
/// Postgres's text rows. Two different identities share a digest with probability about
/// n² / 2¹²⁹ for n identities of a tenant (below 10⁻²⁰ for a billion).
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

/// The consumer-group member a tenant's dedupe state was loaded for: valid while commits
/// carry the same partition epoch, since no one else commits the partition meanwhile.
struct DedupeOwner: Hashable {
    var group: String
    var partition: LogPartition
    var epoch: Int64
}

/// What a tenant has counted: its event identities (with their event times, in microseconds)
/// and the distinct values of its `unique_count` windows, as in `tally.event_identities` and
/// `tally.distinct_values`.
struct TenantDedupeState {
    var owner: DedupeOwner?
    var identities: [Digest: Int64] = [:]
    var distinctValues: Set<Digest> = []
}

/// The dedupe states of the tenants whose partitions this store's commits own, shared by a
/// store and the stores made by its `withOwnConnection()`. A commit checks its tenants' states
/// out (loading those held for another owner epoch, or not held, from Postgres inside its
/// transaction, after its epoch check), updates them, and checks them back in; a commit that
/// fails drops its tenants' states, so the next one reloads what was really committed.
final class DedupeStates: Sendable {
    private let states = Mutex<[TenantID: TenantDedupeState]>([:])

    /// Removes and returns the states of `tenants` held for `owners[tenant]`; tenants without a
    /// state for that owner are missing from the result.
    func checkOut(_ owners: [TenantID: DedupeOwner]) -> [TenantID: TenantDedupeState] {
        states.withLock { states in
            var found: [TenantID: TenantDedupeState] = [:]
            for (tenant, owner) in owners {
                if let state = states.removeValue(forKey: tenant), state.owner == owner { found[tenant] = state }
            }
            return found
        }
    }

    /// Stores states updated by a commit in progress; `drop` undoes this when it fails.
    func checkIn(_ checkedOut: [TenantID: TenantDedupeState]) {
        states.withLock { states in states.merge(checkedOut) { _, new in new } }
    }

    /// Forgets the states of `tenants`: their next commit reloads them.
    func drop(_ tenants: some Sequence<TenantID>) {
        states.withLock { states in for tenant in tenants { states[tenant] = nil } }
    }

    /// Forgets identities of events before `cutoff`, as `SinkStore.forgetEvents` does in Postgres.
    func forgetIdentities(before cutoff: Date) {
        let cutoff = microseconds(cutoff)
        states.withLock { states in
            for tenant in Array(states.keys) {
                if let kept = states[tenant]?.identities.filter({ $0.value >= cutoff }) { states[tenant]?.identities = kept }
            }
        }
    }
}

import Foundation
import Postgres
import Tenancy

/// The dedupe states one commit, or one merge into a `MergedBatch`, works on. A tenant whose
/// events all come from one partition the batch holds a position of is owned: its state is
/// its partition's, checked out of `DedupeStates` when held for the batch's epoch and loaded
/// otherwise. Any other tenant (ownerless) can only be committed on its own: its state is read
/// for this commit alone, under a lock all such commits take, and the cached partition states
/// holding it are dropped (its new rows carry no partition).
struct BatchDedupe {
    private var partitions: [GroupPartition: PartitionDedupeState]
    private var partitionOfTenant: [TenantID: GroupPartition]
    private var ownerlessTenants: Set<TenantID>
    private var ownerless: [TenantID: TenantDedupeState] = [:]
    /// Owned partitions whose state was not held for the batch's epoch.
    private var missing: [GroupPartition: Int64]

    /// For a commit, inside its transaction, after the batch's epochs were checked: no one
    /// else commits an owned tenant meanwhile.
    init(for batch: SinkBatch, from dedupeStates: DedupeStates, _ db: isolated PostgresConnection) throws {
        let (epochs, owners, ownerlessTenants) = Self.owners(of: batch, alongside: [:])
        dedupeStates.drop(partitionsHolding: ownerlessTenants)
        self.init(epochs: epochs, owners: owners, ownerlessTenants: ownerlessTenants, from: dedupeStates)
        try load(db)
    }

    /// For a merge of `batch` into a merged batch whose tenants are owned by `mergedOwners`;
    /// nil, with nothing checked out, when a tenant of `batch` would be ownerless (in the merged
    /// batch as a whole). The caller loads what `needsLoading` before deciding anything.
    init?(merging batch: SinkBatch, alongside mergedOwners: [TenantID: GroupPartition], from dedupeStates: DedupeStates) {
        let (epochs, owners, ownerlessTenants) = Self.owners(of: batch, alongside: mergedOwners)
        guard ownerlessTenants.isEmpty else { return nil }
        self.init(epochs: epochs, owners: owners, ownerlessTenants: [], from: dedupeStates)
    }

    private init(
        epochs: [GroupPartition: Int64], owners: [TenantID: GroupPartition], ownerlessTenants: Set<TenantID>, from dedupeStates: DedupeStates
    ) {
        partitionOfTenant = owners
        self.ownerlessTenants = ownerlessTenants
        let checkedOut = dedupeStates.checkOut(epochs)
        partitions = checkedOut
        missing = epochs.filter { checkedOut[$0.key] == nil }
    }

    /// The epoch of each owned partition, the owner of each owned tenant, and the ownerless
    /// tenants of `batch`; a tenant owned by another partition in `mergedOwners` is ownerless.
    private static func owners(
        of batch: SinkBatch, alongside mergedOwners: [TenantID: GroupPartition]
    ) -> (epochs: [GroupPartition: Int64], owners: [TenantID: GroupPartition], ownerless: Set<TenantID>) {
        var epochs: [GroupPartition: Int64] = [:]
        var owners: [TenantID: GroupPartition] = [:]
        var ownerless: Set<TenantID> = []
        for event in batch.events {
            guard let partition = event.partition, let position = batch.positions[partition] else {
                ownerless.insert(event.tenant)
                continue
            }
            let key = GroupPartition(group: batch.consumerGroup, partition: partition)
            epochs[key] = position.epoch
            if let earlier = owners.updateValue(key, forKey: event.tenant), earlier != key { ownerless.insert(event.tenant) }
            if let merged = mergedOwners[event.tenant], merged != key { ownerless.insert(event.tenant) }
            for row in event.usage where row.tenant != event.tenant { ownerless.insert(row.tenant) }
        }
        for row in batch.usage where row.aggregation == .uniqueCount { ownerless.insert(row.tenant) }
        for tenant in ownerless { owners[tenant] = nil }
        return (epochs, owners, ownerless)
    }

    /// The owner of each owned tenant.
    var owners: [TenantID: GroupPartition] { partitionOfTenant }

    /// Whether a merge's deciding needs rows from Postgres first (`load`).
    var needsLoading: Bool { !missing.isEmpty || !unseenTenants.isEmpty }

    /// Owned tenants new to their partition's state: they have no rows for it, but may have
    /// rows without a partition.
    private var unseenTenants: [TenantID: GroupPartition] { partitionOfTenant.filter { partitions[$0.value]?.tenants[$0.key] == nil } }

    /// Reads what deciding needs: the missing partitions' states, the rows without a partition
    /// of owned tenants new to their state, and, under the ownerless lock (held to the end of
    /// the transaction), the ownerless tenants' rows.
    mutating func load(_ db: isolated PostgresConnection) throws {
        if !missing.isEmpty {
            partitions.merge(try loadPartitionStates(missing, db)) { _, loaded in loaded }
            missing = [:]
        }
        let unseen = unseenTenants
        if !unseen.isEmpty {
            let withoutPartition = try loadRowsWithoutPartition(of: unseen.keys, db)
            for (tenant, key) in unseen { partitions[key]?.tenants[tenant] = withoutPartition[tenant] ?? TenantDedupeState() }
        }
        if !ownerlessTenants.isEmpty {
            try db.query("SELECT pg_advisory_xact_lock(hashtext('tally.ownerless-dedupe'))")
            let rows = try loadDedupeRows(where: "tenant = ANY(string_to_array($1, ','))", [tenantList(ownerlessTenants)], db)
            for tenant in ownerlessTenants { ownerless[tenant] = TenantDedupeState() }
            for states in rows.values {
                for (tenant, state) in states { ownerless[tenant]?.formUnion(state) }
            }
        }
    }

    /// The partition whose state holds `tenant`'s, nil for a tenant without an owned partition.
    func partition(of tenant: TenantID) -> GroupPartition? { partitionOfTenant[tenant] }

    /// Records an identity; false when it was recorded before.
    mutating func recordIdentity(_ identity: Digest, time: Int64, of tenant: TenantID) -> Bool {
        if let key = partitionOfTenant[tenant] { return partitions[key]?.tenants[tenant]?.identities.insertIfAbsent(identity, time: time) ?? false }
        return ownerless[tenant, default: TenantDedupeState()].identities.insertIfAbsent(identity, time: time)
    }

    /// Records a distinct value of a window that ends by `windowEnd`; false when it was recorded before.
    mutating func recordDistinctValue(_ value: Digest, windowEnd: Int64, of tenant: TenantID) -> Bool {
        if let key = partitionOfTenant[tenant] { return partitions[key]?.tenants[tenant]?.distinctValues.insertIfAbsent(value, time: windowEnd) ?? false }
        return ownerless[tenant, default: TenantDedupeState()].distinctValues.insertIfAbsent(value, time: windowEnd)
    }

    /// Stores the partitions' updated states for the next commits and merges (the ownerless
    /// ones are not kept). A commit drops them again if its transaction fails; a merged
    /// batch's states stay for its commit's retries, until it is abandoned.
    func checkIn(to dedupeStates: DedupeStates) {
        dedupeStates.checkIn(partitions)
    }
}

/// The states of `partitions` at the given epochs: every identity and distinct value recorded
/// for each, and those recorded without a partition for the tenants found.
func loadPartitionStates(_ epochs: [GroupPartition: Int64], _ db: isolated PostgresConnection) throws -> [GroupPartition: PartitionDedupeState] {
    var states = epochs.mapValues { PartitionDedupeState(epoch: $0) }
    for (stream, keys) in Dictionary(grouping: epochs.keys, by: { [$0.group, $0.partition.topic] }) {
        let rows = try loadDedupeRows(
            where: "consumer_group = $1 AND topic = $2 AND partition = ANY(string_to_array($3, ',')::integer[])",
            [.text(stream[0]), .text(stream[1]), .text(keys.map { String($0.partition.partition) }.joined(separator: ","))], db)
        for (owner, tenants) in rows { if let owner { states[owner]?.tenants = tenants } }
    }
    let found = Set(states.values.flatMap(\.tenants.keys))
    guard !found.isEmpty else { return states }
    let withoutPartition = try loadRowsWithoutPartition(of: found, db)
    for (tenant, rows) in withoutPartition {
        for partition in Array(states.keys) where states[partition]?.tenants[tenant] != nil {
            states[partition]?.tenants[tenant]?.formUnion(rows)
        }
    }
    return states
}

/// The identities and distinct values of `tenants` recorded without a partition, found through
/// the partial indexes of control migration 8.
private func loadRowsWithoutPartition(of tenants: some Sequence<TenantID>, _ db: isolated PostgresConnection) throws -> [TenantID: TenantDedupeState] {
    try loadDedupeRows(where: "partition IS NULL AND tenant = ANY(string_to_array($1, ','))", [tenantList(tenants)], db)[nil] ?? [:]
}

/// The identities and distinct values of the rows of both tables matching `condition`, by the
/// partition they were recorded for (nil: none) and tenant.
private func loadDedupeRows(
    where condition: String, _ parameters: [PostgresParameter], _ db: isolated PostgresConnection
) throws -> [GroupPartition?: [TenantID: TenantDedupeState]] {
    var states: [GroupPartition?: [TenantID: TenantDedupeState]] = [:]
    func owner(_ row: PostgresRow) throws -> GroupPartition? {
        guard let group = try row.string("consumer_group"), let topic = try row.string("topic"), let partition = try row.int64("partition") else { return nil }
        return GroupPartition(group: group, partition: LogPartition(topic: topic, partition: Int32(partition)))
    }
    for row in try db.query(
        """
        SELECT consumer_group, topic, partition, tenant, source, event_id, (extract(epoch FROM event_time) * 1000000)::bigint AS event_time_us
        FROM tally.event_identities WHERE \(condition)
        """, parameters)
    {
        let identity = Digest.identity(source: try row.string("source") ?? "", id: try row.string("event_id") ?? "")
        states[try owner(row), default: [:]][try tenantID(in: row, column: "tenant"), default: TenantDedupeState()].identities
            .insertKeepingLatest(identity, time: try row.int64("event_time_us") ?? 0)
    }
    for row in try db.query(
        """
        SELECT consumer_group, topic, partition, tenant, meter, subject, window_size,
               (extract(epoch FROM window_start) * 1000000)::bigint AS window_start_us, group_key, value_key
        FROM tally.distinct_values WHERE \(condition)
        """, parameters)
    {
        let windowSize = try row.string("window_size") ?? ""
        let windowStart = try row.int64("window_start_us") ?? 0
        let value = Digest.distinctValue(
            meter: try row.string("meter") ?? "", subject: try row.string("subject") ?? "", windowSize: windowSize,
            windowStartMicroseconds: windowStart, groupKey: try row.string("group_key") ?? "", value: try row.string("value_key") ?? "")
        // A size Tally does not know never ends; `forgetDistinctValues` keeps its rows too.
        let windowEnd = UsageRow.WindowSize(rawValue: windowSize)?.latestEnd(ofWindowStartingAt: windowStart) ?? .max
        states[try owner(row), default: [:]][try tenantID(in: row, column: "tenant"), default: TenantDedupeState()].distinctValues
            .insertKeepingLatest(value, time: windowEnd)
    }
    return states
}

import Foundation
import Postgres
import Synchronization
import Tenancy

/// The only writer of Postgres: per-tenant schemas, the offset store and fenced, atomic commits.
///
/// Every statement runs inside `PostgresConnection.transaction`, on the connection's own thread.
/// Identifiers come only from validated `TenantID`s and are quoted; values are bound parameters.
/// A broken connection is replaced on the next call, so the store survives Postgres restarts.
public final class SinkStore: Sendable {
    private let conninfo: String
    private let lockTimeout: Duration?
    private let writeMethod: SinkWriteMethod
    private let current = Mutex<PostgresConnection?>(nil)
    /// Tenants whose schema is known to be at the latest version.
    private let readyTenants = Mutex<Set<TenantID>>([])
    /// Shared with the stores of `withOwnConnection()`, whose commits may own the partitions.
    private let dedupeStates: DedupeStates

    /// `conninfo` is a libpq connection string or URL; connecting happens on first use. With a
    /// `lockTimeout`, a transaction that waits longer than that for a lock fails instead of
    /// queueing behind it (SQLSTATE 55P03), e.g. migrations on a busy database.
    public convenience init(conninfo: String, lockTimeout: Duration? = nil, writeMethod: SinkWriteMethod = .loggedDeltas) {
        self.init(conninfo: conninfo, lockTimeout: lockTimeout, writeMethod: writeMethod, dedupeStates: DedupeStates())
    }

    private init(conninfo: String, lockTimeout: Duration?, writeMethod: SinkWriteMethod, dedupeStates: DedupeStates) {
        self.conninfo = conninfo
        self.lockTimeout = lockTimeout
        self.writeMethod = writeMethod
        self.dedupeStates = dedupeStates
    }

    /// A store with the same settings and a connection of its own, for work that should not
    /// queue behind this store's commits, such as folding the usage log or committing the
    /// batches of other partitions. It shares this store's in-memory dedupe states.
    public func withOwnConnection() -> SinkStore {
        SinkStore(conninfo: conninfo, lockTimeout: lockTimeout, writeMethod: writeMethod, dedupeStates: dedupeStates)
    }

    /// Creates or migrates the control schema. Safe to run from many processes at once.
    public func prepare() async throws(SinkError) {
        try await run { db in
            try db.query("SELECT pg_advisory_xact_lock(hashtext('tally.control'))")
            try db.execute(
                """
                CREATE SCHEMA IF NOT EXISTS tally;
                CREATE TABLE IF NOT EXISTS tally.schema_migrations (
                    version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
                """)
            let applied = try appliedVersions(db, schema: SinkSchema.control)
            for (version, sql) in SinkSchema.controlMigrations where !applied.contains(version) {
                try db.execute(sql)
                try db.query("INSERT INTO tally.schema_migrations (version) VALUES ($1)", [.int32(Int32(version))])
            }
        }
    }

    /// Creates the tenant's schema, tables and read-only role on first sight, or migrates them.
    /// Concurrent first sights, from any number of processes, serialize on an advisory lock.
    public func ensureTenant(_ tenant: TenantID) async throws(SinkError) {
        if readyTenants.withLock({ $0.contains(tenant) }) { return }
        try await run { db in
            try db.query("SELECT pg_advisory_xact_lock(hashtext('tally.tenant.' || $1))", [.text(tenant.rawValue)])
            let registered = try db.query("SELECT schema_version FROM tally.tenants WHERE tenant_id = $1", [.text(tenant.rawValue)])
            if let version = try registered.first?.int64("schema_version"), version >= SinkSchema.latestTenantVersion { return }
            let schema = quoteIdentifier(tenant.schemaName)
            let reader = quoteIdentifier(tenant.readerRole)
            try db.execute(
                """
                CREATE SCHEMA IF NOT EXISTS \(schema);
                CREATE TABLE IF NOT EXISTS \(schema).schema_migrations (
                    version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
                """)
            let applied = try appliedVersions(db, schema: tenant.schemaName)
            for (version, sql) in SinkSchema.tenantMigrations where !applied.contains(version) {
                try db.execute(
                    sql.replacingOccurrences(of: "{schema}", with: schema).replacingOccurrences(of: "{tenant}", with: "'\(tenant.rawValue)'"))
                try db.query("INSERT INTO \(schema).schema_migrations (version) VALUES ($1)", [.int32(Int32(version))])
            }
            if try db.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [.text(tenant.readerRole)]).isEmpty {
                try db.execute("CREATE ROLE \(reader) NOLOGIN")
            }
            try db.execute(
                """
                GRANT USAGE ON SCHEMA \(schema) TO \(reader);
                GRANT SELECT ON ALL TABLES IN SCHEMA \(schema) TO \(reader);
                ALTER DEFAULT PRIVILEGES IN SCHEMA \(schema) GRANT SELECT ON TABLES TO \(reader);
                """)
            try db.query(
                """
                INSERT INTO tally.tenants (tenant_id, schema_name, reader_role, schema_version) VALUES ($1, $2, $3, $4)
                ON CONFLICT (tenant_id) DO UPDATE SET schema_version = EXCLUDED.schema_version
                """,
                [.text(tenant.rawValue), .text(tenant.schemaName), .text(tenant.readerRole), .int32(Int32(SinkSchema.latestTenantVersion))])
        }
        readyTenants.withLock { _ = $0.insert(tenant) }
    }

    /// `ensureTenant` for each of `tenants`, with one query for all that are at the latest
    /// version already (a processor's first batches name hundreds of tenants).
    private func ensureTenants(_ tenants: Set<TenantID>) async throws(SinkError) {
        let unknown = readyTenants.withLock { ready in tenants.subtracting(ready) }
        guard !unknown.isEmpty else { return }
        if unknown.count > 1 {
            // A tenant's version is raised in the transaction of its migrations: one at the
            // latest version needs nothing.
            let current = try await run { db in
                try db.query(
                    "SELECT tenant_id FROM tally.tenants WHERE tenant_id = ANY(string_to_array($1, ',')) AND schema_version >= $2",
                    [tenantList(unknown), .int32(Int32(SinkSchema.latestTenantVersion))]
                ).map { try tenantID(in: $0, column: "tenant_id") }
            }
            readyTenants.withLock { ready in ready.formUnion(current) }
        }
        for tenant in unknown.sorted() { try await ensureTenant(tenant) }
    }

    /// Brings every registered tenant's schema to the latest version, `parallelism` at a time,
    /// reporting each finished tenant. Returns the tenants that failed, with their errors.
    public func migrateAllTenants(
        parallelism: Int, progress: @Sendable (_ done: Int, _ total: Int, TenantID) -> Void
    ) async throws(SinkError) -> [TenantID: SinkError] {
        try await prepare()
        let tenants = try await tenants()
        let (conninfo, lockTimeout) = (conninfo, lockTimeout)
        var failures: [TenantID: SinkError] = [:]
        var done = 0
        await withTaskGroup(of: (TenantID, SinkError?).self) { group in
            var pending = tenants.makeIterator()
            func startNext() {
                guard let tenant = pending.next() else { return }
                group.addTask {
                    let store = SinkStore(conninfo: conninfo, lockTimeout: lockTimeout)
                    let failure: SinkError?
                    do throws(SinkError) {
                        try await store.ensureTenant(tenant)
                        failure = nil
                    } catch {
                        failure = error
                    }
                    await store.close()
                    return (tenant, failure)
                }
            }
            for _ in 0..<max(1, parallelism) { startNext() }
            while let (tenant, error) = await group.next() {
                done += 1
                if let error { failures[tenant] = error }
                progress(done, tenants.count, tenant)
                startNext()
            }
        }
        return failures
    }

    /// Every registered tenant.
    public func tenants() async throws(SinkError) -> [TenantID] {
        try await run { db in
            try db.query("SELECT tenant_id FROM tally.tenants ORDER BY tenant_id").map { try tenantID(in: $0, column: "tenant_id") }
        }
    }

    /// Takes ownership of partitions for a consumer group: each gets a new owner epoch, which
    /// fences off any earlier owner, and the stored next offset to seek to. Loads the
    /// partitions' dedupe states (identities and distinct values) for the new epochs, in one
    /// pass over their tables.
    public func acquire(_ partitions: [LogPartition], group: String) async throws(SinkError) -> [LogPartition: PartitionOwnership] {
        let owned = try await run { db in
            var owned: [LogPartition: PartitionOwnership] = [:]
            for partition in partitions.sorted() {
                let key: [PostgresParameter] = [.text(group), .text(partition.topic), .int32(partition.partition)]
                let epoch = try db.query(
                    """
                    INSERT INTO tally.partition_owners (consumer_group, topic, partition, epoch) VALUES ($1, $2, $3, 1)
                    ON CONFLICT (consumer_group, topic, partition)
                    DO UPDATE SET epoch = tally.partition_owners.epoch + 1, acquired_at = now()
                    RETURNING epoch
                    """, key)[0].int64("epoch")!
                let stored = try db.query(
                    "SELECT next_offset FROM tally.offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3", key)
                owned[partition] = PartitionOwnership(epoch: epoch, nextOffset: try stored.first?.int64("next_offset"))
            }
            return owned
        }
        let epochs = Dictionary(uniqueKeysWithValues: owned.map { (GroupPartition(group: group, partition: $0.key), $0.value.epoch) })
        // A commit loads a state that is missing; one that fails here is left to it.
        if let states = try? await run({ db in try loadPartitionStates(epochs, db) }) { dedupeStates.checkIn(states) }
        return owned
    }

    /// Forgets the dedupe states of partitions this member no longer owns.
    public func release(_ partitions: [LogPartition], group: String) {
        dedupeStates.drop(partitions.map { GroupPartition(group: group, partition: $0) })
    }

    /// The stored next offsets of a consumer group.
    public func offsets(group: String) async throws(SinkError) -> [LogPartition: CommittedPosition] {
        try await run { db in try storedOffsets(group: group, db) }
    }

    /// Writes a batch, for any number of tenants, and its offsets in one transaction: events
    /// whose identity was counted before add nothing, usage deltas merge into their windows,
    /// stats and rejections are recorded. A position whose epoch is not the partition's
    /// current one fails the whole batch as `fenced`; any other failure also leaves nothing
    /// behind.
    ///
    /// Identities and distinct values are checked in memory, against the state of each
    /// partition as of the last commit (see `CountedEvent.partition`): a tenant's events must be
    /// committed by the owner of its partition alone (the events topic is keyed by tenant).
    public func commit(_ batch: SinkBatch) async throws(SinkError) {
        try await ensureTenants(Set(batch.usage.map(\.tenant) + batch.events.map(\.tenant) + batch.rejections.map(\.tenant)))
        do {
            try await apply(batch)
        } catch {
            // The connection broke, perhaps during COMMIT: the batch may or may not be stored.
            // Its positions (offset and epoch) are stored with it, so they tell which.
            if error.isConnectionLoss, (try? await isStored(batch.positions, group: batch.consumerGroup)) == true { return }
            // The dedupe states hold what this batch would have added: read them again next time.
            dedupeStates.drop(batch.positions.keys.map { GroupPartition(group: batch.consumerGroup, partition: $0) })
            throw error
        }
    }

    /// Deduplicates `batch` in memory against the dedupe states of its partitions, as they
    /// stand after everything merged before (committed or not), and merges what it adds into
    /// `merged`, creating the schemas of tenants seen for the first time. Returns false, having
    /// changed nothing, when a tenant of `batch` would be ownerless in the merged batch (its
    /// events from more than one partition, or from none): such a batch commits on its own
    /// (`commit(_: SinkBatch)`) once `merged` has. Throws `fenced` when `batch` carries a newer
    /// epoch of a partition than `merged`: the merged batch can only be abandoned.
    public func merge(_ batch: SinkBatch, into merged: inout MergedBatch) async throws(SinkError) -> Bool {
        precondition(batch.consumerGroup == merged.consumerGroup, "a merged batch is for one consumer group")
        for (partition, position) in batch.positions {
            if let earlier = merged.positions[partition], earlier.epoch != position.epoch {
                throw .fenced(partition: partition.description, epoch: earlier.epoch, currentEpoch: position.epoch)
            }
        }
        try await ensureTenants(Set(batch.usage.map(\.tenant) + batch.events.map(\.tenant) + batch.rejections.map(\.tenant)))
        guard var dedupe = BatchDedupe(merging: batch, alongside: merged.effects.owners, from: dedupeStates) else { return false }
        if dedupe.needsLoading {
            do {
                dedupe = try await run { [dedupe] db in
                    var loading = dedupe
                    try loading.load(db)
                    return loading
                }
            } catch {
                // What was checked out is unchanged, pending identities of merged batches included.
                dedupe.checkIn(to: dedupeStates)
                throw error
            }
        }
        merged.effects.add(batch, deciding: &dedupe)
        dedupe.checkIn(to: dedupeStates)
        merged.positions.merge(batch.positions) { _, later in later }
        return true
    }

    /// Writes a merged batch and its offsets in one transaction, its epochs checked as
    /// `commit(_: SinkBatch)` checks them; a batch whose positions are stored already was
    /// committed by an attempt whose outcome was lost, and is not written again. Its events
    /// were decided when they merged, and the dedupe states count them as recorded: after a
    /// failure other than `fenced`, commit the same batch again (nothing merged after it may
    /// commit first), or `abandon` it.
    public func commit(_ merged: MergedBatch) async throws(SinkError) {
        do {
            try await run { [writeMethod] db in
                try checkEpochs(of: merged.positions, group: merged.consumerGroup, db)
                // A retry after a connection lost during COMMIT finds the batch stored, or not.
                let stored = try storedOffsets(group: merged.consumerGroup, db)
                guard !merged.positions.allSatisfy({ stored[$0.key] == $0.value }) else { return }
                try merged.effects.write(writeMethod: writeMethod, db)
                try storeOffsets(merged.positions, group: merged.consumerGroup, db)
            }
        } catch {
            if error.isConnectionLoss, (try? await isStored(merged.positions, group: merged.consumerGroup)) == true { return }
            if case .fenced = error { abandon(merged) }
            throw error
        }
    }

    /// Forgets the dedupe states of a merged batch's partitions: it will not commit, nor will
    /// anything merged after it, and their next merge or commit loads what was committed.
    public func abandon(_ merged: MergedBatch) {
        dedupeStates.drop(merged.positions.keys.map { GroupPartition(group: merged.consumerGroup, partition: $0) })
    }

    /// Folds the usage log into the keyed usage tables (see `SinkWriteMethod.loggedDeltas`),
    /// and the event stats log into the event stats; what readers see does not change. The
    /// logs fold in parts, each in a transaction of its own: the stats log, and each of the
    /// usage log's partitions. One fold of a part runs at a time across all processes: a call
    /// that finds another folding a part goes on with the others, leaving that part to it,
    /// unless `waitingForRunningFold`, when it waits for that fold to end and then folds what
    /// is left.
    ///
    /// A fold writes every tenant partition it folds into, and Postgres locks each in a lock
    /// table of limited size; when that runs out ("out of shared memory"), the part goes on
    /// in transactions of half as many tenants, down to one tenant a transaction.
    @discardableResult
    public func foldLogs(waitingForRunningFold: Bool = false) async throws(SinkError) -> FoldResult {
        try await Self.foldLogs(on: [self], waitingForRunningFold: waitingForRunningFold)
    }

    /// `foldLogs` on the connections of all `stores` side by side, each folding its share of the
    /// parts one at a time, so a fold can use as many of Postgres's cores. `stores` must not be
    /// empty: nothing would fold.
    public static func foldLogs(on stores: [SinkStore], waitingForRunningFold: Bool = false) async throws(SinkError) -> FoldResult {
        precondition(!stores.isEmpty, "a fold needs at least one store")
        let parts = [LogPart.stats] + (0..<usageLogPartitions).map { LogPart.usage(partition: $0) }
        do {
            return try await withThrowingTaskGroup(of: FoldResult.self) { group in
                for (index, store) in stores.enumerated() {
                    let share = stride(from: index, to: parts.count, by: stores.count).map { parts[$0] }
                    group.addTask {
                        var folded = FoldResult(usageRowsFolded: 0, complete: true)
                        for part in share { folded.add(try await store.fold(part, waiting: waitingForRunningFold)) }
                        return folded
                    }
                }
                var folded = FoldResult(usageRowsFolded: 0, complete: true)
                for try await result in group { folded.add(result) }
                return folded
            }
        } catch let error as SinkError {
            throw error
        } catch {
            throw .database(PostgresError(kind: .invalidData, message: "\(error)"))
        }
    }

    /// Folds one part of the logs, in one transaction unless the lock table runs out.
    private func fold(_ part: LogPart, waiting: Bool) async throws(SinkError) -> FoldResult {
        do {
            let moved = try await foldOnce(part, tenants: nil, waiting: waiting)
            return FoldResult(usageRowsFolded: moved ?? 0, complete: moved != nil)
        } catch where error.isOutOfLocks {
            var pending = try await run { db in try tenantsInLog(partition: part.usagePartition, db) }[...]
            guard pending.count > 1 else { throw error }
            var chunkSize = pending.count / 2
            var folded: Int64 = 0
            while !pending.isEmpty {
                let chunk = Array(pending.prefix(chunkSize))
                do {
                    guard let moved = try await foldOnce(part, tenants: chunk, waiting: waiting) else {
                        return FoldResult(usageRowsFolded: folded, complete: false)
                    }
                    folded += moved
                    pending.removeFirst(chunk.count)
                } catch where error.isOutOfLocks && chunkSize > 1 {
                    chunkSize /= 2
                }
            }
            return FoldResult(usageRowsFolded: folded, complete: true)
        }
    }

    /// One fold transaction of `part` over `tenants` (all when nil); the usage log rows moved,
    /// or nil when another process is folding that part, unless `waiting` for it.
    private func foldOnce(_ part: LogPart, tenants: [TenantID]?, waiting: Bool) async throws(SinkError) -> Int64? {
        try await run { db in
            let lock = [PostgresParameter.int32(part.lockKey)]
            if waiting {
                try db.query("SELECT pg_advisory_xact_lock(hashtext('tally.fold'), $1)", lock)
            } else {
                guard try db.query("SELECT pg_try_advisory_xact_lock(hashtext('tally.fold'), $1) AS locked", lock)[0].bool("locked") == true else {
                    return nil
                }
            }
            guard let partition = part.usagePartition else {
                try foldStatsLog(tenants: tenants, db)
                return 0
            }
            return try foldUsageLog(partition: partition, tenants: tenants, db)
        }
    }

    /// Forgets counted event identities older than `cutoff`, in Postgres and in the states in
    /// memory: duplicates of older events are no longer recognised (the dedupe horizon).
    /// Returns how many were removed from Postgres.
    @discardableResult
    public func forgetEvents(before cutoff: Date) async throws(SinkError) -> Int64 {
        let removed = try await countDeleted("DELETE FROM tally.event_identities WHERE event_time < $1", cutoff: cutoff)
        dedupeStates.forgetIdentities(before: cutoff)
        return removed
    }

    /// Forgets the distinct values of `unique_count` windows that ended before `cutoff`, in
    /// Postgres and in the states in memory, each window taken at its longest (a day in a
    /// tenant's time zone at 25 hours, a month at 31 days and an hour). Meant for windows no
    /// event can reach any more (past the grace for late events): a value that still arrives
    /// for one counts again. Returns how many were removed from Postgres.
    @discardableResult
    public func forgetDistinctValues(ofWindowsEndedBefore cutoff: Date) async throws(SinkError) -> Int64 {
        let removed = try await countDeleted(
            "DELETE FROM tally.distinct_values WHERE \(UsageRow.WindowSize.latestEndSQL) < $1", cutoff: cutoff)
        dedupeStates.forgetDistinctValues(ofWindowsEndedBefore: cutoff)
        return removed
    }

    /// Runs `delete`, a `DELETE` taking `cutoff` as `$1`; the number of rows it removed.
    private func countDeleted(_ delete: String, cutoff: Date) async throws(SinkError) -> Int64 {
        try await run { db in
            try db.query("WITH gone AS (\(delete) RETURNING 1) SELECT count(*) AS n FROM gone", [.timestamptz(cutoff)])[0].int64("n") ?? 0
        }
    }

    /// Whether every one of the positions is what the offset store holds.
    private func isStored(_ positions: [LogPartition: CommittedPosition], group: String) async throws(SinkError) -> Bool {
        guard !positions.isEmpty else { return false }
        let stored = try await offsets(group: group)
        return positions.allSatisfy { stored[$0.key] == $0.value }
    }

    private func apply(_ batch: SinkBatch) async throws(SinkError) {
        try await run { [writeMethod, dedupeStates] db in
            try checkEpochs(of: batch.positions, group: batch.consumerGroup, db)
            try writeBatch(batch, writeMethod: writeMethod, dedupeStates: dedupeStates, db)
            try storeOffsets(batch.positions, group: batch.consumerGroup, db)
        }
    }

    /// Runs `body` as one transaction on the connection's thread, mapping errors to `SinkError`.
    /// A connection that broke is dropped, so the next call connects anew.
    private func run<T: Sendable>(_ body: @escaping @Sendable (isolated PostgresConnection) throws -> T) async throws(SinkError) -> T {
        let connection = try await connection()
        let lockTimeoutSetting = lockTimeout.map { "SET LOCAL lock_timeout = '\(max(1, $0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000))ms'" }
        do {
            return try await connection.transaction { db in
                if let lockTimeoutSetting { try db.execute(lockTimeoutSetting) }
                return try body(db)
            }
        } catch let error as SinkError {
            throw error
        } catch let error as PostgresError {
            if error.kind == .connection {
                current.withLock { if $0 === connection { $0 = nil } }
                await connection.close()
            }
            throw .database(error)
        } catch {
            throw .database(PostgresError(kind: .invalidData, message: "\(error)"))
        }
    }

    private func connection() async throws(SinkError) -> PostgresConnection {
        if let connection = current.withLock({ $0 }) { return connection }
        do {
            let connection = try await PostgresConnection.connect(conninfo)
            current.withLock { $0 = connection }
            return connection
        } catch {
            throw .database(error)
        }
    }

    /// Closes the connection; the next call opens a new one.
    public func close() async {
        let connection = current.withLock { connection in
            defer { connection = nil }
            return connection
        }
        await connection?.close()
    }
}

private func appliedVersions(_ db: isolated PostgresConnection, schema: String) throws -> Set<Int> {
    Set(try db.query("SELECT version FROM \(quoteIdentifier(schema)).schema_migrations").map { Int(try $0.int64("version")!) })
}

/// What one `SinkStore.foldLogs` call did.
public struct FoldResult: Sendable, Equatable {
    /// Usage log rows moved into the keyed usage tables.
    public var usageRowsFolded: Int64
    /// True when the call folded everything committed before it began; false when it found
    /// another process folding and left some or all of the logs to it.
    public var complete: Bool

    public init(usageRowsFolded: Int64, complete: Bool) {
        self.usageRowsFolded = usageRowsFolded
        self.complete = complete
    }

    mutating func add(_ other: FoldResult) {
        usageRowsFolded += other.usageRowsFolded
        complete = complete && other.complete
    }
}

/// A part of the logs that folds in a transaction of its own.
private enum LogPart: Sendable {
    case stats
    case usage(partition: Int)

    /// The usage log partition, nil for the stats log.
    var usagePartition: Int? {
        if case .usage(let partition) = self { partition } else { nil }
    }

    /// The second key of the part's advisory lock, beside `hashtext('tally.fold')`.
    var lockKey: Int32 { Int32(usagePartition ?? -1) }
}

/// Fails with `fenced` unless every position's epoch is its partition's current one, locking
/// the owner rows to the end of the transaction.
private func checkEpochs(of positions: [LogPartition: CommittedPosition], group: String, _ db: isolated PostgresConnection) throws {
    for (partition, position) in positions.sorted(by: { $0.key < $1.key }) {
        let current = try db.query(
            "SELECT epoch FROM tally.partition_owners WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE",
            [.text(group), .text(partition.topic), .int32(partition.partition)]
        ).first?.int64("epoch")
        guard current == position.epoch else {
            throw SinkError.fenced(partition: partition.description, epoch: position.epoch, currentEpoch: current)
        }
    }
}

private func storedOffsets(group: String, _ db: isolated PostgresConnection) throws -> [LogPartition: CommittedPosition] {
    var positions: [LogPartition: CommittedPosition] = [:]
    for row in try db.query("SELECT topic, partition, next_offset, epoch FROM tally.offsets WHERE consumer_group = $1", [.text(group)]) {
        let partition = LogPartition(topic: try row.string("topic")!, partition: Int32(try row.int64("partition")!))
        positions[partition] = CommittedPosition(nextOffset: try row.int64("next_offset")!, epoch: try row.int64("epoch")!)
    }
    return positions
}

private func storeOffsets(_ positions: [LogPartition: CommittedPosition], group: String, _ db: isolated PostgresConnection) throws {
    for (partition, position) in positions {
        try db.query(
            """
            INSERT INTO tally.offsets (consumer_group, topic, partition, next_offset, epoch) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (consumer_group, topic, partition)
            DO UPDATE SET next_offset = EXCLUDED.next_offset, epoch = EXCLUDED.epoch, updated_at = now()
            """,
            [.text(group), .text(partition.topic), .int32(partition.partition), .int64(position.nextOffset), .int64(position.epoch)])
    }
}

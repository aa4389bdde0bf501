import Foundation
import Postgres
import Tenancy

/// How `commit` writes usage rows; all give the same result as readers see it (BENCHMARKS.md
/// compares them).
public enum SinkWriteMethod: Sendable {
    /// `COPY` into the unindexed usage log, which `SinkStore.foldLogs` later merges into
    /// the keyed usage tables; readers see both merged.
    case loggedDeltas
    /// `COPY` into a temporary staging table, then one `INSERT … SELECT … ON CONFLICT`. Writes
    /// (and locks) one partition per tenant of the batch.
    case stagedUpsert
    /// One prepared `INSERT … ON CONFLICT` per row, sent in libpq pipeline mode. Writes (and
    /// locks) one partition per tenant of the batch.
    case pipelinedUpserts
}

/// Writes everything of a batch but the offsets, inside the commit's transaction: its events
/// deduplicated against the dedupe states of its partitions (see `BatchDedupe`), then what
/// they add (`BatchEffects`).
func writeBatch(_ batch: SinkBatch, writeMethod: SinkWriteMethod, dedupeStates: DedupeStates, _ db: isolated PostgresConnection) throws {
    var dedupe = try BatchDedupe(for: batch, from: dedupeStates, db)
    var effects = BatchEffects()
    effects.add(batch, deciding: &dedupe)
    dedupe.checkIn(to: dedupeStates)
    try effects.write(writeMethod: writeMethod, db)
}

/// What batches add once their events are deduplicated: the identities of events counted for
/// the first time, usage deltas merged per window (with the distinct values new to them),
/// per-day stats and rejections. Several batches' effects merge into one (`add`), so a window
/// gets one delta however many of them it met.
struct BatchEffects {
    /// An event counted for the first time, as `tally.event_identities` records it.
    struct Identity {
        var tenant: TenantID
        var source: String
        var id: String
        var timeMicroseconds: Int64
    }

    /// The partition whose dedupe state holds each owned tenant's rows; others have none.
    private(set) var owners: [TenantID: GroupPartition] = [:]
    private(set) var identities: [Identity] = []
    /// For `unique_count`, a delta's value is already the number of its new distinct values.
    private(set) var deltas: [UsageKey: WindowDelta] = [:]
    /// How many distinct values the deltas hold, new to their windows.
    private var newDistinctValues = 0
    /// The deltas once `seal` has moved them out of `deltas`.
    private var sealedDeltas: [(key: UsageKey, value: WindowDelta)] = []
    private var stats: [StatsKey: EventStats] = [:]
    private(set) var rejections: [RejectedInput] = []

    var isEmpty: Bool { identities.isEmpty && windows == 0 && stats.isEmpty && rejections.isEmpty }

    /// Windows with a delta.
    var windows: Int { deltas.count + sealedDeltas.count }

    /// Moves the deltas from their hash table into a plain list, about half the memory, for
    /// effects that only wait to be written: nothing may be added afterwards.
    mutating func seal() {
        precondition(sealedDeltas.isEmpty, "effects are sealed once")
        sealedDeltas = deltas.map { ($0.key, $0.value) }
        deltas = [:]
    }

    /// Makes room for this many windows at once, rather than growing the hash table (and
    /// holding its old and new storage) step by step.
    mutating func reserveWindows(_ windows: Int) {
        deltas.reserveCapacity(windows)
    }

    /// Decides which of the batch's events are new, recording their identities and distinct
    /// values in `dedupe`, and adds what they add, in batch order.
    mutating func add(_ batch: SinkBatch, deciding dedupe: inout BatchDedupe) {
        precondition(sealedDeltas.isEmpty, "effects are added to before they are sealed")
        var uniqueCountWindows: Set<UsageKey> = []
        /// Merges a row into its window's delta, in place.
        func addDelta(_ row: UsageRow) {
            let key = UsageKey(row)
            var delta = WindowDelta(row)
            if row.aggregation == .uniqueCount {
                // Its value is the number of its new distinct values, counted below.
                delta.value = 0
                uniqueCountWindows.insert(key)
            }
            if let index = deltas.index(forKey: key) { deltas.values[index].merge(delta) } else { deltas[key] = delta }
        }
        for row in batch.usage { addDelta(row) }
        for event in batch.events {
            let time = microseconds(event.time)
            if dedupe.recordIdentity(Digest.identity(source: event.source, id: event.id), time: time, of: event.tenant) {
                identities.append(Identity(tenant: event.tenant, source: event.source, id: event.id, timeMicroseconds: time))
                for row in event.usage { addDelta(row) }
                stats[StatsKey(tenant: event.tenant, time: event.time), default: EventStats()].counted += 1
            } else {
                stats[StatsKey(tenant: event.tenant, time: event.time), default: EventStats()].deduplicated += 1
            }
        }
        for rejection in batch.rejections {
            switch rejection.kind {
            case .late: stats[StatsKey(tenant: rejection.tenant, time: rejection.time), default: EventStats()].late += 1
            case .invalid: stats[StatsKey(tenant: rejection.tenant, time: rejection.time), default: EventStats()].rejected += 1
            case .meter: break
            }
        }
        rejections += batch.rejections
        owners.merge(dedupe.owners) { earlier, _ in earlier }
        for key in uniqueCountWindows { countNewDistinctValues(of: key, deciding: &dedupe) }
    }

    /// Records the distinct values the window's delta got from the batch that are new to the
    /// window, keeps them to be written and adds their number to its value.
    private mutating func countNewDistinctValues(of key: UsageKey, deciding dedupe: inout BatchDedupe) {
        guard let delta = deltas[key] else { return }
        let windowStart = microseconds(key.windowStart)
        var new: [String] = []
        for value in delta.distinctValues {
            let digest = Digest.distinctValue(
                meter: key.meter, subject: key.subject, windowSize: key.windowSize.rawValue, windowStartMicroseconds: windowStart, groupKey: key.groupKey,
                value: value)
            if dedupe.recordDistinctValue(digest, windowEnd: key.windowSize.latestEnd(ofWindowStartingAt: windowStart), of: key.tenant) {
                new.append(value)
            }
        }
        newDistinctValues += new.count
        deltas[key]?.value += Decimal(new.count)
        deltas[key]?.distinctValues = []
        deltas[key]?.newDistinctValues += new
    }

    /// Writes everything, inside the commit's transaction.
    func write(writeMethod: SinkWriteMethod, _ db: isolated PostgresConnection) throws {
        if !identities.isEmpty { try writeIdentities(db) }
        let windows = deltas.isEmpty ? sealedDeltas : Array(deltas)
        if newDistinctValues > 0 { try writeDistinctValues(of: windows, db) }
        if !windows.isEmpty {
            switch writeMethod {
            case .loggedDeltas: try appendUsageToLog(windows, db)
            case .stagedUpsert: try upsertUsageStaged(windows, db)
            case .pipelinedUpserts: try upsertUsagePipelined(windows, db)
            }
        }
        if !stats.isEmpty { try appendStatsToLog(stats, db) }
        if !rejections.isEmpty { try recordRejections(rejections, db) }
    }

    private func writeIdentities(_ db: isolated PostgresConnection) throws {
        try db.copy(
            into: "tally.event_identities", columns: ["consumer_group", "topic", "partition", "tenant", "source", "event_id", "event_time"],
            rows: identities
        ) { identity, fields in
            appendPartitionFields(of: owners[identity.tenant], to: &fields)
            fields.append(identity.tenant.rawValue)
            fields.append(identity.source)
            fields.append(identity.id)
            fields.append(timestampMicroseconds: identity.timeMicroseconds)
        }
    }

    private func writeDistinctValues(of windows: [(key: UsageKey, value: WindowDelta)], _ db: isolated PostgresConnection) throws {
        // Listed first: most windows have none, and `copy` iterates its rows generically.
        var rows: [(window: UsageKey, value: String)] = []
        rows.reserveCapacity(newDistinctValues)
        for index in windows.indices where !windows[index].value.newDistinctValues.isEmpty {
            for value in windows[index].value.newDistinctValues { rows.append((windows[index].key, value)) }
        }
        try db.copy(
            into: "tally.distinct_values",
            columns: ["consumer_group", "topic", "partition", "tenant", "meter", "subject", "window_size", "window_start", "group_key", "value_key"],
            rows: rows
        ) { entry, fields in
            appendPartitionFields(of: owners[entry.window.tenant], to: &fields)
            fields.append(entry.window.tenant.rawValue)
            fields.append(entry.window.meter)
            fields.append(entry.window.subject)
            fields.append(entry.window.windowSize.rawValue)
            fields.append(timestampMicroseconds: microseconds(entry.window.windowStart))
            fields.append(entry.window.groupKey)
            fields.append(entry.value)
        }
    }
}

/// The consumer group, topic and partition whose dedupe state a row belongs to; NULLs for none.
private func appendPartitionFields(of partition: GroupPartition?, to fields: inout CopyRowWriter) {
    fields.append(partition?.group)
    fields.append(partition?.partition.topic)
    fields.append(partition?.partition.partition)
}

private let usageColumns = "tenant, meter, subject, window_size, window_start, group_key, aggregation, value, total, event_count, first_event_at, last_event_at"

/// Folds a delta into the stored window by the stored row's aggregation.
private let usageMerge = """
    ON CONFLICT (tenant, meter, window_size, window_start, subject, group_key) DO UPDATE SET
        value = CASE u.aggregation
            WHEN 'min' THEN LEAST(u.value, EXCLUDED.value)
            WHEN 'max' THEN GREATEST(u.value, EXCLUDED.value)
            WHEN 'avg' THEN (u.total + EXCLUDED.total) / (u.event_count + EXCLUDED.event_count)
            WHEN 'latest' THEN CASE WHEN EXCLUDED.last_event_at >= u.last_event_at THEN EXCLUDED.value ELSE u.value END
            ELSE u.value + EXCLUDED.value
        END,
        total = u.total + EXCLUDED.total, event_count = u.event_count + EXCLUDED.event_count,
        first_event_at = LEAST(u.first_event_at, EXCLUDED.first_event_at), last_event_at = GREATEST(u.last_event_at, EXCLUDED.last_event_at),
        updated_at = now()
    """

/// Appends the deltas to the usage log, numbered by one commit sequence value.
private func appendUsageToLog(_ deltas: [(key: UsageKey, value: WindowDelta)], _ db: isolated PostgresConnection) throws {
    let commit = try db.query("SELECT nextval('tally.usage_log_commits') AS n")[0].int64("n")!
    try db.copy(
        into: "tally.usage_log",
        columns: [
            "commit_seq", "tenant", "meter", "subject", "window_size", "window_start_us", "group_key", "aggregation", "value", "total",
            "event_count", "first_event_us", "last_event_us",
        ],
        rows: deltas
    ) { window, fields in
        fields.append(commit)
        appendUsageFields(of: window.value, in: window.key, to: &fields)
    }
}

/// The columns of `usageColumns`, times as microseconds since the epoch.
private func appendUsageFields(of delta: WindowDelta, in window: UsageKey, to fields: inout CopyRowWriter) {
    fields.append(window.tenant.rawValue)
    fields.append(window.meter)
    fields.append(window.subject)
    fields.append(window.windowSize.rawValue)
    fields.append(microseconds(window.windowStart))
    fields.append(window.groupKey)
    fields.append(delta.aggregation.rawValue)
    fields.append(delta.value)
    fields.append(delta.total)
    fields.append(delta.eventCount)
    fields.append(microseconds(delta.firstEventAt))
    fields.append(microseconds(delta.lastEventAt))
}

/// The usage log's hash partitions by tenant, `tally.usage_log_0` up to this count less one
/// (control migration 10).
let usageLogPartitions = 32

/// Moves the rows of `tenants` (all when nil) in the event stats log into the event stats,
/// summed per tenant-day.
func foldStatsLog(tenants: [TenantID]?, _ db: isolated PostgresConnection) throws {
    try db.query(
        """
        WITH moved AS (
            DELETE FROM tally.event_stats_log \(tenantSelection(tenants)) RETURNING *
        )
        INSERT INTO tally.event_stats AS s (tenant, day, counted, deduplicated, late, rejected)
        SELECT tenant, date '1970-01-01' + epoch_day, sum(counted), sum(deduplicated), sum(late), sum(rejected)
        FROM moved
        GROUP BY tenant, epoch_day
        ON CONFLICT (tenant, day) DO UPDATE SET
            counted = s.counted + EXCLUDED.counted, deduplicated = s.deduplicated + EXCLUDED.deduplicated,
            late = s.late + EXCLUDED.late, rejected = s.rejected + EXCLUDED.rejected, updated_at = now()
        """, tenants.map { [tenantList($0)] } ?? [])
}

/// Moves the deltas of `tenants` (all when nil) in one partition of the usage log into the
/// keyed usage tables: merged per window first, then upserted with the same merge as a
/// commit's, in one statement. Returns the number of log rows moved.
func foldUsageLog(partition: Int, tenants: [TenantID]?, _ db: isolated PostgresConnection) throws -> Int64 {
    try db.query(
        """
        WITH moved AS (
            DELETE FROM tally.usage_log_\(partition) \(tenantSelection(tenants)) RETURNING *
        ), merged AS (
            SELECT tenant, meter, subject, window_size, window_start_us, group_key, min(aggregation) AS aggregation,
                   CASE min(aggregation)
                       WHEN 'min' THEN min(value)
                       WHEN 'max' THEN max(value)
                       WHEN 'avg' THEN sum(total) / sum(event_count)
                       WHEN 'latest' THEN (array_agg(value ORDER BY last_event_us DESC, commit_seq DESC) FILTER (WHERE aggregation = 'latest'))[1]
                       ELSE sum(value)
                   END AS value,
                   sum(total) AS total, sum(event_count) AS event_count, min(first_event_us) AS first_event_us,
                   max(last_event_us) AS last_event_us
            FROM moved
            GROUP BY tenant, meter, subject, window_size, window_start_us, group_key
        ), folded AS (
            INSERT INTO tally.usage AS u (\(usageColumns))
            SELECT tenant, meter, subject, window_size, 'epoch'::timestamptz + window_start_us * interval '1 microsecond', group_key,
                   aggregation, value, total, event_count, 'epoch'::timestamptz + first_event_us * interval '1 microsecond',
                   'epoch'::timestamptz + last_event_us * interval '1 microsecond'
            FROM merged
            \(usageMerge)
        )
        SELECT count(*) AS n FROM moved
        """, tenants.map { [tenantList($0)] } ?? [])[0].int64("n") ?? 0
}

/// `WHERE` for the rows of `tenants`, passed as `$1`; nothing for all tenants.
private func tenantSelection(_ tenants: [TenantID]?) -> String {
    tenants == nil ? "" : "WHERE tenant = ANY(string_to_array($1, ','))"
}

/// The tenants with rows in one partition of the usage log, or in the stats log when `partition` is nil.
func tenantsInLog(partition: Int?, _ db: isolated PostgresConnection) throws -> [TenantID] {
    let log = partition.map { "tally.usage_log_\($0)" } ?? "tally.event_stats_log"
    return try db.query("SELECT DISTINCT tenant FROM \(log) ORDER BY tenant").map { try tenantID(in: $0, column: "tenant") }
}

/// Tenants as one text parameter `$n`, for `tenant = ANY(string_to_array($n, ','))`
/// (validated tenant ids hold no commas).
func tenantList(_ tenants: some Sequence<TenantID>) -> PostgresParameter {
    .text(tenants.map(\.rawValue).joined(separator: ","))
}

/// The tenant id in `column` of a row, refused unless valid.
func tenantID(in row: PostgresRow, column: String) throws -> TenantID {
    do { return try TenantID(try row.string(column) ?? "") } catch { throw SinkError.invalidTenant("\(error)") }
}

/// Stages the deltas with COPY, then upserts them all in one statement; Postgres routes each
/// row to its tenant's partition. Times travel as integer microseconds since the epoch, exact
/// and cheap to format; an average's value is its total over its count, divided by Postgres.
private func upsertUsageStaged(_ deltas: [(key: UsageKey, value: WindowDelta)], _ db: isolated PostgresConnection) throws {
    try db.execute(
        """
        CREATE TEMP TABLE IF NOT EXISTS sink_usage (
            tenant text, meter text, subject text, window_size text, window_start_us bigint, group_key text, aggregation text,
            value numeric, total numeric, event_count bigint, first_event_us bigint, last_event_us bigint
        ) ON COMMIT DELETE ROWS
        """)
    try db.copy(
        into: "sink_usage",
        columns: [
            "tenant", "meter", "subject", "window_size", "window_start_us", "group_key", "aggregation", "value", "total", "event_count",
            "first_event_us", "last_event_us",
        ],
        rows: deltas
    ) { window, fields in
        appendUsageFields(of: window.value, in: window.key, to: &fields)
    }
    try db.execute(
        """
        INSERT INTO tally.usage AS u (\(usageColumns))
        SELECT tenant, meter, subject, window_size, 'epoch'::timestamptz + window_start_us * interval '1 microsecond', group_key,
               aggregation, CASE aggregation WHEN 'avg' THEN total / event_count ELSE value END, total, event_count,
               'epoch'::timestamptz + first_event_us * interval '1 microsecond', 'epoch'::timestamptz + last_event_us * interval '1 microsecond'
        FROM sink_usage
        \(usageMerge)
        """)
}

/// Upserts delta by delta through one prepared statement in pipeline mode.
private func upsertUsagePipelined(_ deltas: [(key: UsageKey, value: WindowDelta)], _ db: isolated PostgresConnection) throws {
    try db.pipeline(
        """
        INSERT INTO tally.usage AS u (\(usageColumns))
        VALUES ($1, $2, $3, $4, $5, $6, $7, CASE $7::text WHEN 'avg' THEN $9::numeric / $10::bigint ELSE $8::numeric END, $9, $10, $11, $12)
        \(usageMerge)
        """,
        parameterSets: deltas.lazy.map { window, delta in
            [
                .text(window.tenant.rawValue), .text(window.meter), .text(window.subject), .text(window.windowSize.rawValue), .timestamptz(window.windowStart),
                .text(window.groupKey), .text(delta.aggregation.rawValue), .numeric("\(delta.value)"), .numeric("\(delta.total)"), .int64(delta.eventCount),
                .timestamptz(delta.firstEventAt), .timestamptz(delta.lastEventAt),
            ]
        })
}

/// Appends the batch's stats per tenant-day to the stats log, folded with the usage log.
private func appendStatsToLog(_ stats: [StatsKey: EventStats], _ db: isolated PostgresConnection) throws {
    try db.copy(into: "tally.event_stats_log", columns: ["tenant", "epoch_day", "counted", "deduplicated", "late", "rejected"], rows: stats) {
        entry, fields in
        fields.append(entry.key.tenant.rawValue)
        fields.append(entry.key.day)
        fields.append(entry.value.counted)
        fields.append(entry.value.deduplicated)
        fields.append(entry.value.late)
        fields.append(entry.value.rejected)
    }
}

private func recordRejections(_ rejections: [RejectedInput], _ db: isolated PostgresConnection) throws {
    try db.copy(
        into: "tally.rejected_inputs",
        columns: ["tenant", "kind", "meter", "source", "event_id", "event_time", "topic", "partition", "record_offset", "reason"],
        rows: rejections
    ) { rejection, fields in
        fields.append(rejection.tenant.rawValue)
        fields.append(rejection.kind.rawValue)
        fields.append(rejection.meter)
        fields.append(rejection.source)
        fields.append(rejection.eventID)
        fields.append(timestampMicroseconds: microseconds(rejection.time))
        fields.append(rejection.partition.topic)
        fields.append(rejection.partition.partition)
        fields.append(rejection.offset)
        fields.append(rejection.reason)
    }
}

/// What a window's deltas add up to: a `UsageRow` without the window's key (`UsageKey`).
struct WindowDelta {
    var aggregation: Aggregation
    var value: Decimal
    var total: Decimal
    var eventCount: Int64
    var firstEventAt: Date
    var lastEventAt: Date
    /// For `unique_count`: the values not counted into `value` yet.
    var distinctValues: Set<String>
    /// For `unique_count`: the values counted into `value`, new to the window.
    var newDistinctValues: [String] = []

    init(_ row: UsageRow) {
        (aggregation, value, total, eventCount) = (row.aggregation, row.value, row.total, row.eventCount)
        (firstEventAt, lastEventAt, distinctValues) = (row.firstEventAt, row.lastEventAt, row.distinctValues)
    }

    /// Adds `later`, which follows this delta in the log.
    mutating func merge(_ later: WindowDelta) {
        switch aggregation {
        case .min: value = Swift.min(value, later.value)
        case .max: value = Swift.max(value, later.value)
        case .latest: value = later.lastEventAt >= lastEventAt ? later.value : value
        case .uniqueCount:
            distinctValues.formUnion(later.distinctValues)
            newDistinctValues += later.newDistinctValues
            value += later.value
        case .count, .sum, .avg: value += later.value
        }
        total += later.total
        eventCount += later.eventCount
        firstEventAt = Swift.min(firstEventAt, later.firstEventAt)
        lastEventAt = Swift.max(lastEventAt, later.lastEventAt)
    }
}

/// The primary key of a usage window. Its fields are hashed once, when it is made: a merge
/// looks a key up several times, and a growing table rehashes every key it holds.
struct UsageKey: Hashable {
    let tenant: TenantID, meter: String, subject: String, windowSize: UsageRow.WindowSize, windowStart: Date, groupKey: String
    private let fieldsHash: Int

    init(_ row: UsageRow) {
        (tenant, meter, subject, windowSize, windowStart, groupKey) = (row.tenant, row.meter, row.subject, row.windowSize, row.windowStart, row.groupKey)
        var hasher = Hasher()
        hasher.combine(tenant)
        hasher.combine(meter)
        hasher.combine(subject)
        hasher.combine(windowSize)
        hasher.combine(windowStart)
        hasher.combine(groupKey)
        fieldsHash = hasher.finalize()
    }

    func hash(into hasher: inout Hasher) { hasher.combine(fieldsHash) }

    static func == (lhs: UsageKey, rhs: UsageKey) -> Bool {
        lhs.fieldsHash == rhs.fieldsHash && lhs.subject == rhs.subject && lhs.windowStart == rhs.windowStart && lhs.meter == rhs.meter
            && lhs.windowSize == rhs.windowSize && lhs.tenant == rhs.tenant && lhs.groupKey == rhs.groupKey
    }
}

private struct StatsKey: Hashable {
    let tenant: TenantID
    /// Days since 1970-01-01 of the UTC date.
    let day: Int32

    init(tenant: TenantID, time: Date) {
        self.tenant = tenant
        day = Int32((time.timeIntervalSince1970 / 86_400).rounded(.down))
    }
}

private struct EventStats {
    var counted: Int64 = 0, deduplicated: Int64 = 0, late: Int64 = 0, rejected: Int64 = 0
}

/// Microseconds since the epoch, the Sink's exact form of times in COPY data.
func microseconds(_ date: Date) -> Int64 {
    Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
}

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

/// Writes everything of a batch but the offsets, inside the commit's transaction, in this
/// order: event identities (dropping events counted before), distinct values of unique
/// counts, usage deltas merged into their windows, per-day stats, rejections. Identities and
/// distinct values are checked against the dedupe states of the batch's partitions (see `BatchDedupe`).
func writeBatch(_ batch: SinkBatch, writeMethod: SinkWriteMethod, dedupeStates: DedupeStates, _ db: isolated PostgresConnection) throws {
    var stats: [StatsKey: EventStats] = [:]
    var dedupe = try BatchDedupe(for: batch, from: dedupeStates, db)
    var deltas: [UsageKey: UsageRow] = [:]
    /// Merges a row into its window's delta, in batch order; one hash lookup for a new window, the common case.
    func addDelta(_ row: UsageRow) {
        if let earlier = deltas.updateValue(row, forKey: UsageKey(row)) { deltas[UsageKey(row)] = earlier.merged(with: row) }
    }
    let (fresh, repeated) = batch.events.isEmpty ? ([], []) : try recordEventIdentities(batch.events, in: &dedupe, db)
    deltas.reserveCapacity(batch.usage.count + fresh.reduce(0) { $0 + $1.usage.count })
    for row in batch.usage { addDelta(row) }
    for event in fresh {
        for row in event.usage { addDelta(row) }
        stats[StatsKey(tenant: event.tenant, time: event.time), default: EventStats()].counted += 1
    }
    for event in repeated { stats[StatsKey(tenant: event.tenant, time: event.time), default: EventStats()].deduplicated += 1 }
    for rejection in batch.rejections {
        switch rejection.kind {
        case .late: stats[StatsKey(tenant: rejection.tenant, time: rejection.time), default: EventStats()].late += 1
        case .invalid: stats[StatsKey(tenant: rejection.tenant, time: rejection.time), default: EventStats()].rejected += 1
        case .meter: break
        }
    }
    if deltas.values.contains(where: { $0.aggregation == .uniqueCount }) { try countNewDistinctValues(&deltas, in: &dedupe, db) }
    dedupe.checkIn(to: dedupeStates)
    if !deltas.isEmpty {
        switch writeMethod {
        case .loggedDeltas: try appendUsageToLog(deltas.values, db)
        case .stagedUpsert: try upsertUsageStaged(Array(deltas.values), db)
        case .pipelinedUpserts: try upsertUsagePipelined(Array(deltas.values), db)
        }
    }
    if !stats.isEmpty { try appendStatsToLog(stats, db) }
    if !batch.rejections.isEmpty { try recordRejections(batch.rejections, db) }
}

/// Splits events into those seen for the first time, now recorded, and repeats (of earlier
/// batches or earlier in this one).
private func recordEventIdentities(
    _ events: [CountedEvent], in dedupe: inout BatchDedupe, _ db: isolated PostgresConnection
) throws -> (fresh: [CountedEvent], repeated: [CountedEvent]) {
    var fresh: [CountedEvent] = []
    var repeated: [CountedEvent] = []
    fresh.reserveCapacity(events.count)
    for event in events {
        if dedupe.recordIdentity(Digest.identity(source: event.source, id: event.id), time: microseconds(event.time), of: event.tenant) {
            fresh.append(event)
        } else {
            repeated.append(event)
        }
    }
    try db.copy(
        into: "tally.event_identities", columns: ["consumer_group", "topic", "partition", "tenant", "source", "event_id", "event_time"],
        rows: fresh
    ) { event, fields in
        appendPartitionFields(of: dedupe.partition(of: event.tenant), to: &fields)
        fields.append(event.tenant.rawValue)
        fields.append(event.source)
        fields.append(event.id)
        fields.append(timestampMicroseconds: microseconds(event.time))
    }
    return (fresh, repeated)
}

/// Records the distinct values of the unique-count deltas new to their windows and sets each
/// delta's value to how many of its values are new.
private func countNewDistinctValues(
    _ deltas: inout [UsageKey: UsageRow], in dedupe: inout BatchDedupe, _ db: isolated PostgresConnection
) throws {
    var new: [(key: UsageKey, value: String)] = []
    var newCounts: [(key: UsageKey, count: Int)] = []
    for (key, row) in deltas where row.aggregation == .uniqueCount {
        let windowStart = microseconds(key.windowStart)
        var newValues = 0
        for value in row.distinctValues {
            let digest = Digest.distinctValue(
                meter: key.meter, subject: key.subject, windowSize: key.windowSize, windowStartMicroseconds: windowStart, groupKey: key.groupKey,
                value: value)
            if dedupe.recordDistinctValue(digest, windowEnd: row.windowSize.latestEnd(ofWindowStartingAt: windowStart), of: key.tenant) {
                newValues += 1
                new.append((key, value))
            }
        }
        newCounts.append((key, newValues))
    }
    for (key, count) in newCounts { deltas[key]?.value = Decimal(count) }
    try db.copy(
        into: "tally.distinct_values",
        columns: ["consumer_group", "topic", "partition", "tenant", "meter", "subject", "window_size", "window_start", "group_key", "value_key"],
        rows: new
    ) { entry, fields in
        let (key, value) = entry
        appendPartitionFields(of: dedupe.partition(of: key.tenant), to: &fields)
        fields.append(key.tenant.rawValue)
        fields.append(key.meter)
        fields.append(key.subject)
        fields.append(key.windowSize)
        fields.append(timestampMicroseconds: microseconds(key.windowStart))
        fields.append(key.groupKey)
        fields.append(value)
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
private func appendUsageToLog(_ rows: some Collection<UsageRow>, _ db: isolated PostgresConnection) throws {
    let commit = try db.query("SELECT nextval('tally.usage_log_commits') AS n")[0].int64("n")!
    try db.copy(
        into: "tally.usage_log",
        columns: [
            "commit_seq", "tenant", "meter", "subject", "window_size", "window_start_us", "group_key", "aggregation", "value", "total",
            "event_count", "first_event_us", "last_event_us",
        ],
        rows: rows
    ) { row, fields in
        fields.append(commit)
        appendUsageFields(of: row, to: &fields)
    }
}

/// The columns of `usageColumns`, times as microseconds since the epoch.
private func appendUsageFields(of row: UsageRow, to fields: inout CopyRowWriter) {
    fields.append(row.tenant.rawValue)
    fields.append(row.meter)
    fields.append(row.subject)
    fields.append(row.windowSize.rawValue)
    fields.append(microseconds(row.windowStart))
    fields.append(row.groupKey)
    fields.append(row.aggregation.rawValue)
    fields.append(row.value)
    fields.append(row.total)
    fields.append(row.eventCount)
    fields.append(microseconds(row.firstEventAt))
    fields.append(microseconds(row.lastEventAt))
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
private func upsertUsageStaged(_ rows: [UsageRow], _ db: isolated PostgresConnection) throws {
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
        rows: rows
    ) { row, fields in
        appendUsageFields(of: row, to: &fields)
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
private func upsertUsagePipelined(_ rows: [UsageRow], _ db: isolated PostgresConnection) throws {
    try db.pipeline(
        """
        INSERT INTO tally.usage AS u (\(usageColumns))
        VALUES ($1, $2, $3, $4, $5, $6, $7, CASE $7::text WHEN 'avg' THEN $9::numeric / $10::bigint ELSE $8::numeric END, $9, $10, $11, $12)
        \(usageMerge)
        """,
        parameterSets: rows.lazy.map { row in
            [
                .text(row.tenant.rawValue), .text(row.meter), .text(row.subject), .text(row.windowSize.rawValue), .timestamptz(row.windowStart),
                .text(row.groupKey), .text(row.aggregation.rawValue), .numeric("\(row.value)"), .numeric("\(row.total)"), .int64(row.eventCount),
                .timestamptz(row.firstEventAt), .timestamptz(row.lastEventAt),
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

extension UsageRow {
    /// This delta followed by `later` in the log, as one delta.
    func merged(with later: UsageRow) -> UsageRow {
        var merged = self
        switch aggregation {
        case .min: merged.value = Swift.min(value, later.value)
        case .max: merged.value = Swift.max(value, later.value)
        case .latest: merged.value = later.lastEventAt >= lastEventAt ? later.value : value
        case .uniqueCount: merged.distinctValues.formUnion(later.distinctValues)
        case .count, .sum, .avg: merged.value = value + later.value
        }
        merged.total = total + later.total
        merged.eventCount = eventCount + later.eventCount
        merged.firstEventAt = Swift.min(firstEventAt, later.firstEventAt)
        merged.lastEventAt = Swift.max(lastEventAt, later.lastEventAt)
        return merged
    }
}

/// The primary key of a usage window.
struct UsageKey: Hashable {
    let tenant: TenantID, meter: String, subject: String, windowSize: String, windowStart: Date, groupKey: String

    init(tenant: TenantID, meter: String, subject: String, windowSize: String, windowStart: Date, groupKey: String) {
        (self.tenant, self.meter, self.subject, self.windowSize, self.windowStart, self.groupKey) = (tenant, meter, subject, windowSize, windowStart, groupKey)
    }

    init(_ row: UsageRow) {
        self.init(
            tenant: row.tenant, meter: row.meter, subject: row.subject, windowSize: row.windowSize.rawValue, windowStart: row.windowStart,
            groupKey: row.groupKey)
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

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
    private var windowTable = WindowTable()
    private var stats: [StatsKey: EventStats] = [:]
    private(set) var rejections: [RejectedInput] = []

    var isEmpty: Bool { identities.isEmpty && windowTable.isEmpty && stats.isEmpty && rejections.isEmpty }

    /// Windows with a delta.
    var windows: Int { windowTable.count }

    /// Drops what only adding needs, for effects that only wait to be written: nothing may be
    /// added afterwards.
    mutating func seal() {
        windowTable.seal()
    }

    /// Makes room for this many windows at once, rather than growing step by step.
    mutating func reserveWindows(_ windows: Int) {
        windowTable.reserveCapacity(windows)
    }

    /// Decides which of the batch's events are new, recording their identities and distinct
    /// values in `dedupe`, and adds what they add, in batch order.
    mutating func add(_ batch: SinkBatch, deciding dedupe: inout BatchDedupe) {
        for row in batch.usage { windowTable.merge(row) }
        for event in batch.events {
            let time = microseconds(event.time)
            if dedupe.recordIdentity(Digest.identity(source: event.source, id: event.id), time: time, of: event.tenant) {
                identities.append(Identity(tenant: event.tenant, source: event.source, id: event.id, timeMicroseconds: time))
                for row in event.usage { windowTable.merge(row) }
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
        windowTable.countNewDistinctValues { tenant, value, windowEnd in dedupe.recordDistinctValue(value, windowEnd: windowEnd, of: tenant) }
    }

    /// Writes everything, inside the commit's transaction.
    func write(writeMethod: SinkWriteMethod, _ db: isolated PostgresConnection) throws {
        if !identities.isEmpty { try writeIdentities(db) }
        if !windowTable.newDistinctValues.isEmpty { try writeDistinctValues(db) }
        if !windowTable.isEmpty {
            switch writeMethod {
            case .loggedDeltas: try appendUsageToLog(windowTable, db)
            case .stagedUpsert: try upsertUsageStaged(windowTable, db)
            case .pipelinedUpserts: try upsertUsagePipelined(windowTable, db)
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

    private func writeDistinctValues(_ db: isolated PostgresConnection) throws {
        let table = windowTable
        try db.copy(
            into: "tally.distinct_values",
            columns: ["consumer_group", "topic", "partition", "tenant", "meter", "subject", "window_size", "window_start", "group_key", "value_key"],
            rows: table.newDistinctValues
        ) { entry, fields in
            let key = table.keys[Int(entry.window)]
            let tenant = table.tenants[key.tenant]
            appendPartitionFields(of: owners[tenant], to: &fields)
            fields.append(tenant.rawValue)
            fields.append(table.meters[key.meter])
            fields.append(table.subjects[key.subject])
            fields.append(key.windowSize.rawValue)
            fields.append(timestampMicroseconds: key.windowStartMicroseconds)
            fields.append(table.groups[key.group])
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
private func appendUsageToLog(_ table: WindowTable, _ db: isolated PostgresConnection) throws {
    let commit = try db.query("SELECT nextval('tally.usage_log_commits') AS n")[0].int64("n")!
    try db.copy(
        into: "tally.usage_log",
        columns: [
            "commit_seq", "tenant", "meter", "subject", "window_size", "window_start_us", "group_key", "aggregation", "value", "total",
            "event_count", "first_event_us", "last_event_us",
        ],
        rows: table.keys.indices
    ) { window, fields in
        fields.append(commit)
        appendUsageFields(ofWindow: window, in: table, to: &fields)
    }
}

/// The columns of `usageColumns` for one window of `table`, times as microseconds since the epoch.
private func appendUsageFields(ofWindow window: Int, in table: WindowTable, to fields: inout CopyRowWriter) {
    let key = table.keys[window], delta = table.deltas[window]
    fields.append(table.tenants[key.tenant].rawValue)
    fields.append(table.meters[key.meter])
    fields.append(table.subjects[key.subject])
    fields.append(key.windowSize.rawValue)
    fields.append(key.windowStartMicroseconds)
    fields.append(table.groups[key.group])
    fields.append(delta.aggregation.rawValue)
    fields.append(delta.value)
    fields.append(delta.total)
    fields.append(delta.eventCount)
    fields.append(delta.firstEventMicroseconds)
    fields.append(delta.lastEventMicroseconds)
}

extension CopyRowWriter {
    /// Appends a `numeric` field.
    fileprivate mutating func append(_ amount: UsageAmount) {
        switch amount {
        case .integer(let value): append(numeric: value)
        case .decimal(let value): append(value)
        }
    }
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
/// commit's, in one statement. Returns the number of log rows moved. A `latest` window takes
/// the value of its delta with the latest event, of the later commit on a tie: the greatest
/// `[last_event_us, commit_seq, value]`, a plain aggregate (an ordered one, as the readers'
/// view uses, sets up a sort for every window).
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
                       WHEN 'latest' THEN (max(ARRAY[last_event_us, commit_seq, value]) FILTER (WHERE aggregation = 'latest'))[3]
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
private func upsertUsageStaged(_ table: WindowTable, _ db: isolated PostgresConnection) throws {
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
        rows: table.keys.indices
    ) { window, fields in
        appendUsageFields(ofWindow: window, in: table, to: &fields)
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
private func upsertUsagePipelined(_ table: WindowTable, _ db: isolated PostgresConnection) throws {
    try db.pipeline(
        """
        INSERT INTO tally.usage AS u (\(usageColumns))
        VALUES ($1, $2, $3, $4, $5, $6, $7, CASE $7::text WHEN 'avg' THEN $9::numeric / $10::bigint ELSE $8::numeric END, $9, $10, $11, $12)
        \(usageMerge)
        """,
        parameterSets: zip(table.keys, table.deltas).lazy.map { key, delta in
            [
                .text(table.tenants[key.tenant].rawValue), .text(table.meters[key.meter]), .text(table.subjects[key.subject]),
                .text(key.windowSize.rawValue), .timestamptz(date(microseconds: key.windowStartMicroseconds)), .text(table.groups[key.group]),
                .text(delta.aggregation.rawValue), .numeric(delta.value.description), .numeric(delta.total.description), .int64(delta.eventCount),
                .timestamptz(date(microseconds: delta.firstEventMicroseconds)), .timestamptz(date(microseconds: delta.lastEventMicroseconds)),
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

/// The time `microseconds` after the epoch.
private func date(microseconds: Int64) -> Date {
    Date(timeIntervalSince1970: Double(microseconds) / 1_000_000)
}

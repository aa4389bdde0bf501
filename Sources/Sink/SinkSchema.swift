/// The Sink's DDL: versioned migrations of the control schema and of each tenant schema.
/// Append new versions; never edit an applied one.
enum SinkSchema {
    /// The control schema holds the tenant registry, partition ownership and the offset store.
    static let control = "tally"

    static let controlMigrations: [(version: Int, sql: String)] = [
        (
            1,
            """
            CREATE TABLE tally.tenants (
                tenant_id      text PRIMARY KEY,
                schema_name    text NOT NULL UNIQUE,
                reader_role    text NOT NULL UNIQUE,
                schema_version integer NOT NULL,
                created_at     timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE tally.partition_owners (
                consumer_group text NOT NULL,
                topic          text NOT NULL,
                partition      integer NOT NULL,
                epoch          bigint NOT NULL,
                acquired_at    timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer_group, topic, partition)
            );
            -- Every tenant's usage, list-partitioned by tenant. Each partition lives in its
            -- tenant's schema as `usage`; readers are granted their partition only.
            CREATE TABLE tally.usage (
                tenant         text NOT NULL,
                meter          text NOT NULL,
                subject        text NOT NULL,
                window_size    text NOT NULL CHECK (window_size IN ('minute', 'hour', 'day', 'month')),
                window_start   timestamptz NOT NULL,
                group_key      text NOT NULL DEFAULT '',
                value          numeric NOT NULL,
                event_count    bigint NOT NULL CHECK (event_count >= 0),
                first_event_at timestamptz NOT NULL,
                last_event_at  timestamptz NOT NULL,
                updated_at     timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (tenant, meter, window_size, window_start, subject, group_key)
            ) PARTITION BY LIST (tenant);
            CREATE TABLE tally.offsets (
                consumer_group text NOT NULL,
                topic          text NOT NULL,
                partition      integer NOT NULL,
                next_offset    bigint NOT NULL CHECK (next_offset >= 0),
                epoch          bigint NOT NULL,
                updated_at     timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer_group, topic, partition)
            );
            """
        ),
        (
            2,
            """
            -- Usage rows are mergeable deltas: `aggregation` says how, `total` keeps sums for avg.
            ALTER TABLE tally.usage
                ADD COLUMN aggregation text NOT NULL DEFAULT 'sum'
                    CHECK (aggregation IN ('count', 'sum', 'min', 'max', 'avg', 'unique_count', 'latest')),
                ADD COLUMN total numeric NOT NULL DEFAULT 0;
            -- Event identities already counted, for deduplication within the horizon.
            CREATE TABLE tally.seen_events (
                tenant     text NOT NULL,
                source     text NOT NULL,
                event_id   text NOT NULL,
                event_time timestamptz NOT NULL,
                PRIMARY KEY (tenant, source, event_id)
            ) PARTITION BY LIST (tenant);
            -- The distinct values behind unique_count windows.
            CREATE TABLE tally.usage_distinct (
                tenant       text NOT NULL,
                meter        text NOT NULL,
                subject      text NOT NULL,
                window_size  text NOT NULL,
                window_start timestamptz NOT NULL,
                group_key    text NOT NULL,
                value_key    text NOT NULL,
                PRIMARY KEY (tenant, meter, window_size, window_start, subject, group_key, value_key)
            ) PARTITION BY LIST (tenant);
            -- Per tenant and UTC day of the event: what happened to the events read.
            CREATE TABLE tally.event_stats (
                tenant       text NOT NULL,
                day          date NOT NULL,
                counted      bigint NOT NULL DEFAULT 0,
                deduplicated bigint NOT NULL DEFAULT 0,
                late         bigint NOT NULL DEFAULT 0,
                rejected     bigint NOT NULL DEFAULT 0,
                updated_at   timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (tenant, day)
            ) PARTITION BY LIST (tenant);
            -- Why inputs were not counted, or not counted by every meter.
            CREATE TABLE tally.rejections (
                tenant        text NOT NULL,
                kind          text NOT NULL CHECK (kind IN ('late', 'invalid', 'meter')),
                meter         text NOT NULL,
                source        text NOT NULL,
                event_id      text NOT NULL,
                event_time    timestamptz NOT NULL,
                topic         text NOT NULL,
                partition     integer NOT NULL,
                record_offset bigint NOT NULL,
                reason        text NOT NULL,
                recorded_at   timestamptz NOT NULL DEFAULT now()
            ) PARTITION BY LIST (tenant);
            """
        ),
        (
            3,
            """
            -- Every event read for the tenant, whatever became of it.
            ALTER TABLE tally.event_stats
                ADD COLUMN received bigint GENERATED ALWAYS AS (counted + deduplicated + late + rejected) STORED;
            """
        ),
        (
            4,
            """
            -- Usage deltas committed but not yet folded into tally.usage. Appended without a key,
            -- so a commit costs about a COPY; `SinkStore.foldUsageLog` moves them into tally.usage.
            -- Times are microseconds since the epoch; `commit_seq` orders deltas of one window.
            CREATE SEQUENCE tally.usage_log_commits;
            CREATE TABLE tally.usage_log (
                commit_seq      bigint NOT NULL,
                tenant          text NOT NULL,
                meter           text NOT NULL,
                subject         text NOT NULL,
                window_size     text NOT NULL CHECK (window_size IN ('minute', 'hour', 'day', 'month')),
                window_start_us bigint NOT NULL,
                group_key       text NOT NULL,
                aggregation     text NOT NULL
                    CHECK (aggregation IN ('count', 'sum', 'min', 'max', 'avg', 'unique_count', 'latest')),
                value           numeric NOT NULL,
                total           numeric NOT NULL,
                event_count     bigint NOT NULL CHECK (event_count >= 0),
                first_event_us  bigint NOT NULL,
                last_event_us   bigint NOT NULL,
                committed_at    timestamptz NOT NULL DEFAULT now(),
                -- What would fail the fold is refused at commit instead.
                CHECK (aggregation <> 'avg' OR event_count > 0)
            );
            -- Every window as readers see it: the folded row merged with the deltas still in the
            -- log, by the window's aggregation (the same merge folding applies), so a fold never
            -- changes what a reader sees.
            CREATE VIEW tally.usage_current AS
            SELECT tenant, meter, subject, window_size, window_start, group_key,
                   min(aggregation) AS aggregation,
                   CASE min(aggregation)
                       WHEN 'min' THEN min(value)
                       WHEN 'max' THEN max(value)
                       WHEN 'avg' THEN sum(total) / sum(event_count)
                       WHEN 'latest' THEN (array_agg(value ORDER BY last_event_at DESC, commit_seq DESC) FILTER (WHERE aggregation = 'latest'))[1]
                       ELSE sum(value)
                   END AS value,
                   sum(total) AS total, sum(event_count)::bigint AS event_count,
                   min(first_event_at) AS first_event_at, max(last_event_at) AS last_event_at, max(updated_at) AS updated_at
            FROM (
                SELECT tenant, meter, subject, window_size, window_start, group_key, aggregation, value, total, event_count,
                       first_event_at, last_event_at, updated_at, 0::bigint AS commit_seq
                FROM tally.usage
                UNION ALL
                SELECT tenant, meter, subject, window_size, 'epoch'::timestamptz + window_start_us * interval '1 microsecond', group_key,
                       aggregation, value, total, event_count, 'epoch'::timestamptz + first_event_us * interval '1 microsecond',
                       'epoch'::timestamptz + last_event_us * interval '1 microsecond', committed_at, commit_seq
                FROM tally.usage_log
            ) AS deltas
            GROUP BY tenant, meter, subject, window_size, window_start, group_key;
            """
        ),
        (
            5,
            """
            -- Per-commit event stats not yet folded into tally.event_stats, appended without a
            -- key like the usage log (an upsert per tenant-day was a commit's costliest part at
            -- small batches); folded together with the usage log.
            -- `epoch_day` is the UTC day as days since 1970-01-01.
            CREATE TABLE tally.event_stats_log (
                tenant       text NOT NULL,
                epoch_day    integer NOT NULL,
                counted      bigint NOT NULL,
                deduplicated bigint NOT NULL,
                late         bigint NOT NULL,
                rejected     bigint NOT NULL,
                committed_at timestamptz NOT NULL DEFAULT now()
            );
            -- Every tenant-day as readers see it: the folded row plus the stats still in the log.
            CREATE VIEW tally.event_stats_current AS
            SELECT tenant, day, sum(counted)::bigint AS counted, sum(deduplicated)::bigint AS deduplicated, sum(late)::bigint AS late,
                   sum(rejected)::bigint AS rejected, max(updated_at) AS updated_at,
                   sum(counted + deduplicated + late + rejected)::bigint AS received
            FROM (
                SELECT tenant, day, counted, deduplicated, late, rejected, updated_at FROM tally.event_stats
                UNION ALL
                SELECT tenant, date '1970-01-01' + epoch_day, counted, deduplicated, late, rejected, committed_at FROM tally.event_stats_log
            ) AS deltas
            GROUP BY tenant, day;
            """
        ),
        (
            6,
            """
            -- A commit writes no tenant partition: Postgres locks every partition a transaction
            -- writes, in one lock table shared by all sessions, and a batch over a few thousand
            -- tenants ran out of it ("out of shared memory"). Event identities, distinct values
            -- and rejections are kept in these keyed tables instead; tenant migration 5 moves
            -- each tenant's rows here and gives the tenant views of them.
            -- The columns, keys and checks of the partitioned tables of migration 2.
            CREATE TABLE tally.event_identities (LIKE tally.seen_events INCLUDING ALL);
            CREATE TABLE tally.distinct_values (LIKE tally.usage_distinct INCLUDING ALL);
            CREATE TABLE tally.rejected_inputs (LIKE tally.rejections INCLUDING ALL);
            CREATE INDEX rejected_inputs_tenant ON tally.rejected_inputs (tenant);
            """
        ),
        (
            7,
            """
            -- Commits check identities and distinct values against in-memory states of the
            -- partitions' owners (Sink `DedupeStates`), which these tables rebuild: their
            -- unique keys, whose index inserts cost more than the rest of a commit, go.
            ALTER TABLE tally.event_identities DROP CONSTRAINT event_identities_pkey;
            ALTER TABLE tally.distinct_values DROP CONSTRAINT distinct_values_pkey;
            """
        ),
        (
            8,
            """
            -- Each identity and distinct value names the consumer group and partition whose
            -- dedupe state it belongs to, so a new owner loads a partition's state at once.
            -- Rows without (from before, or from commits without an owned partition) are looked
            -- up by tenant as tenants come, through the partial indexes.
            ALTER TABLE tally.event_identities ADD COLUMN consumer_group text, ADD COLUMN topic text, ADD COLUMN partition integer;
            ALTER TABLE tally.distinct_values ADD COLUMN consumer_group text, ADD COLUMN topic text, ADD COLUMN partition integer;
            CREATE INDEX event_identities_without_partition ON tally.event_identities (tenant) WHERE partition IS NULL;
            CREATE INDEX distinct_values_without_partition ON tally.distinct_values (tenant) WHERE partition IS NULL;
            """
        ),
        (
            9,
            """
            -- The Sink writes the usage log's window sizes and aggregations from its own enums;
            -- checking them against lists of names cost a quarter of the log's COPY. The checks
            -- that keep the fold's arithmetic defined stay.
            ALTER TABLE tally.usage_log DROP CONSTRAINT usage_log_window_size_check, DROP CONSTRAINT usage_log_aggregation_check;
            """
        ),
        (
            10,
            """
            -- Readers merge the usage log into what they see, and an unindexed log is scanned whole
            -- by every reader's query. Hash-partitioned by tenant, a query for one tenant scans
            -- that tenant's partition only, a thirty-second of the log, so the log may hold more
            -- before a fold (a processor's --max-unfolded-rows) without slowing readers down.
            ALTER TABLE tally.usage_log RENAME TO usage_log_unpartitioned;
            CREATE TABLE tally.usage_log (LIKE tally.usage_log_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
                PARTITION BY HASH (tenant);
            DO $$
            BEGIN
                FOR remainder IN 0..31 LOOP
                    EXECUTE format(
                        'CREATE TABLE tally.usage_log_%s PARTITION OF tally.usage_log FOR VALUES WITH (MODULUS 32, REMAINDER %s)',
                        remainder, remainder);
                END LOOP;
            END $$;
            INSERT INTO tally.usage_log SELECT * FROM tally.usage_log_unpartitioned;
            -- The view of migration 4, over the partitioned log.
            CREATE OR REPLACE VIEW tally.usage_current AS
            SELECT tenant, meter, subject, window_size, window_start, group_key,
                   min(aggregation) AS aggregation,
                   CASE min(aggregation)
                       WHEN 'min' THEN min(value)
                       WHEN 'max' THEN max(value)
                       WHEN 'avg' THEN sum(total) / sum(event_count)
                       WHEN 'latest' THEN (array_agg(value ORDER BY last_event_at DESC, commit_seq DESC) FILTER (WHERE aggregation = 'latest'))[1]
                       ELSE sum(value)
                   END AS value,
                   sum(total) AS total, sum(event_count)::bigint AS event_count,
                   min(first_event_at) AS first_event_at, max(last_event_at) AS last_event_at, max(updated_at) AS updated_at
            FROM (
                SELECT tenant, meter, subject, window_size, window_start, group_key, aggregation, value, total, event_count,
                       first_event_at, last_event_at, updated_at, 0::bigint AS commit_seq
                FROM tally.usage
                UNION ALL
                SELECT tenant, meter, subject, window_size, 'epoch'::timestamptz + window_start_us * interval '1 microsecond', group_key,
                       aggregation, value, total, event_count, 'epoch'::timestamptz + first_event_us * interval '1 microsecond',
                       'epoch'::timestamptz + last_event_us * interval '1 microsecond', committed_at, commit_seq
                FROM tally.usage_log
            ) AS deltas
            GROUP BY tenant, meter, subject, window_size, window_start, group_key;
            DROP TABLE tally.usage_log_unpartitioned;
            """
        ),
    ]

    /// `{schema}` stands for the quoted tenant schema, `{tenant}` for the tenant id as a
    /// quoted literal.
    static let tenantMigrations: [(version: Int, sql: String)] = [
        (1, "CREATE TABLE {schema}.usage PARTITION OF tally.usage FOR VALUES IN ({tenant});"),
        (
            2,
            """
            CREATE TABLE {schema}.seen_events PARTITION OF tally.seen_events FOR VALUES IN ({tenant});
            CREATE TABLE {schema}.usage_distinct PARTITION OF tally.usage_distinct FOR VALUES IN ({tenant});
            CREATE TABLE {schema}.event_stats PARTITION OF tally.event_stats FOR VALUES IN ({tenant});
            CREATE TABLE {schema}.rejections PARTITION OF tally.rejections FOR VALUES IN ({tenant});
            """
        ),
        (
            3,
            """
            -- The tenant's folded windows keep their table; `usage` becomes the view readers
            -- query, which adds the deltas not folded yet.
            ALTER TABLE {schema}.usage RENAME TO usage_folded;
            CREATE VIEW {schema}.usage WITH (security_barrier) AS
                SELECT tenant, meter, subject, window_size, window_start, group_key, aggregation, value, total, event_count,
                       first_event_at, last_event_at, updated_at
                FROM tally.usage_current WHERE tenant = {tenant};
            """
        ),
        (
            4,
            """
            -- Likewise `event_stats` becomes a view adding the stats not folded yet.
            ALTER TABLE {schema}.event_stats RENAME TO event_stats_folded;
            CREATE VIEW {schema}.event_stats WITH (security_barrier) AS
                SELECT tenant, day, counted, deduplicated, late, rejected, updated_at, received
                FROM tally.event_stats_current WHERE tenant = {tenant};
            """
        ),
        (
            5,
            """
            -- The tenant's identities, distinct values and rejections move to the keyed control
            -- tables (control migration 6); its tables become views of its rows there.
            INSERT INTO tally.event_identities (tenant, source, event_id, event_time)
                SELECT tenant, source, event_id, event_time FROM {schema}.seen_events;
            DROP TABLE {schema}.seen_events;
            CREATE VIEW {schema}.seen_events WITH (security_barrier) AS
                SELECT tenant, source, event_id, event_time FROM tally.event_identities WHERE tenant = {tenant};
            INSERT INTO tally.distinct_values (tenant, meter, subject, window_size, window_start, group_key, value_key)
                SELECT tenant, meter, subject, window_size, window_start, group_key, value_key FROM {schema}.usage_distinct;
            DROP TABLE {schema}.usage_distinct;
            CREATE VIEW {schema}.usage_distinct WITH (security_barrier) AS
                SELECT tenant, meter, subject, window_size, window_start, group_key, value_key
                FROM tally.distinct_values WHERE tenant = {tenant};
            INSERT INTO tally.rejected_inputs
                (tenant, kind, meter, source, event_id, event_time, topic, partition, record_offset, reason, recorded_at)
                SELECT tenant, kind, meter, source, event_id, event_time, topic, partition, record_offset, reason, recorded_at
                FROM {schema}.rejections;
            DROP TABLE {schema}.rejections;
            CREATE VIEW {schema}.rejections WITH (security_barrier) AS
                SELECT tenant, kind, meter, source, event_id, event_time, topic, partition, record_offset, reason, recorded_at
                FROM tally.rejected_inputs WHERE tenant = {tenant};
            """
        ),
        (
            6,
            """
            -- Folds update the same windows again and again. A full page leaves an update no room
            -- beside its row, so each was a new row elsewhere plus a new entry in the window key's
            -- index; with 30% of every page kept free most become heap-only (HOT) updates,
            -- the index untouched and the old version pruned in place. Pages filled before keep
            -- their rows; the setting applies to pages written from now on.
            ALTER TABLE {schema}.usage_folded SET (fillfactor = 70);
            ALTER TABLE {schema}.event_stats_folded SET (fillfactor = 70);
            """
        ),
    ]

    static var latestTenantVersion: Int { tenantMigrations.last!.version }
}

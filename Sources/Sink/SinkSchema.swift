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
    ]

    static var latestTenantVersion: Int { tenantMigrations.last!.version }
}

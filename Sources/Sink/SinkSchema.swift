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
        )
    ]

    /// `{schema}` stands for the quoted tenant schema, `{tenant}` for the tenant id as a
    /// quoted literal.
    static let tenantMigrations: [(version: Int, sql: String)] = [
        (1, "CREATE TABLE {schema}.usage PARTITION OF tally.usage FOR VALUES IN ({tenant});")
    ]

    static var latestTenantVersion: Int { tenantMigrations.last!.version }
}

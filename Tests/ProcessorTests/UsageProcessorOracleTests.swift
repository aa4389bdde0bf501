import Foundation
import Kafka
import LocalPostgres
import Postgres
import Sink
import Subprocess
import TestSupport
import Testing

/// The usage processor as real `tally process usage` processes against `tally broker` and a
/// real Postgres, compared row by row with `UsageOracle`.
@Suite(.serialized) struct UsageProcessorOracleTests {
    struct World {
        let oracle: UsageOracle
        /// Set when the broker is librdkafka's mock cluster in this process, for fault injection.
        var cluster: MockCluster? = nil
        let bootstrap: String
        let server: LocalPostgresServer
        let tenantsFile: String
        let metersFile: String
    }

    func withWorld(events: Int, brokerInProcess: Bool = false, _ body: @Sendable (World) async throws -> Void) async throws {
        let oracle = UsageOracle(events: events, tenants: 12, seed: 42)
        let topics = try temporaryFile(
            named: "topics.yaml",
            contents: "topics:\n  - name: events\n    partitions: 4\n    replication_factor: 1\n  - name: events.dlq\n    partitions: 4\n    replication_factor: 1\n")
        let tenantsFile = try temporaryFile(named: "tenants.yaml", contents: oracle.tenantsYAML)
        let metersFile = try temporaryFile(named: "meters.yaml", contents: oracle.metersYAML)
        try await withLocalPostgres { server in
            // The control schema exists from the start, so that `produce` can read the offsets.
            let sink = SinkStore(conninfo: server.connectionString)
            try await sink.prepare()
            await sink.close()
            if brokerInProcess {
                let cluster = try MockCluster(brokers: 1)
                defer { cluster.shutdown() }
                try cluster.createTopic("events", partitions: 4, replicationFactor: 1)
                try cluster.createTopic("events.dlq", partitions: 4, replicationFactor: 1)
                try await body(
                    World(oracle: oracle, cluster: cluster, bootstrap: cluster.bootstrapServers, server: server, tenantsFile: tenantsFile, metersFile: metersFile))
                return
            }
            try await TallyProcess.withBroker(topicsFile: topics, brokers: 1) { bootstrap in
                try await body(World(oracle: oracle, bootstrap: bootstrap, server: server, tenantsFile: tenantsFile, metersFile: metersFile))
            }
        }
    }

    /// Produces part of the oracle's records, in order; unless told otherwise (Postgres is
    /// down), checks that the broker dropped none of them unprocessed.
    func produce(_ records: ArraySlice<ProducerRecord>, _ world: World, checkingRetention: Bool = true) async throws {
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: world.bootstrap, topics: ["events"]))
        let outcomes = await producer.send(Array(records))
        await producer.close()
        #expect(outcomes.allSatisfy { (try? $0.get()) != nil })
        if checkingRetention { try await expectNoRecordDroppedUnprocessed(world) }
    }

    /// librdkafka's mock keeps at most 5 MiB per partition and drops the oldest records beyond
    /// that. None may be gone before the processors committed it.
    func expectNoRecordDroppedUnprocessed(_ world: World) async throws {
        let committed = try await committedOffsets(world)
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: world.bootstrap))
        for partition in Int32(0)..<4 {
            let low = try await admin.watermarks(of: TopicPartition(topic: "events", partition: partition)).low
            #expect(low <= committed[partition] ?? 0, "the mock broker dropped records of events[\(partition)] before they were processed")
        }
        await admin.close()
    }

    /// Produces `records` (the topic's first) in pieces while processors run, each once the
    /// one before is committed, so that the mock broker never holds more than it keeps.
    func produceWhileProcessing(_ records: ArraySlice<ProducerRecord>, _ world: World, piece: Int = 25_000) async throws {
        var start = records.startIndex
        while start < records.endIndex {
            let end = min(start + piece, records.endIndex)
            try await produce(records[start..<end], world)
            try await waitForCommittedRecords(end, world)
            start = end
        }
    }

    /// Waits until some partition changed hands (its owner epoch passed 1).
    func waitForRebalance(_ world: World, timeout: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await highestEpoch(world) >= 2 { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TallyProcess.Failure(description: "no partition changed hands in time")
    }

    /// Runs `tally process usage` while `body` runs; `body` gets the process to signal.
    func withProcessor(
        _ world: World, maxBatch: Int = 2000, options: [String] = [], _ body: (Execution<NoInput, SequenceOutput, DiscardedOutput>) async throws -> Void
    ) async throws {
        _ = try await Subprocess.run(
            .path(TallyProcess.executable),
            arguments: Arguments([
                "process", "usage", "--bootstrap", world.bootstrap, "--postgres", world.server.connectionString, "--tenants", world.tenantsFile,
                "--meters", world.metersFile, "--max-batch", String(maxBatch), "--session-timeout", "6", "--log-level", "warning",
            ] + options),
            input: .none, output: .sequence, error: .discarded
        ) { execution in
            try await body(execution)
            var lines = execution.standardOutput.strings().makeAsyncIterator()
            while try await lines.next() != nil {}
        }
    }

    /// Waits until the Sink's offsets for group `usage` cover `records` records.
    func waitForCommittedRecords(_ records: Int, _ world: World, timeout: Duration = .seconds(180)) async throws {
        let db = try await PostgresConnection.connect(world.server.connectionString)
        defer { Task { await db.close() } }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let committed = try? await db.query("SELECT coalesce(sum(next_offset), 0)::bigint AS n FROM tally.offsets WHERE consumer_group = 'usage'")
            if let committed, try committed[0].int64("n") ?? 0 >= Int64(records) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TallyProcess.Failure(description: "the processors did not commit \(records) records in time")
    }

    /// The highest owner epoch any partition reached: above 1 after a partition changed hands.
    func highestEpoch(_ world: World) async throws -> Int64 {
        let db = try await PostgresConnection.connect(world.server.connectionString)
        let epoch = try await db.query("SELECT max(epoch) AS e FROM tally.partition_owners WHERE consumer_group = 'usage'")[0].int64("e") ?? 0
        await db.close()
        return epoch
    }

    /// Every usage row, stat and dead letter equals the oracle's: the usage and stats readers
    /// see, and the keyed tables once the logs are folded into them.
    func compare(_ world: World) async throws {
        let db = try await PostgresConnection.connect(world.server.connectionString)
        try await compareUsage(in: "tally.usage_current", world, db)
        try await compareStats(in: "tally.event_stats_current", world, db)
        let sink = SinkStore(conninfo: world.server.connectionString)
        try await sink.foldLogs()
        await sink.close()
        #expect(try await db.query("SELECT count(*) AS n FROM tally.usage_log")[0].int64("n") == 0)
        #expect(try await db.query("SELECT count(*) AS n FROM tally.event_stats_log")[0].int64("n") == 0)
        try await compareUsage(in: "tally.usage", world, db)
        try await compareStats(in: "tally.event_stats", world, db)
        await db.close()
        // Dead letters are delivered at least once (a processor killed between sending them and
        // committing sends them again); their original position identifies repeats.
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: world.bootstrap))
        for partition in Int32(0)..<4 {
            #expect(try await admin.watermarks(of: TopicPartition(topic: "events.dlq", partition: partition)).low == 0, "the mock broker dropped dead letters")
        }
        await admin.close()
        let deadLetters = try await readWholeTopic("events.dlq", bootstrap: world.bootstrap)
        let positions = Set(deadLetters.map { "\($0.header("tally.original.partition") ?? "")/\($0.header("tally.original.offset") ?? "")" })
        #expect(positions.count == world.oracle.deadLetters)
        #expect(deadLetters.allSatisfy { ["late", "invalid"].contains($0.header("tally.error.class") ?? "") && $0.header("tally.original.offset") != nil })
    }

    /// The event stats of `table`, summed per tenant, equal the oracle's.
    func compareStats(in table: String, _ world: World, _ db: PostgresConnection) async throws {
        let stats = try await db.query(
            "SELECT tenant, sum(counted)::bigint AS c, sum(deduplicated)::bigint AS d, sum(late)::bigint AS l, sum(rejected)::bigint AS r FROM \(table) GROUP BY tenant")
        var storedStats: [String: UsageOracle.Stats] = [:]
        for row in stats {
            storedStats[try row.string("tenant")!] = UsageOracle.Stats(
                counted: try row.int64("c")!, deduplicated: try row.int64("d")!, late: try row.int64("l")!, rejected: try row.int64("r")!)
        }
        #expect(storedStats == world.oracle.stats, "\(table)")
    }

    /// The usage rows of `relation` equal the oracle's windows.
    func compareUsage(in relation: String, _ world: World, _ db: PostgresConnection) async throws {
        let rows = try await db.query(
            """
            SELECT tenant, meter, subject, window_size, (extract(epoch FROM window_start) * 1000000)::bigint AS start, group_key,
                   value::text AS value, event_count, (extract(epoch FROM first_event_at) * 1000000)::bigint AS first,
                   (extract(epoch FROM last_event_at) * 1000000)::bigint AS last
            FROM \(relation)
            """)
        var actual: [UsageOracle.Key: UsageOracle.Window] = [:]
        for row in rows {
            let key = UsageOracle.Key(
                tenant: try row.string("tenant")!, meter: try row.string("meter")!, subject: try row.string("subject")!, window: try row.string("window_size")!,
                start: try row.int64("start")!, group: try row.string("group_key")!)
            actual[key] = UsageOracle.Window(
                value: Decimal(string: try row.string("value")!)!, total: 0, count: try row.int64("event_count")!, first: try row.int64("first")!,
                last: try row.int64("last")!, distinct: [])
        }
        let expected = world.oracle.expected
        #expect(expected.count > 1_000, "the oracle expects a real workload")
        #expect(actual.count == expected.count, "\(relation) rows: \(actual.count) stored, \(expected.count) expected")
        var mismatches: [String] = []
        for (key, want) in expected {
            guard let got = actual[key] else { mismatches.append("missing \(key)"); continue }
            let valueMatches: Bool
            if world.oracle.aggregations[key.meter] == "avg" {
                let mean = NSDecimalNumber(decimal: want.total).doubleValue / Double(want.count)
                valueMatches = abs(NSDecimalNumber(decimal: got.value).doubleValue - mean) <= 1e-9 * max(1, abs(mean))
            } else {
                valueMatches = got.value == want.value
            }
            if !valueMatches || got.count != want.count || got.first != want.first || got.last != want.last {
                mismatches.append("\(key): stored \(got.value) × \(got.count) [\(got.first), \(got.last)], expected \(want.value) × \(want.count) [\(want.first), \(want.last)]")
            }
        }
        for key in actual.keys where expected[key] == nil { mismatches.append("unexpected \(key)") }
        #expect(mismatches.isEmpty, "\(relation): \(mismatches.count) mismatches, e.g. \(mismatches.prefix(5))")
    }

    @Test func oneProcessorComputesExactlyWhatTheOracleExpects() async throws {
        try await withWorld(events: 300_000) { world in
            try await withProcessor(world) { processor in
                try await produceWhileProcessing(world.oracle.records[...], world)
                try processor.send(signal: .terminate)
            }
            try await compare(world)
        }
    }

    @Test func twoProcessorsWithARebalanceInTheMiddleStayExact() async throws {
        try await withWorld(events: 60_000) { world in
            let records = world.oracle.records
            let half = records.count / 2
            try await produce(records[..<half], world)
            // Both members merge batches of a few polls while a backlog waits.
            try await withProcessor(world, options: ["--merge-records", "3000"]) { first in
                try await waitForCommittedRecords(half, world)
                // A second member joins: the group rebalances in the middle of the stream, and
                // both members read the second half.
                try await withProcessor(world, options: ["--merge-records", "3000"]) { second in
                    try await waitForRebalance(world)
                    try await produce(records[half...], world)
                    try await waitForCommittedRecords(records.count, world)
                    try second.send(signal: .terminate)
                }
                try first.send(signal: .terminate)
            }
            try await compare(world)
        }
    }

    @Test func aProcessorKilledWithSIGKILLAndRestartedStaysExact() async throws {
        try await withWorld(events: 60_000) { world in
            let records = world.oracle.records
            let half = records.count / 2
            try await produce(records[..<half], world)
            // Merged batches of a few polls: the kill falls between merged commits.
            try await withProcessor(world, options: ["--merge-records", "3000"]) { doomed in
                try await waitForCommittedRecords(half / 2, world)
                try await produce(records[half...], world)
                // Killed while it works through the second half: whatever it had not
                // committed is read again by its successor.
                try doomed.send(signal: .kill)
            }
            try await withProcessor(world) { successor in
                try await waitForCommittedRecords(records.count, world)
                try successor.send(signal: .terminate)
            }
            #expect(try await highestEpoch(world) >= 2, "the successor took the partitions over")
            try await compare(world)
        }
    }

    @Test func aBrokerOutageAndAPostgresRestartMidStreamLoseAndDoubleNothing() async throws {
        try await withWorld(events: 20_000, brokerInProcess: true) { world in
            let records = world.oracle.records
            let third = records.count / 3
            try await produce(records[..<third], world)
            try await withProcessor(world) { processor in
                try await waitForCommittedRecords(third / 2, world)
                // The broker goes away for a while (the fault's length, not a synchronisation).
                try world.cluster!.setBrokerDown(1)
                try await Task.sleep(for: .seconds(3))
                try world.cluster!.setBrokerUp(1)
                try await produce(records[third..<(2 * third)], world)
                try await waitForCommittedRecords(third + third / 2, world)
                // Postgres stops hard in the middle of the stream and comes back.
                try await world.server.stop(immediate: true)
                try await produce(records[(2 * third)...], world, checkingRetention: false)
                try await world.server.restart()
                try await expectNoRecordDroppedUnprocessed(world)
                try await waitForCommittedRecords(records.count, world)
                try processor.send(signal: .terminate)
            }
            try await compare(world)
        }
    }

    /// A commit lane that waits for Postgres (here for a lock on its partitions' owner rows,
    /// as a slow commit or a flood would keep it) holds up neither polling nor the other lane:
    /// the other lane's partitions commit everything produced meanwhile, while the waiting
    /// lane's partitions are paused past `--lane-queue-limit`; once the lock goes, every
    /// record commits and the results are exact.
    @Test func aLaneWaitingForPostgresHoldsUpNoOtherLane() async throws {
        try await withWorld(events: 20_000) { world in
            let records = world.oracle.records
            let half = records.count / 2
            try await produce(records[..<half], world)
            try await withProcessor(world, maxBatch: 500, options: ["--commit-lanes", "2", "--lane-queue-limit", "1000"]) { processor in
                try await waitForCommittedRecords(half, world)
                let lock = try await PostgresConnection.connect(world.server.connectionString)
                try await lock.execute("BEGIN")
                // Lane 0 owns partitions 0 and 2; its next commit waits for these rows.
                _ = try await lock.query(
                    "SELECT epoch FROM tally.partition_owners WHERE consumer_group = 'usage' AND topic = 'events' AND partition IN (0, 2) FOR UPDATE")
                let lockedAt = try await committedOffsets(world)
                try await produce(records[half...], world)
                let ends = try await highWatermarks(world)
                #expect((ends[0] ?? 0) > (lockedAt[0] ?? 0) || (ends[2] ?? 0) > (lockedAt[2] ?? 0), "the locked lane has records to wait with")
                let deadline = ContinuousClock.now + .seconds(120)
                while try await committedOffsets(world).filter({ $0.key % 2 == 1 }) != ends.filter({ $0.key % 2 == 1 }) {
                    guard ContinuousClock.now < deadline else {
                        Issue.record("lane 1 did not commit its partitions while lane 0 waited")
                        break
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
                let whileLocked = try await committedOffsets(world)
                #expect(whileLocked[0] == lockedAt[0] && whileLocked[2] == lockedAt[2], "lane 0 committed nothing while it waited")
                try await lock.execute("ROLLBACK")
                await lock.close()
                try await waitForCommittedRecords(records.count, world)
                try processor.send(signal: .terminate)
            }
            try await compare(world)
        }
    }

    /// The Sink's next offset to read of each partition of `events` for group `usage`.
    func committedOffsets(_ world: World) async throws -> [Int32: Int64] {
        let db = try await PostgresConnection.connect(world.server.connectionString)
        var offsets: [Int32: Int64] = [:]
        for row in try await db.query("SELECT partition, next_offset FROM tally.offsets WHERE consumer_group = 'usage' AND topic = 'events'") {
            offsets[Int32(try row.int64("partition")!)] = try row.int64("next_offset")!
        }
        await db.close()
        return offsets
    }

    /// The high watermark of each partition of `events`, leaving out empty ones.
    func highWatermarks(_ world: World) async throws -> [Int32: Int64] {
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: world.bootstrap))
        var ends: [Int32: Int64] = [:]
        for partition in Int32(0)..<4 {
            let high = try await admin.watermarks(of: TopicPartition(topic: "events", partition: partition)).high
            if high > 0 { ends[partition] = high }
        }
        await admin.close()
        return ends
    }

    /// With folds deferred for the whole catch-up, the usage log would take every batch's
    /// deltas until the topic is read; with `--max-unfolded-rows` the processor stops polling
    /// until a fold completes, so the log never holds more than the bound plus what was polled
    /// before the processor saw it passed: in each lane, what it merged in its last round
    /// before it saw the log full, and what waited in its queue (at most `--lane-queue-limit`
    /// and a poll's records). The results stay exact.
    @Test func theUsageLogStaysBoundedWhileFoldsAreDeferred() async throws {
        try await withWorld(events: 30_000) { world in
            let db = try await PostgresConnection.connect(world.server.connectionString)
            // After every statement appending to the log, the most rows it has held so far.
            try await db.execute(
                """
                CREATE TABLE usage_log_peak (log_rows bigint NOT NULL);
                INSERT INTO usage_log_peak VALUES (0);
                CREATE FUNCTION record_usage_log_peak() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    UPDATE usage_log_peak SET log_rows = greatest(log_rows, (SELECT count(*) FROM tally.usage_log));
                    RETURN NULL;
                END $$;
                CREATE TRIGGER record_usage_log_peak AFTER INSERT ON tally.usage_log
                    FOR EACH STATEMENT EXECUTE FUNCTION record_usage_log_peak();
                """)
            try await produce(world.oracle.records[...], world)
            let (bound, maxBatch, lanes, queueLimit) = (10_000, 500, 2, 500)
            try await withProcessor(
                world, maxBatch: maxBatch,
                options: [
                    "--max-unfolded-rows", String(bound), "--fold-deferral-seconds", "3600", "--fold-interval-ms", "100", "--commit-lanes", String(lanes),
                    "--lane-queue-limit", String(queueLimit),
                ]
            ) { processor in
                try await waitForCommittedRecords(world.oracle.records.count, world)
                try processor.send(signal: .terminate)
            }
            let peak = try await db.query("SELECT log_rows FROM usage_log_peak")[0].int64("log_rows")!
            await db.close()
            let rowsPerEvent = UsageOracle.meterSpecs.reduce(0) { $0 + $1.windows.count }
            #expect(peak > 0)
            #expect(peak <= Int64(bound + 2 * lanes * (queueLimit + maxBatch) * rowsPerEvent), "the usage log held \(peak) rows")
            try await compare(world)
        }
    }
}

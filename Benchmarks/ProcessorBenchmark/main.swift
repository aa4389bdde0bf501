import ArgumentParser
import Events
import Foundation
import Kafka
import LocalPostgres
import Postgres
import Sink
import Subprocess
import Synchronization
import Tenancy

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// End to end through `tally process usage`: a pre-filled `events` topic to committed usage
/// rows and on to an empty usage log, every fold done (events/s and the processor's peak RSS),
/// then a steady produce rate with the lag from acknowledgement to committed row.
@main
struct ProcessorBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "processor-benchmark")

    /// Six passes over the subjects, so folds meet windows again as a sustained stream's do.
    @Option(help: "Events in the pre-filled topic.")
    var events = 600_000

    @Option(help: "Partitions of the events topic. librdkafka's mock keeps 5 MiB of record batches a partition (about 50 000 of these events): more events need more partitions.")
    var partitions: Int32 = 12

    @Option(help: "Tenants.")
    var tenants = 1_000

    @Option(help: "Subjects.")
    var subjects = 100_000

    @Option(help: "The processor's --max-batch.")
    var maxBatch = 5_000

    @Option(help: "The processor's --merge-records.")
    var mergeRecords = 200_000

    @Option(help: "The processor's --merge-windows.")
    var mergeWindows = 250_000

    @Option(help: "The processor's --commit-lanes.")
    var commitLanes = 2

    @Option(help: "The processor's --fold-interval-ms.")
    var foldIntervalMs = 1_000

    @Option(help: "The processor's --fold-connections.")
    var foldConnections = 2

    @Option(help: "The processor's --fold-deferral-seconds.")
    var foldDeferralSeconds = 30

    @Option(help: "The processor's --max-unfolded-rows.")
    var maxUnfoldedRows = 4_000_000

    @Option(help: "Postgres shared_buffers, e.g. 1GB; the server's default (128MB) when not given.")
    var sharedBuffers: String?

    @Flag(help: "Load pg_stat_statements and print the statements that took the most Postgres time.")
    var statementStats = false

    @Option(help: "Events per second in the lag run; 0 skips it.")
    var lagRate = 10_000

    @Option(
        help: """
            Milliseconds between the lag run's produce calls (each sends rate × step events). Steps of \
            10 ms cost the mock broker's thread a quarter of a core, enough to make the lag drift.
            """)
    var lagStepMs = 50

    @Option(help: "Seconds of the lag run.")
    var lagSeconds = 60

    func validate() throws {
        guard partitions > 0 else { throw ValidationError("--partitions must be at least 1, not \(partitions)") }
        guard lagStepMs > 0 else { throw ValidationError("--lag-step-ms must be at least 1, not \(lagStepMs)") }
    }

    func run() async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        try cluster.createTopic("events", partitions: partitions, replicationFactor: 3)
        try cluster.createTopic("events.dlq", partitions: 1, replicationFactor: 3)
        print("starting a throwaway Postgres (fsync off) …")
        var settings = sharedBuffers.map { ["shared_buffers = '\($0)'"] } ?? []
        if statementStats { settings += ["shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.track = all"] }
        let server = try await LocalPostgresServer.start(durable: false, settings: settings)
        do {
            try await measure(cluster: cluster, server: server)
        } catch {
            await server.destroy()
            throw error
        }
        await server.destroy()
    }

    private func measure(cluster: MockCluster, server: LocalPostgresServer) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("processor-bench-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let tenantIDs = try (0..<tenants).map { try TenantID("tenant\($0)") }
        try ("tenants:\n" + tenantIDs.map { "  - id: \($0)\n" }.joined()).write(toFile: directory + "/tenants.yaml", atomically: true, encoding: .utf8)
        try ("meters:\n" + tenantIDs.map { tenant in
            """
              - {tenant: \(tenant), name: requests, event_type: api.request, aggregation: count, windows: [hour]}
              - {tenant: \(tenant), name: tokens, event_type: api.request, aggregation: sum, value: tokens, windows: [day]}
              - {tenant: \(tenant), name: max_latency, event_type: api.request, aggregation: max, value: latency_ms, windows: [day]}
              - {tenant: \(tenant), name: users, event_type: api.request, aggregation: unique_count, value: user, windows: [day]}

            """
        }.joined()).write(toFile: directory + "/meters.yaml", atomically: true, encoding: .utf8)

        print("creating \(tenants) tenant schemas through the Sink (not timed) …")
        let sink = SinkStore(conninfo: server.connectionString)
        try await sink.prepare()
        for (index, tenant) in tenantIDs.enumerated() {
            try await sink.ensureTenant(tenant)
            if (index + 1) % 250 == 0 { print("created \(index + 1)/\(tenants)") }
        }
        await sink.close()

        print("pre-filling events with \(events) events over \(tenants) tenants and \(subjects) subjects …")
        // Compressed, as a production topic would be: librdkafka's mock keeps 5 MiB of record
        // batches per partition, which held 150 000 of these events uncompressed over 12 partitions.
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers, properties: ["compression.type": "lz4"]))
        let time = EventTime.now()
        var sent = 0
        while sent < events {
            let chunk = (sent..<min(sent + 50_000, events)).map { Self.record(number: $0, tenants: tenantIDs, subjects: subjects, time: time) }
            let failures = await producer.send(chunk).count { if case .failure = $0 { true } else { false } }
            guard failures == 0 else { throw ValidationError("\(failures) events were not produced") }
            sent += chunk.count
            print("produced \(sent)/\(events)")
        }
        // librdkafka's mock keeps at most 5 MiB per partition and drops the oldest records
        // beyond that: a processor would skip them and look faster than it is.
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: cluster.bootstrapServers))
        for partition in Int32(0)..<partitions where try await admin.watermarks(of: TopicPartition(topic: "events", partition: partition)).low > 0 {
            await admin.close()
            throw ValidationError("the mock broker dropped records of events[\(partition)] (it keeps 5 MiB per partition): use fewer --events")
        }
        await admin.close()

        if statementStats { try await resetStatementStats(server: server) }
        print("running tally process usage over the pre-filled topic …")
        let postgresCPUBefore = Self.postgresCPUSeconds(of: server)
        let (seconds, sustained, folded, processorCPU, postgresCPU, lags, peakRSS) = try await withProcessor(
            cluster: cluster, server: server, directory: directory
        ) { pid in
            let start = ContinuousClock.now
            let firstCommit = try await waitForCommitted(events, server: server) { committed in print("committed \(committed)/\(events)") }
            let seconds = Self.seconds(since: start)
            /// Events after the first commit seen per second since; nil when that commit covered everything already.
            func rateSinceFirstCommit() -> Double? {
                firstCommit.committed < events ? Double(events - firstCommit.committed) / Self.seconds(since: firstCommit.seen) : nil
            }
            let sustained = rateSinceFirstCommit()
            // Every event's usage in the keyed tables, none left in the log: what the processor
            // sustains with its folds.
            try await waitForFoldedLog(server: server)
            let folded = rateSinceFirstCommit()
            let processorCPU = Self.cpuSeconds(of: pid)
            let postgresCPU = Self.postgresCPUSeconds(of: server) - postgresCPUBefore
            var lags: [Double] = []
            if lagRate > 0 {
                print("lag run: \(lagRate) events/s for \(lagSeconds) s …")
                let mockCPUBefore = Self.threadCPUSeconds(named: "rdk:mock")
                lags = try await lagRun(producer: producer, tenants: tenantIDs, server: server, alreadyCommitted: events)
                // librdkafka's mock finds a fetch's records by walking the partition's message
                // sets from the oldest (`rd_kafka_mock_msgset_find`, "FIXME: Maintain an index"),
                // so its CPU grows with every small produce request the run adds.
                print(String(format: "mock broker thread CPU during the lag run: %.1f s", Self.threadCPUSeconds(named: "rdk:mock") - mockCPUBefore))
                // Whether folding kept up: a log that grows through the run would not be sustainable.
                print("usage log rows not folded at the end of the lag run: \(try await Self.usageLogRows(server: server))")
            }
            return (seconds, sustained, folded, processorCPU, postgresCPU, lags, Self.peakRSS(of: pid))
        }
        await producer.close()
        if statementStats { try await printStatementStats(server: server) }
        print(
            "\n| run | events | seconds | events/s | sustained events/s (first commit to last) | sustained events/s, log folded | processor CPU | Postgres CPU | CPU µs per event | processor peak RSS |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(
            "| pre-filled topic | \(events) | \(String(format: "%.1f", seconds)) | \(Int(Double(events) / seconds)) | \(sustained.map { String(Int($0)) } ?? "–") | \(folded.map { String(Int($0)) } ?? "–") | \(String(format: "%.2f", processorCPU)) s | \(String(format: "%.2f", postgresCPU)) s | \(String(format: "%.1f", (processorCPU + postgresCPU) * 1e6 / Double(events))) | \(peakRSS / 1024) MiB |"
        )
        guard !lags.isEmpty else { return }
        let sorted = lags.sorted()
        func percentile(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1000 }
        print("\n| produce rate | events | lag p50 | lag p99 | lag max |")
        print("|---:|---:|---:|---:|---:|")
        print("| \(lagRate)/s | \(sorted.count) | \(String(format: "%.0f", percentile(0.5))) ms | \(String(format: "%.0f", percentile(0.99))) ms | \(String(format: "%.0f", sorted.last! * 1000)) ms |")
        // Lags are in produce order: a steady run has the same p99 in every slice.
        let slice = lagRate * 5
        let slices = stride(from: 0, to: lags.count, by: slice).map { start in
            let part = lags[start..<min(start + slice, lags.count)].sorted()
            return String(format: "%.0f", part[min(part.count - 1, Int(Double(part.count) * 0.99))] * 1000)
        }
        print("\nlag p99 per 5 s of the run, ms: \(slices.joined(separator: ", "))")
    }

    private static func record(number: Int, tenants: [TenantID], subjects: Int, time: EventTime) -> ProducerRecord {
        let tenant = tenants[number % tenants.count]
        let event = UsageEvent(
            id: "e\(number)", source: "/bench", type: "api.request", subject: "customer_\(number % subjects)", time: time, tenant: tenant,
            data: ["tokens": .integer(Int64(number % 1000)), "latency_ms": .integer(Int64(number % 500)), "user": .string("u\(number % 50)")])
        return ProducerRecord(topic: "events", key: Array(tenant.rawValue.utf8), value: event.jsonBytes(), timestampMilliseconds: time.millisecondsSinceEpoch)
    }

    /// Produces at `lagRate` in steps of `lagStepMs`, notes when each step was acknowledged, and when
    /// the Sink's offsets covered it; returns each event's lag in seconds.
    private func lagRun(producer: KafkaProducer, tenants: [TenantID], server: LocalPostgresServer, alreadyCommitted: Int) async throws -> [Double] {
        let acknowledged = AcknowledgementLog()
        let total = lagRate * lagSeconds
        let perStep = max(1, lagRate * lagStepMs / 1000)
        let (lagRate, events, subjects) = (lagRate, events, subjects)
        let producing = Task {
            let start = ContinuousClock.now
            var sent = 0
            while sent < total {
                let due = start + .milliseconds(sent * 1000 / lagRate)
                if due > .now { try await Task.sleep(until: due) }
                let chunk = (sent..<min(sent + perStep, total)).map {
                    Self.record(number: events + $0, tenants: tenants, subjects: subjects, time: .now())
                }
                sent += chunk.count
                let count = sent
                Task {
                    _ = await producer.send(chunk)
                    acknowledged.entries.withLock { $0.append((count, .now)) }
                }
            }
        }
        // Whether folding keeps up: the usage log's rows every 5 s, printed as the run goes.
        let logSamples = Task {
            let db = try await PostgresConnection.connect(server.connectionString)
            var samples: [Int64] = []
            do {
                while true {
                    try await Task.sleep(for: .seconds(5))
                    samples.append(try await db.query("SELECT count(*) AS n FROM tally.usage_log")[0].int64("n") ?? 0)
                    print("lag run: \(samples.count * 5) s, usage log rows not folded: \(samples.last!)")
                }
            } catch is CancellationError {
            } catch {
                await db.close()
                throw error
            }
            await db.close()
            return samples
        }
        var committedAt: [(count: Int, at: ContinuousClock.Instant)] = []
        let db = try await PostgresConnection.connect(server.connectionString)
        while committedAt.last.map({ $0.count < total }) ?? true {
            let committed = Int(try await db.query("SELECT coalesce(sum(next_offset), 0)::bigint AS n FROM tally.offsets")[0].int64("n") ?? 0) - alreadyCommitted
            if committed > (committedAt.last?.count ?? 0) { committedAt.append((committed, .now)) }
            try await Task.sleep(for: .milliseconds(10))
        }
        await db.close()
        try await producing.value
        logSamples.cancel()
        print("usage log rows not folded, every 5 s of the run: \(try await logSamples.value.map(String.init).joined(separator: ", "))")
        let acks = acknowledged.entries.withLock { $0 }.sorted { $0.count < $1.count }
        var lags: [Double] = []
        var commitIndex = 0
        var previous = 0
        for ack in acks {
            while committedAt[commitIndex].count < ack.count { commitIndex += 1 }
            let lag = Self.seconds(ack.at, committedAt[commitIndex].at)
            lags += Array(repeating: max(0, lag), count: ack.count - previous)
            previous = ack.count
        }
        return lags
    }

    private func withProcessor<T: Sendable>(
        cluster: MockCluster, server: LocalPostgresServer, directory: String, _ body: (Int32) async throws -> T
    ) async throws -> T {
        let tally = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("tally").path
        let outcome = try await Subprocess.run(
            .path(FilePath(tally)),
            arguments: [
                "process", "usage", "--bootstrap", cluster.bootstrapServers, "--postgres", server.connectionString, "--tenants",
                directory + "/tenants.yaml", "--meters", directory + "/meters.yaml", "--max-batch", String(maxBatch), "--merge-records", String(mergeRecords), "--merge-windows", String(mergeWindows), "--commit-lanes", String(commitLanes), "--fold-interval-ms", String(foldIntervalMs), "--fold-deferral-seconds", String(foldDeferralSeconds), "--fold-connections", String(foldConnections), "--max-unfolded-rows", String(maxUnfoldedRows),
                "--log-level", "warning",
            ],
            input: .none, output: .discarded, error: .fileDescriptor(.standardError, closeAfterSpawningProcess: false)
        ) { execution in
            let value = try await body(execution.processIdentifier.value)
            try execution.send(signal: .terminate)
            return value
        }
        return outcome.closureResult
    }

    /// Waits until the Sink's offsets cover `count` records. Returns when a commit was first
    /// seen and how many records it covered: the processor's group join (the broker's initial
    /// rebalance delay, 3 s on librdkafka's mock as on Kafka) and first fetches come before it.
    private func waitForCommitted(
        _ count: Int, server: LocalPostgresServer, progress: (Int) -> Void
    ) async throws -> (seen: ContinuousClock.Instant, committed: Int) {
        let db = try await PostgresConnection.connect(server.connectionString)
        var reported = 0
        var firstCommit: (seen: ContinuousClock.Instant, committed: Int)?
        while true {
            // Until the processor prepared the Sink, there is no offsets table: nothing committed.
            let rows = try? await db.query("SELECT coalesce(sum(next_offset), 0)::bigint AS n FROM tally.offsets")
            let committed = Int(try rows?.first?.int64("n") ?? 0)
            if committed > 0, firstCommit == nil { firstCommit = (.now, committed) }
            if committed - reported >= count / 10 || committed >= count {
                reported = committed
                progress(committed)
            }
            if committed >= count { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        await db.close()
        return firstCommit ?? (.now, count)
    }

    private func resetStatementStats(server: LocalPostgresServer) async throws {
        let db = try await PostgresConnection.connect(server.connectionString)
        try await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        _ = try await db.query("SELECT pg_stat_statements_reset()")
        await db.close()
    }

    /// The statements of the processor's run by total execution time, with time per call and row.
    private func printStatementStats(server: LocalPostgresServer) async throws {
        let db = try await PostgresConnection.connect(server.connectionString)
        let rows = try await db.query(
            """
            SELECT round(total_exec_time)::bigint AS total_ms, calls, rows,
                   round((1000 * total_exec_time / greatest(rows, 1))::numeric, 1)::text AS us_per_row,
                   left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query
            FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 12
            """)
        await db.close()
        print("\n| Postgres ms | calls | rows | µs per row | statement |")
        print("|---:|---:|---:|---:|---|")
        for row in rows {
            print("| \(try row.int64("total_ms") ?? 0) | \(try row.int64("calls") ?? 0) | \(try row.int64("rows") ?? 0) | \(try row.string("us_per_row") ?? "") | `\(try row.string("query") ?? "")` |")
        }
    }

    private static func usageLogRows(server: LocalPostgresServer) async throws -> Int64 {
        let db = try await PostgresConnection.connect(server.connectionString)
        let rows = try await db.query("SELECT count(*) AS n FROM tally.usage_log")[0].int64("n") ?? 0
        await db.close()
        return rows
    }

    /// Waits until the usage log is empty, looking every 100 ms and printing about what is left
    /// every 2 s; gives up when twice the deferral limit and the fold interval, and 10 s more,
    /// pass without a partition of the log emptied.
    private func waitForFoldedLog(server: LocalPostgresServer) async throws {
        print("waiting for the processor to fold the usage log …")
        let db = try await PostgresConnection.connect(server.connectionString)
        let patience = Duration.seconds(2 * foldDeferralSeconds + 10) + .milliseconds(2 * foldIntervalMs)
        var deadline = ContinuousClock.now + patience
        var lastReport = ContinuousClock.now
        do {
            // Every event is committed, so a partition found empty stays empty. Each is looked
            // at until then only: a folded partition holds its deleted rows until vacuumed, and
            // looking through them again and again would cost Postgres CPU the run measures.
            var unfolded = try await db.query("SELECT inhrelid::regclass::text AS part FROM pg_inherits WHERE inhparent = 'tally.usage_log'::regclass")
                .map { try $0.string("part")! }
            while !unfolded.isEmpty {
                var stillUnfolded: [String] = []
                for part in unfolded where try await db.query("SELECT EXISTS (SELECT FROM \(part)) AS waiting")[0].bool("waiting") == true {
                    stillUnfolded.append(part)
                }
                if stillUnfolded.count < unfolded.count { deadline = .now + patience }
                unfolded = stillUnfolded
                guard !unfolded.isEmpty else { break }
                guard ContinuousClock.now < deadline else {
                    throw ValidationError("the processor left usage log rows unfolded; is --fold-interval-ms longer than the run?")
                }
                if lastReport.duration(to: .now) >= .seconds(2) {
                    lastReport = .now
                    print("usage log partitions not folded yet: \(unfolded.count)")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        } catch {
            await db.close()
            throw error
        }
        await db.close()
    }

    /// CPU seconds the Postgres server has used so far: the postmaster, its children alive (the
    /// processor's backends among them) and those it has reaped, e.g. autovacuum workers.
    private static func postgresCPUSeconds(of server: LocalPostgresServer) -> Double {
        let pidFile = server.directory.appendingPathComponent("data/postmaster.pid").path
        guard let postmaster = ((try? String(contentsOfFile: pidFile, encoding: .utf8)) ?? "").split(separator: "\n").first.flatMap({ Int32($0) })
        else { return 0 }
        let processes = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
        let children = processes.reduce(0.0) { total, pid in
            let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
            let parent = statFields(stat).dropFirst().first.flatMap { Int32($0) }
            return parent == postmaster ? total + cpuSeconds(inStat: stat) : total
        }
        let postmasterStat = (try? String(contentsOfFile: "/proc/\(postmaster)/stat", encoding: .utf8)) ?? ""
        return children + cpuSeconds(inStat: postmasterStat) + cpuSeconds(inStat: postmasterStat, reapedChildren: true)
    }

    /// CPU seconds (user and system) of this process's threads with the name `name`.
    private static func threadCPUSeconds(named name: String) -> Double {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.reduce(0) { total, task in
            let stat = (try? String(contentsOfFile: "/proc/self/task/\(task)/stat", encoding: .utf8)) ?? ""
            return stat.contains("(\(name))") ? total + cpuSeconds(inStat: stat) : total
        }
    }

    /// User and system CPU seconds the process `pid` has used so far.
    private static func cpuSeconds(of pid: Int32) -> Double {
        cpuSeconds(inStat: (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? "")
    }

    /// User and system CPU seconds of a `/proc/…/stat` line (of its reaped children with
    /// `reapedChildren`), 0 when it cannot be read.
    private static func cpuSeconds(inStat stat: String, reapedChildren: Bool = false) -> Double {
        // utime and stime are the 12th and 13th fields after the command name, cutime and
        // cstime the 14th and 15th, in clock ticks.
        let fields = statFields(stat)
        let first = reapedChildren ? 13 : 11
        guard fields.count > first + 1, let user = Double(fields[first]), let system = Double(fields[first + 1]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The fields of a `/proc/…/stat` line after the command name, which ends with the last ')'.
    private static func statFields(_ stat: String) -> [Substring] {
        guard let end = stat.lastIndex(of: ")") else { return [] }
        return stat[stat.index(after: end)...].split(separator: " ")
    }

    /// VmHWM of a process, in KiB.
    private static func peakRSS(of pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    private static func seconds(since start: ContinuousClock.Instant) -> Double {
        seconds(start, .now)
    }

    private static func seconds(_ from: ContinuousClock.Instant, _ to: ContinuousClock.Instant) -> Double {
        let elapsed = from.duration(to: to)
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
}

/// When each step of the lag run was acknowledged: (events sent so far, instant).
final class AcknowledgementLog: Sendable {
    let entries = Mutex<[(count: Int, at: ContinuousClock.Instant)]>([])
}

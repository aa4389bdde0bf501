import ArgumentParser
import Foundation
import LocalPostgres
import Postgres
import Sink
import Subprocess
import Tenancy

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// Upserts usage rows for many tenants through `SinkStore.commit`, and loads the same rows
/// with a raw `psql \copy` into one table on the same server, in one run.
@main
struct SinkBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sink-benchmark")

    @Option(help: "Result rows in all.")
    var rows = 1_000_000

    @Option(help: "Tenants the rows are spread over.")
    var tenants = 1_000

    @Option(help: "Rows per committed batch.")
    var batchSize = 100_000

    @Option(help: "Write methods to measure, comma-separated: logged, staged, pipelined.")
    var methods = "logged,staged,pipelined"

    func validate() throws {
        let unknown = Set(methods.split(separator: ",").map(String.init)).subtracting(["logged", "staged", "pipelined"])
        guard unknown.isEmpty else { throw ValidationError("--methods: unknown \(unknown.sorted().joined(separator: ", ")); use logged, staged, pipelined") }
    }

    func run() async throws {
        print("starting a throwaway Postgres (fsync off for both contenders)")
        let server = try await LocalPostgresServer.start(durable: false)
        do {
            try await measure(server)
        } catch {
            await server.destroy()
            throw error
        }
        await server.destroy()
    }

    private func measure(_ server: LocalPostgresServer) async throws {
        let tenantIDs = try (0..<tenants).map { try TenantID("tenant\($0)") }
        let sink = SinkStore(conninfo: server.connectionString)
        try await sink.prepare()
        for (index, tenant) in tenantIDs.enumerated() {
            try await sink.ensureTenant(tenant)
            if (index + 1) % 200 == 0 { print("created \(index + 1)/\(tenants) tenant schemas") }
        }
        let start = Date(timeIntervalSince1970: 1_764_288_000)
        let all = (0..<rows).map { index in
            UsageRow(
                tenant: tenantIDs[index % tenants], meter: "api_calls", subject: "customer_\(index / tenants)", windowSize: .hour,
                windowStart: start, value: .integer(Int64(index % 977)), eventCount: Int64(index % 977),
                firstEventAt: start.addingTimeInterval(1), lastEventAt: start.addingTimeInterval(3_599))
        }

        var results: [(writer: String, seconds: Double)] = []
        let chosen = Set(methods.split(separator: ",").map(String.init))
        for (method, name) in [
            (SinkWriteMethod.loggedDeltas, "SinkStore.commit, logged (the default): COPY into the unindexed usage log"),
            (.stagedUpsert, "SinkStore.commit, staged: COPY to a temp table + one INSERT … ON CONFLICT"),
            (.pipelinedUpserts, "SinkStore.commit, pipelined: one prepared INSERT … ON CONFLICT per row, libpq pipeline mode"),
        ] where chosen.contains(Self.shortName(of: method)) {
            let sink = SinkStore(conninfo: server.connectionString, writeMethod: method)
            let cpuBefore = processCPUSeconds()
            let started = ContinuousClock.now
            var committed = 0
            while committed < rows {
                let end = min(committed + batchSize, rows)
                try await sink.commit(SinkBatch(consumerGroup: "bench", positions: [:], usage: Array(all[committed..<end])))
                committed = end
                print("\(method): committed \(committed)/\(rows) rows")
            }
            let commitSeconds = seconds(since: started)
            print("\(method): \(String(format: "%.2f", commitSeconds)) s, of which this process's CPU \(String(format: "%.2f", processCPUSeconds() - cpuBefore)) s")
            results.append(("\(name), \(batchSize)-row batches", commitSeconds))
            if method == .loggedDeltas {
                // The background half of the logged method: merging the log into the keyed
                // tables, off the commit path (processors do it every second).
                print("folding the usage log …")
                let foldStarted = ContinuousClock.now
                let folded = try await sink.foldLogs().usageRowsFolded
                guard folded == rows else { throw ValidationError("folded \(folded) of \(rows) log rows") }
                let foldSeconds = seconds(since: foldStarted)
                results.append(("SinkStore.foldLogs: the logged rows merged into the keyed usage tables, a statement per log part", foldSeconds))
                results.append(("logged commits + fold, end to end", commitSeconds + foldSeconds))
            }
            await sink.close()
            let db = try await PostgresConnection.connect(server.connectionString)
            try await db.execute("TRUNCATE tally.usage, tally.usage_log; CHECKPOINT")
            await db.close()
        }

        // The same rows as COPY text, loaded by psql into one plain table and into one table
        // with the Sink's primary key.
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sink-benchmark-\(UUID().uuidString).tsv")
        // Also in two halves, for two sessions at once: what this machine's two cores can load
        // into a keyed table at most, whoever writes.
        let halves = [0, 1].map { FileManager.default.temporaryDirectory.appendingPathComponent("sink-benchmark-\(UUID().uuidString)-\($0).tsv") }
        var texts = ["", ""]
        for (index, row) in all.enumerated() {
            texts[index * 2 / all.count] += "\(row.tenant.rawValue)\t\(row.meter)\t\(row.subject)\thour\t2025-11-28 00:00:00+00\t\t\(row.value)\t\(row.eventCount)\t2025-11-28 00:00:01+00\t2025-11-28 00:59:59+00\n"
        }
        try (texts[0] + texts[1]).write(to: file, atomically: false, encoding: .utf8)
        for (half, text) in zip(halves, texts) { try text.write(to: half, atomically: false, encoding: .utf8) }
        defer { for path in [file] + halves { try? FileManager.default.removeItem(at: path) } }
        let db = try await PostgresConnection.connect(server.connectionString)
        let columns = """
            tenant text, meter text, subject text, window_size text, window_start timestamptz,
            group_key text, value numeric, event_count bigint, first_event_at timestamptz, last_event_at timestamptz
            """
        try await db.execute(
            """
            CREATE TABLE raw_usage (\(columns));
            CREATE TABLE raw_usage_keyed (\(columns), PRIMARY KEY (tenant, meter, window_size, window_start, subject, group_key));
            CREATE TABLE raw_usage_keyed_twice (LIKE raw_usage_keyed INCLUDING ALL);
            CHECKPOINT;
            """)
        await db.close()
        let baselineName = "psql \\copy into one table without indexes"
        func psqlCopy(into table: String, from path: URL) async throws {
            let result = try await Subprocess.run(
                .path(FilePath("\(LocalPostgresServer.binDirectory)/psql")),
                arguments: ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.connectionString, "-c", "\\copy \(table) FROM '\(path.path)'"],
                output: .discarded, error: .string(limit: 1 << 16))
            guard result.terminationStatus.isSuccess else { throw ValidationError("psql failed: \(result.standardError)") }
        }
        for (table, name) in [("raw_usage", baselineName), ("raw_usage_keyed", "psql \\copy into one table with the Sink's primary key")] {
            print("psql: \\copy into \(table) …")
            let started = ContinuousClock.now
            try await psqlCopy(into: table, from: file)
            results.append((name, seconds(since: started)))
        }
        print("psql: two \\copy sessions at once into raw_usage_keyed_twice …")
        let started = ContinuousClock.now
        async let first: Void = psqlCopy(into: "raw_usage_keyed_twice", from: halves[0])
        async let second: Void = psqlCopy(into: "raw_usage_keyed_twice", from: halves[1])
        _ = try await (first, second)
        results.append(("two psql \\copy sessions at once, half the rows each, into one table with the Sink's primary key", seconds(since: started)))

        let baseline = Double(rows) / results.first { $0.writer == baselineName }!.seconds
        print("\n| writer | rows | seconds | rows/s | ÷ raw COPY (no indexes) |")
        print("|---|---:|---:|---:|---:|")
        for (writer, seconds) in results {
            let rate = Double(rows) / seconds
            print("| \(writer) | \(rows) | \(String(format: "%.2f", seconds)) | \(Int(rate)) | \(String(format: "%.2f", rate / baseline)) |")
        }
    }

    private static func shortName(of method: SinkWriteMethod) -> String {
        switch method {
        case .loggedDeltas: "logged"
        case .stagedUpsert: "staged"
        case .pipelinedUpserts: "pipelined"
        }
    }

    private func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = start.duration(to: .now)
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
}

/// User plus system CPU time of this process (the Postgres server's is not in it).
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}


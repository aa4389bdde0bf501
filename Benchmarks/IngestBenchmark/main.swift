import ArgumentParser
import Events
import Foundation
import Kafka
import Subprocess
import TallySDK
import Tenancy

/// Ingest benchmarks: the Swift SDK against Python's confluent-kafka producing the same events
/// to one embedded cluster, and the HTTP gateway (`tally ingest`) under `wrk`.
@main
struct IngestBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest-benchmark", subcommands: [SDKBenchmark.self, GatewayBenchmark.self])
}

/// The `tally` executable built next to this benchmark.
let tallyExecutable = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("tally").path

/// Sums the high watermarks of a topic: how many records it holds.
func recordCount(of topic: String, partitions: Int32, bootstrap: String) async throws -> Int64 {
    let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: bootstrap))
    var total: Int64 = 0
    for partition in 0..<partitions {
        total += try await admin.watermarks(of: TopicPartition(topic: topic, partition: partition)).high
    }
    await admin.close()
    return total
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

func formatted(_ value: Double) -> String {
    let digits = String(Int(value.rounded()))
    var groups: [Substring] = []
    var end = digits.endIndex
    while end > digits.startIndex {
        let start = digits.index(end, offsetBy: -3, limitedBy: digits.startIndex) ?? digits.startIndex
        groups.insert(digits[start..<end], at: 0)
        end = start
    }
    return groups.joined(separator: " ")
}

struct SDKBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sdk", abstract: "EventProducer batch path vs Python confluent-kafka, same events, same broker.")

    @Option(help: "Events per run.")
    var events = 500_000

    @Option(help: "Runs per contender; the median counts.")
    var runs = 3

    @Option(help: "Events per EventProducer.send call.")
    var batchSize = 500

    @Option(help: "send calls in flight at once; with the batch size, as many events as the producer queue holds.")
    var concurrentBatches = 200

    @Option(help: "Python interpreter with confluent-kafka installed.")
    var python = "python3"

    @Option(help: "The Python contender's script.")
    var script = "Benchmarks/python/produce_events.py"

    func run() async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        print("mock cluster \(cluster.bootstrapServers); \(events) events over 1 000 tenants and 100 000 subjects, \(runs) runs each")
        var swiftRates: [Double] = []
        var pythonRates: [Double] = []
        for run in 1...runs {
            let swiftTopic = "sdk-swift-\(run)"
            try cluster.createTopic(swiftTopic, partitions: 12, replicationFactor: 3)
            let swiftSeconds = try await produceWithSDK(bootstrap: cluster.bootstrapServers, topic: swiftTopic)
            try await verify(swiftTopic, bootstrap: cluster.bootstrapServers)
            swiftRates.append(Double(events) / swiftSeconds)
            print("swift  run \(run): \(formatted(swiftRates.last!)) events/s")

            let pythonTopic = "sdk-python-\(run)"
            try cluster.createTopic(pythonTopic, partitions: 12, replicationFactor: 3)
            let pythonSeconds = try await produceWithPython(bootstrap: cluster.bootstrapServers, topic: pythonTopic)
            try await verify(pythonTopic, bootstrap: cluster.bootstrapServers)
            pythonRates.append(Double(events) / pythonSeconds)
            print("python run \(run): \(formatted(pythonRates.last!)) events/s")
        }
        print("\n| producer | median events/s | runs (events/s) | Swift ÷ this |")
        print("|---|---:|---|---:|")
        for (name, rates) in [("Swift SDK (`EventProducer.send`, batches)", swiftRates), ("Python confluent-kafka", pythonRates)] {
            print("| \(name) | \(formatted(median(rates))) | \(rates.map(formatted).joined(separator: ", ")) | \(String(format: "%.2f", median(swiftRates) / median(rates))) |")
        }
    }

    private func verify(_ topic: String, bootstrap: String) async throws {
        let stored = try await recordCount(of: topic, partitions: 12, bootstrap: bootstrap)
        guard stored == events else { throw ValidationError("\(topic) holds \(stored) records, expected \(events)") }
    }

    /// Builds the events (timed, as Python builds its dicts) and sends them in batches.
    private func produceWithSDK(bootstrap: String, topic: String) async throws -> Double {
        let start = ContinuousClock.now
        var configuration = EventProducerConfiguration(bootstrapServers: bootstrap)
        configuration.topic = topic
        configuration.kafkaProperties = ["linger.ms": "5", "queue.buffering.max.messages": "100000"]
        let producer = try EventProducer(configuration: configuration)
        let tenants = try (0..<1000).map { try TenantID("tenant\($0)") }
        let time = EventTime.now()
        let (events, batchSize, concurrentBatches) = (events, batchSize, concurrentBatches)
        let failures = try await withThrowingTaskGroup(of: Int.self) { group in
            var failures = 0
            var inFlight = 0
            for first in stride(from: 0, to: events, by: batchSize) {
                if inFlight == concurrentBatches {
                    failures += try await group.next() ?? 0
                    inFlight -= 1
                }
                group.addTask {
                    let batch = (first..<min(first + batchSize, events)).map { index in
                        UsageEvent(
                            id: "evt-\(index)", source: "/bench/swift", type: "api.request", subject: "customer-\(index % 100_000)", time: time,
                            tenant: tenants[index % 1000], data: ["tokens": .integer(Int64(index % 1000)), "model": .string("m1")])
                    }
                    return await producer.send(batch).count { if case .failure = $0 { true } else { false } }
                }
                inFlight += 1
            }
            for try await batchFailures in group { failures += batchFailures }
            return failures
        }
        await producer.close()
        guard failures == 0 else { throw ValidationError("\(failures) events failed") }
        let elapsed = start.duration(to: .now)
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    private func produceWithPython(bootstrap: String, topic: String) async throws -> Double {
        let result = try await Subprocess.run(
            .name(python), arguments: [script, "--bootstrap", bootstrap, "--topic", topic, "--events", "\(events)"],
            output: .string(limit: 1 << 16), error: .string(limit: 1 << 20))
        guard result.terminationStatus.isSuccess, let line = result.standardOutput.split(separator: "\n").last,
            let seconds = line.split(separator: " ").last.flatMap({ Double($0) })
        else {
            throw ValidationError("python contender failed: \(result.standardError)")
        }
        return seconds
    }
}

struct GatewayBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway", abstract: "tally ingest under wrk: batches of 100 events over keep-alive connections.")

    @Option(help: "Concurrent keep-alive connections.")
    var connections = 16

    @Option(help: "Seconds of load.")
    var seconds = 20

    @Option(help: "wrk threads.")
    var threads = 2

    @Option(help: "Tenants (one API key each); requests rotate over them.")
    var tenants = 16

    @Option(help: "Path of wrk.")
    var wrk = "/usr/bin/wrk"

    func run() async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        try cluster.createTopic("events", partitions: 12, replicationFactor: 3)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-bench-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let keys = (0..<tenants).map { _ in APIKey.generate() }
        let tenantsFile = directory + "/tenants.yaml"
        try ("tenants:\n" + keys.enumerated().map { index, key in
            "  - id: tenant\(index)\n    api_keys: [\"\(APIKeyHash(hashing: key))\"]\n    rate_limit: { events_per_second: 10000000, burst: 10000000 }\n"
        }.joined()).write(toFile: tenantsFile, atomically: true, encoding: .utf8)
        let script = directory + "/post-batches.lua"
        try luaScript(keys: keys).write(toFile: script, atomically: true, encoding: .utf8)

        print("mock cluster \(cluster.bootstrapServers); starting tally ingest …")
        let (connections, seconds, threads, wrk) = (connections, seconds, threads, wrk)
        let report = try await Subprocess.run(
            .path(.init(tallyExecutable)),
            arguments: ["ingest", "--bootstrap", cluster.bootstrapServers, "--tenants", tenantsFile, "--port", "0", "--log-level", "warning"],
            input: .none, output: .sequence, error: .fileDescriptor(.standardError, closeAfterSpawningProcess: false)
        ) { execution -> String in
            var lines = execution.standardOutput.strings().makeAsyncIterator()
            guard let url = try await lines.next() else { throw ValidationError("tally ingest printed no address") }
            print("gateway \(url); warming up for 3 s …")
            _ = try await Subprocess.run(
                .path(.init(wrk)), arguments: ["-t1", "-c\(connections)", "-d3s", "-s", script, url], output: .discarded, error: .discarded)
            print("wrk -t\(threads) -c\(connections) -d\(seconds)s, 100 events per request …")
            let load = try await Subprocess.run(
                .path(.init(wrk)), arguments: ["-t\(threads)", "-c\(connections)", "-d\(seconds)s", "--latency", "-s", script, url],
                output: .string(limit: 1 << 20), error: .string(limit: 1 << 20))
            try execution.send(signal: .terminate)
            while try await lines.next() != nil {}
            return load.standardOutput + load.standardError
        }
        let output = report.closureResult
        print(output)
        let requestsPerSecond = output.split(separator: "\n").first { $0.hasPrefix("Requests/sec:") }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        let rejected = output.split(separator: "\n").first { $0.contains("Non-2xx") }.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        let stored = try await recordCount(of: "events", partitions: 12, bootstrap: cluster.bootstrapServers)
        print("\n| connections | events/request | requests/s | events/s accepted | non-2xx | events in Kafka |")
        print("|---:|---:|---:|---:|---:|---:|")
        print("| \(connections) | 100 | \(formatted(requestsPerSecond)) | \(formatted(requestsPerSecond * 100)) | \(rejected) | \(formatted(Double(stored))) |")
    }

    /// A wrk script that rotates over the tenants, each with a prepared batch of 100 events.
    private func luaScript(keys: [String]) -> String {
        let time = EventTime.now().description
        let bodies = keys.indices.map { tenant in
            "[" + (0..<100).map { index in
                #"{"specversion":"1.0","id":"evt-\#(tenant)-\#(index)","source":"/bench/wrk","type":"api.request","subject":"customer-\#(index % 10)","time":"\#(time)","tenant":"tenant\#(tenant)","data":{"tokens":\#(index),"model":"m1"}}"#
            }.joined(separator: ",") + "]"
        }
        func lua(_ text: String) -> String { "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        return """
            local keys = {\(keys.map(lua).joined(separator: ","))}
            local bodies = {\(bodies.map(lua).joined(separator: ",\n"))}
            local counter = 0
            request = function()
              counter = counter + 1
              local i = (counter % #keys) + 1
              return wrk.format("POST", "/v1/events", {["Authorization"] = "Bearer " .. keys[i], ["Content-Type"] = "application/cloudevents-batch+json"}, bodies[i])
            end
            done = function(summary, latency, requests)
              io.write(string.format("latency p50 %.2f ms, p99 %.2f ms\\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
            end
            """
    }
}

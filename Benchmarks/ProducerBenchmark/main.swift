import ArgumentParser
import CProducerLoop
import DedicatedThreads
import Foundation
import Kafka

/// Produces the same messages through Tally's Swift producer, the same loop written in C
/// (the ceiling), and `kcat -P`, each run into a fresh embedded mock cluster served by this
/// process, and prints the throughput of each with the ratios. Every contender runs as a
/// process of its own, as kcat must: this executable again, with `--contender`.
@main
struct ProducerBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "producer-benchmark")

    @Option(help: "Messages per run.")
    var messages = 1_000_000

    @Option(help: "Value size in bytes.")
    var valueSize = 100

    @Option(help: "Distinct keys (tenants).")
    var keys = 1_000

    @Option(help: "Runs per contender; the median counts.")
    var runs = 3

    @Option(help: "Records per Swift send call.")
    var batchSize = 10_000

    @Option(help: "Swift send calls in flight at once; with the batch size, matches the C loop's 100 000-message queue.")
    var concurrentBatches = 10

    @Option(help: "Path of kcat; runs without it when missing.")
    var kcat = "/usr/bin/kcat"

    @Option(help: .hidden)
    var contender: String?

    @Option(help: .hidden)
    var bootstrap = ""

    @Option(help: .hidden)
    var topic = ""

    func run() async throws {
        switch contender {
        case "swift":
            return try await produceWithSwift(bootstrap: bootstrap, topic: topic)
        case "c":
            // The C loop blocks, so it runs on a thread of its own, off the Swift pool.
            let loopThread = DedicatedThreadExecutor(name: "c-loop")
            defer { loopThread.shutdown() }
            let (bootstrap, topic, messages, valueSize, keys) = (bootstrap, topic, messages, valueSize, keys)
            let delivered = await loopThread.run { tally_c_produce_loop(bootstrap, topic, messages, valueSize, Int32(keys)) }
            guard delivered == messages else { throw ValidationError("C loop delivered \(delivered) of \(messages)") }
            return
        default:
            break
        }
        print("\(messages) messages of \(valueSize) B over \(keys) keys, \(runs) runs each, each into a fresh mock cluster")
        var results: [(name: String, rates: [Double])] = []

        var swiftRates: [Double] = []
        var cRates: [Double] = []
        var kcatRates: [Double] = []
        let kcatAvailable = FileManager.default.isExecutableFile(atPath: kcat)
        let input = kcatAvailable ? try kcatInput() : ""
        defer { if kcatAvailable { try? FileManager.default.removeItem(atPath: input) } }
        // Each run starts with another contender, so that none always runs first or last.
        let contenders = kcatAvailable ? ["swift", "c", "kcat"] : ["swift", "c"]
        for run in 1...runs {
            let shift = (run - 1) % contenders.count
            for contender in contenders[shift...] + contenders[..<shift] {
                let rate = try await measure("\(contender) run \(run)") { bootstrap, topic in
                    try await runContender(contender, bootstrap: bootstrap, topic: topic, kcatInput: input)
                }
                switch contender {
                case "swift": swiftRates.append(rate)
                case "c": cRates.append(rate)
                default: kcatRates.append(rate)
                }
            }
        }
        results.append(("Swift producer (Tally `Kafka` module)", swiftRates))
        results.append(("C loop over librdkafka (ceiling)", cRates))
        if !kcatRates.isEmpty { results.append(("kcat -P", kcatRates)) }

        let swiftMedian = median(swiftRates)
        print("\n| producer | median msgs/s | runs (msgs/s) | Swift ÷ this |")
        print("|---|---:|---|---:|")
        for (name, rates) in results {
            let runsText = rates.map { String(Int($0)) }.joined(separator: ", ")
            print("| \(name) | \(Int(median(rates))) | \(runsText) | \(String(format: "%.2f", swiftMedian / median(rates))) |")
        }
    }

    /// Starts a mock cluster of 3 brokers with a topic of 12 partitions, times `body` producing
    /// into it, checks that the topic holds exactly the messages produced, and stops the cluster.
    /// A fresh cluster per measurement keeps earlier runs' messages from weighing on later ones.
    private func measure(_ label: String, _ body: (_ bootstrap: String, _ topic: String) async throws -> Void) async throws -> Double {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        let topic = "bench"
        try cluster.createTopic(topic, partitions: 12, replicationFactor: 3)
        let start = ContinuousClock.now
        let (cpuBefore, contenderCPUBefore) = (cpuSeconds(RUSAGE_SELF), cpuSeconds(RUSAGE_CHILDREN))
        try await body(cluster.bootstrapServers, topic)
        let elapsed = start.duration(to: .now)
        let (cpu, contenderCPU) = (cpuSeconds(RUSAGE_SELF) - cpuBefore, cpuSeconds(RUSAGE_CHILDREN) - contenderCPUBefore)
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: cluster.bootstrapServers))
        var stored: Int64 = 0
        for partition in Int32(0)..<12 { stored += try await admin.watermarks(of: TopicPartition(topic: topic, partition: partition)).high }
        await admin.close()
        guard stored == messages else { throw ValidationError("\(label): topic holds \(stored) messages, expected \(messages)") }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rate = Double(messages) / seconds
        print(
            "\(label): \(Int(rate)) msgs/s (\(String(format: "%.2f", seconds)) s, producer CPU \(String(format: "%.2f", contenderCPU)) s, broker CPU \(String(format: "%.2f", cpu)) s)")
        return rate
    }

    /// Several `send` calls in flight at once, each awaiting its delivery reports.
    private func produceWithSwift(bootstrap: String, topic: String) async throws {
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: bootstrap, topics: [topic]))
        let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueSize)
        let keyBytes = (0..<keys).map { Array("tenant_\($0)".utf8) }
        let (messages, batchSize, keys, concurrentBatches) = (messages, batchSize, keys, concurrentBatches)
        let failures = try await withThrowingTaskGroup(of: Int.self) { group in
            var started = 0
            var failures = 0
            func startBatch() {
                let range = started..<min(started + batchSize, messages)
                started = range.upperBound
                group.addTask {
                    // The records of one call share a value buffer and key buffers of their own,
                    // as the C loop reuses its buffers; buffers shared by all calls would make
                    // every retain and release contend for their cache lines across cores.
                    let batchValue = value.withUnsafeBufferPointer(Array.init)
                    let batchKeys = keyBytes.map { $0.withUnsafeBufferPointer(Array.init) }
                    var records: [ProducerRecord] = []
                    records.reserveCapacity(range.count)
                    for index in range { records.append(ProducerRecord(topic: topic, key: batchKeys[index % keys], value: batchValue)) }
                    return await producer.send(records).reduce(0) { count, result in
                        if case .failure = result { count + 1 } else { count }
                    }
                }
            }
            for _ in 0..<concurrentBatches where started < messages { startBatch() }
            while let failed = try await group.next() {
                failures += failed
                if started < messages { startBatch() }
            }
            return failures
        }
        await producer.close()
        guard failures == 0 else { throw ValidationError("\(failures) deliveries failed") }
    }

    /// Runs one contender as a child process and waits for it to succeed.
    private func runContender(_ contender: String, bootstrap: String, topic: String, kcatInput: String) async throws {
        let process = Process()
        if contender == "kcat" {
            process.executableURL = URL(fileURLWithPath: kcat)
            process.arguments = [
                "-P", "-b", bootstrap, "-t", topic, "-K", ":", "-X", "enable.idempotence=true", "-X", "acks=all",
                "-X", "linger.ms=5", "-X", "queue.buffering.max.messages=100000", "-X", "socket.nagle.disable=true", "-l", kcatInput,
            ]
        } else {
            process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            process.arguments = [
                "--contender", contender, "--bootstrap", bootstrap, "--topic", topic, "--messages", "\(messages)", "--value-size", "\(valueSize)",
                "--keys", "\(keys)", "--batch-size", "\(batchSize)", "--concurrent-batches", "\(concurrentBatches)",
            ]
        }
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do { try process.run() } catch { continuation.resume(throwing: error) }
        }
        guard status == 0 else { throw ValidationError("\(contender) exited with \(status)") }
    }

    /// One `key:value` line per message, for `kcat -K : -l`.
    private func kcatInput() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("producer-benchmark-\(UUID().uuidString).txt").path
        let value = String(repeating: "x", count: valueSize)
        var text = ""
        text.reserveCapacity(messages * (valueSize + 16))
        for index in 0..<messages { text += "tenant_\(index % keys):\(value)\n" }
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }

    private func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }
}

/// User plus system CPU time of this process (`RUSAGE_SELF`) or of its finished children.
func cpuSeconds(_ who: __rusage_who) -> Double {
    var usage = rusage()
    getrusage(who.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

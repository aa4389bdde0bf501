@testable import Kafka
import Logging
import Synchronization
import Testing

/// Reads every record of a topic from the beginning, as a fresh group.
func readAll(_ topic: String, bootstrap: String, expecting count: Int) async throws -> [ConsumerRecord] {
    let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(bootstrapServers: bootstrap, groupID: "reader-\(topic)"))
    try await consumer.subscribe([topic])
    let records = try await pollAndCommit(consumer) { $0.count >= count }
    // One more poll: anything beyond `count` would be a duplicate.
    let extra = try await consumer.poll(maxRecords: 1_000, timeout: .milliseconds(500))
    await consumer.close()
    return records + extra
}

/// A producer whose local queue holds only 10 records, on a one-partition topic of its own.
func boundedProducer(topic: String, enqueueTimeout: Duration) throws -> (MockCluster, KafkaProducer) {
    let cluster = try MockCluster(brokers: 1)
    try cluster.createTopic(topic, partitions: 1, replicationFactor: 1)
    let producer = try KafkaProducer(
        configuration: KafkaProducerConfiguration(
            bootstrapServers: cluster.bootstrapServers, properties: ["queue.buffering.max.messages": "10"],
            enqueueTimeout: enqueueTimeout))
    return (cluster, producer)
}

@Suite struct ProducerTests {
    @Test func idempotentProducerDeliversEveryMessageOnceThroughBrokerFaults() async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        try cluster.createTopic("faults", partitions: 3, replicationFactor: 3)
        // librdkafka 2.0.2's mock checks sequence numbers of transactional producers only: a
        // Produce request it appended just before an injected error dropped the connection
        // (losing the response) would be appended again on retry, a duplicate a real broker
        // refuses by sequence number. With one request in flight per connection, a dropped
        // connection never carries an appended request with an unsent response.
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(
                bootstrapServers: cluster.bootstrapServers,
                properties: ["retry.backoff.ms": "20", "max.in.flight.requests.per.connection": "1"]))
        let perBatch = 1_000
        func batch(_ number: Int) -> [ProducerRecord] {
            (0..<perBatch).map { index in
                let sequence = number * perBatch + index
                return ProducerRecord(topic: "faults", key: "k\(sequence % 31)", value: "\(sequence)")
            }
        }
        var results: [Result<DeliveryReport, KafkaError>] = []
        // Leadership errors and timeouts answered by the brokers.
        cluster.injectRequestErrors(.produce, Array(repeating: .notLeaderForPartition, count: 5) + Array(repeating: .requestTimedOut, count: 5))
        results += await producer.send(batch(0))
        // Dropped connections: requests that may or may not have been written, the case
        // that duplicates messages without idempotence.
        cluster.injectRequestErrors(.produce, Array(repeating: .transport, count: 6))
        results += await producer.send(batch(1))
        // A broker away for a while, then back: the outage length is the fault, not a wait for
        // anything to happen.
        try cluster.setBrokerDown(2)
        async let duringOutage = producer.send(batch(2))
        try await Task.sleep(for: .milliseconds(500))
        try cluster.setBrokerUp(2)
        results += await duringOutage
        results += await producer.send(batch(3))
        await producer.close()

        let failures = results.compactMap { if case .failure(let error) = $0 { error } else { nil } }
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        // The log itself holds each record once (a reader could repeat records, the log not).
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: cluster.bootstrapServers))
        var stored: Int64 = 0
        for partition in Int32(0)..<3 { stored += try await admin.watermarks(of: TopicPartition(topic: "faults", partition: partition)).high }
        await admin.close()
        #expect(stored == Int64(4 * perBatch), "records in the log")
        let records = try await readAll("faults", bootstrap: cluster.bootstrapServers, expecting: 4 * perBatch)
        let values = records.map { Int(String(decoding: $0.value!, as: UTF8.self))! }
        #expect(values.count == 4 * perBatch, "duplicates or losses: \(values.count) records")
        #expect(Set(values) == Set(0..<(4 * perBatch)))
        for (_, group) in Dictionary(grouping: records, by: { $0.key! }) {
            let sequences = group.sorted { $0.offset < $1.offset }.map { Int(String(decoding: $0.value!, as: UTF8.self))! }
            #expect(sequences == sequences.sorted())
        }
    }

    @Test func oneCallMixingTopicsPartitionsHeadersAndTimestampsKeepsEveryRecordAsSent() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("mixed-a", partitions: 3, replicationFactor: 1)
        try cluster.createTopic("mixed-b", partitions: 2, replicationFactor: 1)
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers, topics: ["mixed-a"]))
        // Two topics interleaved, with some records carrying headers, timestamps, a fixed
        // partition, no key, or a value of 600 KB.
        let records = (0..<1_500).map { number -> ProducerRecord in
            let topic = number % 400 < 300 ? "mixed-a" : "mixed-b"
            var record = ProducerRecord(topic: topic, key: number % 7 == 0 ? nil : Array("k\(number % 13)".utf8), value: Array("\(number)".utf8))
            if number % 97 == 0 { record.headers = [KafkaHeader(name: "n", value: "\(number)")] }
            if number % 89 == 0 { record.timestampMilliseconds = 1_700_000_000_000 + Int64(number) }
            if number % 53 == 0 { record.partition = 1 }
            if (700..<703).contains(number) { record.value = Array(repeating: UInt8(number % 256), count: 600_000) }
            return record
        }
        let reports = try await producer.send(records).map { try $0.get() }
        await producer.close()
        #expect(zip(records, reports).allSatisfy { $0.topic == $1.topic && ($0.partition == nil || $0.partition == $1.partition) })

        for topic in ["mixed-a", "mixed-b"] {
            let sent = records.indices.filter { records[$0].topic == topic }
            let stored = try await readAll(topic, bootstrap: cluster.bootstrapServers, expecting: sent.count)
            #expect(stored.count == sent.count)
            let byPosition = Dictionary(uniqueKeysWithValues: stored.map { ("\($0.partition)@\($0.offset)", $0) })
            for index in sent {
                let report = reports[index]
                guard let record = byPosition["\(report.partition)@\(report.offset)"] else {
                    Issue.record("record \(index) missing at \(report)")
                    continue
                }
                #expect(record.value == records[index].value)
                #expect(record.key == records[index].key)
                #expect(record.headers == records[index].headers)
                if let timestamp = records[index].timestampMilliseconds { #expect(record.timestampMilliseconds == timestamp) }
            }
        }
    }

    @Test func deliveryReportsCarryPartitionAndOffset() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("reports", partitions: 2, replicationFactor: 1)
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers, topics: ["reports"]))
        let first = try await producer.send(ProducerRecord(topic: "reports", partition: 1, key: nil, value: Array("a".utf8)))
        let second = try await producer.send(ProducerRecord(topic: "reports", partition: 1, key: nil, value: Array("b".utf8)))
        await producer.close()
        #expect(first == DeliveryReport(topic: "reports", partition: 1, offset: 0))
        #expect(second == DeliveryReport(topic: "reports", partition: 1, offset: 1))
    }

    @Test func aRecordNoBrokerAcknowledgesFailsAsNotDeliveredAndTheClientsLogsReachTheLogger() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("unreachable", partitions: 1, replicationFactor: 1)
        try cluster.setBrokerDown(1)
        let logs = CapturedLogs()
        let logger = Logger(label: "test.producer") { _ in logs }
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(
                bootstrapServers: cluster.bootstrapServers, properties: ["message.timeout.ms": "1500", "debug": "msg"], topics: ["unreachable"]),
            logger: logger)
        let results = await producer.send((0..<3).map { ProducerRecord(topic: "unreachable", key: nil, value: "\($0)") })
        await producer.close()
        for result in results {
            guard case .failure(let error) = result else {
                Issue.record("a record was acknowledged by a broker that is down: \(result)")
                continue
            }
            #expect(error.kind == .deliveryFailed || error.kind == .timedOut)
            #expect(error.persistence == .notPersisted)
        }
        // librdkafka's own log lines (here its message debug output) arrive through the producer.
        #expect(logs.messages.contains { $0.contains("unreachable") })
    }

    @Test func flushSendsARecordThatWouldOtherwiseWaitOutALongLinger() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("lingering", partitions: 1, replicationFactor: 1)
        // Unflushed, the record would wait five minutes before it is sent.
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(
                bootstrapServers: cluster.bootstrapServers, properties: ["linger.ms": "300000", "message.timeout.ms": "600000"],
                topics: ["lingering"]))
        let acknowledged = Flag()
        let sender = Task {
            defer { acknowledged.set() }
            return try await producer.send(ProducerRecord(topic: "lingering", key: nil, value: "x"))
        }
        // A flush that runs before the record is enqueued finds nothing to send, so flush until
        // the record is acknowledged; one that waited out the linger would time out instead.
        while !acknowledged.isSet { try await producer.flush(timeout: .seconds(60)) }
        let report = try await sender.value
        await producer.close()
        #expect(report == DeliveryReport(topic: "lingering", partition: 0, offset: 0))
    }

    @Test func deliveryTagsKeepGroupAndIndexApartAndGroupIdsWrapWithinTheirBits() {
        let largest = DeliveryTag(group: UInt64(UInt32.max), index: Int(UInt32.max))
        let read = DeliveryTag(largest.opaque)
        #expect(read.group == UInt64(UInt32.max) && read.index == Int(UInt32.max))
        // After 2^32 - 1 send calls the id starts again at 1 instead of spilling out of its bits.
        #expect(DeliveryTag.group(after: UInt64(UInt32.max)) == 1)
        #expect(DeliveryTag.group(after: 41) == 42)
        #expect(DeliveryTag(nil).group == 0)
    }

    @Test func aFullQueueIsATypedErrorNeverASilentDrop() async throws {
        let (cluster, producer) = try boundedProducer(topic: "bounded", enqueueTimeout: .zero)
        defer { cluster.shutdown() }
        let results = await producer.send((0..<200).map { ProducerRecord(topic: "bounded", key: nil, value: "\($0)") })
        await producer.close()
        let delivered = results.compactMap { try? $0.get() }
        let queueFull = results.compactMap { if case .failure(let error) = $0, error.kind == .queueFull { error } else { nil } }
        #expect(!queueFull.isEmpty)
        #expect(queueFull.allSatisfy { $0.persistence == .notPersisted })
        #expect(delivered.count + queueFull.count == 200)
        let stored = try await readAll("bounded", bootstrap: cluster.bootstrapServers, expecting: delivered.count)
        #expect(stored.count == delivered.count)
    }

    @Test func aFullQueueMakesSendWaitForRoomWithinTheEnqueueTimeout() async throws {
        let (cluster, producer) = try boundedProducer(topic: "waiting", enqueueTimeout: .seconds(60))
        defer { cluster.shutdown() }
        let results = await producer.send((0..<500).map { ProducerRecord(topic: "waiting", key: nil, value: "\($0)") })
        await producer.close()
        #expect(results.map { try? $0.get().offset } == (0..<500).map { Int64($0) })
    }

    @Test(.timeLimit(.minutes(2)))
    func concurrentCallsWaitingOnAFullQueueEachHaveEveryRecordStoredOnceInTheirOrder() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("crowded", partitions: 3, replicationFactor: 1)
        // Room for 100 records: the calls below wait in the owner thread's backlog together, and
        // runs of 36 records fill it partway through a run.
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(
                bootstrapServers: cluster.bootstrapServers, properties: ["queue.buffering.max.messages": "100"],
                enqueueTimeout: .seconds(60), topics: ["crowded"]))
        let calls = await withTaskGroup(of: ([ProducerRecord], [Result<DeliveryReport, KafkaError>]).self) { group in
            for sender in 0..<8 {
                group.addTask {
                    // One key per call (so one partition); every 37th record has a header, which
                    // takes the one-record path between the batched runs.
                    let records = (0..<300).map { number in
                        var record = ProducerRecord(topic: "crowded", key: "sender-\(sender)", value: "\(sender)-\(number)")
                        if number % 37 == 36 { record.headers = [KafkaHeader(name: "n", value: "\(number)")] }
                        return record
                    }
                    return (records, await producer.send(records))
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        await producer.close()

        let stored = try await readAll("crowded", bootstrap: cluster.bootstrapServers, expecting: 8 * 300)
        #expect(stored.count == 8 * 300)
        let valueAt = Dictionary(uniqueKeysWithValues: stored.map { ("\($0.partition)@\($0.offset)", $0.value) })
        for (records, results) in calls {
            let reports = results.compactMap { try? $0.get() }
            #expect(reports.count == records.count, "\(results.first { (try? $0.get()) == nil }.map { "\($0)" } ?? "")")
            #expect(Set(reports.map(\.partition)).count == 1)
            let offsets = reports.map(\.offset)
            #expect(offsets == offsets.sorted() && Set(offsets).count == offsets.count, "the call's records out of order")
            for (record, report) in zip(records, reports) {
                #expect(valueAt["\(report.partition)@\(report.offset)"] == record.value)
            }
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func recordsForATopicNameKafkaRefusesFailWhileTheCallsOtherRecordsAreDelivered() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("fine", partitions: 1, replicationFactor: 1)
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers, topics: ["fine"]))
        // Runs of plain records (one `rd_kafka_produce_batch` call each) and single records with
        // a header, for a topic whose name is longer than Kafka allows, between good ones.
        let tooLong = String(repeating: "t", count: 600)
        let records = (0..<30).map { number in
            var record = ProducerRecord(topic: (10..<20).contains(number) ? tooLong : "fine", key: nil, value: "\(number)")
            if number == 15 || number == 25 { record.headers = [KafkaHeader(name: "n", value: "\(number)")] }
            return record
        }
        let results = await producer.send(records)
        await producer.close()
        for (number, result) in results.enumerated() {
            switch ((10..<20).contains(number), result) {
            case (true, .failure(let error)): #expect(error.persistence == .notPersisted)
            case (false, .success(let report)): #expect(report.topic == "fine")
            default: Issue.record("record \(number): \(result)")
            }
        }
        let stored = try await readAll("fine", bootstrap: cluster.bootstrapServers, expecting: 20)
        #expect(stored.map { String(decoding: $0.value!, as: UTF8.self) } == (Array(0..<10) + Array(20..<30)).map { "\($0)" })
    }

    @Test func sendingAfterCloseFailsAsClosed() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers))
        await producer.close()
        await #expect(throws: KafkaError.self) {
            try await producer.send(ProducerRecord(topic: "any", key: nil, value: "x"))
        }
        let result = await producer.send([ProducerRecord(topic: "any", key: nil, value: "x")])
        #expect(throws: KafkaError.self) { try result[0].get() }
        if case .failure(let error) = result[0] { #expect(error.kind == .closed) }
    }

    @Test func closingWhileOthersSendGivesEveryRecordAnOutcome() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("closing", partitions: 2, replicationFactor: 1)
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers))
        let sent = try await withThrowingTaskGroup(of: [Result<DeliveryReport, KafkaError>].self) { group in
            for sender in 0..<8 {
                group.addTask {
                    var results: [Result<DeliveryReport, KafkaError>] = []
                    for batch in 0..<20 {
                        results += await producer.send((0..<500).map { ProducerRecord(topic: "closing", key: "s\(sender)", value: "\(batch)-\($0)") })
                    }
                    return results
                }
            }
            // Close once the first sender has had every record of a batch answered.
            let first = try await group.next()!
            await producer.close()
            var all = first
            for try await results in group { all += results }
            return all
        }
        #expect(sent.count == 8 * 20 * 500)
        let delivered = sent.compactMap { try? $0.get() }
        let refused = sent.compactMap { if case .failure(let error) = $0 { error } else { nil } }
        #expect(refused.allSatisfy { $0.kind == .closed })
        let stored = try await readAll("closing", bootstrap: cluster.bootstrapServers, expecting: delivered.count)
        #expect(stored.count == delivered.count)
    }

    @Test func invalidPropertiesAreConfigurationErrors() {
        #expect {
            _ = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: "127.0.0.1:1", properties: ["acks": "sometimes"]))
        } throws: { error in
            (error as? KafkaError)?.kind == .configuration && "\(error)".contains("acks")
        }
    }
}

/// A log handler that keeps every message at every level, for tests that look at what was logged.
final class CapturedLogs: LogHandler, Sendable {
    private let lines = Mutex<[String]>([])
    var messages: [String] { lines.withLock { $0 } }

    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    var logLevel: Logger.Level {
        get { .trace }
        set {}
    }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(event: LogEvent) {
        lines.withLock { $0.append("\(event.message)") }
    }
}

/// A flag one task sets and another reads.
final class Flag: Sendable {
    private let value = Atomic(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

import Kafka
import Synchronization
import Testing

/// Records what the consumer's rebalance listener was told.
final class RecordingListener: RebalanceListener {
    let assigned = Mutex<[[TopicPartition]]>([])
    let revoked = Mutex<[[TopicPartition]]>([])
    let startOffsets: [TopicPartition: Int64]

    init(startOffsets: [TopicPartition: Int64] = [:]) { self.startOffsets = startOffsets }

    func partitionsAssigned(_ partitions: [TopicPartition]) async throws -> [TopicPartition: Int64] {
        assigned.withLock { $0.append(partitions) }
        return startOffsets
    }

    func partitionsRevoked(_ partitions: [TopicPartition], lost: Bool) async {
        revoked.withLock { $0.append(partitions) }
    }
}

func produce(_ count: Int, to topic: String, bootstrap: String, keys: Int = 20) async throws {
    let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: bootstrap))
    let results = await producer.send((0..<count).map { ProducerRecord(topic: topic, key: "k\($0 % keys)", value: "\($0)") })
    await producer.close()
    for result in results { _ = try result.get() }
}

/// Produces `counts[partition]` unkeyed records into each partition, valued by their number
/// within it, and checks every one was acknowledged.
func produce(_ counts: [TopicPartition: Int64], bootstrap: String) async throws {
    let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: bootstrap))
    let results = await producer.send(counts.flatMap { partition, count in
        (0..<count).map { ProducerRecord(topic: partition.topic, partition: partition.partition, key: nil, value: Array("\($0)".utf8)) }
    })
    await producer.close()
    for result in results { _ = try result.get() }
}

/// Polls and commits at least once, then until `done(processed)` holds; returns the records
/// whose offsets were committed. A commit refused during a rebalance leaves its batch to be
/// read again by whoever owns the partition next (at-least-once). The deadline only bounds a
/// broken run.
func pollAndCommit(
    _ consumer: KafkaConsumer, deadline: Duration = .seconds(60), until done: ([ConsumerRecord]) async throws -> Bool
) async throws -> [ConsumerRecord] {
    let end = ContinuousClock.now + deadline
    var records: [ConsumerRecord] = []
    repeat {
        guard ContinuousClock.now < end else {
            Issue.record("deadline passed")
            break
        }
        let batch = try await consumer.poll(maxRecords: 200, timeout: .milliseconds(100))
        if try await commitOffsets(of: batch, consumer) { records += batch }
    } while try await !done(records)
    return records
}

/// Commits the offsets after `batch`. When a rebalance refuses the commit, rewinds the
/// partitions this consumer still owns to the start of the batch (a cooperative rebalance
/// keeps their read position) and returns false: the batch will be read again.
func commitOffsets(of batch: [ConsumerRecord], _ consumer: KafkaConsumer) async throws -> Bool {
    var next: [TopicPartition: Int64] = [:]
    var first: [TopicPartition: Int64] = [:]
    for record in batch {
        next[record.topicPartition] = record.offset + 1
        first[record.topicPartition] = min(first[record.topicPartition] ?? .max, record.offset)
    }
    do {
        try await consumer.commit(next)
        return true
    } catch {
        if !error.isCommitRefusedByRebalance { throw error }
    }
    let owned = try await consumer.assignment()
    do {
        try await consumer.seek(first.filter { owned.contains($0.key) })
    } catch {
        // An eager rebalance is taking the partitions away mid-seek: whoever gets them next
        // starts at the committed offset, which is the start of this batch anyway.
        guard error.code == .timedOut else { throw error }
    }
    return false
}

@Suite struct ConsumerGroupTests {
    @Test(arguments: [AssignmentStrategy.cooperativeSticky, .range])
    func membersSplitPartitionsAndTheSurvivorTakesOverWithoutGaps(strategy: AssignmentStrategy) async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        let topic = "rebalance"
        try cluster.createTopic(topic, partitions: 4, replicationFactor: 3)
        try await produce(4_000, to: topic, bootstrap: cluster.bootstrapServers)
        let configuration = KafkaConsumerConfiguration(
            bootstrapServers: cluster.bootstrapServers, groupID: "group-\(strategy.rawValue)", assignmentStrategy: strategy,
            properties: ["session.timeout.ms": "6000", "heartbeat.interval.ms": "500"])
        let listenerA = RecordingListener()
        let consumerA = try KafkaConsumer(configuration: configuration, rebalanceListener: listenerA)
        let consumerB = try KafkaConsumer(configuration: configuration, rebalanceListener: RecordingListener())
        try await consumerA.subscribe([topic])
        try await consumerB.subscribe([topic])

        // Both poll until each owns part of the topic and has read something.
        let bothOwnSomething: @Sendable ([ConsumerRecord]) async throws -> Bool = { _ in
            let ownedByA = try await consumerA.assignment()
            let ownedByB = try await consumerB.assignment()
            return !ownedByA.isEmpty && !ownedByB.isEmpty
        }
        async let readByA = pollAndCommit(consumerA, until: bothOwnSomething)
        let firstByB = try await pollAndCommit(consumerB, until: bothOwnSomething)
        let firstByA = try await readByA
        let ownedByA = try await consumerA.assignment()
        let ownedByB = try await consumerB.assignment()
        #expect(ownedByA.isDisjoint(with: ownedByB))
        #expect(ownedByA.union(ownedByB).count == 4)

        // B reads a little more, commits, and leaves.
        let moreByB = try await pollAndCommit(consumerB) { _ in true }
        await consumerB.close()
        let recordsB = firstByB + moreByB

        // A is handed B's partitions and reads everything that is left.
        let readBefore = firstByA + recordsB
        let restByA = try await pollAndCommit(consumerA) { read in
            try await consumerA.assignment().count == 4 && readBefore.count + read.count >= 4_000
        }
        await consumerA.close()

        let everything = readBefore + restByA
        #expect(everything.count == 4_000, "a committed record was read twice or one was skipped")
        for partition in 0..<4 {
            let offsets = everything.filter { $0.partition == partition }.map(\.offset).sorted()
            #expect(offsets == Array(0..<Int64(offsets.count)), "gap in partition \(partition)")
        }
        let takenOver = listenerA.assigned.withLock { $0 }.dropFirst().flatMap { $0 }
        #expect(Set(takenOver).isSuperset(of: ownedByB), "A was not handed B's partitions")
    }

    @Test func rebalanceListenerChoosesWhereEachPartitionStarts() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("offsets", partitions: 1, replicationFactor: 1)
        try await produce(100, to: "offsets", bootstrap: cluster.bootstrapServers)
        let partition = TopicPartition(topic: "offsets", partition: 0)
        let consumer = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: "chooser"),
            rebalanceListener: RecordingListener(startOffsets: [partition: 60]))
        try await consumer.subscribe(["offsets"])
        let records = try await pollAndCommit(consumer) { $0.count >= 40 }
        #expect(records.first?.offset == 60)
        #expect(records.map(\.offset) == Array(60..<100))
        #expect(try await consumer.committedOffsets(for: [partition]) == [partition: 100])
        await consumer.close()
    }

    /// The backlog is what each assigned partition holds past what `poll` returned: here 100
    /// and 40 records less those polled from each, once a partition has returned any (before,
    /// its position is not known), then none.
    @Test func backlogCountsEachPartitionsRecordsNotPolledYet() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("waiting", partitions: 2, replicationFactor: 1)
        let produced = [TopicPartition(topic: "waiting", partition: 0): Int64(100), TopicPartition(topic: "waiting", partition: 1): 40]
        try await produce(produced, bootstrap: cluster.bootstrapServers)
        let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: "backlog"))
        try await consumer.subscribe(["waiting"])
        #expect(try await consumer.backlog() == [:])
        var polled: [TopicPartition: Int64] = [:]
        func total() -> Int64 { polled.values.reduce(0, +) }
        /// Polls up to 10 records at a time, never past `limit` in all, until `done`.
        func pollUntil(atMost limit: Int64 = 140, _ done: () -> Bool) async throws {
            let deadline = ContinuousClock.now + .seconds(60)
            while !done(), total() < limit, ContinuousClock.now < deadline {
                for record in try await consumer.poll(maxRecords: Int(min(10, limit - total())), timeout: .milliseconds(100)) {
                    polled[TopicPartition(topic: record.topic, partition: record.partition), default: 0] += 1
                }
            }
        }
        func expectedBacklog() -> [TopicPartition: Int64] {
            Dictionary(uniqueKeysWithValues: polled.map { ($0.key, produced[$0.key]! - $0.value) }.filter { $0.1 > 0 })
        }
        try await pollUntil(atMost: 30) { false }
        #expect(total() == 30)
        #expect(try await consumer.backlog() == expectedBacklog())
        try await pollUntil { polled.count == 2 }
        #expect(try await consumer.backlog() == expectedBacklog())
        try await pollUntil { false }
        #expect(polled == produced)
        #expect(try await consumer.backlog() == [:])
        await consumer.close()
    }

    /// The processor pauses a lane's partitions with records fetched but not polled yet: they
    /// are dropped, and fetched again on resume, right after the last record polled.
    @Test func aPartitionPausedMidFetchResumesAfterTheLastRecordPolled() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("midway", partitions: 1, replicationFactor: 1)
        let partition = TopicPartition(topic: "midway", partition: 0)
        try await produce([partition: 1000], bootstrap: cluster.bootstrapServers)
        let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: "midway"))
        try await consumer.subscribe(["midway"])
        var offsets: [Int64] = []
        let deadline = ContinuousClock.now + .seconds(60)
        while offsets.count < 100, ContinuousClock.now < deadline {
            offsets += try await consumer.poll(maxRecords: 100 - offsets.count, timeout: .milliseconds(100)).map(\.offset)
        }
        // One fetch brought all 1 000 records (librdkafka fetches up to 1 MiB a partition).
        #expect(try await consumer.backlog() == [partition: 900])
        try await consumer.pause([partition])
        for _ in 0..<3 { #expect(try await consumer.poll(maxRecords: 100, timeout: .milliseconds(100)).isEmpty) }
        try await consumer.resume([partition])
        while offsets.count < 1000, ContinuousClock.now < deadline {
            offsets += try await consumer.poll(maxRecords: 200, timeout: .milliseconds(100)).map(\.offset)
        }
        #expect(offsets == Array(0..<1000))
        await consumer.close()
    }

    @Test func pausedPartitionsDeliverNothingUntilResumed() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("paused", partitions: 2, replicationFactor: 1)
        try await produce([TopicPartition(topic: "paused", partition: 0): 50, TopicPartition(topic: "paused", partition: 1): 50], bootstrap: cluster.bootstrapServers)
        let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: "pause"))
        try await consumer.subscribe(["paused"])
        _ = try await pollAndCommit(consumer) { _ in try await consumer.assignment().count == 2 }
        try await consumer.seek([TopicPartition(topic: "paused", partition: 0): 0, TopicPartition(topic: "paused", partition: 1): 0])
        try await consumer.pause([TopicPartition(topic: "paused", partition: 1)])
        let records = try await pollAndCommit(consumer) { $0.count >= 50 }
        #expect(records.map(\.partition) == Array(repeating: 0, count: 50))
        try await consumer.resume([TopicPartition(topic: "paused", partition: 1)])
        let resumed = try await pollAndCommit(consumer) { $0.count >= 50 }
        #expect(resumed.map(\.partition) == Array(repeating: 1, count: 50))
        await consumer.close()
    }
}

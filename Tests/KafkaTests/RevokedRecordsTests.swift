import Testing

@testable import Kafka

/// A poll returns no record of a partition revoked after the record was fetched: its new owner,
/// or this consumer once the partition comes back, reads it again from where the application's
/// offsets say. The usage processor tags each poll's records with the owner epochs it holds
/// when the poll returns, so a record fetched under an earlier epoch must never come back with
/// a later one.
@Suite struct RevokedRecordsTests {
    /// Waits for `condition`, checking every 10 ms; the deadline only bounds a broken run.
    func wait(for condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while try await !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("deadline passed")
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// A's queue holds the records of both its partitions when B's joining takes one of them
    /// away: the revocation is served before them, and A's polls return every record of the
    /// partition it keeps and none of the other.
    @Test func recordsFetchedBeforeARevocationAreNotReturned() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        let topic = "revoked"
        try cluster.createTopic(topic, partitions: 2, replicationFactor: 1)
        let partitions = Set((0..<2).map { TopicPartition(topic: topic, partition: Int32($0)) })
        try await produce(Dictionary(uniqueKeysWithValues: partitions.map { ($0, 10) }), bootstrap: cluster.bootstrapServers)
        let configuration = KafkaConsumerConfiguration(
            bootstrapServers: cluster.bootstrapServers, groupID: "revoked", assignmentStrategy: .cooperativeSticky,
            properties: ["session.timeout.ms": "6000", "heartbeat.interval.ms": "100"])
        let listenerA = RecordingListener()
        let consumerA = try KafkaConsumer(configuration: configuration, rebalanceListener: listenerA)
        try await consumerA.subscribe([topic])
        var read: [ConsumerRecord] = []
        while read.isEmpty { read = try await consumerA.poll(maxRecords: 1, timeout: .milliseconds(100)) }
        #expect(try await consumerA.assignment() == partitions)
        // The other 19 records are fetched; A does not poll while B joins, so the revocation
        // is raised with them in A's queue.
        try await wait { await consumerA.queuedEvents() >= 19 }
        let consumerB = try KafkaConsumer(configuration: configuration, rebalanceListener: RecordingListener())
        try await consumerB.subscribe([topic])
        let pollingB = Task { while !Task.isCancelled { _ = try await consumerB.poll(maxRecords: 100, timeout: .milliseconds(50)) } }
        try await wait { await consumerA.queuedEvents() > 19 }

        var kept: Set<TopicPartition> = []
        try await wait {
            read += try await consumerA.poll(maxRecords: 100, timeout: .milliseconds(50))
            kept = try await consumerA.assignment()
            return kept.count == 1 && read.count(where: { kept.contains($0.topicPartition) }) >= 10
        }
        let revoked = Set(listenerA.revoked.withLock { $0 }.flatMap { $0 })
        #expect(revoked == partitions.subtracting(kept))
        let afterFirst = read.dropFirst()
        #expect(!afterFirst.contains { revoked.contains($0.topicPartition) }, "a record of the revoked partition came back")
        #expect(afterFirst.filter { kept.contains($0.topicPartition) }.map(\.offset).sorted() == Array(Int64(read[0].topicPartition == kept.first ? 1 : 0)..<10))
        pollingB.cancel()
        try await pollingB.value  // a poll of B that failed fails the test
        await consumerA.close()
        await consumerB.close()
    }
}

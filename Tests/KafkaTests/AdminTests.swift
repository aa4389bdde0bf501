import Kafka
import Testing

@Suite struct AdminTests {
    @Test func listsTopicsWithPartitionsAndReplicas() async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        try cluster.createTopic("alpha", partitions: 5, replicationFactor: 3)
        try cluster.createTopic("beta", partitions: 1, replicationFactor: 2)
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: cluster.bootstrapServers))
        let topics = try await admin.topics()
        await admin.close()
        #expect(topics.map(\.name) == ["alpha", "beta"])
        #expect(topics.map(\.partitions.count) == [5, 1])
        #expect(topics[0].replicationFactor == 3)
        #expect(topics[0].partitions.allSatisfy { cluster.brokerIDs.contains($0.leader) })
    }

    @Test func watermarksAndOffsetsForTimesFollowProducedRecords() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("timed", partitions: 1, replicationFactor: 1)
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers))
        let base: Int64 = 1_750_000_000_000
        let results = await producer.send(
            (0..<30).map { ProducerRecord(topic: "timed", key: nil, value: "\($0)", timestampMilliseconds: base + Int64($0) * 1_000) })
        await producer.close()
        for result in results { _ = try result.get() }

        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: cluster.bootstrapServers))
        let partition = TopicPartition(topic: "timed", partition: 0)
        let watermarks = try await admin.watermarks(of: partition)
        #expect(watermarks.low == 0)
        #expect(watermarks.high == 30)
        // The mock answers ListOffsets only for the logical times earliest (-2) and latest
        // (-1); lookups by a real timestamp need a real broker.
        #expect(try await admin.offsets(forTimes: [partition: -2]) == [partition: 0])
        #expect(try await admin.offsets(forTimes: [partition: -1]) == [partition: 30])
        await admin.close()
    }

    @Test func anUnreachableClusterTimesOutWithATypedError() async throws {
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: "127.0.0.1:1"))
        await #expect(throws: KafkaError.self) { try await admin.topics(timeout: .milliseconds(500)) }
        await admin.close()
    }
}

import Foundation
import Kafka

/// Reads every record of `topic` up to its current high watermarks (taken when called), as a
/// consumer of a fresh group. Fails instead of hanging if they do not all arrive in `timeout`.
public func readWholeTopic(_ topic: String, bootstrap: String, timeout: Duration = .seconds(60)) async throws -> [ConsumerRecord] {
    let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: bootstrap))
    guard let description = try await admin.topics().first(where: { $0.name == topic }) else {
        await admin.close()
        throw TallyProcess.Failure(description: "topic \(topic) does not exist")
    }
    var expected = 0
    for partition in description.partitions {
        let (low, high) = try await admin.watermarks(of: TopicPartition(topic: topic, partition: partition.id))
        expected += Int(high - low)
    }
    await admin.close()
    guard expected > 0 else { return [] }
    let consumer = try KafkaConsumer(
        configuration: KafkaConsumerConfiguration(bootstrapServers: bootstrap, groupID: "reader-\(UUID().uuidString)"))
    try await consumer.subscribe([topic])
    var records: [ConsumerRecord] = []
    let deadline = ContinuousClock.now + timeout
    while records.count < expected, ContinuousClock.now < deadline {
        records += try await consumer.poll(maxRecords: 1000, timeout: .milliseconds(200))
    }
    await consumer.close()
    guard records.count == expected else {
        throw TallyProcess.Failure(description: "read \(records.count) of \(expected) records of \(topic)")
    }
    return records
}

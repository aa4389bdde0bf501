import ArgumentParser
import Foundation
import Kafka
import Logging

/// `tally consume`: print a topic's records as JSON lines, committing as a group member.
struct ConsumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consume",
        abstract: "Print records of a topic as JSON lines, one per record.",
        discussion: "Joins --group, commits after each printed batch, and stops after --max-records or --idle-timeout seconds without records.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Kafka bootstrap servers (host:port,…).")
    var bootstrap: String

    @Option(help: "Topic to read.")
    var topic: String

    @Option(help: "Consumer group to join.")
    var group = "tally-consume"

    @Option(help: "Stop after this many records.")
    var maxRecords: Int = .max

    @Option(help: "Stop after this many seconds without a record.")
    var idleTimeout: Double = 10

    struct PrintedRecord: Encodable {
        var topic: String
        var partition: Int32
        var offset: Int64
        var key: String?
        var value: String?
        var headers: [[String?]]
        var timestamp: Int64?
    }

    func run() async throws {
        common.bootstrapLogging()
        let consumer = try KafkaConsumer(configuration: KafkaConsumerConfiguration(bootstrapServers: bootstrap, groupID: group))
        try await consumer.subscribe([topic])
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var printed = 0
        var lastRecord = ContinuousClock.now
        while printed < maxRecords, lastRecord.duration(to: .now) < .seconds(idleTimeout) {
            let records = try await consumer.poll(maxRecords: min(1000, maxRecords - printed), timeout: .milliseconds(200))
            guard !records.isEmpty else { continue }
            lastRecord = .now
            var nextOffsets: [TopicPartition: Int64] = [:]
            var output = Data()
            for record in records {
                let printable = PrintedRecord(
                    topic: record.topic, partition: record.partition, offset: record.offset,
                    key: record.key.map { String(decoding: $0, as: UTF8.self) },
                    value: record.value.map { String(decoding: $0, as: UTF8.self) },
                    headers: record.headers.map { [$0.name, $0.value.map { String(decoding: $0, as: UTF8.self) }] },
                    timestamp: record.timestampMilliseconds)
                output.append(try encoder.encode(printable))
                output.append(UInt8(ascii: "\n"))
                nextOffsets[record.topicPartition] = record.offset + 1
            }
            FileHandle.standardOutput.write(output)
            try await consumer.commit(nextOffsets)
            printed += records.count
        }
        await consumer.close()
    }
}

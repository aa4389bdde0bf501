import Foundation
import Kafka
import TestSupport
import Testing

/// A producer in this process, `tally broker` and `tally consume` in two others.
@Suite struct CrossProcessExchangeTests {
    struct PrintedRecord: Decodable {
        var topic: String
        var partition: Int32
        var offset: Int64
        var key: String?
        var value: String?
        var headers: [[String?]]
        var timestamp: Int64?
    }

    @Test func tenThousandKeyedMessagesArriveOnceInPerKeyOrderWithHeaders() async throws {
        let topics = try temporaryFile(
            named: "topics.yaml",
            contents: """
                topics:
                  - name: exchange
                    partitions: 6
                    replication_factor: 3
                """)
        let count = 10_000
        let keys = 97
        try await TallyProcess.withBroker(topicsFile: topics) { bootstrap in
            let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(bootstrapServers: bootstrap))
            let records = (0..<count).map { index in
                let key = "tenant_\(index % keys)"
                return ProducerRecord(
                    topic: "exchange", key: key, value: "\(key):\(index)",
                    headers: [KafkaHeader(name: "sequence", value: "\(index)"), KafkaHeader(name: "binary", value: [0, 255, 10])],
                    timestampMilliseconds: 1_700_000_000_000 + Int64(index))
            }
            let reports = await producer.send(records)
            await producer.close()
            #expect(reports.allSatisfy { (try? $0.get()) != nil })

            let run = try await TallyProcess.run([
                "consume", "--bootstrap", bootstrap, "--topic", "exchange", "--group", "exchange-test",
                "--max-records", "\(count)", "--idle-timeout", "60", "--log-level", "warning",
            ])
            #expect(run.status == 0, "tally consume failed: \(run.errors)")
            let decoder = JSONDecoder()
            let consumed = try run.output.split(separator: "\n").map { try decoder.decode(PrintedRecord.self, from: Data($0.utf8)) }

            #expect(consumed.count == count)
            let values = consumed.compactMap(\.value)
            #expect(Set(values).count == count, "a message arrived twice or not at all")
            #expect(Set(values) == Set(records.map { String(decoding: $0.value!, as: UTF8.self) }))

            // Per key: one partition, offsets rising with the production order.
            for (key, group) in Dictionary(grouping: consumed, by: { $0.key ?? "" }) {
                #expect(Set(group.map(\.partition)).count == 1, "key \(key) spans partitions")
                let sequences = group.sorted { $0.offset < $1.offset }.map { Int($0.value!.split(separator: ":")[1])! }
                #expect(sequences == sequences.sorted(), "key \(key) out of order")
            }
            for record in consumed {
                let sequence = Int(record.value!.split(separator: ":")[1])!
                #expect(record.headers.first == ["sequence", "\(sequence)"])
                #expect(record.headers.count == 2)
                #expect(record.timestamp == 1_700_000_000_000 + Int64(sequence))
            }
        }
    }
}

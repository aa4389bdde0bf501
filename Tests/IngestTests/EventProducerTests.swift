import Events
import Foundation
import Kafka
import Subprocess
import TallySDK
import Tenancy
import Testing
import TestSupport

@Suite struct EventProducerTests {
    func event(_ id: String, tenant: String = "acme", time: EventTime = .now()) throws -> UsageEvent {
        UsageEvent(
            id: id, source: "/sdk/test", type: "api.request", subject: "customer-1", time: time, tenant: try TenantID(tenant),
            data: ["tokens": .integer(3)])
    }

    @Test func sendReturnsTheDurablePositionAndTheRecordCarriesTheEvent() async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        try cluster.createTopic("events", partitions: 6, replicationFactor: 3)
        let producer = try EventProducer(configuration: EventProducerConfiguration(bootstrapServers: cluster.bootstrapServers))
        let first = try await producer.send(try event("one"))
        let batch = await producer.send([try event("two"), try event("bad", time: EventTime(rfc3339: "2001-01-01T00:00:00Z")!), try event("three", tenant: "globex")])
        await producer.close()

        #expect(first.offset == 0)
        #expect(try batch[0].get() == EventAcknowledgement(partition: first.partition, offset: 1), "same tenant, same partition, next offset")
        guard case .failure(.invalid(let problems)) = batch[1] else { Issue.record("an old event was sent"); return }
        #expect(problems.map(\.field) == ["time"])
        let globex = try batch[2].get()

        let records = try await readWholeTopic("events", bootstrap: cluster.bootstrapServers)
        #expect(records.count == 3)
        let byOffset = Dictionary(uniqueKeysWithValues: records.map { ("\($0.partition)/\($0.offset)", $0) })
        let decoder = EventDecoder(limits: .withoutTimeBounds)
        #expect(try decoder.decodeEvent(byOffset["\(first.partition)/0"]?.value ?? []).id == "one")
        #expect(try decoder.decodeEvent(byOffset["\(globex.partition)/\(globex.offset)"]?.value ?? []).tenant == (try TenantID("globex")))
    }

    @Test func anUnreachableClusterIsADeliveryFailureAfterTheTimeout() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("events", partitions: 1, replicationFactor: 1)
        try cluster.setBrokerDown(1)
        var configuration = EventProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
        configuration.deliveryTimeout = .milliseconds(500)
        let producer = try EventProducer(configuration: configuration)
        await #expect {
            _ = try await producer.send(try event("lost"))
        } throws: { error in
            guard case .deliveryFailed(let cause) = error as? EventSendError else { return false }
            return cause.code == .messageTimedOut
        }
        await producer.close(flushTimeout: .zero)
    }

    @Test func aFullQueueIsTheTypedBackpressureError() async throws {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("events", partitions: 1, replicationFactor: 1)
        try cluster.setBrokerDown(1)
        var configuration = EventProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
        configuration.kafkaProperties = ["queue.buffering.max.messages": "10"]
        configuration.enqueueTimeout = .zero
        configuration.deliveryTimeout = .milliseconds(500)
        let producer = try EventProducer(configuration: configuration)
        let outcomes = await producer.send(try (0..<11).map { try event("e\($0)") })
        await producer.close(flushTimeout: .zero)
        guard case .failure(.queueFull) = outcomes[10] else { Issue.record("the 11th event was not refused: \(outcomes[10])"); return }
    }
}

/// The README's runnable SDK example, run as a process against `tally broker`.
@Suite struct SDKExampleTests {
    @Test func theExampleSendsAnEventAndPrintsWhereItIsStored() async throws {
        let topics = try temporaryFile(named: "topics.yaml", contents: "topics:\n  - name: events\n    partitions: 2\n    replication_factor: 1\n")
        try await TallyProcess.withBroker(topicsFile: topics, brokers: 1) { bootstrap in
            let example = TallyProcess.executable.removingLastComponent().appending("EmitUsage")
            let result = try await Subprocess.run(
                .path(example), arguments: ["--bootstrap", bootstrap, "--tenant", "acme", "--subject", "customer_42", "--tokens", "1200"],
                output: .string(limit: 1 << 16), error: .discarded)
            #expect(result.terminationStatus.isSuccess)
            #expect(result.standardOutput.contains("at partition"), "\(result.standardOutput)")
            let records = try await readWholeTopic("events", bootstrap: bootstrap)
            #expect(records.count == 1)
            let event = try EventDecoder(limits: .withoutTimeBounds).decodeEvent(records[0].value ?? [])
            let acme = try TenantID("acme")
            #expect(event.subject == "customer_42" && event.data["tokens"] == .integer(1200) && event.tenant == acme)
        }
    }
}

import Declarations
import Foundation
import Kafka
import Testing
import TestSupport
import TopicCatalog

@Suite struct TopicCatalogParsingTests {
    @Test func theShippedTopicsFileDeclaresEventsAndTheDeadLetterTopic() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let catalog = try TopicCatalog.load(path: root.appendingPathComponent("topics.yaml").path)
        #expect(catalog.topics.map(\.name) == ["events", "events.dlq"])
        #expect(catalog.topics[0].configs["cleanup.policy"] == "delete")
        #expect(catalog.topics.allSatisfy { $0.partitions > 0 && $0.replicationFactor > 0 })
    }

    @Test(arguments: [
        ("topics:\n  - name: events\n    partitions: twelve\n    replication_factor: 3\n", 3, "topics[0].partitions", "integer"),
        ("topics:\n  - name: a\n    partitions: 1\n    replication_factor: 1\n  - name: b\n    partitions: 0\n    replication_factor: 1\n", 6, "topics[1].partitions", "from 1"),
        ("topics:\n  - name: a\n    partitions: 1\n", 2, "topics[0].replication_factor", "missing"),
        ("topics:\n  - name: a\n    partitions: 1\n    replication_factor: 1\n    retention: 5\n", 5, "topics[0].retention", "unknown key"),
        ("topics:\n  - name: a\n    partitions: 1\n    replication_factor: 1\n  - name: a\n    partitions: 2\n    replication_factor: 1\n", 5, "topics[1].name", "already declared on line 2"),
        ("topics:\n  - name: bad/name\n    partitions: 1\n    replication_factor: 1\n", 2, "topics[0].name", "letters, digits"),
        ("topics:\n  - name: a\n    partitions: 1\n    replication_factor: 1\n    configs: [1, 2]\n", 5, "topics[0].configs", "mapping"),
        ("topics:\n  - name: a\n   partitions: 1\n", 3, "", "invalid YAML"),
        ("topics: [\n", 2, "", "invalid YAML"),
        ("topic:\n  - name: a\n", 1, "topic", "unknown key"),
        ("", 1, "", "empty"),
    ])
    func malformedFilesAreRefusedWithFileLineAndField(yaml: String, line: Int, field: String, reason: String) throws {
        #expect {
            _ = try TopicCatalog.parse(yaml, file: "topics.yaml")
        } throws: { error in
            guard let error = error as? DeclarationError else { return false }
            return error.file == "topics.yaml" && error.line == line && error.field == field && error.reason.contains(reason)
                && "\(error)".hasPrefix("topics.yaml:\(line):")
        }
    }

    @Test func theCommandLineNamesTheFileAndLineOfABadTopicsFile() async throws {
        let path = try temporaryFile(
            named: "broken-topics.yaml",
            contents: "topics:\n  - name: events\n    partitions: 3\n    replication_factor: many\n")
        let run = try await TallyProcess.run(["topics", "validate", "--file", path])
        #expect(run.status != 0)
        #expect(run.errors.contains("\(path):4:"), "stderr: \(run.errors)")
        #expect(run.errors.contains("topics[0].replication_factor"))
        let missing = try await TallyProcess.run(["broker", "--topics", "/nonexistent/topics.yaml"])
        #expect(missing.status != 0)
        #expect(missing.errors.contains("/nonexistent/topics.yaml"))
    }
}

@Suite struct TopicReconcilerTests {
    @Test func reportsDriftAndMissingTopicsAgainstTheMockCluster() async throws {
        let cluster = try MockCluster(brokers: 3)
        defer { cluster.shutdown() }
        try cluster.createTopic("events", partitions: 12, replicationFactor: 3)
        try cluster.createTopic("events.dlq", partitions: 3, replicationFactor: 3)
        let catalog = try TopicCatalog.parse(
            """
            topics:
              - name: events
                partitions: 6
                replication_factor: 3
              - name: events.dlq
                partitions: 3
                replication_factor: 3
              - name: replays
                partitions: 2
                replication_factor: 3
            """, file: "topics.yaml")
        let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: cluster.bootstrapServers))
        let reconciler = TopicReconciler(admin: admin)
        let dryRun = try await reconciler.apply(catalog, dryRun: true)
        #expect(dryRun.map(\.status) == [.drift(["partitions declared 6, actual 12"]), .matches, .missing(created: false)])

        // The mock has no CreateTopics handler: creating is reported as failed, not as done.
        let applied = try await reconciler.apply(catalog, dryRun: false, timeout: .seconds(2))
        await admin.close()
        guard case .failed(let reason) = applied[2].status else {
            Issue.record("expected a failure, got \(applied[2].status)")
            return
        }
        #expect(!reason.isEmpty)
        #expect(applied[0].summary == "events: drift: partitions declared 6, actual 12")
    }

    @Test func theCommandLineExitsThreeOnDrift() async throws {
        let topics = try temporaryFile(named: "topics.yaml", contents: "topics:\n  - name: events\n    partitions: 4\n    replication_factor: 3\n")
        let declared = try temporaryFile(named: "declared.yaml", contents: "topics:\n  - name: events\n    partitions: 8\n    replication_factor: 3\n")
        try await TallyProcess.withBroker(topicsFile: topics) { bootstrap in
            let matching = try await TallyProcess.run(["topics", "apply", "--bootstrap", bootstrap, "--file", topics, "--log-level", "error"])
            #expect(matching.status == 0, "\(matching.errors)")
            #expect(matching.output == "events: ok\n")
            let drifted = try await TallyProcess.run(["topics", "apply", "--bootstrap", bootstrap, "--file", declared, "--log-level", "error"])
            #expect(drifted.status == 3)
            #expect(drifted.output == "events: drift: partitions declared 8, actual 4\n")
        }
    }
}

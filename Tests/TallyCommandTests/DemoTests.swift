import Foundation
import TestSupport
import Testing

/// The main job, run as a user would run it.
@Suite struct DemoTests {
    @Test func theDemoCarriesEveryEventFromHTTPThroughKafkaIntoTheTenantSchemas() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let run = try await TallyProcess.run([
            "demo", "--topics", root.appendingPathComponent("topics.yaml").path, "--events", "3000", "--tenants", "7",
            "--log-level", "error",
        ])
        #expect(run.status == 0, "\(run.errors)")
        let lines = run.output.split(separator: "\n").map(String.init)
        #expect(lines.contains("ingest    3000/3000 events accepted over HTTP (30 requests, every tenth sent twice)"))
        #expect(lines.contains("process   3300/3300 records committed to the tenant schemas"))
        #expect(lines.contains("sink      7 tenant schemas counted 3000 events once each; 300 retried events deduplicated"))
        #expect(lines.filter { $0.hasPrefix("sample    tenant_0 tokens today: customer_") }.count == 3)
        #expect(lines.last == "done      gateway, processor, broker and Postgres stopped")
    }

    @Test func theDemoRefusesNonsenseArgumentsWithAReason() async throws {
        let run = try await TallyProcess.run(["demo", "--events", "0"])
        #expect(run.status != 0)
        #expect(run.errors.contains("--events and --tenants must be positive"))
    }
}

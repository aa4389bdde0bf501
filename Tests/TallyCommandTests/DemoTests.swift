import Foundation
import TestSupport
import Testing

/// The main job, run as a user would run it.
@Suite struct DemoTests {
    @Test func theDemoCarriesEveryEventFromBrokerToPostgres() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let run = try await TallyProcess.run([
            "demo", "--topics", root.appendingPathComponent("topics.yaml").path, "--events", "3000", "--tenants", "7",
            "--log-level", "error",
        ])
        #expect(run.status == 0, "\(run.errors)")
        let lines = run.output.split(separator: "\n").map(String.init)
        #expect(lines.contains("produce   3000/3000 acknowledged"))
        #expect(lines.contains("consume   3000/3000 read in per-tenant order and committed"))
        #expect(lines.contains("sink      7 tenant schemas hold 3000 events; offsets stored with them"))
        #expect(lines.last == "done      broker and Postgres stopped")
    }

    @Test func theDemoRefusesNonsenseArgumentsWithAReason() async throws {
        let run = try await TallyProcess.run(["demo", "--events", "0"])
        #expect(run.status != 0)
        #expect(run.errors.contains("--events and --tenants must be positive"))
    }
}

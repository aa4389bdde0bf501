import Foundation
import Subprocess
import Tenancy
import Testing
import TestSupport
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `tally ingest` as its own process in front of `tally broker`.
@Suite struct IngestProcessTests {
    func post(_ url: String, key: String, body: [UInt8]) async throws -> Int {
        var request = URLRequest(url: URL(string: url + "/v1/events")!)
        request.httpMethod = "POST"
        request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization")
        request.setValue("application/cloudevents-batch+json", forHTTPHeaderField: "Content-Type")
        request.httpBody = Data(body)
        let (_, response) = try await URLSession.shared.data(for: request)
        return (response as! HTTPURLResponse).statusCode
    }

    @Test func sighupReloadsTheTenantsFileKeepingTheOldOneIfBadAndSigtermStopsCleanly() async throws {
        let topics = try temporaryFile(named: "topics.yaml", contents: "topics:\n  - name: events\n    partitions: 3\n    replication_factor: 1\n")
        let firstKey = APIKey.generate()
        let secondKey = APIKey.generate()
        let tenantsFile = try temporaryFile(named: "tenants.yaml", contents: "tenants:\n  - id: acme\n    api_keys: [\"\(APIKeyHash(hashing: firstKey))\"]\n")
        try await TallyProcess.withBroker(topicsFile: topics, brokers: 1) { bootstrap in
            let outcome = try await Subprocess.run(
                .path(TallyProcess.executable),
                arguments: ["ingest", "--bootstrap", bootstrap, "--tenants", tenantsFile, "--port", "0", "--log-level", "notice"],
                input: .none, output: .sequence, error: .sequence
            ) { execution -> [String] in
                var output = execution.standardOutput.strings().makeAsyncIterator()
                var errors = execution.standardError.strings().makeAsyncIterator()
                func waitForLog(_ text: String) async throws -> [String] {
                    var seen: [String] = []
                    while let line = try await errors.next() {
                        seen.append(line)
                        if line.contains(text) { return seen }
                    }
                    throw TallyProcess.Failure(description: "tally ingest ended without logging \(text): \(seen)")
                }
                guard let url = try await output.next()?.trimmingCharacters(in: .whitespacesAndNewlines) else {
                    throw TallyProcess.Failure(description: "tally ingest printed no address")
                }
                #expect(try await post(url, key: firstKey, body: batchBody(tenant: "acme", count: 3, label: "first")) == 202)
                #expect(try await post(url, key: secondKey, body: batchBody(tenant: "acme", count: 1, label: "early")) == 401)

                try "tenants:\n  - id: acme\n    api_keys: [\"\(APIKeyHash(hashing: firstKey))\", \"\(APIKeyHash(hashing: secondKey))\"]\n"
                    .write(toFile: tenantsFile, atomically: true, encoding: .utf8)
                try execution.send(signal: Signal(rawValue: SIGHUP))
                _ = try await waitForLog("reloaded")
                #expect(try await post(url, key: secondKey, body: batchBody(tenant: "acme", count: 2, label: "second")) == 202)

                try "tenants:\n  - id: Not Valid\n".write(toFile: tenantsFile, atomically: true, encoding: .utf8)
                try execution.send(signal: Signal(rawValue: SIGHUP))
                let refusal = try await waitForLog("kept the previous tenants")
                #expect(refusal.last?.contains("\(tenantsFile):2:") == true, "\(refusal)")
                #expect(try await post(url, key: secondKey, body: batchBody(tenant: "acme", count: 1, label: "kept")) == 202)

                try execution.send(signal: .terminate)
                return try await waitForLog("gateway stopped")
            }
            #expect(outcome.terminationStatus.isSuccess)
            let records = try await readWholeTopic("events", bootstrap: bootstrap)
            #expect(records.count == 6)
        }
    }
}

import Events
import Foundation
import IngestGateway
import Kafka
import Logging
import ServiceLifecycle
import TallySDK
import Tenancy
import TestSupport
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A real gateway on a loopback port in front of an in-process mock cluster.
struct GatewayHarness: Sendable {
    let baseURL: URL
    let bootstrap: String
    let cluster: MockCluster
    let keys: [String: String]

    /// Tenants `acme` and `globex` (and any in `extraTenants`), each with a fresh API key.
    static func run<T: Sendable>(
        rateLimits: [String: RateLimit] = [:], deliveryTimeout: Duration = .seconds(20), maximumBodyBytes: Int = 64 * 1024,
        _ body: @Sendable (GatewayHarness) async throws -> T
    ) async throws -> T {
        let cluster = try MockCluster(brokers: 1)
        defer { cluster.shutdown() }
        try cluster.createTopic("events", partitions: 4, replicationFactor: 1)
        let names = ["acme", "globex"]
        let keys = Dictionary(uniqueKeysWithValues: names.map { ($0, APIKey.generate()) })
        let yaml = "tenants:\n" + names.map { name in
            var entry = "  - id: \(name)\n    api_keys: [\"\(APIKeyHash(hashing: keys[name]!))\"]\n"
            if let limit = rateLimits[name] { entry += "    rate_limit: { events_per_second: \(limit.eventsPerSecond), burst: \(limit.burst) }\n" }
            return entry
        }.joined()
        let registry = try TenantRegistry(path: try temporaryFile(named: "tenants.yaml", contents: yaml))
        var configuration = GatewayConfiguration()
        configuration.port = 0
        configuration.maximumBodyBytes = maximumBodyBytes
        configuration.maximumBatchEvents = 100
        var producerConfiguration = EventProducerConfiguration(bootstrapServers: cluster.bootstrapServers)
        producerConfiguration.deliveryTimeout = deliveryTimeout
        let gateway = IngestGateway(
            configuration: configuration, tenants: registry, producer: try EventProducer(configuration: producerConfiguration),
            probe: try BrokerProbe(bootstrapServers: cluster.bootstrapServers, topic: "events"))
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        let application = gateway.application { port in portSink.yield(port) }
        let group = ServiceGroup(services: [application], logger: Logger(label: "test.gateway"))
        return try await withThrowingTaskGroup(of: T?.self) { tasks in
            tasks.addTask {
                try await group.run()
                return nil
            }
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next() else { throw TallyProcess.Failure(description: "the gateway did not start") }
            let harness = GatewayHarness(
                baseURL: URL(string: "http://127.0.0.1:\(port)")!, bootstrap: cluster.bootstrapServers, cluster: cluster, keys: keys)
            let result: Result<T, any Error>
            do { result = .success(try await body(harness)) } catch { result = .failure(error) }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return try result.get()
        }!
    }

    struct Reply: Sendable {
        let status: Int
        let headers: [String: String]
        let body: String

        /// The body's `events[].field` values, for 400 and 403 answers.
        var eventFields: [String] {
            guard let value = try? JSONParser.parse(Array(body.utf8)), case .array(let events)? = value.object?["events"] else { return [] }
            return events.compactMap { $0.object?["field"]?.string }
        }
    }

    /// POSTs `body` to `/v1/events` as `tenant` (by its key), with the given media type.
    func post(
        _ body: [UInt8], as tenant: String?, key: String? = nil, contentType: String = "application/cloudevents-batch+json"
    ) async throws -> Reply {
        var request = URLRequest(url: baseURL.appendingPathComponent("v1/events"))
        request.httpMethod = "POST"
        if let token = key ?? tenant.flatMap({ keys[$0] }) { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        request.setValue(contentType, forHTTPHeaderField: "Content-Type")
        request.httpBody = Data(body)
        return try await send(request)
    }

    func get(_ path: String) async throws -> Reply {
        try await send(URLRequest(url: baseURL.appendingPathComponent(path)))
    }

    private func send(_ request: URLRequest) async throws -> Reply {
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as! HTTPURLResponse
        let headers = Dictionary(
            http.allHeaderFields.map { ("\($0.key)".lowercased(), "\($0.value)") }, uniquingKeysWith: { first, _ in first })
        return Reply(status: http.statusCode, headers: headers, body: String(decoding: data, as: UTF8.self))
    }
}

/// A batch body of `count` valid events for `tenant`, ids prefixed by `label`.
func batchBody(tenant: String, count: Int, label: String) -> [UInt8] {
    Array(("[" + (0..<count).map { index in
        eventJSON(replacing: ["tenant": "\"\(tenant)\"", "id": "\"\(label)-\(index)\"", "subject": "\"customer-\(index % 3)\""])
    }.joined(separator: ",") + "]").utf8)
}

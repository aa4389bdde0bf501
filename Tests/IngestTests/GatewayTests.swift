import Events
import Foundation
import Kafka
import Tenancy
import Testing
import TestSupport

@Suite(.serialized) struct GatewayTests {
    @Test func acceptedEventsAreInKafkaWithTenantKeyHeadersAndEventTime() async throws {
        try await GatewayHarness.run { gateway in
            let single = eventJSON(replacing: ["id": "\"single-1\""], time: EventTime.now().advanced(by: .seconds(-3600)).description)
            let reply = try await gateway.post(Array(single.utf8), as: "acme", contentType: "Application/CloudEvents+JSON; charset=utf-8")
            #expect(reply.status == 202, "\(reply.body)")
            #expect(reply.body == "{\"accepted\":1}")
            #expect(try await gateway.post(batchBody(tenant: "acme", count: 5, label: "a"), as: "acme").status == 202)
            #expect(try await gateway.post(batchBody(tenant: "globex", count: 3, label: "g"), as: "globex").status == 202)

            let records = try await readWholeTopic("events", bootstrap: gateway.bootstrap)
            #expect(records.count == 9)
            let decoder = EventDecoder(limits: .withoutTimeBounds)
            for record in records {
                let event = try decoder.decodeEvent(record.value ?? [])
                #expect(record.key == Array(event.tenant.rawValue.utf8))
                #expect(record.header(EventHeaders.tenant) == event.tenant.rawValue)
                #expect(record.header(EventHeaders.type) == "api.request")
                #expect(record.header(EventHeaders.contentType) == "application/cloudevents+json")
                #expect(record.timestampMilliseconds == event.time.millisecondsSinceEpoch)
            }
            let byTenant = Dictionary(grouping: records) { String(decoding: $0.key ?? [], as: UTF8.self) }
            #expect(byTenant["acme"]?.count == 6 && byTenant["globex"]?.count == 3)
            #expect(Set(byTenant["acme"]!.map(\.partition)).count == 1, "one tenant, one partition")
            let ids = try records.map { try decoder.decodeEvent($0.value ?? []).id }
            #expect(Set(ids) == Set(["single-1"] + (0..<5).map { "a-\($0)" } + (0..<3).map { "g-\($0)" }))
        }
    }

    struct BadRequest: Sendable, CustomStringConvertible {
        let name: String
        let body: [UInt8]
        var tenant: String? = "acme"
        var key: String?
        var contentType: String = "application/cloudevents-batch+json"
        let status: Int
        let reason: String
        var fields: [String] = []
        var description: String { name }
    }

    @Test func badRequestsGetTheirStatusAndReasonAndNothingOfThemReachesKafka() async throws {
        try await GatewayHarness.run { gateway in
            var invalidUTF8 = batchBody(tenant: "acme", count: 1, label: "utf8")
            invalidUTF8[invalidUTF8.firstIndex(of: UInt8(ascii: "c"))!] = 0xFF
            let cases = [
                BadRequest(name: "malformed JSON", body: Array("[{\"id\": ".utf8), status: 400, reason: "unexpected end of input at byte 8"),
                BadRequest(name: "wrong content type", body: batchBody(tenant: "acme", count: 1, label: "ct"), contentType: "application/json", status: 415, reason: "got application/json"),
                BadRequest(name: "empty body", body: [], status: 400, reason: "the body is empty"),
                BadRequest(name: "oversized body", body: Array(repeating: UInt8(ascii: " "), count: 70_000) + batchBody(tenant: "acme", count: 1, label: "big"), status: 413, reason: "exceeds 65536 bytes"),
                BadRequest(name: "oversized batch", body: batchBody(tenant: "acme", count: 101, label: "many"), status: 413, reason: "the limit is 100"),
                BadRequest(name: "invalid UTF-8", body: invalidUTF8, status: 400, reason: "invalid UTF-8"),
                BadRequest(name: "missing attribute", body: Array("[\(eventJSON(replacing: ["id": "\"x\"", "source": nil]))]".utf8), status: 400, reason: "invalid", fields: ["source"]),
                BadRequest(name: "wrong attribute", body: Array("[\(eventJSON(replacing: ["id": "\"x\"", "specversion": "\"2.0\""]))]".utf8), status: 400, reason: "invalid", fields: ["specversion"]),
                BadRequest(name: "time out of range", body: Array("[\(eventJSON(replacing: ["id": "\"x\"", "time": "\"2001-01-01T00:00:00Z\""]))]".utf8), status: 400, reason: "invalid", fields: ["time"]),
                BadRequest(name: "one bad event spoils the batch", body: Array("[\(eventJSON(replacing: ["id": "\"ok\""])), \(eventJSON(replacing: ["data": "7"]))]".utf8), status: 400, reason: "1 event(s) are invalid", fields: ["data"]),
                BadRequest(name: "single event under the batch type", body: Array(eventJSON().utf8), status: 400, reason: "must be a JSON array"),
                BadRequest(name: "another tenant's event", body: batchBody(tenant: "globex", count: 2, label: "foreign"), status: 403, reason: "belongs to tenant acme", fields: ["tenant", "tenant"]),
                BadRequest(name: "a batch mixing tenants", body: Array("[\(eventJSON(replacing: ["id": "\"mine\""])), \(eventJSON(replacing: ["id": "\"theirs\"", "tenant": "\"globex\""]))]".utf8), status: 403, reason: "may only name it", fields: ["tenant"]),
                BadRequest(name: "no API key", body: batchBody(tenant: "acme", count: 1, label: "nokey"), tenant: nil, status: 401, reason: "missing API key"),
                BadRequest(name: "wrong API key", body: batchBody(tenant: "acme", count: 1, label: "badkey"), key: APIKey.generate(), status: 401, reason: "unknown API key"),
            ]
            for bad in cases {
                let reply = try await gateway.post(bad.body, as: bad.tenant, key: bad.key, contentType: bad.contentType)
                #expect(reply.status == bad.status, "\(bad.name): \(reply.body)")
                #expect(reply.body.contains(bad.reason), "\(bad.name): \(reply.body)")
                #expect(reply.headers["content-type"] == "application/json", "\(bad.name)")
                if !bad.fields.isEmpty { #expect(reply.eventFields == bad.fields, "\(bad.name): \(reply.body)") }
            }
            // Still serving; only this request's events are in Kafka.
            #expect(try await gateway.get("healthz").status == 200)
            #expect(try await gateway.post(batchBody(tenant: "acme", count: 2, label: "good"), as: "acme").status == 202)
            let records = try await readWholeTopic("events", bootstrap: gateway.bootstrap)
            let ids = try records.map { try EventDecoder(limits: .withoutTimeBounds).decodeEvent($0.value ?? []).id }
            #expect(ids.sorted() == ["good-0", "good-1"])

            let metrics = try await gateway.get("metrics").body
            #expect(metrics.contains("tally_ingest_events_total{tenant=\"acme\"} 2"), "\(metrics)")
            #expect(metrics.contains("tally_ingest_rejections_total{tenant=\"acme\",reason=\"wrong_tenant\"} 2"), "\(metrics)")
            #expect(metrics.contains("tally_ingest_rejections_total{tenant=\"\",reason=\"unauthenticated\"} 2"), "\(metrics)")
            #expect(metrics.contains("tally_ingest_requests_total{status=\"400\"} 8"), "\(metrics)")
            #expect(metrics.contains("tally_ingest_produce_duration_seconds_count 1"), "\(metrics)")
        }
    }

    @Test func aBurstOverTheTenantsBucketGets429WithRetryAfterWhileOtherTenantsAreServed() async throws {
        try await GatewayHarness.run(rateLimits: ["acme": RateLimit(eventsPerSecond: 0.001, burst: 10)]) { gateway in
            #expect(try await gateway.post(batchBody(tenant: "acme", count: 10, label: "burst"), as: "acme").status == 202)
            let refused = try await gateway.post(batchBody(tenant: "acme", count: 1, label: "over"), as: "acme")
            #expect(refused.status == 429)
            #expect(refused.body.contains("rate limit exceeded"))
            #expect(Int(refused.headers["retry-after"] ?? "") ?? 0 >= 900, "about 1000 s for one token at 0.001/s")
            #expect(try await gateway.post(batchBody(tenant: "globex", count: 50, label: "other"), as: "globex").status == 202)
            let records = try await readWholeTopic("events", bootstrap: gateway.bootstrap)
            #expect(records.count == 60)
        }
    }

    @Test func kafkaUnreachablePastTheTimeoutIs503AndNotReady() async throws {
        try await GatewayHarness.run(deliveryTimeout: .seconds(1)) { gateway in
            #expect(try await gateway.get("readyz").status == 200)
            try gateway.cluster.setBrokerDown(1)
            let reply = try await gateway.post(batchBody(tenant: "acme", count: 3, label: "down"), as: "acme")
            #expect(reply.status == 503, "\(reply.body)")
            #expect(reply.headers["retry-after"] != nil)
            #expect(try await gateway.get("readyz").status == 503)
            #expect(try await gateway.get("healthz").status == 200, "alive, just not ready")
        }
    }
}

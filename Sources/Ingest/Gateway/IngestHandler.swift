import Events
import Foundation
import Hummingbird
import Logging
import TallySDK
import Tenancy

/// `POST /v1/events`: authenticates the tenant by API key, checks the media type and size,
/// decodes and validates every event, enforces the tenant's rate, and answers 202 only once
/// Kafka acknowledged every event. A request is accepted whole or refused whole, with reasons.
struct IngestHandler: Sendable {
    static let singleMediaType = "application/cloudevents+json"
    static let batchMediaType = "application/cloudevents-batch+json"

    let configuration: GatewayConfiguration
    let tenants: TenantRegistry
    let limiter: TenantRateLimiter
    let producer: EventProducer
    let metrics: GatewayMetrics
    let logger: Logger

    func handle(_ request: Request) async -> Response {
        let started = ContinuousClock.now
        let response: Response
        switch await accept(request) {
        case .success(let count): response = Self.json(.accepted, ["accepted": .integer(Int64(count))])
        case .failure(let refusal): response = refusal.response
        }
        metrics.request(status: response.status.code, after: started.duration(to: .now))
        return response
    }

    private func accept(_ request: Request) async -> Result<Int, Refusal> {
        // Who is calling.
        guard let key = Self.bearerToken(request.headers[.authorization]) else {
            return refuse(.unauthenticated, tenant: "", status: .unauthorized, "missing API key: send `Authorization: Bearer <key>`")
        }
        let directory = tenants.directory
        guard let tenant = directory.tenant(forAPIKey: key), let settings = directory.tenants[tenant] else {
            return refuse(.unauthenticated, tenant: "", status: .unauthorized, "unknown API key")
        }
        // What they send.
        let mediaType = request.headers[.contentType].map(Self.mediaType) ?? ""
        guard mediaType == Self.singleMediaType || mediaType == Self.batchMediaType else {
            return refuse(
                .unsupportedMediaType, tenant: tenant.rawValue, status: .unsupportedMediaType,
                "Content-Type must be \(Self.singleMediaType) or \(Self.batchMediaType), got \(mediaType.isEmpty ? "none" : mediaType)")
        }
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > configuration.maximumBodyBytes {
            return refuse(.bodyTooLarge, tenant: tenant.rawValue, status: .contentTooLarge, "the body exceeds \(configuration.maximumBodyBytes) bytes")
        }
        // A tenant already over its rate is refused before its body is read.
        if let wait = limiter.admit(0, tenant: tenant, limit: settings.rateLimit) {
            return refuse(.rateLimited, tenant: tenant.rawValue, status: .tooManyRequests, "rate limit exceeded", retryAfter: wait)
        }
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: configuration.maximumBodyBytes)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            return refuse(.bodyTooLarge, tenant: tenant.rawValue, status: .contentTooLarge, "the body exceeds \(configuration.maximumBodyBytes) bytes")
        } catch {
            return refuse(.malformed, tenant: tenant.rawValue, status: .badRequest, "the body could not be read: \(error)")
        }
        let events: [UsageEvent]
        let decoder = EventDecoder(limits: configuration.limits)
        do {
            events =
                mediaType == Self.batchMediaType
                ? try decoder.decodeBatch(body.readableBytesView, maximumCount: configuration.maximumBatchEvents)
                : [try decoder.decodeEvent(body.readableBytesView)]
        } catch {
            return refusal(for: error, tenant: tenant)
        }
        // No service writes into another tenant's stream.
        let foreign = events.indices.filter { events[$0].tenant != tenant }
        guard foreign.isEmpty else {
            return refuse(
                .wrongTenant, tenant: tenant.rawValue, status: .forbidden, "the API key belongs to tenant \(tenant); events may only name it",
                events: foreign.map { index in
                    Self.eventReason(index: index, field: "tenant", reason: "names tenant \(events[index].tenant), not \(tenant)")
                }, eventCount: events.count)
        }
        if let wait = limiter.admit(events.count, tenant: tenant, limit: settings.rateLimit) {
            return refuse(.rateLimited, tenant: tenant.rawValue, status: .tooManyRequests, "rate limit exceeded", retryAfter: wait, eventCount: events.count)
        }
        let started = ContinuousClock.now
        let outcomes = await producer.sendValidated(events)
        var queueFull = false
        for outcome in outcomes {
            switch outcome {
            case .success: continue
            case .failure(.queueFull): queueFull = true
            case .failure(let error):
                logger.warning("Kafka did not acknowledge events of tenant \(tenant): \(error)")
                return refuse(
                    .kafkaUnavailable, tenant: tenant.rawValue, status: .serviceUnavailable, "Kafka did not acknowledge the events: \(error)",
                    retryAfter: .seconds(5), eventCount: events.count)
            }
        }
        if queueFull {
            return refuse(
                .queueFull, tenant: tenant.rawValue, status: .tooManyRequests, "the gateway's producer queue is full", retryAfter: .seconds(1),
                eventCount: events.count)
        }
        metrics.produced(after: started.duration(to: .now))
        metrics.accepted(events.count, tenant: tenant.rawValue)
        return .success(events.count)
    }

    private func refusal(for error: EventDecodingError, tenant: TenantID) -> Result<Int, Refusal> {
        switch error {
        case .malformed(let reason):
            return refuse(.malformed, tenant: tenant.rawValue, status: .badRequest, reason)
        case .tooManyEvents(let count, let limit):
            return refuse(.tooManyEvents, tenant: tenant.rawValue, status: .contentTooLarge, "the batch holds \(count) events; the limit is \(limit)")
        case .invalidEvents(let invalid):
            let reasons = invalid.flatMap { event in
                event.problems.map { Self.eventReason(index: event.index, field: $0.field, reason: $0.reason) }
            }
            return refuse(
                .invalidEvents, tenant: tenant.rawValue, status: .badRequest, "\(invalid.count) event(s) are invalid; nothing was accepted",
                events: reasons, eventCount: invalid.count)
        }
    }

    private func refuse(
        _ rejection: GatewayMetrics.Rejection, tenant: String, status: HTTPResponse.Status, _ reason: String, retryAfter: Duration? = nil,
        events: [JSONValue] = [], eventCount: Int = 0
    ) -> Result<Int, Refusal> {
        metrics.rejected(rejection, tenant: tenant, events: eventCount)
        var body: JSONObject = ["error": .string(rejection.rawValue), "reason": .string(reason)]
        if !events.isEmpty { body.append("events", .array(events)) }
        var response = Self.json(status, body)
        if let retryAfter {
            let seconds = retryAfter.components.seconds + (retryAfter.components.attoseconds > 0 ? 1 : 0)
            response.headers[.retryAfter] = String(max(1, seconds))
        }
        return .failure(Refusal(response: response))
    }

    private static func eventReason(index: Int, field: String, reason: String) -> JSONValue {
        .object(["index": .integer(Int64(index)), "field": .string(field), "reason": .string(reason)])
    }

    static func json(_ status: HTTPResponse.Status, _ body: JSONObject) -> Response {
        var writer = JSONWriter()
        writer.write(.object(body))
        return Response(
            status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: writer.bytes)))
    }

    /// `Bearer <token>` → token.
    static func bearerToken(_ header: String?) -> String? {
        guard let header, header.count > 7, header.prefix(7).lowercased() == "bearer " else { return nil }
        let token = header.dropFirst(7).trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : token
    }

    /// `Application/CloudEvents+JSON; charset=utf-8` → `application/cloudevents+json`.
    static func mediaType(_ header: String) -> String {
        String(header.split(separator: ";", maxSplits: 1).first ?? "").trimmingCharacters(in: .whitespaces).lowercased()
    }
}

/// A refused request's response.
struct Refusal: Error {
    let response: Response
}

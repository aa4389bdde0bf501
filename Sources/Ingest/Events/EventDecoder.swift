import Tenancy

/// Why a request body or log record yields no events.
public enum EventDecodingError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The body is not valid JSON, or not of the expected shape; nothing of it is usable.
    case malformed(String)
    /// The batch holds more events than allowed.
    case tooManyEvents(count: Int, limit: Int)
    /// Well-formed JSON, but these events (by position; 0 for a single event) are not acceptable.
    case invalidEvents([InvalidEvent])

    public var description: String {
        switch self {
        case .malformed(let reason): "malformed body: \(reason)"
        case .tooManyEvents(let count, let limit): "the batch holds \(count) events; the limit is \(limit)"
        case .invalidEvents(let events):
            events.map { event in "event \(event.index): " + event.problems.map(\.description).joined(separator: "; ") }.joined(separator: "\n")
        }
    }
}

/// An event of a request that is refused, with every reason.
public struct InvalidEvent: Sendable, Equatable {
    public let index: Int
    public let problems: [EventProblem]
}

/// Reads CloudEvents JSON (one event, or a batch array) into validated `UsageEvent`s.
public struct EventDecoder: Sendable {
    public var limits: EventLimits

    public init(limits: EventLimits = EventLimits()) {
        self.limits = limits
    }

    /// One event (`application/cloudevents+json`).
    public func decodeEvent(_ body: some Collection<UInt8>, now: EventTime = .now()) throws(EventDecodingError) -> UsageEvent {
        let value = try parse(body)
        switch event(from: value, now: now) {
        case .success(let event): return event
        case .failure(let problems): throw .invalidEvents([InvalidEvent(index: 0, problems: problems.problems)])
        }
    }

    /// A batch (`application/cloudevents-batch+json`): all events, or every reason any is refused.
    public func decodeBatch(_ body: some Collection<UInt8>, maximumCount: Int, now: EventTime = .now()) throws(EventDecodingError) -> [UsageEvent] {
        guard case .array(let elements) = try parse(body) else { throw .malformed("a batch must be a JSON array of events") }
        guard !elements.isEmpty else { throw .malformed("the batch is empty") }
        guard elements.count <= maximumCount else { throw .tooManyEvents(count: elements.count, limit: maximumCount) }
        var events: [UsageEvent] = []
        events.reserveCapacity(elements.count)
        var invalid: [InvalidEvent] = []
        for (index, element) in elements.enumerated() {
            switch event(from: element, now: now) {
            case .success(let event): events.append(event)
            case .failure(let problems): invalid.append(InvalidEvent(index: index, problems: problems.problems))
            }
        }
        guard invalid.isEmpty else { throw .invalidEvents(invalid) }
        return events
    }

    private func parse(_ body: some Collection<UInt8>) throws(EventDecodingError) -> JSONValue {
        guard !body.isEmpty else { throw .malformed("the body is empty") }
        do {
            return try JSONParser.parse(body)
        } catch {
            throw .malformed("\(error)")
        }
    }

    /// The event a parsed JSON value describes, or every reason it does not.
    public func event(from value: JSONValue, now: EventTime) -> Result<UsageEvent, EventProblems> {
        guard case .object(let object) = value else {
            return .failure(EventProblems([EventProblem(field: "", reason: "an event must be a JSON object, not \(value.kindDescription)")]))
        }
        var problems: [EventProblem] = []
        func string(_ name: String, required: Bool = true) -> String? {
            switch object[name] {
            case .string(let text): return text
            case nil:
                if required { problems.append(EventProblem(field: name, reason: "is required")) }
                return nil
            case let other?:
                problems.append(EventProblem(field: name, reason: "must be a string, not \(other.kindDescription)"))
                return nil
            }
        }
        if let version = string("specversion"), version != "1.0" {
            problems.append(EventProblem(field: "specversion", reason: "must be \"1.0\", got \(version.prefix(40).debugDescription)"))
        }
        let id = string("id")
        let source = string("source")
        let type = string("type")
        let subject = string("subject")
        var time: EventTime?
        if let text = string("time") {
            time = EventTime(rfc3339: text)
            if time == nil {
                problems.append(EventProblem(field: "time", reason: "\(text.prefix(64).debugDescription) is not an RFC 3339 date-time like 2026-11-28T20:15:00Z"))
            }
        }
        var tenant: TenantID?
        if let text = string("tenant") {
            do { tenant = try TenantID(text) } catch { problems.append(EventProblem(field: "tenant", reason: "\(error)")) }
        }
        if let contentType = string("datacontenttype", required: false), !contentType.hasPrefix("application/json") {
            problems.append(EventProblem(field: "datacontenttype", reason: "must be application/json, got \(contentType.prefix(64).debugDescription)"))
        }
        let dataSchema = string("dataschema", required: false)
        if object["data_base64"] != nil {
            problems.append(EventProblem(field: "data_base64", reason: "is not accepted: usage data must be a JSON object in `data`"))
        }
        var data: JSONObject?
        switch object["data"] {
        case .object(let members): data = members
        case nil: problems.append(EventProblem(field: "data", reason: "is required: a JSON object with the measured values"))
        case let other?: problems.append(EventProblem(field: "data", reason: "must be a JSON object, not \(other.kindDescription)"))
        }
        let extensions = JSONObject(object.members.filter { !UsageEvent.knownAttributes.contains($0.name) })
        guard problems.isEmpty, let id, let source, let type, let subject, let time, let tenant, let data else {
            return .failure(EventProblems(problems))
        }
        let event = UsageEvent(
            id: id, source: source, type: type, subject: subject, time: time, tenant: tenant, data: data, dataSchema: dataSchema,
            extensions: extensions)
        let eventProblems = event.problems(limits: limits, now: now)
        return eventProblems.isEmpty ? .success(event) : .failure(EventProblems(eventProblems))
    }
}

/// The reasons one event is refused.
public struct EventProblems: Error, Sendable, Equatable {
    public let problems: [EventProblem]
    public init(_ problems: [EventProblem]) { self.problems = problems }
}

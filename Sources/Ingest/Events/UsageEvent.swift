import Tenancy

/// A tenant-tagged usage event: a CloudEvents 1.0 event whose extension attribute `tenant`
/// names the tenant, `subject` the tenant's customer being metered, and `data` (a JSON object)
/// the measured values.
public struct UsageEvent: Sendable, Equatable {
    /// Unique per `source`; a retried event keeps its id, and `(tenant, source, id)` is counted once.
    public var id: String
    public var source: String
    public var type: String
    public var subject: String
    public var time: EventTime
    public var tenant: TenantID
    public var data: JSONObject
    public var dataSchema: String?
    /// Further CloudEvents extension attributes: lowercase alphanumeric names, scalar values.
    public var extensions: JSONObject

    public init(
        id: String, source: String, type: String, subject: String, time: EventTime, tenant: TenantID, data: JSONObject,
        dataSchema: String? = nil, extensions: JSONObject = JSONObject()
    ) {
        self.id = id
        self.source = source
        self.type = type
        self.subject = subject
        self.time = time
        self.tenant = tenant
        self.data = data
        self.dataSchema = dataSchema
        self.extensions = extensions
    }

    /// The event in CloudEvents structured JSON: attributes first, `time` normalised to UTC with
    /// microseconds, `data` last.
    public func jsonBytes() -> [UInt8] {
        var writer = JSONWriter(reservingCapacity: 256)
        writer.beginObject()
        writer.write(member: "specversion", .string("1.0"))
        writer.write(member: "id", .string(id))
        writer.write(member: "source", .string(source))
        writer.write(member: "type", .string(type))
        writer.write(member: "subject", .string(subject))
        writer.write(member: "time", time)
        writer.write(member: "tenant", .string(tenant.rawValue))
        writer.write(member: "datacontenttype", .string("application/json"))
        if let dataSchema { writer.write(member: "dataschema", .string(dataSchema)) }
        for member in extensions.members { writer.write(member: member.name, member.value) }
        writer.write(member: "data", .object(data))
        writer.endObject()
        return writer.bytes
    }
}

/// What the decoder and the SDK accept.
public struct EventLimits: Sendable, Equatable {
    public var maximumIDLength = 256
    public var maximumSourceLength = 1024
    public var maximumTypeLength = 256
    public var maximumSubjectLength = 256
    /// Bytes of `data` as compact JSON.
    public var maximumDataBytes = 16 * 1024
    /// How far in the past an event's `time` may lie; nil accepts any.
    public var maximumAge: Duration? = .seconds(35 * 86_400)
    /// How far in the future an event's `time` may lie (clock skew); nil accepts any.
    public var maximumLead: Duration? = .seconds(300)

    public init() {}

    /// No bounds on `time`: for reading events back from the log, where lateness is the
    /// processor's decision.
    public static var withoutTimeBounds: EventLimits {
        var limits = EventLimits()
        limits.maximumAge = nil
        limits.maximumLead = nil
        return limits
    }
}

/// One reason an event is refused: the attribute and what is wrong with it.
public struct EventProblem: Sendable, Equatable, CustomStringConvertible {
    public let field: String
    public let reason: String

    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }

    public var description: String { "\(field): \(reason)" }
}

extension UsageEvent {
    /// The CloudEvents context attributes Tally reads; any other member is an extension.
    static let knownAttributes: Set<String> = [
        "specversion", "id", "source", "type", "subject", "time", "tenant", "datacontenttype", "dataschema", "data", "data_base64",
    ]

    /// Everything wrong with this event under `limits` at `now`; empty when it is acceptable.
    public func problems(limits: EventLimits, now: EventTime) -> [EventProblem] {
        var problems: [EventProblem] = []
        func checkText(_ value: String, _ field: String, maximum: Int) {
            if value.isEmpty {
                problems.append(EventProblem(field: field, reason: "must not be empty"))
            } else if value.utf8.count > maximum {
                problems.append(EventProblem(field: field, reason: "is \(value.utf8.count) bytes long; the limit is \(maximum)"))
            } else if value.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) {
                problems.append(EventProblem(field: field, reason: "must not contain control characters"))
            }
        }
        checkText(id, "id", maximum: limits.maximumIDLength)
        checkText(source, "source", maximum: limits.maximumSourceLength)
        checkText(type, "type", maximum: limits.maximumTypeLength)
        checkText(subject, "subject", maximum: limits.maximumSubjectLength)
        if let dataSchema { checkText(dataSchema, "dataschema", maximum: limits.maximumSourceLength) }
        if !(Self.earliestTime...Self.latestTime).contains(time) {
            problems.append(EventProblem(field: "time", reason: "must lie in the years 0001 to 9999"))
        }
        if let maximumAge = limits.maximumAge, time < now.advanced(by: .zero - maximumAge) {
            problems.append(EventProblem(field: "time", reason: "\(time) is more than \(Self.describe(maximumAge)) in the past"))
        }
        if let maximumLead = limits.maximumLead, time > now.advanced(by: maximumLead) {
            problems.append(EventProblem(field: "time", reason: "\(time) is more than \(Self.describe(maximumLead)) in the future"))
        }
        let dataBytes = JSONWriter.encodedLength(of: .object(data))
        if dataBytes > limits.maximumDataBytes {
            problems.append(EventProblem(field: "data", reason: "is \(dataBytes) bytes as JSON; the limit is \(limits.maximumDataBytes)"))
        }
        for member in extensions.members {
            if Self.knownAttributes.contains(member.name) || !Self.isExtensionName(member.name) {
                problems.append(EventProblem(field: member.name, reason: "not a CloudEvents extension name (1-20 lowercase letters or digits)"))
            }
            switch member.value {
            case .string, .integer, .double, .bool: break
            default: problems.append(EventProblem(field: member.name, reason: "extension attributes must be strings, numbers or booleans, not \(member.value.kindDescription)"))
            }
        }
        return problems
    }

    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: what RFC 3339 can write.
    static let earliestTime = EventTime(microsecondsSinceEpoch: -62_135_596_800_000_000)
    static let latestTime = EventTime(microsecondsSinceEpoch: 253_402_300_799_999_999)

    static func isExtensionName(_ name: String) -> Bool {
        (1...20).contains(name.utf8.count)
            && name.utf8.allSatisfy { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
    }

    private static func describe(_ duration: Duration) -> String {
        let seconds = duration.components.seconds
        if seconds % 86_400 == 0 { return "\(seconds / 86_400) days" }
        if seconds % 60 == 0 { return "\(seconds / 60) minutes" }
        return "\(seconds) seconds"
    }
}

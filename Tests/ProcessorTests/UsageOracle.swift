import Events
import Foundation
import Kafka
import Tenancy
import TestSupport

/// A random event stream with the expected results computed independently of the processor:
/// many tenants in several time zones, subjects, meters, duplicates, out-of-order and late
/// events, values some meters cannot use, and records that are not events at all.
struct UsageOracle {
    static let meters = """
        meters:
        {tenants}
        """
    static let zones = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC"]

    struct Key: Hashable, CustomStringConvertible {
        let tenant: String, meter: String, subject: String, window: String, start: Int64, group: String
        var description: String { "\(tenant)/\(meter)/\(subject)/\(window)@\(start)/\(group)" }
    }

    struct Window: Equatable {
        var value: Decimal
        var total: Decimal
        var count: Int64
        var first: Int64
        var last: Int64
        var distinct: Set<String>
    }

    struct Stats: Equatable {
        var counted: Int64 = 0, deduplicated: Int64 = 0, late: Int64 = 0, rejected: Int64 = 0
    }

    let tenants: [String]
    var records: [ProducerRecord] = []
    var expected: [Key: Window] = [:]
    var aggregations: [String: String] = [:]
    var stats: [String: Stats] = [:]
    var deadLetters = 0

    /// The meters every tenant has: (name, event type, aggregation, value field, group field, windows).
    static let meterSpecs: [(name: String, type: String, aggregation: String, value: String?, group: String?, windows: [String])] = [
        ("requests", "api.request", "count", nil, nil, ["hour", "day"]),
        ("tokens", "api.request", "sum", "tokens", "model", ["hour", "month"]),
        ("max_latency", "api.request", "max", "latency_ms", nil, ["day"]),
        ("min_latency", "api.request", "min", "latency_ms", nil, ["day"]),
        ("avg_latency", "api.request", "avg", "latency_ms", nil, ["day"]),
        ("users", "api.request", "unique_count", "user", nil, ["day"]),
        ("plan", "api.request", "latest", "plan_level", nil, ["month"]),
        ("storage", "storage.sample", "sum", "gb", nil, ["day"]),
    ]

    var metersYAML: String {
        "meters:\n" + tenants.flatMap { tenant in
            Self.meterSpecs.map { spec in
                var line = "  - {tenant: \(tenant), name: \(spec.name), event_type: \(spec.type), aggregation: \(spec.aggregation)"
                if let value = spec.value { line += ", value: \(value)" }
                if let group = spec.group { line += ", group_by: [\(group)]" }
                return line + ", windows: [\(spec.windows.joined(separator: ", "))]}"
            }
        }.joined(separator: "\n") + "\n"
    }

    var tenantsYAML: String {
        "tenants:\n" + tenants.enumerated().map { index, tenant in "  - id: \(tenant)\n    time_zone: \(Self.zones[index % Self.zones.count])\n" }.joined()
    }

    init(events count: Int, tenants tenantCount: Int, seed: UInt64, now: Date = Date()) {
        tenants = (0..<tenantCount).map { "t\($0)" }
        var random = SeededRandom(state: seed)
        var emitted: [(tenant: String, event: UsageEvent)] = []
        var seen: [String: Set<String>] = [:]
        let calendars = Dictionary(uniqueKeysWithValues: tenants.enumerated().map { index, tenant in
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = TimeZone(identifier: Self.zones[index % Self.zones.count])!
            return (tenant, calendar)
        })
        for spec in Self.meterSpecs { aggregations[spec.name] = spec.aggregation }
        for number in 0..<count {
            let tenant = tenants[Int.random(in: 0..<tenantCount, using: &random)]
            let roll = Int.random(in: 0..<100, using: &random)
            // Records that are not events at all.
            if roll == 0 {
                records.append(ProducerRecord(topic: "events", key: Array(tenant.utf8), value: Array("{not an event \(number)".utf8)))
                stats[tenant, default: Stats()].rejected += 1
                deadLetters += 1
                continue
            }
            let event: UsageEvent
            if roll < 6, !emitted.isEmpty {
                // A retry of an earlier event of any tenant: byte for byte the same record.
                let earlier = emitted[Int.random(in: 0..<emitted.count, using: &random)]
                event = earlier.event
            } else {
                let late = roll < 8
                let age = late ? 9 * 86_400.0 + Double.random(in: 0..<86_400, using: &random) : Double.random(in: 0..<(6 * 86_400), using: &random)
                let time = EventTime(microsecondsSinceEpoch: Int64(((now.timeIntervalSince1970 - age) * 1_000_000).rounded(.down)))
                let isStorage = Int.random(in: 0..<5, using: &random) == 0
                var data: JSONObject = [:]
                if isStorage {
                    data.append("gb", .double(Double(Int.random(in: 0..<100_000, using: &random)) / 1000))
                } else {
                    switch Int.random(in: 0..<100, using: &random) {
                    case 0..<3: data.append("tokens", .string("many"))
                    case 3..<5: break
                    default: data.append("tokens", .integer(Int64.random(in: 0..<1000, using: &random)))
                    }
                    data.append("latency_ms", .double(Double(Int.random(in: 1..<500_000, using: &random)) / 1000))
                    if Int.random(in: 0..<50, using: &random) != 0 { data.append("model", .string(["small", "large", "xl"][Int.random(in: 0..<3, using: &random)])) }
                    data.append("user", .string("u\(Int.random(in: 0..<30, using: &random))"))
                    data.append("plan_level", .integer(Int64.random(in: 1...5, using: &random)))
                }
                event = UsageEvent(
                    id: "e\(number)", source: "/svc/\(number % 3)", type: isStorage ? "storage.sample" : "api.request",
                    subject: "c\(Int.random(in: 0..<40, using: &random))", time: time, tenant: try! TenantID(tenant), data: data)
                emitted.append((tenant, event))
            }
            let owner = event.tenant.rawValue
            records.append(
                ProducerRecord(
                    topic: "events", key: Array(owner.utf8), value: event.jsonBytes(),
                    headers: [KafkaHeader(name: EventHeaders.tenant, value: owner), KafkaHeader(name: EventHeaders.type, value: event.type)],
                    timestampMilliseconds: event.time.millisecondsSinceEpoch))
            // What one pass over the log must produce: late first, then dedupe, then the meters.
            let micros = event.time.microsecondsSinceEpoch
            if Double(micros) / 1_000_000 < now.timeIntervalSince1970 - 7 * 86_400 {
                stats[owner, default: Stats()].late += 1
                deadLetters += 1
                continue
            }
            guard seen[owner, default: []].insert("\(event.source)\u{0}\(event.id)").inserted else {
                stats[owner, default: Stats()].deduplicated += 1
                continue
            }
            stats[owner, default: Stats()].counted += 1
            for spec in Self.meterSpecs where spec.type == event.type {
                var value: Decimal = 1
                var distinct: Set<String> = []
                if let field = spec.value {
                    switch event.data[field] {
                    case .integer(let number)?: value = Decimal(number); distinct = ["\(number)"]
                    case .double(let number)?: value = Decimal(string: "\(number)")!
                    case .string(let text)? where spec.aggregation == "unique_count": distinct = ["\"\(text)\""]
                    default: continue  // this meter cannot use the event
                    }
                }
                var group = ""
                if let field = spec.group {
                    guard case .string(let text)? = event.data[field] else { continue }
                    group = "[\"\(text)\"]"
                }
                for window in spec.windows {
                    let calendar = calendars[owner]!
                    let seconds = Double(micros) / 1_000_000
                    let start: Date =
                        switch window {
                        case "hour": Date(timeIntervalSince1970: (seconds / 3600).rounded(.down) * 3600)
                        case "day": calendar.startOfDay(for: Date(timeIntervalSince1970: seconds))
                        default: calendar.date(from: calendar.dateComponents([.year, .month], from: Date(timeIntervalSince1970: seconds)))!
                        }
                    let key = Key(
                        tenant: owner, meter: spec.name, subject: event.subject, window: window,
                        start: Int64((start.timeIntervalSince1970 * 1_000_000).rounded()), group: group)
                    var state = expected[key] ?? Window(value: 0, total: 0, count: 0, first: micros, last: micros, distinct: [])
                    let isFirst = state.count == 0
                    switch spec.aggregation {
                    case "count": state.value += 1
                    case "sum": state.value += value
                    case "min": state.value = isFirst ? value : min(state.value, value)
                    case "max": state.value = isFirst ? value : max(state.value, value)
                    case "latest": if isFirst || micros >= state.last { state.value = value }
                    case "unique_count":
                        state.distinct.formUnion(distinct)
                        state.value = Decimal(state.distinct.count)
                    default: break  // avg: from total and count
                    }
                    state.total += value
                    state.count += 1
                    state.first = min(state.first, micros)
                    state.last = max(state.last, micros)
                    expected[key] = state
                }
            }
        }
    }
}

import Events
import Foundation
import Sink
import Tenancy

/// Why one meter could not use an event; the other meters still count it.
public struct MeterFailure: Error, Sendable, Equatable {
    public let meter: String
    public let reason: String

    public init(meter: String, reason: String) {
        self.meter = meter
        self.reason = reason
    }
}

/// Turns an event into the usage deltas of its tenant's meters: one per meter and window,
/// in the window of the event's time (UTC for minute and hour, the tenant's zone for day and
/// month, so calendar months are right outside UTC).
///
/// It remembers the last day and month window it computed in each time zone: the events of a
/// batch mostly fall into the same ones, and Foundation's calendar takes microseconds to find
/// a window (a fifth of the usage processor's own CPU time before).
public struct UsageCalculator: Sendable {
    private let catalog: MeterCatalog
    /// One calendar per distinct time zone; the first is UTC.
    private let calendars: [Calendar]
    /// The index in `calendars` of each tenant with a time zone; others are in UTC.
    private let calendarOfTenant: [TenantID: Int]
    /// The last day and month window found in each calendar, by the same index.
    private var lastDays: [DateInterval?]
    private var lastMonths: [DateInterval?]

    public init(catalog: MeterCatalog, timeZones: [TenantID: TimeZone]) {
        self.catalog = catalog
        var zones = [TimeZone(identifier: "UTC")!]
        var calendarOfTenant: [TenantID: Int] = [:]
        for (tenant, zone) in timeZones {
            if let index = zones.firstIndex(of: zone) {
                calendarOfTenant[tenant] = index
            } else {
                calendarOfTenant[tenant] = zones.count
                zones.append(zone)
            }
        }
        calendars = zones.map { zone in
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = zone
            return calendar
        }
        self.calendarOfTenant = calendarOfTenant
        lastDays = Array(repeating: nil, count: zones.count)
        lastMonths = lastDays
    }

    /// The event's deltas for every meter of its tenant and type, and the meters that could
    /// not use it.
    public mutating func usage(of event: UsageEvent) -> (rows: [UsageRow], failures: [MeterFailure]) {
        let meters = catalog.meters(for: event.tenant, type: event.type)
        guard !meters.isEmpty else { return ([], []) }
        var rows: [UsageRow] = []
        rows.reserveCapacity(meters.count)
        var failures: [MeterFailure] = []
        let time = event.time.date
        for meter in meters {
            let measured: (value: UsageAmount, distinct: Set<String>)
            switch measure(meter, in: event.data) {
            case .success(let value): measured = value
            case .failure(let failure): failures.append(failure); continue
            }
            var groupValues: [JSONValue] = []
            var missingGroup: String?
            for path in meter.groupBy {
                guard let value = Self.lookup(path, in: event.data), Self.isScalar(value) else {
                    missingGroup = path.joined(separator: ".")
                    break
                }
                groupValues.append(value)
            }
            if let missingGroup {
                failures.append(MeterFailure(meter: meter.name, reason: "group field data.\(missingGroup) is missing or not a string, number or boolean"))
                continue
            }
            let groupKey: String
            if groupValues.isEmpty {
                groupKey = ""
            } else {
                var writer = JSONWriter()
                writer.write(.array(groupValues))
                groupKey = String(decoding: writer.bytes, as: UTF8.self)
            }
            for window in meter.windows {
                rows.append(
                    UsageRow(
                        tenant: event.tenant, meter: meter.name, subject: event.subject, windowSize: window,
                        windowStart: windowStart(of: time, size: window, tenant: event.tenant), groupKey: groupKey, aggregation: meter.aggregation,
                        value: measured.value, total: meter.aggregation == .count ? 1 : measured.value, eventCount: 1, firstEventAt: time,
                        lastEventAt: time, distinctValues: measured.distinct))
            }
        }
        return (rows, failures)
    }

    /// The start of the window of `size` holding `time`.
    public mutating func windowStart(of time: Date, size: UsageRow.WindowSize, tenant: TenantID) -> Date {
        let seconds = time.timeIntervalSince1970
        switch size {
        case .minute: return Date(timeIntervalSince1970: (seconds / 60).rounded(.down) * 60)
        case .hour: return Date(timeIntervalSince1970: (seconds / 3600).rounded(.down) * 3600)
        case .day:
            let calendar = calendarOfTenant[tenant] ?? 0
            return Self.start(of: .day, holding: time, in: calendars[calendar], last: &lastDays[calendar])
        case .month:
            let calendar = calendarOfTenant[tenant] ?? 0
            return Self.start(of: .month, holding: time, in: calendars[calendar], last: &lastMonths[calendar])
        }
    }

    /// The start of the calendar's `component` holding `time`: that of `last` when it holds
    /// `time`, else found by the calendar and kept as `last`.
    private static func start(of component: Calendar.Component, holding time: Date, in calendar: Calendar, last: inout DateInterval?) -> Date {
        if let last, last.start <= time, time < last.end { return last.start }
        let window = calendar.dateInterval(of: component, for: time)!
        last = window
        return window.start
    }

    private func measure(_ meter: MeterDefinition, in data: JSONObject) -> Result<(value: UsageAmount, distinct: Set<String>), MeterFailure> {
        if meter.aggregation == .count { return .success((1, [])) }
        // The value's path as failures name it; built only for them.
        func path() -> String { "data." + meter.valuePath.joined(separator: ".") }
        guard let value = Self.lookup(meter.valuePath, in: data) else {
            return .failure(MeterFailure(meter: meter.name, reason: "\(path()) is missing"))
        }
        if meter.aggregation == .uniqueCount {
            guard Self.isScalar(value) else {
                return .failure(MeterFailure(meter: meter.name, reason: "\(path()) must be a string, number or boolean, not \(value.kindDescription)"))
            }
            var writer = JSONWriter()
            writer.write(value)
            return .success((0, [String(decoding: writer.bytes, as: UTF8.self)]))
        }
        switch value {
        case .integer(let number): return .success((.integer(number), []))
        case .double(let number): return .success((.decimal(Decimal(string: number.description) ?? Decimal(number)), []))
        default: return .failure(MeterFailure(meter: meter.name, reason: "\(path()) must be a number, not \(value.kindDescription)"))
        }
    }

    static func lookup(_ path: [String], in data: JSONObject) -> JSONValue? {
        var current = JSONValue.object(data)
        for name in path {
            guard case .object(let object) = current, let next = object[name] else { return nil }
            current = next
        }
        return current
    }

    private static func isScalar(_ value: JSONValue) -> Bool {
        switch value {
        case .string, .integer, .double, .bool: true
        default: false
        }
    }
}

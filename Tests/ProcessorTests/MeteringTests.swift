import Declarations
import Events
import Foundation
import Metering
import Sink
import Tenancy
import Testing
import TestSupport

@Suite struct MeterCatalogTests {
    @Test func metersParseWithDefaults() throws {
        let catalog = try MeterCatalog.parse(
            """
            meters:
              - tenant: acme
                name: tokens
                event_type: api.request
                aggregation: sum
                value: usage.tokens
                group_by: [model, region]
                windows: [hour, month]
              - tenant: acme
                name: requests
                event_type: api.request
                aggregation: count
            """, file: "meters.yaml")
        let acme = try TenantID("acme")
        #expect(catalog.meters(for: acme, type: "api.request").map(\.name) == ["tokens", "requests"])
        #expect(catalog.meters[0].valuePath == ["usage", "tokens"])
        #expect(catalog.meters[0].groupBy == [["model"], ["region"]])
        #expect(catalog.meters[0].windows == [.hour, .month])
        #expect(catalog.meters[1].windows == [.hour, .day])
        #expect(catalog.meters(for: acme, type: "other").isEmpty)
    }

    static let head = "meters:\n  - tenant: acme\n    name: m\n    event_type: t\n"

    @Test(arguments: [
        (head + "    aggregation: median\n    value: x\n", 5, "meters[0].aggregation", "must be one of"),
        (head + "    aggregation: sum\n", 2, "meters[0].value", "needs the path of its value"),
        (head + "    aggregation: count\n    value: x\n", 6, "meters[0].value", "reads no value"),
        (head + "    aggregation: sum\n    value: a..b\n", 6, "meters[0].value", "dotted path"),
        (head + "    aggregation: count\n    group_by: [a, b, c, d]\n", 6, "meters[0].group_by", "at most 3"),
        (head + "    aggregation: count\n    windows: [week]\n", 6, "meters[0].windows[0]", "minute, hour, day, month"),
        ("meters:\n  - tenant: Acme\n    name: m\n    event_type: t\n    aggregation: count\n", 2, "meters[0].tenant", "must match"),
        (head + "    aggregation: count\n" + head.dropFirst(8) + "    aggregation: count\n", 6, "meters[1].name", "already declared on line 2"),
    ])
    func badMetersFilesNameLineFieldAndReason(yaml: String, line: Int, field: String, reason: String) {
        #expect {
            _ = try MeterCatalog.parse(yaml, file: "meters.yaml")
        } throws: { error in
            guard let error = error as? DeclarationError else { return false }
            return error.line == line && error.field == field && error.reason.contains(reason)
        }
    }
}

@Suite struct UsageCalculatorTests {
    func event(_ data: JSONObject, at time: String, tenant: String = "acme") throws -> UsageEvent {
        UsageEvent(
            id: "e1", source: "/s", type: "api.request", subject: "customer_1", time: EventTime(rfc3339: time)!, tenant: try TenantID(tenant), data: data)
    }

    func calculator(_ meters: String, zones: [String: String] = [:]) throws -> UsageCalculator {
        UsageCalculator(
            catalog: try MeterCatalog.parse("meters:\n" + meters, file: "meters.yaml"),
            timeZones: Dictionary(uniqueKeysWithValues: try zones.map { (try TenantID($0.key), TimeZone(identifier: $0.value)!) }))
    }

    @Test func dayAndMonthWindowsFollowTheTenantsTimeZone() throws {
        var calculator = try calculator(
            "  - {tenant: acme, name: n, event_type: api.request, aggregation: count, windows: [minute, hour, day, month]}\n",
            zones: ["acme": "Europe/Berlin"])
        // 23:30 UTC on 31 October is 00:30 on 1 November in Berlin (CET, UTC+1).
        let rows = calculator.usage(of: try event([:], at: "2026-10-31T23:30:45Z")).rows
        let starts = Dictionary(uniqueKeysWithValues: rows.map { ($0.windowSize, EventTime(date: $0.windowStart).description) })
        #expect(starts[.minute] == "2026-10-31T23:30:00.000000Z")
        #expect(starts[.hour] == "2026-10-31T23:00:00.000000Z")
        #expect(starts[.day] == "2026-10-31T23:00:00.000000Z")
        #expect(starts[.month] == "2026-10-31T23:00:00.000000Z")
        // The day the clocks go forward is 23 hours long and starts at 23:00 UTC the day before.
        let spring = calculator.usage(of: try event([:], at: "2026-03-29T12:00:00Z")).rows
        #expect(spring.first { $0.windowSize == .day }.map { EventTime(date: $0.windowStart).description } == "2026-03-28T23:00:00.000000Z")
        // A tenant without a zone is in UTC.
        var utcCalculator = try self.calculator("  - {tenant: globex, name: n, event_type: api.request, aggregation: count, windows: [month]}\n")
        let utc = utcCalculator.usage(of: try event([:], at: "2026-10-31T23:30:45Z", tenant: "globex")).rows
        #expect(utc.map { EventTime(date: $0.windowStart).description } == ["2026-10-01T00:00:00.000000Z"])
    }

    /// Events in any order, around midnights, month ends and clock changes, in three zones
    /// (and UTC for a tenant without one): every day and month window is the one Foundation's
    /// calendar finds for that event alone.
    @Test func dayAndMonthWindowsOfEventsInSequenceAreTheCalendarsOwn() throws {
        let zones = ["acme": "Europe/Berlin", "globex": "America/New_York", "initech": "Asia/Kolkata"]
        var calculator = try calculator(
            ["acme", "globex", "initech", "umbrella"].map {
                "  - {tenant: \($0), name: n, event_type: api.request, aggregation: count, windows: [day, month]}\n"
            }.joined(),
            zones: zones)
        var random = SeededRandom(state: 7)
        // Around the end of October 2026: Berlin leaves summer time on the 25th, New York on 1 November.
        let start = EventTime(rfc3339: "2026-10-24T00:00:00Z")!.date.timeIntervalSince1970
        var seconds = start
        for _ in 0..<5_000 {
            let tenant = ["acme", "globex", "initech", "umbrella"][Int(random.next() % 4)]
            // Mostly within two hours of the previous event, as in a batch; sometimes anywhere in ten days.
            seconds = random.next() % 8 == 0
                ? start + Double(random.next() % (10 * 86_400)) : max(start, seconds + Double(random.next() % 14_400) - 7_200)
            let time = Date(timeIntervalSince1970: seconds + Double(random.next() % 1000) / 1000)
            var reference = Calendar(identifier: .gregorian)
            reference.timeZone = TimeZone(identifier: zones[tenant] ?? "UTC")!
            let rows = calculator.usage(of: try event([:], at: EventTime(date: time).description, tenant: tenant)).rows
            let starts = Dictionary(uniqueKeysWithValues: rows.map { ($0.windowSize, $0.windowStart) })
            #expect(starts[.day] == reference.dateInterval(of: .day, for: rows[0].firstEventAt)!.start, "\(tenant) at \(time)")
            #expect(starts[.month] == reference.dateInterval(of: .month, for: rows[0].firstEventAt)!.start, "\(tenant) at \(time)")
        }
    }

    @Test func aMeterThatCannotUseTheEventFailsAloneWithItsReason() throws {
        var calculator = try calculator(
            """
              - {tenant: acme, name: requests, event_type: api.request, aggregation: count, windows: [hour]}
              - {tenant: acme, name: tokens, event_type: api.request, aggregation: sum, value: usage.tokens, windows: [hour]}
              - {tenant: acme, name: by_model, event_type: api.request, aggregation: max, value: latency, group_by: [model], windows: [hour]}
              - {tenant: acme, name: users, event_type: api.request, aggregation: unique_count, value: user, windows: [hour]}

            """)
        let (rows, failures) = calculator.usage(of: try event(["usage": .object(["tokens": .string("many")]), "latency": .double(1.5), "user": .object([:])], at: "2026-11-28T10:00:00Z"))
        #expect(rows.map(\.meter) == ["requests"])
        #expect(failures == [
            MeterFailure(meter: "tokens", reason: "data.usage.tokens must be a number, not a string"),
            MeterFailure(meter: "by_model", reason: "group field data.model is missing or not a string, number or boolean"),
            MeterFailure(meter: "users", reason: "data.user must be a string, number or boolean, not an object"),
        ])
        let good = calculator.usage(of: try event(
            ["usage": .object(["tokens": .integer(7)]), "latency": .double(0.1), "model": .string("large"), "user": .string("u1")], at: "2026-11-28T10:00:00Z"))
        #expect(good.failures.isEmpty)
        let byMeter = Dictionary(uniqueKeysWithValues: good.rows.map { ($0.meter, $0) })
        // Matched by case: `==` compares numbers, whichever form holds them.
        #expect({ if case .integer(7)? = byMeter["tokens"]?.value { true } else { false } }(), "an integer stays one")
        #expect({ if case .decimal(Decimal(string: "0.1")!)? = byMeter["by_model"]?.value { true } else { false } }(), "decimal, not the binary double")
        #expect(byMeter["by_model"]?.groupKey == "[\"large\"]")
        #expect(byMeter["users"]?.distinctValues == ["\"u1\""])
    }
}

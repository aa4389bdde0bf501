import Events
import Foundation
import Tenancy
import TestSupport
import Testing

/// A valid event as services send it, with one attribute replaced or removed.
func eventJSON(replacing attributes: [String: String?] = [:], time: String = EventTime.now().description) -> String {
    var members: [(String, String)] = [
        ("specversion", "\"1.0\""), ("id", "\"evt-1\""), ("source", "\"/billing/api\""), ("type", "\"api.request\""),
        ("subject", "\"customer-42\""), ("time", "\"\(time)\""), ("tenant", "\"acme\""), ("data", "{\"tokens\": 12, \"model\": \"m1\"}"),
    ]
    for (name, value) in attributes {
        members.removeAll { $0.0 == name }
        if let value { members.append((name, value)) }
    }
    return "{" + members.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
}

@Suite struct EventDecoderTests {
    let decoder = EventDecoder()

    @Test func aValidEventDecodesAndItsRecordValueReadsBackTheSame() throws {
        let event = try decoder.decodeEvent(Array(eventJSON(time: "2026-11-28T10:15:30.25+01:00").utf8), now: EventTime(rfc3339: "2026-11-28T10:00:00Z")!)
        #expect(event.id == "evt-1")
        #expect(event.tenant == (try TenantID("acme")))
        #expect(event.subject == "customer-42")
        #expect(event.time.description == "2026-11-28T09:15:30.250000Z")
        #expect(event.data["tokens"] == .integer(12))
        let again = try EventDecoder(limits: .withoutTimeBounds).decodeEvent(event.jsonBytes())
        #expect(again == event)
    }

    @Test(arguments: [
        (eventJSON(replacing: ["specversion": nil]), "specversion", "is required"),
        (eventJSON(replacing: ["specversion": "\"0.3\""]), "specversion", "must be \"1.0\""),
        (eventJSON(replacing: ["id": nil]), "id", "is required"),
        (eventJSON(replacing: ["id": "\"\""]), "id", "must not be empty"),
        (eventJSON(replacing: ["id": "\"\(String(repeating: "x", count: 257))\""]), "id", "the limit is 256"),
        (eventJSON(replacing: ["id": "\"a\\u0000b\""]), "id", "control characters"),
        (eventJSON(replacing: ["id": "7"]), "id", "must be a string, not a number"),
        (eventJSON(replacing: ["source": nil]), "source", "is required"),
        (eventJSON(replacing: ["type": "null"]), "type", "must be a string, not null"),
        (eventJSON(replacing: ["subject": nil]), "subject", "is required"),
        (eventJSON(replacing: ["tenant": nil]), "tenant", "is required"),
        (eventJSON(replacing: ["tenant": "\"Acme\""]), "tenant", "must match ^[a-z][a-z0-9_]{0,47}$"),
        (eventJSON(replacing: ["tenant": "\"acme\\\"; DROP SCHEMA tally; --\""]), "tenant", "must match"),
        (eventJSON(replacing: ["tenant": "\"caf\u{e9}\""]), "tenant", "must match"),
        (eventJSON(replacing: ["time": "\"yesterday\""]), "time", "is not an RFC 3339 date-time"),
        (eventJSON(replacing: ["time": "\"2026-02-30T00:00:00Z\""]), "time", "is not an RFC 3339"),
        (eventJSON(replacing: ["time": "\"2026-11-28 10:00:00Z\""]), "time", "is not an RFC 3339"),
        (eventJSON(replacing: ["time": "\"2020-01-01T00:00:00Z\""]), "time", "in the past"),
        (eventJSON(replacing: ["time": "\"2099-01-01T00:00:00Z\""]), "time", "in the future"),
        (eventJSON(replacing: ["data": nil]), "data", "is required"),
        (eventJSON(replacing: ["data": "[1, 2]"]), "data", "must be a JSON object, not an array"),
        (eventJSON(replacing: ["data": "{\"blob\": \"\(String(repeating: "y", count: 20_000))\"}"]), "data", "the limit is 16384"),
        (eventJSON(replacing: ["data_base64": "\"AAAA\""]), "data_base64", "is not accepted"),
        (eventJSON(replacing: ["datacontenttype": "\"text/plain\""]), "datacontenttype", "must be application/json"),
        (eventJSON(replacing: ["Region": "\"eu\""]), "Region", "not a CloudEvents extension name"),
        (eventJSON(replacing: ["region": "{\"a\": 1}"]), "region", "must be strings, numbers or booleans"),
    ])
    func eachBadAttributeIsRefusedWithItsFieldAndReason(json: String, field: String, reason: String) {
        #expect {
            _ = try decoder.decodeEvent(Array(json.utf8))
        } throws: { error in
            guard case .invalidEvents(let events) = error as? EventDecodingError, let problems = events.first?.problems else { return false }
            return problems.contains { $0.field == field && $0.reason.contains(reason) }
        }
    }

    @Test(arguments: [
        ("", "the body is empty"),
        ("{\"id\": ", "unexpected end of input"),
        ("{\"id\": \"a\",}", "expected a member name"),
        ("[1, 2", "unterminated array"),
        ("{\"a\": 1} x", "unexpected data after the JSON value"),
        ("{\"a\": 01}", "leading zeros"),
        ("{\"a\": 1e400}", "out of range"),
        ("{\"a\": 123456789012345678901234}", "does not fit in 64 bits"),
        ("{\"a\": 1, \"a\": 2}", "duplicate member name"),
        ("{\"a\": \"\\ud800\"}", "lone high surrogate"),
        ("{\"a\": \"\\q\"}", "invalid escape"),
        ("{\"a\": \"line\nbreak\"}", "unescaped control character"),
        ("{\"a\": tru}", "invalid literal"),
        (String(repeating: "[", count: 40) + String(repeating: "]", count: 40), "nesting deeper than 32"),
        ("\"just a string\"", "an event must be a JSON object"),
    ])
    func malformedBodiesAreRefusedWithTheReason(body: String, reason: String) {
        #expect {
            _ = try decoder.decodeEvent(Array(body.utf8))
        } throws: { error in
            "\(error)".contains(reason)
        }
    }

    @Test func invalidUTF8IsRefusedWithItsOffset() {
        var body = Array(eventJSON(replacing: ["subject": "\"cust-XX\""]).utf8)
        let position = body.firstIndex(of: UInt8(ascii: "X"))!
        body[position] = 0xC3
        body[position + 1] = 0x28  // 0xC3 must be followed by a continuation byte
        #expect {
            _ = try decoder.decodeEvent(body)
        } throws: { error in
            "\(error)" == "malformed body: invalid UTF-8 at byte \(position)"
        }
    }

    @Test func aBatchIsAcceptedWholeOrRefusedWithEveryInvalidEventByIndex() throws {
        let good = eventJSON()
        let events = try decoder.decodeBatch(Array("[\(good), \(good)]".utf8), maximumCount: 10)
        #expect(events.count == 2)

        let mixed = "[\(good), \(eventJSON(replacing: ["id": nil])), \(good), \(eventJSON(replacing: ["tenant": "\"X\"", "time": "\"never\""]))]"
        #expect {
            _ = try decoder.decodeBatch(Array(mixed.utf8), maximumCount: 10)
        } throws: { error in
            guard case .invalidEvents(let invalid) = error as? EventDecodingError else { return false }
            return invalid.map(\.index) == [1, 3] && invalid[1].problems.map(\.field).sorted() == ["tenant", "time"]
        }
        #expect(throws: EventDecodingError.tooManyEvents(count: 3, limit: 2)) {
            try decoder.decodeBatch(Array("[\(good), \(good), \(good)]".utf8), maximumCount: 2)
        }
        #expect(throws: EventDecodingError.malformed("the batch is empty")) { try decoder.decodeBatch(Array("[]".utf8), maximumCount: 2) }
        #expect(throws: EventDecodingError.malformed("a batch must be a JSON array of events")) {
            try decoder.decodeBatch(Array(good.utf8), maximumCount: 2)
        }
    }

    @Test(arguments: [
        ("2026-11-28T20:15:00Z", Int64(1_795_896_900_000_000)),
        ("2026-11-28t20:15:00.123456789z", Int64(1_795_896_900_123_456)),
        ("2026-11-28T21:45:00.5+01:30", Int64(1_795_896_900_500_000)),
        ("2024-02-29T00:00:00-00:00", Int64(1_709_164_800_000_000)),
        ("1969-12-31T23:59:59.999999Z", Int64(-1)),
    ])
    func rfc3339TimesParseToUTCMicroseconds(text: String, microseconds: Int64) throws {
        let time = try #require(EventTime(rfc3339: text))
        #expect(time.microsecondsSinceEpoch == microseconds)
        #expect(EventTime(rfc3339: time.description) == time)
    }

    @Test func timesRFC3339CannotWriteAreRefusedEvenWithoutTimeBounds() throws {
        var event = try decoder.decodeEvent(Array(eventJSON().utf8))
        event.time = EventTime(microsecondsSinceEpoch: 253_402_300_800_000_000)  // year 10000
        #expect(event.problems(limits: .withoutTimeBounds, now: .now()) == [EventProblem(field: "time", reason: "must lie in the years 0001 to 9999")])
        event.time = EventTime(rfc3339: "9999-12-31T23:59:59.999999Z")!
        #expect(event.problems(limits: .withoutTimeBounds, now: .now()).isEmpty)
    }

    @Test(arguments: ["2023-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-11-28T24:00:00Z", "2026-11-28T20:15:00", "2026-11-28T20:15:00.Z",
        "2026-11-28T20:15:00+1:00", "26-11-28T20:15:00Z"])
    func impossibleOrIncompleteTimesAreRefused(text: String) {
        #expect(EventTime(rfc3339: text) == nil)
    }
}

/// Thousands of random and mutated bodies: the decoder never crashes, and whatever it accepts
/// survives a round trip through the record encoding unchanged.
@Suite struct EventDecoderFuzzTests {
    @Test func randomAndMutatedBodiesNeverCrashTheDecoder() throws {
        var random = SeededRandom(state: 20_261_128)
        let decoder = EventDecoder(limits: .withoutTimeBounds)
        let seed = Array("[\(eventJSON()), \(eventJSON(replacing: ["data": "{\"n\": -1.5e3, \"s\": \"\\u00e9\\n\", \"l\": [true, null, {}]}"]))]".utf8)
        let interesting = Array("{}[]\",:\\u0123456789.eE+-truefalsenull \u{0}\u{1f}".utf8) + [0x80, 0xBF, 0xC3, 0xE2, 0xF0, 0xFF, 0xED, 0xA0]
        var accepted = 0
        var refused = 0
        for round in 0..<6000 {
            var body: [UInt8]
            if round % 5 == 0 {
                body = (0..<Int.random(in: 0...64, using: &random)).map { _ in
                    Bool.random(using: &random) ? interesting.randomElement(using: &random)! : UInt8.random(in: 0...255, using: &random)
                }
            } else {
                body = seed
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    let position = Int.random(in: 0..<body.count, using: &random)
                    switch Int.random(in: 0..<4, using: &random) {
                    case 0: body[position] = interesting.randomElement(using: &random)!
                    case 1: body.remove(at: position)
                    case 2: body.insert(interesting.randomElement(using: &random)!, at: position)
                    default: body = Array(body[..<position])
                    }
                    if body.isEmpty { break }
                }
            }
            do {
                for event in try decoder.decodeBatch(body, maximumCount: 100) {
                    #expect(try decoder.decodeEvent(event.jsonBytes()) == event)
                    var writer = JSONWriter()
                    writer.write(.object(event.data))
                    #expect(JSONWriter.encodedLength(of: .object(event.data)) == writer.bytes.count)
                }
                accepted += 1
            } catch {
                #expect(!"\(error)".isEmpty)
                refused += 1
            }
        }
        #expect(accepted > 0 && refused > 0, "the mutations should both keep and break bodies")
    }
}

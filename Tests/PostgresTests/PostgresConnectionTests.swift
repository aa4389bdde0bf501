import Foundation
import LocalPostgres
import Postgres
import Testing
import TestSupport

@Suite struct PostgresConnectionTests {
    @Test func everySupportedParameterTypeRoundTrips() async throws {
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            func echo(_ parameter: PostgresParameter, as type: String) async throws -> PostgresRow {
                try await connection.query("SELECT $1::\(type) AS v, pg_typeof($1)::text AS t", [parameter])[0]
            }
            #expect(try await echo(.bool(true), as: "boolean").bool("v") == true)
            #expect(try await echo(.bool(false), as: "boolean").bool("v") == false)
            #expect(try await echo(.int16(-32768), as: "smallint").int64("v") == -32768)
            #expect(try await echo(.int32(Int32.max), as: "integer").int64("v") == Int64(Int32.max))
            #expect(try await echo(.int64(Int64.min), as: "bigint").int64("v") == Int64.min)
            #expect(try await echo(.double(-0.1), as: "double precision").double("v") == -0.1)
            let text = "tenant 'a'; DROP TABLE x; -- \u{1F600} \\ \t \"q\""
            #expect(try await echo(.text(text), as: "text").string("v") == text)
            #expect(try await echo(.numeric("12345678901234567890.125"), as: "numeric").string("v") == "12345678901234567890.125")
            #expect(try await echo(.jsonb(#"{"b": [1, 2], "a": "x"}"#), as: "jsonb").string("v") == #"{"a": "x", "b": [1, 2]}"#)
            let bytes: [UInt8] = [0, 1, 127, 128, 255, 10, 92]
            #expect(try await echo(.bytea(bytes), as: "bytea").bytes("v") == bytes)
            let uuid = UUID()
            #expect(try await echo(.uuid(uuid), as: "uuid").uuid("v") == uuid)
            let instant = Date(timeIntervalSince1970: 1_764_331_200.123456)
            let decoded = try await echo(.timestamptz(instant), as: "timestamptz").date("v")!
            #expect(abs(decoded.timeIntervalSince(instant)) < 0.000_001)
            let null = try await echo(.null, as: "text")
            #expect(try null.string("v") == nil)
            #expect(try await echo(.int64(7), as: "bigint").string("t") == "bigint")
            await connection.close()
        }
    }

    @Test func aFailedTransactionRollsBackEveryStatement() async throws {
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            try await connection.execute("CREATE TABLE ledger (id bigint PRIMARY KEY, amount bigint NOT NULL)")
            struct Abort: Error {}
            await #expect(throws: Abort.self) {
                try await connection.transaction { connection in
                    try connection.query("INSERT INTO ledger VALUES (1, 10)")
                    try connection.query("INSERT INTO ledger VALUES (2, 20)")
                    throw Abort()
                }
            }
            await #expect(throws: PostgresError.self) {
                try await connection.transaction { connection in
                    try connection.query("INSERT INTO ledger VALUES (3, 30)")
                    try connection.query("INSERT INTO ledger VALUES (4, NULL)")
                }
            }
            #expect(try await connection.query("SELECT count(*) AS n FROM ledger")[0].int64("n") == 0)
            let committed = try await connection.transaction { connection in
                try connection.query("INSERT INTO ledger VALUES (5, 50) RETURNING amount")[0].int64("amount")
            }
            #expect(committed == 50)
            #expect(try await connection.query("SELECT sum(amount) AS s FROM ledger")[0].int64("s") == 50)
            await connection.close()
        }
    }

    @Test func copyLoadsOneHundredThousandRowsWithEveryCharacterIntact() async throws {
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            try await connection.execute("CREATE TABLE usage (id bigint PRIMARY KEY, tenant text, note text)")
            let awkward = ["tab\there", "line\nbreak", "back\\slash", "cr\rreturn", "ünïcødé 😀", "\\N", ""]
            let stored = try await connection.copy(into: "usage", columns: ["id", "tenant", "note"], rows: 0..<100_000) { index, fields in
                fields.append(Int64(index))
                fields.append("tenant_\(index % 1_000)")
                fields.append(index % 10 == 0 ? nil : awkward[index % awkward.count])
            }
            #expect(stored == 100_000)
            let summary = try await connection.query(
                "SELECT count(*) AS n, sum(id) AS s, count(DISTINCT tenant) AS t, count(note) AS notes FROM usage")[0]
            #expect(try summary.int64("n") == 100_000)
            #expect(try summary.int64("s") == Int64(99_999 * 100_000 / 2))
            #expect(try summary.int64("t") == 1_000)
            #expect(try summary.int64("notes") == 90_000)
            for index in [1, 2, 3, 4, 5, 6, 7] {
                let note = try await connection.query("SELECT note FROM usage WHERE id = $1", [.int64(Int64(index))])[0].string("note")
                #expect(note == awkward[index % awkward.count])
            }
            await connection.close()
        }
    }

    @Test func copyWritesIntegersAndDecimalsExactly() async throws {
        var random = SeededRandom(state: 7)
        var decimals: [Decimal] = ["0", "-0.5", "12.340", "1e-30", "-99999999999999999999", "123456789012345678901234567890.5",
            "0.000000000000000000001234567890123456789012", "-0.000012345678901234567890123"].map { Decimal(string: $0)! }
        for _ in 0..<20_000 {
            let mantissa = Decimal(UInt64.random(in: 0...999_999_999_999_999, using: &random))
            let scaled = mantissa * pow(Decimal(10), Int.random(in: 0...8, using: &random)) / pow(Decimal(10), Int.random(in: 0...12, using: &random))
            decimals.append(Bool.random(using: &random) ? -scaled : scaled)
        }
        let integers = [Int64.min, Int64.max, 0, -1, 10] + (0..<decimals.count - 5).map { _ in Int64.random(in: .min ... .max, using: &random) }
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            try await connection.execute("CREATE TABLE numbers (id bigint PRIMARY KEY, i bigint, d numeric, n numeric)")
            try await connection.copy(into: "numbers", columns: ["id", "i", "d", "n"], rows: decimals.indices) { index, fields in
                fields.append(Int64(index))
                fields.append(integers[index])
                fields.append(decimals[index])
                fields.append(numeric: integers[index])
            }
            let rows = try await connection.query("SELECT id, i, d::text AS d, n::text AS n FROM numbers ORDER BY id")
            #expect(rows.count == decimals.count)
            var mismatches: [String] = []
            for row in rows {
                let index = Int(try row.int64("id")!)
                let stored = Decimal(string: try row.string("d")!)
                let storedInteger = try row.int64("i")
                if stored != decimals[index] || storedInteger != integers[index] {
                    mismatches.append("\(decimals[index]) stored as \(try row.string("d")!)")
                }
                if try row.string("n") != String(integers[index]) {
                    mismatches.append("\(integers[index]) stored as numeric \(try row.string("n")!)")
                }
            }
            #expect(mismatches.count == 0, "e.g. \(mismatches.prefix(5))")
            await connection.close()
        }
    }

    @Test func copyWritesTimestampsAsPostgresReadsThem() async throws {
        var random = SeededRandom(state: 11)
        let dayMicroseconds: Int64 = 86_400_000_000
        // Edges: the epoch and the microseconds around it, leap days, century rules, year 1 and 1 BC, years past 9999.
        var instants: [Int64] = [0, -1, 1, dayMicroseconds - 1, -dayMicroseconds]
        for date in ["2000-02-29", "1900-03-01", "2100-02-28", "2024-12-31", "0001-01-01", "0001-12-31 BC", "4000-02-29 BC", "29999-12-31"] {
            instants.append(contentsOf: [0, 1, dayMicroseconds - 1].map { $0 + (Self.epochMicroseconds(of: date) ?? 0) })
        }
        let earliest = Self.epochMicroseconds(of: "4713-01-01 BC")!, latest = Self.epochMicroseconds(of: "99999-12-31")!
        instants += (0..<20_000).map { index in
            index % 2 == 0 ? Int64.random(in: earliest...latest, using: &random) : Int64.random(in: 0...(Int64(1) << 52), using: &random)
        }
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            try await connection.execute("CREATE TABLE instants (id bigint PRIMARY KEY, microseconds bigint, at timestamptz)")
            try await connection.copy(into: "instants", columns: ["id", "microseconds", "at"], rows: instants.indices) { index, fields in
                fields.append(Int64(index))
                fields.append(instants[index])
                fields.append(timestampMicroseconds: instants[index])
            }
            let mismatches = try await connection.query(
                """
                SELECT microseconds, at::text AS at FROM instants
                WHERE extract(epoch FROM at) * 1000000 IS DISTINCT FROM microseconds LIMIT 5
                """)
            let examples = try mismatches.map { "\(try $0.int64("microseconds")!) read as \(try $0.string("at")!)" }
            #expect(examples.isEmpty, "e.g. \(examples)")
            #expect(try await connection.query("SELECT count(*) AS n FROM instants")[0].int64("n") == Int64(instants.count))
            await connection.close()
        }
    }

    /// Microseconds since the epoch of midnight UTC on a `YYYY-MM-DD[ BC]` date, by proleptic Gregorian day counting.
    private static func epochMicroseconds(of date: String) -> Int64? {
        let beforeChrist = date.hasSuffix(" BC")
        let parts = date.prefix(while: { $0 != " " }).split(separator: "-").compactMap { Int64($0) }
        guard parts.count == 3 else { return nil }
        let year = beforeChrist ? 1 - parts[0] : parts[0]
        var days: Int64 = 0
        func isLeap(_ year: Int64) -> Bool { year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) }
        if year >= 1970 {
            for earlier in 1970..<year { days += isLeap(earlier) ? 366 : 365 }
        } else {
            for later in year..<1970 { days -= isLeap(later) ? 366 : 365 }
        }
        let monthLengths: [Int64] = [31, isLeap(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        days += monthLengths.prefix(Int(parts[1]) - 1).reduce(0, +) + parts[2] - 1
        return days * 86_400_000_000
    }

    @Test func aCopyRowWithTheWrongWidthIsRejectedAndLoadsNothing() async throws {
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            try await connection.execute("CREATE TABLE narrow (a text, b text)")
            await #expect(throws: PostgresError.self) {
                try await connection.copy(into: "narrow", columns: ["a", "b"], rows: [["1", "2"], ["only one"]]) { row, fields in
                    for value in row { fields.append(value) }
                }
            }
            #expect(try await connection.query("SELECT count(*) AS n FROM narrow")[0].int64("n") == 0)
            #expect(try await connection.query("SELECT 1 AS one")[0].int64("one") == 1)
            await connection.close()
        }
    }

    @Test func pipelineModeRunsEveryExecutionAndAFailureAbortsTheTransaction() async throws {
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            try await connection.execute("CREATE TABLE piped (id bigint PRIMARY KEY, label text NOT NULL)")
            // More executions than one window, so several sync points pass.
            let affected = try await connection.transaction { db in
                try db.pipeline(
                    "INSERT INTO piped VALUES ($1, $2)", parameterSets: (0..<2_500).map { [.int64(Int64($0)), .text("row \($0)")] }, window: 1000)
            }
            #expect(affected == 2_500)
            #expect(try await connection.query("SELECT count(*) AS n, sum(id) AS s FROM piped")[0].int64("s") == Int64(2_499 * 2_500 / 2))

            // A duplicate in the middle of the second window: SQLSTATE 23505, and nothing of the transaction stays.
            await #expect {
                try await connection.transaction { db in
                    try db.pipeline(
                        "INSERT INTO piped VALUES ($1, $2)",
                        parameterSets: (3_000..<4_500).map { [.int64(Int64($0)), .text("new")] } + [[.int64(7), .text("dup")]]
                            + (5_000..<5_100).map { [.int64(Int64($0)), .text("after")] })
                }
            } throws: { error in
                (error as? PostgresError)?.sqlState == "23505"
            }
            #expect(try await connection.query("SELECT count(*) AS n FROM piped")[0].int64("n") == 2_500)
            // The connection is usable afterwards.
            #expect(try await connection.query("SELECT 1 AS one")[0].int64("one") == 1)
            await connection.close()
        }
    }

    @Test func aUniqueViolationCarriesSQLState23505() async throws {
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            try await connection.execute("CREATE TABLE tenants (id text PRIMARY KEY)")
            try await connection.query("INSERT INTO tenants VALUES ($1)", [.text("acme")])
            await #expect {
                try await connection.query("INSERT INTO tenants VALUES ($1)", [.text("acme")])
            } throws: { error in
                let error = error as! PostgresError
                return error.kind == .server && error.sqlState == "23505" && error.isUniqueViolation
                    && error.detail?.contains("acme") == true
            }
            #expect(await connection.isConnected)
            await connection.close()
        }
    }

    @Test func aStoppedServerSurfacesATypedConnectionError() async throws {
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            #expect(try await connection.query("SELECT 1 AS one")[0].int64("one") == 1)
            try await server.stop(immediate: true)
            await #expect {
                try await connection.query("SELECT 1 AS one")
            } throws: { error in
                (error as? PostgresError)?.kind == .connection
            }
            #expect(await connection.isConnected == false)
            await #expect {
                try await PostgresConnection.connect(server.connectionString)
            } throws: { error in
                (error as? PostgresError)?.kind == .connection
            }
            // Back up, a new connection works again.
            try await server.restart()
            let again = try await PostgresConnection.connect(server.connectionString)
            #expect(try await again.query("SELECT 2 AS two")[0].int64("two") == 2)
            await again.close()
            await connection.close()
        }
    }

    @Test func aClosedConnectionRefusesWork() async throws {
        try await withLocalPostgres { server in
            let connection = try await PostgresConnection.connect(server.connectionString)
            await connection.close()
            await #expect {
                try await connection.query("SELECT 1")
            } throws: { error in
                (error as? PostgresError)?.kind == .closed
            }
        }
    }
}

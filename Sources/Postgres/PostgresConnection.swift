import CLibPQ
import DedicatedThreads
import Foundation
import Logging

/// One libpq connection.
///
/// Every method runs on the connection's own thread, so libpq's blocking calls never occupy
/// the Swift cooperative pool. Sessions run in UTC with ISO dates so that text results decode
/// the same everywhere. A connection is not a pool: one statement runs at a time.
public actor PostgresConnection {
    private let executor: DedicatedThreadExecutor
    private let connection: NativeConnection
    private var isClosed = false
    private let logger: Logger
    /// Receives the server's notices; libpq holds it unretained for the connection's life.
    private let noticeSink: NoticeSink

    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private init(executor: DedicatedThreadExecutor, connection: NativeConnection, logger: Logger) {
        self.executor = executor
        self.connection = connection
        self.logger = logger
        self.noticeSink = NoticeSink(logger: logger)
        PQsetNoticeProcessor(connection.pointer, noticeProcessor, Unmanaged.passUnretained(noticeSink).toOpaque())
    }

    /// Connects with a libpq conninfo string or `postgresql://` URL.
    public static func connect(_ conninfo: String, logger: Logger = Logger(label: "tally.postgres")) async throws(PostgresError) -> PostgresConnection {
        let executor = DedicatedThreadExecutor(name: "postgres")
        let result: Result<NativeConnection, PostgresError> = await executor.run {
            let keywords = ["dbname", "options", "client_encoding"]
            let values = [conninfo, "-c TimeZone=UTC -c DateStyle=ISO", "UTF8"]
            let connection = withCStrings(keywords) { keywordPointers in
                withCStrings(values) { valuePointers in PQconnectdbParams(keywordPointers, valuePointers, 1) }
            }
            guard let connection else { return .failure(PostgresError(kind: .connection, message: "out of memory")) }
            guard PQstatus(connection) == CONNECTION_OK else {
                let message = errorMessage(connection)
                PQfinish(connection)
                return .failure(PostgresError(kind: .connection, message: message))
            }
            return .success(NativeConnection(pointer: connection))
        }
        switch result {
        case .success(let connection): return PostgresConnection(executor: executor, connection: connection, logger: logger)
        case .failure(let error):
            executor.shutdown()
            throw error
        }
    }

    deinit {
        if !isClosed { PQfinish(connection.pointer) }
        executor.shutdown()
    }

    /// Whether the connection is still usable.
    public var isConnected: Bool { !isClosed && PQstatus(connection.pointer) == CONNECTION_OK }

    /// Runs one statement with bound parameters (`$1`, `$2`, …) and returns its rows.
    @discardableResult
    public func query(_ sql: String, _ parameters: [PostgresParameter] = []) throws(PostgresError) -> [PostgresRow] {
        try checkOpen()
        let encoded = parameters.map(\.encoded)
        let types = encoded.map { Oid($0.oid) }
        let lengths = encoded.map { Int32($0.bytes?.count ?? 0) }
        let formats = encoded.map { Int32($0.binary ? 1 : 0) }
        let result = withParameterPointers(encoded.map(\.bytes)) { values in
            PQexecParams(connection.pointer, sql, Int32(encoded.count), types, values, lengths, formats, 0)
        }
        return try consume(result, statement: sql)
    }

    /// Runs one or more `;`-separated statements without parameters (DDL, migrations).
    public func execute(_ sql: String) throws(PostgresError) {
        try checkOpen()
        try consume(PQexec(connection.pointer, sql), statement: sql)
    }

    /// Runs `body` inside `BEGIN … COMMIT`, rolling back when it throws. The body runs on the
    /// connection's thread without suspending, so nothing else can interleave.
    public func transaction<T: Sendable>(_ body: @Sendable (isolated PostgresConnection) throws -> T) throws -> T {
        try execute("BEGIN")
        let value: T
        do {
            value = try body(self)
        } catch {
            if isConnected {
                do { try execute("ROLLBACK") } catch { logger.warning("rollback failed: \(error)") }
            }
            throw error
        }
        try execute("COMMIT")
        return value
    }

    /// Streams rows into `COPY table (columns) FROM STDIN` in binary format as `write` writes
    /// them, one field per column with the `CopyRowWriter.append` of its type, and returns the
    /// number of rows the server stored. Data goes out in 64 KiB pieces, so the server stores
    /// while the next rows are written. `table` is SQL text written by the program (a name,
    /// schema-qualified and quoted as needed), never outside input; column names are quoted here.
    @discardableResult
    public func copy<Rows: Sequence>(
        into table: String, columns: [String], rows: Rows, write: (Rows.Element, inout CopyRowWriter) -> Void
    ) throws(PostgresError) -> Int {
        try checkOpen()
        let columnList = columns.map(quoteIdentifier).joined(separator: ", ")
        let statement = "COPY \(table) (\(columnList)) FROM STDIN (FORMAT binary)"
        let start = PQexec(connection.pointer, statement)
        guard PQresultStatus(start) == PGRES_COPY_IN else {
            try consume(start, statement: statement)
            throw PostgresError(kind: .server, message: "COPY did not start")
        }
        PQclear(start)
        let piece = 1 << 16
        var writer = CopyRowWriter(capacity: piece + (1 << 12))
        for row in rows {
            write(row, &writer)
            guard writer.fieldsInRow == columns.count else {
                let count = writer.fieldsInRow
                PQputCopyEnd(connection.pointer, "row has \(count) values for \(columns.count) columns")
                drainResults()
                throw PostgresError(kind: .invalidData, message: "COPY row has \(count) values, expected \(columns.count)")
            }
            writer.endRow()
            if writer.count >= piece { try writer.drain(sendCopyData) }
        }
        writer.finish()
        try writer.drain(sendCopyData)
        guard PQputCopyEnd(connection.pointer, nil) == 1 else { throw connectionError() }
        var stored = 0
        while let result = PQgetResult(connection.pointer) {
            let rows = Int(String(cString: PQcmdTuples(result))) ?? 0
            try consume(result, statement: statement)
            stored += rows
        }
        return stored
    }

    /// Runs one statement once per parameter set in libpq pipeline mode: the statement is
    /// prepared once, then executions are sent without waiting for each answer, in windows of
    /// `window` closed by a sync point, whose answers are read before the next window (so
    /// neither side blocks on a full socket). Returns the rows affected in all. Inside
    /// `transaction` all executions commit or roll back together; the first failure stops
    /// the rest and is thrown.
    @discardableResult
    public func pipeline(_ sql: String, parameterSets: some Sequence<[PostgresParameter]>, window: Int = 1000) throws(PostgresError) -> Int {
        try checkOpen()
        var sets = parameterSets.makeIterator()
        guard let first = sets.next() else { return 0 }
        let types = first.map { Oid($0.encoded.oid) }
        try consume(PQprepare(connection.pointer, "", sql, Int32(types.count), types), statement: sql)
        guard PQenterPipelineMode(connection.pointer) == 1 else { throw connectionError() }
        defer { PQexitPipelineMode(connection.pointer) }
        var affected = 0
        var pending = 0
        var next: [PostgresParameter]? = first
        while let parameters = next {
            let encoded = parameters.map(\.encoded)
            let lengths = encoded.map { Int32($0.bytes?.count ?? 0) }
            let formats = encoded.map { Int32($0.binary ? 1 : 0) }
            let sent = withParameterPointers(encoded.map(\.bytes)) { values in
                PQsendQueryPrepared(connection.pointer, "", Int32(encoded.count), values, lengths, formats, 0)
            }
            guard sent == 1 else { throw connectionError() }
            pending += 1
            next = sets.next()
            if pending == window || next == nil {
                affected += try readPipelineWindow(count: pending, statement: sql)
                pending = 0
            }
        }
        return affected
    }

    /// Sends a sync point, then reads the answers of `count` pipelined executions and the
    /// sync's own; throws the first failure after reading them all.
    private func readPipelineWindow(count: Int, statement: String) throws(PostgresError) -> Int {
        guard PQpipelineSync(connection.pointer) == 1 else { throw connectionError() }
        var affected = 0
        var failure: PostgresError?
        for _ in 0..<count {
            guard let result = PQgetResult(connection.pointer) else { throw connectionError() }
            if PQresultStatus(result) == PGRES_PIPELINE_ABORTED {
                PQclear(result)
            } else {
                affected += Int(String(cString: PQcmdTuples(result))) ?? 0
                do { try consume(result, statement: statement) } catch { failure = failure ?? error }
            }
            // Each execution's answer ends with a NULL result.
            if let extra = PQgetResult(connection.pointer) { PQclear(extra) }
        }
        guard let sync = PQgetResult(connection.pointer) else { throw connectionError() }
        let synced = PQresultStatus(sync) == PGRES_PIPELINE_SYNC
        PQclear(sync)
        if let failure { throw failure }
        guard synced else { throw PostgresError(kind: .connection, message: "pipeline lost its sync point") }
        return affected
    }

    /// Closes the connection; later calls throw `closed`.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        PQfinish(connection.pointer)
    }

    private func sendCopyData(_ bytes: UnsafeRawBufferPointer) throws(PostgresError) {
        let status = PQputCopyData(connection.pointer, bytes.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(bytes.count))
        guard status == 1 else { throw connectionError() }
    }

    private func drainResults() {
        while let result = PQgetResult(connection.pointer) { PQclear(result) }
    }

    private func checkOpen() throws(PostgresError) {
        if isClosed { throw PostgresError(kind: .closed, message: "connection is closed") }
    }

    private func connectionError() -> PostgresError {
        PostgresError(kind: .connection, message: errorMessage(connection.pointer))
    }

    /// Turns a result into rows or a typed error, and frees it.
    @discardableResult
    private func consume(_ result: OpaquePointer?, statement: String) throws(PostgresError) -> [PostgresRow] {
        guard let result else { throw connectionError() }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY, PGRES_COPY_IN:
            return []
        case PGRES_TUPLES_OK:
            let columnCount = PQnfields(result)
            let columns = (0..<columnCount).map { String(cString: PQfname(result, $0)) }
            return (0..<PQntuples(result)).map { row in
                PostgresRow(
                    columns: columns,
                    values: (0..<columnCount).map { column in
                        PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
                    })
            }
        default:
            let sqlState = field(result, "C")
            guard sqlState != nil, PQstatus(connection.pointer) == CONNECTION_OK else {
                throw PostgresError(kind: .connection, sqlState: sqlState, message: errorMessage(connection.pointer))
            }
            throw PostgresError(
                kind: .server, sqlState: sqlState, message: field(result, "M") ?? "statement failed",
                detail: field(result, "D"))
        }
    }
}

/// Server notices (e.g. "relation already exists, skipping") go to the log, not to stderr.
final class NoticeSink: Sendable {
    let logger: Logger
    init(logger: Logger) { self.logger = logger }
}

private let noticeProcessor: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?) -> Void = { context, message in
    guard let context, let message else { return }
    let sink = Unmanaged<NoticeSink>.fromOpaque(context).takeUnretainedValue()
    sink.logger.debug("\(String(cString: message).trimmingTrailingNewlines)")
}

/// A `PGconn` pointer, used only on its connection's thread.
struct NativeConnection: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// Quotes an SQL identifier: `"…"` with embedded quotes doubled.
public func quoteIdentifier(_ identifier: String) -> String {
    "\"" + identifier.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

private func errorMessage(_ connection: OpaquePointer) -> String {
    String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines
}

/// A diagnostic field; `PG_DIAG_*` are macros that do not import, so they are spelled here.
private func field(_ result: OpaquePointer, _ code: Unicode.Scalar) -> String? {
    PQresultErrorField(result, Int32(UInt8(ascii: code))).map { String(cString: $0) }
}

private func withCStrings<R>(_ strings: [String], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
    let duplicates = strings.map { strdup($0) }
    defer { duplicates.forEach { free($0) } }
    return body(duplicates.map { UnsafePointer($0) } + [nil])
}

/// NUL-terminated copies of the parameter bytes: libpq reads text-format parameters as C
/// strings and ignores their lengths.
private func withParameterPointers<R>(_ values: [[UInt8]?], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
    let buffers: [UnsafeMutablePointer<CChar>?] = values.map { bytes -> UnsafeMutablePointer<CChar>? in
        guard let bytes else { return nil }
        let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count + 1)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { UnsafeMutableRawPointer(buffer).copyMemory(from: base, byteCount: source.count) }
        }
        buffer[bytes.count] = 0
        return buffer
    }
    defer { buffers.forEach { $0?.deallocate() } }
    return body(buffers.map { UnsafePointer($0) })
}

extension String {
    fileprivate var trimmingTrailingNewlines: String {
        var text = self
        while text.last?.isNewline == true { text.removeLast() }
        return text
    }
}

import Foundation
import Subprocess

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// A throwaway PostgreSQL 15 cluster for tests and the local demo.
///
/// `start` runs `initdb` into a new directory and starts the server on a free loopback port
/// with its unix socket in that directory (as the `postgres` user when running as root, since
/// Postgres refuses to run as root), and returns once it accepts connections. `destroy` stops
/// it and removes the directory. Nothing here assumes a server is already running.
public final class LocalPostgresServer: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Where the server binaries are; `TALLY_PG_BIN` overrides.
    public static let binDirectory =
        ProcessInfo.processInfo.environment["TALLY_PG_BIN"] ?? "/usr/lib/postgresql/15/bin"

    /// Holds the data directory, the socket and the server log.
    public let directory: URL
    public let port: Int

    /// A libpq conninfo string for the `postgres` superuser and database.
    public var connectionString: String { connectionString(database: "postgres", user: "postgres") }

    public func connectionString(database: String, user: String) -> String {
        "host=127.0.0.1 port=\(port) user=\(user) dbname=\(database) connect_timeout=5"
    }

    private var dataDirectory: String { directory.appendingPathComponent("data").path }
    private var logFile: String { directory.appendingPathComponent("server.log").path }

    private init(directory: URL, port: Int) {
        self.directory = directory
        self.port = port
    }

    /// Creates and starts a new cluster. `durable: false` turns off fsync, which only matters
    /// when the machine itself crashes (a crashed or killed server still recovers every
    /// acknowledged commit); tests use it for speed. `settings` are further `postgresql.conf`
    /// lines, such as `shared_buffers = '1GB'`.
    public static func start(durable: Bool = true, settings extraSettings: [String] = []) async throws -> LocalPostgresServer {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tally-pg-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if getuid() == 0 { try await run("/bin/chown", ["postgres:postgres", directory.path], asPostgres: false) }
        try await run(
            "\(binDirectory)/initdb",
            ["-D", directory.appendingPathComponent("data").path, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
        var settings = ["listen_addresses = '127.0.0.1'", "unix_socket_directories = '\(directory.path)'", "max_connections = 200"]
        // Never `synchronous_commit = off`: it acknowledges commits that a server crash loses.
        if !durable { settings += ["fsync = off", "full_page_writes = off"] }
        settings += extraSettings
        let configuration = directory.appendingPathComponent("data/postgresql.auto.conf")
        try (settings.joined(separator: "\n") + "\n").write(to: configuration, atomically: false, encoding: .utf8)
        var lastError: (any Error)?
        for _ in 0..<5 {
            let server = LocalPostgresServer(directory: directory, port: try freeLoopbackPort())
            do {
                try await server.startServer()
                return server
            } catch {
                lastError = error  // most likely the port was taken in between: try another
            }
        }
        throw lastError!
    }

    /// Starts the server again after `stop`, on the same port and data.
    public func restart() async throws { try await startServer() }

    /// Stops the server; `immediate` aborts it like a crash (recovery runs on the next start).
    public func stop(immediate: Bool = false) async throws {
        try await Self.run("\(Self.binDirectory)/pg_ctl", ["-D", dataDirectory, "-m", immediate ? "immediate" : "fast", "-w", "stop"])
    }

    /// Stops the server if it runs and removes its directory.
    public func destroy() async {
        try? await stop(immediate: true)
        try? FileManager.default.removeItem(at: directory)
    }

    private func startServer() async throws {
        try await Self.run(
            "\(Self.binDirectory)/pg_ctl",
            ["-D", dataDirectory, "-l", logFile, "-w", "-t", "60", "-o", "-p \(port)", "start"])
    }

    /// Runs a command (as `postgres` when we are root) without blocking a thread. Only the
    /// standard descriptors reach it, so the server `pg_ctl start` leaves behind holds none of ours.
    private static func run(_ executable: String, _ arguments: [String], asPostgres: Bool = true) async throws {
        let (path, fullArguments) =
            asPostgres && getuid() == 0
            ? ("/usr/sbin/runuser", ["-u", "postgres", "--", executable] + arguments) : (executable, arguments)
        let result = try await Subprocess.run(
            .path(FilePath(path)), arguments: Arguments(fullArguments), input: .none,
            output: .string(limit: 1 << 20), error: .string(limit: 1 << 20))
        guard result.terminationStatus.isSuccess else {
            let output = result.standardOutput + result.standardError
            throw Failure(description: "\((executable as NSString).lastPathComponent) \(arguments.joined(separator: " ")) failed (\(result.terminationStatus)): \(output)")
        }
    }
}

/// Asks the kernel for a free TCP port on 127.0.0.1.
func freeLoopbackPort() throws -> Int {
    let socketDescriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard socketDescriptor >= 0 else { throw LocalPostgresServer.Failure(description: "socket() failed") }
    defer { close(socketDescriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
            bind(socketDescriptor, generic, length) == 0 && getsockname(socketDescriptor, generic, &length) == 0
        }
    }
    guard bound else { throw LocalPostgresServer.Failure(description: "cannot bind a loopback port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

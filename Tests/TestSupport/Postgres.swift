import LocalPostgres

/// Runs `body` against a new throwaway Postgres cluster, destroyed afterwards. `settings` are
/// further `postgresql.conf` lines.
public func withLocalPostgres<T: Sendable>(settings: [String] = [], _ body: (LocalPostgresServer) async throws -> T) async throws -> T {
    let server = try await LocalPostgresServer.start(durable: false, settings: settings)
    do {
        let value = try await body(server)
        await server.destroy()
        return value
    } catch {
        await server.destroy()
        throw error
    }
}

import LocalPostgres

/// Runs `body` against a new throwaway Postgres cluster, destroyed afterwards.
public func withLocalPostgres<T: Sendable>(_ body: (LocalPostgresServer) async throws -> T) async throws -> T {
    let server = try await LocalPostgresServer.start(durable: false)
    do {
        let value = try await body(server)
        await server.destroy()
        return value
    } catch {
        await server.destroy()
        throw error
    }
}

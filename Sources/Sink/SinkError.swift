import Postgres

/// Every failure of the Sink.
public enum SinkError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A tenant id that may not become part of an SQL identifier.
    case invalidTenant(String)
    /// The commit carries an owner epoch older than the partition's current one: another
    /// processor owns the partition now, and nothing was written.
    case fenced(partition: String, epoch: Int64, currentEpoch: Int64?)
    /// Postgres failed; nothing of the batch was applied unless `kind` is `.connection` during
    /// COMMIT, which `SinkStore.commit` resolves before returning.
    case database(PostgresError)

    /// The connection to Postgres broke: the outcome of the statement in flight is unknown.
    public var isConnectionLoss: Bool {
        if case .database(let error) = self { error.kind == .connection } else { false }
    }

    /// Postgres's lock table is full (SQLSTATE 53200, "out of shared memory"): the
    /// transaction locked more tables than `max_locks_per_transaction` provides for.
    public var isOutOfLocks: Bool {
        if case .database(let error) = self { error.sqlState == "53200" } else { false }
    }

    public var description: String {
        switch self {
        case .invalidTenant(let reason): reason
        case .fenced(let partition, let epoch, let current):
            "commit for \(partition) with owner epoch \(epoch) refused: current epoch is \(current.map(String.init) ?? "none")"
        case .database(let error): "\(error)"
        }
    }
}

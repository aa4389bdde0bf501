/// Polled batches of one commit lane, deduplicated and merged in memory as they come
/// (`SinkStore.merge`), to commit as one (`SinkStore.commit(_: MergedBatch)`): it holds one
/// usage delta per window, however many of its events met the window, and the usage log gets
/// one row per window.
public struct MergedBatch: Sendable {
    public let consumerGroup: String
    /// The furthest position merged in each partition.
    public internal(set) var positions: [LogPartition: CommittedPosition] = [:]
    var effects = BatchEffects()

    /// `expectedWindows` sizes the batch's hash table of windows up front, e.g. from the last
    /// batch of a lane that is catching up.
    public init(consumerGroup: String, expectedWindows: Int = 0) {
        self.consumerGroup = consumerGroup
        if expectedWindows > 0 { effects.reserveWindows(expectedWindows) }
    }

    /// Nothing merged yet.
    public var isEmpty: Bool { positions.isEmpty && effects.isEmpty }

    /// Usage rows its commit appends to the usage log: one per window.
    public var usageRows: Int { effects.windows }

    /// Readies the batch to wait for its commit in less memory (its windows' hash index goes);
    /// nothing may merge into it afterwards.
    public mutating func seal() {
        effects.seal()
    }
}

/// When the processor's fold loop folds the Sink's logs and when it waits: folds wait while the
/// processor catches up (a poll within the quiet period returned a full batch or found a lane
/// behind), so the commits have the machine to themselves and a fold merges more deltas into
/// each window, but never longer than `foldDeferralLimit` since the last fold, and never while
/// more usage rows than `maximumUnfoldedRows` wait in the log.
struct FoldDeferral: Sendable {
    let deferralLimit: Duration
    let maximumUnfoldedRows: Int
    /// How long polls find no backlog before a catch-up counts as over.
    let quietPeriod: Duration

    init(_ configuration: UsageProcessorConfiguration, quietPeriod: Duration) {
        deferralLimit = configuration.foldDeferralLimit
        maximumUnfoldedRows = configuration.maximumUnfoldedRows
        self.quietPeriod = quietPeriod
    }

    /// Whether `unfoldedRows` are past the bound: polling waits for the next fold then.
    func isOverBound(unfoldedRows: Int) -> Bool { unfoldedRows > maximumUnfoldedRows }

    /// Whether the loop folds at `now`, with `unfoldedRows` waiting, a backlog last seen at
    /// `lastBacklogSeen` (nil: never) and the last fold begun at `lastFold`.
    func folds(at now: ContinuousClock.Instant, unfoldedRows: Int, lastBacklogSeen: ContinuousClock.Instant?, lastFold: ContinuousClock.Instant) -> Bool {
        let catchingUp = lastBacklogSeen.map { $0.duration(to: now) < quietPeriod } ?? false
        return isOverBound(unfoldedRows: unfoldedRows) || !catchingUp || lastFold.duration(to: now) >= deferralLimit
    }
}

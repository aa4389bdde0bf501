import Testing

@testable import UsageProcessing

/// When the fold loop folds and when it waits for a catch-up to end.
@Suite struct FoldDeferralTests {
    static let deferral: FoldDeferral = {
        var configuration = UsageProcessorConfiguration(bootstrapServers: "unused")
        configuration.foldDeferralLimit = .seconds(30)
        configuration.maximumUnfoldedRows = 1_000
        return FoldDeferral(configuration, quietPeriod: .milliseconds(500))
    }()
    static let start = ContinuousClock.now

    /// Without a backlog seen, or once polls have found none for the quiet period, it folds.
    @Test func withoutABacklogItFolds() {
        let now = Self.start + .seconds(2)
        #expect(Self.deferral.folds(at: now, unfoldedRows: 10, lastBacklogSeen: nil, lastFold: Self.start))
        #expect(Self.deferral.folds(at: now, unfoldedRows: 10, lastBacklogSeen: now - .milliseconds(500), lastFold: now - .seconds(1)))
    }

    /// A backlog seen within the quiet period defers the fold: one poll that came back short
    /// since does not end the catch-up.
    @Test func aBacklogSeenWithinTheQuietPeriodDefersTheFold() {
        let now = Self.start + .seconds(2)
        #expect(!Self.deferral.folds(at: now, unfoldedRows: 10, lastBacklogSeen: now - .milliseconds(499), lastFold: now - .seconds(1)))
        #expect(!Self.deferral.folds(at: now, unfoldedRows: 1_000, lastBacklogSeen: now, lastFold: now - .seconds(29)))
    }

    /// Under a backlog that never ends, it folds once the deferral limit has passed since the
    /// last fold, or at once when the unfolded rows are past their bound.
    @Test func theDeferralLimitAndTheRowBoundEndTheWait() {
        let now = Self.start + .seconds(60)
        #expect(Self.deferral.folds(at: now, unfoldedRows: 10, lastBacklogSeen: now, lastFold: now - .seconds(30)))
        #expect(Self.deferral.folds(at: now, unfoldedRows: 1_001, lastBacklogSeen: now, lastFold: now - .milliseconds(1)))
        #expect(Self.deferral.isOverBound(unfoldedRows: 1_001))
        #expect(!Self.deferral.isOverBound(unfoldedRows: 1_000))
    }
}

import TestSupport
import Testing

@testable import Sink

/// The compact digest table answers as a dictionary of digests to times would, through the
/// merges of its recent additions into its sorted array.
@Suite struct RecordedDigestsTests {
    static func digest(_ number: Int) -> Digest { Digest.identity(source: "/api", id: "event-\(number)") }

    /// Times in whole seconds, as the table keeps them: rounding cannot make the oracle differ.
    static func time(_ number: Int) -> Int64 { Int64(1_764_288_000 + number % 5_000) * 1_000_000 }

    /// 60 000 insertions of 40 000 digests (a third of them again, in another order) pass
    /// through many merges into the sorted array; each one is added exactly when the oracle (a
    /// dictionary by the number each digest is made of) did not hold it yet, and every digest,
    /// recorded or not, is found with its first time or not at all.
    @Test func insertionsAnswerAsADictionary() {
        var table = RecordedDigests()
        var oracle: [Int: Int64] = [:]
        var random = SeededRandom(state: 24)
        let numbers = Array(0..<40_000) + (0..<20_000).map { _ in Int.random(in: 0..<40_000, using: &random) }
        for number in numbers {
            let added = table.insertIfAbsent(Self.digest(number), time: Self.time(number))
            #expect(added == (oracle[number] == nil))
            if added { oracle[number] = Self.time(number) }
        }
        #expect(table.count == 40_000)
        for number in 0..<50_000 { #expect(table.time(of: Self.digest(number)) == oracle[number]) }
    }

    /// Forgetting removes exactly the digests whose time is before the cutoff, from the
    /// sorted array and the recent additions alike; a time is rounded up to its second.
    @Test func forgettingKeepsTheDigestsFromTheCutoffOn() {
        var table = RecordedDigests()
        for number in 0..<10_000 { _ = table.insertIfAbsent(Self.digest(number), time: Self.time(number)) }
        let cutoff = Self.time(2_500)
        table.removeAll(before: cutoff)
        for number in 0..<10_000 { #expect((table.time(of: Self.digest(number)) != nil) == (Self.time(number) >= cutoff)) }
        #expect(table.count == (0..<10_000).count { Self.time($0) >= cutoff })

        var edge = RecordedDigests()
        _ = edge.insertIfAbsent(Self.digest(1), time: cutoff - 400_000)
        #expect(edge.time(of: Self.digest(1)) == cutoff)
        edge.removeAll(before: cutoff)
        #expect(edge.count == 1)
        edge.removeAll(before: cutoff + 1)
        #expect(edge.count == 0)
    }

    /// A union and a reload keep a digest's later time, so neither forgets it sooner than
    /// Postgres, which keeps its row with the later time.
    @Test func unionsKeepTheLaterTime() {
        var mine = RecordedDigests()
        var theirs = RecordedDigests()
        for number in 0..<3_000 { _ = mine.insertIfAbsent(Self.digest(number), time: Self.time(0)) }
        for number in 2_000..<6_000 { _ = theirs.insertIfAbsent(Self.digest(number), time: Self.time(1)) }
        mine.formUnion(theirs)
        #expect(mine.count == 6_000)
        for number in 0..<6_000 { #expect(mine.time(of: Self.digest(number)) == Self.time(number < 2_000 ? 0 : 1)) }
        mine.insertKeepingLatest(Self.digest(0), time: Self.time(2))
        mine.insertKeepingLatest(Self.digest(1), time: Self.time(0) - 1_000_000)
        #expect(mine.time(of: Self.digest(0)) == Self.time(2))
        #expect(mine.time(of: Self.digest(1)) == Self.time(0))
    }
}

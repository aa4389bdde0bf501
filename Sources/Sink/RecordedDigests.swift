/// Digests, each with the time (microseconds since the epoch) past which it may be forgotten,
/// in about 16 bytes apiece: what a dedupe state holds for every event identity of the horizon,
/// so its size is what bounds a processor's memory. Most digests sit in one array sorted by
/// digest, sized to fit and searched by interpolation (digests are uniform); new ones go to a
/// small hash table first, folded into the array once it holds an eighth as many.
///
/// Times are kept in whole seconds, rounded up: a digest is forgotten at most a second after
/// the instant its time names, never before.
struct RecordedDigests {
    private struct Entry {
        var digest: Digest
        var seconds: UInt32
    }

    /// Sorted by digest, without repeats; none of them in `recent`.
    private var sorted: [Entry] = []
    private var recent: [Digest: UInt32] = [:]

    /// How many digests are recorded.
    var count: Int { sorted.count + recent.count }

    /// The time recorded for `digest` (rounded up to a whole second), nil if it is not recorded.
    func time(of digest: Digest) -> Int64? {
        guard let seconds = recent[digest] ?? sortedIndex(of: digest).map({ sorted[$0].seconds }) else { return nil }
        return Int64(seconds) * 1_000_000
    }

    /// Records `digest` with `time` unless it is recorded; whether it was added.
    mutating func insertIfAbsent(_ digest: Digest, time: Int64) -> Bool {
        guard recent[digest] == nil, sortedIndex(of: digest) == nil else { return false }
        addNew(digest, seconds: Self.seconds(time))
        return true
    }

    /// Records `digest` with `time`, or, if it is recorded, keeps the later of the two times.
    mutating func insertKeepingLatest(_ digest: Digest, time: Int64) {
        let seconds = Self.seconds(time)
        if let known = recent[digest] {
            recent[digest] = max(known, seconds)
        } else if let index = sortedIndex(of: digest) {
            sorted[index].seconds = max(sorted[index].seconds, seconds)
        } else {
            addNew(digest, seconds: seconds)
        }
    }

    /// Records every digest of `other`, keeping the later time of a digest in both.
    mutating func formUnion(_ other: RecordedDigests) {
        for entry in other.sorted { insertKeepingLatest(entry.digest, time: Int64(entry.seconds) * 1_000_000) }
        for (digest, seconds) in other.recent { insertKeepingLatest(digest, time: Int64(seconds) * 1_000_000) }
    }

    /// Forgets the digests whose time is before `cutoff`.
    mutating func removeAll(before cutoff: Int64) {
        sorted.removeAll { Int64($0.seconds) * 1_000_000 < cutoff }
        recent = recent.filter { Int64($0.value) * 1_000_000 >= cutoff }
    }

    private mutating func addNew(_ digest: Digest, seconds: UInt32) {
        recent[digest] = seconds
        if recent.count > max(256, sorted.count / 8) { foldRecentIntoSorted() }
    }

    /// Merges `recent` into a new `sorted` of exactly the size needed.
    private mutating func foldRecentIntoSorted() {
        let additions = recent.map { Entry(digest: $0.key, seconds: $0.value) }.sorted { $0.digest < $1.digest }
        var merged: [Entry] = []
        merged.reserveCapacity(sorted.count + additions.count)
        var old = 0
        for addition in additions {
            while old < sorted.count, sorted[old].digest < addition.digest {
                merged.append(sorted[old])
                old += 1
            }
            merged.append(addition)
        }
        merged.append(contentsOf: sorted[old...])
        sorted = merged
        recent = [:]
    }

    /// Where `digest` is in `sorted`. Steps guessing its place from its value between the
    /// bounds' take turns with halving steps, so a search takes at most about twice
    /// log₂(count) steps whatever the digests, and a few for uniform ones.
    private func sortedIndex(of digest: Digest) -> Int? {
        var lower = 0
        var upper = sorted.count
        var interpolates = true
        while lower < upper {
            var middle = lower + (upper - lower) / 2
            if interpolates {
                let first = sorted[lower].digest.high
                let last = sorted[upper - 1].digest.high
                guard first <= digest.high, digest.high <= last else { return nil }
                if first < last {
                    let fraction = Double(digest.high - first) / Double(last - first)
                    middle = min(upper - 1, lower + Int(fraction * Double(upper - 1 - lower)))
                }
            }
            interpolates.toggle()
            let found = sorted[middle].digest
            if found == digest { return middle }
            if found < digest { lower = middle + 1 } else { upper = middle }
        }
        return nil
    }

    /// `time` in whole seconds, rounded up, within `UInt32`'s range (to the year 2106).
    private static func seconds(_ time: Int64) -> UInt32 {
        let (whole, fraction) = time.quotientAndRemainder(dividingBy: 1_000_000)
        return UInt32(clamping: fraction > 0 ? whole + 1 : whole)
    }
}

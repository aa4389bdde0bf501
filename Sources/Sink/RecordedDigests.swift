/// Digests, each with the time (microseconds since the epoch) past which it may be forgotten,
/// in about 17 bytes apiece (16 in the sorted array): what a dedupe state holds for every event
/// identity of the horizon, so its size is what bounds a processor's memory. Most digests sit
/// in one array sorted by digest and sized to fit, found through an index of where each run of
/// leading bits starts (digests are uniform, so a run holds four to eight); new ones go to a
/// small hash table first, merged into the array once it holds an eighth as many. A lookup
/// reads about three cache lines, as a `Dictionary`'s does.
///
/// Times are kept in whole seconds, rounded up: a digest is forgotten at most a second after
/// the instant its time names, never before.
struct RecordedDigests {
    /// Sorted by digest, without repeats; none of them in `recent`.
    private var sorted: [DigestEntry] = []
    /// Where the digests of `sorted` with each value of their leading `bucketBits` bits start:
    /// those with value b are at `bucketStarts[b] ..< bucketStarts[b + 1]`.
    private var bucketStarts: [UInt32] = [0, 0]
    private var bucketBits = 0
    private var recent = DigestSlots()

    /// How many digests are recorded.
    var count: Int { sorted.count + recent.count }

    /// The time recorded for `digest` (rounded up to a whole second), nil if it is not recorded.
    func time(of digest: Digest) -> Int64? {
        guard let seconds = recent.seconds(of: digest) ?? sortedIndex(of: digest).map({ sorted[$0].seconds }) else { return nil }
        return Int64(seconds) * 1_000_000
    }

    /// Records `digest` with `time` unless it is recorded; whether it was added.
    mutating func insertIfAbsent(_ digest: Digest, time: Int64) -> Bool {
        guard recent.seconds(of: digest) == nil, sortedIndex(of: digest) == nil else { return false }
        addNew(DigestEntry(digest: digest, seconds: DigestEntry.seconds(time)))
        return true
    }

    /// Records `digest` with `time`, or, if it is recorded, keeps the later of the two times.
    mutating func insertKeepingLatest(_ digest: Digest, time: Int64) {
        let seconds = DigestEntry.seconds(time)
        if recent.keepLater(seconds, of: digest) { return }
        if let index = sortedIndex(of: digest) {
            sorted[index].seconds = max(sorted[index].seconds, seconds)
        } else {
            addNew(DigestEntry(digest: digest, seconds: seconds))
        }
    }

    /// Records every digest of `other`, keeping the later time of a digest in both.
    mutating func formUnion(_ other: RecordedDigests) {
        for entry in other.sorted + other.recent.entries { insertKeepingLatest(entry.digest, time: Int64(entry.seconds) * 1_000_000) }
    }

    /// Forgets the digests whose time is before `cutoff`, and gives back the memory they took.
    mutating func removeAll(before cutoff: Int64) {
        func kept(_ entry: DigestEntry) -> Bool { Int64(entry.seconds) * 1_000_000 >= cutoff }
        var fitted: [DigestEntry] = []
        fitted.reserveCapacity(sorted.count(where: kept))
        fitted.append(contentsOf: sorted.lazy.filter(kept))
        sorted = fitted
        indexSorted()
        let recentKept = recent.entries.filter(kept)
        recent = DigestSlots()
        for entry in recentKept { recent.insert(entry) }
    }

    private mutating func addNew(_ entry: DigestEntry) {
        recent.insert(entry)
        if recent.count > max(256, sorted.count / 8) { mergeRecentIntoSorted() }
    }

    /// Merges `recent` into a new `sorted` of exactly the size needed.
    private mutating func mergeRecentIntoSorted() {
        let additions = recent.entries.sorted { $0.digest < $1.digest }
        var merged: [DigestEntry] = []
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
        recent = DigestSlots()
        indexSorted()
    }

    /// Rebuilds `bucketStarts` for `sorted`, with a bucket for every four to eight digests.
    private mutating func indexSorted() {
        bucketBits = Int.bitWidth - (sorted.count / 8).leadingZeroBitCount
        let buckets = 1 << bucketBits
        var starts: [UInt32] = []
        starts.reserveCapacity(buckets + 1)
        var index = 0
        for value in 0..<buckets {
            while index < sorted.count, bucket(of: sorted[index].digest) < value { index += 1 }
            starts.append(UInt32(index))
        }
        starts.append(UInt32(sorted.count))
        bucketStarts = starts
    }

    private func bucket(of digest: Digest) -> Int { Int(truncatingIfNeeded: digest.high >> UInt64(UInt64.bitWidth - bucketBits)) }

    /// Where `digest` is in `sorted`: a binary search of its bucket.
    private func sortedIndex(of digest: Digest) -> Int? {
        let bucket = bucket(of: digest)
        var lower = Int(bucketStarts[bucket])
        var upper = Int(bucketStarts[bucket + 1])
        while lower < upper {
            let middle = lower + (upper - lower) / 2
            let found = sorted[middle].digest
            if found == digest { return middle }
            if found < digest { lower = middle + 1 } else { upper = middle }
        }
        return nil
    }
}

/// A digest and its time in whole seconds since the epoch; 0 marks an empty slot of `DigestSlots`.
private struct DigestEntry {
    var digest: Digest
    var seconds: UInt32

    /// `time` (microseconds) in whole seconds, rounded up, within 1 ... `UInt32.max` (the year 2106).
    static func seconds(_ time: Int64) -> UInt32 {
        let (whole, fraction) = time.quotientAndRemainder(dividingBy: 1_000_000)
        return max(1, UInt32(clamping: fraction > 0 ? whole + 1 : whole))
    }
}

/// An open-addressing hash table of digests placed by their trailing bits (digests are
/// uniform, so they need no hashing), probed linearly, at most three quarters full.
private struct DigestSlots {
    private var slots = [DigestEntry](repeating: DigestEntry(digest: Digest.zero, seconds: 0), count: 16)
    private(set) var count = 0

    /// The entries, in no order.
    var entries: [DigestEntry] { slots.filter { $0.seconds != 0 } }

    func seconds(of digest: Digest) -> UInt32? { slot(of: digest).map { slots[$0].seconds } }

    /// Keeps the later of `seconds` and the time held for `digest`; false if none is held.
    mutating func keepLater(_ seconds: UInt32, of digest: Digest) -> Bool {
        guard let slot = slot(of: digest) else { return false }
        slots[slot].seconds = max(slots[slot].seconds, seconds)
        return true
    }

    /// Adds an entry whose digest is not held.
    mutating func insert(_ entry: DigestEntry) {
        if (count + 1) * 4 > slots.count * 3 {
            let held = entries
            slots = [DigestEntry](repeating: DigestEntry(digest: Digest.zero, seconds: 0), count: slots.count * 2)
            for entry in held { slots[freeSlot(for: entry.digest)] = entry }
        }
        slots[freeSlot(for: entry.digest)] = entry
        count += 1
    }

    private func home(of digest: Digest) -> Int { Int(truncatingIfNeeded: digest.high) & (slots.count - 1) }

    private func slot(of digest: Digest) -> Int? {
        var slot = home(of: digest)
        while slots[slot].seconds != 0 {
            if slots[slot].digest == digest { return slot }
            slot = (slot + 1) & (slots.count - 1)
        }
        return nil
    }

    private func freeSlot(for digest: Digest) -> Int {
        var slot = home(of: digest)
        while slots[slot].seconds != 0 { slot = (slot + 1) & (slots.count - 1) }
        return slot
    }
}

import CMalloc

/// How this process's allocator hands memory back to the system.
public enum ProcessMemory {
    /// Has glibc's malloc give every block of `threshold` bytes or more a mapping of its own,
    /// unmapped when freed, for the rest of the process. By default glibc raises that
    /// threshold, up to 32 MiB, each time such a block is freed, after which large short-lived
    /// buffers (a usage processor's merged batches) come from the heap between long-lived
    /// ones (its dedupe state) and leave holes it keeps: the processor's peak RSS grew about
    /// 120 MiB more over 2 400 000 events that way (BENCHMARKS.md, session 22). A block that
    /// fits in memory the heap has free still comes from the heap. Returns whether malloc took
    /// the setting (never, but for glibc).
    @discardableResult
    public static func mapLargeBlocksApart(threshold: Int = 128 * 1024) -> Bool {
        #if canImport(Glibc)
        mallopt(M_MMAP_THRESHOLD, Int32(clamping: threshold)) == 1
        #else
        false
        #endif
    }
}

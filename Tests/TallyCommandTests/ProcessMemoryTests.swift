import ProcessMemory
import Testing

struct ProcessMemoryTests {
    /// The setting reaches glibc's malloc. (What it does to a usage processor's peak RSS is in
    /// BENCHMARKS.md: no test process can tell a block from the heap's free memory from one
    /// the heap had to grow for.)
    @Test func mallocTakesTheThreshold() {
        #expect(ProcessMemory.mapLargeBlocksApart())
    }
}

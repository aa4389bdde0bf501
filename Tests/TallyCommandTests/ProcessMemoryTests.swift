import ProcessMemory
import Testing

struct ProcessMemoryTests {
    /// glibc would raise its threshold to the 16 MiB block's size when it is freed, and take the
    /// next 1 MiB block from the heap; once set, the threshold stays, and that block gets a
    /// mapping of its own.
    @Test func largeBlocksKeepMappingsOfTheirOwnAfterABiggerOneIsFreed() {
        #expect(ProcessMemory.mapLargeBlocksApart())
        let big = UnsafeMutableRawPointer.allocate(byteCount: 16 << 20, alignment: 16)
        big.deallocate()
        let before = ProcessMemory.bytesInOwnMappings
        let block = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { block.deallocate() }
        #expect(ProcessMemory.bytesInOwnMappings >= before + (1 << 20))
    }
}

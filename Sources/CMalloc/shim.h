#include <malloc.h>

/// Bytes in blocks glibc's malloc gave mappings of their own (`mallinfo2().hblkhd`); Swift
/// imports the function and its struct under one name.
static inline size_t tally_malloc_mapped_bytes(void) { return mallinfo2().hblkhd; }

#ifndef TALLY_C_PRODUCER_LOOP_H
#define TALLY_C_PRODUCER_LOOP_H
#include <stddef.h>

/// The ceiling for the producer benchmark: `count` messages of `value_size` bytes with keys
/// cycling over `key_count` values, produced to `topic` in plain C with the same producer
/// settings as Tally's Swift producer, then flushed. Returns how many were acknowledged, or
/// -1 when the client could not be created.
long tally_c_produce_loop(const char *bootstrap_servers, const char *topic, long count,
                          size_t value_size, int key_count);

#endif

// Thin C shim over librdkafka: the public API plus the mock cluster, and small inline
// helpers for the calls Swift cannot import (variadic functions, function-like macros).
#ifndef TALLY_CRDKAFKA_SHIM_H
#define TALLY_CRDKAFKA_SHIM_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/// Enqueues one message (`rd_kafka_producev` is variadic and does not import).
/// `headers` may be NULL; on success librdkafka owns it, on failure the caller still does.
static inline rd_kafka_resp_err_t tally_produce(rd_kafka_t *rk, const char *topic,
                                                int32_t partition, const void *key,
                                                size_t key_len, const void *value,
                                                size_t value_len, rd_kafka_headers_t *headers,
                                                int64_t timestamp_ms, void *opaque) {
    if (headers != NULL) {
        return rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                 RD_KAFKA_V_KEY(key, key_len),
                                 RD_KAFKA_V_VALUE((void *)value, value_len),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_TIMESTAMP(timestamp_ms),
                                 RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(opaque),
                                 RD_KAFKA_V_END);
    }
    return rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                             RD_KAFKA_V_KEY(key, key_len),
                             RD_KAFKA_V_VALUE((void *)value, value_len),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_TIMESTAMP(timestamp_ms), RD_KAFKA_V_OPAQUE(opaque),
                             RD_KAFKA_V_END);
}

#endif

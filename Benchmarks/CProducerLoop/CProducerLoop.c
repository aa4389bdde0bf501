#include "CProducerLoop.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void count_delivery(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque) {
    (void)rk;
    if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) (*(long *)opaque)++;
}

long tally_c_produce_loop(const char *bootstrap_servers, const char *topic, long count,
                          size_t value_size, int key_count) {
    static const char *settings[][2] = {
        {"enable.idempotence", "true"}, {"acks", "all"}, {"linger.ms", "5"},
        {"message.timeout.ms", "120000"}, {"queue.buffering.max.messages", "100000"},
        {"socket.nagle.disable", "true"},
    };
    char error[512];
    long delivered = 0;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_servers, error, sizeof error);
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        rd_kafka_conf_set(conf, settings[i][0], settings[i][1], error, sizeof error);
    }
    rd_kafka_conf_set_dr_msg_cb(conf, count_delivery);
    rd_kafka_conf_set_opaque(conf, &delivered);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    char *value = malloc(value_size);
    memset(value, 'x', value_size);
    // Keys made once, as the Swift contender makes them once.
    char (*keys)[32] = malloc(sizeof *keys * (size_t)key_count);
    int *key_lengths = malloc(sizeof *key_lengths * (size_t)key_count);
    for (int k = 0; k < key_count; k++) key_lengths[k] = snprintf(keys[k], sizeof keys[k], "tenant_%d", k);
    for (long i = 0; i < count; i++) {
        int k = (int)(i % key_count);
        while (rd_kafka_producev(rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_KEY(keys[k], (size_t)key_lengths[k]),
                                 RD_KAFKA_V_VALUE(value, value_size),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(rk, 10);
        }
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 120000);
    free(keys);
    free(key_lengths);
    free(value);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return delivered;
}

"""Produce N tenant-keyed CloudEvents JSON events with confluent-kafka, as the Python
contender of `IngestBenchmark sdk`. Prints one line: `<events> <seconds>`."""
import argparse
import json
import time
from datetime import datetime, timezone

from confluent_kafka import Producer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--subjects", type=int, default=100000)
    args = parser.parse_args()

    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "queue.buffering.max.messages": 100000,
        "partitioner": "murmur2_random",
    })
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(error)

    start = time.monotonic()
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    millis = int(now.timestamp() * 1000)
    for index in range(args.events):
        tenant = "tenant%d" % (index % args.tenants)
        event = {
            "specversion": "1.0", "id": "evt-%d" % index, "source": "/bench/python", "type": "api.request",
            "subject": "customer-%d" % (index % args.subjects), "time": stamp, "tenant": tenant,
            "datacontenttype": "application/json", "data": {"tokens": index % 1000, "model": "m1"},
        }
        value = json.dumps(event, separators=(",", ":")).encode()
        headers = [("ce_tenant", tenant.encode()), ("ce_type", b"api.request"), ("content-type", b"application/cloudevents+json")]
        while True:
            try:
                producer.produce(args.topic, key=tenant.encode(), value=value, headers=headers, timestamp=millis, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    elapsed = time.monotonic() - start
    if failures:
        raise SystemExit("%d events failed, first: %s" % (len(failures), failures[0]))
    print(args.events, elapsed)


if __name__ == "__main__":
    main()

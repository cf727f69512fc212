"""Independent readers: read what really arrived, with CRC checks on."""

from __future__ import annotations

import time


def read_all_kafka_python(bootstrap: str, topic: str, expected: int | None = None,
                          timeout: float = 20.0) -> dict[int, list]:
    """Every record of every partition of `topic`, read with kafka-python 3 (check_crcs on).

    Returns {partition: [ConsumerRecord, ...]} in offset order. Stops when `expected`
    records have been read, or when nothing new arrived for a while.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, check_crcs=True,
                             consumer_timeout_ms=1500)
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
        if not parts:
            return {}
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        out: dict[int, list] = {p: [] for p in parts}
        count = 0
        while time.monotonic() < deadline:
            got = 0
            for rec in consumer:
                out[rec.partition].append(rec)
                got += 1
                count += 1
                if expected is not None and count >= expected:
                    break
            if expected is None and got == 0:
                break
            if expected is not None and count >= expected:
                break
        return out
    finally:
        consumer.close()


def read_all_confluent(bootstrap: str, topic: str, partitions: int, expected: int,
                       timeout: float = 20.0) -> dict[int, list[tuple[bytes | None, bytes | None, int]]]:
    """Every record of `topic`, read with confluent-kafka (librdkafka, check.crcs on).

    Returns {partition: [(key, value, offset), ...]}.
    """
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kafkad-readback",
                  "enable.auto.commit": False, "check.crcs": True,
                  "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: dict[int, list] = {p: [] for p in range(partitions)}
        n = 0
        deadline = time.monotonic() + timeout
        while n < expected and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    continue
                raise RuntimeError(f"confluent-kafka read error: {m.error()}")
            out[m.partition()].append((m.key(), m.value(), m.offset()))
            n += 1
        return out
    finally:
        c.close()

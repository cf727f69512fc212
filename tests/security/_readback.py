"""Read records back through a secured stack with librdkafka (an independent client)."""

from __future__ import annotations

import time


def read_back(bootstrap: str, topic: str, partitions: int, expected: int, conf: dict,
              timeout: float = 15.0) -> dict[int, list[tuple[bytes | None, bytes | None, int]]]:
    """{partition: [(key, value, offset), ...]} of `topic`, read with confluent-kafka.

    `conf` adds the security settings. Stops once `expected` records arrived,
    or when every partition reached its end (so 0 expected returns quickly).
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kafkad-security-readback",
                  "enable.auto.commit": False, "check.crcs": True,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest",
                  "log_level": 3, **conf})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: dict[int, list] = {p: [] for p in range(partitions)}
        at_end: set[int] = set()
        n = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if n >= expected and len(at_end) == partitions:
                break
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                    continue
                raise RuntimeError(f"read-back error: {m.error()}")
            at_end.discard(m.partition())
            out[m.partition()].append((m.key(), m.value(), m.offset()))
            n += 1
        return out
    finally:
        c.close()

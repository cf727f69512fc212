"""The fault proxy itself, proven with independent clients before it judges kafkad.

Each fault is shown to have the effect a client can observe: pass-through
delivers and is counted exactly; a cut is seen as a disconnect by librdkafka;
refused connections keep a client from getting anywhere until healed; held
responses make kafka-python time out although the broker wrote the record.
"""

from __future__ import annotations

import struct
import time

import pytest

from tests.support.faultproxy import (PRODUCE, FaultProxy, parse_request_header, produce_batches,
                                      record_batches)
from tests.support.audit import read_topic

pytestmark = pytest.mark.broker


def _confluent_producer(bootstrap: str, **extra):
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False,
            "socket.timeout.ms": 10000, "reconnect.backoff.max.ms": 200}
    conf.update(extra)
    return Producer(conf)


def _produce_all(producer, topic: str, values: list[bytes], timeout: float = 15.0) -> list:
    errors = []

    def done(err, msg):
        if err is not None:
            errors.append(err)

    for v in values:
        producer.produce(topic, v, callback=done)
    left = producer.flush(timeout)
    assert left == 0, f"{left} messages still undelivered after {timeout}s"
    return errors


def test_pass_through_delivers_and_counts_records_per_batch(proxied, ptopic):
    values = [b"m%05d" % i for i in range(500)]
    p = _confluent_producer(proxied.bootstrap)
    assert _produce_all(p, ptopic, values) == []
    got = read_topic(proxied.bootstrap, ptopic, expected=len(values))
    assert sorted(v for vals in got.values() for v in vals) == values
    s = proxied.proxy.stats()
    assert s.connections >= 1
    assert s.requests.get(3, 0) >= 1            # Metadata went through the proxy
    assert s.produce_requests >= 1
    assert s.unparsed_produce == 0
    # Every record the producer wrote was seen, batch by batch, in the Produce requests.
    assert s.records == len(values)
    assert s.records_per_batch() > 1.0


def test_cut_is_seen_by_the_client_as_a_disconnect(proxied, ptopic):
    import logging

    class Capture(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    cap = Capture()
    log = logging.getLogger(f"rdkafka-{ptopic}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(cap)
    p = _confluent_producer(proxied.bootstrap, logger=log)
    assert _produce_all(p, ptopic, [b"before"]) == []
    assert not any("Disconnected" in line for line in cap.lines)
    assert proxied.proxy.cut() >= 1
    # The client notices on its own (librdkafka logs the lost connection) and
    # recovers through the proxy: the next message is delivered.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("Disconnected" in line for line in cap.lines):
        p.poll(0.1)
    assert any("Disconnected" in line for line in cap.lines), cap.lines
    assert _produce_all(p, ptopic, [b"after"]) == []
    assert proxied.proxy.stats().cut >= 1


def test_refuse_blocks_new_connections_until_healed(proxied, ptopic):
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    proxied.proxy.refuse()
    with pytest.raises(KafkaError):
        KafkaProducer(bootstrap_servers=proxied.bootstrap, bootstrap_timeout_ms=1500,
                      max_block_ms=1500)
    assert proxied.proxy.stats().refused >= 1
    proxied.proxy.heal()
    p = KafkaProducer(bootstrap_servers=proxied.bootstrap, bootstrap_timeout_ms=5000)
    try:
        meta = p.send(ptopic, b"healed").get(timeout=10)
        assert meta.offset >= 0
    finally:
        p.close(1)


def test_held_responses_make_the_client_time_out_after_the_broker_wrote(proxied, ptopic):
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    p = KafkaProducer(bootstrap_servers=proxied.bootstrap, request_timeout_ms=1000,
                      delivery_timeout_ms=1500, linger_ms=0, retries=0, enable_idempotence=False,
                      bootstrap_timeout_ms=5000)
    try:
        p.send(ptopic, b"warm-up", partition=0).get(timeout=10)
        proxied.proxy.hold_responses(4.0)
        with pytest.raises(KafkaError):
            p.send(ptopic, b"answer-lost", partition=0).get(timeout=10)
    finally:
        p.close(1)
    proxied.proxy.heal()
    got = read_topic(proxied.bootstrap, ptopic, expected=2)
    # The client was told the send failed, yet the broker has the record.
    assert got[0] == [b"warm-up", b"answer-lost"]


def test_blackhole_accepts_but_never_answers(proxied, ptopic):
    import socket

    proxied.proxy.blackhole()
    with socket.create_connection(("127.0.0.1", proxied.proxy.port), timeout=5) as s:
        # ApiVersions v0 request: size, api_key 18, version 0, correlation id 7, client id "t".
        body = struct.pack(">hhih", 18, 0, 7, 1) + b"t"
        s.sendall(struct.pack(">i", len(body)) + body)
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(4)
    deadline = time.monotonic() + 5
    while proxied.proxy.stats().requests.get(18, 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxied.proxy.stats().requests.get(18, 0) == 1   # read and counted, never answered
    proxied.proxy.heal()
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=proxied.bootstrap, bootstrap_timeout_ms=5000)
    try:
        assert p.send(ptopic, b"after-blackhole").get(timeout=10).offset >= 0
    finally:
        p.close(1)


def test_latency_delays_answers(proxied, ptopic):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=proxied.bootstrap, bootstrap_timeout_ms=5000,
                      linger_ms=0)
    try:
        p.send(ptopic, b"warm").get(timeout=10)
        proxied.proxy.set_latency(0.3, up=False)
        t0 = time.monotonic()
        p.send(ptopic, b"slow").get(timeout=10)
        # A lower bound only: the injected delay must be present (no upper bound: no speed assertion).
        assert time.monotonic() - t0 >= 0.3
    finally:
        p.close(1)


# --- the parsers, on hand-built frames ------------------------------------------


def _batch(count: int, pid: int = 42, seq: int = 7, magic: int = 2) -> bytes:
    body = (struct.pack(">i", 0) + bytes([magic]) + struct.pack(">I", 0) + struct.pack(">h", 0)
            + struct.pack(">i", count - 1) + struct.pack(">qq", 0, 0) + struct.pack(">qhi", pid, 0, seq)
            + struct.pack(">i", count) + b"R" * count)
    return struct.pack(">qi", 0, len(body)) + body


def test_record_batches_walks_back_to_back_batches():
    assert record_batches(_batch(3) + _batch(5, pid=9, seq=100)) == [(3, 42, 7), (5, 9, 100)]
    assert record_batches(_batch(3, magic=1)) == [(-1, -1, -1)]


def test_produce_batches_v3_and_flexible_v9():
    records = _batch(4)
    # v3: client_id, transactional_id (null), acks, timeout, [topic [partition records]]
    v3 = (struct.pack(">hhi", PRODUCE, 3, 1) + struct.pack(">h", 2) + b"id" + struct.pack(">h", -1)
          + struct.pack(">hi", -1, 1000) + struct.pack(">i", 1) + struct.pack(">h", 1) + b"t"
          + struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(records)) + records)
    assert parse_request_header(v3) == (PRODUCE, 3, 1)
    assert [(b.api_version, b.records, b.producer_id, b.base_sequence) for b in produce_batches(v3)] == [
        (3, 4, 42, 7)]
    # v9 (flexible): uvarint lengths + 1, tagged fields after header, partition, topic and body.
    v9 = (struct.pack(">hhi", PRODUCE, 9, 2) + struct.pack(">h", 2) + b"id" + b"\x00" + b"\x00"
          + struct.pack(">hi", -1, 1000) + b"\x02" + b"\x02t" + b"\x02" + struct.pack(">i", 1)
          + bytes([len(records) + 1]) + records + b"\x00" + b"\x00" + b"\x00")
    assert [(b.api_version, b.records) for b in produce_batches(v9)] == [(9, 4)]
    with pytest.raises(ValueError):
        produce_batches(v9[:-len(records)])


def test_fault_arguments_are_checked():
    fp = FaultProxy(target_port=1)
    with pytest.raises(ValueError, match="seconds"):
        fp.refuse(-1)
    with pytest.raises(RuntimeError, match="start"):
        fp.cut()
    with pytest.raises(ValueError, match="target_port"):
        FaultProxy().start()

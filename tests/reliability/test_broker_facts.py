"""Facts about the test brokers that the kafkad scenarios rely on, established with librdkafka.

Does Tansu deduplicate an idempotent batch that a producer retries after
losing the response? The scenario "response lost after the broker wrote"
asserts no duplicates with idempotence on only because this test shows the
broker can deliver that; with idempotence off the same fault must duplicate.
"""

from __future__ import annotations

import pytest

from tests.support.audit import read_topic

pytestmark = pytest.mark.broker


def _retry_after_lost_response(proxied, topic: str, idempotence: bool):
    from confluent_kafka import Producer

    errors = []
    p = Producer({"bootstrap.servers": proxied.bootstrap, "enable.idempotence": idempotence,
                  "socket.timeout.ms": 1000, "message.timeout.ms": 30000, "linger.ms": 0,
                  "retry.backoff.ms": 100, "partitioner": "consistent"})
    p.produce(topic, b"warm-up", partition=0, on_delivery=lambda e, m: errors.append(e))
    assert p.flush(10) == 0
    proxied.proxy.reset_stats()
    proxied.proxy.lose_responses(1)         # the broker writes the batch, its answer is lost
    p.produce(topic, b"retried", partition=0, on_delivery=lambda e, m: errors.append(e))
    assert p.flush(20) == 0
    assert errors == [None, None]
    assert proxied.proxy.stats().lost_responses == 1
    batches = proxied.proxy.stats().batches
    assert len(batches) >= 2, "the producer never retried: the fault did not bite"
    return read_topic(proxied.bootstrap, topic, expected=2)[0], batches


def test_tansu_deduplicates_a_retried_idempotent_batch(proxied, ptopic):
    got, batches = _retry_after_lost_response(proxied, ptopic, idempotence=True)
    # The same batch (same producer id and sequence) reached the broker twice ...
    assert len({(b.producer_id, b.base_sequence) for b in batches}) == 1
    assert batches[0].producer_id >= 0
    # ... and was written once.
    assert got == [b"warm-up", b"retried"]


def test_tansu_writes_a_retried_plain_batch_twice(proxied, ptopic):
    got, batches = _retry_after_lost_response(proxied, ptopic, idempotence=False)
    assert all(b.producer_id == -1 for b in batches)
    assert got == [b"warm-up", b"retried", b"retried"]

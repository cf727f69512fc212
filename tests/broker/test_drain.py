"""BrokerProducer.drain hands back exactly the undelivered; nothing enters after it.

No broker is needed: the bootstrap address is a free local port nobody
listens on, and the outcome that drain's last poll reports comes from a
record refused at submit (larger than the batch cap).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from kafkad.broker import BrokerProducer, ProducerDrained, QueueFull
from kafkad.config import KafkaConfig, QueueConfig

from .helpers import sub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(drain_s: float, *, stuck: bool):
    """Submit a record failing at once (and maybe one that cannot go), drain; on every
    outcome, submit one more as the IPC server's spool replay pump does."""
    kafka = KafkaConfig(bootstrap_servers=(f"127.0.0.1:{_free_port()}",), batch_max_bytes=1024)
    refusals: list[Exception] = []
    seen: list = []

    async def main():
        producer: BrokerProducer

        def on_outcomes(outcomes):
            seen.extend(outcomes)
            try:
                producer.submit(sub("t", 0, [b"late"], token="late"))
            except QueueFull as exc:
                refusals.append(exc)

        producer = BrokerProducer(kafka, QueueConfig(), on_outcomes=on_outcomes)
        await producer.start()
        try:
            producer.submit(sub("t", 0, [b"x" * 4096], token="big"))   # MESSAGE_TOO_LARGE
            if stuck:
                producer.submit(sub("t", 1, [b"stuck"], token="stuck"))
            left = await producer.drain(asyncio.get_running_loop().time() + drain_s)
            return left, producer.stats()
        finally:
            await producer.close()

    left, stats = asyncio.run(main())
    assert [(o.token, o.error, o.failed) for o in seen] == [("big", 10, 1)]
    assert stats["queued"] == stats["in_flight"] == 0
    assert stats["accepted"] == stats["delivered"] + stats["failed"] + stats["dropped"]
    return left, stats, refusals


def test_outcomes_reported_by_drains_last_poll_cannot_submit_into_the_emptied_engine():
    # Nothing to wait for: drain empties the engine at once, and the failure is
    # reported by its last poll, after the hand-back.
    left, stats, refusals = _run(1.0, stuck=False)
    assert left == []
    assert len(refusals) == 1 and isinstance(refusals[0], ProducerDrained)
    assert "drained" in str(refusals[0])
    assert stats["accepted"] == 1 and stats["dropped"] == 0


def test_a_submission_taken_while_drain_waits_is_handed_back_with_the_rest():
    # The failure is reported while drain waits for the stuck record: the pump's
    # submission is taken then, and handed back with the stuck one.
    left, stats, refusals = _run(0.05, stuck=True)
    assert sorted(s.token for s in left) == ["late", "stuck"]
    assert refusals == []
    assert stats["accepted"] == 3 and stats["dropped"] == 2


def test_submit_after_drain_is_refused_with_a_clear_error():
    kafka = KafkaConfig(bootstrap_servers=(f"127.0.0.1:{_free_port()}",))

    async def main():
        producer = BrokerProducer(kafka, QueueConfig(), on_outcomes=lambda o: None)
        await producer.start()
        try:
            assert await producer.drain(asyncio.get_running_loop().time()) == []
            with pytest.raises(ProducerDrained, match="drained"):
                producer.submit(sub("t", 0, [b"after"]))
            return producer.stats()
        finally:
            await producer.close()

    stats = asyncio.run(main())
    assert stats["accepted"] == 0

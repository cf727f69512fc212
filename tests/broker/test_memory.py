"""What the producer keeps after a load is delivered: Python-level memory, with tracemalloc.

A load pushed through BrokerProducer against Tansu (many sessions, sync and
async, 1 to 100 messages per submission, 100 B - 1 KiB payloads, the queue
filled to its cap) must leave nothing behind once delivered: no per-session
hold, batch, chunk, request or payload. What the process's RSS does after
such a load is the allocator's business (docs/engine.md, "Memory"), so this
measures the allocations Python tracks, not RSS.

`KAFKAD_MEMORY_MESSAGES` sets the size of each load (default 40,000; the
figures in docs/engine.md come from 1,000,000).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import tracemalloc

import pytest

import kafkad.broker
from kafkad.broker import BrokerProducer
from kafkad.config import QueueConfig
from kafkad.engine.batching import Batch, Chunk
from kafkad.engine.connections import Request
from kafkad.engine.types import QueueFull, Submission

from .helpers import kafka_config, settings, sub, wait_for

MESSAGES = int(os.environ.get("KAFKAD_MEMORY_MESSAGES", "40000"))
SYNC = settings()
ASYNC = settings(async_send=True, batch_n=20, batch_t=0.05)


async def _load(producer: BrokerProducer, topic: str, n: int, rnd: random.Random,
                sessions: int) -> None:
    """Submit `n` messages as fast as the queue takes them, then wait until all are delivered."""
    sent = i = 0
    while sent < n:
        per = rnd.choice((1, 1, 1, 10, 100))
        values = [rnd.randbytes(rnd.randint(100, 1024)) for _ in range(per)]
        s = ASYNC if i % 2 else SYNC
        try:
            producer.submit(sub(topic, i % 3, values, s, session=b"w%d" % (i % sessions),
                                token=i))
        except QueueFull:
            await asyncio.sleep(0.002)   # full: let the broker take some
            continue
        sent += per
        i += 1
    engine = producer.engine
    await wait_for(lambda: engine.idle, timeout=120)


def _live_records() -> dict[str, int]:
    """Engine objects that carry records (or refer to them) still alive, by type."""
    out: dict[str, int] = {}
    for o in gc.get_objects():
        if isinstance(o, (Batch, Chunk, Submission)) or (
                isinstance(o, Request) and o.batches is not None):
            name = type(o).__name__
            out[name] = out.get(name, 0) + 1
    return out


@pytest.mark.broker
def test_nothing_is_kept_after_a_delivered_load(tansu, topic):
    kept = {}

    async def main():
        outcomes = []
        producer = BrokerProducer(kafka_config(tansu.bootstrap),
                                  QueueConfig(max_messages=20_000, max_bytes=16 * 2**20),
                                  on_outcomes=outcomes.extend)
        await producer.start()
        rnd = random.Random(3)
        try:
            # Warm up: connections, lanes, producer id, the latency windows filled.
            await _load(producer, topic, 5_000, rnd, sessions=50)
            outcomes.clear()
            gc.collect()
            tracemalloc.start(4)
            try:
                base = tracemalloc.take_snapshot()
                await _load(producer, topic, MESSAGES, rnd, sessions=2_000)
                kept["peak"] = tracemalloc.get_traced_memory()[1]
                outcomes.clear()
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            stats = producer.stats()
            kept["stats"] = stats
            kept["engine"] = (len(producer.engine.holds), len(producer.engine._active),
                              sum(len(lane.batches) for lane in producer.engine.lanes.values()))
            filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
            diff = after.filter_traces(filters).compare_to(base.filter_traces(filters),
                                                          "traceback")
            kept["grown"] = sum(d.size_diff for d in diff)
            kept["live"] = _live_records()
            kept["top"] = "\n".join(str(d) + "\n" + "\n".join(d.traceback.format())
                                    for d in diff[:5])
        finally:
            await producer.close()

    asyncio.run(main())
    stats = kept["stats"]
    assert stats["accepted"] == stats["delivered"] and stats["failed"] == 0
    assert kept["engine"] == (0, 0, 0)     # no holds, no lanes with batches
    assert kept["peak"] > 8 * 2**20        # the load did fill the queue
    assert kept["live"] == {}   # not even the last request answered on each connection
    assert kept["grown"] < 256 * 1024, kept["top"]


@pytest.mark.mockcluster
def test_the_freed_heap_is_handed_back_once_the_queue_empties_after_a_large_load(
        mock_cluster, monkeypatch):
    mock_cluster.create_topic("mt", 3)
    trims = []
    monkeypatch.setattr(kafkad.broker, "_malloc_trim", lambda pad: trims.append(pad))
    monkeypatch.setattr(BrokerProducer, "trim_after_bytes", 50_000)
    seen = {}

    async def main():
        producer = BrokerProducer(kafka_config(mock_cluster.bootstrap), QueueConfig(),
                                  on_outcomes=lambda outcomes: None)
        await producer.start()
        rnd = random.Random(5)
        try:
            for i in range(10):     # about 6 kB: below the mark
                producer.submit(sub("mt", i % 3, [rnd.randbytes(600)], token=-i))
            await wait_for(lambda: producer.engine.idle)
            await asyncio.sleep(0.05)
            seen["small"] = len(trims)
            for i in range(200):    # about 120 kB queued in one go: past the mark
                producer.submit(sub("mt", i % 3, [rnd.randbytes(600)], token=i))
            seen["while_queued"] = len(trims)
            await wait_for(lambda: producer.engine.idle and trims)
            await asyncio.sleep(0.05)   # and only once
            seen["after"] = len(trims)
        finally:
            await producer.close()

    asyncio.run(main())
    assert seen == {"small": 0, "while_queued": 0, "after": 1}
    assert trims == [0]

"""Shared pieces of the BrokerProducer integration tests: a run, and the read-back checks."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

from kafkad.broker import BrokerProducer
from kafkad.config import KafkaConfig, QueueConfig
from kafkad.engine.types import SessionSettings, Submission


@dataclass
class Run:
    """What one producer run handed in and got back."""

    outcomes: list = field(default_factory=list)
    subs: dict = field(default_factory=dict)      # token -> Submission
    left: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def by_token(self) -> dict:
        out = defaultdict(list)
        for o in self.outcomes:
            out[o.token].append(o)
        return out

    def errors(self) -> dict:
        return {o.token: o.error for o in self.outcomes if o.error}

    def expected_offsets(self) -> dict[tuple[int, int], bytes]:
        """(partition, offset) -> value for every delivered record with a known offset."""
        out = {}
        for token, outs in self.by_token().items():
            sub = self.subs[token]
            i = 0
            for o in outs:
                if o.error == 0 and o.base_offset >= 0:
                    for k in range(o.delivered):
                        out[(o.partition, o.base_offset + k)] = sub.values[i + k]
                i += o.delivered + o.failed
        return out


def kafka_config(bootstrap: str, **kw) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=tuple(bootstrap.split(",")), **kw)


def sub(topic: str, partition: int, values, settings: SessionSettings | None = None, *,
        session: bytes = b"s", token=None, keys=None) -> Submission:
    return Submission(session, settings or SessionSettings(), topic, partition,
                      list(keys) if keys is not None else [None] * len(values), list(values),
                      int(time.time() * 1000), token)


async def run_producer(kafka: KafkaConfig, script, *, queue: QueueConfig | None = None,
                       drain_s: float = 20.0) -> Run:
    """Start a BrokerProducer, `await script(producer, run)`, drain, close; return the Run."""
    run = Run()
    producer = BrokerProducer(kafka, queue or QueueConfig(), on_outcomes=run.outcomes.extend)
    await producer.start()
    try:
        await script(producer, run)
        run.left = await producer.drain(asyncio.get_running_loop().time() + drain_s)
        run.stats = producer.stats()
    finally:
        await producer.close()
    return run


def submit(producer: BrokerProducer, run: Run, s: Submission) -> None:
    run.subs[s.token] = s
    producer.submit(s)


def wait_for(cond, timeout: float = 10.0, step: float = 0.01):
    """An awaitable that finishes once cond() is true (checked as the loop turns)."""
    async def _wait():
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(step)
    return _wait()


def check_balanced(stats: dict) -> None:
    assert stats["accepted"] == (stats["delivered"] + stats["failed"] + stats["dropped"]
                                 + stats["queued"] + stats["in_flight"]), stats


def check_read_back(run: Run, got: dict[int, list], *, sessions_in_order: bool = True,
                    exact: bool = True) -> None:
    """Read-back checks: nothing missing, per-(session, partition) order, offsets are real.

    `got` is read_all_confluent's {partition: [(key, value, offset)]}. With
    exact=False (a peer that may store a retried batch twice) duplicates are
    allowed but every delivered record must be there in order of first
    appearance.
    """
    delivered = defaultdict(list)   # partition -> values in send order per session
    for token, outs in run.by_token().items():
        s = run.subs[token]
        i = 0
        for o in outs:
            if o.error == 0:
                delivered[(s.session_id, o.partition)] += s.values[i:i + o.delivered]
            i += o.delivered + o.failed
    stored = {p: [v for _, v, _ in recs] for p, recs in got.items()}
    for (session, p), values in delivered.items():
        seen = [v for v in stored.get(p, []) if v in set(values)]
        if exact:
            assert sorted(seen) == sorted(values), f"partition {p}: stored != delivered"
        else:
            first = list(dict.fromkeys(seen))
            assert set(first) == set(values), f"partition {p}: missing records"
            seen = first
        if sessions_in_order:
            assert seen == values, f"partition {p}: order of session {session!r} not kept"
    offsets = {(p, off): v for p, recs in got.items() for _, v, off in recs}
    for (p, off), value in run.expected_offsets().items():
        assert offsets.get((p, off)) == value, f"partition {p} offset {off}: reported != stored"


def settings(**kw) -> SessionSettings:
    return replace(SessionSettings(), **kw)


def read_everything(bootstrap: str, topic: str, partitions: int,
                    timeout: float = 15.0) -> dict[int, list[tuple]]:
    """Every record stored in `topic` up to each partition's high watermark, with librdkafka.

    For peers that may store duplicates: the count to wait for comes from the
    broker's watermarks, not from what the producer sent.
    """
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kafkad-broker-tests",
                  "enable.auto.commit": False, "check.crcs": True})
    try:
        high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in range(partitions)}
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: dict[int, list] = {p: [] for p in range(partitions)}
        deadline = time.monotonic() + timeout
        while any(len(out[p]) < high[p] for p in out) and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            out[m.partition()].append((m.key(), m.value(), m.offset()))
        return out
    finally:
        c.close()

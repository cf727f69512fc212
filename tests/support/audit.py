"""Stamped payloads and an auditor that reads a topic back and judges what arrived.

Writers stamp every message with who sent it and its place in that sender's
stream; the auditor reads every partition of the topic with an independent
consumer (kafka-python 3, CRC checks on) and reports, per worker:

- missing: sequences the worker handed over that are not in the topic;
- duplicated: extra copies of a sequence (each copy beyond the first counts);
- disorder: records that arrived after a later record of the same worker in
  the same partition (checked per worker per partition: a KeyedProducer keyed
  by the worker id keeps one worker on one partition, and Kafka promises
  order only within a partition). Second copies of a duplicate do not count
  as disorder: they are already counted as duplicates.

The payload is ASCII so a human can read a dumped record:

    KD1|w=000007|s=000000000042|<padding to the requested size>

`check_accounting` checks the daemon's own books from `kafkad stats --json`:
accepted = delivered + failed + dropped + queued + in_flight.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

MAGIC = b"KD1"
_HEADER = re.compile(rb"\AKD1\|w=(\d{6})\|s=(\d{12})\|")
HEADER_LEN = len(b"KD1|w=000000|s=000000000000|")
MAX_WORKER = 999_999
MAX_SEQ = 999_999_999_999


def stamp(worker: int, seq: int, size: int = 0) -> bytes:
    """The payload of message `seq` of `worker`, padded with b'.' to `size` bytes (at least the header)."""
    if not 0 <= worker <= MAX_WORKER:
        raise ValueError(f"worker must be in 0..{MAX_WORKER}, got {worker!r}")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"seq must be in 0..{MAX_SEQ}, got {seq!r}")
    head = b"KD1|w=%06d|s=%012d|" % (worker, seq)
    return head + b"." * (size - len(head)) if size > len(head) else head


def worker_key(worker: int) -> bytes:
    """The message key that keeps one worker on one partition with a KeyedProducer."""
    return b"worker-%06d" % worker


def parse(value: bytes | None) -> tuple[int, int] | None:
    """(worker, seq) of a stamped payload, or None for anything else."""
    if value is None:
        return None
    m = _HEADER.match(value)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2))


@dataclass
class AuditReport:
    """What the auditor found. Maps are keyed by worker id; only workers with a defect appear."""

    read: int = 0
    missing: dict[int, list[int]] = field(default_factory=dict)
    duplicated: dict[int, int] = field(default_factory=dict)
    disorder: dict[int, int] = field(default_factory=dict)
    unexpected: dict[int, list[int]] = field(default_factory=dict)  # sequences never handed over
    foreign: int = 0                     # records that carry no stamp
    partitions_per_worker: dict[int, set[int]] = field(default_factory=dict)

    @property
    def n_missing(self) -> int:
        return sum(len(v) for v in self.missing.values())

    @property
    def n_duplicated(self) -> int:
        return sum(self.duplicated.values())

    @property
    def n_disorder(self) -> int:
        return sum(self.disorder.values())

    @property
    def n_unexpected(self) -> int:
        return sum(len(v) for v in self.unexpected.values())

    @property
    def clean(self) -> bool:
        """Exactly what was handed over, once each, in order."""
        return not (self.missing or self.duplicated or self.disorder or self.unexpected or self.foreign)

    def summary(self) -> str:
        return (f"read={self.read} missing={self.n_missing} duplicated={self.n_duplicated} "
                f"disorder={self.n_disorder} unexpected={self.n_unexpected} foreign={self.foreign}")

    def details(self, limit: int = 10) -> str:
        """The first few defects of each kind, for an assertion message."""
        lines = [self.summary()]
        for name, m in (("missing", self.missing), ("unexpected", self.unexpected)):
            for w, seqs in sorted(m.items())[:limit]:
                lines.append(f"  worker {w} {name}: {seqs[:limit]}{' ...' if len(seqs) > limit else ''}")
        for name, m in (("duplicated", self.duplicated), ("disorder", self.disorder)):
            for w, n in sorted(m.items())[:limit]:
                lines.append(f"  worker {w} {name}: {n}")
        return "\n".join(lines)


def audit(records: Mapping[int, Iterable[bytes | None]],
          expected: Mapping[int, Iterable[int]]) -> AuditReport:
    """Judge `records` ({partition: values in offset order}) against what was handed over.

    `expected` maps each worker id to the sequences it handed over (e.g.
    `range(n)`); a worker killed mid-stream lists only what it had handed over.
    Records of workers not in `expected` are reported as unexpected.
    """
    rep = AuditReport()
    want = {w: set(seqs) for w, seqs in expected.items()}
    seen: dict[int, dict[int, int]] = defaultdict(dict)             # worker -> seq -> copies
    last: dict[tuple[int, int], int] = {}                             # (worker, partition) -> max seq
    for partition, values in records.items():
        for value in values:
            rep.read += 1
            stamp_ = parse(value)
            if stamp_ is None:
                rep.foreign += 1
                continue
            w, s = stamp_
            rep.partitions_per_worker.setdefault(w, set()).add(partition)
            copies = seen[w].get(s, 0)
            seen[w][s] = copies + 1
            if copies:
                rep.duplicated[w] = rep.duplicated.get(w, 0) + 1
                continue
            prev = last.get((w, partition))
            if prev is not None and s < prev:
                rep.disorder[w] = rep.disorder.get(w, 0) + 1
            else:
                last[(w, partition)] = s
    for w, seqs in want.items():
        got = seen.get(w, {})
        gone = sorted(s for s in seqs if s not in got)
        if gone:
            rep.missing[w] = gone
    for w, got in seen.items():
        extra = sorted(s for s in got if s not in want.get(w, ()))
        if extra:
            rep.unexpected[w] = extra
    return rep


def read_topic(bootstrap: str, topic: str, expected: int | None = None,
               timeout: float = 30.0, idle_s: float = 2.0) -> dict[int, list[bytes | None]]:
    """Every record value of every partition of `topic`, in offset order, read with kafka-python 3.

    CRC checks are on. Stops once `expected` records were read (and then one
    more idle poll, so that duplicates beyond the count are seen too), when
    nothing new arrived for `idle_s` without an expected count, or at
    `timeout`.
    """
    from kafka import KafkaConsumer, TopicPartition  # test dependency only

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, check_crcs=True, group_id=None,
                             bootstrap_timeout_ms=int(timeout * 1000))
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.1)
        if not parts:
            raise RuntimeError(f"topic {topic!r} has no partitions on {bootstrap} after {timeout}s")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: dict[int, list[bytes | None]] = {p: [] for p in parts}
        count = 0
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            got = sum(len(recs) for recs in batch.values())
            for tp, recs in batch.items():
                out[tp.partition].extend(r.value for r in recs)
            count += got
            if got:
                idle_since = time.monotonic()
                continue
            at_end = all(consumer.position(tp) >= end[tp] for tp in tps)
            if expected is not None:
                if count >= expected and at_end:
                    break
                if count < expected and at_end:
                    # More may still be on its way: refresh the end offsets.
                    end = consumer.end_offsets(tps)
                    if all(consumer.position(tp) >= end[tp] for tp in tps) and \
                            time.monotonic() - idle_since > idle_s:
                        break
            elif at_end and time.monotonic() - idle_since > idle_s:
                break
        return out
    finally:
        consumer.close()


def read_topic_confluent(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[int, list[bytes | None]]:
    """Like `read_topic`, with librdkafka (check.crcs on): for brokers kafka-python cannot talk to.

    The librdkafka mock cluster answers ApiVersions v3+ with error 35 and a
    v0 body, which kafka-python 3 does not accept; librdkafka does. Reads
    every partition up to its high watermark as it is when reading starts.
    """
    from confluent_kafka import Consumer, TopicPartition  # test dependency only

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"kafkad-audit-{topic}",
                  "enable.auto.commit": False, "check.crcs": True,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    try:
        md = c.list_topics(topic, timeout=timeout)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        if not parts:
            raise RuntimeError(f"topic {topic!r} has no partitions on {bootstrap}")
        high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] for p in parts}
        out: dict[int, list[bytes | None]] = {p: [] for p in parts}
        todo = {p for p in parts if high[p] > 0}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    if m.offset() >= high[m.partition()]:
                        todo.discard(m.partition())
                    continue
                raise RuntimeError(f"confluent-kafka read error on {topic}: {m.error()}")
            out[m.partition()].append(m.value())
            if m.offset() + 1 >= high[m.partition()]:
                todo.discard(m.partition())
        if todo:
            raise RuntimeError(f"read of {topic} incomplete after {timeout}s: partitions {sorted(todo)} "
                               f"short of their high watermarks {high}")
        return out
    finally:
        c.close()


def check_accounting(stats: Mapping) -> list[str]:
    """Problems in the daemon's books (empty when they balance).

    accepted = delivered + failed + dropped + handed_back + kept_in_spool + queued
    + in_flight, all non-negative integers (`handed_back` and `kept_in_spool` count as
    0 when absent). `stats` is the parsed `kafkad stats --json`
    (kafkad names the queued gauge `queued_messages`; `queued` is accepted
    too). When the daemon reports its own `unaccounted` figure, it must be 0
    and agree with the sum computed here.
    """
    terms = {"accepted": ("accepted",), "delivered": ("delivered",), "failed": ("failed",),
             "dropped": ("dropped",), "queued": ("queued_messages", "queued"),
             "in_flight": ("in_flight",)}
    problems = []
    vals = {}
    for optional in ("handed_back", "kept_in_spool"):
        if optional in stats:
            terms[optional] = (optional,)
    for name, keys in terms.items():
        key = next((k for k in keys if k in stats), keys[0])
        v = stats.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            problems.append(f"{key}: missing or not an integer ({v!r})")
        elif v < 0:
            problems.append(f"{key}: negative ({v})")
        else:
            vals[name] = v
    if problems:
        return problems
    rhs = sum(v for k, v in vals.items() if k != "accepted")
    if vals["accepted"] != rhs:
        problems.append(
            f"accepted={vals['accepted']} but delivered+failed+dropped+handed_back+kept_in_spool+queued+in_flight"
            f"={rhs} "
            f"({', '.join(f'{k}={v}' for k, v in vals.items() if k != 'accepted')})")
    if "unaccounted" in stats and stats["unaccounted"] != vals["accepted"] - rhs:
        problems.append(f"unaccounted={stats['unaccounted']!r} disagrees with the counters "
                        f"({vals['accepted'] - rhs})")
    return problems

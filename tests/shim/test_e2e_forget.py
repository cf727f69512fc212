"""End to end: a real `kafkad run` forgets an idle topic (metadata_max_idle_ms) and takes it back."""

from __future__ import annotations

import time

import pytest

import client_shim
from tests.support.daemon import KafkadProcess
from tests.support.readback import read_all_confluent

pytestmark = pytest.mark.broker


def wait_stats(d: KafkadProcess, predicate, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = d.stats()
        if predicate(s):
            return s
        assert time.monotonic() < deadline, f"stats never matched: {s['topics']} {s['ipc']}"
        time.sleep(0.1)


def test_an_idle_topic_is_forgotten_and_comes_back_when_sent_to(tansu, topic):
    with KafkadProcess(tansu.bootstrap, request_timeout_ms=3000, drain_timeout_s=5,
                       extra={"kafka": {"metadata_max_idle_ms": 300}}) as d:
        d.start()
        c = client_shim.DaemonClient(d.endpoint)
        p = client_shim.SimpleProducer(c, random_start=False)
        for i in range(3):
            p.send_messages(topic, b"before-%d" % i)
        s = d.stats()
        assert topic not in s["topics"] or s["topics"][topic]["delivered"] == 3, s["topics"]
        # nothing sent to it for 300 ms, nothing left in the daemon: forgotten,
        # with its PARTITIONS_CHANGED watchers; the totals stay
        s = wait_stats(d, lambda s: topic not in s["topics"])
        assert s["topics_forgotten"] >= 1
        assert s["delivered"] == 3 and s["failed"] == 0
        assert s["ipc"]["watched_topics"] == 0
        # sent to again: its metadata is asked for again and the records are delivered
        for i in range(2):
            p.send_messages(topic, b"after-%d" % i)
        s = d.stats()
        assert s["delivered"] == 5 and s["failed"] == 0, s
        p.stop(timeout=10)
    got = read_all_confluent(tansu.bootstrap, topic, 3, 5)
    values = sorted(v for recs in got.values() for _, v, _ in recs)
    assert values == sorted([b"before-0", b"before-1", b"before-2", b"after-0", b"after-1"])

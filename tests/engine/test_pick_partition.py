"""Submissions whose partition the engine picks (Submission.partition < 0).

A shim that knows no partition list for a topic (a cold start while no
broker is reachable) sends -1 - i and the engine picks partition
i % n of the topic's sorted ids once it knows them. These tests hold the
engine to what that promises: nothing is lost or reordered while it waits,
the pick is what the shim's own partitioners would have picked, and waiting
records time out, fail and drain like any other.
"""

from __future__ import annotations

import pytest

from client_shim.partitioner import Murmur2Partitioner, RoundRobinPartitioner, murmur2
from kafkad.config import QueueConfig
from kafkad.engine.types import pick_partition

from .fakes import FakeCluster, Harness, settings


def pick(i: int) -> int:
    return -1 - i


def cold(*topics: str, partitions: int = 3, **kw) -> Harness:
    """A harness whose brokers are all down, with `topics` created on the cluster."""
    c = FakeCluster()
    for t in topics:
        c.create(t, partitions)
    kw.setdefault("reconnect_backoff_ms", 50)
    kw.setdefault("reconnect_backoff_max_ms", 200)
    h = Harness(c, **kw)
    h.up.clear()
    return h


def test_pick_partition_matches_the_shims_partitioners_for_any_list():
    for parts in ([0], [0, 1, 2], [0, 1, 2, 3, 4, 5, 6], [2, 5, 9]):
        for key in (b"", b"user-1", b"order-42", bytes(range(40))):
            h = murmur2(key) & 0x7FFFFFFF
            assert pick_partition(pick(h), parts) == Murmur2Partitioner(parts).partition(key, parts)
        rr = RoundRobinPartitioner(parts)
        assert [pick_partition(pick(i), parts) for i in range(10)] == \
            [rr.partition(None, parts) for _ in range(10)]
    assert pick_partition(-2**31, [0, 1, 2]) == (2**31 - 1) % 3


def test_cold_start_waits_for_the_partitions_then_delivers_everything_in_order():
    h = cold("t")
    sync = settings(async_send=False)
    h.submit("t", pick(0), [b"a0", b"a1"], token="a", settings=settings(async_send=True, batch_n=1))
    h.submit("t", pick(1), [b"b0"], token="b", settings=sync)
    # an explicit partition behind waiting ones waits too: it must not overtake "a"
    h.submit("t", 0, [b"c0"], token="c", settings=settings(async_send=True, batch_n=1))
    h.submit("t", pick(3), [b"d0"], token="d", settings=sync)
    h.run(until=h.now + 2)
    e = h.engine
    assert h.outcomes == []
    assert e.stats()["unplaced"] == 5 and e.queued == 5
    assert e.unreachable()          # every connection attempt so far failed
    h.up.update(h.cluster.brokers)
    h.run(until=h.now + 2)
    assert not e.unreachable()
    assert h.values("t", 0) == [b"a0", b"a1", b"c0", b"d0"]
    assert h.values("t", 1) == [b"b0"]
    got = {tok: [(o.partition, o.error, o.delivered) for o in os] for tok, os in h.by_token().items()}
    assert got == {"a": [(0, 0, 2)], "b": [(1, 0, 1)], "c": [(0, 0, 1)], "d": [(0, 0, 1)]}
    assert e.stats()["unplaced"] == 0 and e.idle


def test_a_known_topic_picks_at_once():
    h = cold("t")
    h.up.update(h.cluster.brokers)
    h.submit("t", 0, [b"warm-up"], settings=settings(async_send=False))
    h.run()
    sub = h.submit("t", pick(4), [b"x"], token="x", settings=settings(async_send=False))
    assert h.engine.unplaced == 0          # placed in submit, not parked
    h.run()
    assert [(o.partition, o.error) for o in h.by_token()["x"]] == [(1, 0)]
    assert sub.partition == pick(4)        # the caller's submission is not changed


def test_waiting_async_records_are_not_held_for_batch_t_again():
    """Placed late, a session's records join its hold and the hold goes at once:
    with the legacy batch_send_every_t of 20 s they would otherwise wait again,
    after a stop() had asked for a flush."""
    h = cold("t")
    slow = settings(async_send=True, batch_n=1000, batch_t=20.0)
    h.submit("t", pick(0), [b"w"], token="w", settings=slow)
    h.run(until=h.now + 1)
    h.up.update(h.cluster.brokers)
    h.run(until=h.now + 1)
    assert [(o.partition, o.error) for o in h.by_token()["w"]] == [(0, 0)]


def test_waiting_records_of_a_topic_that_does_not_exist_fail_with_its_error():
    h = cold(unknown_topic_wait_ms=500)
    h.submit("nope", pick(0), [b"x", b"y"], token="x")
    h.submit("nope", 2, [b"z"], token="z")
    h.up.update(h.cluster.brokers)
    h.run(until=h.now + 2)
    got = {tok: [(o.error, o.failed) for o in os] for tok, os in h.by_token().items()}
    assert got == {"x": [(3, 2)], "z": [(3, 1)]}
    assert h.engine.unplaced == 0 and h.engine.idle


def test_waiting_records_fail_at_their_delivery_timeout_oldest_first(caplog):
    h = cold("t", delivery_timeout_ms=3000)
    h.submit("t", pick(0), [b"early"], token="early")
    h.run(until=h.now + 1.5)
    h.submit("t", pick(1), [b"late"], token="late")
    h.run(until=h.now + 1.6)          # past the first deadline only
    assert [(o.token, o.error, o.failed) for o in h.outcomes] == [("early", 7, 1)]
    assert h.engine.unplaced == 1
    h.run(until=h.now + 1.5)
    assert [(o.token, o.error) for o in h.outcomes] == [("early", 7), ("late", 7)]
    assert "partition not picked yet" in caplog.text
    assert "the partitions of 't' are not known" in caplog.text
    assert h.engine.idle


def test_a_refused_login_is_the_cause_of_a_waiting_records_timeout():
    h = cold("t", delivery_timeout_ms=2000)
    h.refusal = ("TLS to 127.0.0.1:9001: handshake failed", 58)
    h.submit("t", pick(0), [b"x"], token="x")
    h.run(until=h.now + 2.5)
    assert [(o.error, o.failed) for o in h.by_token()["x"]] == [(58, 1)]


def test_a_drain_hands_back_waiting_records_after_everything_else():
    h = cold("t", "u")
    h.up.update(h.cluster.brokers)
    h.submit("u", 0, [b"warm-up"], settings=settings(async_send=False))
    h.run()
    h.up.clear()
    for node in list(h.engine.conns):
        h.engine.disconnected(node, h.now, "test: down")
    held = h.submit("u", 1, [b"held"], settings=settings(async_send=True, batch_n=100, batch_t=60.0))
    waiting = h.submit("t", pick(5), [b"w1", b"w2"])
    behind = h.submit("t", 1, [b"w3"])
    h.run(until=h.now + 1)
    out = h.engine.take_undelivered()
    assert out == [held, waiting, behind]      # the negative partition kept: the next daemon picks
    assert h.engine.unplaced == 0 and h.engine.queued == 0
    h.check_accounting()


def test_a_topic_with_waiting_records_is_not_forgotten():
    h = cold("t", metadata_max_idle_ms=500, delivery_timeout_ms=60_000)
    h.submit("t", pick(0), [b"x"], token="x")
    h.run(until=h.now + 5)
    assert "t" in h.engine._unplaced and "t" in h.engine._topic_used
    h.up.update(h.cluster.brokers)
    h.run(until=h.now + 1)
    assert [(o.partition, o.error) for o in h.by_token()["x"]] == [(0, 0)]


def test_waiting_records_count_against_the_queue_caps():
    h = cold("t", queue=QueueConfig(max_messages=3))
    h.submit("t", pick(0), [b"1", b"2"])
    h.submit("t", pick(1), [b"3"])
    from kafkad.engine.types import QueueFull
    with pytest.raises(QueueFull):
        h.submit("t", pick(2), [b"4"])
    assert h.engine.unplaced == 3


def test_asking_again_every_second_does_not_keep_a_missing_topic_from_failing():
    """A shim in "kafkad picks" mode asks for the list about once a second
    (want_topic each time): the wait for the topic to exist must still end."""
    h = cold(unknown_topic_wait_ms=2000, delivery_timeout_ms=60_000)
    h.up.update(h.cluster.brokers)
    h.submit("nope", pick(0), [b"x"], token="x")
    end = h.now + 4
    while h.now < end and not h.outcomes:
        h.engine.want_topic("nope", h.now)
        h.run(until=h.now + 0.5)
    assert [(o.error, o.failed) for o in h.by_token()["x"]] == [(3, 1)]
    assert h.now < 1000 + 3.5          # at the wait (2 s, plus a metadata round or two), not later


def test_unreachable_only_once_a_reconnect_attempt_failed():
    h = cold("t")
    assert not h.engine.unreachable()                 # nothing tried yet
    h.up.update(h.cluster.brokers)
    h.submit("t", 0, [b"warm-up"], settings=settings(async_send=False))
    h.run()
    assert not h.engine.unreachable()
    h.up.clear()
    for node in list(h.engine.conns):
        h.engine.disconnected(node, h.now, "test: the broker went away")
    # a connection that just dropped has not failed an attempt: a METADATA waits for the retry
    assert not h.engine.unreachable()
    h.submit("t", 1, [b"x"])
    h.run(until=h.now + 1)
    assert h.engine.unreachable()


def test_many_waiting_submissions_failing_at_once_make_one_log_line(caplog):
    h = cold("t", delivery_timeout_ms=1000)
    for i in range(50):
        h.submit("t", pick(i), [b"m%d" % i], token=i, settings=settings(async_send=True))
    with caplog.at_level("WARNING", logger="kafkad.engine"):
        h.run(until=h.now + 1.5)
    assert sorted((o.token, o.error, o.failed) for o in h.outcomes) == [(i, 7, 1) for i in range(50)]
    lines = [r.getMessage() for r in caplog.records if "failed to deliver" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "50 message(s) in 50 submission(s) to t, waiting for its partition list" in lines[0]
    assert "b'm0'" in lines[0] and "b'm19'" in lines[0] and "b'm20'" not in lines[0]
    assert "30 more" in lines[0]


def test_a_waiting_sync_send_that_fails_keeps_its_own_log_line(caplog):
    """The IPC side logs no failed sync send (its caller gets the error): the engine's
    line is its only record, so it is not folded into the summary."""
    h = cold("t", delivery_timeout_ms=1000)
    for i in range(3):
        h.submit("t", pick(i), [b"sync-%d" % i], token=i, settings=settings(async_send=False))
    h.submit("t", pick(3), [b"async"], token=3, settings=settings(async_send=True))
    with caplog.at_level("WARNING", logger="kafkad.engine"):
        h.run(until=h.now + 1.5)
    lines = [r.getMessage() for r in caplog.records if "failed to deliver" in r.getMessage()]
    assert len(lines) == 4, lines
    assert sum("b'sync-" in line for line in lines) == 3
    assert "1 message(s) in 1 submission(s)" in lines[-1] and "b'async'" in lines[-1]

"""The shim against an IpcServer over the seam double: sync/async paths, bounds, restarts, fork, threads.

These run the real shim and the real IpcServer (in a thread of the test
process, over `tests.ipc.fakes.FakeProducer`); the end-to-end tests in
test_e2e_*.py do the same through a kafkad process and a real broker.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zmq

import client_shim
from client_shim import errors
from kafkad.engine.types import QueueFull
from tests.ipc.fakes import FakeProducer, ServerThread, short_tmp_endpoint
from tests.support.procs import reaped


@pytest.fixture
def server():
    st = ServerThread().start()
    yield st
    st.stop()


def client(server, timeout=5.0):
    return client_shim.DaemonClient(server.endpoint, timeout=timeout)


def values(server):
    return [v for _, _, _, v in server.producer.messages()]


def test_sync_send_returns_first_offset_per_call(server):
    p = client_shim.Producer(client(server))
    assert p.send_messages("t", 1, b"a", b"b") == [client_shim.ProduceResponsePayload("t", 1, 0, 0)]
    assert p.send_messages("t", 1, b"c") == [client_shim.ProduceResponsePayload("t", 1, 0, 2)]
    sub = server.producer.submissions[0]
    assert (sub.settings.acks, sub.settings.async_send, sub.keys) == (1, False, [None, None])


def test_req_acks_zero_returns_empty_list(server):
    p = client_shim.Producer(client(server), req_acks=0)
    assert p.send_messages("t", 0, b"a") == []
    assert server.producer.submissions[0].settings.acks == 0


def test_sync_failure_raises_or_returns_error_payload(server):
    server.producer.fail_with = 10
    raising = client_shim.Producer(client(server))
    with pytest.raises(errors.MessageSizeTooLargeError) as info:
        raising.send_messages("t", 2, b"big")
    assert info.value.errno == 10 and "t[2]" in str(info.value)
    quiet = client_shim.Producer(client(server), sync_fail_on_error=False)
    assert quiet.send_messages("t", 2, b"big") == [client_shim.ProduceResponsePayload("t", 2, 10, -1)]


def test_a_sync_call_over_the_size_limit_returns_the_error_payload_unless_told_to_raise(server):
    """The per-call limit is checked before sending; with sync_fail_on_error=False that
    failure is returned like any other (error 10, offset -1), for every producer kind."""
    big = b"x" * (8 << 20)
    quiet = client_shim.Producer(client(server), sync_fail_on_error=False)
    assert quiet.send_messages("t", 2, big) == [client_shim.ProduceResponsePayload("t", 2, 10, -1)]
    simple = client_shim.SimpleProducer(client(server), sync_fail_on_error=False, random_start=False)
    assert simple.send_messages("t", big) == [client_shim.ProduceResponsePayload("t", 0, 10, -1)]
    assert simple.send_messages("t", b"ok") == [client_shim.ProduceResponsePayload("t", 1, 0, 0)]
    keyed = client_shim.KeyedProducer(client(server), sync_fail_on_error=False)
    part = client_shim.HashedPartitioner([0, 1, 2]).partition(b"k")
    assert keyed.send_messages("t", b"k", *[b"y" * (1 << 20)] * 8) == \
        [client_shim.ProduceResponsePayload("t", part, 10, -1)]
    assert values(server) == [b"ok"]               # nothing of the oversized calls was sent
    with pytest.raises(TypeError, match="bytes or None"):
        quiet.send_messages("t", 0, big, "text")      # misuse still raises
    with pytest.raises(errors.MessageSizeTooLargeError):
        client_shim.Producer(client(server)).send_messages("t", 2, big)
    with pytest.raises(errors.MessageSizeTooLargeError):
        client_shim.Producer(client(server), async_send=True, sync_fail_on_error=False).send_messages("t", 2, big)


def test_every_setting_reaches_the_daemon(server):
    p = client_shim.Producer(client(server), req_acks=-1, ack_timeout=2500, codec=client_shim.CODEC_ZSTD,
                             codec_compresslevel=9, async_send=True, batch_send_every_n=5,
                             batch_send_every_t=0.25, async_retry_limit=2, async_retry_backoff_ms=300,
                             async_retry_on_timeouts=False, async_log_messages_on_error=False)
    p.send_messages("t", 0, b"x")
    p.stop()
    s = server.producer.submissions[0].settings
    assert (s.acks, s.ack_timeout_ms, s.codec, s.codec_level, s.async_send, s.batch_n, s.batch_t,
            s.retry_limit, s.retry_backoff_ms, s.retry_on_timeouts, s.log_messages_on_error) == \
        (-1, 2500, 4, 9, True, 5, 0.25, 2, 300, False, False)


def test_default_settings_reach_the_daemon(server):
    p = client_shim.Producer(client(server), async_send=True)
    p.send_messages("t", 0, b"x")
    p.stop()
    s = server.producer.submissions[0].settings
    assert (s.acks, s.ack_timeout_ms, s.codec, s.codec_level, s.batch_n, s.batch_t, s.retry_limit,
            s.retry_backoff_ms, s.retry_on_timeouts, s.log_messages_on_error) == \
        (1, 1000, 0, None, 20, 20.0, None, 100, True, True)


def test_async_returns_at_once_and_stop_waits_for_acknowledgements(server):
    server.producer.hold = True
    p = client_shim.SimpleProducer(client(server), async_send=True, random_start=False)
    assert p.send_messages("t", b"a") == []
    assert p.send_messages("t", b"b", b"c") == []
    server.producer.release(after=3)
    p.stop()
    assert p._session.pending == {}
    assert values(server) == [b"a", b"b", b"c"]
    p.stop()                                   # a second stop is harmless
    with pytest.raises(errors.IllegalStateError, match="stopped"):
        p.send_messages("t", b"late")


def test_stop_timeout_reports_what_was_not_delivered(server, caplog):
    server.producer.hold = True
    p = client_shim.Producer(client(server), async_send=True, async_stop_timeout=0.2)
    p.send_messages("t", 0, b"stuck-1", b"stuck-2")
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        t0 = time.monotonic()
        p.stop()
        assert time.monotonic() - t0 >= 0.2
    assert "2 message(s) not delivered" in caplog.text and "stuck-1" in caplog.text


def test_stop_argument_overrides_async_stop_timeout(server, caplog):
    server.producer.hold = True
    p = client_shim.Producer(client(server), async_send=True, async_stop_timeout=60)
    p.send_messages("t", 0, b"x")
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        p.stop(timeout=0.1)
    assert time.monotonic() - t0 < 30 and "not delivered" in caplog.text


def test_sync_stop_is_harmless(server):
    p = client_shim.Producer(client(server))
    p.stop()
    p.stop()
    q = client_shim.Producer(client(server))
    q.send_messages("t", 0, b"x")
    q.stop()
    q.stop()


def _stop_between_get_session_and_send(p):
    """Make `p`'s next send find its session, then have another thread run stop() to
    its end before the send goes on: the interleaving of a send racing stop()."""
    get_session = p._get_session

    def racing():
        session = get_session()
        stopper = threading.Thread(target=p.stop, args=(5,))
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive() and session.closed
        return session

    p._get_session = racing


@pytest.mark.parametrize("async_send", [True, False], ids=["async", "sync"])
def test_send_racing_stop_from_another_thread_raises(server, async_send):
    p = client_shim.Producer(client(server), async_send=async_send)
    p.send_messages("t", 0, b"before")
    _stop_between_get_session_and_send(p)
    with pytest.raises(errors.IllegalStateError, match="stopped"):
        p.send_messages("t", 0, b"racing")
    assert values(server) == [b"before"]
    assert p._session.pending == {}


def test_sender_waiting_for_room_is_refused_when_stop_ends_the_session(server, caplog):
    server.producer.hold = True
    p = client_shim.Producer(client(server), async_send=True, async_queue_maxsize=1,
                             async_queue_put_timeout=60)
    p.send_messages("t", 0, b"held")
    outcome = []

    def send_when_room():
        try:
            p.send_messages("t", 0, b"never-taken")
        except Exception as exc:  # recorded for the assertion below
            outcome.append(exc)

    sender = threading.Thread(target=send_when_room)
    sender.start()
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        p.stop(timeout=0.1)
    sender.join(30)                               # not the 60 s put timeout
    assert not sender.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], errors.IllegalStateError), outcome
    assert "1 message(s) not delivered" in caplog.text and "never-taken" not in caplog.text
    server.producer.release()


def test_async_failure_is_logged_with_contents_or_hash(server, caplog):
    server.producer.fail_with = 29
    loud = client_shim.Producer(client(server), async_send=True)
    quiet = client_shim.Producer(client(server), async_send=True, async_log_messages_on_error=False)
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        loud.send_messages("t", 0, b"visible-payload")
        quiet.send_messages("t", 1, b"hidden-payload")
        loud.stop()
        quiet.stop()
    shim_lines = [r.getMessage() for r in caplog.records if r.name == "client_shim"]
    assert any("visible-payload" in m and "TopicAuthorizationFailedError" in m for m in shim_lines)
    assert any("hashes" in m and "t[1]" in m for m in shim_lines)
    assert not any("hidden-payload" in m for m in shim_lines)
    assert loud._session.failed_messages == 1 and loud._session.pending == {}


def test_queue_full_without_put_timeout_fails_at_once(server):
    server.producer.hold = True
    p = client_shim.Producer(client(server), async_send=True, async_queue_maxsize=2)
    p.send_messages("t", 0, b"1", b"2")
    t0 = time.monotonic()
    with pytest.raises(errors.AsyncProducerQueueFull) as info:
        p.send_messages("t", 0, b"3", b"4")
    assert time.monotonic() - t0 < 1.0
    assert info.value.failed_msgs == [b"3", b"4"]
    server.producer.release(after=2)
    p.stop()
    assert values(server) == [b"1", b"2"]


def test_queue_full_waits_for_room_up_to_put_timeout(server):
    server.producer.hold = True
    p = client_shim.Producer(client(server), async_send=True, async_queue_maxsize=1,
                             async_queue_put_timeout=10)
    p.send_messages("t", 0, b"1")
    releaser = threading.Thread(target=server.producer.release, kwargs={"after": 1})
    releaser.start()
    p.send_messages("t", 0, b"2")            # blocks until the first one is acknowledged
    releaser.join()
    assert values(server)[0] == b"1"
    server.producer.release(after=2)
    p.stop()
    assert values(server) == [b"1", b"2"]
    short = client_shim.Producer(client(server), async_send=True, async_queue_maxsize=1,
                                 async_queue_put_timeout=0.2)
    server.producer.hold = True
    short.send_messages("t", 0, b"3")
    t0 = time.monotonic()
    with pytest.raises(errors.AsyncProducerQueueFull):
        short.send_messages("t", 0, b"4")
    assert time.monotonic() - t0 >= 0.2
    server.producer.release(after=3)
    short.stop(timeout=10)
    assert short._session.pending == {}


def test_daemon_unreachable_sync_fails_within_timeout_async_queues():
    endpoint = short_tmp_endpoint()
    c = client_shim.DaemonClient(endpoint, timeout=0.3)
    sync = client_shim.Producer(c)
    t0 = time.monotonic()
    with pytest.raises(errors.KafkadUnavailableError, match="did not take"):
        sync.send_messages("t", 0, b"x")
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(errors.KafkadUnavailableError):
        c.stats()
    a = client_shim.Producer(c, async_send=True, async_queue_maxsize=3)
    a.send_messages("t", 0, b"1", b"2", b"3")     # queued in the process
    with pytest.raises(errors.AsyncProducerQueueFull):
        a.send_messages("t", 0, b"4")
    # The daemon comes up: the queued messages go out and are acknowledged.
    with ServerThread(endpoint=endpoint) as st:
        a.stop(timeout=10)
        assert values(st) == [b"1", b"2", b"3"]
        assert a._session.pending == {}


def test_daemon_restart_mid_stream_loses_nothing_and_keeps_order():
    first = ServerThread().start()
    endpoint = first.endpoint
    first.producer.hold = True                    # taken, never delivered: lost with the daemon
    p = client_shim.Producer(client_shim.DaemonClient(endpoint), async_send=True)
    for i in range(200):
        p.send_messages("t", i % 3, b"m%d" % i)
    first.producer.wait_messages(200)
    first.stop()                                  # the daemon goes away with them
    for i in range(200, 300):                     # more while it is down
        p.send_messages("t", i % 3, b"m%d" % i)
    with ServerThread(endpoint=endpoint) as second:
        p.stop(timeout=10)
        got = values(second)
        assert sorted(got) == sorted(b"m%d" % i for i in range(300))
        for part in range(3):                     # per-partition order as sent
            seq = [v for _, pp, _, v in second.producer.messages() if pp == part]
            assert seq == [b"m%d" % i for i in range(300) if i % 3 == part]
        assert p._session.pending == {}


def test_restart_after_out_of_order_acknowledgements_loses_nothing():
    """Acknowledgements come per partition, so what a process still holds has holes
    (here seq 1 was delivered, 0 and 2 were not). A restarted daemon starts the session
    at its oldest entry and takes entries only in an unbroken run: the shim must not
    leave it waiting for seq 1, which it can never send again."""
    first = ServerThread().start()
    endpoint = first.endpoint
    first.producer.hold = True
    p = client_shim.Producer(client_shim.DaemonClient(endpoint), async_send=True, batch_send_every_n=1)
    for i in range(3):
        p.send_messages("t", 1 if i == 1 else 0, b"m%d" % i)
        first.producer.wait_messages(i + 1)       # one submission per entry
    done = threading.Event()

    def deliver_partition_1():
        first.producer.complete([sub for sub in first.producer.held if sub.partition == 1])
        done.set()

    first.loop.call_soon_threadsafe(deliver_partition_1)
    assert done.wait(5)
    with p._session.lock:
        assert p._session.space.wait_for(lambda: 1 not in p._session.pending, timeout=5)
    first.stop()
    p.send_messages("t", 0, b"m3")                # while the daemon is down
    with ServerThread(endpoint=endpoint) as second:
        p.stop(timeout=10)
        assert p._session.pending == {}
        assert [v for _, pp, _, v in second.producer.messages() if pp == 0] == [b"m0", b"m2", b"m3"]


def test_stopping_daemon_hands_messages_to_the_next_one():
    first = ServerThread().start()
    endpoint = first.endpoint
    first.call(first.server.stop_accepting)
    c = client_shim.DaemonClient(endpoint, timeout=0.5)
    p = client_shim.Producer(c, async_send=True)
    p.send_messages("t", 0, b"during-stop")
    # A sync send on the same link goes after the async one and is refused
    # too; once it has failed, the async refusal has arrived before it.
    with pytest.raises(errors.KafkadUnavailableError, match="STOPPING"):
        client_shim.Producer(c).send_messages("t", 0, b"sync-during-stop")
    assert c._link.stats["rejected_STOPPING"] >= 1
    assert first.producer.submissions == []
    first.stop()
    with ServerThread(endpoint=endpoint) as second:
        p.stop(timeout=10)
        assert values(second) == [b"during-stop"]


def test_messages_handed_back_at_stop_are_kept_bounded_and_replayed_in_order(caplog):
    """A daemon stopping without a spool hands back what it took but did not deliver
    (REJECTED(STOPPING) from the oldest such entry): the shim keeps those entries,
    still counted against async_queue_maxsize, and replays them in order to the next
    daemon."""
    first = ServerThread().start()
    endpoint = first.endpoint
    first.producer.hold = True
    p = client_shim.Producer(client_shim.DaemonClient(endpoint), async_send=True, batch_send_every_n=1,
                             async_queue_maxsize=6, async_queue_put_timeout=0)
    p.send_messages("t", 0, b"m0")
    first.producer.wait_messages(1)                   # m0 alone in the first submission
    for i in range(1, 6):
        p.send_messages("t", i % 2, b"m%d" % i)
    first.producer.wait_messages(6)
    done = threading.Event()

    def deliver_first_then_stop():
        first.producer.complete([first.producer.held.pop(0)])      # m0 is delivered
        first.server.stop_accepting()
        handed, rest = first.server.hand_back(first.producer.held)
        assert sum(handed.values()) == 5 and rest == []
        done.set()

    with caplog.at_level(logging.INFO, logger="client_shim"):
        first.loop.call_soon_threadsafe(deliver_first_then_stop)
        assert done.wait(5)
        link = p.client._link
        deadline = time.monotonic() + 5
        while not link.stats["rejected_STOPPING"] or 0 in p._session.pending:
            assert time.monotonic() < deadline, "no hand-back reached the shim"
            time.sleep(0.01)
    assert "handed back" in caplog.text
    first.stop()
    assert sorted(p._session.pending) == [1, 2, 3, 4, 5] and p._session.unacked == 5
    p.send_messages("t", 0, b"m6")                    # the last free place
    with pytest.raises(errors.AsyncProducerQueueFull):
        p.send_messages("t", 1, b"m7")                # still bounded: the kept ones count
    with ServerThread(endpoint=endpoint) as second:
        p.stop(timeout=10)
        assert p._session.pending == {}
        for part in (0, 1):
            got = [v for _, pp, _, v in second.producer.messages() if pp == part]
            assert got == [b"m%d" % i for i in range(1, 7) if i % 2 == part]


def test_simple_producer_round_robin_one_partition_per_call(server):
    p = client_shim.SimpleProducer(client(server), random_start=False)
    for i in range(5):
        p.send_messages("t", b"a%d" % i, b"b%d" % i)
    parts = [(s.partition, s.values) for s in server.producer.submissions]
    assert parts == [(i % 3, [b"a%d" % i, b"b%d" % i]) for i in range(5)]


def test_simple_producer_random_start(server):
    starts = set()
    for _ in range(30):
        p = client_shim.SimpleProducer(client(server), random_start=True)
        p.send_messages("t", b"x")
        starts.add(server.producer.submissions[-1].partition)
    assert len(starts) > 1


def test_keyed_producer_uses_partitioner_and_sends_key(server):
    from client_shim.partitioner import murmur2

    p = client_shim.KeyedProducer(client(server))
    for key in (b"alpha", b"beta", b"gamma", b"delta"):
        p.send_messages("t", key, b"v-" + key)
    for sub in server.producer.submissions:
        assert sub.partition == (murmur2(sub.keys[0]) & 0x7FFFFFFF) % 3
        assert sub.values == [b"v-" + sub.keys[0]]
    rr = client_shim.KeyedProducer(client(server), partitioner=client_shim.RoundRobinPartitioner)
    for _ in range(3):
        rr.send_messages("t", b"same", b"v")
    assert [s.partition for s in server.producer.submissions[-3:]] == [0, 1, 2]


def test_partition_lists_are_cached_and_refreshed_on_unknown_partition(server):
    c = client(server)
    p = client_shim.SimpleProducer(c, random_start=False)
    p.send_messages("t", b"x")
    assert c.partitions_for("t") == [0, 1, 2]
    server.producer.partitions = [0, 1, 2, 3, 4]
    assert c.partitions_for("t") == [0, 1, 2]              # cached
    server.producer.fail_with = 3
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        p.send_messages("t", b"y")
    server.producer.fail_with = 0
    assert c.partitions_for("t") == [0, 1, 2, 3, 4]        # asked again


def _wait_for(predicate, what, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_partition_changes_from_the_daemon_reach_round_robin_and_keyed_producers(server):
    from client_shim.partitioner import murmur2

    c = client(server)
    simple = client_shim.SimpleProducer(c, random_start=False)
    keyed = client_shim.KeyedProducer(c)
    for i in range(3):
        simple.send_messages("t", b"s%d" % i)
    keys = [b"k%d" % i for i in range(20)]
    for k in keys:
        keyed.send_messages("t", k, b"v")
    link = c._link
    server.producer.partitions = [0, 1, 2, 3, 4]
    server.call(server.server.on_partitions_changed, [("t", 0, [0, 1, 2, 3, 4])])
    _wait_for(lambda: link.partition_cache.get("t") == [0, 1, 2, 3, 4], "the new partition list")
    assert link.stats["partition_changes"] == 1
    before = len(server.producer.submissions)
    for i in range(5):
        simple.send_messages("t", b"n%d" % i)
    for k in keys:
        keyed.send_messages("t", k, b"v")
    subs = server.producer.submissions[before:]
    assert sorted(s.partition for s in subs[:5]) == [0, 1, 2, 3, 4]
    assert [s.partition for s in subs[5:]] == [(murmur2(k) & 0x7FFFFFFF) % 5 for k in keys]
    assert {s.partition for s in subs[5:]} & {3, 4}     # the new partitions are used
    server.call(server.server.on_partitions_changed, [("t", 3, [])])          # the topic is gone
    _wait_for(lambda: "t" not in link.partition_cache, "the list to be dropped")
    assert c.partitions_for("t") == [0, 1, 2, 3, 4]     # asked again at the next use


def test_partition_lists_are_kept_for_a_bounded_number_of_topics(server, monkeypatch):
    """A worker writing to ever new topics keeps at most MAX_CACHED_TOPICS lists (and as
    many round-robin cycles); the longest-cached goes first and is asked again when used.
    An unchanged answer keeps the list object, so a producer's cycle goes on."""
    from client_shim import link as link_mod

    monkeypatch.setattr(link_mod, "MAX_CACHED_TOPICS", 3)
    c = client(server)
    p = client_shim.SimpleProducer(c, random_start=False)
    for t in ("a", "b", "c", "d"):
        p.send_messages(t, b"x")
    link = c._link
    assert list(link.partition_cache) == ["b", "c", "d"]
    assert list(p._cycles) == ["b", "c", "d"]
    held = link.partition_cache["d"]
    assert c.partitions_for("d", refresh=True) is held        # same ids: same object
    p.send_messages("a", b"y")                                 # asked again, cached anew
    assert list(link.partition_cache) == ["c", "d", "a"]
    assert [s.topic for s in server.producer.submissions] == ["a", "b", "c", "d", "a"]


def test_a_reconnected_shim_refreshes_its_partition_lists_and_is_told_of_changes():
    """A restarted daemon knows no peer: the shim asks again for every cached topic on
    connect, which refreshes the list and makes the new daemon tell it of changes."""
    first = ServerThread().start()
    endpoint = first.endpoint
    c = client_shim.DaemonClient(endpoint)
    p = client_shim.SimpleProducer(c, random_start=False)
    p.send_messages("t", b"x")
    link = c._link
    assert link.partition_cache["t"] == [0, 1, 2]
    first.stop()
    with ServerThread(endpoint=endpoint, producer=FakeProducer(partitions=(0, 1, 2, 3))) as second:
        _wait_for(lambda: link.partition_cache.get("t") == [0, 1, 2, 3], "the refreshed list")
        assert second.call(second.server.stats)["watched_topics"] == 1
        second.call(second.server.on_partitions_changed, [("t", 0, [0, 1, 2, 3, 4, 5])])
        _wait_for(lambda: link.partition_cache.get("t") == [0, 1, 2, 3, 4, 5], "the changed list")
        p.stop(timeout=5)


def test_a_refresh_the_daemon_cannot_answer_keeps_the_cached_list():
    """A daemon restarted while the brokers are down answers the reconnect refresh with
    no partitions: the shim keeps its list, so sends still queue instead of waiting."""

    class _NoMetadata(FakeProducer):
        async def fetch_partitions(self, topic, timeout):
            return 7, []

    first = ServerThread().start()
    endpoint = first.endpoint
    c = client_shim.DaemonClient(endpoint)
    p = client_shim.SimpleProducer(c, async_send=True, random_start=False)
    p.send_messages("t", b"x")
    link = c._link
    first.stop()
    with ServerThread(endpoint=endpoint, producer=_NoMetadata(partitions=())) as second:
        _wait_for(lambda: link.stats["connects"] >= 2 and not link._refreshes, "the refresh's answer")
        assert link.partition_cache["t"] == [0, 1, 2]
        p.send_messages("t", b"y")                  # no METADATA round trip needed
        second.producer.wait_messages(1)
        p.stop(timeout=5)


def test_frames_of_an_unknown_kind_are_ignored_and_logged_once(caplog):
    endpoint = short_tmp_endpoint()
    daemon = _ScriptedDaemon(endpoint)
    try:
        c = client_shim.DaemonClient(endpoint, timeout=5)
        result = []
        t = threading.Thread(target=lambda: result.append(c.partitions_for("t")))
        with caplog.at_level(logging.WARNING, logger="client_shim"):
            t.start()
            from client_shim import schema

            peer, req = daemon.recv(schema.METADATA)
            for _ in range(3):
                daemon.send(peer, [127, "from a newer daemon"])
            daemon.send(peer, [schema.PARTITIONS, req[1], 0, [0, 1]])
            t.join(5)
        assert result == [[0, 1]]
        assert caplog.text.count("unknown kind 127") == 1
        # The logger's name says where a record comes from; the text does not repeat it
        # (a format with %(name)s printed "client_shim: client_shim: ...").
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("client_shim")] == []
    finally:
        daemon.close()


def test_one_producer_shared_by_threads(server):
    p = client_shim.Producer(client(server), async_send=True)

    def work(t):
        for i in range(400):
            p.send_messages("t", t % 3, b"%d:%d" % (t, i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.stop(timeout=10)
    got = values(server)
    assert len(got) == 3200
    for t in range(8):
        mine = [int(v.split(b":")[1]) for v in got if v.startswith(b"%d:" % t)]
        assert mine == list(range(400))


CHILD = textwrap.dedent("""
    import os, sys, client_shim
    endpoint, mode = sys.argv[1], sys.argv[2]
    sync = client_shim.Producer(endpoint)
    asy = client_shim.Producer(endpoint, async_send=True)
    sync.send_messages("t", 0, b"parent-sync")          # parent uses its socket before fork
    asy.send_messages("t", 1, b"parent-async")
    pids = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:
            r = sync.send_messages("t", 0, b"child-sync-%d" % n)
            assert r[0].error == 0, r
            asy.send_messages("t", 1, b"child-async-%d" % n)
            if mode == "stop":
                asy.stop()
            sys.exit(0)                     # "atexit": the exit hook stops the producer
        pids.append(pid)
    codes = [os.waitpid(p, 0)[1] for p in pids]
    asy.send_messages("t", 1, b"parent-after")
    print("codes", codes)
""")


@pytest.mark.parametrize("mode", ["stop", "atexit"])
def test_producers_created_before_fork_work_in_children(server, mode):
    out = subprocess.run([sys.executable, "-c", CHILD, server.endpoint, mode], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "codes [0, 0, 0]" in out.stdout, out.stderr
    got = values(server)
    expected = {b"parent-sync", b"parent-async", b"parent-after"} | \
        {b"child-sync-%d" % n for n in range(3)} | {b"child-async-%d" % n for n in range(3)}
    assert sorted(got) == sorted(expected)                   # each exactly once
    sessions = {s.session_id for s in server.producer.submissions}
    assert len(sessions) == 2 + 2 * 3                        # the children had their own sessions


def test_exit_without_stop_delivers_async_messages(server):
    code = ("import sys, client_shim\n"
            "p = client_shim.SimpleProducer(sys.argv[1], async_send=True, random_start=False)\n"
            "for i in range(500):\n    p.send_messages('t', b'exit-%d' % i)\n")
    out = subprocess.run([sys.executable, "-c", code, server.endpoint], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(values(server)) == sorted(b"exit-%d" % i for i in range(500))


def test_exit_right_after_dropping_a_producer_delivers_its_messages(server):
    """A short-lived script whose async producer is garbage-collected just before exit.

    The producer's session reaches the I/O thread through queued operations; the
    exit hook must find it even if the thread has not run them yet (it used to
    look only at the thread's session table, and the messages vanished unreported).
    """
    code = ("import sys, client_shim\n"
            "def main(n):\n"
            "    p = client_shim.Producer(sys.argv[1], async_send=True)\n"
            "    p.send_messages('t', 0, b'dropped-%d' % n)\n"
            "for n in range(3):\n    main(n)\n")
    for run in range(5):              # the race was lost nearly every time; try a few
        out = subprocess.run([sys.executable, "-c", code, server.endpoint], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert sorted(values(server)) == sorted([b"dropped-%d" % n for n in range(3)] * (run + 1)), \
            (run, out.stderr)


POOL_CHILD = textwrap.dedent("""
    import multiprocessing as mp, sys, client_shim
    endpoint = sys.argv[1]
    made_in_parent = client_shim.Producer(endpoint, async_send=True, batch_send_every_t=5)

    def process_target(n):                  # returns: multiprocessing then ends the child with os._exit
        made_in_parent.send_messages("t", 0, *[b"process-%d-%d" % (n, i) for i in range(50)])

    def pool_task(n):
        p = client_shim.Producer(endpoint, async_send=True, batch_send_every_t=5)
        p.send_messages("t", 1, b"pool-%d" % n)
        return n

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=process_target, args=(n,)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    pool = ctx.Pool(2, maxtasksperchild=1)           # each worker ends after one task
    print("tasks", sorted(pool.map(pool_task, range(4), chunksize=1)))
    pool.close()                                     # (not terminate(): that kills the workers)
    pool.join()
    print("codes", [p.exitcode for p in procs])
""")


def test_pool_processes_that_end_through_os_exit_deliver_their_messages(server):
    """multiprocessing (and billiard, celery's) end children with os._exit, skipping atexit."""
    out = subprocess.run([sys.executable, "-c", POOL_CHILD, server.endpoint], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "codes [0, 0, 0]" in out.stdout and "tasks [0, 1, 2, 3]" in out.stdout, \
        out.stderr
    expected = [b"process-%d-%d" % (n, i) for n in range(3) for i in range(50)] + [b"pool-%d" % n for n in range(4)]
    assert sorted(values(server)) == sorted(expected)


POOL_MODULE = textwrap.dedent("""
    import os, client_shim
    # Made while the child imports this module to unpickle its target: with forkserver
    # and spawn that is before multiprocessing's bootstrap clears the finalizers.
    at_import = client_shim.Producer(os.environ["KAFKAD_ENDPOINT"], async_send=True, batch_send_every_t=5)

    def target(n):
        at_import.send_messages("t", 0, *[b"%s-%d-%d" % (os.environ["METHOD"].encode(), n, i) for i in range(10)])
""")


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_pool_children_of_every_start_method_deliver(server, tmp_path, method):
    (tmp_path / "pool_module.py").write_text(POOL_MODULE)
    code = textwrap.dedent("""
        import multiprocessing as mp, sys
        if __name__ == "__main__":
            ctx = mp.get_context(sys.argv[1])
            if sys.argv[1] == "forkserver":
                ctx.set_forkserver_preload([])
            import pool_module
            procs = [ctx.Process(target=pool_module.target, args=(n,)) for n in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(60)
            print("codes", [p.exitcode for p in procs])
    """)
    env = dict(os.environ, KAFKAD_ENDPOINT=server.endpoint, METHOD=method,
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]))
    out = subprocess.run([sys.executable, "-c", code, method], capture_output=True, text=True, timeout=120,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0 and "codes [0, 0]" in out.stdout, out.stderr
    expected = [b"%s-%d-%d" % (method.encode(), n, i) for n in range(2) for i in range(10)]
    assert sorted(values(server)) == sorted(expected)


def test_spawned_processes_share_one_daemon(server):
    code = ("import sys, client_shim\n"
            "p = client_shim.Producer(sys.argv[1])\n"
            "offs = [p.send_messages('t', 0, b'%s-%d' % (sys.argv[2].encode(), i))[0].offset for i in range(20)]\n"
            "print(' '.join(map(str, offs)))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, server.endpoint, f"w{n}"], stdout=subprocess.PIPE,
                              text=True) for n in range(4)]
    offsets = []
    with reaped(procs):
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            offsets += [int(x) for x in out.split()]
    assert sorted(offsets) == list(range(80))                 # every offset handed out once
    assert len(values(server)) == 80


def test_stats_through_the_client(server):
    stats = client(server).stats()
    assert stats["answer"] == 42 and stats["ipc"]["sessions"] == 0
    info = client(server).ping()
    assert info["version"] == 1 and len(info["instance_id"]) == 32


def test_sync_producer_shared_by_threads(server):
    p = client_shim.Producer(client(server))
    offsets = []

    def work():
        for _ in range(25):
            offsets.append(p.send_messages("t", 0, b"x")[0].offset)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(offsets) == list(range(200))


def test_evicted_session_registers_again_and_replays():
    with ServerThread(max_sessions=1) as st:
        a = client_shim.Producer(client(st), async_send=True)
        a.send_messages("t", 0, b"a-1")
        assert a._session.wait_drained(10) == []
        b = client_shim.Producer(client(st))
        b.send_messages("t", 1, b"b-1")                   # a was idle: evicted to make room
        assert st.server.stats()["sessions_evicted"] == 1
        a.send_messages("t", 0, b"a-2")                   # UNKNOWN_SESSION -> register, replay
        assert a._session.wait_drained(10) == []
        assert sorted(values(st)) == [b"a-1", b"a-2", b"b-1"]


def test_producers_dropped_without_stop_leave_no_sessions_behind(server):
    import gc

    c = client(server)
    for i in range(20):                               # legacy code: one producer per request
        client_shim.Producer(c).send_messages("t", 0, b"req-%d" % i)
    server.producer.hold = True
    a = client_shim.Producer(c, async_send=True)
    a.send_messages("t", 1, b"still-pending")
    link = a._session.link
    session = a._session
    del a
    gc.collect()
    server.producer.release(after=21)                 # the dropped producer's message is delivered
    assert session.wait_drained(10) == []
    swept = threading.Event()
    link.call(lambda: (link._end_orphans(), swept.set()))   # run the sweep on the I/O thread
    assert swept.wait(5)
    assert link.sessions == {}
    c.ping()                          # answered after the UNREGISTERs queued before it
    assert server.server.stats()["sessions"] == 0
    assert sorted(values(server)) == sorted([b"req-%d" % i for i in range(20)] + [b"still-pending"])


def test_refused_replay_is_retried_until_taken(server):
    """The daemon answers REJECTED(QUEUE_FULL) once per gap; a refused replay gets no
    second answer. The shim must still retry (with back-off) until the messages are taken."""
    server.producer.refuse = 3                        # the first send and two replays are refused
    p = client_shim.Producer(client(server), async_send=True, batch_send_every_n=1)
    for i in range(5):
        p.send_messages("t", i % 2, b"r%d" % i)
    assert p._session.wait_drained(10) == []
    assert sorted(values(server)) == [b"r%d" % i for i in range(5)]
    for part in range(2):
        assert [v for _, pp, _, v in server.producer.messages() if pp == part] == \
            [b"r%d" % i for i in range(5) if i % 2 == part]
    assert p._session.link.stats["rejected_QUEUE_FULL"] >= 1
    p.stop()


class _RefusesPartition1Once(FakeProducer):
    """Refuses the first submission for partition 1 (QueueFull), holds partition 0's,
    delivers the rest at once."""

    def __init__(self):
        super().__init__()
        self.refused = False

    def submit(self, sub, divisible=False):
        if sub.partition == 1 and not self.refused:
            self.refused = True
            raise QueueFull("fake queue full")
        with self._arrived:
            self.submissions.append(sub)
            self._arrived.notify_all()
        if sub.partition == 0:
            self.held.append(sub)
        else:
            self.loop.call_soon(self.complete, [sub])



class _ScriptedDaemon:
    """A raw ROUTER socket standing in for kafkad, for tests that script its answers."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(endpoint)

    def recv(self, kind: int):
        """The next (peer, frame) of this kind from the shim; frames of other kinds are skipped."""
        import msgpack

        while True:
            assert self.router.poll(5000), f"the shim sent no frame of kind {kind}"
            peer, frame = self.router.recv_multipart()
            msg = msgpack.unpackb(frame)
            if msg[0] == kind:
                return peer, msg

    def send(self, peer: bytes, msg: list) -> None:
        from client_shim import schema

        self.router.send_multipart([peer, schema.encode(msg)])

    def close(self) -> None:
        self.router.close(0)
        self.ctx.term()

def test_refusal_with_holes_on_a_running_daemon_sends_nothing_twice():
    """One frame carries seq 0 (partition 0, held), 1 (partition 1, refused) and 2
    (partition 2, delivered). The running daemon keeps the session (next_seq 1, seq 2
    taken above it), and the shim has settled seq 2 when it registers again. That hole
    is not a restart: the shim must replay from seq 1 in the same session, not continue
    as a new one (which would send seq 0, still in flight, a second time)."""
    endpoint = short_tmp_endpoint()
    p = client_shim.Producer(client_shim.DaemonClient(endpoint), async_send=True, batch_send_every_n=1)
    for part in (0, 1, 2):                        # queued while no daemon runs: one frame later
        p.send_messages("t", part, b"m%d" % part)
    with ServerThread(endpoint=endpoint, producer=_RefusesPartition1Once()) as st:
        st.producer.wait_messages(3)              # m0 held, m2 delivered, m1 taken on the replay
        st.producer.release()
        p.stop(timeout=10)
        assert p._session.pending == {}
        link = p.client._link
        assert st.producer.refused and link.stats["rejected_QUEUE_FULL"] == 1
        assert link.stats["sessions_renumbered"] == 0
        assert sorted(values(st)) == [b"m0", b"m1", b"m2"]


def test_late_acknowledgement_from_the_old_daemon_does_not_strand_messages():
    """A restarted daemon's new session expects seqs this process has meanwhile settled
    (here: the old daemon's last ACK is read after the REGISTER left). The shim must not
    leave the daemon waiting for entries it can never send again.

    The daemon here is scripted (the exact frame order of that race), with the real
    daemon's rules: a new session starts at the REGISTER's first_seq, an existing one
    keeps its next_seq, and a gap is reported once and then passed over in silence.
    """
    import msgpack

    from client_shim import schema

    endpoint = short_tmp_endpoint()
    daemon = _ScriptedDaemon(endpoint)
    router, recv, send = daemon.router, daemon.recv, daemon.send

    try:
        p = client_shim.Producer(endpoint, async_send=True, batch_send_every_n=1)
        for i in range(3):
            p.send_messages("t", 0, b"m%d" % i)
        peer, reg = recv(schema.REGISTER)
        sid = reg[3]
        send(peer, [schema.REGISTERED, reg[2], sid, 0, b"old-daemon"])
        seen = set()
        while seen != {0, 1, 2}:
            _, frame = recv(schema.SEND)
            seen.update(e[0] for e in frame[2])
        # The daemon restarts: it does not know the session ...
        send(peer, [schema.ERROR, None, schema.E_UNKNOWN_SESSION, "session not registered", sid])
        peer, reg = recv(schema.REGISTER)
        assert reg[4] == 0
        # ... and the old daemon's last ACK is read after this REGISTER left.
        send(peer, [schema.ACK, sid, [0, 1]])
        send(peer, [schema.REGISTERED, reg[2], sid, 0, b"new-daemon"])
        expected = {sid: 0}                       # the daemon's next_seq per session it knows
        gap_reported = set()
        delivered = []
        deadline = time.monotonic() + 5
        while p._session.pending and time.monotonic() < deadline:
            if not router.poll(100):
                continue
            peer, frame = router.recv_multipart()
            msg = msgpack.unpackb(frame)
            if msg[0] == schema.UNREGISTER:
                expected.pop(msg[2], None)
                send(peer, [schema.UNREGISTERED, msg[1], 0])
            elif msg[0] == schema.REGISTER:
                s_id = msg[3]
                expected.setdefault(s_id, msg[4])
                gap_reported.discard(s_id)
                send(peer, [schema.REGISTERED, msg[2], s_id, expected[s_id], b"new-daemon"])
            elif msg[0] == schema.SEND:
                s_id = msg[1]
                if s_id not in expected:
                    send(peer, [schema.ERROR, None, schema.E_UNKNOWN_SESSION, "unknown", s_id])
                    continue
                for first, *_rest, vals in msg[2]:
                    if first == expected[s_id]:
                        delivered.extend(vals)
                        expected[s_id] += len(vals)
                        send(peer, [schema.ACK, s_id, [first]])
                    elif first > expected[s_id]:
                        if s_id not in gap_reported:
                            gap_reported.add(s_id)
                            send(peer, [schema.REJECTED, s_id, expected[s_id], schema.E_OUT_OF_ORDER, "gap"])
                        break
        assert p._session.pending == {}
        assert delivered == [b"m2"]
        p.stop(timeout=1)
    finally:
        daemon.close()


def test_daemon_that_forgot_the_session_under_the_same_instance_gets_a_new_one():
    """A daemon can forget a session without restarting (it evicted it while this
    process was disconnected) and make it anew at the next REGISTER, under the same
    instance id. Its REJECTED(out of order) then names an entry this process settled
    long ago; no daemon that kept the session waits for such an entry, so the shim
    continues as a new session numbered without holes instead of replaying forever.

    The daemon is scripted (that sequence needs a disconnect at the right moment).
    """

    from client_shim import schema

    endpoint = short_tmp_endpoint()
    daemon = _ScriptedDaemon(endpoint)
    recv, send = daemon.recv, daemon.send

    try:
        p = client_shim.Producer(endpoint, async_send=True, batch_send_every_n=1)
        for part in (0, 1, 2):
            p.send_messages("t", part, b"m%d" % part)
        peer, reg = recv(schema.REGISTER)
        sid = reg[3]
        send(peer, [schema.REGISTERED, reg[2], sid, 0, b"daemon"])
        seen = set()
        while seen != {0, 1, 2}:
            _, frame = recv(schema.SEND)
            seen.update(e[0] for e in frame[2])
        send(peer, [schema.ACK, sid, [1]])
        with p._session.lock:
            assert p._session.space.wait_for(lambda: 1 not in p._session.pending, timeout=5)
        # The session made anew from first_seq 0 took seq 0 and waits for seq 1.
        send(peer, [schema.REJECTED, sid, 1, schema.E_OUT_OF_ORDER, "expected seq 1, got 2"])
        peer, reg = recv(schema.REGISTER)
        assert reg[3] == sid
        send(peer, [schema.REGISTERED, reg[2], sid, 1, b"daemon"])
        peer, reg = recv(schema.REGISTER)
        new_sid = reg[3]
        assert new_sid != sid and reg[4] == 0
        send(peer, [schema.REGISTERED, reg[2], new_sid, 0, b"daemon"])
        _, frame = recv(schema.SEND)
        assert frame[1] == new_sid
        assert [(e[0], e[5]) for e in frame[2]] == [(0, [b"m0"]), (1, [b"m2"])]
        send(peer, [schema.ACK, new_sid, [0, 1]])
        p.stop(timeout=5)
        assert p._session.pending == {}
        assert p.client._link.stats["sessions_renumbered"] == 1
    finally:
        daemon.close()


def test_sync_sends_are_answered_in_the_calling_thread(server):
    """Once the session is registered, a sync send goes out on the calling thread's own
    socket (no hand-off to the I/O thread); a refusal falls back to the I/O thread's way."""
    p = client_shim.Producer(client(server))
    link = None
    for i in range(20):
        assert p.send_messages("t", 0, b"s%d" % i) == [client_shim.ProduceResponsePayload("t", 0, 0, i)]
        link = p._session.link
    assert link.stats["direct_requests"] >= 10       # the first ones wait for the socket to connect
    results = {}

    def work(n):
        results[n] = [p.send_messages("t", 1, b"t%d-%d" % (n, i))[0].offset for i in range(10)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o for offs in results.values() for o in offs) == list(range(40))
    assert all(offs == sorted(offs) for offs in results.values())
    server.producer.refuse = 1                      # ERROR(QUEUE_FULL): not taken, asked again
    before = link.stats["direct_requests"]
    assert p.send_messages("t", 0, b"refused-once") == [client_shim.ProduceResponsePayload("t", 0, 0, 20)]
    assert link.stats["direct_requests"] == before
    assert values(server).count(b"refused-once") == 1


def test_a_direct_sync_send_whose_daemon_goes_away_is_reported_unavailable():
    """A sync send taken on the calling thread's own socket, then the daemon stops
    before it answers: the caller learns within a wait step, not at the 300 s backstop."""
    st = ServerThread().start()
    try:
        p = client_shim.SimpleProducer(client(st), random_start=False)
        outcome, warmed = [], []

        def work():
            link = p._get_session().link
            before = link.stats["direct_requests"]
            for i in range(20):          # until this thread's own socket has connected
                p.send_messages("t", b"warm-%d" % i)
            warmed.append(link.stats["direct_requests"] - before)
            st.producer.hold = True
            outcome.append(_raised(p.send_messages, "t", b"in-flight"))

        t = threading.Thread(target=work, daemon=True)
        t.start()
        st.producer.wait_messages(21)
        assert warmed[0] > 0
        t0 = time.monotonic()
        st.stop()
        t.join(10)
        assert not t.is_alive() and time.monotonic() - t0 < 5
        assert isinstance(outcome[0], errors.KafkadUnavailableError), outcome
        assert "was lost before it answered" in str(outcome[0])
    finally:
        st.stop()


def _raised(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def test_stop_sends_no_flush_to_a_daemon_that_did_not_announce_it(server, monkeypatch):
    """stop() asks for a FLUSH only from a daemon that announced it in REGISTERED:
    this daemon (an older one, without the feature) does not, so stop() sends it nothing unknown."""
    import kafkad.ipc.server as ipc_server
    monkeypatch.setattr(ipc_server, "FEATURES", [])
    p = client_shim.Producer(client(server), async_send=True, batch_send_every_n=2, batch_send_every_t=300)
    p.send_messages("t", 0, b"a", b"b")
    link = p._session.link
    p.stop(timeout=10)
    assert p._session.pending == {} and values(server) == [b"a", b"b"]
    assert link.stats["flushes_sent"] == 0
    assert server.server.stats()["bad_frames_total"] == 0


def test_stop_sends_flush_after_the_sessions_entries_to_a_daemon_that_announced_it():
    import msgpack

    from client_shim import schema

    endpoint = short_tmp_endpoint()
    daemon = _ScriptedDaemon(endpoint)
    router = daemon.router
    try:
        p = client_shim.Producer(endpoint, async_send=True, batch_send_every_n=100, batch_send_every_t=300)
        p.send_messages("t", 0, b"held")
        frames = []
        stopper = threading.Thread(target=p.stop, kwargs={"timeout": 1})
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not any(f[0] == schema.FLUSH for f in frames):
            if not router.poll(100):
                continue
            peer, raw = router.recv_multipart()
            msg = msgpack.unpackb(raw)
            frames.append(msg)
            if msg[0] == schema.REGISTER:
                router.send_multipart([peer, schema.encode([schema.REGISTERED, msg[2], msg[3], 0, b"d", ["flush"]])])
            elif msg[0] == schema.SEND and not stopper.is_alive():
                stopper.start()
        kinds = [f[0] for f in frames]
        assert schema.FLUSH in kinds and kinds.index(schema.FLUSH) > kinds.index(schema.SEND)
        router.send_multipart([peer, schema.encode([schema.ACK, frames[-1][1], [0]])])
        stopper.join(10)
    finally:
        daemon.close()


def test_a_threads_sync_socket_never_drops_replies_for_a_full_receive_queue(server):
    """A thread's own sync socket takes every reply, as the I/O thread's socket does:
    a bounded receive queue, full when the daemon closes, loses answers already given."""
    import zmq
    p = client_shim.Producer(client(server))
    assert p.send_messages("t", 0, b"x")[0].offset == 0
    direct = p._session.link._direct_socket()
    assert direct is not None and direct.sock.getsockopt(zmq.RCVHWM) == 0
    assert p.send_messages("t", 0, b"y")[0].offset == 1
    p.stop(timeout=10)


def test_an_entry_refused_as_too_large_fails_once_instead_of_being_replayed_forever(caplog):
    """REJECTED(TOO_LARGE) names an entry the daemon can never take: the shim logs it
    as a failure (MessageSizeTooLargeError) and replays only what follows it, under a
    new session (the daemon still waits for the failed entry's seq).

    The daemon is scripted: a real one refuses this way only when its own bound is wrong.
    """

    from client_shim import schema

    endpoint = short_tmp_endpoint()
    daemon = _ScriptedDaemon(endpoint)
    recv, send = daemon.recv, daemon.send

    try:
        p = client_shim.Producer(endpoint, async_send=True, batch_send_every_n=1)
        p.send_messages("t", 0, b"big")
        peer, reg = recv(schema.REGISTER)
        sid = reg[3]
        send(peer, [schema.REGISTERED, reg[2], sid, 0, b"daemon"])
        _, frame = recv(schema.SEND)
        assert [e[0] for e in frame[2]] == [0]
        p.send_messages("t", 0, b"small")
        _, frame = recv(schema.SEND)
        assert [e[0] for e in frame[2]] == [1]
        with caplog.at_level("ERROR", logger="client_shim"):
            send(peer, [schema.REJECTED, sid, 0, schema.E_TOO_LARGE, "over the spool entry cap"])
            peer, reg = recv(schema.REGISTER)
            send(peer, [schema.REGISTERED, reg[2], reg[3], 0, b"daemon"])
            peer, reg = recv(schema.REGISTER)      # the hole at seq 0: a new session
            new_sid = reg[3]
            assert new_sid != sid and reg[4] == 0
            send(peer, [schema.REGISTERED, reg[2], new_sid, 0, b"daemon"])
            _, frame = recv(schema.SEND)
        assert frame[1] == new_sid and [(e[0], e[5]) for e in frame[2]] == [(0, [b"small"])]
        send(peer, [schema.ACK, new_sid, [0]])
        p.stop(timeout=5)
        assert p._session.pending == {} and p._session.failed_messages == 1
        failures = [r.getMessage() for r in caplog.records if "could not deliver" in r.getMessage()]
        assert len(failures) == 1 and "MessageSizeTooLargeError" in failures[0] and "b'big'" in failures[0]
        assert p.client._link.stats["too_large_failures"] == 1
    finally:
        daemon.close()



def _seqs_of(msg) -> list[int]:
    """The first seqs of a SEND_GROUPS frame's entries, sorted."""
    return sorted(f for g in msg[2] for f in g[3])


def _quiet_for(daemon, seconds: float) -> bool:
    """True if the shim sends nothing within `seconds` (to show a frame is *not* sent)."""
    return not daemon.router.poll(int(seconds * 1000))


@contextlib.contextmanager
def _sent_to_scripted_daemon(n: int, features=("send_groups", "room")):
    """An async producer that sent m0..m<n-1> to t[0] through a scripted daemon announcing
    `features`: yields (daemon, producer, peer, session id, its REGISTER) once all arrived."""
    from client_shim import schema

    endpoint = short_tmp_endpoint()
    daemon = _ScriptedDaemon(endpoint)
    try:
        p = client_shim.Producer(endpoint, async_send=True, batch_send_every_n=1)
        for i in range(n):
            p.send_messages("t", 0, b"m%d" % i)
        peer, reg = daemon.recv(schema.REGISTER)
        sid = reg[3]
        daemon.send(peer, [schema.REGISTERED, reg[2], sid, 0, b"d", list(features)])
        seen: set = set()
        while seen != set(range(n)):
            seen.update(_seqs_of(daemon.recv(schema.SEND_GROUPS)[1]))
        yield daemon, p, peer, sid, reg
    finally:
        daemon.close()


def test_after_queue_full_the_shim_waits_for_room_and_replays_from_next_seq_once(monkeypatch):
    """With a daemon announcing "room", a QUEUE_FULL refusal holds the session until
    ROOM (the one-second fallback is made long here, so only ROOM can release it). The
    refusals of frames sent before the next REGISTER (stale by the time they arrive)
    do not bring another REGISTER, and the replay starts at the daemon's next_seq:
    nothing below it is sent again."""
    import msgpack

    from client_shim import link as linkmod
    from client_shim import schema

    monkeypatch.setattr(linkmod, "_ROOM_WAIT_MAX_S", 60.0)
    with _sent_to_scripted_daemon(4) as (daemon, p, peer, sid, reg):
        recv, send = daemon.recv, daemon.send
        assert reg[5]["room"] is True
        send(peer, [schema.REJECTED, sid, 1, schema.E_QUEUE_FULL, "queue full"])
        assert _quiet_for(daemon, 0.3)                  # no REGISTER, no replay: waiting for ROOM
        send(peer, [schema.ROOM, sid])
        peer, reg = recv(schema.REGISTER)
        # the daemon took seq 1 and 2 meanwhile (beyond a refusal, say); a frame sent
        # before this REGISTER is answered as out of order only now
        send(peer, [schema.REJECTED, sid, 1, schema.E_OUT_OF_ORDER, "expected seq 1"])
        send(peer, [schema.REGISTERED, reg[2], sid, 3, b"d", ["send_groups", "room"]])
        assert daemon.router.poll(5000)
        peer, frame = daemon.router.recv_multipart()    # the very next frame: no second REGISTER
        msg = msgpack.unpackb(frame)
        assert msg[0] == schema.SEND_GROUPS and _seqs_of(msg) == [3]   # from next_seq, not from 1
        assert _quiet_for(daemon, 0.3)                  # and no second REGISTER or replay
        link = p.client._link
        assert (link.stats["room"], link.stats["stale_refusals"]) == (1, 1)
        send(peer, [schema.ACK, sid, [0, 1, 2, 3]])
        assert p._session.wait_drained(5) == []
        p.stop(timeout=1)


def test_a_registered_answer_to_a_withdrawn_register_does_not_end_the_wait_for_room(monkeypatch):
    """A QUEUE_FULL refusal that arrives while a REGISTER is on its way withdraws it:
    its REGISTERED must not restart sending before ROOM."""
    from client_shim import link as linkmod
    from client_shim import schema

    monkeypatch.setattr(linkmod, "_ROOM_WAIT_MAX_S", 60.0)
    with _sent_to_scripted_daemon(2) as (daemon, p, peer, sid, _):
        recv, send = daemon.recv, daemon.send
        send(peer, [schema.REJECTED, sid, 0, schema.E_OUT_OF_ORDER, "expected seq 0"])
        peer, reg = recv(schema.REGISTER)               # a replay after a gap: at once
        send(peer, [schema.REJECTED, sid, 0, schema.E_QUEUE_FULL, "queue full"])
        send(peer, [schema.REGISTERED, reg[2], sid, 0, b"d", ["send_groups", "room"]])
        assert _quiet_for(daemon, 0.3)                  # still waiting for ROOM
        assert p.client._link.stats["superseded_registered"] == 1
        send(peer, [schema.ROOM, sid])
        peer, reg = recv(schema.REGISTER)
        send(peer, [schema.REGISTERED, reg[2], sid, 0, b"d", ["send_groups", "room"]])
        assert _seqs_of(recv(schema.SEND_GROUPS)[1]) == [0, 1]
        send(peer, [schema.ACK, sid, [0, 1]])
        assert p._session.wait_drained(5) == []
        p.stop(timeout=1)


def test_without_room_from_the_daemon_a_queue_full_refusal_backs_off_on_a_timer(monkeypatch):
    """A daemon that does not announce "room" never sends it: the shim retries after its
    back-off (10 ms at first), as before, not after waiting for ROOM (made a minute
    here, so a wrong wait fails the test)."""
    from client_shim import link as linkmod
    from client_shim import schema

    monkeypatch.setattr(linkmod, "_ROOM_WAIT_MAX_S", 60.0)
    with _sent_to_scripted_daemon(1, features=("send_groups",)) as (daemon, p, peer, sid, _):
        recv, send = daemon.recv, daemon.send
        send(peer, [schema.REJECTED, sid, 0, schema.E_QUEUE_FULL, "queue full"])
        peer, reg = recv(schema.REGISTER)
        send(peer, [schema.REGISTERED, reg[2], sid, 0, b"d", ["send_groups"]])
        assert _seqs_of(recv(schema.SEND_GROUPS)[1]) == [0]
        send(peer, [schema.ACK, sid, [0]])
        assert p._session.wait_drained(5) == []
        p.stop(timeout=1)


def test_a_refusal_withdraws_the_sessions_frames_not_yet_on_the_socket():
    """Frames of a refused session that still wait in the link's outbox would only be
    refused as past the gap: they are dropped, and their entries (still pending) go
    with the replay after the next REGISTERED. Requests in the outbox stay."""
    import msgpack

    from client_shim import schema
    from client_shim.link import _groups_frame

    with _sent_to_scripted_daemon(2) as (daemon, p, peer, sid, _):
        link, s = p.client._link, p._session
        waiting = collections.deque([(5, "t", 0, 0, None, b"late")])    # not a pending entry

        def refuse_with_frames_waiting():
            link._queue(_groups_frame(sid, collections.deque(waiting))[0], None, s)
            link._queue(_groups_frame(sid, collections.deque(waiting))[0], None, s)
            link._h_rejected([schema.REJECTED, sid, 0, schema.E_OUT_OF_ORDER, "expected seq 0"])

        link.call(refuse_with_frames_waiting)
        assert daemon.router.poll(5000)
        peer, frame = daemon.router.recv_multipart()
        assert msgpack.unpackb(frame)[0] == schema.REGISTER     # not the two waiting frames
        reg = msgpack.unpackb(frame)
        assert link.stats["frames_withdrawn"] == 2
        daemon.send(peer, [schema.REGISTERED, reg[2], sid, 0, b"d", ["send_groups", "room"]])
        assert _seqs_of(daemon.recv(schema.SEND_GROUPS)[1]) == [0, 1]
        daemon.send(peer, [schema.ACK, sid, [0, 1]])
        assert p._session.wait_drained(5) == []
        p.stop(timeout=1)


def _thread_cpu_ticks(native_id: int) -> int:
    fields = open(f"/proc/self/task/{native_id}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_a_session_paused_by_a_stopping_daemon_leaves_the_io_thread_idle():
    """After REJECTED(STOPPING) the session waits for the next daemon. Its replay hold
    lay in the past, and every poll of the I/O thread returned at once: a whole core
    per worker process for as long as the daemon was stopping or gone."""
    from client_shim import schema

    with _sent_to_scripted_daemon(1) as (daemon, p, peer, sid, _):
        link = p.client._link
        daemon.send(peer, [schema.REJECTED, sid, 0, schema.E_STOPPING, "kafkad is stopping"])
        deadline = time.monotonic() + 5
        while not p._session.paused and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p._session.paused
        for gone in (False, True):                      # the daemon still there, then gone
            if gone:
                daemon.close()
                time.sleep(0.2)
            before = _thread_cpu_ticks(link._thread.native_id)
            time.sleep(1.0)
            spent = _thread_cpu_ticks(link._thread.native_id) - before
            assert spent < os.sysconf("SC_CLK_TCK") // 5, f"I/O thread busy {spent} ticks in 1 s"
        p.stop(timeout=0.1)


def test_a_clean_async_stop_sends_nothing_after_its_unregister(server, caplog):
    """stop() asks for a FLUSH, then ends the session with UNREGISTER. When the I/O thread
    took both in one round, it sent the UNREGISTER first: the daemon answered the FLUSH
    with ERROR(UNKNOWN_SESSION), logged as a warning on every clean stop."""
    p = client_shim.Producer(client(server), async_send=True, batch_send_every_n=1)
    p.send_messages("t", 0, b"x")
    link = p._session.link
    _wait_for(lambda: not p._session.pending, "the acknowledgement")
    gate = threading.Event()
    link.call(gate.wait)                 # the I/O thread waits here: stop()'s work arrives in one round
    with caplog.at_level(logging.WARNING, logger="client_shim"):
        stopper = threading.Thread(target=p.stop)
        stopper.start()
        _wait_for(lambda: link.incoming, "stop()'s UNREGISTER")
        gate.set()
        stopper.join(10)
        time.sleep(0.3)                  # room for a late ERROR from the daemon
    assert not stopper.is_alive()
    assert [r.getMessage() for r in caplog.records] == []
    assert server.server.stats()["bad_frames"].get("unknown_session", 0) == 0


def test_an_endpoint_zeromq_refuses_fails_requests_at_once_without_a_traceback(monkeypatch):
    """Should ZeroMQ still refuse an endpoint the constructor took (another libzmq, a
    socket limit), the I/O thread reports it to every caller as KafkadUnavailableError
    with the reason, instead of dying with a traceback while callers wait out their timeout."""
    from client_shim import link as shim_link
    from client_shim import schema

    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    lk = shim_link._Link("ipc:///" + "a" * 120)            # past the check: too long for ZeroMQ
    try:
        for _ in range(2):                                   # the first caller, and one after the thread ended
            t0 = time.monotonic()
            with pytest.raises(errors.KafkadUnavailableError, match="too long"):
                lk.request(lambda rid: schema.encode([schema.STATS, rid]), None, 3.0)
            assert time.monotonic() - t0 < 1.0
        assert died == []
    finally:
        closer = threading.Thread(target=lk.shutdown, daemon=True)   # its context ends too
        closer.start()
        closer.join(5)
    assert not closer.is_alive()


def test_stop_of_an_async_producer_whose_link_could_not_connect_reports_at_once(caplog):
    c = client_shim.DaemonClient()
    c.endpoint = "ipc:///" + "c" * 120                      # past the check, as above
    p = client_shim.Producer(c, async_send=True, async_stop_timeout=30)
    assert p.send_messages("t", 0, b"queued") == []
    _wait_for(lambda: p._session.link.broken is not None, "the I/O thread to meet the refusal")
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        t0 = time.monotonic()
        p.stop()
        assert time.monotonic() - t0 < 1.0
    assert "b'queued'" in caplog.text and "too long" in caplog.text


def test_a_link_zeromq_refused_for_a_while_connects_once_it_can(monkeypatch, tmp_path):
    """A refusal that passes (no file descriptors left: EMFILE) must not leave the
    process unable to reach the daemon until it exits, nor keep the requests it
    refused: the I/O thread tries again, and requests work once it connects."""
    from client_shim import link as shim_link
    from client_shim import schema

    refusals = [3]
    real_open = shim_link._Link._open

    def flaky_open(self):
        if refusals[0] > 0:
            refusals[0] -= 1
            raise zmq.ZMQError(errno.EMFILE)
        return real_open(self)

    monkeypatch.setattr(shim_link._Link, "_open", flaky_open)
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    with ServerThread() as st:
        lk = shim_link._Link(st.endpoint)
        try:
            with pytest.raises(errors.KafkadUnavailableError, match="Too many open files"):
                lk.request(lambda rid: schema.encode([schema.STATS, rid]), None, 3.0)
            for _ in range(20):         # refused at once while broken, and not kept
                try:
                    lk.request(lambda rid: schema.encode([schema.STATS, rid]), None, 3.0)
                except errors.KafkadUnavailableError:
                    pass
            assert len(lk.incoming) <= 1
            _wait_for(lambda: lk.broken is None and lk.connected, "the link to connect after the refusals")
            reply = lk.request(lambda rid: schema.encode([schema.STATS, rid]), None, 5.0)
            assert reply[0] == schema.STATS_REPLY
            assert refusals == [0] and died == []
        finally:
            lk.shutdown()


def test_a_stopped_sessions_unsent_entries_do_not_keep_the_io_thread_busy(monkeypatch):
    """A session closed by stop(timeout=0) keeps its unsent entries until its
    UNREGISTER is answered; they are never sent, so they must not count as work:
    the I/O thread would go round without sleeping until then."""
    from client_shim import link as shim_link

    spins = []
    has_unsent = shim_link._Link._has_unsent

    def counting(self):
        busy = has_unsent(self)
        if busy and any(s.closed for s in self.sessions.values()):
            spins.append(1)
        return busy

    monkeypatch.setattr(shim_link._Link, "_has_unsent", counting)
    with ServerThread() as st:
        p = client_shim.Producer(st.endpoint, async_send=True, batch_send_every_n=10**6,
                                 batch_send_every_t=60)
        p.send_messages("t", 0, b"warm")
        _wait_for(lambda: p._session.registered, "the session to register")
        p._session.link.call(lambda: time.sleep(0.2))   # hold the I/O thread: entries stay unsent
        for _ in range(200):
            p.send_messages("t", 0, b"x")
        # The daemon answers the UNREGISTER late.
        threading.Thread(target=st.call, args=(lambda: time.sleep(0.5),)).start()
        p.stop(timeout=0)
    assert spins == []


def test_settings_the_daemon_refuses_fail_calls_at_once_and_log_once(server, caplog):
    """A daemon that refuses a session's settings (an older one than the shim, say)
    will refuse them every time: a sync call used to wait out the 300 s result
    timeout while the refusal was logged about ten times a second."""
    p = client_shim.Producer(client(server))
    good = p._settings
    p._settings = lambda: dict(good(), codec=99)                 # not a codec this daemon has
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        with pytest.raises(errors.KafkaProtocolError, match="refused the settings.*codec"):
            p.send_messages("t", 0, b"x")
        assert time.monotonic() - started < 10
        a = client_shim.Producer(client(server), async_send=True)
        a._settings = lambda: dict(good(), codec=99, async_send=True)
        a.send_messages("t", 0, b"queued")                         # async: kept
        time.sleep(2.5)
        assert len(a._session.pending) == 1
        refusals = [r for r in caplog.records if "refused to register" in r.getMessage()]
        assert len(refusals) == 2, [r.getMessage() for r in refusals]     # one per session
        # Not repeated until a reconnect: each refusal uses up one of the daemon's
        # error replies to this process, after which it stops answering them.
        assert server.server.stats()["bad_frames"]["invalid"] == 2
        started = time.monotonic()
        with pytest.raises(errors.KafkaProtocolError, match="refused the settings"):
            p.send_messages("t", 0, b"y")                            # a later call: at once too
        assert time.monotonic() - started < 2
        a.stop(0)                                                      # reports it (not at exit)
    assert "could not deliver 1 message(s)" in caplog.text
    assert values(server) == []

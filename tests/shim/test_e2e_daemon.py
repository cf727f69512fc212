"""End to end: the shim -> a real `kafkad run` process -> Tansu, read back with confluent-kafka.

One daemon serves the module (fresh topics per test); the restart tests run
their own. Every check reads what really landed in the broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

import client_shim
from client_shim import errors
from client_shim import link as shim_link
from client_shim.partitioner import murmur2
from tests.support.daemon import KafkadProcess
from tests.support.procs import reaped
from tests.support.readback import read_all_confluent

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def daemon(tansu):
    with KafkadProcess(tansu.bootstrap, request_timeout_ms=3000, drain_timeout_s=5) as d:
        d.start()
        yield d


def readback(tansu, topic, expected, partitions=3):
    got = read_all_confluent(tansu.bootstrap, topic, partitions, expected)
    return {p: recs for p, recs in got.items()}


def read_until_seen(bootstrap, topic, wanted, partitions=3, timeout=30.0):
    """{partition: [(key, value, offset)]} read until every value in `wanted` was seen once.

    A replay may write a message twice, so a count of records cannot say when
    to stop; what is read stops at the first copy of the last wanted value.
    """
    import time

    from confluent_kafka import Consumer, TopicPartition

    missing = set(wanted)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kafkad-readback", "enable.auto.commit": False,
                  "check.crcs": True, "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out = {p: [] for p in range(partitions)}
        deadline = time.monotonic() + timeout
        while missing and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or (m.error() and m.error().code() == -191):     # nothing yet / partition EOF
                continue
            assert not m.error(), m.error()
            out[m.partition()].append((m.key(), m.value(), m.offset()))
            missing.discard(m.value())
        return out
    finally:
        c.close()


def by_value(got):
    return {v: (p, off, k) for p, recs in got.items() for k, v, off in recs}


def test_sync_offsets_are_the_real_offsets(daemon, tansu, topic):
    p = client_shim.SimpleProducer(daemon.endpoint, random_start=False)
    sent = {}
    for i in range(12):
        (r,) = p.send_messages(topic, b"v%d-a" % i, b"v%d-b" % i)
        assert r.error == 0 and r.topic == topic
        sent[b"v%d-a" % i] = (r.partition, r.offset)
        sent[b"v%d-b" % i] = (r.partition, r.offset + 1)
    assert [s[0] for v, s in sent.items() if v.endswith(b"-a")] == [i % 3 for i in range(12)]
    got = by_value(readback(tansu, topic, 24))
    assert {v: (pp, off) for v, (pp, off, _) in got.items()} == sent


def test_sync_offsets_from_concurrent_processes(daemon, tansu, topic):
    code = textwrap.dedent("""
        import sys, client_shim
        p = client_shim.KeyedProducer(sys.argv[1])
        for i in range(15):
            v = b"%s-%d" % (sys.argv[3].encode(), i)
            (r,) = p.send_messages(sys.argv[2], b"key-%d" % (i % 4), v)
            print(r.partition, r.offset, v.decode())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, daemon.endpoint, topic, f"w{n}"],
                              stdout=subprocess.PIPE, text=True) for n in range(4)]
    claimed = {}
    with reaped(procs):
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            for line in out.splitlines():
                part, off, value = line.split()
                claimed[value.encode()] = (int(part), int(off))
    assert len(claimed) == 60
    got = by_value(readback(tansu, topic, 60))
    assert {v: (pp, off) for v, (pp, off, _) in got.items()} == claimed


def test_req_acks_zero_and_all(daemon, tansu, topic):
    zero = client_shim.Producer(daemon.endpoint, req_acks=0)
    assert zero.send_messages(topic, 0, b"fire-and-forget") == []
    every = client_shim.Producer(daemon.endpoint, req_acks=-1, ack_timeout=5000)
    (r,) = every.send_messages(topic, 1, b"all-replicas")
    assert r.error == 0 and r.offset >= 0
    got = by_value(readback(tansu, topic, 2))
    assert got[b"fire-and-forget"][0] == 0 and got[b"all-replicas"][:2] == (1, r.offset)


@pytest.mark.parametrize("codec", [client_shim.CODEC_GZIP, client_shim.CODEC_SNAPPY,
                                   client_shim.CODEC_LZ4, client_shim.CODEC_ZSTD])
def test_codecs_deliver_readable_records(daemon, tansu, topic, codec):
    p = client_shim.Producer(daemon.endpoint, codec=codec, codec_compresslevel=None if codec == 2 else 3)
    payloads = [b"compressible " * 50 + b"%d" % i for i in range(5)]
    (r,) = p.send_messages(topic, 0, *payloads)
    assert r.error == 0
    got = readback(tansu, topic, 5)
    assert [v for _, v, _ in got[0]] == payloads


def test_codec_and_acks_choose_the_daemons_producer_lane(daemon, topic):
    """The daemon keeps one producer lane per (acks, codec): each setting must reach it."""
    for codec in (client_shim.CODEC_GZIP, client_shim.CODEC_LZ4):
        p = client_shim.Producer(daemon.endpoint, req_acks=-1, codec=codec)
        assert p.send_messages(topic, 0, b"lane")[0].error == 0
    lanes = client_shim.DaemonClient(daemon.endpoint).stats()["producer_ids"]
    assert {"acks=-1,codec=1", "acks=-1,codec=3"} <= set(lanes), lanes


def test_sync_fail_on_error_raises_or_returns_the_error(daemon, topic):
    loud = client_shim.Producer(daemon.endpoint)
    with pytest.raises(errors.UnknownTopicOrPartitionError) as info:
        loud.send_messages(topic, 7, b"no such partition")
    assert info.value.errno == 3
    quiet = client_shim.Producer(daemon.endpoint, sync_fail_on_error=False)
    assert quiet.send_messages(topic, 7, b"no such partition") == [
        client_shim.ProduceResponsePayload(topic, 7, 3, -1)]


def test_keyed_partitions_match_the_java_default_partitioner(daemon, tansu, topic):
    from confluent_kafka import Producer as CKProducer

    keys = [b"user-%d" % i for i in range(30)]
    p = client_shim.KeyedProducer(daemon.endpoint)
    for k in keys:
        (r,) = p.send_messages(topic, k, b"shim-" + k)
        assert r.partition == (murmur2(k) & 0x7FFFFFFF) % 3
    ck = CKProducer({"bootstrap.servers": tansu.bootstrap, "partitioner": "murmur2_random"})
    for k in keys:
        ck.produce(topic, key=k, value=b"ck-" + k)
    assert ck.flush(30) == 0
    got = readback(tansu, topic, 60)
    where = {v: p_ for p_, recs in got.items() for _, v, _ in recs}
    for k in keys:
        assert where[b"shim-" + k] == where[b"ck-" + k], k
    assert all(key == v[len(b"shim-"):] for recs in got.values() for key, v, _ in recs if v.startswith(b"shim-"))


def test_async_batch_send_every_n_releases_a_full_batch(daemon, tansu, topic):
    held = client_shim.Producer(daemon.endpoint, async_send=True, batch_send_every_n=5, batch_send_every_t=300)
    held.send_messages(topic, 0, b"a", b"b", b"c")              # fewer than n: held by the daemon
    left = held._session.wait_drained(1.0)
    assert sum(len(e) - 5 for e in left) == 3      # (first_seq, topic, partition, ts, key, *values)
    held.send_messages(topic, 0, b"d", b"e")                    # now n are queued: all go
    assert held._session.wait_drained(20) == []
    got = readback(tansu, topic, 5)
    assert [v for _, v, _ in got[0]] == [b"a", b"b", b"c", b"d", b"e"]
    held.stop()


def test_async_batch_send_every_t_releases_after_the_wait(daemon, tansu, topic):
    p = client_shim.Producer(daemon.endpoint, async_send=True, batch_send_every_n=1000, batch_send_every_t=0.3)
    p.send_messages(topic, 1, b"lonely")
    assert p._session.wait_drained(20) == []                   # released after 0.3s, not 20
    p.stop()
    assert [v for _, v, _ in readback(tansu, topic, 1)[1]] == [b"lonely"]


def test_async_defaults_hold_a_short_batch(daemon, topic):
    """Defaults (20 messages / 20 s): one message waits, as documented."""
    p = client_shim.Producer(daemon.endpoint, async_send=True)
    p.send_messages(topic, 2, b"waits")
    assert len(p._session.wait_drained(1.0)) == 1
    p.send_messages(topic, 2, *[b"fill-%d" % i for i in range(19)])
    assert p._session.wait_drained(20) == []
    p.stop()


def test_async_failure_reaches_the_shim_log(daemon, caplog):
    p = client_shim.Producer(daemon.endpoint, async_send=True, batch_send_every_n=1, async_retry_limit=0)
    import logging
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        p.send_messages("no-such-topic-" + os.urandom(4).hex(), 7, b"nowhere")
        p.stop(timeout=30)
    assert any("nowhere" in r.getMessage() and r.name == "client_shim" for r in caplog.records)
    assert p._session.pending == {}


def test_many_processes_spawn_and_fork_share_one_daemon(daemon, tansu, topic):
    code = textwrap.dedent("""
        import os, sys, client_shim
        endpoint, topic = sys.argv[1], sys.argv[2]
        p = client_shim.SimpleProducer(endpoint, async_send=True, batch_send_every_n=50, batch_send_every_t=0.05)
        p.send_messages(topic, b"parent-%s" % sys.argv[3].encode())
        kids = []
        for n in range(3):
            pid = os.fork()
            if pid == 0:
                for i in range(100):
                    p.send_messages(topic, b"%s-child%d-%d" % (sys.argv[3].encode(), n, i))
                sys.exit(0)                 # no stop(): the atexit hook delivers
            kids.append(pid)
        assert all(os.waitpid(k, 0)[1] == 0 for k in kids)
        p.stop()
    """)
    # A session each, so that a failure kills the forked children too.
    procs = [subprocess.Popen([sys.executable, "-c", code, daemon.endpoint, topic, f"s{n}"],
                              start_new_session=True) for n in range(3)]
    with reaped(procs, group=True):
        for proc in procs:
            assert proc.wait(120) == 0
    expected = 3 * (1 + 300)
    got = by_value(readback(tansu, topic, expected))
    assert len(got) == expected
    assert {b"s%d-child%d-%d" % (s, n, i) for s in range(3) for n in range(3) for i in range(100)} <= set(got)


def test_daemon_unreachable_after_stop_then_back(tansu, topic):
    with KafkadProcess(tansu.bootstrap, drain_timeout_s=5) as d:
        d.start()
        c = client_shim.DaemonClient(d.endpoint, timeout=0.5)
        sync = client_shim.Producer(c)
        assert sync.send_messages(topic, 0, b"before")[0].error == 0
        assert d.term() == 0
        with pytest.raises(errors.KafkadUnavailableError):
            sync.send_messages(topic, 0, b"while-down")
        asy = client_shim.Producer(c, async_send=True, batch_send_every_n=1)
        asy.send_messages(topic, 0, b"queued-while-down")
        d.restart()
        # The link reconnects on ZeroMQ's back-off (up to RECONNECT_IVL_MAX, 500 ms,
        # as long as this client's timeout): wait for it, so the send below tests the
        # daemon being back, not a race between the back-off and the timeout.
        link = shim_link.get_link(d.endpoint)
        deadline = time.monotonic() + 10
        while not link.connected:
            assert time.monotonic() < deadline, "the shim did not reconnect to the restarted daemon"
            time.sleep(0.01)
        assert sync.send_messages(topic, 0, b"after")[0].error == 0
        asy.stop(timeout=30)
        got = readback(tansu, topic, 3)
        # "queued-while-down" is replayed in the background, so it may land either side of "after".
        assert sorted(v for _, v, _ in got[0]) == [b"after", b"before", b"queued-while-down"]


def test_daemon_killed_and_restarted_mid_async_stream_loses_nothing(tansu, topic):
    with KafkadProcess(tansu.bootstrap, drain_timeout_s=5) as d:
        d.start()
        p = client_shim.Producer(d.endpoint, async_send=True, batch_send_every_n=20, batch_send_every_t=0.05)
        sent = []
        for i in range(3000):
            v = b"k-%d" % i
            p.send_messages(topic, i % 3, v)
            sent.append(v)
            if i == 1500:
                # Kill while acknowledgements flow (the CI failure: the new session
                # started below entries the old daemon's last ACKs then settled).
                session = p._session
                with session.lock:
                    assert session.space.wait_for(lambda: len(session.pending) <= 1000, timeout=30)
                d.kill9()
                d.restart()
        p.stop(timeout=60)
        assert p._session.pending == {}
        got = read_until_seen(tansu.bootstrap, topic, sent)
        values = [v for recs in got.values() for _, v, _ in recs]
        assert set(values) == set(sent)          # nothing lost (a replay may duplicate)
        for part in range(3):                    # and each partition's first copies keep send order
            seen, order = set(), []
            for _, v, _ in got[part]:
                if v not in seen:
                    seen.add(v)
                    order.append(v)
            assert order == [v for i, v in enumerate(sent) if i % 3 == part]


def test_queue_full_refusals_are_retried_until_delivered(tansu, topic):
    """A daemon whose global queue is tiny refuses most sends (QUEUE_FULL); every
    refused message is retried with back-off until taken, in order per partition."""
    with KafkadProcess(tansu.bootstrap, drain_timeout_s=5,
                       extra={"queue": {"max_messages": 400, "max_bytes": 512 * 1024}}) as d:
        d.start()
        producers = [client_shim.Producer(d.endpoint, async_send=True, batch_send_every_n=10,
                                          batch_send_every_t=0.05) for _ in range(4)]
        sent = []
        for i in range(150):
            for n, p in enumerate(producers):
                batch = [b"q%d-%d-%d-" % (n, i, j) + b"x" * 1000 for j in range(10)]
                p.send_messages(topic, n % 3, *batch)
                sent.extend((n, v) for v in batch)
        for p in producers:
            p.stop(timeout=30)
            assert p._session.pending == {}
        assert d.stats()["ipc"]["rejected"]["queue_full"] > 0
        got = read_until_seen(tansu.bootstrap, topic, [v for _, v in sent])
        for n in range(4):                       # each producer's order holds in its partition
            seen, order = set(), []
            for _, v, _ in got[n % 3]:
                if v.startswith(b"q%d-" % n) and v not in seen:
                    seen.add(v)
                    order.append(v)
            assert order == [v for nn, v in sent if nn == n]


def test_stop_sends_what_the_daemon_holds_for_batching_at_once(daemon, tansu, topic):
    """kafka-python's stop() sent its queue at once; so must this one, not wait batch_send_every_t."""
    p = client_shim.Producer(daemon.endpoint, async_send=True, batch_send_every_n=1000, batch_send_every_t=300)
    p.send_messages(topic, 0, b"held-1", b"held-2")
    p.send_messages(topic, 1, b"held-3")
    p.stop(timeout=3)                    # far below batch_send_every_t: only a flush delivers in time
    assert p._session.pending == {}
    got = readback(tansu, topic, 3)
    assert [v for _, v, _ in got[0]] == [b"held-1", b"held-2"] and [v for _, v, _ in got[1]] == [b"held-3"]


def test_hostile_frames_next_to_a_good_client(daemon, tansu, topic):
    import zmq

    ctx = zmq.Context()
    try:
        bad = ctx.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.connect(daemon.endpoint)
        for i in range(500):
            bad.send(os.urandom(64))
        good = client_shim.SimpleProducer(daemon.endpoint, random_start=False)
        for i in range(10):
            assert good.send_messages(topic, b"good-%d" % i)[0].error == 0
        assert len(by_value(readback(tansu, topic, 10))) == 10
        ipc = client_shim.DaemonClient(daemon.endpoint).stats()["ipc"]
        assert ipc["bad_frames_total"] >= 500
    finally:
        ctx.destroy(0)
    assert daemon.running


def test_partitions_added_while_a_producer_runs_are_used_without_a_restart(tansu, topic):
    """The topic grows from 3 to 5 partitions under a running SimpleProducer. Tansu has
    no CreatePartitions, so the topic is deleted and created again with 5 (about 10 ms
    apart; auto-creation off, so nothing re-creates it in between with the default
    count); the daemon's next metadata refresh (every 200 ms here) sees the new count and
    tells the shim, whose round robin then covers the new partitions, as an independent
    consumer sees."""
    import threading
    import time

    with KafkadProcess(tansu.bootstrap, request_timeout_ms=3000, drain_timeout_s=5,
                       extra={"kafka": {"metadata_max_age_ms": 200, "allow_auto_create_topics": False}}) as d:
        d.start()
        c = client_shim.DaemonClient(d.endpoint)
        p = client_shim.SimpleProducer(c, async_send=True, random_start=False, batch_send_every_n=1)
        link = c._link
        sent: list[tuple[bytes, list[int] | None]] = []     # (value, the shim's list when it was sent)
        stop = threading.Event()

        def run():
            i = 0
            while not stop.is_set():
                value = b"m%d" % i
                parts = link.partition_cache.get(topic)
                p.send_messages(topic, value)
                sent.append((value, parts))
                i += 1
                time.sleep(0.005)

        t = threading.Thread(target=run)
        t.start()
        try:
            deadline = time.monotonic() + 20
            while len(sent) < 20:
                assert time.monotonic() < deadline and t.is_alive(), "the producer does not run"
                time.sleep(0.01)
            tansu.delete_topic(topic)
            tansu.create_topic(topic, partitions=5)
            while link.partition_cache.get(topic) != [0, 1, 2, 3, 4]:
                assert time.monotonic() < deadline and t.is_alive(), (
                    f"the shim still has {link.partition_cache.get(topic)}")
                time.sleep(0.01)
            grown = len(sent)
            while len(sent) < grown + 30:
                assert time.monotonic() < deadline and t.is_alive(), "the producer stopped"
                time.sleep(0.01)
        finally:
            stop.set()
            t.join(10)
        p.stop(timeout=20)
        ipc = d.stats()["ipc"]
    assert link.stats["partition_changes"] >= 1 and ipc["partition_changes_sent"] >= 1, (link.stats, ipc)
    after = [v for v, parts in sent if parts == [0, 1, 2, 3, 4]]
    assert len(after) >= 30
    got = read_until_seen(tansu.bootstrap, topic, after, partitions=5)
    where = {v: part for part, recs in got.items() for _, v, _ in recs}
    assert set(after) <= set(where), sorted(set(after) - set(where))
    # one partition per call, in turn over all five
    assert {where[v] for v in after} == {0, 1, 2, 3, 4}


def test_a_record_too_large_fails_only_its_own_call(tansu, topic, caplog):
    """Calls merged into one submission: the one with a record larger than any batch
    fails (reported once, counted once); the calls before and after it are delivered."""
    with KafkadProcess(tansu.bootstrap, extra={"kafka": {"batch_max_bytes": 65536}}) as d:
        d.start()
        p = client_shim.Producer(d.endpoint, async_send=True, batch_send_every_n=100, batch_send_every_t=5)
        small = [b"before-%d" % i for i in range(5)] + [b"after-%d" % i for i in range(3)]
        for v in small[:5]:
            p.send_messages(topic, 0, v)
        p.send_messages(topic, 0, b"x" * 100_000)
        for v in small[5:]:
            p.send_messages(topic, 0, v)
        with caplog.at_level("ERROR", logger="client_shim"):
            p.stop()
        shim_failures = [r.getMessage() for r in caplog.records if "could not deliver" in r.getMessage()]
        assert len(shim_failures) == 1 and "1 message(s)" in shim_failures[0], shim_failures
        assert "MessageSizeTooLarge" in shim_failures[0]
        got = readback(tansu, topic, 8)
        assert [v for _, v, _ in got[0]] == small
        stats = d.stats()
        assert (stats["failed"], stats["delivered"]) == (1, 8), stats

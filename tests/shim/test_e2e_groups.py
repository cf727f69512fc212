"""End to end through a real `kafkad run`: async sends travel as SEND_GROUPS frames
(one-message calls, multi-message calls and keyed calls mixed), every message lands
once, in send order per partition; and against a daemon that does not announce
"send_groups" the shim sends SEND frames."""

from __future__ import annotations

import threading
import time

import pytest

import client_shim
from client_shim import link as shim_link
from tests.ipc.fakes import ServerThread
from tests.shim.test_e2e_daemon import read_until_seen
from tests.support.daemon import KafkadProcess

pytestmark = pytest.mark.broker


def test_async_sends_as_groups_land_once_in_order(tansu, topic):
    with KafkadProcess(tansu.bootstrap) as d:
        d.start()
        plain = client_shim.SimpleProducer(d.endpoint, async_send=True, random_start=False,
                                           batch_send_every_t=0.005)
        keyed = client_shim.KeyedProducer(d.endpoint, async_send=True, batch_send_every_t=0.005)
        sent = []
        for i in range(3000):
            if i % 50 == 7:
                vals = [b"m%d-%d" % (i, j) for j in range(3)]
                plain.send_messages(topic, *vals)
            elif i % 50 == 9:
                vals = [b"k%d" % i]
                keyed.send_messages(topic, b"key-%d" % (i % 5), *vals)
            else:
                vals = [b"p%d" % i]
                plain.send_messages(topic, *vals)
            sent += vals
        plain.stop()
        keyed.stop()
        ipc = d.stats()["ipc"]
        assert ipc["send_groups_frames"] > 0 and ipc["send_groups_direct"] > 0
        assert ipc["duplicates_dropped"] == 0 and ipc["messages_in"] >= len(sent)
    got = read_until_seen(tansu.bootstrap, topic, sent)
    values = [v for recs in got.values() for _, v, _ in recs]
    assert sorted(values) == sorted(sent)                     # every message exactly once
    order = {v: n for n, v in enumerate(sent)}
    for recs in got.values():
        # per partition, the plain producer's messages in send order (the keyed one is its own session)
        mine = [order[v] for _, v, _ in recs if not v.startswith(b"k")]
        assert mine == sorted(mine)
    keys = {v: k for recs in got.values() for k, v, _ in recs}
    assert all(keys[v] == b"key-%d" % (int(v[1:]) % 5) for v in sent if v.startswith(b"k"))


def test_a_daemon_without_the_feature_gets_send_frames(monkeypatch):
    import kafkad.ipc.server as server_mod

    monkeypatch.setattr(server_mod, "FEATURES", ["flush"])
    with ServerThread() as st:
        p = client_shim.SimpleProducer(st.endpoint, async_send=True, batch_send_every_t=0.005)
        for i in range(200):
            p.send_messages("t", b"v%d" % i)
        p.stop()
        stats = st.server.stats()
        assert stats["send_groups_frames"] == 0
        assert sorted(v for *_, v in st.producer.messages()) == sorted(b"v%d" % i for i in range(200))


def test_send_frames_carry_keys_tombstones_and_multi_message_calls(monkeypatch):
    # The shim keeps an entry as (first_seq, topic, partition, ts, key, *values); a
    # SEND frame spells out the keys column again.
    import kafkad.ipc.server as server_mod

    monkeypatch.setattr(server_mod, "FEATURES", ["flush"])
    with ServerThread() as st:
        keyed = client_shim.KeyedProducer(st.endpoint, async_send=True, batch_send_every_t=0.005)
        plain = client_shim.Producer(st.endpoint, async_send=True, batch_send_every_t=0.005)
        want_keyed = []
        for i in range(60):
            key = b"key-%d" % (i % 3)
            values = (b"a%d" % i, b"b%d" % i) if i % 4 else (None,)     # every 4th a tombstone
            keyed.send_messages("t", key, *values)
            want_keyed += [(key, v) for v in values]
            plain.send_messages("t", 1, b"p%d" % i, b"q%d" % i)
        keyed.stop()
        plain.stop()
        assert st.server.stats()["send_groups_frames"] == 0
        got = st.producer.messages()
        assert sorted(((k, v) for _, _, k, v in got if k is not None), key=repr) == sorted(want_keyed, key=repr)
        assert [(p, v) for _, p, k, v in got if k is None] == \
            [(1, v) for i in range(60) for v in (b"p%d" % i, b"q%d" % i)]


def test_a_busy_daemon_leaves_a_workers_backlog_as_entries_not_as_socket_frames():
    """While the daemon's loop is busy, frames back up through its receive buffer
    (8 frames) into the worker. There the shim's socket takes only a few; the
    rest stays as entries (each held once) instead of also piling up as encoded
    frame copies in ZeroMQ's queue, and all of it goes out once the daemon reads."""
    with ServerThread() as st:
        p = client_shim.SimpleProducer(st.endpoint, async_send=True, batch_send_every_t=0.005)
        p.send_messages("t", b"warm-up")
        link = shim_link.get_link(st.endpoint)
        deadline = time.monotonic() + 10
        while len(st.producer.messages()) < 1:
            assert time.monotonic() < deadline, "the warm-up message did not arrive"
            time.sleep(0.01)
        held, release = threading.Event(), threading.Event()
        st.loop.call_soon_threadsafe(lambda: (held.set(), release.wait(60)))
        try:
            assert held.wait(5)
            before = link.stats["frames_sent"]
            value = b"x" * 1000
            for _ in range(40_000):          # about 160 frames of 256 KiB
                p.send_messages("t", value)
            time.sleep(1.0)                  # the I/O thread packs and offers what it can
            taken = link.stats["frames_sent"] - before
        finally:
            release.set()
        assert taken <= 48, f"the worker's socket took {taken} frames while the daemon was busy"
        p.stop()
        assert len(st.producer.messages()) == 40_001

"""The async send's short ways (SimpleProducer.send_messages' inline way, the session's
bare lock) keep the full way's rules.

No daemon: a real session on a link whose I/O thread is never started, so the
entries the calls leave in the session can be read back.
"""

from __future__ import annotations

import os

import pytest

import client_shim
from client_shim import link as _linkmod
from client_shim.errors import AsyncProducerQueueFull, IllegalStateError

NO_DAEMON = "ipc:///nonexistent-kafkad-dir/kafkad.sock"


@pytest.fixture
def producer():
    p = client_shim.SimpleProducer(NO_DAEMON, async_send=True, random_start=False)
    link = _linkmod._Link(NO_DAEMON)          # never started: entries stay in the session
    link.partition_cache["fast-path"] = [0, 1, 2]
    session = _linkmod._Session(link, p._settings(), maxsize=0, put_timeout=0, log_messages=False,
                                label="test")
    p._session, p._session_pid = session, _linkmod.current_pid()
    yield p
    _linkmod.forget_at_exit(p)                # nothing to wait for at exit
    p._session = None


def _sent(p) -> list[tuple]:
    return [(e[1], e[2], list(e[5:])) for e in p._session.pending.values()]


def test_async_sends_round_robin_and_follow_a_changed_partition_list(producer):
    assert _linkmod.current_pid() == os.getpid()
    for i in range(4):
        assert producer.send_messages("fast-path", b"m%d" % i) == []
    assert _sent(producer) == [("fast-path", p, [b"m%d" % i]) for i, p in enumerate([0, 1, 2, 0])]
    # The daemon said the topic has 5 partitions now: a new list object in the cache.
    producer._session.link.partition_cache["fast-path"] = [0, 1, 2, 3, 4]
    for i in range(5):
        producer.send_messages("fast-path", b"n%d" % i)
    assert [p for _, p, _ in _sent(producer)[4:]] == [0, 1, 2, 3, 4]
    producer.send_messages(b"fast-path", b"as bytes")       # a bytes topic takes the full way
    assert _sent(producer)[-1] == ("fast-path", 0, [b"as bytes"])


def test_async_send_refuses_when_stopped_or_closed_and_checks_payloads(producer):
    producer.send_messages("fast-path", b"first")
    with pytest.raises(TypeError, match="bytes"):
        producer.send_messages("fast-path", "text")
    with pytest.raises(TypeError, match="at least one"):
        producer.send_messages("fast-path")
    producer._session.closed = True              # stop() ran in another thread
    with pytest.raises(IllegalStateError, match="stopped"):
        producer.send_messages("fast-path", b"late")
    producer._session.closed = False
    producer.stopped, producer._stopped_pid = True, os.getpid()
    with pytest.raises(IllegalStateError, match="stopped"):
        producer.send_messages("fast-path", b"later")
    assert [v for _, _, v in _sent(producer)] == [[b"first"]]


def test_a_refused_async_send_leaves_the_session_lock_free():
    link = _linkmod._Link(NO_DAEMON)
    session = _linkmod._Session(link, {}, maxsize=1, put_timeout=0, log_messages=False, label="test")
    session.send_async("t", 0, None, [b"a"])
    with pytest.raises(AsyncProducerQueueFull):
        session.send_async("t", 0, None, [b"b"])
    assert not session.lock.locked()
    session.closed = True
    with pytest.raises(IllegalStateError):
        session.send_async("t", 0, None, [b"c"])
    assert not session.lock.locked()
    assert [list(e[5:]) for e in session.pending.values()] == [[b"a"]]


def test_pending_entries_leave_the_garbage_collector_at_its_first_young_collection(producer):
    # Up to async_queue_maxsize entries wait for their acknowledgement: were they
    # tracked, they would reach the oldest generation, whose full collections visit
    # every one of them (about 1 us per message at 4 workers sending flat out).
    import gc

    keyed = client_shim.KeyedProducer(NO_DAEMON, async_send=True)
    keyed._session, keyed._session_pid = producer._session, producer._session_pid
    try:
        for i in range(50):
            producer.send_messages("fast-path", b"m%d" % i)           # the inline way
            producer.send_messages("fast-path", b"a", b"b", b"c")      # the full way, several values
            keyed.send_messages("fast-path", b"key", b"k%d" % i)       # a key
    finally:
        keyed._session = None
        _linkmod.forget_at_exit(keyed)
    entries = list(producer._session.pending.values())
    assert len(entries) == 150
    assert entries[1][5:] == (b"a", b"b", b"c") and entries[2][4:] == (b"key", b"k0")
    gc.collect(0)
    assert not [e for e in entries if gc.is_tracked(e)]

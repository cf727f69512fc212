"""IpcServer against raw ZeroMQ peers: the schema, sessions, replays, refusals, hostile input.

The server runs on its own loop in a thread over `FakeProducer` (a double of
the BrokerProducer seam); the peers are plain DEALER sockets speaking the
frames of client_shim.schema by hand, so every check is on the wire format.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import sys
import threading
import time

import msgpack
import pytest
import zmq

from client_shim import schema
from kafkad.engine.types import Outcome
from kafkad.ipc import EndpointInUse, IpcServer
from tests.ipc.fakes import FakeProducer, ServerThread

SETTINGS = {"acks": 1, "ack_timeout_ms": 1000, "codec": 0, "codec_level": None, "async_send": True,
            "batch_n": 20, "batch_t": 20.0, "retry_limit": None, "retry_backoff_ms": 100,
            "retry_on_timeouts": True, "log_messages_on_error": True}


class Peer:
    """A raw DEALER talking to the server."""

    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sid = os.urandom(16)

    def send(self, frame):
        self.sock.send(frame if isinstance(frame, bytes) else schema.encode(frame))

    def recv(self, timeout=5.0):
        assert self.sock.poll(int(timeout * 1000)), "no reply from the server"
        return msgpack.unpackb(self.sock.recv(), raw=False, strict_map_key=False)

    def quiet(self, timeout=0.2):
        """True if nothing arrives within `timeout` (used only to show a reply is *not* sent)."""
        return not self.sock.poll(int(timeout * 1000))

    def register(self, first_seq=0, settings=None, rid=1):
        self.send([schema.REGISTER, schema.SCHEMA_VERSION, rid, self.sid, first_seq, settings or SETTINGS])
        reply = self.recv()
        assert reply[0] == schema.REGISTERED, reply
        return reply

    def close(self):
        self.ctx.destroy(0)


def entry(seq, value=b"v", topic="t", partition=0, n=1):
    return [seq, topic, partition, 1_700_000_000_000, None, [value] * n]


def test_hello_answers_version_and_instance(server, peer):
    peer.send([schema.HELLO, schema.SCHEMA_VERSION, 77])
    kind, rid, version, instance, limits = peer.recv()
    assert (kind, rid, version) == (schema.HELLO_OK, 77, schema.SCHEMA_VERSION)
    assert instance == server.server.instance_id
    assert limits["max_frame_bytes"] == server.cfg.max_frame_bytes


def test_send_becomes_submission_and_is_acknowledged(server, peer):
    peer.register(first_seq=10)
    settings = dict(SETTINGS, acks=-1, ack_timeout_ms=2500, codec=1, codec_level=4, batch_n=7,
                    batch_t=0.5, retry_limit=3, retry_backoff_ms=250, retry_on_timeouts=False,
                    log_messages_on_error=False)
    peer.register(first_seq=10, settings=settings, rid=2)
    peer.send([schema.SEND, peer.sid, [entry(10, b"a", partition=1), entry(11, b"b", partition=2, n=2)]])
    acked = []
    while len(acked) < 2:
        reply = peer.recv()
        assert reply[0] == schema.ACK and reply[1] == peer.sid
        acked += reply[2]
    assert sorted(acked) == [10, 11]
    subs = server.producer.submissions
    assert [(s.partition, s.values) for s in subs] == [(1, [b"a"]), (2, [b"b", b"b"])]
    st = subs[0].settings
    assert (st.acks, st.ack_timeout_ms, st.codec, st.codec_level, st.batch_n, st.batch_t, st.retry_limit,
            st.retry_backoff_ms, st.retry_on_timeouts, st.log_messages_on_error, st.async_send) == \
        (-1, 2500, 1, 4, 7, 0.5, 3, 250, False, False, True)
    assert subs[0].session_id == peer.sid and subs[0].timestamp_ms == 1_700_000_000_000


def test_replayed_entries_are_dropped_and_finished_ones_acknowledged_again(server, peer):
    server.producer.hold = True
    peer.register()
    peer.send([schema.SEND, peer.sid, [entry(0), entry(1)]])
    peer.register(rid=2)                            # a reconnect: the session is known
    peer.send([schema.SEND, peer.sid, [entry(0), entry(1), entry(2)]])
    assert peer.quiet()                             # in flight: no answer for 0 and 1 yet
    server.producer.release()
    acked = set()
    while len(acked) < 3:
        acked |= set(peer.recv()[2])
    assert len(server.producer.messages()) == 3     # 0 and 1 were not taken twice
    peer.send([schema.SEND, peer.sid, [entry(1)]])  # finished already: acknowledged again
    assert peer.recv()[:3] == [schema.ACK, peer.sid, [1]]
    assert server.server.stats()["duplicates_dropped"] == 3


def test_every_frame_past_a_gap_is_refused_until_the_replay_fills_it(server, peer):
    """No frame past next_seq goes unanswered: each one gets REJECTED from next_seq
    (a shim whose first refusal was overtaken must still learn where to replay from)."""
    peer.register(first_seq=5)
    for seq in (7, 8, 9):
        peer.send([schema.SEND, peer.sid, [entry(seq)]])
        kind, sid, from_seq, code, text = peer.recv()
        assert (kind, sid, from_seq, code) == (schema.REJECTED, peer.sid, 5, schema.E_OUT_OF_ORDER)
        assert f"got {seq}" in text
    assert server.server.stats()["gap_replies"] == 3
    assert server.server.stats()["rejected"] == {}         # not a refusal of a message that was sent
    assert server.producer.submissions == []
    peer.send([schema.SEND, peer.sid, [entry(5, n=2), entry(7), entry(8)]])
    acked = set()
    while len(acked) < 3:
        acked |= set(peer.recv()[2])
    assert acked == {5, 7, 8}
    assert len(server.producer.messages()) == 4
    assert len(server.producer.submissions) == 1    # one frame, one partition: one submission
    assert peer.register(rid=9)[3] == 9             # REGISTERED says where the daemon stands


def test_flush_reaches_the_producer_and_registered_announces_it(server, peer):
    from kafkad.ipc.server import FLUSH

    reply = peer.register()
    assert "flush" in reply[5]                          # the feature list the shim looks for
    peer.send([schema.SEND, peer.sid, [entry(0)]])
    assert peer.recv()[:3] == [schema.ACK, peer.sid, [0]]
    peer.send([FLUSH, peer.sid])
    peer.send([schema.STATS, 4])                      # frames are handled in order
    assert peer.recv()[:2] == [schema.STATS_REPLY, 4]  # and FLUSH itself has no reply
    assert server.producer.flushed == [peer.sid]
    assert server.server.stats()["flushes"] == 1
    stranger = os.urandom(16)
    peer.send([FLUSH, stranger])                      # unknown session: told so, like a SEND
    kind, _, code, _, sid = peer.recv()
    assert (kind, code, sid) == (schema.ERROR, schema.E_UNKNOWN_SESSION, stranger)
    peer.send([FLUSH, b"short"])                      # a bad FLUSH is a bad frame, not a flush
    assert peer.recv()[0] == schema.ERROR
    assert server.producer.flushed == [peer.sid]


def test_queue_full_refuses_from_that_entry_and_keeps_order(server, peer):
    peer.register()
    server.producer.refuse = 1
    peer.send([schema.SEND, peer.sid, [entry(0, b"first"), entry(1, b"second")]])
    kind, _, from_seq, code, text = peer.recv()
    assert (kind, from_seq, code) == (schema.REJECTED, 0, schema.E_QUEUE_FULL)
    assert "queue full" in text
    assert server.producer.submissions == []          # 'second' was not taken out of order
    peer.send([schema.SEND, peer.sid, [entry(0, b"first"), entry(1, b"second")]])
    acked = set()
    while len(acked) < 2:
        acked |= set(peer.recv()[2])
    assert [v for _, _, _, v in server.producer.messages()] == [b"first", b"second"]
    assert server.server.stats()["rejected"]["queue_full"] == 1


def test_refusal_of_one_partition_keeps_the_other_and_the_replay_skips_it(server, peer):
    peer.register()
    server.producer.refuse = 1                        # the first submission (partition 0) is refused
    peer.send([schema.SEND, peer.sid, [entry(0, b"p0-a"), entry(1, b"p1-a", partition=1),
                                       entry(2, b"p0-b")]])
    replies = [peer.recv(), peer.recv()]
    assert [schema.REJECTED, peer.sid, 0, schema.E_QUEUE_FULL] in [r[:4] for r in replies]
    assert [schema.ACK, peer.sid, [1]] in replies
    peer.send([schema.SEND, peer.sid, [entry(3, b"p1-b", partition=1)]])   # sent before the replay
    peer.send([schema.SEND, peer.sid, [entry(0, b"p0-a"), entry(1, b"p1-a", partition=1),
                                       entry(2, b"p0-b"), entry(3, b"p1-b", partition=1)]])
    acked = set()
    while len(acked) < 4:
        reply = peer.recv()
        if reply[0] == schema.ACK:
            acked |= set(reply[2])
    got = server.producer.messages()
    assert [v for _, p, _, v in got if p == 0] == [b"p0-a", b"p0-b"]
    assert [v for _, p, _, v in got if p == 1] == [b"p1-a", b"p1-b"]   # p1-a not taken twice


def test_one_session_cannot_take_more_than_its_share():
    with ServerThread(max_inflight_per_session=3) as st:
        st.producer.hold = True
        greedy, other = Peer(st.endpoint), Peer(st.endpoint)
        try:
            greedy.register()
            other.register()
            greedy.send([schema.SEND, greedy.sid, [entry(0, n=3), entry(3, partition=1)]])
            kind, _, from_seq, code, _ = greedy.recv()
            assert (kind, from_seq, code) == (schema.REJECTED, 3, schema.E_QUEUE_FULL)
            other.send([schema.SEND, other.sid, [entry(0, n=3)]])
            st.producer.wait_messages(6)              # taken (held), not refused
            assert [len(s.values) for s in st.producer.submissions] == [3, 3]
        finally:
            greedy.close()
            other.close()


def test_stopping_refuses_new_messages_but_answers_the_rest(server, peer):
    peer.register()
    server.call(server.server.stop_accepting)
    peer.send([schema.SEND, peer.sid, [entry(0)]])
    assert peer.recv()[:4] == [schema.REJECTED, peer.sid, 0, schema.E_STOPPING]
    peer.send([schema.SEND_SYNC, peer.sid, 9, "t", 0, 0, None, [b"x"]])
    reply = peer.recv()
    assert reply[:3] == [schema.ERROR, 9, schema.E_STOPPING]
    peer.send([schema.STATS, 3])
    assert peer.recv()[0] == schema.STATS_REPLY
    assert server.producer.submissions == []


def test_stop_hands_undelivered_messages_back_to_connected_shims_only(server):
    """At the end of a drain without a spool, a connected session gets its undelivered
    async entries back (REJECTED(STOPPING) from its oldest unfinished entry) instead of a
    failure; a session whose process is gone and sync sends are left to be failed."""
    from dataclasses import replace

    server.producer.hold = True
    live, gone, sync = Peer(server.endpoint), Peer(server.endpoint), Peer(server.endpoint)
    try:
        live.register()
        gone.register()
        sync.register(settings=dict(SETTINGS, async_send=False))
        # seqs 0 and 1 merge into one submission (partition 0), seq 2 goes to partition 1
        live.send([schema.SEND, live.sid, [entry(0, b"a"), entry(1, b"b"), entry(2, b"c", partition=1)]])
        gone.send([schema.SEND, gone.sid, [entry(0, b"g")]])
        sync.send([schema.SEND_SYNC, sync.sid, 5, "t", 2, 0, None, [b"s"]])
        server.producer.wait_messages(5)
        held = {(sub.session_id, sub.partition): sub for sub in server.producer.held}
        p0, p1, g, sy = (held[live.sid, 0], held[live.sid, 1], held[gone.sid, 0], held[sync.sid, 2])
        assert (p0.token.firsts, p1.token.firsts) == ([0, 1], [2])
        # seq 0 is delivered, seq 1 (the rest of that submission) and seq 2 are not
        server.call(server.server.on_outcomes, [Outcome(p0.token, "t", 0, 0, 0, 1, 0)])
        assert live.recv() == [schema.ACK, live.sid, [0]]
        gone.close()
        deadline = time.monotonic() + 5
        while server.call(server.server.stats)["peers_disconnected"] < 1:
            assert time.monotonic() < deadline, "the server never saw the peer go"
            time.sleep(0.01)
        server.call(server.server.stop_accepting)
        rest_of_p0 = replace(p0, keys=p0.keys[1:], values=p0.values[1:])
        handed, rest = server.call(server.server.hand_back, [rest_of_p0, p1, g, sy])
        assert dict(handed) == {("t", 0): 1, ("t", 1): 1}
        assert sorted(map(id, rest)) == sorted(map(id, (g, sy)))
        kind, sid, from_seq, code, text = live.recv()
        assert (kind, sid, from_seq, code) == (schema.REJECTED, live.sid, 1, schema.E_STOPPING)
        assert "2 message(s)" in text and "handed back" in text
        st = server.call(server.server.stats)
        assert st["handed_back_messages"] == 2 and st["async_inflight_messages"] == 1   # the gone one's
        assert live.quiet() and sync.quiet()
    finally:
        live.close()
        sync.close()


def test_sync_send_result_carries_partition_error_and_first_offset(server, peer):
    peer.register(settings=dict(SETTINGS, async_send=False))
    for rid in (1, 2):
        peer.send([schema.SEND_SYNC, peer.sid, rid, "t", 2, 0, [b"k", b"k"], [b"a", b"b"]])
        assert peer.recv() == [schema.RESULT, rid, 2, 0, (rid - 1) * 2]
    server.producer.fail_with = 10
    peer.send([schema.SEND_SYNC, peer.sid, 3, "t", 1, 0, None, [b"a"]])
    assert peer.recv() == [schema.RESULT, 3, 1, 10, -1]
    assert server.producer.submissions[0].keys == [b"k", b"k"]
    peer.send([schema.SEND_SYNC, peer.sid, 4, "t", 9, 0, None, [b"a"]])   # not a partition of t
    assert peer.recv() == [schema.RESULT, 4, 9, 3, -1]


def test_partial_failure_is_reported_by_run(server, peer, caplog):
    server.producer.hold = True
    peer.register(settings=dict(SETTINGS, log_messages_on_error=False))
    peer.send([schema.SEND, peer.sid, [entry(0, b"secret", n=4)]])
    assert peer.quiet(0.1)
    sub = server.producer.held.pop()
    outs = [Outcome(sub.token, "t", 0, 0, 100, 2, 0), Outcome(sub.token, "t", 0, 7, -1, 0, 2)]
    with caplog.at_level("ERROR", logger="kafkad.ipc"):
        server.call(server.server.on_outcomes, outs)
        reply = peer.recv()
    assert reply == [schema.FAILED, peer.sid, [[0, [[2, 2, 7]]]]]
    assert "failed with error 7" in caplog.text and "hashes" in caplog.text
    assert "secret" not in caplog.text                      # log_messages_on_error=False



@pytest.mark.parametrize("contents", [True, False])
def test_failure_log_line_is_bounded_and_still_names_each_message(server, peer, caplog, contents):
    # A failed 2 MiB message once made a 2-million-character line (journald cuts at 48 KiB).
    server.producer.hold = True
    peer.register(settings=dict(SETTINGS, log_messages_on_error=contents))
    big = b"A" * (2 * 1024 * 1024)
    values = [big] + [b"m%d" % i for i in range(30)]
    peer.send([schema.SEND, peer.sid, [[0, "t", 0, 1_700_000_000_000, None, values]]])
    assert peer.quiet(0.1)
    sub = server.producer.held.pop()
    with caplog.at_level("ERROR", logger="kafkad.ipc"):
        server.call(server.server.on_outcomes, [Outcome(sub.token, "t", 0, 10, -1, 0, len(values))])
        assert peer.recv()[0] == schema.FAILED
    lines = [r.getMessage() for r in caplog.records if "failed with error 10" in r.getMessage()]
    assert lines and all("failed with error 10 (MessageSizeTooLargeError);" in line for line in lines)
    assert all(len(line) < 4096 for line in lines)
    big_hash = hashlib.blake2b(big, digest_size=8).hexdigest()
    m0_hash = hashlib.blake2b(b"m0", digest_size=8).hexdigest()
    if contents:   # a prefix of each value, its length and its hash (the one the shim logs)
        assert len(lines) == 2 and lines[0].endswith("(line 1 of 2)") and lines[1].endswith("(line 2 of 2)")
        assert "b'AAAAAAAA" in lines[0] and f"({len(big)} B, blake2b {big_hash})" in lines[0]
        assert f"b'm0' (2 B, blake2b {m0_hash})" in lines[0]
    else:
        assert len(lines) == 1
        assert "AAAA" not in lines[0] and "m0" not in lines[0] and f"hashes {big_hash}, {m0_hash}," in lines[0]
    # Every message is in the record, none left out.
    text = "\n".join(lines)
    assert all(hashlib.blake2b(v, digest_size=8).hexdigest() in text for v in values)
    assert "more)" not in text


HOSTILE = [
    (b"\xc1\xc1 not msgpack", schema.E_MALFORMED),
    (msgpack.packb({"kind": 3}), schema.E_MALFORMED),
    (msgpack.packb([]), schema.E_MALFORMED),
    (msgpack.packb(["SEND"]), schema.E_MALFORMED),
    (msgpack.packb([99, 1, 2]), schema.E_UNKNOWN_KIND),
    (msgpack.packb([schema.SEND, b"short", []]), schema.E_MALFORMED),
    (msgpack.packb([schema.SEND, b"x" * 16, [[0, "t", 0, 0, None, ["text, not bytes"]]]]), schema.E_MALFORMED),
    (msgpack.packb([schema.SEND, b"x" * 16, [[0, "bad topic!", 0, 0, None, [b"v"]]]]), schema.E_INVALID),
    (msgpack.packb([schema.SEND, b"x" * 16, [[0, "t", schema.PICK_PARTITION_MIN - 1, 0, None, [b"v"]]]]), schema.E_MALFORMED),
    (msgpack.packb([schema.SEND, b"x" * 16, [[0, "t", 0, 0, [b"k"], [b"v", b"w"]]]]), schema.E_MALFORMED),
    (msgpack.packb([schema.SEND, b"x" * 16, [[0, "t", 0, 0, None, [b"v"]]]]), schema.E_UNKNOWN_SESSION),
    (msgpack.packb([schema.SEND_SYNC, b"x" * 16, 1, "t", 0, 0, [b"k"], [b"v", b"w"]]), schema.E_MALFORMED),
    (msgpack.packb([schema.REGISTER, 999, 5, b"x" * 16, 0, SETTINGS]), schema.E_BAD_VERSION),
    (msgpack.packb([schema.REGISTER, 1, 5, b"x" * 16, 0, dict(SETTINGS, acks=5)]), schema.E_INVALID),
    (msgpack.packb([schema.REGISTER, 1, 5, b"x" * 16, 0, {"acks": 1}]), schema.E_MALFORMED),
    (msgpack.packb([schema.REGISTER, 1, 5, b"x" * 16, 0, dict(SETTINGS, batch_t=float("nan"))]), schema.E_INVALID),
    (msgpack.packb([schema.REGISTER, 1, 5, b"x" * 16, 0, dict(SETTINGS, acks=True)]), schema.E_MALFORMED),
    (msgpack.packb([schema.METADATA, 5, "." ]), schema.E_INVALID),
    (msgpack.packb([schema.STATS, -5]), schema.E_MALFORMED),
    (b"\xdd\xff\xff\xff\xff", schema.E_MALFORMED),                 # claims a 4G-element array
]


@pytest.mark.parametrize("frame,code", HOSTILE, ids=[f"{i}-{schema.ERROR_NAMES[c]}" for i, (_, c) in enumerate(HOSTILE)])
def test_hostile_frame_gets_an_error_reply_and_a_counter(server, peer, frame, code):
    peer.send(frame)
    reply = peer.recv()
    assert reply[0] == schema.ERROR and reply[2] == code, reply
    stats = server.server.stats()
    assert stats["bad_frames_total"] == 1
    assert stats["bad_frames"] == {schema.ERROR_NAMES[code].lower(): 1}


def test_oversized_frame_and_multipart_are_refused(tmp_path):
    with ServerThread(max_frame_bytes=1024) as st:
        p = Peer(st.endpoint)
        try:
            p.send(schema.encode([schema.STATS, 1, b"x" * 2000]))
            assert p.recv()[2] == schema.E_TOO_LARGE
            p.sock.send_multipart([schema.encode([schema.STATS, 2]), b"extra"])
            reply = p.recv()
            assert reply[2] == schema.E_MALFORMED and reply[3] == "expected one frame per message, got 2"
            # Every part of a message is read: the next message is served on its own.
            p.sock.send_multipart([schema.encode([schema.STATS, 4]), b"extra", b"more"])
            p.send([schema.STATS, 5])
            reply = p.recv()
            assert reply[2] == schema.E_MALFORMED and reply[3] == "expected one frame per message, got 3"
            assert p.recv()[:2] == [schema.STATS_REPLY, 5]
            p.send([schema.STATS, 3, "trailing fields are ignored"])
            assert p.recv()[:2] == [schema.STATS_REPLY, 3]
        finally:
            p.close()


def test_a_peer_can_buffer_only_a_few_frames_in_the_daemon_while_it_is_busy():
    """The daemon's memory is bounded by its [queue] caps, not by what its peers
    manage to write: while the loop is busy (held here, as a saturated main
    thread would be), ZeroMQ takes only a few frames per peer into the daemon's
    process, and the rest waits in the peer's process (a worker's share is
    bounded by its async_queue_maxsize, when set). Nothing is lost: every frame
    is served once the loop runs."""
    frame_bytes = 256 << 10                      # the shim's TARGET_FRAME_BYTES
    with ServerThread() as st:
        held, release = threading.Event(), threading.Event()
        st.loop.call_soon_threadsafe(lambda: (held.set(), release.wait(60)))
        assert held.wait(5)
        p = Peer(st.endpoint)
        try:
            p.sock.setsockopt(zmq.SNDHWM, 1)
            pushed = refused = 0
            # Write until the link stays full for half a second, or far past any
            # reasonable bound (the old unbounded buffer took everything).
            while refused < 50 and pushed * frame_bytes < (256 << 20):
                try:
                    p.sock.send(schema.encode([schema.STATS, pushed, b"x" * frame_bytes]), zmq.NOBLOCK)
                except zmq.Again:
                    refused += 1
                    time.sleep(0.01)
                    continue
                pushed += 1
                refused = 0
            release.set()
            assert pushed * frame_bytes <= (32 << 20), f"{pushed} frames of 256 KiB taken while the loop was busy"
            deadline = time.monotonic() + 30
            answered = set()
            while len(answered) < pushed:
                left = deadline - time.monotonic()
                assert left > 0, f"{pushed - len(answered)} of {pushed} frames not served after the loop ran"
                reply = p.recv(left)
                assert reply[0] == schema.STATS_REPLY, reply
                answered.add(reply[1])
            assert answered == set(range(pushed))
        finally:
            release.set()
            p.close()


def test_a_message_over_the_socket_limit_drops_only_that_peer_and_is_counted(caplog):
    """MAXMSGSIZE is max_frame_bytes plus a small envelope: a frame of exactly
    max_frame_bytes is served, a bigger message makes ZeroMQ drop the sender's
    connection before buffering it (counted and logged); other clients go on."""
    caplog.set_level(logging.INFO, logger="kafkad.ipc")
    with ServerThread(max_frame_bytes=4096) as st:
        limit = st.server.max_message_bytes
        assert 4096 < limit <= 4096 + (64 << 10)
        good, bad = Peer(st.endpoint), Peer(st.endpoint)
        try:
            good.register()
            pad = 0
            while len(schema.encode([schema.SEND, good.sid, [entry(0, b"x" * pad)]])) < 4096:
                pad += 1
            maximal = schema.encode([schema.SEND, good.sid, [entry(0, b"x" * pad)]])
            assert len(maximal) == 4096
            good.send(maximal)
            assert good.recv()[:3] == [schema.ACK, good.sid, [0]]
            bad.send(b"\x91" + b"\x00" * limit)                 # one byte over the socket's limit
            deadline = time.monotonic() + 5
            while st.call(st.server.stats)["peers_disconnected"] < 1:
                assert time.monotonic() < deadline, "the oversized sender was not disconnected"
                time.sleep(0.01)
            stats = st.call(st.server.stats)
            assert stats["bad_frames_total"] == 0 and stats["frames_in"] == 2   # it never reached the reader
            good.send([schema.SEND, good.sid, [entry(1)]])
            assert good.recv()[:3] == [schema.ACK, good.sid, [1]]
            assert [v for _, _, _, v in st.producer.messages()] == [b"x" * pad, b"v"]
        finally:
            good.close()
            bad.close()
    assert "client connection(s) closed" in caplog.text


def test_hostile_flood_does_not_harm_a_good_client(server):
    """A raw socket floods garbage while a shim producer sends; the producer is unaffected."""
    import client_shim

    bad = Peer(server.endpoint)
    try:
        for i in range(3000):
            bad.send(b"\x93garbage" + i.to_bytes(4, "big"))
        good = client_shim.SimpleProducer(client_shim.DaemonClient(server.endpoint), random_start=False)
        results = [good.send_messages("t", b"m%d" % i) for i in range(30)]
        assert all(r[0].error == 0 for r in results)
        assert [v for _, _, _, v in server.producer.messages()] == [b"m%d" % i for i in range(30)]
        good.stop()
        stats = server.server.stats()
        assert stats["bad_frames_total"] == 3000
        assert stats["error_replies_suppressed"] > 0     # the flooder's error budget ran out
    finally:
        bad.close()


def test_unregister_forgets_the_session(server, peer):
    peer.register()
    peer.send([schema.UNREGISTER, 4, peer.sid])
    assert peer.recv() == [schema.UNREGISTERED, 4, 0]
    peer.send([schema.SEND, peer.sid, [entry(0)]])
    reply = peer.recv()
    assert reply[0] == schema.ERROR and reply[2] == schema.E_UNKNOWN_SESSION and reply[4] == peer.sid


def test_too_many_sessions_evicts_an_idle_one_or_refuses():
    with ServerThread(max_sessions=1) as st:
        st.producer.hold = True
        a, b, c = Peer(st.endpoint), Peer(st.endpoint), Peer(st.endpoint)
        try:
            a.register()
            b.register()                                   # a was idle: evicted
            assert st.server.stats()["sessions_evicted"] == 1
            b.send([schema.SEND, b.sid, [entry(0)]])       # b now has a message in flight
            st.producer.wait_messages(1)
            c.send([schema.REGISTER, 1, 1, c.sid, 0, SETTINGS])
            assert c.recv()[2] == schema.E_TOO_MANY_SESSIONS
        finally:
            for p in (a, b, c):
                p.close()


def test_metadata_and_stats(server, peer):
    peer.send([schema.METADATA, 8, "t"])
    assert peer.recv() == [schema.PARTITIONS, 8, 0, [0, 1, 2]]
    peer.send([schema.STATS, 9])
    kind, rid, data = peer.recv()
    assert (kind, rid, data["answer"]) == (schema.STATS_REPLY, 9, 42)
    assert data["ipc"]["frames_in"] == 2


def test_partition_changes_go_to_the_peers_that_asked_about_the_topic(server):
    asked_t, asked_u, gone = Peer(server.endpoint), Peer(server.endpoint), Peer(server.endpoint)
    try:
        for p, topic in ((asked_t, "t"), (asked_u, "u"), (gone, "t")):
            p.send([schema.METADATA, 1, topic])
            assert p.recv()[0] == schema.PARTITIONS
        assert server.call(server.server.stats)["watched_topics"] == 2
        gone.close()
        deadline = time.monotonic() + 5
        while server.call(server.server.stats)["peers_disconnected"] < 1:
            assert time.monotonic() < deadline, "the server never saw the peer go"
            time.sleep(0.01)
        server.call(server.server.on_partitions_changed, [("t", 0, [3, 0, 1, 2])])
        assert asked_t.recv() == [schema.PARTITIONS_CHANGED, "t", 0, [0, 1, 2, 3]]
        assert asked_u.quiet()
        server.call(server.server.on_partitions_changed, [("u", 3, [])])      # the topic is gone
        assert asked_u.recv() == [schema.PARTITIONS_CHANGED, "u", 3, []]
        st = server.call(server.server.stats)
        assert st["partition_changes_sent"] == 2         # not to the peer that is gone ...
        assert server.call(lambda: {t: len(p) for t, p in server.server._watchers.items()}) == {
            "t": 1, "u": 1}                              # ... which is forgotten
    finally:
        asked_t.close()
        asked_u.close()


def test_peers_watching_topics_are_bounded(server, monkeypatch):
    import kafkad.ipc.server as srv

    monkeypatch.setattr(srv, "_MAX_WATCHERS_PER_TOPIC", 2)
    monkeypatch.setattr(srv, "_MAX_WATCHED_TOPICS", 2)
    s = server.server
    for peer in (b"p1", b"p2", b"p3"):
        server.call(s._watch, "t", peer)
    server.call(s._watch, "t", b"p2")                # asked again: the most recent
    assert list(s._watchers["t"]) == [b"p3", b"p2"]
    server.call(s._watch, "u", b"p1")
    server.call(s._watch, "v", b"p1")                # a third topic pushes out the oldest
    assert list(s._watchers) == ["u", "v"]


# --- binding ------------------------------------------------------------------------


def test_socket_file_mode_and_group(tmp_path):
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    with ServerThread(socket_mode=0o600, socket_group=group) as st:
        st_ = os.stat(st.endpoint[len("ipc://"):])
        assert stat.S_ISSOCK(st_.st_mode)
        assert stat.S_IMODE(st_.st_mode) == 0o600
        assert st_.st_gid == os.getgid()
    with ServerThread(socket_mode=0o666) as st:
        assert stat.S_IMODE(os.stat(st.endpoint[len("ipc://"):]).st_mode) == 0o666


def test_socket_file_permissions_keep_other_users_out():
    """Access is governed by the socket file: a user without write permission cannot connect."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the client as another user (uid 65534)")
    import shutil
    import subprocess

    # Not sys.executable: uid 65534 may be unable to reach it (this venv's
    # interpreter can live under a home directory of mode 0700).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip(f"no python3 in /usr/bin or /bin to run the probe as uid 65534, which may not "
                    f"reach this interpreter ({os.path.realpath(sys.executable)})")
    with ServerThread(socket_mode=0o600) as st:
        path = st.endpoint[len("ipc://"):]
        os.chmod(os.path.dirname(path), 0o755)
        probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                 "try:\n s.connect(sys.argv[1]); print('connected')\n"
                 "except PermissionError: print('denied')\n")

        def as_nobody():
            os.setgid(65534)
            os.setuid(65534)

        out = subprocess.run([python, "-c", probe, path], preexec_fn=as_nobody,
                             capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() == "denied", out.stderr
        os.chmod(path, 0o666)
        out = subprocess.run([python, "-c", probe, path], preexec_fn=as_nobody,
                             capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() == "connected", out.stderr


def test_stale_socket_file_is_replaced(tmp_path):
    st = ServerThread()
    path = st.endpoint[len("ipc://"):]
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)                 # a socket file nobody listens on: what a crash leaves
    dead.close()
    with st:
        p = Peer(st.endpoint)
        try:
            p.send([schema.HELLO, 1, 1])
            assert p.recv()[0] == schema.HELLO_OK
        finally:
            p.close()
    assert not os.path.exists(path)            # close() removes the file it created


def test_a_live_daemon_on_the_endpoint_is_not_replaced(server):
    second = ServerThread(endpoint=server.endpoint)
    with pytest.raises(EndpointInUse, match="another kafkad is serving"):
        second.start()
    second.stop()
    p = Peer(server.endpoint)                  # the first one still serves
    try:
        p.send([schema.HELLO, 1, 1])
        assert p.recv()[0] == schema.HELLO_OK
    finally:
        p.close()


def test_a_regular_file_on_the_path_is_not_removed(tmp_path):
    path = tmp_path / "k.sock"
    path.write_text("precious")
    st = ServerThread(endpoint=f"ipc://{path}")
    with pytest.raises(EndpointInUse, match="not a socket"):
        st.start()
    st.stop()
    assert path.read_text() == "precious"


def test_tcp_endpoint_in_use_raises_endpoint_in_use():
    from tests.support.net import free_port

    port = free_port()
    with ServerThread(endpoint=f"tcp://127.0.0.1:{port}"):
        second = ServerThread(endpoint=f"tcp://127.0.0.1:{port}")
        with pytest.raises(EndpointInUse, match="already in use"):
            second.start()
        second.stop()


def test_repr_shows_state():
    srv = IpcServer(ServerThread().cfg, FakeProducer(), stats_provider=dict)
    assert "new" in repr(srv)


def test_unknown_socket_group_is_a_clear_start_error():
    st = ServerThread(socket_group="no-such-group-kafkad-test")
    with pytest.raises(ValueError, match="socket_group: no group named 'no-such-group-kafkad-test'"):
        st.start()
    st.stop()
    assert not os.path.exists(st.endpoint[len("ipc://"):])    # nothing left bound behind


class _PipeFullFor:
    """Wraps the server's ROUTER: sends matching `blocked(frame)` fail with zmq.Again
    (a peer's pipe is full) until `open()`; everything else goes to the real socket."""

    def __init__(self, sock, blocked):
        self._sock, self._blocked, self.refused = sock, blocked, 0
        self._peer = None

    def open(self):
        self._blocked = lambda frame: False

    def send(self, data, flags=0):
        # The server sends (peer, SNDMORE) then (frame): the peer part is held
        # until the frame shows whether this message meets a "full pipe".
        if flags & zmq.SNDMORE:
            self._peer = data
            return None
        peer, self._peer = self._peer, None
        if self._blocked(msgpack.unpackb(data, raw=False, strict_map_key=False)):
            self.refused += 1
            raise zmq.Again()
        self._sock.send(peer, flags | zmq.SNDMORE)
        return self._sock.send(data, flags)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _pipe_full_for(st, blocked) -> _PipeFullFor:
    def install():
        st.server._sock = _PipeFullFor(st.server._sock, blocked)
        return st.server._sock
    return st.call(install)


def test_a_session_with_answers_not_yet_taken_is_not_evicted():
    """Evicting a session drops the ACKs its shim has not taken yet (the shim would then
    replay delivered entries): such a session is kept, and the new REGISTER refused."""
    with ServerThread(max_sessions=1) as st:
        a, c = Peer(st.endpoint), Peer(st.endpoint)
        try:
            a.register()
            wrapper = _pipe_full_for(st, lambda f: f[0] == schema.ACK and f[1] == a.sid)
            a.send([schema.SEND, a.sid, [entry(0)]])
            st.producer.wait_messages(1)
            deadline = time.monotonic() + 5
            while not st.call(lambda: bool(st.server._sessions[a.sid].backlog)):
                assert time.monotonic() < deadline, "the ACK never met the full pipe"
                time.sleep(0.005)
            c.send([schema.REGISTER, 1, 1, c.sid, 0, SETTINGS])
            reply = c.recv()
            assert reply[0] == schema.ERROR and reply[2] == schema.E_TOO_MANY_SESSIONS, reply
            assert "none idle" in reply[3]
            assert st.server.stats()["sessions_evicted"] == 0
            st.call(wrapper.open)
            assert a.recv() == [schema.ACK, a.sid, [0]]
        finally:
            a.close()
            c.close()


def test_a_sessions_replies_keep_their_order_behind_a_full_pipe():
    """A reply made while older replies of the same session wait for a full pipe
    queues behind them instead of overtaking them."""
    with ServerThread() as st:
        a = Peer(st.endpoint)
        try:
            a.register()
            wrapper = _pipe_full_for(st, lambda f: f[0] == schema.ACK and f[2] == [0])
            a.send([schema.SEND, a.sid, [entry(0)]])
            st.producer.wait_messages(1)
            backlog = lambda: len(st.server._sessions[a.sid].backlog)
            deadline = time.monotonic() + 5
            while not st.call(backlog):
                assert time.monotonic() < deadline, "the ACK never met the full pipe"
                time.sleep(0.005)
            a.send([schema.SEND, a.sid, [entry(1)]])
            st.producer.wait_messages(2)
            # The second ACK either joins the backlog or (the old way) leaves at once.
            while st.call(backlog) < 2 and a.quiet(0.005):
                assert time.monotonic() < deadline, "the second ACK was never made"
            st.call(wrapper.open)
            assert [a.recv(), a.recv()] == [[schema.ACK, a.sid, [0]], [schema.ACK, a.sid, [1]]]
        finally:
            a.close()


def test_a_reader_turn_yields_to_the_loop_while_frames_keep_coming(monkeypatch):
    """Senders that keep the socket full must not hold the loop (and with it the
    broker connections' answers) until they pause: a reader turn ends after
    _READ_TURN_S, here 0, so after one frame, and the next turn reads on."""
    import kafkad.ipc.server as server_module

    monkeypatch.setattr(server_module, "_READ_TURN_S", 0.0)
    with ServerThread() as st:
        a = Peer(st.endpoint)
        try:
            a.register()
            turns = []
            st.producer.hold_polls = lambda: turns.append(st.server._c["frames_in"])
            busy = threading.Event()
            # Hold the loop while five frames queue up in the socket.
            blocker = threading.Thread(target=st.call, args=(lambda: (busy.set(), time.sleep(0.5)),))
            blocker.start()
            assert busy.wait(5)
            for i in range(5):
                a.send([schema.SEND, a.sid, [entry(i)]])
            blocker.join()
            st.producer.wait_messages(5)
            start = turns[0]
            assert [b - a_ for a_, b in zip(turns, turns[1:] + [start + 5])] == [1] * 5, turns
        finally:
            a.close()


def _unregister_with_an_ack_stuck(st, peer):
    """`peer` unregisters with one message in flight, whose ACK then meets a full pipe.

    Returns the pipe wrapper (open it to let the ACK through) and a deadline.
    """
    peer.register()
    st.producer.hold = True
    peer.send([schema.SEND, peer.sid, [entry(0)]])
    st.producer.wait_messages(1)
    peer.send([schema.UNREGISTER, 7, peer.sid])
    assert peer.recv() == [schema.UNREGISTERED, 7, 1]
    wrapper = _pipe_full_for(st, lambda f: f[0] == schema.ACK)
    st.call(st.producer.release)
    deadline = time.monotonic() + 5
    while not st.call(lambda: bool(st.server._sessions[peer.sid].backlog)):
        assert time.monotonic() < deadline, "the ACK never met the full pipe"
        time.sleep(0.005)
    return wrapper, deadline


def test_an_unregistered_session_is_kept_until_its_last_ack_has_left():
    """A producer that unregistered with a message in flight still gets its ACK when
    that ACK first meets a full pipe: the session (which holds the waiting frame) is
    forgotten only once the frame has left."""
    with ServerThread() as st:
        a = Peer(st.endpoint)
        try:
            wrapper, deadline = _unregister_with_an_ack_stuck(st, a)
            assert st.call(lambda: a.sid in st.server._sessions)
            st.call(wrapper.open)
            assert a.recv() == [schema.ACK, a.sid, [0]]
            while st.call(lambda: a.sid in st.server._sessions):
                assert time.monotonic() < deadline + 5, "the session was never forgotten"
                time.sleep(0.005)
            assert a.quiet()        # the ACK came once
        finally:
            a.close()


def test_answers_waiting_for_a_peer_that_is_gone_are_dropped_and_the_session_forgotten():
    """A backlog for a peer that went away is never taken: it is dropped (counted as
    peer_gone) and an unregistered session holding it is forgotten, not kept for good."""
    with ServerThread() as st:
        a = Peer(st.endpoint)
        try:
            wrapper, deadline = _unregister_with_an_ack_stuck(st, a)
        finally:
            a.close()
        while st.call(st.server.stats)["peers_disconnected"] < 1:
            assert time.monotonic() < deadline, "the server never saw the peer go"
            time.sleep(0.01)
        gone_before = st.call(st.server.stats)["replies_dropped_peer_gone"]
        st.call(wrapper.open)                   # the retry now meets the departed peer
        while st.call(lambda: a.sid in st.server._sessions):
            assert time.monotonic() < deadline + 5, "the session was kept for good"
            time.sleep(0.01)
        assert st.call(st.server.stats)["replies_dropped_peer_gone"] > gone_before


def test_a_sync_result_that_meets_a_full_pipe_is_sent_later():
    """A sync RESULT goes to a thread's own socket, which has no session backlog:
    on a full pipe it waits for that peer instead of being dropped (the caller would
    wait for its timeout)."""
    with ServerThread() as st:
        peer = Peer(st.endpoint)
        try:
            peer.register()
            wrapper = _pipe_full_for(st, lambda f: f[0] == schema.RESULT)
            peer.send([schema.SEND_SYNC, peer.sid, 5, "t", 0, -1, None, [b"x"]])
            st.producer.wait_messages(1)
            deadline = time.monotonic() + 5
            while wrapper.refused == 0:
                assert time.monotonic() < deadline, "the RESULT never met the full pipe"
                time.sleep(0.005)
            assert peer.quiet()
            st.call(wrapper.open)
            assert peer.recv() == [schema.RESULT, 5, 0, 0, 0]
        finally:
            peer.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback (::1) to bind")
def test_an_ipv6_loopback_endpoint_serves_shims():
    """check-config takes tcp://[::1]:PORT: the daemon must serve it and the shim reach it."""
    import client_shim

    with socket.socket(socket.AF_INET6) as s:        # a free port on ::1
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    with ServerThread(endpoint=f"tcp://[::1]:{port}") as st:
        assert client_shim.DaemonClient(st.endpoint, timeout=5).ping()["version"] == 1
        r = client_shim.Producer(client_shim.DaemonClient(st.endpoint, timeout=5)).send_messages("t", 0, b"v6")
        assert r[0].error == 0

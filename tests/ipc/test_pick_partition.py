"""Negative partitions (kafkad picks) on the link: the `pick` answer, and merging without reordering.

Two negative partition values may stand for the same partition, so whoever
merges a frame's entries per (topic, partition) must not merge past one:
A1 B1 A2, with A and B landing in one partition, must not become A1 A2 B1.
"""

from __future__ import annotations

import collections

import pytest

from client_shim import link as shim_link
from client_shim import schema
from tests.ipc.fakes import FakeProducer, ServerThread
from tests.ipc.test_server import Peer, entry
from tests.ipc.test_spool_wiring import acked, open_spool


def test_group_key_merges_only_runs_once_a_topic_has_a_negative_partition():
    latest: dict = {}
    items = [("t", 2), ("u", 1), ("t", 0), ("t", 2), ("t", -5), ("t", -5), ("u", 1), ("t", -7),
             ("t", -5), ("t", 2), ("t", 2), ("u", -1), ("u", 1)]
    keys = [schema.group_key(latest, t, p, i) for i, (t, p) in enumerate(items)]
    # before "t" has a negative one: per (topic, partition), as always
    assert keys[0] == keys[3] == ("t", 2) and keys[1] == keys[6] == ("u", 1) and keys[2] == ("t", 0)
    # then runs only: -5 -5 merge, -7 is new, -5 again is a new group, so is 2 (not ("t", 2))
    assert keys[4] == keys[5] != keys[8]
    assert len({keys[4], keys[7], keys[8], keys[9]}) == 4 and keys[9] == keys[10] != ("t", 2)
    assert keys[11] != keys[12] != ("u", 1)


def _submitted(subs):
    return [(s.partition, s.values) for s in subs]


A, B = -1 - 7, -1 - 10      # both partition 1 of 3


def _frame():
    return [entry(0, b"a1", partition=A), entry(1, b"b1", partition=B), entry(2, b"a2", partition=A),
            entry(3, b"c1", partition=1), entry(4, b"c2", partition=1)]


def test_the_send_path_keeps_a_partitions_order_across_negative_values(server, peer):
    peer.register()
    peer.send([schema.SEND, peer.sid, _frame()])
    got = []
    while len(got) < 5:
        got += peer.recv()[2]
    assert _submitted(server.producer.submissions) == [
        (A, [b"a1"]), (B, [b"b1"]), (A, [b"a2"]), (1, [b"c1", b"c2"])]


def test_the_shims_send_groups_frame_keeps_it_too(server, peer):
    entries = collections.deque(tuple(e[:4]) + (e[4],) + tuple(e[5]) for e in _frame())
    frame, taken = shim_link._groups_frame(peer.sid, entries)
    assert taken == 5
    groups = schema.decode_request(frame, 1 << 20)[1][1]
    assert [(g[1], g[6]) for g in groups] == [(A, [b"a1"]), (B, [b"b1"]), (A, [b"a2"]), (1, [b"c1", b"c2"])]
    peer.register()
    peer.sock.send(frame)
    got = []
    while len(got) < 5:
        got += peer.recv()[2]
    assert _submitted(server.producer.submissions) == [
        (A, [b"a1"]), (B, [b"b1"]), (A, [b"a2"]), (1, [b"c1", b"c2"])]


def test_the_spool_path_keeps_it_too(tmp_path):
    sp = open_spool(tmp_path / "spool")
    st = ServerThread(spool=sp)
    st.producer.hold = True             # nothing delivered: every spool entry stays
    st.start()
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, _frame()])
        assert acked(peer, 5) == [0, 1, 2, 3, 4]
        st.producer.wait_messages(5)
        assert _submitted(st.producer.submissions) == [
            (A, [b"a1"]), (B, [b"b1"]), (A, [b"a2"]), (1, [b"c1", b"c2"])]
    finally:
        peer.close()
        st.stop()
        sp.close()
    with open_spool(tmp_path / "spool") as again:     # what a restarted daemon replays, in order
        stored = [(e.partition, e.values) for _, e in again.pending()]
    assert [v for _, vs in stored for v in vs] == [b"a1", b"b1", b"a2", b"c1", b"c2"]
    assert [p for p, vs in stored for _ in vs] == [A, B, A, 1, 1]


class _NoBroker(FakeProducer):
    """A producer whose cluster cannot be reached (or, with `lasting`, says the topic is gone)."""

    lasting = False

    def partitions_for(self, topic):
        return None

    async def fetch_partitions(self, topic, timeout):
        return (3, []) if self.lasting else (8, [])

    def topic_failed(self, topic):
        return self.lasting


@pytest.mark.parametrize("lasting,pick", [(False, True), (True, False)])
def test_metadata_offers_to_pick_unless_the_error_is_lasting(lasting, pick):
    producer = _NoBroker()
    producer.lasting = lasting
    st = ServerThread(producer=producer).start()
    peer = Peer(st.endpoint)
    try:
        peer.send([schema.METADATA, 5, "t"])
        assert peer.recv() == [schema.PARTITIONS, 5, 3 if lasting else 8, [], pick]
        peer.send([schema.HELLO, schema.SCHEMA_VERSION, 1])
        peer.recv()
        peer.register()
        peer.send([schema.SEND_SYNC, peer.sid, 9, "t", -1 - 4, 1_700_000_000_000, None, [b"s"]])
        kind, rid, partition, error, _ = peer.recv()
        # the fake producer "picks" nothing: the RESULT keeps the partition it was given
        assert (kind, rid, partition, error) == (schema.RESULT, 9, -5, 0)
    finally:
        peer.close()
        st.stop()


def test_a_refused_group_holds_back_the_later_groups_of_its_topic(server, peer):
    """Refused (a full queue), a1 must not be overtaken by b1 or a2 taken behind it:
    either may land in a1's partition. A group of another topic is taken as before."""
    peer.register()
    server.producer.refuse = 1
    frame = _frame()[:3] + [entry(3, b"other", topic="u", partition=0)]
    peer.send([schema.SEND, peer.sid, frame])
    replies = [peer.recv(), peer.recv()]
    assert sorted(r[0] for r in replies) == [schema.ACK, schema.REJECTED]
    rejected = next(r for r in replies if r[0] == schema.REJECTED)
    assert rejected[2] == 0 and rejected[3] == schema.E_QUEUE_FULL
    assert next(r for r in replies if r[0] == schema.ACK)[2] == [3]
    peer.register(rid=2)
    peer.send([schema.SEND, peer.sid, frame[:3]])      # the shim's replay
    got = []
    while len(got) < 3:
        got += peer.recv()[2]
    assert [s.values for s in server.producer.submissions] == [[b"other"], [b"a1"], [b"b1"], [b"a2"]]


def test_failures_of_many_picked_submissions_are_logged_together(server, peer, caplog):
    import logging

    server.producer.hold = True
    server.producer.fail_with = 7
    peer.register()
    peer.send([schema.SEND, peer.sid, [entry(i, b"m%d" % i, partition=-1 - i) for i in range(5)]])
    server.producer.wait_messages(5)
    with caplog.at_level(logging.ERROR, logger="kafkad.ipc"):
        server.producer.release()
        got = []
        while len(got) < 5:
            reply = peer.recv()
            assert reply[0] == schema.FAILED
            got += [e[0] for e in reply[2]]
    lines = [r.getMessage() for r in caplog.records if "failed with" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "5 message(s)" in lines[0] and "t (partition not picked yet)" in lines[0]

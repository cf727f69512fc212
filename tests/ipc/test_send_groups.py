"""SEND_GROUPS: a frame's async entries as columns per (topic, partition).

Checked here: the schema's checks on hostile groups; the daemon's direct path
(entries that continue the sequence become one Submission per group as sent)
and its fallback to the SEND rules for everything else (replays, gaps,
overlaps, a group per partition twice, a spool); outcomes mapped back onto
one-message entries; and the shim's packing, which must give back exactly the
entries it was handed.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import msgpack
import pytest

from client_shim import schema
from client_shim.link import _groups_frame
from kafkad.engine.types import Outcome
from kafkad.ipc.server import _chain_end, _entries_of_groups
from tests.ipc.fakes import ServerThread
from tests.ipc.test_server import SETTINGS, Peer
from tests.ipc.test_spool_wiring import acked, open_spool

TS = 1_700_000_000_000
SID = b"s" * 16


def group(firsts, values=None, topic="t", partition=0, counts=None, keys=None, ts=TS):
    if values is None:
        values = [b"v%d" % f for f in firsts]
    return [topic, partition, ts, list(firsts), counts, keys, values]


def send_groups(peer, groups, sid=None):
    peer.send([schema.SEND_GROUPS, sid or peer.sid, groups])


def all_acked(peer, n):
    """The seqs acknowledged until `n` of them arrived (other replies fail the test)."""
    return acked(peer, n)


# --- the schema ------------------------------------------------------------------------

def decode(groups):
    return schema.decode_request(schema.encode([schema.SEND_GROUPS, SID, groups]), 1 << 20)


def test_a_well_formed_frame_decodes_with_extra_fields_ignored():
    g = group([0, 2], counts=[2, 1], keys=[b"k", None, b"k"], values=[b"a", b"b", b"c"]) + ["later"]
    kind, (sid, groups) = decode([g, group([5])])
    assert (kind, sid) == (schema.SEND_GROUPS, SID)
    assert groups[0][:7] == g[:7] and groups[1] == group([5])


BAD_GROUPS = [
    ("not a list", schema.E_MALFORMED),
    ([], schema.E_MALFORMED),
    (["t", 0, TS, [0], None, None], schema.E_MALFORMED),                    # six fields
    ([group([0], topic="bad topic!")], schema.E_INVALID),
    ([group([0], topic=["t"])], schema.E_INVALID),                         # unhashable: no TypeError
    ([group([0], topic={"t": 1})], schema.E_INVALID),
    ([group([0], partition=schema.PICK_PARTITION_MIN - 1)], schema.E_MALFORMED),
    ([group([0], partition=2**31)], schema.E_MALFORMED),
    ([group([0], ts=-2)], schema.E_MALFORMED),
    ([group([0], ts=True)], schema.E_MALFORMED),
    ([["t", 0, TS, 0, None, None, [b"v"]]], schema.E_MALFORMED),             # firsts not a list
    ([["t", 0, TS, [0], None, None, b"v"]], schema.E_MALFORMED),             # values not a list
    ([group([], values=[])], schema.E_INVALID),
    ([group([0], values=["text"])], schema.E_MALFORMED),
    ([group([0], values=[7])], schema.E_MALFORMED),
    ([group([True], values=[b"v"])], schema.E_MALFORMED),                   # a bool is no seq
    ([group([0.0], values=[b"v"])], schema.E_MALFORMED),
    ([group(["0"], values=[b"v"])], schema.E_MALFORMED),
    ([group([-1])], schema.E_MALFORMED),
    ([group([schema.MAX_SEQ + 1])], schema.E_MALFORMED),
    ([group([schema.MAX_SEQ - 1], counts=[3], values=[b"a"] * 3)], schema.E_MALFORMED),  # runs past MAX_SEQ
    ([group([3, 2])], schema.E_MALFORMED),                                  # not increasing
    ([group([2, 2])], schema.E_MALFORMED),                                  # repeated
    ([group([0, 1], values=[b"a"])], schema.E_MALFORMED),                   # counts nil: one value each
    ([group([0], counts=[1, 1], values=[b"a", b"b"])], schema.E_MALFORMED),
    ([group([0, 1], counts=[1, 0], values=[b"a"])], schema.E_MALFORMED),
    ([group([0, 1], counts=[1, -1], values=[b"a"])], schema.E_MALFORMED),
    ([group([0, 1], counts=[1, 2], values=[b"a", b"b"])], schema.E_MALFORMED),   # sum != values
    ([group([0], counts=[True], values=[b"a"])], schema.E_MALFORMED),
    ([group([0], counts=5, values=[b"a"])], schema.E_MALFORMED),
    ([group([0], keys=[b"k", b"k"])], schema.E_MALFORMED),
    ([group([0], keys=[1])], schema.E_MALFORMED),
    ([group([0], keys=b"k")], schema.E_MALFORMED),
    ([group([0]), "not a group"], schema.E_MALFORMED),
]


@pytest.mark.parametrize("groups,code", BAD_GROUPS, ids=[str(i) for i in range(len(BAD_GROUPS))])
def test_hostile_groups_are_refused_with_the_right_code(groups, code):
    with pytest.raises(schema.SchemaError) as err:
        decode(groups)
    assert err.value.code == code


@pytest.mark.parametrize("kind", [schema.SEND, schema.SEND_GROUPS])
def test_an_unhashable_topic_is_a_bad_frame_not_a_crash_of_the_reader(server, peer, kind):
    """A list as topic once raised TypeError out of the checks (a set lookup), past
    the reader's handling: now an ERROR reply, and the reader goes on."""
    peer.register()
    if kind == schema.SEND:
        peer.send([schema.SEND, peer.sid, [[0, ["t"], 0, TS, None, [b"v"]]]])
    else:
        send_groups(peer, [group([0], topic=["t"])])
    reply = peer.recv()
    assert reply[0] == schema.ERROR and reply[2] == schema.E_INVALID
    send_groups(peer, [group([0])])
    assert peer.recv()[:3] == [schema.ACK, peer.sid, [0]]


def test_a_hostile_group_frame_gets_an_error_reply_and_a_counter(server, peer):
    peer.register()
    send_groups(peer, [group([0], values=["text"])])
    reply = peer.recv()
    assert reply[0] == schema.ERROR and reply[2] == schema.E_MALFORMED
    assert server.server.stats()["bad_frames"] == {"malformed": 1}
    assert server.producer.submissions == []
    stranger = os.urandom(16)
    send_groups(peer, [group([0])], sid=stranger)
    kind, _, code, _, sid = peer.recv()
    assert (kind, code, sid) == (schema.ERROR, schema.E_UNKNOWN_SESSION, stranger)


# --- the daemon: direct path and fallback ---------------------------------------------

def test_chain_end_accepts_only_an_exact_tiling_from_next_seq():
    assert _chain_end([group([0, 3]), group([1, 4], partition=1), group([2], partition=2)], 0) == 5
    assert _chain_end([group([7, 9], counts=[2, 1], values=[b"a"] * 3)], 7) == 10
    assert _chain_end([group([0, 3]), group([1, 2], partition=1)], 0) == 4
    assert _chain_end([group([1, 2])], 0) is None                          # starts past next_seq
    assert _chain_end([group([0, 2])], 0) is None                          # a hole
    assert _chain_end([group([0, 1]), group([1, 2], partition=1)], 0) is None   # seq 1 twice
    assert _chain_end([group([0, 2]), group([1], partition=0)], 0) is None  # one partition twice
    assert _chain_end([group([0, 1], counts=[2, 1], values=[b"a"] * 3)], 0) is None   # overlap
    assert _chain_end([group([0, 3], counts=[2, 1], values=[b"a"] * 3)], 0) is None   # a hole


def test_groups_become_one_submission_each_and_every_entry_is_acknowledged(server, peer):
    peer.register(first_seq=10)
    send_groups(peer, [group([10, 12, 13], values=[b"a", b"c", b"d"], partition=1, ts=TS + 1),
                       group([11, 14], counts=[1, 2], keys=[None, b"k", b"k"], values=[b"b", b"e", b"f"],
                             partition=2)])
    assert all_acked(peer, 5) == [10, 11, 12, 13, 14]
    subs = server.producer.submissions
    assert [(s.partition, s.keys, s.values, s.timestamp_ms) for s in subs] == [
        (1, [None] * 3, [b"a", b"c", b"d"], TS + 1), (2, [None, b"k", b"k"], [b"b", b"e", b"f"], TS)]
    stats = server.server.stats()
    assert (stats["send_groups_frames"], stats["send_groups_direct"], stats["messages_in"]) == (1, 1, 6)
    assert peer.register(rid=2)[3] == 16            # next_seq went past the whole frame


def test_a_replay_falls_back_to_the_send_rules(server, peer):
    server.producer.hold = True
    peer.register()
    send_groups(peer, [group([0, 2]), group([1], partition=1)])
    server.producer.wait_messages(3)
    server.producer.release()
    assert all_acked(peer, 3) == [0, 1, 2]
    server.producer.hold = True
    send_groups(peer, [group([3])])                 # in flight when the replay comes
    server.producer.wait_messages(4)
    send_groups(peer, [group([1, 3, 4]), group([2], partition=1)])   # 1, 2 finished; 3 in flight; 4 new
    assert sorted(peer.recv()[2]) == [1, 2]         # finished ones acknowledged again
    server.producer.release(after=5)
    assert all_acked(peer, 2) == [3, 4]
    assert [v for *_, v in server.producer.messages()] == [b"v0", b"v2", b"v1", b"v3", b"v4"]
    stats = server.server.stats()
    assert (stats["send_groups_frames"], stats["send_groups_direct"], stats["duplicates_dropped"]) == (3, 2, 3)


def test_a_gap_is_refused_from_next_seq(server, peer):
    peer.register(first_seq=5)
    send_groups(peer, [group([6, 7])])
    kind, _, from_seq, code, _ = peer.recv()
    assert (kind, from_seq, code) == (schema.REJECTED, 5, schema.E_OUT_OF_ORDER)
    # A frame whose entries start right but have a hole: what precedes the hole is
    # taken, and the refusal names the next_seq the frame found (as for a SEND).
    send_groups(peer, [group([5, 8]), group([6], partition=1)])
    replies = [peer.recv(), peer.recv(), peer.recv()]
    assert [schema.REJECTED, peer.sid, 5, schema.E_OUT_OF_ORDER] in [r[:4] for r in replies]
    assert sorted(s for r in replies if r[0] == schema.ACK for s in r[2]) == [5, 6]
    assert [v for *_, v in server.producer.messages()] == [b"v5", b"v6"]
    assert peer.register(rid=2)[3] == 7


def test_one_partition_in_two_groups_keeps_seq_order(server, peer):
    """Two groups for one partition whose seqs interleave are not taken group by group
    (that would write 0, 2, 1, 3): the fallback merges them in seq order."""
    peer.register()
    send_groups(peer, [group([0, 2]), group([1, 3])])
    assert all_acked(peer, 4) == [0, 1, 2, 3]
    assert [v for *_, v in server.producer.messages()] == [b"v0", b"v1", b"v2", b"v3"]
    assert server.server.stats()["send_groups_direct"] == 0


def test_queue_full_refuses_one_group_and_the_replay_skips_what_was_taken(server, peer):
    peer.register()
    server.producer.refuse = 1                      # the first group (partition 0) is refused
    send_groups(peer, [group([0, 2], values=[b"p0-a", b"p0-b"]), group([1], values=[b"p1-a"], partition=1)])
    replies = [peer.recv(), peer.recv()]
    assert [schema.REJECTED, peer.sid, 0, schema.E_QUEUE_FULL] in [r[:4] for r in replies]
    assert [schema.ACK, peer.sid, [1]] in replies
    send_groups(peer, [group([0, 2], values=[b"p0-a", b"p0-b"]), group([1], values=[b"p1-a"], partition=1)])
    assert all_acked(peer, 3) == [0, 1, 2]          # 1 again: finished, acknowledged again
    got = server.producer.messages()
    assert [v for _, p, _, v in got if p == 0] == [b"p0-a", b"p0-b"]
    assert [v for _, p, _, v in got if p == 1] == [b"p1-a"]          # not taken twice
    assert peer.register(rid=3)[3] == 3


def test_the_session_share_counts_group_messages():
    """The per-session cap counts messages; a session with nothing in flight takes any
    one group (over the cap, it would be refused again at every replay), then no more."""
    with ServerThread(max_inflight_per_session=3) as st:
        st.producer.hold = True
        p = Peer(st.endpoint)
        try:
            p.register()
            send_groups(p, [group([0, 1, 2, 3])])           # 4 > 3, but nothing in flight
            st.producer.wait_messages(4)
            send_groups(p, [group([4])])
            kind, _, from_seq, code, _ = p.recv()
            assert (kind, from_seq, code) == (schema.REJECTED, 4, schema.E_QUEUE_FULL)
            assert [len(sub) for sub in st.producer.submissions] == [4]
            st.producer.release()
            assert all_acked(p, 4) == [0, 1, 2, 3]
            send_groups(p, [group([4])])                    # room again
            st.producer.wait_messages(5)
        finally:
            p.close()


def test_stopping_refuses_from_the_lowest_seq(server, peer):
    peer.register(first_seq=4)
    server.call(server.server.stop_accepting)
    send_groups(peer, [group([5]), group([4], partition=1)])
    assert peer.recv()[:4] == [schema.REJECTED, peer.sid, 4, schema.E_STOPPING]
    assert server.producer.submissions == []


def test_outcomes_map_back_onto_one_message_entries(server, peer, caplog):
    server.producer.hold = True
    peer.register()
    send_groups(peer, [group(range(6))])
    server.producer.wait_messages(6)
    sub = server.producer.held.pop()
    assert sub.token.counts is None                 # one message per entry: no counts kept
    outs = [Outcome(sub.token, "t", 0, 0, 100, 2, 0), Outcome(sub.token, "t", 0, 7, -1, 0, 3),
            Outcome(sub.token, "t", 0, 0, 102, 1, 0)]
    with caplog.at_level("ERROR", logger="kafkad.ipc"):
        server.call(server.server.on_outcomes, outs)
        replies = [peer.recv(), peer.recv()]
    by_kind = {r[0]: r[2] for r in replies}
    assert sorted(by_kind[schema.ACK]) == [0, 1, 5]
    assert by_kind[schema.FAILED] == [[2, [[0, 1, 7]]], [3, [[0, 1, 7]]], [4, [[0, 1, 7]]]]
    assert "3 message(s)" in caplog.text and "failed with error 7" in caplog.text
    stats = server.server.stats()
    assert stats["async_inflight_messages"] == 0
    send_groups(peer, [group([3])])                 # a replay of a failed entry: reported again
    assert peer.recv() == [schema.FAILED, peer.sid, [[3, [[0, 1, 7]]]]]


def test_unknown_partition_fails_every_entry_of_the_group(server, peer):
    peer.register()
    send_groups(peer, [group([0, 2], partition=9), group([1], partition=1)])
    replies = {r[0]: r[2] for r in (peer.recv(), peer.recv())}
    assert replies[schema.FAILED] == [[0, [[0, 1, 3]]], [2, [[0, 1, 3]]]]
    assert replies[schema.ACK] == [1]
    assert peer.register(rid=2)[3] == 3


def test_unknown_partition_failures_are_counted(server, peer):
    peer.register()
    send_groups(peer, [group([0, 1], partition=9)])
    assert peer.recv()[0] == schema.FAILED
    assert server.producer.counted_failed == [("t", 2, 3)]
    assert server.server.stats()["messages_in"] == 2


BIG = b"x" * 2000


def test_a_record_too_large_fails_its_call_not_the_calls_merged_with_it(server, peer):
    """Five small calls, one with a record larger than any batch, three more: one group.

    The merged submission is refused with RecordTooLarge; only the call holding
    the record fails (MESSAGE_TOO_LARGE, logged and counted), the other calls are
    submitted without it, in order."""
    server.producer.record_cap = 1000
    peer.register()
    values = [b"a", b"b", b"c", b"d", b"e", b"f", BIG, b"g", b"h", b"i"]
    send_groups(peer, [group([0, 1, 2, 3, 4, 5, 7, 8, 9], counts=[1, 1, 1, 1, 1, 2, 1, 1, 1], values=values)])
    replies = {r[0]: r[2] for r in (peer.recv(), peer.recv())}
    assert replies[schema.FAILED] == [[5, [[0, 2, 10]]]]        # the call of b"f" and BIG
    assert sorted(replies[schema.ACK]) == [0, 1, 2, 3, 4, 7, 8, 9]
    assert [v for _, _, _, v in server.producer.messages()] == [b"a", b"b", b"c", b"d", b"e", b"g", b"h", b"i"]
    assert server.producer.counted_failed == [("t", 2, 10)]
    assert peer.register(rid=2)[3] == 10                       # every entry settled: next_seq past them


def test_a_call_too_large_among_refused_ones_is_reported_again_on_replay(server, peer):
    server.producer.record_cap = 1000
    server.producer.refuse = 1          # the rest of the group, after the split, is refused once
    peer.register()
    send_groups(peer, [group([0, 1, 2], values=[b"a", BIG, b"c"])])
    replies = {r[0]: r for r in (peer.recv(), peer.recv())}
    assert replies[schema.FAILED][2] == [[1, [[0, 1, 10]]]]
    assert replies[schema.REJECTED][2] == 0                        # replay from 0
    send_groups(peer, [group([0, 1, 2], values=[b"a", BIG, b"c"])])
    replies = {r[0]: r[2] for r in (peer.recv(), peer.recv())}
    assert replies[schema.FAILED] == [[1, [[0, 1, 10]]]]          # settled before: answered again
    assert sorted(replies[schema.ACK]) == [0, 2]
    assert [v for _, _, _, v in server.producer.messages()] == [b"a", b"c"]
    assert server.producer.counted_failed == [("t", 1, 10)]       # counted once


def test_with_a_spool_a_record_too_large_fails_its_call_unspooled(tmp_path):
    sp = open_spool(tmp_path / "spool")
    st = ServerThread(spool=sp)
    st.producer.record_cap = 1000
    st.producer.batch_cap = 1000
    st.start()
    p = Peer(st.endpoint)
    try:
        p.register()
        send_groups(p, [group([0, 1, 2, 3], values=[b"a", b"b", BIG, b"c"])])
        got = {}
        while sum(len(v) for v in got.values()) < 4:
            r = p.recv()
            got.setdefault(r[0], []).extend(r[2])
        assert got[schema.FAILED] == [[2, [[0, 1, 10]]]]
        assert sorted(got[schema.ACK]) == [0, 1, 3]
        st.producer.wait_messages(3)
        assert [v for _, _, _, v in st.producer.messages()] == [b"a", b"b", b"c"]
        assert sp.stats(0)["data_bytes"] < len(BIG), "the failed call was spooled"
        assert st.producer.counted_failed == [("t", 1, 10)]
    finally:
        p.close()
        st.stop()
        sp.close()


def test_with_a_spool_groups_take_the_spooled_path(tmp_path):
    sp = open_spool(tmp_path / "spool")
    st = ServerThread(spool=sp)
    st.producer.hold = True
    st.start()
    p = Peer(st.endpoint)
    try:
        p.register()
        send_groups(p, [group([0, 2], values=[b"a", b"c"]), group([1], values=[b"b"], partition=1)])
        assert acked(p, 3) == [0, 1, 2]             # durable, before the broker answered
        st.producer.wait_messages(3)
        assert sorted((s.partition, tuple(s.values)) for s in st.producer.submissions) == \
            [(0, (b"a", b"c")), (1, (b"b",))]
        assert all(s.token.spool_ids is not None for s in st.producer.submissions)
        assert st.server.stats()["send_groups_direct"] == 0
    finally:
        p.close()
        st.stop()
        sp.close()


# --- the shim's packing ----------------------------------------------------------------

def test_shim_packing_gives_back_exactly_the_entries_it_was_handed():
    # As the shim keeps them: (first_seq, topic, partition, ts, key, *values), one key per call.
    entries = [
        (0, "t", 0, TS, None, b"a"),
        (1, "t", 1, TS + 1, None, b"b"),
        (2, "t", 0, TS + 2, b"k1", b"c", b"d"),
        (4, "u", 0, TS + 3, b"k0", None),
        (5, "t", 0, TS + 4, None, b"e"),
        (6, "t", 1, TS + 5, b"k2", b"f"),
        (7, "t", 1, TS + 6, None, b"g", b"h", b"i"),
    ]
    unsent = collections.deque(entries)
    frame, n = _groups_frame(SID, unsent)
    assert n == len(entries) and not unsent
    kind, (sid, groups) = schema.decode_request(frame, 1 << 20)
    assert (kind, sid, len(groups)) == (schema.SEND_GROUPS, SID, 3)
    back = _entries_of_groups(groups)
    assert [e[0] for e in back] == [e[0] for e in entries]
    for got, want in zip(back, entries):
        assert got[1:3] == list(want[1:3]) and got[5] == list(want[5:])
        assert (got[4] if got[4] is not None else [None] * len(got[5])) == [want[4]] * len(want[5:])
    # A group is stamped with its first entry's time; plain one-message groups carry no counts or keys.
    t0 = next(g for g in groups if g[:2] == ["t", 0])
    assert t0[2] == TS and t0[3] == [0, 2, 5] and t0[4] == [1, 2, 1] and t0[5] == [None, b"k1", b"k1", None]
    assert next(g for g in groups if g[0] == "u")[3:] == [[4], None, [b"k0"], [None]]
    assert next(g for g in groups if g[:2] == ["t", 1])[3:] == [[1, 6, 7], [1, 1, 3], [None, b"k2", None, None, None],
                                                                 [b"b", b"f", b"g", b"h", b"i"]]


def test_shim_packing_cuts_frames_near_the_target_size():
    big = b"x" * 100_000
    unsent = collections.deque([(i, "t", i % 3, TS, None, big) for i in range(10)])
    sizes = []
    while unsent:
        frame, n = _groups_frame(SID, unsent)
        sizes.append(n)
        assert len(frame) < schema.TARGET_FRAME_BYTES + len(big) + 1024
    assert sum(sizes) == 10 and len(sizes) > 1


def test_groups_frame_is_plain_msgpack_with_the_new_kind():
    frame, _ = _groups_frame(SID, collections.deque([(0, "t", 0, TS, None, b"a")]))
    assert msgpack.unpackb(frame) == [schema.SEND_GROUPS, SID, [["t", 0, TS, [0], None, None, [b"a"]]]]


# --- the direct path's test agrees with the SEND rules ---------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def group_frames(draw):
    """Entries numbered from 0 (sometimes with a hole, an overlap or a shuffle), spread
    over partitions, packed as groups (sometimes two groups for one partition)."""
    n = draw(st.integers(1, 12))
    counts = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    if draw(st.booleans()):
        counts = [1] * n
    firsts, seq = [], 0
    for c in counts:
        firsts.append(seq)
        seq += c
    if n > 1 and draw(st.integers(0, 3)) == 0:
        i = draw(st.integers(1, n - 1))
        firsts[i] += draw(st.sampled_from([-1, 1]))          # an overlap or a hole
    parts = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    split = draw(st.integers(0, 4)) == 0                      # one partition in two groups
    groups: dict = {}
    for k, (f, c, p) in enumerate(zip(firsts, counts, parts)):
        key = (p, k % 2 if split else 0)
        g = groups.setdefault(key, ["t", p, TS, [], [], None, []])
        if g[3] and f <= g[3][-1]:
            return None                                      # not increasing: the schema refuses it
        g[3].append(f)
        g[4].append(c)
        g[6].extend(b"%d.%d" % (f, j) for j in range(c))
    out = []
    for g in groups.values():
        if all(c == 1 for c in g[4]):
            g[4] = None
        out.append(g)
    start = draw(st.sampled_from([0, 0, 0, 1]))
    return out, start


@settings(max_examples=300, deadline=None)
@given(group_frames())
def test_the_direct_path_is_taken_exactly_when_the_send_rules_take_everything(case):
    if case is None:
        return
    groups, start = case
    schema.decode_request(schema.encode([schema.SEND_GROUPS, SID, groups]), 1 << 20)   # well formed
    entries = _entries_of_groups(groups)
    expected = start
    chain = True
    for e in entries:                       # the SEND rules: every entry must follow on
        if e[0] != expected:
            chain = False
            break
        expected = e[0] + len(e[5])
    one_group_per_partition = len({(g[0], g[1]) for g in groups}) == len(groups)
    end = _chain_end(groups, start)
    if chain and one_group_per_partition:
        assert end == expected
    else:
        assert end is None
    # Unpacking keeps every message, in seq order within each partition.
    assert sorted(v for e in entries for v in e[5]) == sorted(v for g in groups for v in g[6])


def test_stop_hands_back_the_rest_of_a_group_taken_whole(server, peer):
    """A SEND_GROUPS token (one message per entry, no counts list) handed back at a
    stop: REJECTED(STOPPING) from its first unfinished entry, and only the rest counted."""
    server.producer.hold = True
    peer.register()
    send_groups(peer, [group([0, 1, 2, 3])])
    server.producer.wait_messages(4)
    (sub,) = server.producer.held
    assert sub.token.counts is None                 # the direct path's token
    server.call(server.server.on_outcomes, [Outcome(sub.token, "t", 0, 0, 0, 2, 0)])
    assert all_acked(peer, 2) == [0, 1]
    server.call(server.server.stop_accepting)
    rest = dataclasses.replace(sub, keys=sub.keys[2:], values=sub.values[2:])   # what the drain left
    handed, left = server.call(server.server.hand_back, [rest])
    assert dict(handed) == {("t", 0): 2} and left == []
    kind, sid, from_seq, code, _ = peer.recv()
    assert (kind, sid, from_seq, code) == (schema.REJECTED, peer.sid, 2, schema.E_STOPPING)
    stats = server.call(server.server.stats)
    assert (stats["handed_back_messages"], stats["async_inflight_messages"]) == (2, 0)


def test_a_replay_steps_over_entries_taken_past_a_refusal_and_acknowledged_since(server, peer):
    """Entries taken beyond a refused one are acknowledged on their own (per partition),
    and the shim forgets them: its replay from the refused entry has holes there. The
    daemon's chain must step over them, or it refuses the replay as out of order, and
    every replay after it, while the shim sends its backlog again and again."""
    peer.register()
    server.producer.refuse = 1                      # the first group (partition 0) is refused
    send_groups(peer, [group([0, 2], values=[b"p0-a", b"p0-b"]), group([1], values=[b"p1-a"], partition=1)])
    replies = [peer.recv(), peer.recv()]
    assert [schema.REJECTED, peer.sid, 0, schema.E_QUEUE_FULL] in [r[:4] for r in replies]
    assert [schema.ACK, peer.sid, [1]] in replies   # 1 is done: the shim no longer holds it
    send_groups(peer, [group([0, 2], values=[b"p0-a", b"p0-b"])])   # the replay, without 1
    assert all_acked(peer, 2) == [0, 2]
    send_groups(peer, [group([3], values=[b"p0-c"])])
    assert all_acked(peer, 1) == [3]
    assert [v for *_, v in server.producer.messages()] == [b"p1-a", b"p0-a", b"p0-b", b"p0-c"]
    assert server.server.stats()["gap_replies"] == 0
    assert peer.register(rid=3)[3] == 4


ROOM_SETTINGS = dict(SETTINGS, room=True)


def test_room_follows_a_queue_full_refusal_once_the_queue_has_room(server):
    """ROOM goes to a session refused for a full queue that asked for it ("room" in its
    settings), at the first outcome that finds the queue below its mark; not before, and
    only once."""
    waiting, other = Peer(server.endpoint), Peer(server.endpoint)
    try:
        features = waiting.register(settings=ROOM_SETTINGS)[5]
        assert "room" in features
        other.register()
        server.producer.hold = True
        send_groups(other, [group([0])])
        server.producer.wait_messages(1)
        server.producer.refuse = 1
        send_groups(waiting, [group([0], values=[b"w0"])])
        assert waiting.recv()[:4] == [schema.REJECTED, waiting.sid, 0, schema.E_QUEUE_FULL]
        assert server.server.stats()["room_waiting_sessions"] == 1
        server.producer.room = False                # outcomes, but the queue is still too full
        server.producer.release()
        assert all_acked(other, 1) == [0]
        assert waiting.quiet()
        server.producer.room = True
        send_groups(other, [group([1])])
        server.producer.release(after=2)
        assert all_acked(other, 1) == [1]
        assert waiting.recv() == [schema.ROOM, waiting.sid]
        stats = server.server.stats()
        assert (stats["room_sent"], stats["room_waiting_sessions"]) == (1, 0)
        send_groups(waiting, [group([0], values=[b"w0"])])     # the replay is taken
        server.producer.release(after=3)
        assert all_acked(waiting, 1) == [0]
        send_groups(other, [group([2])])
        server.producer.release(after=4)
        assert all_acked(other, 1) == [2]
        assert waiting.quiet()                      # one ROOM per refusal
    finally:
        waiting.close()
        other.close()


def test_no_room_for_a_session_that_did_not_ask_or_that_was_taken_on_its_own_timer(server, peer):
    peer.register()                                 # an older shim: no "room" in its settings
    server.producer.refuse = 1
    send_groups(peer, [group([0])])
    assert peer.recv()[:4] == [schema.REJECTED, peer.sid, 0, schema.E_QUEUE_FULL]
    assert server.server.stats()["room_waiting_sessions"] == 0
    send_groups(peer, [group([0])])
    assert all_acked(peer, 1) == [0]
    assert peer.quiet()
    late = Peer(server.endpoint)
    try:
        late.register(settings=ROOM_SETTINGS)
        server.producer.refuse = 1
        send_groups(late, [group([0])])
        assert late.recv()[:4] == [schema.REJECTED, late.sid, 0, schema.E_QUEUE_FULL]
        send_groups(late, [group([0])])             # retried before any ROOM: taken
        assert all_acked(late, 1) == [0]
        assert server.server.stats()["room_waiting_sessions"] == 0
        assert late.quiet()
    finally:
        late.close()


def test_a_daemon_with_a_spool_does_not_offer_room(tmp_path):
    with ServerThread(spool=open_spool(tmp_path / "spool")) as st:
        p = Peer(st.endpoint)
        try:
            assert "room" not in p.register(settings=ROOM_SETTINGS)[5]
        finally:
            p.close()

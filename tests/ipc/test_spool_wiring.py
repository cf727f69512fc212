"""IpcServer with a durable spool (docs/spool.md, "How to wire it"), over raw ZeroMQ peers.

What is checked on the wire and on disk: an async entry is acknowledged once
its spool record is durable, not on the broker's answer; records are released
when every run of their submission is accounted for; a restarted server
replays what the spool recovered and recognises a shim's replay of it; a full
spool rejects or holds senders (while other requests are still answered);
a full producer queue defers spooled entries instead of refusing them.
"""

from __future__ import annotations

import time

import pytest

import kafkad.spool
from client_shim import schema
from kafkad.config import SpoolConfig
from kafkad.engine.types import Outcome
from kafkad.ipc.server import _ReplayToken
from tests.ipc.fakes import ServerThread
from tests.ipc.test_server import SETTINGS, Peer, entry


def open_spool(path, **kw) -> kafkad.spool.Spool:
    return kafkad.spool.open(SpoolConfig(enabled=True, path=str(path), **kw))


def wait_for(predicate, timeout=5.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def acked(peer, n):
    seqs = []
    while len(seqs) < n:
        reply = peer.recv()
        assert reply[0] == schema.ACK, reply
        seqs += reply[2]
    return sorted(seqs)


@pytest.fixture
def spool_server(tmp_path):
    made = []

    def make(producer_hold=False, **spool_kw):
        sp = open_spool(tmp_path / "spool", **spool_kw)
        st = ServerThread(spool=sp)
        st.producer.hold = producer_hold
        st.start()
        made.append(st)
        return st

    yield make
    for st in made:
        st.stop()
        st.spool.close()


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_ack_when_durable_before_the_broker_answers(spool_server, fsync):
    st = spool_server(producer_hold=True, fsync=fsync, fsync_interval_ms=20)
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, b"a"), entry(1, b"b", partition=1)]])
        assert acked(peer, 2) == [0, 1]           # the producer holds both: no broker answer yet
        assert st.call(lambda: st.spool.durable_id) == 2
        assert st.call(lambda: st.spool.entries_pending) == 2
        st.producer.release(after=2)
        wait_for(lambda: st.call(lambda: st.spool.entries_pending) == 0, what="the release")
        assert peer.quiet()                       # no second ACK on delivery
    finally:
        peer.close()


def test_a_submission_is_released_only_when_all_its_runs_are_in(spool_server):
    st = spool_server(producer_hold=True, fsync="never")
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, n=3), entry(3, n=2)]])   # one run, one spool entry
        assert acked(peer, 2) == [0, 3]
        st.producer.wait_messages(5)
        sub = st.producer.held.pop()
        first = Outcome(sub.token, sub.topic, sub.partition, 0, 0, 2, 0)
        st.call(st.server.on_outcomes, [first])
        time.sleep(0.05)
        assert st.call(lambda: st.spool.entries_pending) == 1
        st.call(st.server.on_outcomes, [Outcome(sub.token, sub.topic, sub.partition, 0, 2, 3, 0)])
        wait_for(lambda: st.call(lambda: st.spool.entries_pending) == 0, what="the release")
    finally:
        peer.close()


def test_a_restart_replays_the_spool_and_recognises_the_shims_replay(tmp_path, spool_server):
    sp = open_spool(tmp_path / "spool", fsync="never")
    first = ServerThread(spool=sp)
    first.producer.hold = True
    first.start()
    peer = Peer(first.endpoint)
    sid = peer.sid
    try:
        peer.register()
        peer.send([schema.SEND, sid, [entry(0, b"x", n=2), entry(2, b"y", partition=2)]])
        assert acked(peer, 2) == [0, 2]
    finally:
        peer.close()
        first.stop()          # the producer never delivered: both entries stay in the spool
        sp.close()
    st = spool_server(fsync="never")
    st.producer.wait_messages(3)
    assert all(isinstance(s.token, _ReplayToken) for s in st.producer.submissions)
    assert [(s.partition, s.values) for s in st.producer.submissions] == [(0, [b"x", b"x"]), (2, [b"y"])]
    wait_for(lambda: st.call(lambda: st.spool.entries_pending) == 0, what="the replayed entries' release")
    peer = Peer(st.endpoint)
    peer.sid = sid
    try:
        peer.send([schema.SEND, sid, [entry(0, b"x", n=2)]])
        reply = peer.recv()
        assert reply[0] == schema.ERROR and reply[2] == schema.E_UNKNOWN_SESSION
        assert peer.register()[3] == 3            # next_seq seeded from the spool
        peer.send([schema.SEND, sid, [entry(0, b"x", n=2), entry(2, b"y", partition=2), entry(3, b"z")]])
        assert acked(peer, 3) == [0, 2, 3]
        st.producer.wait_messages(4)
        assert [m[3] for m in st.producer.messages()] == [b"x", b"x", b"y", b"z"]   # not taken twice
        assert st.call(st.server.stats)["spool_replayed_messages"] == 3
    finally:
        peer.close()


def test_spool_full_with_reject_refuses_with_queue_full(spool_server):
    st = spool_server(producer_hold=True, fsync="never", max_bytes=1500, when_full="reject")
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, b"a" * 400), entry(1, b"b" * 400, partition=1),
                                           entry(2, b"c" * 400, partition=2)]])
        replies = [peer.recv(), peer.recv()]
        kinds = {r[0]: r for r in replies}
        assert kinds[schema.REJECTED][2:4] == [2, schema.E_QUEUE_FULL], replies
        assert "spool full" in kinds[schema.REJECTED][4]
        assert kinds[schema.ACK][2] == [0, 1]
        assert st.call(st.server.stats)["rejected"]["spool_full"] == 1
        st.producer.wait_messages(2)
        assert len(st.producer.messages()) == 2
    finally:
        peer.close()


def test_spool_full_with_block_holds_the_sender_but_answers_the_rest(spool_server):
    st = spool_server(producer_hold=True, fsync="never", max_bytes=1500, segment_bytes=300,
                      when_full="block")
    peer, other = Peer(st.endpoint), Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, b"a" * 400), entry(1, b"b" * 400, partition=1),
                                           entry(2, b"c" * 400, partition=2)]])
        assert acked(peer, 2) == [0, 1]
        assert peer.quiet()                          # entry 2 waits for room, not refused
        other.send([schema.STATS, 9])
        assert other.recv()[0] == schema.STATS_REPLY
        other.send([schema.METADATA, 10, "t"])
        assert other.recv()[0] == schema.PARTITIONS
        assert st.call(st.server.stats)["spool_blocked"] is True
        st.producer.release(after=2)                 # delivered: the first segment goes, room again
        assert peer.recv() == [schema.ACK, peer.sid, [2]]
        st.producer.wait_messages(3)
        assert [m[3][:1] for m in st.producer.messages()] == [b"a", b"b", b"c"]
        assert st.call(st.server.stats)["spool_blocked"] is False
    finally:
        peer.close()
        other.close()


def test_a_full_producer_queue_defers_spooled_entries(spool_server):
    st = spool_server(fsync="never")
    st.producer.refuse = 1
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, b"a")]])
        assert acked(peer, 1) == [0]                  # on disk: taken despite the full queue
        peer.send([schema.SEND, peer.sid, [entry(1, b"b")]])   # a later commit submits both, in order
        assert acked(peer, 1) == [1]
        st.producer.wait_messages(2)
        assert [m[3] for m in st.producer.messages()] == [b"a", b"b"]
    finally:
        peer.close()


def test_global_log_messages_on_error_is_anded_with_the_session(caplog):
    st = ServerThread(server_kwargs={"log_messages_on_error": False})
    st.producer.fail_with = 2
    st.start()
    peer = Peer(st.endpoint)
    try:
        peer.register(settings=dict(SETTINGS, log_messages_on_error=True))
        with caplog.at_level("ERROR", logger="kafkad.ipc"):
            peer.send([schema.SEND, peer.sid, [entry(0, b"secret-value")]])
            assert peer.recv()[0] == schema.FAILED
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "failed with error 2" in text and "secret-value" not in text and "hashes " in text
    finally:
        peer.close()
        st.stop()


def test_a_replayed_failure_the_session_forgot_is_reported_as_outcome_unknown(monkeypatch):
    import kafkad.ipc.server as server_mod

    monkeypatch.setattr(server_mod, "_RECENT_FAILED", 2)
    st = ServerThread()
    st.producer.fail_with = 2
    st.start()
    peer = Peer(st.endpoint)
    try:
        peer.register()
        for seq in range(3):                         # three failures: the first is forgotten
            peer.send([schema.SEND, peer.sid, [entry(seq)]])
            assert peer.recv()[0] == schema.FAILED
        st.producer.fail_with = 0
        peer.send([schema.SEND, peer.sid, [entry(3)]])
        assert peer.recv() == [schema.ACK, peer.sid, [3]]
        peer.send([schema.SEND, peer.sid, [entry(0), entry(2), entry(3)]])   # a replay of finished ones
        replies = {r[0]: r for r in (peer.recv(), peer.recv())}
        assert replies[schema.ACK][2] == [3]
        assert replies[schema.FAILED][2] == [[0, [[0, 1, schema.OUTCOME_FORGOTTEN]]], [2, [[0, 1, 2]]]]
        assert st.call(st.server.stats)["outcomes_forgotten"] == 1
    finally:
        peer.close()
        st.stop()


def test_failed_outcomes_are_remembered_for_as_long_as_the_shim_queue_can_hold(monkeypatch):
    import kafkad.ipc.server as server_mod

    monkeypatch.setattr(server_mod, "_RECENT_FAILED", 2)
    st = ServerThread()
    st.producer.fail_with = 2
    st.start()
    peer = Peer(st.endpoint)
    try:
        peer.register(settings=dict(SETTINGS, queue_maxsize=10))
        for seq in range(5):
            peer.send([schema.SEND, peer.sid, [entry(seq)]])
            assert peer.recv()[0] == schema.FAILED
        peer.send([schema.SEND, peer.sid, [entry(0)]])
        assert peer.recv() == [schema.FAILED, peer.sid, [[0, [[0, 1, 2]]]]]
    finally:
        peer.close()
        st.stop()


def test_a_replay_larger_than_the_spool_is_split_into_entries_that_fit(spool_server):
    """After a refusal the shim replays its whole backlog in one frame: merged into one spool
    entry it could exceed max_bytes and be refused on every replay (the 'reject' stall).
    The daemon splits it into entries the spool can hold and takes all of it."""
    st = spool_server(producer_hold=True, fsync="never", max_bytes=16 * 1024, when_full="reject")
    peer = Peer(st.endpoint)
    try:
        peer.register()
        backlog = [entry(i, b"%05d" % i + b"x" * 195) for i in range(60)]   # ~12 KiB, one partition
        peer.send([schema.SEND, peer.sid, backlog])
        assert acked(peer, 60) == list(range(60))                          # durable: all of it
        assert st.call(st.server.stats)["rejected"] == {}
        assert st.call(lambda: st.spool.stats(time.monotonic())["entries_pending"]) > 1
        st.producer.release(after=60)
        assert [v[:5] for _, _, _, v in st.producer.messages()] == [b"%05d" % i for i in range(60)]
        wait_for(lambda: st.call(lambda: st.spool.stats(time.monotonic())["entries_pending"]) == 0,
                 what="the spool to be released")
    finally:
        peer.close()


def test_an_entry_larger_than_the_whole_spool_fails_and_the_rest_is_taken(spool_server, caplog):
    """A single SEND entry the spool can never hold is reported FAILED (MessageSizeTooLarge,
    10) instead of refused (a refusal would be replayed forever); the entries after it go on."""
    st = spool_server(fsync="never", max_bytes=4096, when_full="reject")
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, b"a"), entry(1, b"b" * 8192), entry(2, b"c")]])
        acks, failed = [], []
        while len(acks) + len(failed) < 3:
            reply = peer.recv()
            assert reply[0] in (schema.ACK, schema.FAILED), reply
            (acks if reply[0] == schema.ACK else failed).extend(reply[2])
        assert sorted(acks) == [0, 2]
        assert failed == [[1, [[0, 1, 10]]]]
        st.producer.wait_messages(2)
        assert [v for _, _, _, v in st.producer.messages()] == [b"a", b"c"]
        assert st.call(st.server.stats)["spool_too_large_messages"] == 1
        assert "cannot be spooled" in caplog.text
    finally:
        peer.close()


def test_a_failed_fsync_acknowledges_what_the_broker_already_has(spool_server, monkeypatch):
    """Entries the broker delivered while their fsync ran are acknowledged when that
    fsync fails: the broker has them, and a shim never answered would replay them."""
    import threading

    st = spool_server(fsync="always")
    gate = threading.Event()
    prepare = st.spool.prepare_sync

    class GatedJob:
        def __init__(self, job):
            self.job = job

        def run(self):
            gate.wait(10)
            self.job.run()

    def gated_prepare(*args, **kwargs):
        job = prepare(*args, **kwargs)
        return None if job is None else GatedJob(job)

    def failed_finish(job):
        raise kafkad.spool.SpoolUnavailable("fsync failed (test)", op="fsync", errno=5, filename="spool")

    monkeypatch.setattr(st.spool, "prepare_sync", gated_prepare)
    monkeypatch.setattr(st.spool, "finish_sync", failed_finish)
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, b"a"), entry(1, b"b", partition=1)]])
        st.producer.wait_messages(2)
        wait_for(lambda: st.call(lambda: sum(len(s.inflight) for s in st.server._sessions.values())) == 0,
                 what="the deliveries")
        assert peer.quiet()                       # delivered, but the fsync has not finished
        gate.set()
        assert acked(peer, 2) == [0, 1]
        assert st.call(lambda: st.server.stats()["spool_unavailable"]) is True
    finally:
        gate.set()
        peer.close()


def test_held_sends_of_a_session_that_ended_meanwhile_are_answered(spool_server):
    """A SEND held for spool room whose session ended before room came is answered
    ERROR(UNKNOWN_SESSION): the shim still holds those entries and replays them."""
    st = spool_server(producer_hold=True, fsync="never", max_bytes=1500, segment_bytes=300,
                      when_full="block")
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, b"a" * 400), entry(1, b"b" * 400, partition=1),
                                           entry(2, b"c" * 400, partition=2)]])
        assert acked(peer, 2) == [0, 1]
        assert peer.quiet()                          # entry 2 waits for room
        peer.send([schema.UNREGISTER, 7, peer.sid])
        assert peer.recv() == [schema.UNREGISTERED, 7, 2]
        st.producer.release(after=2)                 # the session ends; room again
        reply = peer.recv()
        assert reply[0] == schema.ERROR and reply[2] == schema.E_UNKNOWN_SESSION and reply[4] == peer.sid
        assert len(st.producer.messages()) == 2      # entry 2 was not taken for an ended session
    finally:
        peer.close()


def test_with_a_spool_a_session_with_nothing_in_flight_takes_one_entry_over_its_share(tmp_path):
    """One call larger than [ipc] max_inflight_per_session would be refused at every
    replay: a session with nothing in flight takes it; the next entry waits for room."""
    sp = open_spool(tmp_path / "spool")
    st = ServerThread(spool=sp, max_inflight_per_session=3)
    st.producer.hold = True
    st.start()
    peer = Peer(st.endpoint)
    try:
        peer.register()
        peer.send([schema.SEND, peer.sid, [entry(0, n=4), entry(4)]])
        replies = [peer.recv(), peer.recv()]
        kinds = {r[0]: r for r in replies}
        assert kinds[schema.ACK][2] == [0]                      # the 4-message entry, once durable
        assert kinds[schema.REJECTED][2:4] == [4, schema.E_QUEUE_FULL]
        # the entry goes to the producer once durable, which is when its ACK
        # leaves too: the two race, so wait for it
        wait_for(lambda: st.producer.submissions, what="the entry to reach the producer")
        assert [len(sub) for sub in st.producer.submissions] == [4]
    finally:
        peer.close()
        st.stop()
        sp.close()

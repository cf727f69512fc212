"""Idle topics are forgotten after metadata_max_idle_ms (KIP-526), never with live records."""

from __future__ import annotations

from dataclasses import replace

from kafkad.config import QueueConfig
from kafkad.engine.states import BatchState, PidState

from .fakes import FakeCluster, Harness, settings

IDLE_MS = 1_000
IDLE = IDLE_MS / 1000.0


def make(*topics: str, **kw) -> Harness:
    c = FakeCluster()
    for t in topics:
        c.create(t, 2)
    kw.setdefault("metadata_max_idle_ms", IDLE_MS)
    return Harness(c, **kw)


def known(h: Harness, topic: str) -> bool:
    """Whether the engine holds anything for `topic` (lanes, layout, wanted, counters)."""
    e = h.engine
    return (topic in e._wanted or topic in e.metadata.topics or topic in e._topic_used
            or topic in e._topic_stats or any(lane.topic == topic for lane in e.lanes.values())
            or any(lane.topic == topic for g in e.groups.values() for lane in g.lanes))


def keep_using(h: Harness, topic: str, seconds: float) -> None:
    """Send to `topic` every 200 ms for `seconds` (fake clock)."""
    end = h.now + seconds
    while h.now < end:
        h.submit(topic, 0, [b"u"])
        h.run(until=h.now + 0.2)


def record_produce_errors(h: Harness) -> list[int]:
    """The error codes the fake cluster answers Produce partitions with, from now on."""
    codes: list[int] = []
    plain = h.cluster.answer

    def answer(req):
        msg = plain(req)
        if type(req.msg).__name__ == "ProduceRequest":
            codes.extend(p.error_code for t in msg.responses for p in t.partition_responses)
        return msg
    h.cluster.answer = answer
    return codes


def metadata_topics(h: Harness) -> list[set[str]]:
    return [{t.name for t in r.msg.topics} for r in h.sent
            if type(r.msg).__name__ == "MetadataRequest"]


def test_an_idle_topic_is_forgotten_and_metadata_requests_stop_naming_it():
    h = make("a", "b", metadata_max_age_ms=500)
    h.submit("a", 0, [b"a1"])
    h.submit("b", 1, [b"b1"])
    h.run()
    before = {k: v for k, v in h.engine.stats().items() if k in ("accepted", "delivered", "failed")}
    assert known(h, "a") and known(h, "b")
    keep_using(h, "b", 3 * IDLE)   # "b" stays in use; "a" is not sent to again
    assert not known(h, "a")
    assert known(h, "b")
    stats = h.engine.stats()
    assert "a" not in stats["topics"] and "b" in stats["topics"]
    assert stats["topics_forgotten"] == 1
    assert stats["accepted"] == before["accepted"] + stats["topics"]["b"]["delivered"] - 1
    assert stats["delivered"] == stats["accepted"] and stats["failed"] == before["failed"] == 0
    # metadata refreshes (every 500 ms) after it was forgotten name "b" only
    h.sent.clear()
    keep_using(h, "b", 1.5)
    asked = metadata_topics(h)
    assert asked and all(names == {"b"} for names in asked), asked
    assert h.values("a", 0) == [b"a1"]


def test_forgetting_runs_from_the_poll_deadline_and_reports_the_topics():
    h = make("a")
    h.submit("a", 0, [b"x"])
    h.run()
    forgotten = []
    # nothing else happens: the poll deadline alone brings the engine back to forget it
    for _ in range(20):
        act = h.engine.poll(h.now)
        forgotten += act.forgotten_topics
        if forgotten:
            break
        assert act.deadline is not None and act.deadline > h.now
        h.now = act.deadline
    assert forgotten == ["a"]
    assert not known(h, "a")
    h.engine.poll(h.now)
    assert h.engine._forget_at == float("inf")   # no topic left to look after


def test_a_topic_with_records_waiting_for_a_leader_is_kept():
    h = make("a", unknown_topic_wait_ms=60_000)
    h.up = set()   # no broker answers: the records wait in their lane
    h.submit("a", 0, [b"x"])
    h.run(until=h.now + 5 * IDLE)
    assert h.engine.queued == 1 and known(h, "a") and "a" in h.engine._wanted
    h.up = set(h.cluster.brokers)
    h.run()
    assert h.values("a", 0) == [b"x"]
    h.run(until=h.now + 3 * IDLE)
    assert not known(h, "a")


def test_a_topic_with_held_records_is_kept():
    h = make("a")
    slow = settings(async_send=True, batch_n=100, batch_t=10 * IDLE)
    h.submit("a", 0, [b"held"], settings=slow)
    h.run(until=h.now + 5 * IDLE)
    assert h.engine.held == 1 and known(h, "a")
    h.run(until=h.now + 10 * IDLE)   # the hold's batch_t passes, the record goes
    assert h.values("a", 0) == [b"held"]
    h.run(until=h.now + 3 * IDLE)
    assert not known(h, "a")


def test_a_topic_with_records_in_flight_is_kept():
    h = make("a")
    h.submit("a", 0, [b"warm-up"])
    h.run()
    h.hold_answers = set(h.cluster.brokers)
    h.submit("a", 0, [b"x"])
    h.run(until=h.now + 5 * IDLE)   # well inside request_timeout_ms (30 s)
    assert h.engine.in_flight == 1 and known(h, "a")
    produce = [r for r in h.unanswered if type(r.msg).__name__ == "ProduceRequest"]
    assert produce
    h.hold_answers = set()
    for req in produce:
        h.engine.response(req, h.cluster.answer(req), h.now)
    h.run()
    assert h.values("a", 0) == [b"warm-up", b"x"] and h.engine.delivered == 2
    h.run(until=h.now + 3 * IDLE)
    assert not known(h, "a")


def test_a_topic_with_a_batch_waiting_to_retry_is_kept():
    h = make("a", "b", retry_backoff_max_ms=60_000)
    h.submit("b", 0, [b"warm-up"])
    h.run()
    h.cluster.produce_errors[("a", 0)].extend([7] * 6)   # REQUEST_TIMED_OUT: retriable
    h.submit("a", 0, [b"x"])
    saw_retry = False
    end = h.now + 5 * IDLE
    while h.now < end and not h.values("a", 0):
        h.run(until=min(end, h.now + 0.05))
        lanes = [lane for lane in h.engine.lanes.values() if lane.topic == "a"]
        saw_retry |= any(b.state is BatchState.RETRY for lane in lanes for b in lane.batches)
        assert known(h, "a")
    assert saw_retry
    h.run()
    assert h.values("a", 0) == [b"x"]


def test_a_forgotten_topic_comes_back_and_delivers_without_a_sequence_error():
    h = make("a", "b")
    for i in range(3):
        h.submit("a", 1, [f"a{i}".encode()])
    h.submit("b", 0, [b"b0"])
    h.run()
    (group,) = h.engine.groups.values()
    epoch = group.epoch
    keep_using(h, "b", 3 * IDLE)   # "b" stays in use, so the group keeps its producer id
    assert not known(h, "a")
    assert ("a", 1) in group.forgotten
    # a send to it again: metadata asked again, the records wait and are delivered
    codes = record_produce_errors(h)
    h.sent.clear()
    h.submit("a", 1, [b"again"])
    assert "a" in h.engine._wanted
    h.run()
    assert any("a" in names for names in metadata_topics(h))
    assert h.values("a", 1) == [b"a0", b"a1", b"a2", b"again"]
    assert [o.error for o in h.outcomes[-1:]] == [0]
    # the broker still held the old sequence of a/1: the engine moved to a new epoch
    # first instead of sending sequence 0 and being refused
    assert h.engine.stats()["errors"] == {} and set(codes) == {0}, codes
    assert group.state is PidState.READY and group.epoch == epoch + 1
    assert not group.forgotten
    assert h.engine.delivered == h.engine.accepted
    # a brand-new topic in the same group needs no new epoch
    h.cluster.create("c", 1)
    h.submit("c", 0, [b"c0"])
    h.run()
    assert h.values("c", 0) == [b"c0"] and group.epoch == epoch + 1


def test_many_forgotten_lanes_are_bounded_and_any_new_lane_then_bumps(monkeypatch):
    import kafkad.engine.engine as engine_mod
    monkeypatch.setattr(engine_mod, "_FORGOTTEN_LANES_MAX", 2)
    topics = [f"t{i}" for i in range(4)]
    h = make("keep", *topics)
    for t in topics:
        h.submit(t, 0, [b"x"])
    h.submit("keep", 0, [b"k"])
    h.run()
    (group,) = h.engine.groups.values()
    epoch = group.epoch
    keep_using(h, "keep", 3 * IDLE)
    assert all(not known(h, t) for t in topics)
    assert len(group.forgotten) <= 2 and group.forgot_many
    codes = record_produce_errors(h)
    h.submit("t3", 0, [b"y"])
    h.run()
    assert h.values("t3", 0) == [b"x", b"y"]
    assert set(codes) == {0} and group.epoch == epoch + 1, codes
    assert not group.forgot_many


def test_without_idempotence_a_returning_topic_needs_no_new_epoch():
    h = make("a", "b", idempotence=False)
    h.submit("a", 0, [b"a0"])
    h.run()
    h.run(until=h.now + 3 * IDLE)
    assert not known(h, "a")
    h.submit("a", 0, [b"a1"])
    h.run()
    assert h.values("a", 0) == [b"a0", b"a1"] and h.engine.stats()["errors"] == {}


def test_a_reload_applies_a_new_idle_time_at_once():
    h = make("a", metadata_max_idle_ms=300_000)
    h.submit("a", 0, [b"x"])
    h.run()
    h.run(until=h.now + 10)
    assert known(h, "a")
    need = h.engine.reconfigure(replace(h.kafka, metadata_max_idle_ms=2_000), QueueConfig())
    assert need == []
    h.run(until=h.now + 0.01)
    assert not known(h, "a")


def test_a_topic_someone_waits_for_is_kept_while_touched():
    h = make("a", unknown_topic_wait_ms=60_000)
    h.up = set()
    h.engine.want_topic("nope", h.now)
    for _ in range(10):
        h.run(until=h.now + IDLE / 2)
        h.engine.touch_topic("nope", h.now)   # BrokerProducer does this while a caller waits
    assert "nope" in h.engine._wanted
    h.run(until=h.now + 3 * IDLE)
    assert "nope" not in h.engine._wanted and not known(h, "nope")


def test_an_answer_to_a_request_sent_before_the_topic_was_forgotten_keeps_it_forgotten():
    h = make("a", "gone", metadata_max_age_ms=IDLE_MS // 2, unknown_topic_wait_ms=60_000)
    h.cluster.topics.pop("gone")   # the cluster does not have it
    h.submit("a", 0, [b"x"])
    h.engine.want_topic("gone", h.now)
    h.run(until=h.now + 0.2)
    assert h.values("a", 0) == [b"x"] and "a" in h.engine.metadata.topics
    # the next refresh (still naming both) is not answered before they are forgotten
    h.hold_answers = set(h.cluster.brokers)
    h.run(until=h.now + 3 * IDLE)
    assert not known(h, "a") and not known(h, "gone")
    held = [r for r in h.unanswered if type(r.msg).__name__ == "MetadataRequest"
            and {t.name for t in r.msg.topics} == {"a", "gone"}]
    assert held
    h.hold_answers = set()
    for req in held:
        h.engine.response(req, h.cluster.answer(req), h.now)
    h.run(until=h.now + 0.1)
    assert not known(h, "a") and not known(h, "gone")
    assert "gone" not in h.engine._topic_wait and not h.engine._meta_needed

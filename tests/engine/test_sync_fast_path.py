"""The sync fast path: send_sync, take_outcomes and needs_poll instead of a poll per event.

A driver that skips the poll after a sync submission or an answer whenever
`needs_poll` says no must lose nothing by it. The property checked here, at
every such point: a poll right then would do nothing at all, and would not
ask for an earlier wake-up than the deadline the last poll returned (the
driver's timer). Seeded random runs mix sync and async sends, answers in
any order, broker errors, lost connections, timeouts and time passing; the
outcomes must still cover every record once, in order.
"""

from __future__ import annotations

import copy
import random

import pytest

from kafkad.engine.types import CODEC_GZIP

from .fakes import FakeCluster, Harness, settings
from .test_outcome_order import check_order

SYNC = settings(async_send=False)
SYNC_ALL = settings(async_send=False, acks=-1)   # another producer-id group
SYNC_GZIP = settings(async_send=False, codec=CODEC_GZIP)   # its own batches
SYNC_NOACK = settings(async_send=False, acks=0)           # no answer at all
INF = float("inf")


def _harness(**kafka) -> Harness:
    c = FakeCluster()
    c.create("t", 3)
    h = Harness(c, **kafka)
    h.submit("t", 0, [b"warm-up"], token="warm-up")
    h.run()
    h.sent.clear()
    h.outcomes.clear()
    return h


def assert_poll_has_nothing_to_do(h: Harness) -> None:
    """What `needs_poll() == False` promises, checked on a copy of the engine."""
    act = copy.deepcopy(h.engine).poll(h.now)
    assert not (act.sends or act.outcomes or act.closes or act.connects or act.authenticate
                or act.partition_changes or act.forgotten_topics), act
    new = INF if act.deadline is None else act.deadline
    old = INF if h.deadline is None else h.deadline
    assert new >= old, f"the poll wants a wake-up at {new}, before the timer at {old}"


class FastDriver:
    """Plays the network like Harness.step, but the way BrokerProducer drives the fast path."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.poll_wanted = False
        self.skipped = 0

    def _write(self, sends) -> None:
        h = self.h
        for req in sends:
            h.sent.append(req)
            if req.expects_response:
                h.unanswered.append(req)
            else:
                h.cluster.answer(req)

    def _after_event(self) -> None:
        if self.h.engine.needs_poll(self.h.now):
            self.poll_wanted = True
        else:
            self.skipped += 1
            assert_poll_has_nothing_to_do(self.h)

    def submit(self, partition: int, values, s, token) -> object:
        return self.burst([(partition, values, s, token)])[0]

    def burst(self, calls) -> list:
        """Submissions read in one go: the sync ones' requests are taken once, at the end."""
        h = self.h
        subs = [h.submit("t", partition, values, settings=s, token=token)
                for partition, values, s, token in calls]
        if any(s.async_send for _, _, s, _ in calls):
            self.poll_wanted = True
        if all(s.async_send for _, _, s, _ in calls):
            return subs
        sends = h.engine.send_sync(h.now)
        if sends:
            self._write(sends)
            self._after_event()
        else:
            self.poll_wanted = True
        return subs

    def answer(self, req) -> None:
        h = self.h
        h.unanswered.remove(req)
        h.deliver(req, h.cluster.answer(req))     # a Produce answer as its frame
        h.outcomes += h.engine.take_outcomes()
        self._after_event()

    def poll_if_due(self) -> None:
        """The driver's poll: asked for by an event, or its timer (the last deadline) fired."""
        h = self.h
        if self.poll_wanted or (h.deadline is not None and h.now >= h.deadline):
            self.poll_wanted = False
            act = h.engine.poll(h.now)
            h.deadline = act.deadline
            h.outcomes += act.outcomes
            h.closes += act.closes
            for node, _host, _port in act.connects:
                h.engine.connected(node, h.now)
            self._write(act.sends)


def test_a_lone_sync_send_needs_no_poll_before_or_after_its_answer():
    h = _harness()
    d = FastDriver(h)
    requests_before = h.engine.requests
    for i in range(5):
        d.submit(0, [b"v%d" % i], SYNC, f"s{i}")
        assert len(h.unanswered) == 1            # its request left without a poll
        d.answer(h.unanswered[0])
        assert [o.token for o in h.outcomes] == [f"s{i}"]
        assert not d.poll_wanted
        h.outcomes.clear()
    assert d.skipped == 10 and h.engine.requests == requests_before + 5


@pytest.mark.parametrize("event", ["async", "error", "metadata", "deadline", "drain", "second"])
def test_what_needs_a_poll_says_so(event):
    h = _harness(max_in_flight_per_connection=1)
    d = FastDriver(h)
    e = h.engine
    if event == "async":
        # batch_n=1: released to its lane at once (a held record waits for its own due time)
        h.submit("t", 0, [b"a"], settings=settings(async_send=True, batch_n=1), token="a")
    elif event == "error":
        h.cluster.produce_errors[("t", 0)].append(6)      # NOT_LEADER_OR_FOLLOWER
        d.submit(0, [b"x"], SYNC, "x")
        req = h.unanswered[0]
        h.unanswered.remove(req)
        e.response(req, h.cluster.answer(req), h.now)
        h.outcomes += e.take_outcomes()
    elif event == "metadata":
        e.want_topic("other", h.now)
    elif event == "deadline":
        h.now = h.deadline
    elif event == "drain":
        e.start_drain()
    elif event == "second":
        # two sync sends to one partition, one request in flight at a time: the
        # second waits for the first's answer, and only a poll sends it then
        d.submit(0, [b"1"], SYNC, "1")
        d.submit(0, [b"2"], SYNC, "2")
        assert len(h.unanswered) == 1 and d.poll_wanted
        d.poll_wanted = False
        req = h.unanswered[0]
        h.unanswered.remove(req)
        e.response(req, h.cluster.answer(req), h.now)
        h.outcomes += e.take_outcomes()
    assert e.needs_poll(h.now)


def test_a_new_producer_id_group_in_a_burst_needs_a_poll():
    """A sync send of new settings (another producer id) read with one that goes out at once."""
    h = _harness()
    d = FastDriver(h)
    d.burst([(0, [b"a"], SYNC, "a"), (0, [b"b"], settings(async_send=False, acks=-1), "b")])
    assert [type(r.msg).__name__ for r in h.unanswered] == ["ProduceRequest"]   # "a" only
    assert h.engine.needs_poll(h.now)      # "b" waits for InitProducerId: only a poll asks
    d.poll_wanted = False
    d.answer(h.unanswered[0])
    assert h.engine.needs_poll(h.now)


def test_the_answer_that_ends_a_bumps_wait_needs_a_poll():
    """After a lost sequence the bump waits for the group's batches on the wire; the last
    one's clean answer is what lets it start."""
    h = _harness()
    d = FastDriver(h)
    h.cluster.produce_errors[("t", 0)].append(59)        # UNKNOWN_PRODUCER_ID
    h.submit("t", 2, [b"warm-up"])                         # connect partition 2's leader
    h.run()
    d.burst([(0, [b"a"], SYNC, "a"), (2, [b"b"], SYNC, "b")])
    assert len(h.unanswered) == 2
    d.answer(next(r for r in h.unanswered if r.node == h.engine.metadata.leader("t", 0)))
    assert d.poll_wanted                                   # the bump is pending
    d.poll_if_due()
    assert not h.sent[-1:] or type(h.sent[-1].msg).__name__ != "InitProducerIdRequest"
    d.answer(h.unanswered[0])                              # b's clean answer: nothing in flight
    assert h.engine.needs_poll(h.now)


def _fingerprint(h: Harness) -> tuple:
    """The engine state a shortcut must leave as the general way does, after one step."""
    e = h.engine
    return (e.needs_poll(h.now), h.deadline, len(h.sent), len(h.outcomes),
            tuple((lane.key, lane.dirty, lane.wake_at, lane.inflight, lane.queued,
                   tuple((b.state, b.count, b.seq) for b in lane.batches))
                  for lane in e.lanes.values()),
            tuple((conn.node, len(conn.inflight), len(conn.blocked)) for conn in e.conns.values()))


def _random_run(seed: int, frames: bool = True):
    """A seeded random run through FastDriver; returns the harness and the submissions."""
    rng = random.Random(seed)
    h = _harness(delivery_timeout_ms=rng.choice([800, 3000]), request_timeout_ms=500,
                 retry_backoff_max_ms=100, reconnect_backoff_ms=10,
                 max_in_flight_per_connection=rng.choice([1, 2, 5]),
                 idempotence=rng.random() < 0.8)
    h.frames = frames
    h.trace = []
    c = h.cluster
    d = FastDriver(h)
    subs = {}
    closes_seen = 0
    for step in range(300):
        r = rng.random()
        if r < 0.2:
            d.poll_if_due()
        elif r < 0.3:
            h.now += rng.choice([0.0005, 0.01, 0.2, 0.6])
            d.poll_if_due()     # the timer
        elif r < 0.6:
            calls = []
            for j in range(rng.choice([1, 1, 1, 2, 3])):       # sometimes a burst
                tok = f"s{step}.{j}"
                s = rng.choice([SYNC, SYNC, SYNC_ALL, SYNC_GZIP, SYNC_NOACK,
                                settings(async_send=True, batch_n=2, batch_t=0.1)])
                calls.append((rng.randrange(3), [f"{tok}-{i}".encode() for i in range(rng.randint(1, 3))],
                              s, tok))
            for sub in d.burst(calls):
                subs[sub.token] = sub
        elif h.unanswered:
            req = rng.choice(h.unanswered[:2])    # mostly in order, sometimes not per broker
            same_conn_first = next(q for q in h.unanswered if q.node == req.node)
            if rng.random() < 0.05:
                h.unanswered = [q for q in h.unanswered if q.node != req.node]
                h.engine.disconnected(req.node, h.now, "reset")
                d.poll_wanted = True
            else:
                if type(same_conn_first.msg).__name__ == "ProduceRequest" and rng.random() < 0.15:
                    c.produce_errors[("t", rng.randrange(3))].append(rng.choice([6, 19, 10, 45, 46, 47, 59]))
                d.answer(same_conn_first)
        for node in h.closes[closes_seen:]:
            h.unanswered = [q for q in h.unanswered if q.node != node]
        closes_seen = len(h.closes)
        h.check_accounting()
        h.trace.append(_fingerprint(h))
    c.produce_errors.clear()
    for req in list(h.unanswered):
        d.answer(req)
    h.run(until=h.now + 60)      # Harness.step from here: a poll per step, answers at once
    return h, subs


@pytest.mark.parametrize("seed", range(30))
def test_random_runs_skip_only_polls_that_would_do_nothing(seed):
    h, subs = _random_run(seed)
    assert h.engine.idle
    h.check_accounting()
    check_order(h, subs)


@pytest.mark.parametrize("seed", range(10))
def test_answers_read_from_frames_settle_as_decoded_messages_do(seed):
    """Engine.answer (a clean one-batch Produce answer read without message objects)
    changes the engine exactly as response() with the decoded answer does."""
    a, _ = _random_run(seed, frames=True)
    b, _ = _random_run(seed, frames=False)
    assert a.trace == b.trace
    assert a.outcomes == b.outcomes
    assert [(r.node, r.api_key, r.version, r.produce_values) for r in a.sent] == \
        [(r.node, r.api_key, r.version, r.produce_values) for r in b.sent]
    assert a.engine.stats() == b.engine.stats()


def test_only_clean_one_batch_answers_skip_the_decoder(monkeypatch):
    h = _harness()
    d = FastDriver(h)
    e = h.engine
    decoded = []
    real = e.decode
    monkeypatch.setattr(e, "decode", lambda req, frame: decoded.append(req) or real(req, frame))
    d.submit(0, [b"a"], SYNC, "a")
    d.answer(h.unanswered[0])
    assert decoded == [] and [o.error for o in h.outcomes] == [0]
    h.cluster.produce_errors[("t", 0)].append(6)         # NOT_LEADER_OR_FOLLOWER: the general way
    d.submit(0, [b"b"], SYNC, "b")
    req = h.unanswered[0]
    d.answer(req)
    assert decoded == [req]
    d.poll_if_due()
    h.run()
    assert [(o.token, o.error) for o in h.outcomes] == [("a", 0), ("b", 0)]
    assert h.values("t", 0)[-2:] == [b"a", b"b"]


def test_many_lanes_with_records_always_poll():
    """needs_poll scans the lanes with records; a busy producer with more than a few just polls."""
    import kafkad.engine.engine as engine_mod

    n = engine_mod._NEEDS_POLL_SCAN_MAX + 1
    h = _harness()
    h.cluster.create("busy", n)
    for p in range(n):
        h.cluster.move_leader("busy", p, 2)
    h.submit("busy", 0, [b"warm-up"])     # connects broker 2
    h.run()
    h.hold_answers.add(2)                 # their batches stay on the wire
    for p in range(n):
        h.submit("busy", p, [b"x"], settings=settings(async_send=True, batch_n=1))
    h.run(until=h.now + 0.1)
    assert len(h.engine._active) == n and h.engine.in_flight == n
    d = FastDriver(h)
    h.unanswered.clear()
    d.submit(0, [b"s"], SYNC, "s")        # broker 1: its answer comes
    assert d.poll_wanted                   # over the cap: the submission's side says yes
    d.poll_wanted = False
    d.answer(h.unanswered[0])
    assert d.poll_wanted                   # and the answer's side (no scan: a poll would do nothing)


def test_the_one_lane_shortcut_sends_what_the_general_way_sends(monkeypatch):
    """Engine._send_one (one sync lane, one new batch) changes the engine exactly as
    _visit_lane + _build_requests do: the same runs with it and without it."""
    from kafkad.engine.engine import Engine

    real = Engine._send_one
    taken = []

    def counting(self, lane, now):
        ok = real(self, lane, now)
        taken.append(ok)
        return ok

    for seed in range(12):
        monkeypatch.setattr(Engine, "_send_one", counting)
        a, _ = _random_run(seed)
        monkeypatch.setattr(Engine, "_send_one", lambda self, lane, now: False)
        b, _ = _random_run(seed)
        assert a.trace == b.trace
        assert a.outcomes == b.outcomes
        assert [(r.node, r.api_key, r.version, r.produce_values) for r in a.sent] == \
            [(r.node, r.api_key, r.version, r.produce_values) for r in b.sent]
        assert a.engine.stats() == b.engine.stats()
    assert sum(taken) >= 20 and not all(taken)     # both ways were exercised


@pytest.mark.parametrize("burst", [False, True])
def test_a_batch_that_cannot_be_encoded_fails_alone(burst, monkeypatch):
    """A codec failure fails that batch's records (UNKNOWN_SERVER_ERROR), on the
    one-lane shortcut (a lone sync send) as on the general way (a burst of two lanes)."""
    import kafkad.engine.engine as engine_mod

    real = engine_mod.encode_record_batch

    def encode(keys, values, *a, **kw):
        if b"bad" in values:
            raise RuntimeError("codec broke")
        return real(keys, values, *a, **kw)

    monkeypatch.setattr(engine_mod, "encode_record_batch", encode)
    h = _harness()
    d = FastDriver(h)
    calls = [(0, [b"bad"], SYNC, "bad")] + ([(1, [b"ok"], SYNC, "ok")] if burst else [])
    d.burst(calls)
    assert d.poll_wanted                        # the failure's outcome waits for it
    d.poll_if_due()
    assert [(o.token, o.error) for o in h.outcomes] == [("bad", -1)]
    for req in list(h.unanswered):
        d.answer(req)
    d.poll_if_due()
    h.run()
    h.check_accounting()
    assert sorted((o.token, o.error) for o in h.outcomes) == sorted(
        [("bad", -1)] + ([("ok", 0)] if burst else []))
    d.submit(0, [b"next"], SYNC, "next")            # the lane goes on
    d.answer(h.unanswered[0])
    assert (h.outcomes[-1].token, h.outcomes[-1].error) == ("next", 0)

"""Per submission, outcomes come back in record order, each record exactly once.

The IPC server maps a submission's outcomes onto its SEND entries by arrival
order, so a failure reported before an earlier run's delivery would mark the
wrong messages failed. These tests drive the engine with a fake clock: fixed
scenarios that once broke the order, and seeded random event orders.
"""

from __future__ import annotations

import random

import pytest

from .fakes import FakeCluster, Harness, settings

SYNC = settings(async_send=False)


def _cluster() -> FakeCluster:
    c = FakeCluster()
    c.create("t", 3)
    return c


def _connect(h: Harness) -> None:
    h.submit("t", 0, [b"warm-up"], token="warm-up")
    h.run()
    h.sent.clear()
    h.outcomes.clear()


def check_order(h: Harness, subs: dict, left=()) -> None:
    """Every token's outcomes (then its undelivered parts) cover its records in order, once.

    A delivered run is checked against the partition log at its base offset,
    so a run reported in another run's place shows up as the wrong values.
    """
    cursor = {tok: 0 for tok in subs}
    for o in h.outcomes:
        sub = subs[o.token]
        i = cursor[o.token]
        n = o.delivered + o.failed
        assert n > 0 and (o.delivered == 0 or o.failed == 0), o
        assert i + n <= len(sub.values), f"{o.token}: more outcomes than records: {o}"
        if o.delivered and o.base_offset >= 0:
            log = h.cluster.logs[(o.topic, o.partition)]
            got = [w.value for w in log[o.base_offset:o.base_offset + n]]
            assert got == sub.values[i:i + n], f"{o.token}: run {o} is not records {i}..{i + n}"
        cursor[o.token] = i + n
    for part in left:
        i = cursor[part.token]
        assert part.values == subs[part.token].values[i:i + len(part.values)], part.token
        cursor[part.token] = i + len(part.values)
    short = {t: (cursor[t], len(s.values)) for t, s in subs.items() if cursor[t] != len(s.values)}
    assert not short, f"records not accounted for: {short}"


def test_expiry_behind_a_batch_on_the_wire_waits_for_its_answer():
    """One submission in two batches; the first on the wire past the delivery timeout."""
    h = Harness(_cluster(), delivery_timeout_ms=10_000, request_timeout_ms=30_000,
                batch_max_bytes=2000, max_in_flight_per_connection=1)
    _connect(h)
    h.hold_answers.add(1)
    sub = h.submit("t", 0, [bytes([65 + i]) * 600 for i in range(6)], token="T", settings=SYNC)
    h.run(until=h.now + 1)
    assert len(h.unanswered) == 1     # the first batch is out, the second waits behind it
    h.run(until=h.now + 9.5)          # past the delivery deadline, before the request timeout
    assert h.by_token()["T"] == []    # the second batch must not be reported before the first
    h.hold_answers.discard(1)
    req = h.unanswered.pop(0)
    h.engine.response(req, h.cluster.answer(req), h.now)
    h.run(until=h.now + 1)
    runs = [(o.error, o.delivered, o.failed) for o in h.by_token()["T"]]
    assert runs == [(0, 3, 0), (7, 0, 3)]
    check_order(h, {"T": sub})


@pytest.mark.parametrize("second_error", [87, 6], ids=["permanent", "past-deadline"])
def test_a_later_batch_failing_while_an_earlier_one_waits_to_be_resent_is_reported_after_it(
        second_error):
    """B1 fails retriably, then B2 (still on the wire) fails for good: B1 is reported first."""
    c = _cluster()
    h = Harness(c, delivery_timeout_ms=10_000, request_timeout_ms=30_000,
                batch_max_bytes=2000, max_in_flight_per_connection=2, retry_backoff_max_ms=100)
    _connect(h)
    h.hold_answers.add(1)
    sub = h.submit("t", 0, [bytes([65 + i]) * 600 for i in range(6)], token="T",
                   settings=settings(async_send=False, retry_backoff_ms=50))
    h.run(until=h.now + 0.5)
    assert len(h.unanswered) == 2     # both batches on the wire
    c.produce_errors[("t", 0)].extend([19])          # B1: NOT_ENOUGH_REPLICAS, retriable
    first, second = h.unanswered
    h.unanswered.clear()
    h.engine.response(first, c.answer(first), h.now)
    if second_error == 6:
        h.now += 10.0                 # B2's answer comes after the delivery deadline
    c.produce_errors[("t", 0)].extend([second_error])
    h.engine.response(second, c.answer(second), h.now)
    h.hold_answers.discard(1)
    h.run(until=h.now + 5)
    check_order(h, {"T": sub})
    runs = [(o.error, o.delivered, o.failed) for o in h.by_token()["T"]]
    if second_error == 6:
        assert runs == [(7, 0, 3), (7, 0, 3)]
    else:
        # A verdict on a batch sent ahead of an unresolved one is not final: B2 is
        # resent after B1 (this fake refuses it only once) and both are delivered.
        assert runs == [(0, 3, 0), (0, 3, 0)]


@pytest.mark.parametrize("seed", range(40))
def test_random_event_orders_keep_each_submissions_outcomes_in_order(seed):
    """Answers, errors, lost connections, timeouts and a drain in random order."""
    rng = random.Random(seed)
    c = _cluster()
    h = Harness(c, delivery_timeout_ms=rng.choice([800, 3000]), request_timeout_ms=500,
                batch_max_bytes=rng.choice([700, 1500]),
                retry_backoff_max_ms=100, reconnect_backoff_ms=10,
                max_in_flight_per_connection=rng.choice([1, 2, 5]),
                idempotence=rng.random() < 0.8)
    _connect(h)
    h.hold_answers.update(c.brokers)   # every answer is played below, in random order
    e = h.engine
    subs = {}
    closes_seen = 0
    for step in range(400):
        r = rng.random()
        if r < 0.3:
            h.step()
        elif r < 0.4:
            h.now += rng.choice([0.001, 0.05, 0.3, 0.7])
        elif r < 0.55:
            tok = f"s{step}"
            n = rng.randint(1, 7)
            s = settings(async_send=rng.random() < 0.4, batch_n=3, batch_t=0.2,
                         acks=rng.choice([1, -1]), retry_backoff_ms=20)
            subs[tok] = h.submit("t", rng.randrange(3), [f"{tok}-{i}-".encode() * 40
                                                          for i in range(n)],
                                 settings=s, token=tok)
        elif h.unanswered:
            node = rng.choice(h.unanswered).node
            if rng.random() < 0.07:
                h.unanswered = [q for q in h.unanswered if q.node != node]
                e.disconnected(node, h.now, "reset")
            else:
                req = next(q for q in h.unanswered if q.node == node)
                h.unanswered.remove(req)
                if type(req.msg).__name__ == "ProduceRequest" and rng.random() < 0.2:
                    c.produce_errors[("t", rng.randrange(3))].append(
                        rng.choice([6, 19, 87, 10, 45]))
                e.response(req, c.answer(req), h.now)
        # requests of a connection the engine closed (request timeout) get no answer
        for node in h.closes[closes_seen:]:
            h.unanswered = [q for q in h.unanswered if q.node != node]
        closes_seen = len(h.closes)
    c.produce_errors.clear()
    left = []
    if rng.random() < 0.5:
        e.start_drain()
        for _ in range(rng.randint(0, 3)):
            h.step()
        left = e.take_undelivered()
        h.step()
    else:
        h.hold_answers.clear()
        for req in h.unanswered:
            if req.node not in h.closes[closes_seen:]:
                e.response(req, c.answer(req), h.now)
        h.unanswered.clear()
        h.run(until=h.now + 60)
        assert e.idle
    h.check_accounting()
    check_order(h, subs, left)


def test_a_batch_that_cannot_be_encoded_behind_one_on_the_wire_fails_after_it(monkeypatch):
    import kafkad.engine.engine as engine_mod

    real = engine_mod.encode_record_batch

    def broken(keys, values, *a, **kw):
        if any(v.startswith(b"poison") for v in values):
            raise RuntimeError("codec library missing")
        return real(keys, values, *a, **kw)

    h = Harness(_cluster(), batch_max_bytes=2000)
    _connect(h)
    monkeypatch.setattr(engine_mod, "encode_record_batch", broken)
    values = [bytes([65 + i]) * 600 for i in range(3)] + [b"poison" * 100] * 3
    sub = h.submit("t", 0, values, token="T", settings=SYNC)
    h.run()
    runs = [(o.error, o.delivered, o.failed) for o in h.by_token()["T"]]
    assert runs == [(0, 3, 0), (-1, 0, 3)]
    check_order(h, {"T": sub})


def test_nothing_goes_without_a_sequence_when_another_lane_starts_an_epoch_bump_in_the_same_poll():
    """Lane p1 picks a batch, then lane p0's expiry (maybe written) starts a bump: p1 waits.

    A batch sent without a sequence number while the group bumps its epoch
    could overtake the lane's other batches (and be reported before them).
    """
    from kafkad.protocol import decode_record_batches

    c = _cluster()
    c.move_leader("t", 0, 2)
    c.move_leader("t", 1, 1)
    h = Harness(c, delivery_timeout_ms=10_000, request_timeout_ms=30_000)
    _connect(h)
    h.submit("t", 1, [b"w"], token="w1")       # broker 1's connection up too
    h.run()
    h.outcomes.clear()
    h.hold_answers.add(1)
    x = h.submit("t", 1, [b"x"], token="x", settings=SYNC)   # p1's lane is the older one
    h.run(until=h.now + 0.1)
    h.hold_answers.add(2)
    p0_at = h.now
    p0 = h.submit("t", 0, [b"p0"], token="p0", settings=SYNC)
    h.run(until=h.now + 0.1)
    h.up.discard(2)
    h.unanswered = [q for q in h.unanswered if q.node != 2]
    h.engine.disconnected(2, h.now, "reset")   # p0's batch may have been written
    h.run(until=p0_at + 9.9)
    assert h.by_token()["p0"] == []
    h.sent.clear()
    h.now = p0_at + 10.0                       # p0's delivery deadline
    y = h.submit("t", 1, [b"y"], token="y", settings=SYNC)
    h.step()                                   # p0 expires in the poll that would send y
    assert [(o.error, o.failed) for o in h.by_token()["p0"]] == [(7, 1)]
    for req in h.produce_requests():
        for t in req.msg.topic_data:
            for p in t.partition_data:
                assert decode_record_batches(p.records)[0].producer_id >= 0, \
                    "a batch went out without a producer id during the bump"
    h.hold_answers.clear()
    for req in h.unanswered:
        h.engine.response(req, c.answer(req), h.now)
    h.unanswered.clear()
    h.run()
    assert h.values("t", 1) == [b"w", b"x", b"y"]
    check_order(h, {"x": x, "y": y, "p0": p0})

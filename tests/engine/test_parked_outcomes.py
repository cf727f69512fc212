"""Outcomes of batches acknowledged while an earlier batch of their lane is unresolved.

The I/O shell maps a submission's outcomes onto its records in the order
they come (kafkad/ipc/server.py `_async_outcome`, `_sync_outcome`). A batch
answered 7 or 20 was written and is resent; batches behind it may be
acknowledged first. Their outcomes are parked on the lane and reported once
everything ahead of them has settled, in lane order (docs/engine.md,
"Retries"). These cases came from reviews, each with a
reproduction that failed before.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from kafkad.engine.types import Outcome
from tests.engine.fakes import Harness, settings
from tests.engine.test_engine import cluster, connect

GROUP = (-1, 1000, 0, None)   # acks=-1, ack timeout 1000, no codec
ACKS_ALL = settings(acks=-1)


def mapped(h: Harness, token, values: list[bytes]) -> list[tuple[bytes, bytes | None]]:
    """(record, what the log holds where its outcome says) in the order the I/O shell maps them."""
    log = h.values("t", 0)
    out, done = [], 0
    for o in h.by_token()[token]:
        n = o.delivered + o.failed
        for i in range(n):
            out.append((values[done + i], log[o.base_offset + i] if o.error == 0 else None))
        done += n
    assert done == len(values)
    return out


def answer_all(h: Harness) -> None:
    reqs = list(h.unanswered)
    h.unanswered.clear()
    for r in reqs:
        h.deliver(r, h.cluster.answer(r))


def step_until_sent(h: Harness, n: int) -> None:
    """Poll (moving the clock to each deadline) until `n` requests wait for an answer."""
    for _ in range(100):
        if len(h.unanswered) >= n:
            return
        h.step()
        if len(h.unanswered) < n:
            h.now = h.deadline
    raise AssertionError(f"{len(h.unanswered)} of {n} requests sent")


def held_behind_one(h: Harness, first: bytes, values: list[bytes], token: str) -> None:
    """acks=-1, warmed up; then `first` alone and `values` (as `token`) sent, answers held."""
    connect(h)
    h.submit("t", 0, [b"warm"], settings=ACKS_ALL)
    h.run()
    h.hold_answers.add(1)
    h.submit("t", 0, [first], settings=ACKS_ALL, token=first.decode())
    h.step()
    h.submit("t", 0, values, settings=ACKS_ALL, token=token)
    h.step()


def test_parked_outcomes_come_out_in_lane_order_not_acknowledgement_order():
    """X, then S over W and Y. X and W are answered 7, Y is acknowledged (parked); on the
    resend W is acknowledged (parked after Y, by time) while X is answered 7 again."""
    c = cluster("t")
    h = Harness(c, linger_ms=0, batch_max_bytes=200)
    s = [b"x" * 60, b"y" * 60]
    held_behind_one(h, b"X", s, "S")
    c.errors_after_append[("t", 0)].extend([7, 7])
    answer_all(h)
    step_until_sent(h, 2)                       # X and W again
    c.produce_errors[("t", 0)].append(7)
    answer_all(h)
    h.hold_answers.clear()
    h.run()
    assert [v == got for v, got in mapped(h, "S", s)] == [True, True]
    h.check_accounting()


def test_the_halves_of_a_split_batch_report_in_their_order():
    """A answered 7; T's batch refused as too large and split in two; on the resend the
    first half is acknowledged (parked behind A) while the second is answered 7. Both
    halves had one place in the lane: once A settled, the first half waited behind the
    second and reported after it."""
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    t = [b"T0", b"T1", b"T2", b"T3"]
    held_behind_one(h, b"A", t, "T")
    ra, rb = h.unanswered
    h.unanswered.clear()
    c.errors_after_append[("t", 0)].append(7)   # A written, answered 7
    h.deliver(ra, c.answer(ra))
    c.produce_errors[("t", 0)].append(10)       # T's batch: MESSAGE_TOO_LARGE, split
    h.deliver(rb, c.answer(rb))
    step_until_sent(h, 3)
    ra, first, second = h.unanswered
    h.unanswered.clear()
    c.produce_errors[("t", 0)].append(7)        # A again (it is written already)
    h.deliver(ra, c.answer(ra))
    h.deliver(first, c.answer(first))           # the first half: acknowledged, parked
    c.produce_errors[("t", 0)].append(7)        # the second half, not written
    h.deliver(second, c.answer(second))
    h.hold_answers.clear()
    h.run()
    assert [v == got for v, got in mapped(h, "T", t)] == [True] * 4
    h.check_accounting()


def test_expiry_stops_at_a_batch_that_keeps_records():
    """X holds an unexpired record and an expired one (a reload shortened the delivery
    timeout between them); S fills W (acknowledged, parked) and Y (collateral). The
    expiry takes c1 out of X: Y's record waits for X instead of failing before W's."""
    c = cluster("t")
    h = Harness(c, linger_ms=0, batch_max_bytes=200, delivery_timeout_ms=100_000,
                retry_backoff_max_ms=20_000)
    connect(h)
    s = settings(acks=-1, async_send=True, batch_n=1, retry_backoff_ms=10_000)
    h.submit("t", 0, [b"warm"], settings=s)
    h.run()
    h.hold_answers.add(1)
    h.submit("t", 0, [b"c2"], settings=s, token="c2")
    h.engine.reconfigure(replace(h.kafka, delivery_timeout_ms=5_000), h.engine.queue)
    h.submit("t", 0, [b"c1"], settings=s, token="c1")
    h.step()
    values = [b"x" * 60, b"y" * 60]
    h.submit("t", 0, values, settings=s, token="S")
    h.step()
    rx, rw, ry = h.unanswered
    h.unanswered.clear()
    c.errors_after_append[("t", 0)].append(7)
    h.deliver(rx, c.answer(rx))
    h.deliver(rw, c.answer(rw))
    c.produce_errors[("t", 0)].append(7)
    h.deliver(ry, c.answer(ry))
    h.hold_answers.clear()
    h.run()
    outs = h.by_token()["S"]
    assert outs[0].delivered == 1 and h.values("t", 0)[outs[0].base_offset] == values[0], outs
    assert [o.error for o in h.by_token()["c1"]] == [7]
    h.check_accounting()


def drain_deadline(h: Harness) -> list:
    """What the daemon does at a drain deadline: take what is left, report the outcomes
    that produces, fail the parts returned (kafkad/daemon.py `_report_undelivered`)."""
    left = h.engine.take_undelivered()
    h.outcomes += h.engine.poll(h.now).outcomes
    h.outcomes += [Outcome(sub.token, sub.topic, sub.partition, 99, -1, 0, len(sub.values))
                   for sub in left]
    h.check_accounting()
    return left


def test_at_a_drain_deadline_a_submission_with_a_part_left_goes_whole_from_there():
    """T over several batches: the first answered 7 and still unresolved, the rest
    acknowledged and parked. Its later records go with its first: every record of T
    gets exactly one outcome, the failure, and none counts as delivered."""
    c = cluster("t")
    h = Harness(c, linger_ms=0, batch_max_bytes=200)
    connect(h)
    h.hold_answers.add(1)
    t = [b"%d" % i * 60 for i in range(4)]
    h.submit("t", 0, t, token="T")
    h.step()
    c.errors_after_append[("t", 0)].append(7)
    delivered = h.engine.delivered
    answer_all(h)
    assert h.by_token()["T"] == []
    left = drain_deadline(h)
    assert [v for sub in left for v in sub.values] == t
    outs = h.by_token()["T"]
    assert {(o.error, o.delivered) for o in outs} == {(99, 0)} and sum(o.failed for o in outs) == 4
    assert h.engine.delivered == delivered
    assert h.engine.stats()["dropped"] == 4


@pytest.mark.parametrize("tokens", [("A", "B"), (None, None)], ids=["own-tokens", "shared-token"])
def test_at_a_drain_deadline_a_submission_parked_whole_is_reported_delivered(tokens):
    """A alone in X (answered 7, unresolved), B alone in Y (acknowledged, parked): B was
    written and nothing of it is left, so it is reported delivered (whatever its token:
    submissions are told apart by themselves)."""
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    h.hold_answers.add(1)
    a = h.submit("t", 0, [b"a"], token=tokens[0])
    h.step()
    h.submit("t", 0, [b"b"], token=tokens[1])
    h.step()
    c.errors_after_append[("t", 0)].append(7)
    answer_all(h)
    left = drain_deadline(h)
    assert [sub.values for sub in left] == [a.values]
    delivered = [o for o in h.outcomes if o.error == 0 and o.delivered]
    assert len(delivered) == 1 and h.values("t", 0)[delivered[0].base_offset] == b"b"
    assert [(o.error, o.failed) for o in h.outcomes if o.error] == [(99, 1)]


def test_an_out_of_order_answer_after_the_engine_closed_a_gap_is_no_lost_sequence():
    """o0, o1, o2 on the wire; o0 refused for good, so o1 and o2 move down a sequence;
    the broker answers o1 (sent with the old number) OUT_OF_ORDER. o1 is then the
    lane's first batch, but its answer echoes the engine's own renumbering: it is
    resent, not taken for a lost sequence (no epoch bump, no retry counted)."""
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    s = settings(acks=-1, async_send=True, batch_n=1, retry_limit=0)
    h.submit("t", 0, [b"warm"], settings=s)
    h.run()
    h.sent.clear()
    h.hold_answers.add(1)
    for i in range(3):
        h.submit("t", 0, [b"o%d" % i], settings=s, token=f"o{i}")
        h.step()
    h.hold_answers.clear()
    c.produce_errors[("t", 0)].append(87)       # INVALID_RECORD: not written, not retriable
    answer_all(h)
    h.run()
    assert {t: [o.error for o in h.by_token()[t]] for t in ("o0", "o1", "o2")} == \
        {"o0": [87], "o1": [0], "o2": [0]}
    assert not [r for r in h.sent if type(r.msg).__name__ == "InitProducerIdRequest"]
    assert h.values("t", 0)[-2:] == [b"o1", b"o2"]
    h.check_accounting()

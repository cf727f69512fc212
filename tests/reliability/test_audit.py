"""The auditor on synthetic records: it must catch each defect, and only that defect."""

from __future__ import annotations

import pytest

from tests.support.audit import (HEADER_LEN, audit, check_accounting, parse, read_topic, stamp,
                                 worker_key)


def _stream(worker: int, seqs) -> list[bytes]:
    return [stamp(worker, s, 40) for s in seqs]


def test_stamp_round_trips_and_pads():
    v = stamp(7, 42, 100)
    assert len(v) == 100 and parse(v) == (7, 42)
    assert len(stamp(1, 1)) == HEADER_LEN
    assert parse(b"not a stamp") is None and parse(None) is None
    assert worker_key(3) == b"worker-000003"
    with pytest.raises(ValueError, match="worker"):
        stamp(-1, 0)
    with pytest.raises(ValueError, match="seq"):
        stamp(0, 10**13)


def test_clean_stream_is_clean():
    rep = audit({0: _stream(1, range(50)), 1: _stream(2, range(30))}, {1: range(50), 2: range(30)})
    assert rep.clean, rep.details()
    assert rep.read == 80 and rep.partitions_per_worker == {1: {0}, 2: {1}}


def test_missing_is_caught_per_worker():
    seqs = [s for s in range(20) if s not in (3, 17)]
    rep = audit({0: _stream(1, seqs), 1: _stream(2, range(5))}, {1: range(20), 2: range(5)})
    assert rep.missing == {1: [3, 17]}
    assert (rep.n_missing, rep.n_duplicated, rep.n_disorder) == (2, 0, 0)
    assert not rep.clean


def test_a_worker_with_nothing_delivered_is_all_missing():
    rep = audit({0: []}, {4: range(3)})
    assert rep.missing == {4: [0, 1, 2]}


def test_duplicates_are_caught_even_in_another_partition():
    # A retried batch written twice (idempotence off) and a copy on another partition.
    rep = audit({0: _stream(1, [0, 1, 2, 3, 1, 2, 3, 4]), 2: _stream(1, [4])}, {1: range(5)})
    assert rep.duplicated == {1: 4}
    assert rep.n_disorder == 0 and rep.n_missing == 0
    assert rep.partitions_per_worker == {1: {0, 2}}


def test_disorder_is_per_worker_per_partition():
    # Interleaving of two workers in one partition is fine; a swap within one worker is not.
    p0 = [stamp(1, 0), stamp(2, 0), stamp(1, 1), stamp(2, 2), stamp(2, 1), stamp(1, 2)]
    rep = audit({0: p0}, {1: range(3), 2: range(3)})
    assert rep.disorder == {2: 1}
    assert rep.n_missing == rep.n_duplicated == 0
    # The same worker in two partitions: each partition's order is its own.
    rep = audit({0: _stream(1, [0, 2, 4]), 1: _stream(1, [1, 3, 5])}, {1: range(6)})
    assert rep.clean, rep.details()


def test_unexpected_and_foreign_records_are_reported():
    rep = audit({0: _stream(1, [0, 1, 9]) + [b"garbage", None], 1: _stream(5, [0])}, {1: range(2)})
    assert rep.unexpected == {1: [9], 5: [0]}
    assert rep.foreign == 2
    assert "unexpected=2" in rep.summary() and "foreign=2" in rep.summary()


def test_details_lists_what_is_wrong():
    rep = audit({0: _stream(1, [0, 2, 1, 1])}, {1: range(4)})
    text = rep.details()
    assert "worker 1 missing: [3]" in text and "worker 1 duplicated: 1" in text
    assert "worker 1 disorder: 1" in text


def test_accounting_balances_or_says_why():
    good = {"accepted": 10, "delivered": 6, "failed": 1, "dropped": 0, "queued_messages": 2,
            "in_flight": 1, "unaccounted": 0}
    assert check_accounting(good) == []
    legacy = dict(good, queued=2)
    del legacy["queued_messages"]
    assert check_accounting(legacy) == []
    [problem] = check_accounting(dict(good, delivered=7, unaccounted=-1))
    assert "accepted=10" in problem and "=11" in problem
    [problem] = check_accounting(dict(good, unaccounted=3))
    assert problem.startswith("unaccounted=3")
    assert check_accounting(dict(good, queued_messages=-1)) == ["queued_messages: negative (-1)"]
    missing = dict(good)
    del missing["dropped"]
    assert check_accounting(missing) == ["dropped: missing or not an integer (None)"]
    assert check_accounting(dict(good, failed=True))[0].startswith("failed:")


@pytest.mark.broker
def test_read_topic_reads_every_partition_in_offset_order(tansu, topic):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=tansu.bootstrap, linger_ms=0)
    try:
        for part in range(3):
            for s in range(5):
                p.send(topic, stamp(part, s), partition=part)
        p.flush(10)
    finally:
        p.close(1)
    got = read_topic(tansu.bootstrap, topic, expected=15)
    assert {k: [parse(v) for v in vals] for k, vals in got.items()} == {
        part: [(part, s) for s in range(5)] for part in range(3)}
    rep = audit(got, {w: range(5) for w in range(3)})
    assert rep.clean, rep.details()

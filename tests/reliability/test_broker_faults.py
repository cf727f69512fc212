"""Broker-side faults against the real daemon: Tansu behind the fault proxy.

Writers are real processes using the shim (async KeyedProducer keyed by
worker id); everything is read back from the broker and audited. Each test
has a short form for `make test` and a full-length form under
`@pytest.mark.slow` for `make reliability`.
"""

from __future__ import annotations

import time

import pytest

from tests.reliability.harness import audit_topic, report, start_worker, wait_until
from tests.support.audit import check_accounting

pytestmark = pytest.mark.broker


def _records_through(proxied) -> int:
    return proxied.proxy.stats().records


def _finish(workers, timeout=120.0) -> list[dict]:
    results = [w.wait(timeout) for w in workers]
    for r in results:
        assert r["errors"] == [], r
    return results


def _settled_stats(daemon, timeout=20.0) -> dict:
    """Stats once nothing is queued or in flight (the books can only balance at rest)."""
    def settled():
        s = daemon.stats()
        return s if s["queued_messages"] == 0 and s["in_flight"] == 0 else None
    return wait_until(settled, timeout, "the daemon to have nothing queued or in flight", 0.1)


def _outage(proxied, ptopic, kafkad_factory, *, workers, count, rate, outage_s, request_timeout_ms,
            name):
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=request_timeout_ms, drain_timeout_s=10)
    d.start()
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=rate) for w in range(workers)]
    # The fault starts mid-stream: once some records went through.
    wait_until(lambda: _records_through(proxied) >= workers * 10, 30, "the first records at the broker")
    proxied.proxy.refuse(outage_s)
    cut = proxied.proxy.cut()
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > outage_s, outage_s + 5, "the outage to pass")
    refused = proxied.proxy.stats().refused
    results = _finish(ws)
    assert sum(r["failed"] for r in results) == 0, results
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(workers)})
    problems = check_accounting(_settled_stats(d))
    report(name, rep, d, outage_s=outage_s, connections_cut=cut, connects_refused=refused)
    assert refused > 0, "the daemon never tried to reconnect during the outage"
    assert rep.n_missing == 0 and rep.n_disorder == 0 and rep.foreign == 0, rep.details()
    # Idempotence is on by default and Tansu deduplicates (test_broker_facts.py).
    assert rep.n_duplicated == 0, rep.details()
    assert problems == []
    assert d.term() == 0


def test_broker_unreachable_longer_than_request_timeout(proxied, ptopic, kafkad_factory):
    _outage(proxied, ptopic, kafkad_factory, workers=2, count=1500, rate=1000, outage_s=2.5,
            request_timeout_ms=1000, name="broker-unreachable")


@pytest.mark.slow
def test_broker_unreachable_long(proxied, ptopic, kafkad_factory):
    _outage(proxied, ptopic, kafkad_factory, workers=4, count=20000, rate=2000, outage_s=15,
            request_timeout_ms=2000, name="broker-unreachable-long")


def _cold_start(proxied, ptopic, kafkad_factory, *, workers, count, rate, outage_s, spool, name):
    """Daemon and workers start while no broker answers; the brokers come back later.

    The workers' KeyedProducers get no partition list, so kafkad picks each
    record's partition once the cluster answers (docs/ipc-schema.md
    "Partitions the daemon picks"): every record must arrive, once, in its
    key's murmur2 partition, in order.
    """
    from client_shim.partitioner import murmur2
    from tests.support.audit import worker_key

    proxied.proxy.refuse()
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=2000, drain_timeout_s=10, spool=spool,
                       extra={"kafka": {"reconnect_backoff_max_ms": 500}})
    d.start()
    t0 = time.monotonic()
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=rate) for w in range(workers)]
    peak = 0
    while time.monotonic() - t0 < outage_s:
        s = d.stats()
        peak = max(peak, s["unplaced"])
        assert s["delivered"] == 0, s
        time.sleep(0.2)
    refused = proxied.proxy.stats().refused
    proxied.proxy.heal()
    results = _finish(ws)
    assert sum(r["failed"] for r in results) == 0, results
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(workers)})
    problems = check_accounting(_settled_stats(d))
    report(name, rep, d, outage_s=outage_s, spool=spool, connects_refused=refused, peak_unplaced=peak)
    assert peak > 0, "no record waited for kafkad to pick its partition"
    assert rep.n_missing == 0 and rep.n_disorder == 0 and rep.foreign == 0, rep.details()
    assert rep.n_duplicated == 0, rep.details()
    assert rep.partitions_per_worker == {
        w: {(murmur2(worker_key(w)) & 0x7FFFFFFF) % 3} for w in range(workers)}
    assert problems == []
    assert d.term() == 0


@pytest.mark.slow
@pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool"])
def test_workers_starting_during_an_outage(proxied, ptopic, kafkad_factory, spool):
    _cold_start(proxied, ptopic, kafkad_factory, workers=6, count=6000, rate=1000, outage_s=4,
                spool=spool, name=f"cold-start-outage-{'spool' if spool else 'memory'}")


def _lost_answers(proxied, ptopic, kafkad_factory, *, idempotence, lose, count, name):
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=1000, idempotence=idempotence)
    d.start()
    # The stream lasts longer than the losses take to be noticed (about one
    # request timeout each), so the daemon is busy when each answer is lost:
    # test_lost_answer_on_a_quiet_link covers the idle case.
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=500) for w in range(2)]
    wait_until(lambda: _records_through(proxied) >= 20, 30, "the first records at the broker")
    proxied.proxy.lose_responses(lose)
    results = _finish(ws)
    lost = proxied.proxy.stats().lost_responses
    assert sum(r["failed"] for r in results) == 0, results
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(2)})
    report(name, rep, d, idempotence=idempotence, lost_answers=lost)
    assert lost == lose, "the fault did not bite: fewer Produce answers were lost than asked"
    assert rep.n_missing == 0 and rep.n_disorder == 0, rep.details()
    return rep


def test_response_lost_idempotent_is_deduplicated(proxied, ptopic, kafkad_factory):
    rep = _lost_answers(proxied, ptopic, kafkad_factory, idempotence=True, lose=3, count=2500,
                        name="response-lost-idempotent")
    assert rep.n_duplicated == 0, rep.details()


def test_response_lost_without_idempotence_duplicates_are_caught(proxied, ptopic, kafkad_factory):
    rep = _lost_answers(proxied, ptopic, kafkad_factory, idempotence=False, lose=3, count=2500,
                        name="response-lost-no-idempotence")
    # The broker wrote each batch whose answer was lost; the retry wrote it again.
    assert rep.n_duplicated > 0, rep.details()


@pytest.mark.parametrize("idempotence", [True, False], ids=["idempotent", "plain"])
def test_lost_answers_on_a_quiet_link(proxied, ptopic, kafkad_factory, idempotence):
    """One sync send on an idle daemon, its answer lost twice (the second time on the retry)."""
    import threading

    from client_shim import KeyedProducer

    from tests.support.audit import audit, read_topic, stamp, worker_key

    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=1000, idempotence=idempotence,
                       extra={"kafka": {"delivery_timeout_ms": 60000}})
    d.start()
    p = KeyedProducer(d.endpoint)
    try:
        assert p.send_messages(ptopic, worker_key(0), stamp(0, 0))[0].error == 0
        proxied.proxy.reset_stats()
        proxied.proxy.lose_responses(2)
        result = []
        t = threading.Thread(target=lambda: result.append(
            p.send_messages(ptopic, worker_key(0), stamp(0, 1))), daemon=True)
        t.start()
        wait_until(lambda: proxied.proxy.stats().lost_responses == 2, 20, "two answers to be lost")
        # Allow ten request timeouts for the retry after the second loss.
        wait_until(lambda: len(proxied.proxy.stats().batches) >= 3, 10,
                   "the daemon to retry the batch whose answer was lost (request_timeout_ms=1000)")
        t.join(10)
        assert result and result[0][0].error == 0
    finally:
        p.stop()
    rep = audit(read_topic(proxied.bootstrap, ptopic, expected=2), {0: range(2)})
    report(f"lost-answers-quiet-link-{'idempotent' if idempotence else 'plain'}", rep, d)
    assert len(proxied.proxy.stats().batches) == 3
    assert rep.n_missing == 0 and rep.n_disorder == 0
    # Three copies of the batch reached the broker: one written with idempotence, three without.
    assert rep.n_duplicated == (0 if idempotence else 2), rep.details()


def test_an_epoch_bump_leaves_another_partitions_lost_answer_to_the_broker(proxied, ptopic, kafkad_factory):
    """Two partitions' answers lost at once; one of them gives up, which bumps the epoch.

    Partition 0's message comes from a producer allowed no retries: it fails and,
    since the broker may have written it, its partition starts over under a new
    epoch. Partition 1's sync message, written by the broker too, is retried. Sent
    under the new epoch from sequence 0 it would be a new batch to the broker and be
    written twice; under the epoch and sequence of its first send it is the
    broker's duplicate. (Before: partition 1 had it twice.)
    """
    import threading

    from client_shim import Producer

    from tests.support.audit import audit, read_topic, stamp

    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=1000,
                       extra={"kafka": {"delivery_timeout_ms": 60000}})
    d.start()
    sync = Producer(d.endpoint)
    strict = Producer(d.endpoint, async_send=True, async_retry_limit=0, batch_send_every_n=1)
    try:
        for part in (0, 1):
            assert sync.send_messages(ptopic, part, stamp(part, 0))[0].error == 0
        proxied.proxy.reset_stats()
        proxied.proxy.lose_responses(1)
        strict.send_messages(ptopic, 0, stamp(0, 1))
        wait_until(lambda: len(proxied.proxy.stats().batches) >= 1, 10, "partition 0's batch")
        result = []
        t = threading.Thread(target=lambda: result.append(sync.send_messages(ptopic, 1, stamp(1, 1))),
                             daemon=True)
        t.start()
        t.join(30)
        assert result and result[0][0].error == 0
        strict.stop(10)
    finally:
        sync.stop()
    stats = _settled_stats(d)
    got = read_topic(proxied.bootstrap, ptopic, expected=4)
    rep = audit(got, {0: range(2), 1: range(2)})
    report("epoch-bump-other-partition", rep, d, lost_answers=proxied.proxy.stats().lost_responses,
           failed=stats["failed"])
    assert proxied.proxy.stats().lost_responses == 1
    assert stats["failed"] == 1, stats              # partition 0's, with no retries allowed
    # partition 0's batch, partition 1's on the same silent connection, and its resend
    # under the producer id and sequence of its first send
    seen = [(b.producer_id, b.base_sequence) for b in proxied.proxy.stats().batches]
    assert len(seen) == 3 and seen[1] == seen[2] and seen[1][0] >= 0, seen
    assert got[1] == [stamp(1, 0), stamp(1, 1)], got
    assert got[0][0] == stamp(0, 0) and got[0][1:] in ([], [stamp(0, 1)]), got


def test_answers_lost_as_the_stream_ends(proxied, ptopic, kafkad_factory):
    """Answers lost at the end of a burst: the daemon must still notice and retry on its own.

    Nothing wakes the daemon after the last submission but its own timers:
    this caught a poll that armed no timer for requests it had just put in
    flight (a request stayed unanswered for minutes with request_timeout_ms=1000).
    """
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=1000)
    d.start()
    ws = [start_worker(d.endpoint, ptopic, w, 1000, rate=800, stop_timeout=15) for w in range(2)]
    wait_until(lambda: _records_through(proxied) >= 20, 30, "the first records at the broker")
    proxied.proxy.lose_responses(3)
    results = [w.wait(60) for w in ws]
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(1000) for w in range(2)})
    report("answers-lost-as-stream-ends", rep, d, lost_answers=proxied.proxy.stats().lost_responses)
    assert [r["not_delivered"] for r in results] == [0, 0], results
    assert rep.clean, rep.details()


@pytest.mark.slow
def test_response_lost_many_times(proxied, ptopic, kafkad_factory):
    rep = _lost_answers(proxied, ptopic, kafkad_factory, idempotence=True, lose=25, count=15000,
                        name="response-lost-idempotent-long")
    assert rep.n_duplicated == 0, rep.details()


def _slow(proxied, ptopic, kafkad_factory, *, count, latency, name):
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=1000)
    d.start()
    proxied.proxy.set_latency(latency)
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=1000) for w in range(2)]
    # Part of the stream with answers slower than the request timeout, then healed.
    wait_until(lambda: _records_through(proxied) >= 10, 30, "the first records at the broker")
    proxied.proxy.set_latency(1.5, up=False)
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > 3, 10, "the over-timeout phase to pass")
    proxied.proxy.set_latency(latency)
    results = _finish(ws)
    assert sum(r["failed"] for r in results) == 0, results
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(2)})
    report(name, rep, d, latency_s=latency)
    assert rep.clean, rep.details()


def test_slow_broker(proxied, ptopic, kafkad_factory):
    _slow(proxied, ptopic, kafkad_factory, count=1000, latency=0.1, name="slow-broker")


@pytest.mark.slow
def test_slow_broker_long(proxied, ptopic, kafkad_factory):
    _slow(proxied, ptopic, kafkad_factory, count=10000, latency=0.3, name="slow-broker-long")


def test_topic_deleted_while_in_use(tansu, topic, kafkad_factory):
    """The topic disappears mid-stream: no hang, no crash; every message delivered or reported failed.

    What was written before the deletion is gone with the topic (not kafkad's
    doing), so the auditor cannot count it; the daemon's books and the
    senders' reports must still account for every message.
    """
    import subprocess

    from tests.support.tansu import tansu_binary

    workers, count = 2, 1000
    d = kafkad_factory(tansu.bootstrap, request_timeout_ms=2000,
                       extra={"kafka": {"delivery_timeout_ms": 15000}})
    d.start()
    ws = [start_worker(d.endpoint, topic, w, count, rate=500, stop_timeout=30) for w in range(workers)]
    try:
        wait_until(lambda: d.stats()["delivered"] >= 300, 30, "the stream to be flowing")
        subprocess.run([tansu_binary(), "topic", "delete", "--broker", f"tcp://{tansu.bootstrap}", topic],
                       check=True, capture_output=True, timeout=30)
        results = [w.wait(90) for w in ws]
    finally:
        for w in ws:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(5)
    stats = _settled_stats(d)
    failed = sum(r["failed"] for r in results)
    report("topic-deleted", audit_topic_or_empty(tansu.bootstrap, topic, workers, count), d,
           delivered=stats["delivered"], failed=stats["failed"], reported_failed=failed)
    assert [r["not_delivered"] for r in results] == [0] * workers, results
    assert stats["accepted"] == workers * count
    assert stats["delivered"] + stats["failed"] == workers * count, stats
    assert stats["failed"] == failed
    assert check_accounting(stats) == []
    assert d.running


def audit_topic_or_empty(bootstrap, topic, workers, count):
    """Audit what the (possibly re-created) topic holds now; an absent topic audits as empty."""
    from tests.support.audit import audit, read_topic

    try:
        got = read_topic(bootstrap, topic, timeout=10)
    except RuntimeError:
        got = {}
    return audit(got, {w: range(count) for w in range(workers)})

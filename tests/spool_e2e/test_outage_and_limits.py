"""A spooling daemon through a broker outage longer than its memory cap, and with its spool full.

- Outage: `[queue] max_messages` is far below what the workers hand over
  while the broker is cut. Everything is acknowledged to the shims (it is on
  disk), the daemon is even stopped and started again during the outage,
  and once the broker returns the whole stream is delivered.
- Spool full: `max_bytes` is far below the stream. Under "block" the shims'
  SENDs wait; under "reject" they are refused and the shims replay them (the
  frames already on their way past the refused entry are answered too, so no
  worker is left holding messages once the broker returns). Either way the
  stream completes once the broker drains the spool, and the spool never
  grows past `max_bytes`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.reliability.harness import audit_topic, kill_workers, report, start_worker, wait_until

pytestmark = pytest.mark.broker



def test_broker_outage_longer_than_the_memory_cap(proxied, ptopic, kafkad_factory):
    workers, count, cap = 3, 1500, 300
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=1000, drain_timeout_s=1, spool=True,
                       extra={"queue": {"max_messages": cap}})
    d.start()
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=1500, stop_timeout=90) for w in range(workers)]
    try:
        wait_until(lambda: d.stats()["delivered"] >= 50, 30, "the first deliveries")
        proxied.proxy.refuse()
        proxied.proxy.cut()
        wait_until(lambda: d.stats()["spool"]["entries_pending"] > 0
                   and sum(w.proc.poll() is not None for w in ws) == workers, 60,
                   "every worker to see all its messages acknowledged (spooled)")
        results = [w.wait(10) for w in ws]
        during = d.stats()
        assert during["queued_messages"] + during["in_flight"] <= cap
        assert during["ipc"]["spool_deferred_messages"] > 0, during["ipc"]
        table = subprocess.run([sys.executable, "-m", "kafkad", "stats", "--endpoint", d.endpoint],
                               capture_output=True, text=True, timeout=10).stdout
        spool_lines = table.split("\nspool\n", 1)[1].splitlines()
        for name in ("bytes", "segments", "oldest_pending_age_s", "replayed", "damaged"):
            assert any(line.split()[:1] == [name] for line in spool_lines), (name, table)
        assert d.term(30) == 0                   # stopped during the outage: the spool keeps it all
        pending = during["spool"]["entries_pending"]
        d.restart()
        assert d.stats()["spool"]["entries_pending"] >= pending - during["delivered"]
        proxied.proxy.heal()
        wait_until(lambda: d.stats()["spool"]["entries_pending"] == 0, 90, "the spool to drain")
        final = d.stats()
    finally:
        kill_workers(ws)
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(workers)})
    report("spool-outage", rep, d, memory_cap=cap, spooled=pending)
    assert [r["failed"] for r in results] == [0] * workers, results
    assert [r["not_delivered"] for r in results] == [0] * workers, results
    assert rep.n_missing == 0 and rep.n_disorder == 0, rep.details()
    assert rep.n_duplicated <= final["ipc"]["spool_replayed_messages"], rep.details()
    assert "kept_in_spool" in d.logs()


@pytest.mark.parametrize("when_full", ["block", "reject"])
def test_spool_full(proxied, ptopic, kafkad_factory, when_full):
    workers, count, max_bytes = 2, 1500, 96 * 1024
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=1000, drain_timeout_s=5, spool=True,
                       extra={"spool": {"max_bytes": max_bytes, "segment_bytes": 16 * 1024,
                                        "when_full": when_full}})
    d.start()
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=2000, size=200, stop_timeout=90)
          for w in range(workers)]
    try:
        wait_until(lambda: d.stats()["delivered"] >= 20, 30, "the first deliveries")
        proxied.proxy.refuse()
        proxied.proxy.cut()
        wait_until(lambda: d.stats()["spool"]["full_rejections"] > 0, 60, "the spool to fill")
        full = d.stats()
        assert full["spool"]["data_bytes"] <= max_bytes
        if when_full == "reject":
            assert full["ipc"]["rejected"].get("spool_full", 0) > 0, full["ipc"]
        else:
            wait_until(lambda: d.stats()["ipc"]["spool_blocked"], 10, "the senders to be held")
            assert d.stats()["ipc"]["rejected"].get("spool_full", 0) == 0
        proxied.proxy.heal()
        results = [w.wait(120) for w in ws]
        wait_until(lambda: d.stats()["spool"]["entries_pending"] == 0, 60, "the spool to drain")
    finally:
        kill_workers(ws)
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(workers)})
    report(f"spool-full-{when_full}", rep, d)
    assert [r["failed"] for r in results] == [0] * workers, results
    assert [r["not_delivered"] for r in results] == [0] * workers, results
    assert rep.clean, rep.details()

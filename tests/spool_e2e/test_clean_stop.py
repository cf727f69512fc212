"""A clean SIGTERM/restart cycle while a backlog is being delivered: no duplicates.

The daemon drains what it took, and the acknowledgements of what the drain
delivered must reach the shims before its socket closes: a shim that misses
one sends the message again to the next daemon, which delivers it a second
time. The broker link is slowed so the drain has work when SIGTERM arrives;
the workers keep sending through the stop and the restart. Both without and
with a spool (with one, an acknowledgement is sent once an entry is on disk).
"""

from __future__ import annotations

import pytest

from tests.reliability.harness import audit_topic, kill_workers, report, start_worker, wait_until

pytestmark = pytest.mark.broker



@pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool"])
def test_sigterm_with_a_backlog_being_delivered_sends_nothing_twice(proxied, ptopic, kafkad_factory, spool):
    # Each worker sends for about 2.7 s (4000 at 1500/s): long enough that a
    # loaded machine still has a stream going when the link is slowed below.
    workers, count = 3, 4000
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=5000, drain_timeout_s=30, spool=spool)
    d.start()
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=1500, size=200, stop_timeout=60)
          for w in range(workers)]
    try:
        wait_until(lambda: d.stats()["delivered"] >= 300, 30, "the first deliveries")
        proxied.proxy.set_latency(0.05)         # every produce round trip takes a while
        wait_until(lambda: d.stats()["ipc"]["async_inflight_messages"] > 0, 10, "a backlog in the daemon")
        taken = d.stats()["ipc"]["messages_in"]
        assert d.term(60) == 0
        assert "drained undelivered=0" in d.logs()
        proxied.proxy.set_latency(0)
        d.restart()
        results = [w.wait(90) for w in ws]
    finally:
        kill_workers(ws)
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(workers)})
    report(f"clean-stop-{'spool' if spool else 'memory'}", rep, d, taken_before_stop=taken)
    assert [r["failed"] for r in results] == [0] * workers, results
    assert [r["not_delivered"] for r in results] == [0] * workers, results
    assert rep.n_missing == 0 and rep.n_disorder == 0, rep.details()
    assert rep.n_duplicated == 0, rep.details()

"""kill -9 of a spooling daemon under a steady multi-process async stream, restarted each time.

Every run reads the whole stream back: nothing may be missing, nothing out of
order, and the duplicates stay within the bound of docs/spool.md ("Duplicates
after a crash"): at most the entries the restarted daemons replayed from disk
plus what the shims replayed of what they had not seen acknowledged.
"""

from __future__ import annotations

import random

import pytest

from tests.reliability.harness import audit_topic, kill_workers, report, start_worker, wait_until

pytestmark = pytest.mark.broker

WORKERS = 3



def kill9_loop(proxied, ptopic, kafkad_factory, *, kills: int, count: int, rate: int, fsync: str,
               seed: int) -> None:
    rnd = random.Random(seed)
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=2000, drain_timeout_s=10, spool=True,
                       extra={"spool": {"fsync": fsync, "segment_bytes": 64 * 1024}})
    d.start()
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=rate, stop_timeout=60) for w in range(WORKERS)]
    replayed = 0
    try:
        for k in range(kills):
            # A random moment: somewhere in this daemon's share of the stream.
            # (Each daemon's counters start from zero; replays count as accepted again.)
            target = rnd.randint(1, max(2, WORKERS * count // (kills + 1)))
            wait_until(lambda: d.stats()["accepted"] >= target or all(w.proc.poll() is not None for w in ws),
                       60, f"load before kill {k + 1}")
            replayed += d.stats()["ipc"]["spool_replayed_messages"]
            d.kill9()
            d.restart()
        results = [w.wait(120) for w in ws]
        wait_until(lambda: d.stats()["spool"]["entries_pending"] == 0, 60, "the spool to empty")
        final = d.stats()
        replayed += final["ipc"]["spool_replayed_messages"]
    finally:
        kill_workers(ws)
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(WORKERS)})
    report(f"spool-kill9-{fsync}", rep, d, kills=kills, replayed_entries=replayed)
    logs = d.logs()
    assert [r["failed"] for r in results] == [0] * WORKERS, (results, logs[-3000:])
    assert [r["not_delivered"] for r in results] == [0] * WORKERS, results
    assert rep.n_missing == 0 and rep.n_disorder == 0 and rep.foreign == 0, (rep.details(), logs[-4000:])
    # The documented bound: a crash of the daemon duplicates only messages it replays
    # from the spool (a shim's replay of what the spool holds is recognised).
    assert final["spool"]["possible_duplicate_entries"] == final["spool"]["replayed"]
    assert rep.n_duplicated <= replayed, (rep.details(), replayed)
    assert final["unaccounted"] == 0, final


def test_kill9_restart_loop_short(proxied, ptopic, kafkad_factory):
    kill9_loop(proxied, ptopic, kafkad_factory, kills=3, count=1500, rate=600, fsync="interval", seed=6)


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_kill9_restart_loop_long(proxied, ptopic, kafkad_factory, fsync):
    kill9_loop(proxied, ptopic, kafkad_factory, kills=12, count=8000, rate=1000, fsync=fsync, seed=60)

"""A real spooling daemon dies (KAFKAD_SPOOL_CRASH_AT, the spool's own test hook) at a step
of its write / acknowledge / segment-roll / release path under an async stream,
and is started again without the hook: the whole stream must arrive, in order,
with duplicates only up to what the restarted daemon replayed from disk.
"""

from __future__ import annotations

import pytest

from kafkad.spool import CRASH_EXIT_CODE
from tests.reliability.harness import audit_topic, report, start_worker, wait_until

pytestmark = pytest.mark.broker

STEPS = [
    ("during-segment-roll", "interval", 3),
    ("mid-write", "interval", 40),
    ("after-write-before-fsync", "always", 30),
    ("after-fsync-before-ack", "always", 30),
    ("after-release-write-before-fsync", "interval", 10),
    ("after-release-fsync-before-delete", "interval", 2),
]


@pytest.mark.parametrize("step,fsync,after", STEPS, ids=[s[0] for s in STEPS])
def test_crash_at_a_step_then_restart(proxied, ptopic, kafkad_factory, step, fsync, after):
    workers, count = 2, 800
    d = kafkad_factory(proxied.bootstrap, request_timeout_ms=2000, spool=True,
                       extra={"spool": {"fsync": fsync, "fsync_interval_ms": 20, "segment_bytes": 32 * 1024}},
                       env={"KAFKAD_SPOOL_CRASH_AT": step, "KAFKAD_SPOOL_CRASH_AFTER": str(after)})
    d.start()
    ws = [start_worker(d.endpoint, ptopic, w, count, rate=800, stop_timeout=60) for w in range(workers)]
    try:
        assert d.proc.wait(60) == CRASH_EXIT_CODE, d.logs()[-3000:]
        d.env = {}
        d.restart()
        results = [w.wait(120) for w in ws]
        wait_until(lambda: d.stats()["spool"]["entries_pending"] == 0, 60, "the spool to empty")
        final = d.stats()
    finally:
        for w in ws:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(5)
    rep = audit_topic(proxied.bootstrap, ptopic, {w: range(count) for w in range(workers)})
    report(f"spool-crash-{step}", rep, d, fsync=fsync)
    assert [r["failed"] for r in results] == [0] * workers, results
    assert [r["not_delivered"] for r in results] == [0] * workers, results
    assert rep.n_missing == 0 and rep.n_disorder == 0, rep.details()
    assert rep.n_duplicated <= final["ipc"]["spool_replayed_messages"], (rep.details(), final["ipc"])
    assert final["spool"]["damaged"] == final["spool"]["torn_tails"] + final["spool"]["corrupt_regions"] \
        + final["spool"]["damaged_entries"] + final["spool"]["missing_segments"] \
        + final["spool"]["bad_checkpoint"] + final["spool"]["bad_release_records"]

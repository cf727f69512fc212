"""Soak: a steady stream for a while, daemon memory and open file descriptors sampled; they stay flat.

Short form (~20 s) in `make test`, a few minutes under `make reliability`.

How "flat" is judged: samples of the first third are warm-up (lazy imports,
CPython's allocator taking arenas, ZeroMQ and socket buffers reaching their
working size) and are ignored. The median RSS of the last third may exceed
the median of the middle third by at most RSS_TOLERANCE_KB (1.5 MiB):

- noise: arenas taken and given back move RSS by well under 300 KiB (the
  last short run measured +8 KiB);
- what it catches: one third of the short run carries about 4,000 messages
  (2 workers x 300/s x 6.7 s), so any leak above ~400 bytes per message
  fails it; a third of the long run carries about 160,000 messages, so the
  long run catches anything above ~10 bytes per message.

Open file descriptors must not grow after warm-up by more than FD_TOLERANCE
(a reconnect may briefly hold one extra socket).
"""

from __future__ import annotations

import statistics
import time

import pytest

from tests.reliability.harness import audit_topic, report, start_worker
from tests.support.audit import check_accounting

pytestmark = pytest.mark.broker

RSS_TOLERANCE_KB = 1536
FD_TOLERANCE = 2


def _soak(tansu, topic, kafkad_factory, *, seconds: float, rate: int, workers: int, name: str):
    d = kafkad_factory(tansu.bootstrap, request_timeout_ms=3000)
    d.start()
    count = int(seconds * rate)
    ws = [start_worker(d.endpoint, topic, w, count, rate=rate, stop_timeout=60) for w in range(workers)]
    rss, fds = [], []
    try:
        while any(w.proc.poll() is None for w in ws):
            rss.append(d.rss_kb())
            fds.append(d.fd_count())
            time.sleep(0.25)
        results = [w.wait(60) for w in ws]
    finally:
        for w in ws:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(5)
    stats = d.stats()
    rep = audit_topic(tansu.bootstrap, topic, {w: range(count) for w in range(workers)})
    third = max(1, len(rss) // 3)
    mid_rss, end_rss = statistics.median(rss[third:2 * third]), statistics.median(rss[2 * third:])
    warm_fds = fds[third:]
    report(name, rep, d, seconds=seconds, rate_per_worker=rate, samples=len(rss),
           rss_mid_kb=int(mid_rss), rss_end_kb=int(end_rss), rss_growth_kb=int(end_rss - mid_rss),
           fds_min=min(warm_fds), fds_max=max(warm_fds))
    assert len(rss) >= 12, "too few samples: the soak ended early"
    assert all(r["failed"] == 0 and r["errors"] == [] for r in results), results
    assert rep.clean, rep.details()
    assert check_accounting(stats) == []
    assert end_rss - mid_rss <= RSS_TOLERANCE_KB, (mid_rss, end_rss, rss)
    assert max(warm_fds) - min(warm_fds) <= FD_TOLERANCE, fds


def test_soak_short(tansu, topic, kafkad_factory):
    _soak(tansu, topic, kafkad_factory, seconds=20, rate=300, workers=2, name="soak-20s")


@pytest.mark.slow
def test_soak_long(tansu, topic, kafkad_factory):
    _soak(tansu, topic, kafkad_factory, seconds=240, rate=500, workers=4, name="soak-4min")

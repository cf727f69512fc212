"""How fast the spool takes 100-byte messages under each fsync policy.

Run: ``python -m tests.bench.bench_spool [--seconds S] [--runs R] [--group G] [--dir PATH]``

For each policy (always, interval = 100 ms, never) and submission size (1, 16
and 128 messages of 100 bytes), one run appends submissions as the daemon
would, commits once every G submissions (a group commit: G frames taken from
the socket in one loop turn), and releases each committed batch right away
as if the broker acknowledged it at once, so segments roll and are deleted
as in steady state. A run lasts S seconds (or 2 million messages); the table
shows the median over R runs of messages/s, payload MB/s (values only, 1 MB
= 10^6 bytes), the spool's cost per message in microseconds, and fsyncs/s.

The spool lives in a temp directory on the disk under --dir (default: the
system temp dir), so `always` measures that disk's fsync latency. With
KAFKAD_BENCH_OUT set (by tests.bench.run), the figures also go to
`<out>/bench_spool.json`; KAFKAD_BENCH_QUICK=1 shortens the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

from kafkad.config import SpoolConfig
from kafkad.spool import Spool, SpoolEntry

POLICIES = ("always", "interval", "never")
SIZES = (1, 16, 128)
PAYLOAD = b"x" * 100
SETTINGS = {"acks": 1, "ack_timeout_ms": 1000, "codec": 0, "async_send": True, "batch_n": 20}


def one_run(root: str, policy: str, per: int, group: int, seconds: float) -> dict:
    """Figures of one run on a fresh spool."""
    path = tempfile.mkdtemp(prefix="bench-spool-", dir=root)
    cfg = SpoolConfig(enabled=True, path=path, fsync=policy, fsync_interval_ms=100,
                      segment_bytes=16 << 20, max_bytes=1 << 30)
    values = [PAYLOAD] * per
    keys = [None] * per
    try:
        sp = Spool.open(cfg)
        messages = 0
        seq = 0
        first_unreleased = 1
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(group):
                sp.append(SpoolEntry(b"bench-session", seq, seq + per - 1, "bench", seq % 3,
                                     keys, values, 1_700_000_000_000, SETTINGS))
                seq += per
            durable = sp.commit()
            messages += group * per
            if durable >= first_unreleased:
                sp.release(range(first_unreleased, durable + 1))
                first_unreleased = durable + 1
            if messages >= 2_000_000 or time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
        fsyncs = sp.stats(time.time())["fsyncs"]
        sp.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return {"msgs_per_s": messages / elapsed, "mb_per_s": messages * len(PAYLOAD) / elapsed / 1e6,
            "us_per_msg": elapsed / messages * 1e6, "fsyncs_per_s": fsyncs / elapsed}


def filesystem_of(path: str) -> str:
    """'<type> on <mount point>' for the file system holding `path` (from /proc/mounts)."""
    path = os.path.realpath(path)
    best = ("?", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt, fstype = parts[1], parts[2]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[1]):
                    best = (fstype, mnt)
    except OSError:
        pass
    return f"{best[0]} on {best[1] or '?'}"


def main() -> None:
    quick = os.environ.get("KAFKAD_BENCH_QUICK") == "1"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.7 if quick else 2.0)
    ap.add_argument("--runs", type=int, default=1 if quick else 3)
    ap.add_argument("--group", type=int, default=16, help="submissions per group commit")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the spool lives")
    args = ap.parse_args()
    results = []
    print(f"spool benchmark: 100-byte messages, group commit every {args.group} submissions, "
          f"median of {args.runs} run(s) of {args.seconds:g} s, spool under {args.dir} "
          f"({filesystem_of(args.dir)})")
    print(f"{'policy':<9} {'msgs/sub':>8} {'msgs/s':>12} {'MB/s':>8} {'us/msg':>8} {'fsyncs/s':>9}")
    for policy in POLICIES:
        for per in SIZES:
            runs = [one_run(args.dir, policy, per, args.group, args.seconds) for _ in range(args.runs)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            results.append({"policy": policy, "messages_per_submission": per, **med})
            print(f"{policy:<9} {per:>8} {med['msgs_per_s']:>12,.0f} {med['mb_per_s']:>8.1f} "
                  f"{med['us_per_msg']:>8.2f} {med['fsyncs_per_s']:>9.0f}")
    out = os.environ.get("KAFKAD_BENCH_OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench_spool.json"), "w") as f:
            json.dump({"group": args.group, "seconds": args.seconds, "runs": args.runs,
                       "filesystem": filesystem_of(args.dir),
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

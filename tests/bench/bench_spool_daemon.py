"""Async throughput of the whole daemon with the spool off and under each fsync policy.

    python -m tests.bench.bench_spool_daemon [--rounds 3] [--per-worker 10000] [--json PATH]

Uses the 4-process async throughput harness of tests/bench/bench_shim.py
(one 100-byte message per call, messages/s from the start barrier to the last
worker's "all delivered") against a private Tansu and one `kafkad run`
daemon per configuration. Configurations are interleaved round by round so
load from other work on the machine hits them alike; the report gives the
median per configuration and its cost relative to the spool being off
(issue 6's budget: at most 20 % for fsync = "interval").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from tests.bench.bench_shim import throughput
from tests.bench.common import KAFKAD, create_topic

CONFIGS = {
    "off": None,
    "interval": "interval",
    "always": "always",
    "never": "never",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-worker", type=int, default=10_000)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    from tests.support.daemon import KafkadProcess
    from tests.support.tansu import Tansu

    tansu = Tansu().start()
    runs: dict[str, list[int]] = {name: [] for name in CONFIGS}
    try:
        for _ in range(args.rounds):
            for name, fsync in CONFIGS.items():
                extra = {"spool": {"fsync": fsync}} if fsync else None
                with KafkadProcess(tansu.bootstrap, drain_timeout_s=5, spool=fsync is not None,
                                   extra=extra) as daemon:
                    daemon.start()
                    topic = f"bench-spool-{name}-{os.getpid()}-{time.monotonic_ns()}"
                    create_topic(tansu.bootstrap, topic, 3)
                    spec = {"bootstrap": tansu.bootstrap, "endpoint": daemon.endpoint}
                    r = throughput(spec, topic, args.per_worker, [KAFKAD])[KAFKAD]
                    runs[name].append(r["msgs_per_s"])
                    print(f"{name}: {r['msgs_per_s']} msgs/s ({r['seconds']} s)", flush=True)
    finally:
        tansu.stop()
    base = statistics.median(runs["off"])
    summary = {name: {"median_msgs_per_s": int(statistics.median(v)), "runs": v,
                      "cost_vs_off_pct": round(100 * (1 - statistics.median(v) / base), 1)}
               for name, v in runs.items()}
    summary["load_average"] = os.getloadavg()
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

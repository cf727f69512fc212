"""A writer process for the reliability scenarios: stamped messages through the real shim.

    python -m tests.reliability.worker --endpoint ipc://... --topic T --worker 3 \
        --count 1000 [--size 100] [--rate 500] [--mode async|sync] [--per-call 1]

Sends `count` messages stamped by `tests.support.audit.stamp(worker, seq,
size)` with a `KeyedProducer` keyed by `worker_key(worker)` (so one worker
stays on one partition and its order can be checked), `rate` messages per
second (0: as fast as the shim takes them). Prints, one JSON object per line
on stdout:

- `{"started": pid}` once the producer exists;
- sync mode: `{"acked": seq}` after each call the broker acknowledged (the
  last seq of the call), so a test that kills the worker knows exactly what
  was handed over;
- at the end: `{"done": worker, "sent": n, "failed": f, "not_delivered": k,
  "rss_kb": peak, "errors": [...]}`, where `failed` counts messages the
  daemon reported as failed to this producer and `not_delivered` what
  `stop()` still held when `--stop-timeout` ran out.

`--fleet N` forks N workers (ids worker .. worker+N-1) from one process that
imported the shim once, so a hundred workers connect at the same moment
without a hundred interpreter start-ups; each child prints its own lines
(short lines, written whole: the pipe keeps them apart).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--worker", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--first", type=int, default=0, help="first sequence number")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--mode", choices=("async", "sync"), default="async")
    ap.add_argument("--per-call", type=int, default=1)
    ap.add_argument("--queue-maxsize", type=int, default=0)
    ap.add_argument("--put-timeout", type=float, default=0.0)
    ap.add_argument("--stop-timeout", type=float, default=60.0)
    ap.add_argument("--batch-n", type=int, default=20)
    ap.add_argument("--batch-t", type=float, default=0.05)
    ap.add_argument("--fleet", type=int, default=1)
    args = ap.parse_args(argv)
    if args.fleet > 1:
        return _fleet(args)
    return _run(args)


def _fleet(args) -> int:
    import client_shim  # noqa: F401  - imported once, before the forks

    children = []
    for i in range(args.fleet):
        pid = os.fork()
        if pid == 0:
            args.worker += i
            args.fleet = 1
            code = 1
            try:
                code = _run(args)
            finally:
                os._exit(code)
        children.append(pid)
    worst = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status) != 0)
    return worst


def _run(args) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="worker %(process)d %(levelname)s %(name)s: %(message)s")
    from client_shim import KeyedProducer  # imported late: the parent need not have it loaded

    from tests.support.audit import stamp, worker_key

    producer = KeyedProducer(args.endpoint, async_send=args.mode == "async",
                             batch_send_every_n=args.batch_n, batch_send_every_t=args.batch_t,
                             async_queue_maxsize=args.queue_maxsize,
                             async_queue_put_timeout=args.put_timeout,
                             async_stop_timeout=args.stop_timeout)
    key = worker_key(args.worker)
    _emit({"started": os.getpid()})
    errors: list[str] = []
    sent = 0
    t0 = time.monotonic()
    seq = args.first
    end = args.first + args.count
    while seq < end:
        n = min(args.per_call, end - seq)
        msgs = [stamp(args.worker, s, args.size) for s in range(seq, seq + n)]
        try:
            producer.send_messages(args.topic, key, *msgs)
        except Exception as exc:  # reported to the test, which decides whether it is allowed
            errors.append(f"seq {seq}: {type(exc).__name__}: {exc}")
            if len(errors) > 50:
                break
            time.sleep(0.05)
            continue
        seq += n
        sent += n
        if args.mode == "sync":
            _emit({"acked": seq - 1})
        if args.rate:
            ahead = (sent / args.rate) - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    session = producer._session  # test-only peek: the shim's count of reported failures
    not_delivered = 0
    if args.mode == "async" and session is not None:
        left = session.wait_drained(args.stop_timeout)
        not_delivered = sum(len(e) - 5 for e in left)     # (first_seq, topic, partition, ts, key, *values)
    producer.stop(0 if not_delivered else None)
    failed = session.failed_messages if session is not None else 0
    _emit({"done": args.worker, "sent": sent, "failed": failed, "not_delivered": not_delivered,
           "rss_kb": _peak_rss_kb(), "errors": errors[:20]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

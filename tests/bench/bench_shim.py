"""client_shim benchmark: the caller's cost, sync round trips, and 4-process async throughput.

    python -m tests.bench.bench_shim [--quick] [--json PATH] [--sections caller,sync,throughput]

Starts Tansu (or uses $KAFKAD_BENCH_BOOTSTRAP) and a private `kafkad run`
daemon, then measures:

1. caller cost: the time one `send_messages` of one 100-byte message takes
   in the calling thread of an async producer (median, p90, p99 in
   microseconds; each call timed with perf_counter_ns), from one thread and
   from 4 threads sharing the producer;
2. sync round trip: `send_messages` of a sync SimpleProducer through the
   daemon to the broker and back (p50/p99 ms), next to a confluent-kafka
   producer doing produce()+flush() and kafka-python 3 `send().get()`, the
   three interleaved round by round; plus "zmq-floor": the same SEND_SYNC
   frame sent by a bare DEALER socket in the calling thread (what the daemon
   and broker cost; the shim's share is the difference);
3. aggregate async throughput: 4 spawned worker processes each sending
   100-byte messages one per call and then waiting for delivery, for kafkad
   (the shim), confluent-kafka (one producer per worker) and kafka-python
   (one producer per worker); messages/s from the start barrier to the last
   worker's "all delivered".

The contenders' wrappers come from tests/bench/common.py, so this uses the
same settings (acks=1, no compression) as `make bench`.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import threading
import time

from tests.bench.common import CLIENTS, CONFLUENT, KAFKA_PYTHON, KAFKAD, importable, percentile

PAYLOAD = b"x" * 100


def _stats_us(samples_ns: list[int]) -> dict:
    s = sorted(samples_ns)
    return {"median_us": round(statistics.median(s) / 1000, 3), "p90_us": round(percentile(s, 0.90) / 1000, 3),
            "p99_us": round(percentile(s, 0.99) / 1000, 3), "calls": len(s)}


def caller_cost(endpoint: str, topic: str, calls: int) -> dict:
    import client_shim

    p = client_shim.Producer(endpoint, async_send=True, batch_send_every_n=100, batch_send_every_t=0.005,
                             async_log_messages_on_error=False)
    send = p.send_messages
    send(topic, 0, PAYLOAD)                     # the session and the I/O thread exist before timing
    p._session.wait_drained(30)
    clock = time.perf_counter_ns
    out = {}
    samples = []
    for i in range(calls):
        t0 = clock()
        send(topic, i % 3, PAYLOAD)
        samples.append(clock() - t0)
    out["one_thread"] = _stats_us(samples)
    p._session.wait_drained(120)

    per_thread = calls // 4
    results: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        mine = results[k]
        start.wait()
        for i in range(per_thread):
            t0 = clock()
            send(topic, i % 3, PAYLOAD)
            mine.append(clock() - t0)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["four_threads_shared"] = _stats_us([x for r in results for x in r])
    left = p._session.wait_drained(120)
    p.stop(timeout=1)
    out["undelivered"] = sum(len(e) - 5 for e in left)     # (first_seq, topic, partition, ts, key, *values)
    return out


ZMQ_FLOOR = "zmq-floor"


class _ZmqFloor:
    """A bare DEALER in the calling thread: REGISTER once, then SEND_SYNC and wait for RESULT.

    No shim at all: the round trip through the daemon and the broker that the
    shim's own cost is added to.
    """

    def __init__(self, spec: dict):
        import zmq

        from client_shim import schema

        self._schema = schema
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(spec["endpoint"])
        self._sid = os.urandom(schema.SESSION_ID_LEN)
        self._rid = 0

    def _call(self, frame: list) -> list:
        self._sock.send(self._schema.encode(frame))
        return self._schema.decode_reply(self._sock.recv())

    def prepare(self, topic: str, *, sync: bool, codec, size: int = 100) -> None:
        settings = {"acks": 1, "ack_timeout_ms": 1000, "codec": 0, "codec_level": None, "async_send": False,
                    "batch_n": 20, "batch_t": 20.0, "retry_limit": None, "retry_backoff_ms": 100,
                    "retry_on_timeouts": True, "log_messages_on_error": False, "pid": os.getpid()}
        reply = self._call([self._schema.REGISTER, self._schema.SCHEMA_VERSION, 1, self._sid, 0, settings])
        assert reply[0] == self._schema.REGISTERED, reply
        self._rid = 1
        self.send_sync(topic, b"warm-up")

    def send_sync(self, topic: str, value: bytes) -> None:
        self._rid += 1
        reply = self._call([self._schema.SEND_SYNC, self._sid, self._rid, topic, self._rid % 3,
                            int(time.time() * 1000), None, [value]])
        if reply[0] != self._schema.RESULT or reply[3]:
            raise RuntimeError(f"zmq-floor: unexpected reply {reply!r}")

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


def sync_round_trips(spec: dict, topic: str, rounds: int, contenders: list[str]) -> dict:
    clients = {}
    for name in contenders:
        c = _ZmqFloor(spec) if name == ZMQ_FLOOR else CLIENTS[name](spec)
        c.prepare(topic, sync=True, codec=None)
        clients[name] = c
    samples: dict[str, list[int]] = {n: [] for n in clients}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, c in clients.items():          # interleaved: noise hits all alike
            t0 = clock()
            c.send_sync(topic, PAYLOAD)
            samples[name].append(clock() - t0)
    for c in clients.values():
        c.close()
    out = {}
    for name, s in samples.items():
        s.sort()
        out[name] = {"p50_ms": round(percentile(s, 0.50) / 1e6, 3), "p99_ms": round(percentile(s, 0.99) / 1e6, 3),
                     "rounds": len(s)}
    return out


def _throughput_worker(name: str, spec: dict, topic: str, count: int, ready, go, results) -> None:
    logging.disable(logging.CRITICAL)
    client = CLIENTS[name](spec)
    client.prepare(topic, sync=False, codec=None)
    ready.put(os.getpid())
    go.wait()
    t0 = time.monotonic()
    one = [PAYLOAD]
    for i in range(count):
        client.send_async(topic, one)
        if i % 1000 == 0:
            client.service()
    delivered = client.finish()
    results.put((name, time.monotonic(), t0, delivered))
    client.close()


def throughput(spec: dict, topic: str, per_worker: int, contenders: list[str], workers: int = 4) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for name in contenders:
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_throughput_worker, args=(name, dict(spec, workers=workers), topic,
                                                              per_worker, ready, go, results))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        t_go = time.monotonic()
        go.set()
        ends, delivered = [], 0
        for _ in procs:
            _, t_end, _, n = results.get(timeout=600)
            ends.append(t_end)
            delivered += n
        for p in procs:
            p.join(60)
        wall = max(ends) - t_go
        out[name] = {"messages": workers * per_worker, "delivered": delivered, "seconds": round(wall, 3),
                     "msgs_per_s": int(workers * per_worker / wall)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("KAFKAD_BENCH_QUICK") == "1")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--sections", default="caller,sync,throughput",
                    help="comma-separated subset of caller,sync,throughput (default: all)")
    args = ap.parse_args(argv)
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    unknown = sections - {"caller", "sync", "throughput"}
    if unknown:
        ap.error(f"--sections: unknown section(s) {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.WARNING)

    from tests.support.daemon import KafkadProcess
    from tests.support.tansu import Tansu

    tansu = None
    bootstrap = os.environ.get("KAFKAD_BENCH_BOOTSTRAP")
    if not bootstrap:
        tansu = Tansu().start()
        bootstrap = tansu.bootstrap
    contenders = [KAFKAD] + [n for n, mod in ((CONFLUENT, "confluent_kafka"), (KAFKA_PYTHON, "kafka"))
                             if importable(mod)[0]]
    calls = 20_000 if args.quick else 200_000
    rounds = 100 if args.quick else 1000
    per_worker = 10_000 if args.quick else 50_000
    results: dict = {"quick": args.quick, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        with KafkadProcess(bootstrap, drain_timeout_s=5) as daemon:
            daemon.start()
            spec = {"bootstrap": bootstrap, "endpoint": daemon.endpoint}

            def fresh(prefix: str) -> str:
                name = f"bench-shim-{prefix}-{os.getpid()}-{time.monotonic_ns()}"
                from tests.bench.common import create_topic
                create_topic(bootstrap, name, 3)
                return name

            if "caller" in sections:
                results["caller_cost"] = caller_cost(daemon.endpoint, fresh("cost"), calls)
                print("caller cost (async send_messages, one 100-byte message):",
                      json.dumps(results["caller_cost"]), flush=True)
            if "sync" in sections:
                results["sync_round_trip"] = sync_round_trips(spec, fresh("sync"), rounds,
                                                              contenders + [ZMQ_FLOOR])
                print("sync round trip:", json.dumps(results["sync_round_trip"]), flush=True)
            if "throughput" in sections:
                results["async_throughput_4_procs"] = throughput(spec, fresh("thr"), per_worker, contenders)
                print("async throughput, 4 processes, one 100-byte message per call:",
                      json.dumps(results["async_throughput_4_procs"]), flush=True)
    finally:
        if tansu is not None:
            tansu.stop()
    out_dir = os.environ.get("KAFKAD_BENCH_OUT")
    path = args.json or (os.path.join(out_dir, "bench_shim.json") if out_dir else None)
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

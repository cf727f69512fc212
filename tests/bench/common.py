"""Shared machinery of the side-by-side benchmarks (`make bench`).

What lives here:

* the three *contenders* as seen from inside a worker process: kafkad through
  `client_shim`, one confluent-kafka producer per worker, one kafka-python 3
  producer per worker. Each is wrapped in the same small interface
  (`prepare`, `send_async`, `send_sync`, `finish`, `close`) so that every
  benchmark drives all of them with the same loop;
* `WorkerPool`: N spawned worker processes per contender, kept alive across
  trials so that process start-up and imports are paid once, and so that the
  runner can interleave the contenders trial by trial (machine noise then
  hits all of them alike);
* `KafkadDaemon`: a private daemon process (`python -m kafkad run`) on a temp
  ipc endpoint, with its CPU time read from /proc;
* small measurement helpers: medians and percentiles, RSS, TCP connections
  to the broker port owned by a set of processes, machine information.

Only the standard library is imported at module level: worker processes and
the footprint probes import this module, and must not pay for anything they
do not use.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tests.support.net import socket_inodes, tcp_sockets  # noqa: F401 - tcp_sockets: for the sections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KAFKAD = "kafkad"
CONFLUENT = "confluent-kafka"
KAFKA_PYTHON = "kafka-python"
CONTENDERS = (KAFKAD, CONFLUENT, KAFKA_PYTHON)
# Variants for the sync latency section, so that each default can also be
# compared with the other client giving the same guarantee: kafkad is
# idempotent by default ([kafka] idempotence), confluent-kafka is not
# (enable.idempotence=false).
KAFKAD_PLAIN = "kafkad/non-idempotent"
CONFLUENT_IDEM = "confluent-kafka/idempotent"
SAME_GUARANTEE = {KAFKAD: CONFLUENT_IDEM, KAFKAD_PLAIN: CONFLUENT}

# Per-message settings shared by all contenders, so the comparison is of the
# clients and not of their defaults: acks=1 everywhere (the legacy
# SimpleProducer default), no compression unless a benchmark asks for it.
ACKS = 1
# kafkad async producers: seconds a message may wait for batch_send_every_n
# companions (see KafkadClient._make).
KAFKAD_BATCH_T = 0.005


# --------------------------------------------------------------------------
# statistics


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of already sorted values, nearest-rank method."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


# --------------------------------------------------------------------------
# payloads

_JSON_WORDS = ("checkout", "page_view", "add_to_cart", "search", "login", "logout",
               "signup", "refund", "rating", "share")
_COUNTRIES = ("DE", "FR", "US", "GB", "NL", "ES", "IT", "PL", "SE", "BR", "IN", "JP")
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:131.0) Gecko/20100101 Firefox/131.0",
)


def json_events(count: int, seed: int = 7) -> list[bytes]:
    """Realistic, distinct JSON event documents (about 350-600 bytes each).

    Deterministic for a seed, so every contender compresses the same bytes.
    They look like what web workers really send: repeated keys, enum-like
    values, ids, timestamps, a user agent, a small list of items.
    """
    rng = random.Random(seed)
    out = []
    ts = 1_764_000_000_000
    for i in range(count):
        ts += rng.randint(1, 40)
        doc = {
            "event": rng.choice(_JSON_WORDS),
            "event_id": "%032x" % rng.getrandbits(128),
            "ts_ms": ts,
            "user_id": rng.randint(1, 5_000_000),
            "session": "%016x" % rng.getrandbits(64),
            "country": rng.choice(_COUNTRIES),
            "path": "/products/%d/%s" % (rng.randint(1, 99999), rng.choice(_JSON_WORDS)),
            "ua": rng.choice(_AGENTS),
            "items": [{"sku": "SKU-%06d" % rng.randint(0, 999999), "qty": rng.randint(1, 5),
                       "price_cents": rng.randint(99, 99999)} for _ in range(rng.randint(0, 3))],
            "ab": {"checkout_v2": rng.random() < 0.5, "bucket": rng.randint(0, 99)},
            "seq": i,
        }
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


def fixed_payload(size: int) -> bytes:
    """A `size`-byte value of incompressible bytes (the same object is reused)."""
    return random.Random(size).randbytes(size)


# --------------------------------------------------------------------------
# contenders, as used inside a worker process


class ContenderError(RuntimeError):
    """A contender could not be set up or failed during a trial."""


class _Client(abc.ABC):
    """The common shape of a contender inside a worker process.

    `sent` counts messages handed to the client since the last prepare().
    """

    name = ""

    def __init__(self, spec: dict):
        self.spec = spec
        self.sent = 0
        self.payloads: list[bytes] = []   # the paced job's messages

    @abc.abstractmethod
    def prepare(self, topic: str, *, sync: bool, codec: str | None, size: int = 100) -> None:
        """Create a producer for `topic` and warm it up (metadata, connections)."""

    @abc.abstractmethod
    def send_async(self, topic: str, values: list[bytes]) -> None:
        """Hand `values` over without waiting for the broker."""

    @abc.abstractmethod
    def send_sync(self, topic: str, value: bytes) -> None:
        """Send one message and return once the broker acknowledged it."""

    def service(self) -> None:
        """Give the client a chance to run callbacks (outside timed sections)."""

    @abc.abstractmethod
    def finish(self) -> int:
        """Wait until everything sent since prepare() is acknowledged; return how many were."""

    def close(self) -> None:
        """Release the producer (not timed)."""


class ConfluentClient(_Client):
    """One librdkafka producer per worker: produce() + poll(), flush() to wait."""

    name = CONFLUENT

    def __init__(self, spec: dict):
        super().__init__(spec)
        import confluent_kafka

        self._mod = confluent_kafka
        self.producer = None
        self.errors = 0

    def _on_error(self, err, msg) -> None:
        # delivery.report.only.error: called for failed messages only, which
        # keeps the callback cost out of the measurement of the happy path.
        if err is not None:
            self.errors += 1

    def _on_sync(self, err, msg) -> None:
        self._sync_err = err

    def _conf(self) -> dict:
        return {"bootstrap.servers": self.spec["bootstrap"], "acks": ACKS}

    def prepare(self, topic: str, *, sync: bool, codec: str | None, size: int = 100) -> None:
        conf = {**self._conf(), "delivery.report.only.error": not sync, "log.connection.close": False}
        if codec:
            conf["compression.type"] = codec
        self.producer = self._mod.Producer(conf)
        self._sync_err = None
        # Warm up: metadata and connections before the clock starts.
        self.producer.produce(topic, b"warm-up", on_delivery=self._on_sync)
        if self.producer.flush(30) != 0 or self._sync_err is not None:
            raise ContenderError(f"confluent-kafka warm-up failed: {self._sync_err or 'flush timed out'}")
        self.sent = 0
        self.errors = 0

    def send_async(self, topic: str, values: list[bytes]) -> None:
        produce = self.producer.produce
        cb = self._on_error
        for v in values:
            while True:
                try:
                    produce(topic, v, on_delivery=cb)
                    break
                except BufferError:          # local queue full: let it drain
                    self.producer.poll(0.005)
        self.sent += len(values)

    def service(self) -> None:
        self.producer.poll(0)

    def send_sync(self, topic: str, value: bytes) -> None:
        self._sync_err = None
        self.producer.produce(topic, value, on_delivery=self._on_sync)
        self.producer.flush(30)
        if self._sync_err is not None:
            raise ContenderError(f"confluent-kafka delivery failed: {self._sync_err}")
        self.sent += 1

    def finish(self) -> int:
        left = self.producer.flush(120)
        return self.sent - self.errors - left

    def close(self) -> None:
        self.producer = None


class ConfluentIdempotentClient(ConfluentClient):
    """confluent-kafka with enable.idempotence=true, the guarantee kafkad gives by default.

    librdkafka requires acks=all for it; against one broker that waits for the
    same local write as acks=1.
    """

    name = CONFLUENT_IDEM

    def _conf(self) -> dict:
        return {"bootstrap.servers": self.spec["bootstrap"], "enable.idempotence": True, "acks": "all"}


class KafkaPythonClient(_Client):
    """One kafka-python 3 KafkaProducer per worker: send(), flush() to wait."""

    name = KAFKA_PYTHON

    def __init__(self, spec: dict):
        super().__init__(spec)
        import kafka

        self._mod = kafka
        self.producer = None
        self.futures: list = []

    def prepare(self, topic: str, *, sync: bool, codec: str | None, size: int = 100) -> None:
        kw: dict[str, Any] = {"bootstrap_servers": self.spec["bootstrap"], "acks": ACKS}
        if codec:
            kw["compression_type"] = codec
        self.producer = self._mod.KafkaProducer(**kw)
        self.producer.send(topic, b"warm-up").get(timeout=30)
        self.sent = 0
        self.futures = []

    def send_async(self, topic: str, values: list[bytes]) -> None:
        send = self.producer.send
        append = self.futures.append
        for v in values:
            append(send(topic, v))
        self.sent += len(values)

    def send_sync(self, topic: str, value: bytes) -> None:
        self.producer.send(topic, value).get(timeout=30)
        self.sent += 1

    def finish(self) -> int:
        self.producer.flush(timeout=120)
        ok = sum(1 for f in self.futures if f.is_done and f.exception is None)
        self.futures = []
        return ok

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=10)
        self.producer = None


class KafkadClient(_Client):
    """kafkad through client_shim: SimpleProducer on the daemon's endpoint, stop() to wait."""

    name = KAFKAD
    _CODECS = {None: "CODEC_NONE", "gzip": "CODEC_GZIP", "zstd": "CODEC_ZSTD",
               "snappy": "CODEC_SNAPPY", "lz4": "CODEC_LZ4"}

    def __init__(self, spec: dict):
        super().__init__(spec)
        import client_shim

        self._mod = client_shim
        self.producer = None

    def _queue_bound(self, size: int) -> int:
        """async_queue_maxsize for one worker: all workers together stay well
        under the daemon's global caps ([queue] max_messages 1M, max_bytes
        512 MiB by default), so the shim waits for acknowledgements instead of
        meeting a full daemon."""
        workers = max(self.spec.get("workers", 1), 1)
        return max(1_000, min(200_000, 800_000 // workers, (256 << 20) // (workers * max(size, 1))))

    def _make(self, *, async_send: bool, codec: str | None, size: int = 100):
        # Failures are logged with a hash instead of the contents: cheap, and
        # the worker's log tap counts them either way.
        kw: dict[str, Any] = {"req_acks": ACKS, "async_log_messages_on_error": False}
        if codec:
            kw["codec"] = getattr(self._mod, self._CODECS[codec])
        if async_send:
            # Back-pressure instead of an exception when the bound is reached:
            # the same behaviour as the peers' "queue full -> wait" loops.
            # batch_send_every_t: the legacy default (20 s) would hold a tail of
            # fewer than batch_send_every_n messages that long; 5 ms is
            # librdkafka's default linger.ms, so both wait alike for company.
            kw.update(async_queue_maxsize=self._queue_bound(size),
                      async_queue_put_timeout=120, async_stop_timeout=60,
                      batch_send_every_t=KAFKAD_BATCH_T)
        return self._mod.SimpleProducer(self.spec["endpoint"], async_send=async_send, **kw)

    def prepare(self, topic: str, *, sync: bool, codec: str | None, size: int = 100) -> None:
        # Warm up through a sync producer: the daemon learns the topic's
        # metadata and the shim its partition list before the clock starts.
        warm = self._make(async_send=False, codec=codec)
        warm.send_messages(topic, b"warm-up")
        if sync:
            self.producer = warm
        else:
            warm.stop()
            self.producer = self._make(async_send=True, codec=codec, size=size)
        self.sent = 0

    def send_async(self, topic: str, values: list[bytes]) -> None:
        self.producer.send_messages(topic, *values)
        self.sent += len(values)

    def send_sync(self, topic: str, value: bytes) -> None:
        resp = self.producer.send_messages(topic, value)
        if resp and getattr(resp[0], "error", 0):
            raise ContenderError(f"kafkad sync send failed with error {resp[0].error}")
        self.sent += 1

    def finish(self) -> int:
        """stop() waits for this producer's messages and logs those not delivered.

        It returns no count, so this is an upper bound: runners that own the
        daemon replace it with the daemon's `delivered` counter delta.
        """
        self.producer.stop()
        return self.sent

    def close(self) -> None:
        if self.producer is not None:
            self.producer.stop()      # after finish(): a second stop() does nothing
        self.producer = None


class KafkadPlainClient(KafkadClient):
    """kafkad through a second daemon run with `[kafka] idempotence = false`."""

    name = KAFKAD_PLAIN

    def __init__(self, spec: dict):
        super().__init__({**spec, "endpoint": spec["endpoint_plain"]})


CLIENTS: dict[str, type[_Client]] = {KAFKAD: KafkadClient, CONFLUENT: ConfluentClient,
                                     KAFKA_PYTHON: KafkaPythonClient,
                                     KAFKAD_PLAIN: KafkadPlainClient, CONFLUENT_IDEM: ConfluentIdempotentClient}


# --------------------------------------------------------------------------
# the jobs a worker runs (inside the worker process)


def _wait_until(t: float) -> None:
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.01) if left > 0.002 else 0)


def job_throughput(client: _Client, topic: str, start_at: float, job: dict) -> dict:
    """Send as fast as possible for `duration` s, `per_call` messages per call, then wait for acks."""
    values = [fixed_payload(job["size"])] * job["per_call"]
    deadline = start_at + job["duration"]
    send = client.send_async
    calls = 0
    _wait_until(start_at)
    cpu0 = time.process_time()
    while True:
        for _ in range(50):
            send(topic, values)
        calls += 50
        if calls % 1000 == 0:
            client.service()
        if time.monotonic() >= deadline:
            break
    t_sent = time.monotonic()
    acked = client.finish()
    t_done = time.monotonic()
    return {"sent": client.sent, "acked": acked, "t_sent": t_sent, "t_done": t_done,
            "cpu": time.process_time() - cpu0}


def job_latency(client: _Client, topic: str, start_at: float, job: dict) -> dict:
    """Sequential sync sends for `duration` s; every round trip's latency in microseconds."""
    value = fixed_payload(job["size"])
    deadline = start_at + job["duration"]
    lat: list[float] = []
    clock = time.perf_counter_ns
    _wait_until(start_at)
    while time.monotonic() < deadline:
        t0 = clock()
        client.send_sync(topic, value)
        lat.append((clock() - t0) / 1000.0)
    return {"latencies_us": lat, "sent": client.sent}


def job_caller_cost(client: _Client, topic: str, start_at: float, job: dict) -> dict:
    """CPU time of the calling thread per async send of one message, in chunks of 100 calls."""
    value = [fixed_payload(job["size"])]
    chunk = 100
    per_call: list[float] = []
    tt = time.thread_time_ns
    send = client.send_async
    _wait_until(start_at)
    p0 = time.process_time_ns()
    for _ in range(job["calls"] // chunk):
        t0 = tt()
        for _ in range(chunk):
            send(topic, value)
        per_call.append((tt() - t0) / chunk / 1000.0)
        client.service()
    t_sent = time.monotonic()
    acked = client.finish()
    proc_us = (time.process_time_ns() - p0) / 1000.0
    return {"per_call_us": per_call, "sent": client.sent, "acked": acked,
            "process_us_per_msg": proc_us / max(client.sent, 1), "t_sent": t_sent}


def job_paced(client: _Client, topic: str, start_at: float, job: dict) -> dict:
    """Send `rate` messages/s, one per call, for `duration` s (a steady web-like load)."""
    payloads = client.payloads
    # Each worker has its own stream of events (like real workers): identical
    # documents from several workers would flatter a producer that puts them
    # in one compressed batch.
    n = int(job["rate"] * job["duration"])
    interval = 1.0 / job["rate"]
    nbytes = 0
    _wait_until(start_at)
    for i in range(n):
        due = start_at + i * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        v = payloads[i % len(payloads)]
        client.send_async(topic, [v])
        nbytes += len(v)
        if i % 200 == 0:
            client.service()
    t_sent = time.monotonic()
    acked = client.finish()
    return {"sent": client.sent, "acked": acked, "payload_bytes": nbytes, "t_sent": t_sent,
            "t_done": time.monotonic()}


JOBS: dict[str, Callable[[_Client, str, float, dict], dict]] = {
    "throughput": job_throughput, "latency": job_latency,
    "caller_cost": job_caller_cost, "paced": job_paced,
}


class _LogTap(logging.Handler):
    """Counts the client libraries' warnings and errors in a worker; keeps the first, shortened.

    A client that fails thousands of messages would otherwise flood the
    runner's terminal (the shim logs failed messages with their contents).
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            try:
                text = record.getMessage()
            except Exception:  # a bad format string must not kill the worker
                text = str(record.msg)
            self.first = f"{record.name}: {text[:300]}"

    def take(self) -> dict:
        out = {"log_warnings": self.count, "first_log": self.first}
        self.count, self.first = 0, None
        return out


def _worker_main(conn, contender: str, spec: dict) -> None:
    """A worker process: build the client, then obey prepare/go/release commands."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when we stop
    tap = _LogTap()
    root = logging.getLogger()
    root.handlers[:] = [tap]
    root.setLevel(logging.WARNING)
    try:
        client = CLIENTS[contender](spec)
    except Exception as exc:  # reported to the runner, which marks the contender missing
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", os.getpid()))
    topic = job = None
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:
            return
        try:
            if cmd == "prepare":
                job = arg
                topic = job["topic"]
                if job["kind"] == "paced":
                    # Built before the clock starts: pacing must not begin late.
                    client.payloads = json_events(job["distinct"], seed=1000 + spec.get("index", 0))
                client.prepare(topic, sync=job["kind"] == "latency", codec=job.get("codec"),
                               size=job.get("size", 500))
                conn.send(("ok", None))
            elif cmd == "go":
                tap.take()
                result = JOBS[job["kind"]](client, topic, arg, job)
                result.update(tap.take())
                conn.send(("ok", result))
            elif cmd == "release":
                client.close()
                conn.send(("ok", None))
            elif cmd == "exit":
                client.close()
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class WorkerPool:
    """`size` spawned worker processes of one contender, driven in lock step.

    Spawned (not forked) so that no client state of the runner leaks into the
    workers. Every command goes to all workers and waits for all answers; an
    error from any worker raises `ContenderError` with its message.
    """

    def __init__(self, contender: str, size: int, spec: dict, *, timeout: float = 180.0):
        self.contender = contender
        self.size = size
        self.timeout = timeout
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for index in range(size):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, contender, dict(spec, index=index)),
                            daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self.pids = [pid for pid in self._collect("start")]

    def _collect(self, what: str) -> list:
        out = []
        deadline = time.monotonic() + self.timeout
        for c in self.conns:
            if not c.poll(max(0.0, deadline - time.monotonic())):
                raise ContenderError(f"{self.contender}: a worker did not answer {what!r} "
                                     f"within {self.timeout:.0f}s")
            try:
                status, value = c.recv()
            except (EOFError, OSError):
                raise ContenderError(f"{self.contender}: a worker process exited during {what!r}") from None
            if status != "ok":
                raise ContenderError(f"{self.contender}: {what}: {value}")
            out.append(value)
        return out

    def command(self, cmd: str, arg: Any = None) -> list:
        for c in self.conns:
            try:
                c.send((cmd, arg))
            except OSError:
                raise ContenderError(f"{self.contender}: a worker process is gone") from None
        return self._collect(cmd)

    def run(self, job: dict, *, lead: float = 0.2) -> tuple[float, list[dict]]:
        """Prepare every worker for `job`, start them together; (start time, results)."""
        self.command("prepare", job)
        start_at = time.monotonic() + lead
        results = self.command("go", start_at)
        self.command("release")
        return start_at, results

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("exit", None))
            except OSError:
                pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        for c in self.conns:
            c.close()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------
# processes: CPU time, memory, connections


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live descendants, in seconds."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _CLK_TCK


def rss_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and RssAnon of a process in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def broker_connections(pids: list[int], broker_port: int) -> int:
    """ESTABLISHED TCP connections to `broker_port` held by these processes (and their children)."""
    every = [p for pid in pids for p in process_tree(pid)]
    inodes = socket_inodes(every)
    return sum(1 for _, remote, state, inode in tcp_sockets()
               if state == "01" and remote == broker_port and inode in inodes)


# --------------------------------------------------------------------------
# the kafkad daemon under test


class DaemonUnavailable(RuntimeError):
    """The daemon could not be started; the message says why (with its log's tail)."""


@dataclass
class KafkadDaemon:
    """A private `kafkad run` process for the benchmarks, on a temp ipc endpoint.

    `wrap` prefixes the command (e.g. py-spy record ... --); `env` adds
    environment variables (e.g. a profiler hook).
    """

    bootstrap: str
    workdir: str
    name: str = "kafkad"
    wrap: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    extra_config: str = ""
    kafka_config: str = ""              # more lines for the [kafka] table
    log_level: str = "WARNING"
    proc: subprocess.Popen | None = None
    pid: int = 0
    _shim: Any = None

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.workdir}/{self.name}.sock"

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, f"{self.name}.log")

    def config_text(self) -> str:
        return (f'[kafka]\nbootstrap_servers = ["{self.bootstrap}"]\n{self.kafka_config}\n'
                f'[ipc]\nendpoint = "{self.endpoint}"\n\n'
                f'[logging]\nlevel = "{self.log_level}"\n' + self.extra_config)

    def start(self, timeout: float = 30.0) -> "KafkadDaemon":
        os.makedirs(self.workdir, exist_ok=True)
        cfg = os.path.join(self.workdir, f"{self.name}.toml")
        with open(cfg, "w") as f:
            f.write(self.config_text())
        env = dict(os.environ, PYTHONPATH=REPO_ROOT, **self.env)
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.wrap + [sys.executable, "-m", "kafkad", "run", "--config", cfg],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=REPO_ROOT)
        sock_path = self.endpoint[len("ipc://"):]
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock_path):
            if self.proc.poll() is not None:
                raise DaemonUnavailable(f"kafkad exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonUnavailable(f"kafkad did not bind {self.endpoint} within {timeout:.0f}s: "
                                        f"{self.log_tail()}")
            time.sleep(0.05)
        self.pid = self._daemon_pid()
        try:
            self._client().ping()     # bound is not enough: it must answer
        except Exception as exc:
            self.stop()
            raise DaemonUnavailable(f"kafkad does not answer on {self.endpoint}: {exc}; "
                                    f"{self.log_tail()}") from None
        return self

    def _daemon_pid(self) -> int:
        """The pid running kafkad itself (a child of the wrapper when there is one)."""
        if not self.wrap:
            return self.proc.pid
        for p in process_tree(self.proc.pid)[1:]:
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if b"kafkad" in f.read():
                        return p
            except OSError:
                continue
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid) if self.pid else 0.0

    def _client(self):
        if self._shim is None:
            from client_shim import DaemonClient

            self._shim = DaemonClient(self.endpoint, timeout=10)
        return self._shim

    def stats(self) -> dict | None:
        """The daemon's stats snapshot (`kafkad stats`), or None when it cannot be had."""
        try:
            return self._client().stats()
        except Exception:  # an old or broken daemon: the caller falls back to client counts
            return None

    def delivered(self) -> int | None:
        """Messages the daemon has seen acknowledged by the broker since it started."""
        snap = self.stats()
        value = snap.get("delivered") if isinstance(snap, dict) else None
        return value if isinstance(value, int) else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:]) or "(empty log)"
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (drain and exit), then SIGKILL after `timeout`; the exit status."""
        if self._shim is not None:
            self._shim.close()
            self._shim = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            target = self.pid or self.proc.pid
            try:
                os.kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for p in reversed(process_tree(self.proc.pid)):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        return rc


# --------------------------------------------------------------------------
# environment


def contender_versions() -> dict[str, str]:
    """Installed versions of the clients, without importing them into this process."""
    from importlib import metadata

    out = {}
    for dist in ("kafkad", "confluent-kafka", "kafka-python", "pyzmq", "msgpack", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def importable(module: str) -> tuple[bool, str]:
    """Whether `module` imports in a fresh interpreter (and why not)."""
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                       text=True, timeout=60, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    if r.returncode == 0:
        return True, ""
    last = (r.stderr.strip().splitlines() or ["unknown error"])[-1]
    return False, last


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": [round(x, 2) for x in load],
        "versions": contender_versions(),
        "host": socket.gethostname(),
    }


def new_topic_name(prefix: str) -> str:
    return f"bench-{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**12}"


def tansu_cli(bootstrap: str, *args: str) -> None:
    from tests.support.tansu import tansu_binary

    subprocess.run([tansu_binary(), "topic", *args[:1], "--broker", f"tcp://{bootstrap}", *args[1:]],
                   check=True, capture_output=True, timeout=30)


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    tansu_cli(bootstrap, "create", "--partitions", str(partitions), name)


def delete_topic(bootstrap: str, name: str) -> None:
    """Drop a benchmark topic (Tansu's memory storage would otherwise keep every record)."""
    try:
        tansu_cli(bootstrap, "delete", name)
    except (subprocess.SubprocessError, OSError):
        pass


def make_workdir(prefix: str = "kafkad-bench-") -> str:
    return tempfile.mkdtemp(prefix=prefix)


def remove_workdir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Log:
    """Progress lines on stderr with the elapsed time (a full run takes minutes)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# one benchmark run's shared state, and the trial loop helpers


@dataclass
class BenchContext:
    """What every benchmark section gets from the runner."""

    out_dir: str
    quick: bool
    reps: int
    bootstrap: str                      # the direct (un-proxied) Tansu
    contenders: list[str]               # the ones that can run
    missing: dict[str, str]             # contender -> why it cannot run
    daemon: KafkadDaemon | None = None  # kafkad's daemon on `bootstrap`
    workdir: str = ""
    log: Callable[[str], None] = print

    @property
    def broker_port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    def spec(self, workers: int = 1, bootstrap: str | None = None,
             daemon: KafkadDaemon | None = None) -> dict:
        """What a worker needs to build its client (`workers`: how many share the daemon)."""
        d = daemon or self.daemon
        return {"bootstrap": bootstrap or self.bootstrap, "endpoint": d.endpoint if d else "",
                "workers": workers}


def rotated(items: list[str], k: int) -> list[str]:
    """`items` starting at position k (so every contender takes every turn in order)."""
    if not items:
        return []
    k %= len(items)
    return items[k:] + items[:k]


class Contest:
    """One worker pool per contender, all of `size` workers, for interleaved trials.

    A trial that fails is recorded (not raised); the pool is rebuilt for the
    next one. After `max_errors` failures a contender is dropped from the
    rest of the section, with its last error kept in `errors`.
    """

    def __init__(self, ctx: BenchContext, contenders: list[str], size: int, spec: dict,
                 *, max_errors: int = 2, timeout: float = 180.0):
        self.ctx = ctx
        self.size = size
        self.spec = spec
        self.timeout = timeout
        self.max_errors = max_errors
        self.pools: dict[str, WorkerPool] = {}
        self.failures: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.contenders = list(contenders)
        for c in list(self.contenders):
            self._open(c)

    def _open(self, contender: str) -> bool:
        try:
            self.pools[contender] = WorkerPool(contender, self.size, self.spec, timeout=self.timeout)
            return True
        except ContenderError as exc:
            self._fail(contender, str(exc))
            return False

    def _fail(self, contender: str, msg: str) -> None:
        self.ctx.log(f"  ! {contender}: {msg}")
        self.errors[contender] = msg
        self.failures[contender] = self.failures.get(contender, 0) + 1
        pool = self.pools.pop(contender, None)
        if pool is not None:
            pool.close()
        if self.failures[contender] >= self.max_errors and contender in self.contenders:
            self.contenders.remove(contender)

    def active(self) -> list[str]:
        return list(self.contenders)

    def trial(self, contender: str, job: dict,
              after_prepare: Callable[[WorkerPool], None] | None = None
              ) -> tuple[float, list[dict]] | None:
        if contender not in self.contenders:
            return None
        if contender not in self.pools and not self._open(contender):
            return None
        pool = self.pools[contender]
        try:
            pool.command("prepare", job)
            if after_prepare is not None:
                after_prepare(pool)
            start_at = time.monotonic() + 0.2
            results = pool.command("go", start_at)
            pool.command("release")
            return start_at, results
        except ContenderError as exc:
            self._fail(contender, str(exc))
            return None

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    def __enter__(self) -> "Contest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

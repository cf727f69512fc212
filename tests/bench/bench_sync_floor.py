"""Where a sync round trip's time goes: the floors under kafkad's sync latency.

    python -m tests.bench.bench_sync_floor [--quick] [--json PATH]

A sync `send_messages` crosses the ZeroMQ link twice and the broker once. This
measures each leg alone, next to the whole thing and to confluent-kafka, the
legs taking turns round by round so that background load hits all alike:

- ``zmq-echo``: a bare DEALER in this thread and a ROUTER served by an asyncio
  loop in another process (the daemon's pattern: ``add_reader`` on the ZeroMQ
  FD, non-blocking reads), echoing a 150-byte frame. No kafkad code: the
  cost of the link itself (each direction wakes two ZeroMQ I/O threads and
  the two processes).
- ``broker-raw``: one Produce request (acks=1, one 100-byte record) written
  on a blocking TCP socket to the broker and its answer read back. No event
  loop and no engine: the broker's own round trip.
- ``broker-engine``: the daemon's broker side without the link: a
  `BrokerProducer` in this process, one sync Submission at a time, from
  submit to its Outcome.
- ``kafkad``: a sync `SimpleProducer` through a real daemon (the bench's
  latency figure).
- ``confluent-kafka``: ``produce()`` + ``flush()`` (the bench's reference).

``zmq-echo + broker-raw`` is what any sidecar on this link pays before running
a line of its own code; the report prints it next to twice confluent-kafka's
p50 (issue 8's sync target).

Starts Tansu (or uses $KAFKAD_BENCH_BOOTSTRAP) and a private `kafkad run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time
import uuid

from tests.bench.common import percentile

PAYLOAD = b"x" * 100
FRAME = b"y" * 150


# --- zmq-echo ---------------------------------------------------------------------------

def _echo_server(endpoint: str, ready) -> None:
    import zmq

    async def serve() -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(endpoint)
        loop = asyncio.get_running_loop()

        def on_readable() -> None:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                sock.send_multipart(sock.recv_multipart(zmq.NOBLOCK), zmq.NOBLOCK)

        loop.add_reader(sock.getsockopt(zmq.FD), on_readable)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


class ZmqEcho:
    def __init__(self, tmpdir: str):
        import zmq

        self.endpoint = f"ipc://{tmpdir}/echo-{uuid.uuid4().hex[:8]}.sock"
        mp = multiprocessing.get_context("spawn")
        ready = mp.Event()
        self.proc = mp.Process(target=_echo_server, args=(self.endpoint, ready), daemon=True)
        self.proc.start()
        if not ready.wait(30):
            raise RuntimeError("the echo server did not start")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(self.endpoint)
        self.sock.send(FRAME)
        self.sock.recv()

    def once(self) -> int:
        t0 = time.perf_counter_ns()
        self.sock.send(FRAME)
        self.sock.recv()
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
        self.proc.kill()
        self.proc.join(5)


# --- broker-raw -------------------------------------------------------------------------

class BrokerRaw:
    """Produce v7 on a plain blocking socket (Tansu and Kafka both take it)."""

    VERSION = 7

    def __init__(self, bootstrap: str, topic: str):
        from kafkad.protocol import encode_record_batch, encode_request
        from kafkad.protocol.messages import ProduceRequest

        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._encode_request = encode_request
        self._batch = encode_record_batch
        self._msg = ProduceRequest
        self.topic = topic
        self.corr = 0
        self.once()

    def _request(self) -> bytes:
        batch = self._batch([None], [PAYLOAD], [int(time.time() * 1000)])
        P = self._msg
        msg = P(transactional_id=None, acks=1, timeout_ms=5000, topic_data=[P.TopicProduceData(
            name=self.topic, partition_data=[P.PartitionProduceData(index=0, records=batch)])])
        self.corr += 1
        return self._encode_request(msg, self.VERSION, self.corr, "bench-floor")

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            buf += chunk
        return bytes(buf)

    def once(self) -> int:
        data = self._request()              # built before the clock: a raw write and read only
        t0 = time.perf_counter_ns()
        self.sock.sendall(data)
        size = int.from_bytes(self._read_exact(4), "big")
        self._read_exact(size)
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.sock.close()


# --- broker-engine ----------------------------------------------------------------------

class BrokerEngine:
    """A BrokerProducer on an event loop of its own, driven one sync Submission at a time."""

    def __init__(self, bootstrap: str, topic: str):
        from kafkad.broker import BrokerProducer
        from kafkad.config import KafkaConfig, QueueConfig
        from kafkad.engine.types import SessionSettings, Submission

        self.loop = asyncio.new_event_loop()
        self.topic = topic
        self._sub = Submission
        self._settings = SessionSettings(
            acks=1, ack_timeout_ms=5000, codec=0, codec_level=None, async_send=False, batch_n=1,
            batch_t=0.0, retry_limit=None, retry_backoff_ms=100, retry_on_timeouts=False,
            log_messages_on_error=False)
        self._done: asyncio.Future | None = None
        self.producer = BrokerProducer(KafkaConfig(bootstrap_servers=(bootstrap,)), QueueConfig(),
                                       on_outcomes=self._on_outcomes)
        self.loop.run_until_complete(self.producer.start())
        self.once()

    def _on_outcomes(self, outcomes) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(outcomes)

    async def _many(self, n: int) -> list[int]:
        # All n inside one running loop, as in the daemon (whose loop never stops):
        # starting the loop per send would add its own turns to every figure.
        took = []
        for _ in range(n):
            self._done = self.loop.create_future()
            sub = self._sub(b"bench-floor-sess", self._settings, self.topic, 0, [None], [PAYLOAD],
                            int(time.time() * 1000), None)
            t0 = time.perf_counter_ns()
            self.producer.submit(sub)
            outcomes = await self._done
            took.append(time.perf_counter_ns() - t0)
            if any(o.error for o in outcomes):
                raise RuntimeError(f"broker-engine: delivery failed with {outcomes}")
        return took

    def once(self) -> int:
        return self.many(1)[0]

    def many(self, n: int) -> list[int]:
        return self.loop.run_until_complete(self._many(n))

    def close(self) -> None:
        self.loop.run_until_complete(self.producer.close())
        self.loop.close()


# --- the whole paths --------------------------------------------------------------------

class Kafkad:
    def __init__(self, endpoint: str, topic: str):
        import client_shim

        self.producer = client_shim.SimpleProducer(endpoint, req_acks=1)
        self.topic = topic
        self.once()

    def once(self) -> int:
        t0 = time.perf_counter_ns()
        resp = self.producer.send_messages(self.topic, PAYLOAD)
        took = time.perf_counter_ns() - t0
        if resp and resp[0].error:
            raise RuntimeError(f"kafkad: sync send failed with error {resp[0].error}")
        return took

    def close(self) -> None:
        self.producer.stop()


class Confluent:
    def __init__(self, bootstrap: str, topic: str):
        import confluent_kafka

        self.producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": 1,
                                                  "log.connection.close": False})
        self.topic = topic
        self._err = None
        self.once()

    def _on_delivery(self, err, msg) -> None:
        self._err = err

    def once(self) -> int:
        self._err = None
        t0 = time.perf_counter_ns()
        self.producer.produce(self.topic, PAYLOAD, on_delivery=self._on_delivery)
        self.producer.flush(30)
        took = time.perf_counter_ns() - t0
        if self._err is not None:
            raise RuntimeError(f"confluent-kafka: delivery failed: {self._err}")
        return took

    def close(self) -> None:
        self.producer.flush(10)


# --- running ----------------------------------------------------------------------------

def measure(bootstrap: str, endpoint: str, tmpdir: str, rounds: int, per_round: int) -> dict:
    topic = f"bench-floor-{uuid.uuid4().hex[:8]}"
    legs = {}
    try:
        # kafkad first: its warm-up creates the topic (auto-create) for the others.
        legs["kafkad"] = Kafkad(endpoint, topic)
        legs["confluent-kafka"] = Confluent(bootstrap, topic)
        legs["zmq-echo"] = ZmqEcho(tmpdir)
        legs["broker-raw"] = BrokerRaw(bootstrap, topic)
        legs["broker-engine"] = BrokerEngine(bootstrap, topic)
        samples: dict[str, list[list[int]]] = {name: [] for name in legs}
        order = list(legs)
        for r in range(rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                leg = legs[name]
                many = getattr(leg, "many", None)
                samples[name].append(many(per_round) if many else [leg.once() for _ in range(per_round)])
    finally:
        for leg in legs.values():
            leg.close()
    out = {}
    for name, per in samples.items():
        p50s = [statistics.median(s) / 1000 for s in per]
        p99s = [percentile(sorted(s), 0.99) / 1000 for s in per]
        out[name] = {"p50_us": round(statistics.median(p50s), 1), "p99_us": round(statistics.median(p99s), 1),
                     "rounds": rounds, "per_round": per_round}
    floor = out["zmq-echo"]["p50_us"] + out["broker-raw"]["p50_us"]
    out["summary"] = {
        "link_plus_broker_floor_us": round(floor, 1),
        "twice_confluent_p50_us": round(2 * out["confluent-kafka"]["p50_us"], 1),
        "kafkad_over_floor_us": round(out["kafkad"]["p50_us"] - floor, 1),
        "kafkad_vs_confluent": round(out["kafkad"]["p50_us"] / out["confluent-kafka"]["p50_us"], 2),
    }
    return out


def render(res: dict) -> str:
    lines = ["| leg | p50 (us) | p99 (us) |", "| --- | ---: | ---: |"]
    for name in ("zmq-echo", "broker-raw", "broker-engine", "kafkad", "confluent-kafka"):
        lines.append(f"| {name} | {res[name]['p50_us']:.1f} | {res[name]['p99_us']:.1f} |")
    s = res["summary"]
    lines += ["", f"zmq-echo + broker-raw (the floor of a sidecar on this link): {s['link_plus_broker_floor_us']:.1f} us; "
              f"twice confluent-kafka's p50: {s['twice_confluent_p50_us']:.1f} us; "
              f"kafkad above the floor: {s['kafkad_over_floor_us']:.1f} us; "
              f"kafkad / confluent-kafka: {s['kafkad_vs_confluent']:.2f}x"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("KAFKAD_BENCH_QUICK") == "1")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    rounds, per_round = (5, 300) if args.quick else (9, 1000)

    import tempfile

    from tests.support.daemon import KafkadProcess
    from tests.support.tansu import Tansu

    tansu = None
    bootstrap = os.environ.get("KAFKAD_BENCH_BOOTSTRAP")
    if not bootstrap:
        tansu = Tansu().start()
        bootstrap = tansu.bootstrap
    daemon = KafkadProcess(bootstrap).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmpdir:
            res = measure(bootstrap, daemon.endpoint, tmpdir, rounds, per_round)
    finally:
        daemon.term(30)
        if tansu is not None:
            tansu.stop()
    print(f"sync round trip, leg by leg ({rounds} interleaved rounds of {per_round}; medians of per-round figures):")
    print(render(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    out_dir = os.environ.get("KAFKAD_BENCH_OUT")
    if out_dir:
        with open(os.path.join(out_dir, "sync-floor.json"), "w") as f:
            json.dump(res, f, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

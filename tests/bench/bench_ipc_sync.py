"""The daemon's link work per sync send, without the engine and without the event loop.

    python -m tests.bench.bench_ipc_sync [--quick]

One thread drives a real `IpcServer` over real ZeroMQ sockets: a DEALER sends
a one-message SEND_SYNC frame, the server reads and checks it and submits it
(`_on_readable`), a stub producer's outcome comes back at once
(`on_outcomes`: RESULT frame, EVENTS check), the DEALER takes the answer.
Timed: the two server calls, per send, split into the read half and the
answer half; medians of per-round means. Waiting for the frame to arrive and
reading the answer are not timed. A measure of IPC-side changes; the whole
path is `bench_sync_floor`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import zmq

from client_shim import schema
from kafkad.config import IpcConfig
from kafkad.engine.types import Outcome
from kafkad.ipc.server import IpcServer

SETTINGS = {"acks": 1, "ack_timeout_ms": 1000, "codec": 0, "codec_level": None, "async_send": False,
            "batch_n": 20, "batch_t": 20, "retry_limit": None, "retry_backoff_ms": 100,
            "retry_on_timeouts": True, "log_messages_on_error": True}


class _InstantProducer:
    """Takes a submission and has its outcome ready (delivered) for the caller to report."""

    def __init__(self):
        self.offset = 0
        self.outcome = None

    def hold_polls(self):
        pass

    def release_polls(self, poll=True):
        pass

    def partitions_for(self, topic):
        return [0, 1, 2]

    def submit(self, sub, divisible=False):
        self.offset += 1
        self.outcome = Outcome(sub.token, sub.topic, sub.partition, 0, self.offset, len(sub.values), 0)


async def measure(rounds: int, per_round: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-ipc-")
    cfg = IpcConfig(endpoint=f"ipc://{tmp}/k.sock")
    producer = _InstantProducer()
    server = IpcServer(cfg, producer, stats_provider=dict)
    await server.start()
    sock = server._sock
    asyncio.get_running_loop().remove_reader(sock.getsockopt(zmq.FD))   # driven by hand below
    ctx = zmq.Context()
    client = ctx.socket(zmq.DEALER)
    client.connect(cfg.endpoint)
    try:
        sid = os.urandom(16)
        client.send(schema.encode([schema.REGISTER, schema.SCHEMA_VERSION, 1, sid, 0, SETTINGS]))
        while not client.poll(10):
            server._on_readable()
        client.recv()
        frames = [schema.encode([schema.SEND_SYNC, sid, i, "bench-topic", 1, 1_764_000_000_000, None,
                                 [b"x" * 100]]) for i in range(per_round)]
        pc = time.perf_counter_ns
        reads, answers = [], []
        for _ in range(rounds):
            read = answer = 0
            for frame in frames:
                client.send(frame)
                while not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    pass                    # until it has arrived (not timed)
                t0 = pc()
                server._on_readable()
                t1 = pc()
                server.on_outcomes([producer.outcome])
                t2 = pc()
                read += t1 - t0
                answer += t2 - t1
                client.recv()
            reads.append(read / per_round / 1000)
            answers.append(answer / per_round / 1000)
    finally:
        client.close(0)
        ctx.term()
        await server.close()
    r, a = statistics.median(reads), statistics.median(answers)
    return {"read_us": round(r, 2), "answer_us": round(a, 2), "total_us": round(r + a, 2),
            "rounds": rounds, "per_round": per_round}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("KAFKAD_BENCH_QUICK") == "1")
    args = ap.parse_args()
    rounds, per_round = (5, 1000) if args.quick else (9, 2000)
    res = asyncio.run(measure(rounds, per_round))
    print(f"daemon link work per sync send ({rounds} rounds of {per_round}; medians of round means): "
          f"read {res['read_us']:.2f} us + answer {res['answer_us']:.2f} us = {res['total_us']:.2f} us")


if __name__ == "__main__":
    main()

"""How many messages per second one BrokerProducer delivers to a local Tansu.

Run: ``python -m tests.bench.bench_engine [--messages N] [--per-submission K] [--runs R]``

Each run starts a fresh BrokerProducer, fills its queue with N messages of
100 bytes (in submissions of K messages, spread over P partitions, acks=1,
idempotent, no compression), then times from start of delivery until the
broker has acknowledged every message. It prints the median over the runs,
the submit cost per message, and a cProfile top-15 of one more run so the
limiting code is visible. The broker runs in its own process; the figure is
the daemon side's single-core throughput with that broker on the same host.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import time

from kafkad.broker import BrokerProducer
from kafkad.config import KafkaConfig, QueueConfig
from kafkad.engine.types import SessionSettings, Submission
from tests.support.tansu import Tansu

PAYLOAD = b"x" * 100


async def one_run(bootstrap: str, topic: str, messages: int, per: int,
                  settings: SessionSettings, partitions: int = 3) -> tuple[float, float]:
    """(seconds to deliver everything, seconds spent submitting) for one pre-filled run."""
    done = asyncio.get_running_loop().create_future()
    delivered = 0
    failed = 0

    def on_outcomes(outs):
        nonlocal delivered, failed
        for o in outs:
            delivered += o.delivered
            failed += o.failed
        if delivered + failed >= messages and not done.done():
            done.set_result(None)

    kafka = KafkaConfig(bootstrap_servers=(bootstrap,), linger_ms=2.0)
    producer = BrokerProducer(kafka, QueueConfig(max_messages=messages * 2,
                                                 max_bytes=messages * 400),
                              on_outcomes=on_outcomes)
    # Connect and learn the topic first, so the timing is delivery only.
    await producer.start()
    assert (await producer.fetch_partitions(topic, 10))[0] == 0
    t0 = time.perf_counter()
    ts = int(time.time() * 1000)
    values = [PAYLOAD] * per
    keys = [None] * per
    for i in range(messages // per):
        producer.submit(Submission(b"bench", settings, topic, i % partitions, keys, values,
                                   ts, i))
    t1 = time.perf_counter()
    await asyncio.wait_for(done, 300)
    t2 = time.perf_counter()
    stats = producer.stats()
    await producer.close()
    if failed:
        raise RuntimeError(f"{failed} messages failed: {stats['errors']}")
    return t2 - t1, t1 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--per-submission", type=int, default=100,
                    help="messages per Submission (one shim send_messages call)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    per = args.per_submission
    messages = args.messages - args.messages % per
    settings = SessionSettings(acks=1)
    broker = Tansu().start()
    try:
        topic = "bench-engine"
        broker.create_topic(topic, partitions=args.partitions)
        rates, submit_us = [], []
        for _ in range(args.runs):
            took, sub = asyncio.run(one_run(broker.bootstrap, topic, messages, per, settings,
                                            args.partitions))
            rates.append(messages / took)
            submit_us.append(sub / messages * 1e6)
        print(f"messages={messages} size=100B per_submission={per} partitions={args.partitions} "
              "acks=1 idempotent codec=none")
        print(f"delivery: median {statistics.median(rates):,.0f} msg/s "
              f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")
        print(f"submit:   median {statistics.median(submit_us):.2f} us/message")
        if not args.no_profile:
            prof = cProfile.Profile()
            prof.enable()
            asyncio.run(one_run(broker.bootstrap, topic, messages, per, settings,
                                args.partitions))
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
            print(out.getvalue())
    finally:
        broker.stop()


if __name__ == "__main__":
    main()

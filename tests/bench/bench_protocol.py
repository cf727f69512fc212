"""How fast kafkad builds RecordBatches: records per second, per codec, on one core.

Run: ``python -m tests.bench.bench_protocol [--records N] [--value-bytes B] [--runs R]``

Each row times `encode_record_batch` end to end (records section, compression,
header, CRC-32C) for one batch of N records of B-byte values, no keys, one
timestamp: the shape the daemon builds for a burst from one worker.  Extra
rows show keys + headers (the general path) and ProduceRequest framing of
the finished batch.  Figures are the median of R runs after a warm-up run;
nothing here is asserted (speed is measured, never tested).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable

from kafkad.protocol import ProduceRequest, decode_record_batches, encode_record_batch, encode_request
from kafkad.protocol.codecs import CODEC_NAMES


def _median_seconds(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up: tables, allocator, codec contexts
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)

    n, size = args.records, args.value_bytes
    # Varied, moderately compressible values (as log lines or JSON would be).
    values = [(b"%08d:" % i + bytes(range(97, 123)) * 8)[:size].ljust(size, b".") for i in range(n)]
    keys = [None] * n
    stamps = [1_700_000_000_000] * n
    keyed = [b"user-%d" % (i % 1000) for i in range(n)]
    varied = [1_700_000_000_000 + i % 50 for i in range(n)]
    headers = [[("trace", b"%016x" % i)] for i in range(n)]

    rows: list[tuple[str, float, int]] = []

    def row(name: str, fn: Callable[[], bytes]) -> None:
        out = fn()
        secs = _median_seconds(fn, args.runs)
        rows.append((name, secs, len(out)))

    for codec, name in CODEC_NAMES.items():
        row(f"encode, codec {name}",
            lambda codec=codec: encode_record_batch(keys, values, stamps, codec=codec))
    row("encode, keys + 1 header + varied ts",
        lambda: encode_record_batch(keyed, values, varied, headers=headers))
    batch = encode_record_batch(keys, values, stamps)
    P = ProduceRequest
    req = P(acks=-1, timeout_ms=30_000, topic_data=(P.TopicProduceData(name="events", partition_data=(
        P.PartitionProduceData(index=0, records=batch),)),))
    row("encode batch + ProduceRequest v11 frame",
        lambda: encode_request(P(acks=-1, timeout_ms=30_000, topic_data=(P.TopicProduceData(
            name="events", partition_data=(P.PartitionProduceData(
                index=0, records=encode_record_batch(keys, values, stamps)),)),)), 11, 1, "kafkad"))
    row("ProduceRequest v11 frame only", lambda: encode_request(req, 11, 1, "kafkad"))
    row("decode_record_batches (uncompressed)", lambda: (decode_record_batches(batch), b"")[1] or batch)

    print(f"kafkad.protocol RecordBatch benchmark: {n} records x {size}-byte values, "
          f"median of {args.runs} runs")
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or 'unknown CPU'})")
    print()
    print(f"{'case':42} {'records/s':>12} {'ms/batch':>9} {'bytes':>9}")
    print("-" * 75)
    for name, secs, nbytes in rows:
        print(f"{name:42} {n / secs:>12,.0f} {secs * 1000:>9.2f} {nbytes:>9,}")


if __name__ == "__main__":
    main()

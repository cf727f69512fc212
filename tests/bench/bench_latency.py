"""Sync round-trip latency and caller CPU cost, contender by contender.

Latency: with 1 and with 8 concurrent worker processes, each worker sends
100-byte messages one at a time and waits for the broker's acknowledgement
before the next: kafkad `SimpleProducer(async_send=False).send_messages`,
confluent-kafka `produce()` + `flush()`, kafka-python 3 `send().get()`. Every
round trip is timed with `perf_counter_ns`; p50/p99/p99.9 are taken per
repetition over all workers' samples, and the report gives the median of the
repetitions. With one worker two variants take their turns too, so that each
default is also set against the other client giving the same guarantee:
kafkad through a second daemon with `[kafka] idempotence = false`, and
confluent-kafka with `enable.idempotence=true` (kafkad's default guarantee).

Caller cost: one worker sends async messages of 100 bytes; the CPU time of the
calling thread (`time.thread_time_ns`) is read around chunks of 100 calls, so
background I/O threads of the client are not counted; the median per-call
figure over chunks is reported. The CPU of the whole worker process per
message (calling thread plus the client's own threads, through to the last
acknowledgement) is reported next to it, because a client can move work to
threads that still burn the worker's cores.
"""

from __future__ import annotations

import contextlib

from .common import (CONFLUENT, CONFLUENT_IDEM, KAFKAD, KAFKAD_PLAIN, BenchContext, Contest, DaemonUnavailable,
                     KafkadDaemon, create_topic, delete_topic, median, new_topic_name, percentile, rotated)

QUANTILES = {"p50": 0.50, "p99": 0.99, "p999": 0.999}


def plan(quick: bool) -> dict:
    if quick:
        return {"workers": [1, 8], "duration": 1.0, "caller_calls": 5_000}
    return {"workers": [1, 8], "duration": 3.0, "caller_calls": 50_000}


@contextlib.contextmanager
def _variants(ctx: BenchContext, workers: int, errors: dict):
    """(contenders, spec) for `workers`: the selected ones, plus the same-guarantee
    variants (and the second daemon they need) with one worker."""
    contenders, spec = list(ctx.contenders), ctx.spec(workers)
    if workers != 1 or not {KAFKAD, CONFLUENT} <= set(contenders) or ctx.daemon is None:
        yield contenders, spec
        return
    plain = KafkadDaemon(ctx.bootstrap, ctx.workdir, name="kafkad-plain", kafka_config="idempotence = false\n")
    try:
        plain.start()
    except DaemonUnavailable as exc:
        errors[KAFKAD_PLAIN] = str(exc)
        yield contenders + [CONFLUENT_IDEM], spec
        return
    try:
        yield contenders + [KAFKAD_PLAIN, CONFLUENT_IDEM], {**spec, "endpoint_plain": plain.endpoint}
    finally:
        plain.stop()


def run_latency(ctx: BenchContext) -> dict:
    p = plan(ctx.quick)
    rows = []
    errors: dict[str, str] = {}
    turn = 0
    for workers in p["workers"]:
        ctx.log(f"latency: {workers} concurrent worker(s)")
        per: dict[str, dict[str, list[float]]] = {}
        samples: dict[str, int] = {}
        with _variants(ctx, workers, errors) as (contenders, spec), Contest(ctx, contenders, workers, spec) as contest:
            for rep in range(ctx.reps):
                for contender in rotated(contest.active(), turn):
                    turn += 1
                    topic = new_topic_name(f"lat{workers}")
                    create_topic(ctx.bootstrap, topic)
                    job = {"kind": "latency", "topic": topic, "size": 100, "duration": p["duration"]}
                    out = contest.trial(contender, job)
                    delete_topic(ctx.bootstrap, topic)
                    if out is None:
                        continue
                    lat = sorted(x for r in out[1] for x in r["latencies_us"])
                    if not lat:
                        continue
                    q = per.setdefault(contender, {k: [] for k in QUANTILES})
                    for k, v in QUANTILES.items():
                        q[k].append(percentile(lat, v))
                    samples[contender] = samples.get(contender, 0) + len(lat)
                    ctx.log(f"  {contender:26s} W={workers} p50 {percentile(lat, 0.5):8.0f} us  "
                            f"p99 {percentile(lat, 0.99):8.0f} us  ({len(lat)} sends)")
            errors.update(contest.errors)
        for contender, q in per.items():
            rows.append({"workers": workers, "contender": contender, "samples": samples[contender],
                         "reps": {k: v for k, v in q.items()},
                         **{k: median(v) for k, v in q.items()}})
    return {"params": p, "rows": rows, "errors": errors}


def run_caller_cost(ctx: BenchContext) -> dict:
    p = plan(ctx.quick)
    ctx.log("caller cost: one worker, async sends of one 100-byte message")
    per: dict[str, dict[str, list[float]]] = {}
    with Contest(ctx, ctx.contenders, 1, ctx.spec()) as contest:
        for rep in range(ctx.reps):
            for contender in rotated(contest.active(), rep):
                topic = new_topic_name("cost")
                create_topic(ctx.bootstrap, topic)
                job = {"kind": "caller_cost", "topic": topic, "size": 100, "calls": p["caller_calls"]}
                out = contest.trial(contender, job)
                delete_topic(ctx.bootstrap, topic)
                if out is None:
                    continue
                r = out[1][0]
                d = per.setdefault(contender, {"call_us": [], "process_us": []})
                d["call_us"].append(median(r["per_call_us"]))
                d["process_us"].append(r["process_us_per_msg"])
                ctx.log(f"  {contender:15s} {median(r['per_call_us']):6.2f} us/call in the caller, "
                        f"{r['process_us_per_msg']:6.2f} us/msg for the whole worker")
        errors = dict(contest.errors)
    rows = [{"contender": c, "call_us": median(d["call_us"]), "process_us": median(d["process_us"]),
             "reps_call_us": d["call_us"]} for c, d in per.items()]
    return {"params": p, "rows": rows, "errors": errors}


if __name__ == "__main__":
    from .run import standalone

    standalone("latency", "caller_cost")

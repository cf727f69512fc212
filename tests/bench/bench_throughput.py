"""Aggregate async throughput: kafkad+shim vs one peer producer per worker process.

For every worker count W, message size and messages-per-call, each contender's
W worker processes start together, send as fast as they can for a fixed time,
then wait until the broker acknowledged everything they sent (confluent-kafka
`flush()`, kafka-python `flush()`, kafkad `stop()`). The figure is

    messages acknowledged by the broker / (time the last worker saw its acks - common start)

so a client that only fills a local queue gains nothing. The peers have no
multi-message call, so "10 per call" means ten produce()/send() calls in a
row for them and one `send_messages(topic, *ten)` for kafkad.

Contenders are interleaved trial by trial, their order rotated on every
trial, and every contender keeps its worker pool between trials so process
start-up is never timed. While kafkad's trials run, the daemon's CPU time is
read from /proc to give its cost per million messages. Broker connections per
host are counted on the first trial of each worker count, after the producers
warmed up.
"""

from __future__ import annotations

from .common import (KAFKAD, BenchContext, Contest, WorkerPool, broker_connections, create_topic,
                     delete_topic, median, new_topic_name, rotated)


def plan(quick: bool) -> dict:
    if quick:
        return {"workers": [1, 4], "sizes": [100, 1024], "per_call": [1, 10], "duration": 0.6}
    return {"workers": [1, 4, 16], "sizes": [100, 1024], "per_call": [1, 10], "duration": 2.0}


def run(ctx: BenchContext) -> dict:
    p = plan(ctx.quick)
    configs: dict[tuple, dict] = {}
    connections: dict[int, dict[str, int]] = {}
    errors: dict[str, str] = {}
    turn = 0
    for workers in p["workers"]:
        ctx.log(f"throughput: {workers} worker(s) per contender")
        with Contest(ctx, ctx.contenders, workers, ctx.spec(workers)) as contest:
            for rep in range(ctx.reps):
                for size in p["sizes"]:
                    for per_call in p["per_call"]:
                        key = (workers, size, per_call)
                        cfg = configs.setdefault(key, {"workers": workers, "size": size,
                                                       "per_call": per_call, "results": {}})
                        for contender in rotated(contest.active(), turn):
                            _one_trial(ctx, contest, contender, cfg, p["duration"], connections)
                        turn += 1
            errors.update(contest.errors)
    for cfg in configs.values():
        for res in cfg["results"].values():
            res["median"] = median(res["rates"])
            if res.get("daemon_cpu_s_per_million"):
                res["daemon_cpu_median"] = median(res["daemon_cpu_s_per_million"])
    return {"params": p, "configs": list(configs.values()),
            "connections": {str(k): v for k, v in connections.items()}, "errors": errors}


def _one_trial(ctx: BenchContext, contest: Contest, contender: str, cfg: dict, duration: float,
               connections: dict[int, dict[str, int]]) -> None:
    workers = cfg["workers"]
    topic = new_topic_name(f"tp{workers}")
    create_topic(ctx.bootstrap, topic)
    job = {"kind": "throughput", "topic": topic, "size": cfg["size"], "per_call": cfg["per_call"],
           "duration": duration}
    daemon = ctx.daemon if contender == KAFKAD else None

    marks: dict[str, float | int | None] = {}
    unverified = False

    def before_go(pool: WorkerPool) -> None:
        seen = connections.setdefault(workers, {})
        if contender not in seen:
            pids = list(pool.pids) + ([daemon.pid] if daemon else [])
            seen[contender] = broker_connections(pids, ctx.broker_port)
        if daemon:
            marks["delivered"] = daemon.delivered()
            marks["cpu"] = daemon.cpu_seconds()

    out = contest.trial(contender, job, after_prepare=before_go)
    cpu1 = daemon.cpu_seconds() if daemon else 0.0
    delivered1 = daemon.delivered() if daemon else None
    delete_topic(ctx.bootstrap, topic)
    if out is None:
        return
    start_at, results = out
    acked = sum(r["acked"] for r in results)
    sent = sum(r["sent"] for r in results)
    if daemon and delivered1 is not None and marks.get("delivered") is not None:
        # The shim's stop() waits but does not return a count: the daemon's own
        # counter of broker-acknowledged messages is the authority.
        acked = min(acked, delivered1 - marks["delivered"])
    elif daemon:
        unverified = True
    cpu0 = marks.get("cpu", cpu1)
    elapsed = max(r["t_done"] for r in results) - start_at
    rate = acked / elapsed if elapsed > 0 else 0.0
    res = cfg["results"].setdefault(contender, {"rates": [], "sent": [], "acked": [],
                                                "worker_cpu_us_per_msg": []})
    if unverified:
        # Without the daemon's counter only "sent and stop() returned" is known.
        res["unverified_trials"] = res.get("unverified_trials", 0) + 1
    res["rates"].append(rate)
    res["sent"].append(sent)
    res["acked"].append(acked)
    res["worker_cpu_us_per_msg"].append(
        sum(r["cpu"] for r in results) / max(acked, 1) * 1e6)
    if daemon and acked:
        res.setdefault("daemon_cpu_s_per_million", []).append((cpu1 - cpu0) / acked * 1e6)
    lost = "" if acked == sent else f" ({sent - acked} not acknowledged)"
    warnings = sum(r.get("log_warnings", 0) for r in results)
    if warnings:
        first = next(r["first_log"] for r in results if r.get("first_log"))
        lost += f" [{warnings} client warning(s), first: {first[:160]}]"
        res.setdefault("client_warnings", []).append(first)
    ctx.log(f"  {contender:15s} W={workers:<2d} {cfg['size']:>4d}B x{cfg['per_call']:<2d} "
            f"{rate:>10,.0f} msg/s{lost}")


if __name__ == "__main__":
    from .run import standalone

    standalone("throughput")

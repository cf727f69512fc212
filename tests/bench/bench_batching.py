"""Batching at the broker: what the broker receives for the same steady load.

A web-like load: 4 worker processes each send `rate` realistic JSON events
per second, one per call, for a fixed time. Everything goes through the
counting proxy of tests/support/faultproxy.py in front of a Tansu of its
own (the broker advertises the proxy, so no client can bypass it). For
each contender the proxy's counters give:

* records per RecordBatch and per Produce request,
* Produce requests per second at the broker,
* the wire ratio: JSON payload bytes handed to the client / bytes the
  client sent to the broker (every request, headers included), with no
  compression, gzip and zstd. Bigger batches compress better, so this is
  where one shared producer should show.

kafkad uses a daemon of its own on the proxied broker. The load is the same
for every contender (paced, not "as fast as possible"), so the counts
compare like with like.
"""

from __future__ import annotations

from .common import (KAFKAD, BenchContext, Contest, DaemonUnavailable, KafkadDaemon, WorkerPool,
                     create_topic, delete_topic, median, new_topic_name, rotated)

CODECS = (None, "gzip", "zstd")


def plan(quick: bool) -> dict:
    return {"workers": 4, "rate_per_worker": 2000, "duration": 1.5 if quick else 3.0,
            "distinct_payloads": 2000}


def run(ctx: BenchContext) -> dict:
    try:
        from tests.support.faultproxy import FaultProxy
        from tests.support.tansu import Tansu
    except ImportError as exc:
        return {"unavailable": f"the counting proxy (tests/support/faultproxy.py) cannot be imported: {exc}"}
    p = plan(ctx.quick)
    proxy = FaultProxy()
    port = proxy.reserve()
    broker = Tansu(advertised_port=port).start()
    proxy.target_port = broker.port
    proxy.start()
    daemon = None
    contenders = list(ctx.contenders)
    errors: dict[str, str] = {}
    if KAFKAD in contenders:
        daemon = KafkadDaemon(proxy.address, ctx.workdir, name="kafkad-batching")
        try:
            daemon.start()
        except DaemonUnavailable as exc:
            errors[KAFKAD] = str(exc)
            contenders.remove(KAFKAD)
            daemon = None
    rows: dict[tuple, dict] = {}
    try:
        ctx.log(f"batching: {p['workers']} workers x {p['rate_per_worker']} msg/s through the counting proxy")
        spec = ctx.spec(p["workers"], bootstrap=proxy.address, daemon=daemon)
        if daemon is None:
            spec["endpoint"] = ""
        with Contest(ctx, contenders, p["workers"], spec) as contest:
            turn = 0
            for rep in range(ctx.reps):
                for codec in CODECS:
                    for contender in rotated(contest.active(), turn):
                        turn += 1
                        m = _trial(ctx, contest, proxy, contender, codec, p)
                        if m is None:
                            continue
                        row = rows.setdefault((codec or "none", contender),
                                              {"codec": codec or "none", "contender": contender})
                        for k, v in m.items():
                            row.setdefault(k, []).append(v)
            errors.update(contest.errors)
    finally:
        if daemon is not None:
            daemon.stop()
        proxy.stop()
        broker.stop()
    out = []
    for row in rows.values():
        out.append({k: (median(v) if isinstance(v, list) else v) for k, v in row.items()})
    return {"params": p, "rows": out, "errors": errors}


def _trial(ctx: BenchContext, contest: Contest, proxy, contender: str, codec: str | None,
           p: dict) -> dict | None:
    bootstrap = proxy.address
    topic = new_topic_name("batch")
    create_topic(bootstrap, topic)
    job = {"kind": "paced", "topic": topic, "codec": codec,
           "distinct": p["distinct_payloads"], "rate": p["rate_per_worker"], "duration": p["duration"]}
    before = {}

    def snapshot(pool: WorkerPool) -> None:
        before["stats"] = proxy.stats()

    out = contest.trial(contender, job, after_prepare=snapshot)
    after = proxy.stats()
    delete_topic(bootstrap, topic)
    if out is None or "stats" not in before:
        return None
    start_at, results = out
    b0 = before["stats"]
    batches = after.batches[len(b0.batches):]
    records = sum(b.records for b in batches if b.records > 0)
    requests = after.produce_requests - b0.produce_requests
    wire = after.bytes_up - b0.bytes_up
    payload = sum(r["payload_bytes"] for r in results)
    elapsed = max(r["t_done"] for r in results) - start_at
    acked = sum(r["acked"] for r in results)
    m = {"records_per_batch": records / len(batches) if batches else 0.0,
         "records_per_request": records / requests if requests else 0.0,
         "requests_per_s": requests / elapsed if elapsed > 0 else 0.0,
         "wire_ratio": payload / wire if wire else 0.0,
         "acked": acked, "sent": sum(r["sent"] for r in results)}
    ctx.log(f"  {contender:15s} {codec or 'none':5s} {m['records_per_batch']:7.1f} rec/batch "
            f"{m['requests_per_s']:7.0f} req/s  ratio {m['wire_ratio']:.2f}")
    return m


if __name__ == "__main__":
    from .run import standalone

    standalone("batching")

"""Per-worker footprint: memory a worker pays to produce, measured in fresh processes.

Each probe is a new interpreter (`python -m tests.bench.bench_footprint
--probe CONTENDER ...`) that reads its own VmRSS and RssAnon from
/proc/self/status at four points: before the client is imported, after the
import, after a producer is created, and after one message was handed over
and acknowledged (kafkad's shim: handed to the daemon and the producer
stopped, which waits for the acknowledgement). The deltas are what every
worker process of a gunicorn/celery host pays, once per process.

The probe keeps its own imports to os/sys/json so that the baseline does not
already contain modules a client would have to load. Broker connections per
host are counted by the throughput benchmark (see there) and shown with
these figures in the report.
"""

from __future__ import annotations

import json
import os
import sys


def _rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def probe(contender: str, bootstrap: str, endpoint: str, topic: str) -> dict:
    """Runs inside the fresh interpreter; returns the RSS readings in KiB."""
    marks = {"start": _rss()}
    if contender == "kafkad":
        import client_shim

        marks["import"] = _rss()
        # batch_send_every_t as in the other benchmarks (tests/bench/common.py).
        producer = client_shim.SimpleProducer(endpoint, async_send=True, req_acks=1,
                                              batch_send_every_t=0.005)
        marks["producer"] = _rss()
        producer.send_messages(topic, b"x" * 100)
        producer.stop()
    elif contender == "confluent-kafka":
        import confluent_kafka

        marks["import"] = _rss()
        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": 1})
        marks["producer"] = _rss()
        producer.produce(topic, b"x" * 100)
        if producer.flush(30) != 0:
            raise RuntimeError("confluent-kafka: the probe message was not delivered in 30 s")
    elif contender == "kafka-python":
        import kafka

        marks["import"] = _rss()
        producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, acks=1)
        marks["producer"] = _rss()
        producer.send(topic, b"x" * 100).get(timeout=30)
    else:
        raise ValueError(f"contender: unknown {contender!r}")
    marks["first_message"] = _rss()
    return marks


def run(ctx) -> dict:
    """Runner side: probes every contender ctx.reps times, interleaved; medians of the deltas."""
    import subprocess

    from .common import (KAFKAD, REPO_ROOT, create_topic, delete_topic, median, new_topic_name,
                         rotated)

    topic = new_topic_name("footprint")
    create_topic(ctx.bootstrap, topic)
    per: dict[str, dict[str, list[int]]] = {}
    errors: dict[str, str] = {}
    ctx.log("footprint: RSS of fresh processes importing each client")
    try:
        for rep in range(ctx.reps):
            for contender in rotated([c for c in ctx.contenders if c not in errors], rep):
                endpoint = ctx.daemon.endpoint if contender == KAFKAD and ctx.daemon else ""
                cmd = [sys.executable, "-m", "tests.bench.bench_footprint", "--probe", contender,
                       ctx.bootstrap, endpoint, topic]
                try:
                    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=REPO_ROOT,
                                       env=dict(os.environ, PYTHONPATH=REPO_ROOT))
                except subprocess.TimeoutExpired:
                    errors[contender] = "footprint probe timed out after 90 s"
                    continue
                if r.returncode != 0:
                    last = (r.stderr.strip().splitlines() or ["no output"])[-1]
                    errors[contender] = f"footprint probe failed: {last}"
                    ctx.log(f"  ! {contender}: {errors[contender]}")
                    continue
                marks = json.loads(r.stdout.strip().splitlines()[-1])
                d = per.setdefault(contender, {})
                base = marks["start"]["VmRSS"]
                for stage in ("import", "producer", "first_message"):
                    d.setdefault(stage, []).append(marks[stage]["VmRSS"] - base)
                d.setdefault("anon_first_message", []).append(
                    marks["first_message"]["RssAnon"] - marks["start"]["RssAnon"])
                ctx.log(f"  {contender:15s} +{(marks['first_message']['VmRSS'] - base) / 1024:6.1f} MiB")
    finally:
        delete_topic(ctx.bootstrap, topic)
    rows = [{"contender": c, **{k: median(v) for k, v in d.items()}} for c, d in per.items()]
    return {"rows": rows, "errors": errors}


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--probe":
        print(json.dumps(probe(*sys.argv[2:6])))
    else:
        from .run import standalone

        standalone("footprint")

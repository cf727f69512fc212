"""Smoke tests of the capacity benchmark's parts (tests/bench/bench_capacity.py)."""

from __future__ import annotations

import os

from client_shim import schema
from tests.bench.bench_capacity import (_FeederDriver, _trial, groups_frame, plan, role_of,
                                        tansu_pid)
from tests.bench.common import KAFKAD, BenchContext, KafkadDaemon


def test_groups_frame_is_a_valid_frame_of_consecutive_round_robin_entries():
    sid = os.urandom(schema.SESSION_ID_LEN)
    frame = groups_frame(sid, "t", [0, 1, 2], 10, 7, b"v" * 100, 123)
    kind, (session_id, groups) = schema.decode_request(frame, 1 << 24)
    assert kind == schema.SEND_GROUPS and session_id == sid
    seqs = {}
    for topic, partition, ts, firsts, counts, keys, values in groups:
        assert (topic, ts, counts, keys) == ("t", 123, None, None)
        assert len(values) == len(firsts)
        for s in firsts:
            seqs[s] = partition
    # entries 10..16, entry i to partition i % 3: what a SimpleProducer's 1-per-call sends make
    assert seqs == {s: s % 3 for s in range(10, 17)}


def test_groups_frame_of_several_messages_per_call_counts_them():
    frame = groups_frame(os.urandom(schema.SESSION_ID_LEN), "t", [4, 5], 6, 3, b"v", 1, per_call=3)
    _, (_, groups) = schema.decode_request(frame, 1 << 24)
    # entries 6-8 to partition 4, 9-11 to 5, 12-14 to 4: three messages each
    assert [(g[1], g[3], g[4], len(g[6])) for g in groups] == [(4, [6, 12], [3, 3], 6), (5, [9], [3], 3)]


def test_roles_come_from_the_thread_names():
    assert role_of("daemon", 5, 5, "python") == "daemon main thread"
    assert role_of("daemon", 5, 6, "ZMQbg/IO/0") == "daemon ZeroMQ I/O"
    assert role_of("worker-kafkad", 5, 7, "python") == "shim I/O thread"
    assert role_of("worker-confluent", 5, 8, "rdk:broker1") == "librdkafka threads"
    assert role_of("worker-confluent", 5, 5, "python") == "worker main threads"
    assert role_of("tansu", 5, 9, "tokio-rt-worker") == "Tansu"


def test_a_pinned_feeder_trial_is_delivered_measured_and_unpinned(tansu, tmp_path):
    """The whole trial path on a real daemon and Tansu, pinned to one core: every message
    fed is acknowledged (and counted by the daemon), the threads' CPU is attributed and
    stays within one core, and the affinity is given back afterwards."""
    daemon = KafkadDaemon(tansu.bootstrap, str(tmp_path)).start()
    try:
        ctx = BenchContext(out_dir=str(tmp_path), quick=True, reps=1, bootstrap=tansu.bootstrap,
                           contenders=[KAFKAD], missing={}, daemon=daemon, workdir=str(tmp_path),
                           log=lambda msg: None)
        all_cpus = os.sched_getaffinity(0)
        one = {max(all_cpus)}
        broker = tansu_pid(ctx.broker_port)
        assert broker == tansu.proc.pid
        delivered0 = daemon.delivered()
        cfg = {"name": "feeders x1", "driver": ("feeders", 1), "contender": KAFKAD, "per_call": 1,
               "cpus": one, "part": "a"}
        rec = _trial(ctx, _FeederDriver(ctx, 1), cfg, dict(plan(True), duration=0.3), broker, all_cpus)
        assert rec["sent"] > 0 and rec["acked"] == rec["sent"]
        assert daemon.delivered() - delivered0 == rec["sent"]
        for role in ("daemon main thread", "feeders", "Tansu"):
            assert rec["cpu_s"][role] > 0, role
        assert sum(rec["cpu_s"].values()) <= rec["wall_s"] * 1.05 + 0.02     # one core at most
        for pid in (daemon.pid, broker):
            for tid in os.listdir(f"/proc/{pid}/task"):
                assert os.sched_getaffinity(int(tid)) == all_cpus
    finally:
        daemon.stop()

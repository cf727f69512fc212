"""Where throughput is bound: the daemon's own capacity, CPU per message by thread, 1 vs 2 cores.

    python -m tests.bench.bench_capacity [--quick] [--reps N]

Three questions, one interleaved series of trials (every trial: a fresh
3-partition topic, 100-byte messages, the section's Tansu and daemon):

a. **The daemon's capacity.** How many messages per second one `kafkad run`
   takes and gets acknowledged by Tansu when its senders cost it as little as
   possible. The senders ("feeders") are processes that speak the IPC schema
   on a bare DEALER socket: each registers one session with the settings a
   benchmark `SimpleProducer` sends, then writes `SEND_GROUPS` frames of
   `FEED_ENTRIES` one-message entries (round-robin over the partitions, as a
   `SimpleProducer` sending one message per call produces them) and reads the
   ACKs, keeping at most `FEED_WINDOW` messages unacknowledged (and, with 10
   messages per call, a tenth as many entries of 10 each). A frame is
   built from a ready list of values and a range of sequence numbers, about
   0.1 us per message, so the feeders leave the cores to the daemon and the
   broker; the frames are the ones the shim sends, so the daemon does exactly
   its real work. Shown next to it: 4 shim workers sending 10 messages per
   call (the real API at its cheapest per message).
b. **CPU per message, end to end.** 4 workers sending 1 message per call as
   fast as they can (the throughput section's job), kafkad and
   confluent-kafka; the CPU time of every thread of the workers, the daemon
   and Tansu from `/proc/<pid>/task/<tid>/schedstat` (nanoseconds; the
   `stat` file next to it counts 10 ms ticks) at the common start and after
   the last acknowledgement, by role (main thread, the shim's I/O thread,
   ZeroMQ's I/O threads, librdkafka's threads, Tansu), per acknowledged
   message; the same file's runqueue wait tells a thread that waited for a
   core from one that had nothing to do. Also the whole machine's busy time
   from `/proc/stat` and every other process's CPU from `/proc/*/stat`, so a
   trial disturbed by other work (a shared machine) shows as such.
c. **Cores.** The same 4-worker trials with every thread of the workers, the
   daemon and Tansu pinned to one core (`os.sched_setaffinity` per thread,
   checked after pinning) and on all cores: how throughput grows with cores.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

from .common import (CONFLUENT, KAFKAD, BenchContext, ContenderError, KafkadClient, WorkerPool,
                     create_topic, delete_topic, fixed_payload, median, new_topic_name, tcp_sockets)

# Feeder settings: messages per SEND_GROUPS frame (1,000 one-message entries, or
# 100 entries of 10 when a call carries 10), and the messages one feeder keeps
# unacknowledged (under the daemon's default
# max_inflight_per_session, 200,000, and, for four feeders, [queue] max_messages).
FEED_ENTRIES = 1000
FEED_WINDOW = 100_000
WORKERS = 4
SIZE = 100

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def plan(quick: bool) -> dict:
    return {"duration": 1.0 if quick else 2.0, "feeders": [1, 2] if quick else [1, 2, 4],
            "workers": WORKERS, "size": SIZE}


# --------------------------------------------------------------------------
# per-thread CPU from /proc


def _task_comm(pid: int, tid: int | str) -> str | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_ticks(pid: int) -> int:
    """utime + stime of the whole process in clock ticks (threads that ended included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _schedstat(pid: int, tid: int | str) -> tuple[int, int] | None:
    """(ns on a core, ns runnable but waiting for a core) of one thread, or None if it is gone.

    Nanoseconds, where /proc/<pid>/task/<tid>/stat counts 10 ms ticks: a
    thread's share of a one-second window is then exact, not +-1%.
    """
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            run_ns, wait_ns = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(run_ns), int(wait_ns)


def role_of(kind: str, pid: int, tid: int, comm: str) -> str:
    """The role of a thread of a process of `kind` (worker-kafkad, worker-confluent, daemon,
    tansu, feeder), from its tid and its name: libzmq names its threads ZMQbg/...,
    librdkafka rdk:..., Python threads keep the interpreter's name."""
    if kind == "tansu":
        return "Tansu"
    if kind == "feeder":
        return "feeders"
    if kind == "daemon":
        if tid == pid:
            return "daemon main thread"
        return "daemon ZeroMQ I/O" if comm.startswith("ZMQbg") else "daemon other threads"
    if tid == pid:
        return "worker main threads"
    if comm.startswith("ZMQbg"):
        return "worker ZeroMQ I/O"
    if comm.startswith("rdk:"):
        return "librdkafka threads"
    return "shim I/O thread" if kind == "worker-kafkad" else "worker other threads"


def snapshot(procs: dict[int, str]) -> dict:
    """CPU and runqueue wait of every thread of `procs` (pid -> kind), the processes' totals
    and the machine's busy time."""
    threads, totals = {}, {}
    for pid, kind in procs.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            comm, st = _task_comm(pid, tid), _schedstat(pid, tid)
            if comm is not None and st is not None:
                threads[(pid, int(tid))] = (role_of(kind, pid, int(tid), comm), st[0], st[1])
        totals[pid] = _proc_ticks(pid)
    t = time.monotonic()
    return {"threads": threads, "totals": totals, "machine": _machine_ticks(), "t": t,
            "others": _other_processes(set(procs))}


def _other_processes(exclude: set[int]) -> dict[int, tuple[str, bool, int]]:
    """pid -> (name, kernel thread?, utime + stime ticks) of every other process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        head, _, tail = raw.rpartition(")")
        fields = tail.split()
        kernel = name == "2" or fields[1] == "2"            # kthreadd and its children
        out[int(name)] = (head.partition("(")[2], kernel, int(fields[11]) + int(fields[12]))
    return out


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all cores from /proc/stat (idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])          # user nice system idle iowait irq softirq steal
    return total - values[3] - values[4], total


def cpu_by_role(before: dict, after: dict, procs: dict[int, str]) -> dict:
    """CPU seconds and runqueue-wait seconds per role between two snapshots.

    A thread that ended in between is not in `after`; what its process's
    total (in ticks) shows beyond its live threads is charged to "<kind>
    threads that ended", once it is more than the ticks' resolution (two
    ticks and 2%), so the roles add up to the processes' CPU.
    """
    cpu: dict[str, float] = {}
    wait: dict[str, float] = {}
    live: dict[int, float] = {}
    for key, (role, run_ns, wait_ns) in after["threads"].items():
        _, run0, wait0 = before["threads"].get(key, (role, 0, 0))
        cpu[role] = cpu.get(role, 0.0) + (run_ns - run0) / 1e9
        wait[role] = wait.get(role, 0.0) + (wait_ns - wait0) / 1e9
        live[key[0]] = live.get(key[0], 0.0) + (run_ns - run0) / 1e9
    for pid, kind in procs.items():
        total = (after["totals"].get(pid, 0) - before["totals"].get(pid, 0)) / _CLK_TCK
        ended = total - live.get(pid, 0.0)
        if ended > 2 / _CLK_TCK + 0.02 * total:
            role = f"{kind} threads that ended"
            cpu[role] = cpu.get(role, 0.0) + ended
    busy = (after["machine"][0] - before["machine"][0]) / _CLK_TCK
    others: dict[str, float] = {}
    for pid, (name, kernel, ticks) in after["others"].items():
        was = before["others"].get(pid)
        used = (ticks - (was[2] if was else 0)) / _CLK_TCK
        if used > 0:
            key = "kernel threads" if kernel else ("runner" if pid == os.getpid() else name)
            others[key] = others.get(key, 0.0) + used
    return {"cpu_s": cpu, "wait_s": wait, "machine_busy_s": busy,
            "wall_s": after["t"] - before["t"], "others_s": others}


# --------------------------------------------------------------------------
# pinning


def tansu_pid(port: int) -> int | None:
    """The pid listening on 127.0.0.1:`port` (the section's Tansu), from /proc/net/tcp."""
    inodes = {f"socket:[{inode}]" for local, _, state, inode in tcp_sockets()
              if state == "0A" and local == port}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                try:
                    if os.readlink(f"/proc/{name}/fd/{fd}") in inodes:
                        return int(name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def unpin(pids: list[int], cpus: set[int]) -> None:
    """`pin` back to `cpus` as far as it goes, from a cleanup: a failure here is
    printed, not raised, so that it neither hides the error being cleaned up
    after nor leaves the other threads pinned."""
    for pid in pids:
        try:
            pin([pid], cpus)
        except OSError as exc:
            print(f"capacity: could not restore the affinity of pid {pid}: {exc}", file=sys.stderr)


def pin(pids: list[int], cpus: set[int]) -> int:
    """Set the affinity of every thread of `pids` to `cpus`; the number of threads pinned.

    Raises OSError when a thread refuses or does not keep the mask.
    """
    n = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
                if os.sched_getaffinity(int(tid)) != cpus:
                    raise OSError(f"thread {tid} of {pid} did not keep the affinity {sorted(cpus)}")
            except ProcessLookupError:
                continue
            n += 1
    return n


# --------------------------------------------------------------------------
# feeders: SEND_GROUPS frames on a bare DEALER


def groups_frame(session_id: bytes, topic: str, partitions: list[int], first: int, count: int,
                 value: bytes, ts: int, per_call: int = 1) -> bytes:
    """A SEND_GROUPS frame of `count` entries of `per_call` messages numbered from `first`,
    entry e (the session's e-th) going to partitions[e % len(partitions)]: the shim's frame for
    `send_messages` calls of `per_call` messages on a SimpleProducer (which turns the
    partitions round-robin from one call to the next)."""
    from client_shim import schema

    p = len(partitions)
    groups = []
    for k in range(min(p, count)):
        firsts = list(range(first + k * per_call, first + count * per_call, p * per_call))
        groups.append([topic, partitions[(first // per_call + k) % p], ts, firsts,
                       None if per_call == 1 else [per_call] * len(firsts), None,
                       [value] * (len(firsts) * per_call)])
    return schema.encode([schema.SEND_GROUPS, session_id, groups])


def _feeder_main(conn, endpoint: str, topic: str, partitions: list[int], spec: dict) -> None:
    """One feeder process: register, then on "go" send frames until the deadline and wait
    for every acknowledgement. Answers ("ok", result) or ("error", text)."""
    import zmq

    from client_shim import schema

    try:
        shim = KafkadClient({"endpoint": endpoint, "workers": spec["feeders"]})
        producer = shim._make(async_send=True, codec=None, size=SIZE)
        settings = producer._settings()       # exactly what a benchmark SimpleProducer registers
        producer.stop()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint)
        sid = os.urandom(schema.SESSION_ID_LEN)
        sock.send(schema.encode([schema.REGISTER, schema.SCHEMA_VERSION, 1, sid, 0, settings]))
        if not sock.poll(10_000):
            raise RuntimeError("no REGISTERED within 10 s")
        reply = schema.decode_reply(sock.recv())
        if reply[0] != schema.REGISTERED or "send_groups" not in (reply[5] if len(reply) > 5 else []):
            raise RuntimeError(f"REGISTER answered {reply!r:.200}")
        conn.send(("ok", os.getpid()))
        cmd, start_at = conn.recv()
        if cmd != "go":
            return
        value = fixed_payload(SIZE)
        per_call, window = spec["per_call"], spec["window"]
        n = max(1, spec["entries"] // per_call)     # entries per frame; messages per frame alike
        seq = acked = failed = frames = 0
        problems: list[str] = []

        def take(msg) -> None:
            nonlocal acked, failed
            kind = msg[0]
            if kind == schema.ACK:
                acked += len(msg[2]) * per_call
            elif kind == schema.FAILED:
                for _first, runs in msg[2]:
                    bad = sum(r[1] for r in runs)
                    failed += bad
                    acked += per_call - bad
            elif len(problems) < 5:
                problems.append(repr(msg)[:200])

        while time.monotonic() < start_at:
            time.sleep(0.001)
        deadline = start_at + spec["duration"]
        cpu0 = time.process_time()
        while time.monotonic() < deadline and not problems:
            while seq - acked - failed + n * per_call > window:
                if sock.poll(1000):
                    take(schema.decode_reply(sock.recv()))
                elif time.monotonic() > deadline + 30:
                    raise RuntimeError(f"no acknowledgement for 30 s ({seq - acked - failed} outstanding)")
            sock.send(groups_frame(sid, topic, partitions, seq, n, value, int(time.time() * 1000), per_call))
            seq += n * per_call
            frames += 1
            while True:
                try:
                    take(schema.decode_reply(sock.recv(zmq.NOBLOCK)))
                except zmq.Again:
                    break
        t_sent = time.monotonic()
        give_up = t_sent + 60
        while acked + failed < seq and not problems and time.monotonic() < give_up:
            if sock.poll(200):
                take(schema.decode_reply(sock.recv()))
        t_done = time.monotonic()
        sock.send(schema.encode([schema.UNREGISTER, 2, sid]))
        sock.poll(1000)
        sock.close(0)
        ctx.term()
        conn.send(("ok", {"sent": seq, "acked": acked, "failed": failed, "frames": frames,
                          "problems": problems, "t_sent": t_sent, "t_done": t_done,
                          "cpu": time.process_time() - cpu0}))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------
# trial drivers: a worker pool of a contender, or a set of feeders


class _PoolDriver:
    """The contender's `WORKERS` worker processes, kept between trials (rebuilt after a failure)."""

    def __init__(self, ctx: BenchContext, contender: str):
        self.ctx = ctx
        self.contender = contender
        self.kind = "worker-kafkad" if contender == KAFKAD else "worker-confluent"
        self.pool: WorkerPool | None = None

    def prepare(self, job: dict) -> list[int]:
        if self.pool is None:
            self.pool = WorkerPool(self.contender, WORKERS, self.ctx.spec(WORKERS))
        self.pool.command("prepare", job)
        return list(self.pool.pids)

    def go(self, start_at: float) -> None:
        for c in self.pool.conns:
            c.send(("go", start_at))

    def collect(self) -> list[dict]:
        return self.pool._collect("go")

    def release(self) -> None:
        self.pool.command("release")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.pool = None


class _FeederDriver:
    """`count` feeder processes, new for every trial (each registers one session)."""

    kind = "feeder"

    def __init__(self, ctx: BenchContext, count: int):
        self.ctx = ctx
        self.count = count
        self.procs: list = []
        self.conns: list = []
        self.duration = 0.0

    def prepare(self, job: dict) -> list[int]:
        topic = job["topic"]
        self.duration = job["duration"]
        # The daemon learns the topic's metadata before the clock starts.
        partitions = self.ctx.daemon._client().partitions_for(topic, refresh=True)
        spec = {"entries": FEED_ENTRIES, "window": FEED_WINDOW, "duration": job["duration"],
                "per_call": job["per_call"],
                "feeders": self.count}
        mp = multiprocessing.get_context("spawn")
        for _ in range(self.count):
            parent, child = mp.Pipe()
            p = mp.Process(target=_feeder_main, daemon=True,
                           args=(child, self.ctx.daemon.endpoint, topic, partitions, spec))
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        return [_answer(c, 60) for c in self.conns]

    def go(self, start_at: float) -> None:
        for c in self.conns:
            c.send(("go", start_at))

    def collect(self) -> list[dict]:
        return [_answer(c, self.duration + 120) for c in self.conns]

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("exit", None))      # a feeder still waiting for "go" ends
            except OSError:
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []


def _answer(conn, timeout: float):
    if not conn.poll(timeout):
        raise ContenderError(f"a feeder did not answer within {timeout:.0f}s")
    try:
        status, value = conn.recv()
    except (EOFError, OSError):
        raise ContenderError("a feeder process exited") from None
    if status != "ok":
        raise ContenderError(f"feeder: {value}")
    return value


# --------------------------------------------------------------------------
# the section


def _configs(ctx: BenchContext, p: dict, one_core: set[int] | None) -> list[dict]:
    """What is measured: name, driver key, messages per call, cores (None = all)."""
    out = []
    if KAFKAD in ctx.contenders:
        out += [{"name": f"feeders x{n}", "driver": ("feeders", n), "contender": KAFKAD,
                 "per_call": 1, "cpus": None, "part": "a"} for n in p["feeders"]]
        out.append({"name": "feeders x2, 10/call", "driver": ("feeders", 2), "contender": KAFKAD,
                    "per_call": 10, "cpus": None, "part": "a"})
        out.append({"name": "kafkad 10/call", "driver": ("pool", KAFKAD), "contender": KAFKAD,
                    "per_call": 10, "cpus": None, "part": "a"})
    for c in (KAFKAD, CONFLUENT):
        if c not in ctx.contenders:
            continue
        out.append({"name": f"{c} 1/call", "driver": ("pool", c), "contender": c, "per_call": 1,
                    "cpus": None, "part": "b"})
        if one_core:
            out.append({"name": f"{c} 1/call, 1 core", "driver": ("pool", c), "contender": c,
                        "per_call": 1, "cpus": one_core, "part": "c"})
    return out


def run(ctx: BenchContext) -> dict:
    if KAFKAD not in ctx.contenders or ctx.daemon is None:
        return {"unavailable": f"kafkad cannot run: {ctx.missing.get(KAFKAD, 'no daemon')}"}
    p = plan(ctx.quick)
    all_cpus = os.sched_getaffinity(0)
    tansu = tansu_pid(ctx.broker_port)
    one_core, pinning = None, "ok"
    if len(all_cpus) < 2:
        pinning = f"only {len(all_cpus)} core available to the runner"
    elif tansu is None:
        pinning = f"no process found listening on port {ctx.broker_port} (Tansu) to pin"
    else:
        one_core = {max(all_cpus)}
        try:                             # pinning works here (and can be undone)?
            pin([ctx.daemon.pid], one_core)
            pin([ctx.daemon.pid], all_cpus)
        except OSError as exc:
            pinning, one_core = f"sched_setaffinity failed: {exc}", None
            unpin([ctx.daemon.pid], all_cpus)   # the daemon serves the sections after this one
    configs = _configs(ctx, p, one_core)
    drivers: dict = {}
    errors: dict[str, str] = {}
    ctx.log(f"capacity: {len(configs)} configurations x {ctx.reps} reps, {p['duration']:g} s each; "
            f"pinning: {pinning}")
    try:
        for rep in range(ctx.reps):
            for cfg in configs[rep % len(configs):] + configs[:rep % len(configs)]:
                key = cfg["driver"]
                if key not in drivers:
                    drivers[key] = (_FeederDriver(ctx, key[1]) if key[0] == "feeders"
                                    else _PoolDriver(ctx, key[1]))
                try:
                    rec = _trial(ctx, drivers[key], cfg, p, tansu, all_cpus)
                except (ContenderError, OSError) as exc:
                    errors[cfg["name"]] = str(exc)
                    ctx.log(f"  ! {cfg['name']}: {exc}")
                    drivers.pop(key).close()
                    continue
                cfg.setdefault("trials", []).append(rec)
    finally:
        for d in drivers.values():
            d.close()
    out = []
    for cfg in configs:
        trials = cfg.get("trials", [])
        out.append({"name": cfg["name"], "part": cfg["part"], "contender": cfg["contender"],
                    "per_call": cfg["per_call"], "cores": len(cfg["cpus"] or all_cpus),
                    "trials": trials, **summarize(trials)})
    return {"params": dict(p, feed_entries=FEED_ENTRIES, feed_window=FEED_WINDOW), "quiet_cores": QUIET_CORES,
            "cores": len(all_cpus), "one_core": sorted(one_core) if one_core else None,
            "pinning": pinning, "configs": out, "errors": errors}


def _trial(ctx: BenchContext, driver, cfg: dict, p: dict, tansu: int | None, all_cpus: set[int]) -> dict:
    topic = new_topic_name("cap")
    create_topic(ctx.bootstrap, topic)
    job = {"kind": "throughput", "topic": topic, "size": p["size"], "per_call": cfg["per_call"],
           "duration": p["duration"]}
    daemon = ctx.daemon if cfg["contender"] == KAFKAD else None
    procs: dict[int, str] = {}
    prepared = False
    try:
        pids = driver.prepare(job)
        prepared = True
        procs = {pid: driver.kind for pid in pids}
        if daemon is not None:
            procs[daemon.pid] = "daemon"
        if tansu is not None:
            procs[tansu] = "tansu"
        if cfg["cpus"]:
            pin(list(procs), cfg["cpus"])
        delivered0 = daemon.delivered() if daemon else None
        start_at = time.monotonic() + 0.2
        driver.go(start_at)
        time.sleep(max(0.0, start_at - time.monotonic()))
        before = snapshot(procs)
        results = driver.collect()
        after = snapshot(procs)
        delivered1 = daemon.delivered() if daemon else None
    finally:
        if cfg["cpus"] and procs:
            unpin(list(procs), all_cpus)
        if prepared:
            driver.release()
        delete_topic(ctx.bootstrap, topic)
    acked = sum(r["acked"] for r in results)
    sent = sum(r["sent"] for r in results)
    if delivered0 is not None and delivered1 is not None and driver.kind != "feeder":
        acked = min(acked, delivered1 - delivered0)    # the shim's stop() returns no count
    problems = [x for r in results for x in r.get("problems", [])]
    if problems:
        raise ContenderError(f"the daemon answered: {problems[0]}")
    elapsed = max(r["t_done"] for r in results) - start_at
    rec = {"rate": acked / elapsed if elapsed > 0 else 0.0, "acked": acked, "sent": sent,
           "elapsed_s": elapsed, **cpu_by_role(before, after, procs)}
    lost = "" if acked == sent else f" ({sent - acked} not acknowledged)"
    main = rec["cpu_s"].get("daemon main thread")
    util = f", daemon main {main / rec['wall_s'] * 100:.0f}% of a core" if main is not None else ""
    ctx.log(f"  {cfg['name']:28s} {rec['rate']:>10,.0f} msg/s{util}{lost}")
    return rec


# A trial during which other processes (another user's tests, say) kept more
# than this many cores busy is "disturbed"; the quiet ones get medians of their own.
QUIET_CORES = 0.1


def summarize(trials: list[dict]) -> dict:
    """Medians over the trials: rate, CPU us per message and share of a core per role,
    runqueue wait per role, the machine's busy cores and what no measured thread used;
    and the rate and the daemon main thread's figures over the quiet trials alone."""
    if not trials:
        return {"median": None}
    quiet = [t for t in trials
             if (t["machine_busy_s"] - sum(t["cpu_s"].values())) / t["wall_s"] < QUIET_CORES]
    roles = sorted({r for t in trials for r in t["cpu_s"]})
    us = {r: median([t["cpu_s"].get(r, 0.0) / max(t["acked"], 1) * 1e6 for t in trials]) for r in roles}
    util = {r: median([t["cpu_s"].get(r, 0.0) / t["wall_s"] for t in trials]) for r in roles}
    wait = {r: median([t["wait_s"].get(r, 0.0) / t["wall_s"] for t in trials]) for r in roles}
    rest = [(t["machine_busy_s"] - sum(t["cpu_s"].values())) for t in trials]
    return {
        "median": median([t["rate"] for t in trials]),
        "rates": [t["rate"] for t in trials],
        "us_per_msg": us,
        "cores_used": util,
        "runqueue_wait": wait,
        "us_per_msg_total": median([sum(t["cpu_s"].values()) / max(t["acked"], 1) * 1e6 for t in trials]),
        "machine_busy_cores": median([t["machine_busy_s"] / t["wall_s"] for t in trials]),
        "rest_cores": median([r / t["wall_s"] for r, t in zip(rest, trials)]),
        "quiet": {
            "n": len(quiet),
            "median": median([t["rate"] for t in quiet]),
            "daemon_main_busy": median([t["cpu_s"].get("daemon main thread", 0.0) / t["wall_s"]
                                        for t in quiet]),
            "daemon_main_wait": median([t["wait_s"].get("daemon main thread", 0.0) / t["wall_s"]
                                        for t in quiet]),
        },
    }


if __name__ == "__main__":
    from .run import standalone

    standalone("capacity")

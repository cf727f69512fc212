"""`make bench`: every side-by-side benchmark in one run, then the report.

    python -m tests.bench.run --out bench-report [--quick] [--sections a,b] [--reps N]

The runner starts a local Tansu and a kafkad daemon of its own (`python -m
kafkad run` on a temp ipc endpoint), checks which contenders can run (a
missing client or a daemon that does not start is reported, never fatal),
then runs the sections in order:

    footprint, caller_cost, latency, throughput, batching, profile, capacity, external

`external` runs the component benchmarks owned by other parts of the project
(`python -m tests.bench.bench_protocol`, `bench_engine`, `bench_shim`,
`bench_spool`, `bench_sync_floor`) as subprocesses with a timeout and keeps their output. They
get the run's settings in the environment: KAFKAD_BENCH_QUICK (1 or 0),
KAFKAD_BENCH_BOOTSTRAP (the local Tansu) and KAFKAD_BENCH_OUT (the report
folder, for files they want kept with the report).

Results are written to `<out>/results.json` after every section (a run
interrupted half way still leaves what it measured), and rendered by
`tests.bench.report` into `<out>/report.md` with PNG charts.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

from . import report
from .common import (CONFLUENT, CONTENDERS, KAFKA_PYTHON, KAFKAD, REPO_ROOT, BenchContext,
                     Contest, DaemonUnavailable, KafkadDaemon, Log, create_topic, delete_topic,
                     importable, machine_info, make_workdir, new_topic_name, remove_workdir, rss_kib)

SECTIONS = ("footprint", "caller_cost", "latency", "throughput", "batching", "profile", "capacity",
            "external")
EXTERNAL = ("bench_protocol", "bench_engine", "bench_shim", "bench_spool", "bench_sync_floor")
_MODULES = {KAFKAD: "client_shim", CONFLUENT: "confluent_kafka", KAFKA_PYTHON: "kafka"}


def _section(name: str):
    """The function that runs one section (imported lazily: a broken module fails only its section)."""
    if name == "footprint":
        from .bench_footprint import run
    elif name == "caller_cost":
        from .bench_latency import run_caller_cost as run
    elif name == "latency":
        from .bench_latency import run_latency as run
    elif name == "throughput":
        from .bench_throughput import run
    elif name == "batching":
        from .bench_batching import run
    elif name == "profile":
        run = profile_daemon
    elif name == "capacity":
        from .bench_capacity import run
    elif name == "external":
        run = run_external
    else:
        raise ValueError(f"sections: unknown section {name!r} (known: {', '.join(SECTIONS)})")
    return run


# --------------------------------------------------------------------------
# daemon profile


def _py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.access(here, os.X_OK) else shutil.which("py-spy")


def top_functions(raw_path: str, limit: int = 20) -> tuple[int, list[dict]]:
    """(total samples, top functions by own samples) from py-spy's raw (collapsed) output."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    with open(raw_path, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            if "<frozen importlib" in stack:
                continue        # start-up imports, not the steady state being profiled
            n = int(count)
            total += n
            frames = [_frame_name(fr) for fr in stack.split(";") if fr]
            frames = [fr for fr in frames if not fr.startswith(("process ", "thread "))]
            if not frames:
                continue
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    rows = [{"function": fn, "own": n, "own_pct": 100.0 * n / total if total else 0.0,
             "incl_pct": 100.0 * incl[fn] / total if total else 0.0}
            for fn, n in own.most_common(limit)]
    return total, rows


def _frame_name(frame: str) -> str:
    """'send (kafkad/broker/conn.py:123)' -> 'send (kafkad/broker/conn.py)' (all lines of a function)."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    if path.startswith(REPO_ROOT):
        path = os.path.relpath(path, REPO_ROOT)
    return f"{name} ({path})"


def _cprofile_top(path: str, limit: int = 20) -> list[dict]:
    import pstats

    st = pstats.Stats(path)
    total = st.total_tt or 1.0
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, callers) in sorted(
            st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:limit]:
        rows.append({"function": f"{fn} ({os.path.basename(file)}:{line})", "own": round(tt, 3),
                     "own_pct": 100.0 * tt / total, "incl_pct": 100.0 * ct / total})
    return rows


def profile_daemon(ctx: BenchContext) -> dict:
    """Profile the daemon under a steady 4-worker async load: py-spy if present, else cProfile.

    py-spy samples from outside (`--nonblocking`), so the daemon runs at full
    speed; its raw output is kept as `profile-daemon.txt` (collapsed stacks,
    input for flamegraph tools). Without py-spy, the daemon is asked to
    profile itself with cProfile through KAFKAD_CPROFILE=<file>, when it
    offers that hook.
    """
    if KAFKAD not in ctx.contenders:
        return {"unavailable": f"kafkad cannot run: {ctx.missing.get(KAFKAD, 'not selected')}"}
    spy = _py_spy()
    raw = os.path.abspath(os.path.join(ctx.out_dir, "profile-daemon.txt"))
    pstats_path = os.path.abspath(os.path.join(ctx.out_dir, "profile-daemon.pstats"))
    for stale in (raw, pstats_path):
        if os.path.exists(stale):
            os.unlink(stale)
    if spy:
        daemon = KafkadDaemon(ctx.bootstrap, ctx.workdir, name="kafkad-profile",
                              wrap=[spy, "record", "--nonblocking", "-r", "250", "-f", "raw",
                                    "-o", raw, "--"])
        tool = "py-spy"
    else:
        daemon = KafkadDaemon(ctx.bootstrap, ctx.workdir, name="kafkad-profile",
                              env={"KAFKAD_CPROFILE": pstats_path})
        tool = "cProfile"
    duration = 1.5 if ctx.quick else 5.0
    ctx.log(f"profile: daemon under {tool}, 4 workers, 100-byte messages for {duration:g} s")
    try:
        daemon.start()
    except DaemonUnavailable as exc:
        return {"unavailable": str(exc)}
    errors = {}
    acked = 0
    cpu = 0.0
    try:
        spec = ctx.spec(4, daemon=daemon)
        with Contest(ctx, [KAFKAD], 4, spec) as contest:
            topic = new_topic_name("profile")
            create_topic(ctx.bootstrap, topic)
            marks = {}

            def before_go(_pool) -> None:
                marks["cpu"], marks["delivered"] = daemon.cpu_seconds(), daemon.delivered()

            out = contest.trial(KAFKAD, {"kind": "throughput", "topic": topic, "size": 100,
                                         "per_call": 1, "duration": duration}, after_prepare=before_go)
            cpu = daemon.cpu_seconds() - marks.get("cpu", 0.0)
            delivered = daemon.delivered()
            delete_topic(ctx.bootstrap, topic)
            errors.update(contest.errors)
            if out is not None:
                acked = sum(r["acked"] for r in out[1])
                if delivered is not None and marks.get("delivered") is not None:
                    acked = min(acked, delivered - marks["delivered"])
    finally:
        daemon.stop()
        # py-spy writes its file when the profiled process has exited.
        deadline = time.monotonic() + 15
        while spy and not os.path.exists(raw) and time.monotonic() < deadline:
            time.sleep(0.1)
    result = {"tool": tool, "messages": acked, "daemon_cpu_s": cpu, "errors": errors,
              "cpu_s_per_million": cpu / acked * 1e6 if acked else None}
    if spy and os.path.exists(raw):
        result["samples"], result["top"] = top_functions(raw)
        result["file"] = os.path.basename(raw)
    elif not spy and os.path.exists(pstats_path):
        result["top"] = _cprofile_top(pstats_path)
        result["file"] = os.path.basename(pstats_path)
    else:
        result["unavailable"] = (f"{tool} produced no profile"
                                 + ("" if spy else " (the daemon has no KAFKAD_CPROFILE hook)")
                                 + f"; daemon log: {daemon.log_tail(5)}")
    return result


# --------------------------------------------------------------------------
# other engineers' component benchmarks


def run_external(ctx: BenchContext) -> dict:
    out = {}
    timeout = 120 if ctx.quick else 300
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, KAFKAD_BENCH_QUICK="1" if ctx.quick else "0",
               KAFKAD_BENCH_BOOTSTRAP=ctx.bootstrap, KAFKAD_BENCH_OUT=os.path.abspath(ctx.out_dir))
    for name in EXTERNAL:
        path = os.path.join(REPO_ROOT, "tests", "bench", f"{name}.py")
        if not os.path.exists(path):
            out[name] = {"status": "missing", "detail": f"tests/bench/{name}.py does not exist yet"}
            ctx.log(f"external: {name}: not present")
            continue
        ctx.log(f"external: {name}")
        t0 = time.monotonic()
        try:
            r = subprocess.run([sys.executable, "-m", f"tests.bench.{name}"], capture_output=True,
                               text=True, timeout=timeout, cwd=REPO_ROOT, env=env)
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            out[name] = {"status": "timeout", "seconds": timeout, "stdout": partial[-20000:],
                         "detail": f"no result within {timeout} s"}
            continue
        elapsed = time.monotonic() - t0
        entry = {"seconds": round(elapsed, 1), "stdout": r.stdout[-20000:]}
        if r.returncode == 0:
            entry["status"] = "ok"
        else:
            err = r.stderr.strip().splitlines()
            entry["status"] = "failed"
            entry["detail"] = f"exit status {r.returncode}: " + (err[-1] if err else "no error output")
            entry["stderr"] = "\n".join(err[-15:])
        out[name] = entry
    return out


# --------------------------------------------------------------------------
# the run


def _check_contenders(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, missing = [], {}
    for c in wanted:
        good, why = importable(_MODULES[c])
        if good:
            ok.append(c)
        else:
            missing[c] = f"cannot import {_MODULES[c]}: {why}"
    return ok, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-report", help="report folder (default: bench-report)")
    ap.add_argument("--quick", action="store_true", help="a short run: fewer configurations, shorter trials")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per measurement (default 3; medians are reported)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for s in sections:
        if s not in SECTIONS:
            ap.error(f"--sections: unknown section {s!r} (known: {', '.join(SECTIONS)})")
    for c in wanted:
        if c not in CONTENDERS:
            ap.error(f"--contenders: unknown contender {c!r} (known: {', '.join(CONTENDERS)})")
    if args.reps < 1:
        ap.error("--reps must be at least 1")

    log = Log()
    os.makedirs(args.out, exist_ok=True)
    results: dict = {"machine": machine_info(), "quick": args.quick, "reps": args.reps,
                     "sections": {}, "section_errors": {}, "section_seconds": {}}
    contenders, missing = _check_contenders(wanted)
    for c in CONTENDERS:
        if c not in wanted:
            missing[c] = "not selected (--contenders)"
    from tests.support.tansu import Tansu

    try:
        broker = Tansu().start()
    except Exception as exc:  # no broker, no benchmark: say why and stop
        print(f"bench: cannot start the local Tansu broker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    workdir = make_workdir()
    daemon = None
    try:
        if KAFKAD in contenders:
            daemon = KafkadDaemon(broker.bootstrap, workdir)
            try:
                daemon.start()
            except DaemonUnavailable as exc:
                missing[KAFKAD] = str(exc)
                contenders.remove(KAFKAD)
                daemon = None
        for c, why in missing.items():
            log(f"contender {c} will not run: {why}")
        results["contenders"] = contenders
        results["missing"] = missing
        ctx = BenchContext(out_dir=args.out, quick=args.quick, reps=args.reps,
                           bootstrap=broker.bootstrap, contenders=contenders, missing=missing,
                           daemon=daemon, workdir=workdir, log=log)
        for name in sections:
            t0 = time.monotonic()
            try:
                results["sections"][name] = _section(name)(ctx)
            except Exception as exc:  # one broken section must not cost the others
                results["section_errors"][name] = f"{type(exc).__name__}: {exc}"
                log(f"section {name} failed: {exc}")
                traceback.print_exc()
            results["section_seconds"][name] = round(time.monotonic() - t0, 1)
            _save(results, args.out)
        if daemon is not None:
            try:
                results["daemon_rss_kib"] = rss_kib(daemon.pid)
            except OSError:
                pass
            results["daemon_exit_status"] = daemon.stop()
            daemon = None
    finally:
        if daemon is not None:
            daemon.stop()
        broker.stop()
        remove_workdir(workdir)
    results["total_seconds"] = round(time.monotonic() - log.t0, 1)
    results["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _save(results, args.out)
    paths = report.write(results, args.out)
    log(f"done in {results['total_seconds']:.0f} s: {', '.join(paths)}")
    return 0


def _save(results: dict, out: str) -> None:
    tmp = os.path.join(out, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, os.path.join(out, "results.json"))


def standalone(*sections: str) -> None:
    """Entry point of a single benchmark module run on its own."""
    argv = sys.argv[1:]
    if not any(a.startswith("--sections") for a in argv):
        argv += ["--sections", ",".join(sections)]
    if not any(a.startswith("--out") for a in argv):
        argv += ["--out", f"bench-report/{'-'.join(sections)}"]
    sys.exit(main(argv))


if __name__ == "__main__":
    sys.exit(main())

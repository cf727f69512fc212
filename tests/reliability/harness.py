"""Shared moves of the reliability scenarios: worker processes, read-back, audit, figures.

Each scenario ends with `report(name, audit_report, daemon, **extra)`, which
prints one line of figures (missing / duplicated / disorder / peak RSS of the
daemon and anything scenario-specific) and, when the environment variable
KAFKAD_RELIABILITY_REPORT names a file, appends the same figures to it as a
JSON line (docs/reliability.md is written from that file).

Every worker `start_worker` starts is also recorded: tests/conftest.py calls
`cleanup()` after each test, which kills and reaps the workers still running
(a test that failed before its `w.wait()`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO

from tests.support.audit import AuditReport, audit, read_topic, read_topic_confluent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Worker:
    """One running `tests.reliability.worker` process and what it said."""

    worker: int
    proc: subprocess.Popen
    stderr_file: IO[bytes]
    lines: list[dict] = field(default_factory=list)
    result: dict | None = None
    results: list[dict] = field(default_factory=list)   # every "done" line (several with --fleet)

    def read_available(self) -> None:
        """Read stdout to EOF (call after the process ended or was killed)."""
        out = self.proc.stdout.read() if self.proc.stdout else ""
        for line in out.splitlines():
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            self.lines.append(obj)
            if "done" in obj:
                self.result = obj
                self.results.append(obj)

    def wait(self, timeout: float = 120.0) -> dict:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"worker {self.worker} still running after {timeout}s: "
                                 f"{self.stderr()[-2000:]}")
        self.read_available()
        if self.result is None:
            raise AssertionError(f"worker {self.worker} exited {self.proc.returncode} without a result: "
                                 f"{self.stderr()[-2000:]}")
        return self.result

    def acked(self) -> int:
        """Highest sequence a sync worker reported acknowledged (-1: none)."""
        return max((o["acked"] for o in self.lines if "acked" in o), default=-1)

    def stderr(self) -> str:
        """What the worker logged (a file, not a pipe: a chatty worker must never block on it)."""
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")


def start_worker(endpoint: str, topic: str, worker: int, count: int, **opts) -> Worker:
    """Start `python -m tests.reliability.worker` with `opts` as --options (underscores -> dashes)."""
    cmd = [sys.executable, "-m", "tests.reliability.worker", "--endpoint", endpoint, "--topic", topic,
           "--worker", str(worker), "--count", str(count)]
    for k, v in opts.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
    w = Worker(worker, proc, err)
    _started.append(w)
    return w


_started: list[Worker] = []   # workers started since the last cleanup()


def kill_workers(workers) -> None:
    """SIGKILL the workers still running and reap them (a test's `finally`)."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(5)


def cleanup() -> None:
    """Kill and reap every worker started since the last call, and close its pipe and log file."""
    workers = list(_started)
    _started.clear()
    kill_workers(workers)
    for w in workers:
        if w.proc.stdout is not None:
            w.proc.stdout.close()
        w.stderr_file.close()


def audit_topic(bootstrap: str, topic: str, expected: dict[int, range | list[int]],
                timeout: float = 60.0, reader: str = "kafka-python") -> AuditReport:
    """Read `topic` back from the broker and audit it against `expected` ({worker: seqs}).

    reader: "kafka-python" (kafka-python 3) or "confluent" (librdkafka; for
    the mock cluster, whose ApiVersions answer kafka-python rejects).
    """
    if reader == "confluent":
        got = read_topic_confluent(bootstrap, topic, timeout=timeout)
    elif reader == "kafka-python":
        total = sum(len(v) for v in expected.values())
        got = read_topic(bootstrap, topic, expected=total, timeout=timeout)
    else:
        raise ValueError(f"reader must be 'kafka-python' or 'confluent', not {reader!r}")
    return audit(got, expected)


def report(name: str, rep: AuditReport, daemon=None, **extra) -> dict:
    """Print the scenario's figures (and append them to $KAFKAD_RELIABILITY_REPORT)."""
    figures = {"scenario": name, "read": rep.read, "missing": rep.n_missing,
               "duplicated": rep.n_duplicated, "disorder": rep.n_disorder,
               "unexpected": rep.n_unexpected}
    if daemon is not None and daemon.running:
        figures["daemon_peak_rss_kb"] = daemon.peak_rss_kb()
    figures.update(extra)
    print("\nFIGURES " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    path = os.environ.get("KAFKAD_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")
    return figures


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns a true value; raise AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)

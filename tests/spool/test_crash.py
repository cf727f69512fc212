"""Crash at every step of the write / release / roll / checkpoint path, in a real child process.

The child (tests/spool/crash_child.py) reports what it acknowledged and what
it released; after it died the spool is reopened and must hold every
acknowledged, unreleased entry exactly once, unaltered, and none whose
release was committed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import kafkad.spool as spool_mod
from kafkad.spool import CRASH_EXIT_CODE, CRASH_STEPS
from tests.spool.helpers import config, number

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# step -> (which time it is reached to crash, release_log_bytes)
PLAN = {
    "init-after-format-tmp": (1, 1 << 20),
    "during-segment-roll": (3, 1 << 20),
    "mid-write": (7, 1 << 20),
    "after-write-before-fsync": (7, 1 << 20),
    "after-fsync-before-ack": (5, 1 << 20),
    "after-release-write-before-fsync": (4, 1 << 20),
    "after-release-fsync-before-delete": (2, 1 << 20),
    "after-checkpoint-tmp-before-rename": (2, 200),
    "after-checkpoint-rename-before-cleanup": (2, 200),
}


def test_every_step_is_planned():
    assert set(PLAN) == set(CRASH_STEPS)


class Child:
    """One crash_child process, used as `with Child(...) as c:`.

    Threads read its stdout and stderr as they come, so no read blocks the
    test and a chatty child never blocks on a full pipe; leaving the block,
    however (a failed assertion, a timeout), kills the child if it still
    runs and reaps it.
    """

    def __init__(self, path, policy, *, env_extra=None, rounds=60, release_log_bytes=1 << 20):
        env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.spool.crash_child", str(path), policy, "1024",
             str(release_log_bytes), str(rounds)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._eof = False            # stdout closed: the child ended
        self._readers = [threading.Thread(target=self._read, args=(f, into), daemon=True)
                         for f, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    def _read(self, stream, into):
        for line in stream:
            with self._cond:
                into.append(line)
                self._cond.notify_all()
        if into is self.lines:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def wait_lines(self, n, timeout=60.0):
        """Block until the child printed n lines; fails if it ends or stalls first."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.lines) >= n or self._eof, timeout)
            if len(self.lines) >= n:
                return
        self.kill()
        raise AssertionError(f"the child printed {len(self.lines)} of {n} lines "
                             f"(exit {self.proc.returncode}): {''.join(self.err)[-2000:]}")

    def finish(self, timeout=60.0):
        """Wait for the child to exit by itself: (exit status, stdout lines, stderr)."""
        self.proc.wait(timeout)
        self._join()
        return self.proc.returncode, self.lines, "".join(self.err)

    def kill(self):
        """SIGKILL (if still running), reap, and collect every line it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._join()

    def _join(self):
        for t in self._readers:
            t.join(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()


class Ledger:
    """What the children promised: acknowledged ids and committed releases."""

    def __init__(self):
        self.acked = 0
        self.released: set[int] = set()
        self.releasing: set[int] = set()

    def read(self, lines):
        for line in lines:
            word, *nums = line.split()
            if word == "ACK":
                self.acked = max(self.acked, int(nums[0]))
            elif word == "REL":
                self.releasing.update(range(int(nums[0]), int(nums[1]) + 1))
            elif word == "RELD":
                self.released.update(range(int(nums[0]), int(nums[1]) + 1))

    def check(self, path, policy):
        """Reopen and hold the spool to the ledger; returns the pending ids."""
        with spool_mod.open(config(path, fsync=policy, segment_bytes=1024, max_bytes=64 << 20)) as sp:
            got = []
            for entry_id, e in sp.pending():
                assert number(e) == entry_id, "an entry came back under another id"
                got.append(entry_id)
            stats = sp.stats(time.time())
        assert got == sorted(set(got)), "an entry was replayed twice"
        missing = [i for i in range(1, self.acked + 1)
                   if i not in self.releasing and i not in got]
        assert not missing, f"acknowledged entries lost: {missing[:10]}"
        resent = [i for i in got if i in self.released]
        assert not resent, f"entries whose release was committed came back: {resent[:10]}"
        assert stats["damaged_entries"] == 0, stats
        return got


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
@pytest.mark.parametrize("step", list(PLAN))
def test_crash_at_step_loses_nothing_acknowledged(tmp_path, step, policy):
    after, release_log_bytes = PLAN[step]
    path = tmp_path / "sp"
    with Child(path, policy, release_log_bytes=release_log_bytes,
               env_extra={"KAFKAD_SPOOL_CRASH_AT": step, "KAFKAD_SPOOL_CRASH_AFTER": str(after)}) as c:
        status, out, err = c.finish()
    assert status == CRASH_EXIT_CODE, f"the child did not crash at {step}: {err[-2000:]}"
    ledger = Ledger()
    ledger.read(out)
    if step != "init-after-format-tmp":
        assert ledger.acked > 0
    pending = ledger.check(path, policy)
    # the spool goes on working after the crash: more entries, another restart
    with Child(path, policy, rounds=5) as c:
        status, out, err = c.finish()
    assert status == 0, err[-2000:]
    ledger.read(out)
    assert set(pending) <= ledger.released          # the restart delivered the replay
    ledger.check(path, policy)


@pytest.mark.parametrize("policy", ["always", "never"])
def test_kill_9_at_random_moments_many_times(tmp_path, policy):
    rnd = random.Random(f"kill-9-{policy}")
    path = tmp_path / "sp"
    ledger = Ledger()
    for _ in range(6):
        with Child(path, policy, rounds=100_000) as c:
            c.wait_lines(rnd.randint(1, 120))
            c.kill()
            assert c.proc.returncode == -signal.SIGKILL, "".join(c.err)[-2000:]
        ledger.read(c.lines)     # every line, also those printed between the wait and the kill
        ledger.check(path, policy)
    assert ledger.acked > 0

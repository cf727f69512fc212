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


def _child(path, policy, *, env_extra=None, rounds=60, release_log_bytes=1 << 20):
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.spool.crash_child", str(path), policy, "1024",
         str(release_log_bytes), str(rounds)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    proc = _child(path, policy, release_log_bytes=release_log_bytes,
                  env_extra={"KAFKAD_SPOOL_CRASH_AT": step, "KAFKAD_SPOOL_CRASH_AFTER": str(after)})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == CRASH_EXIT_CODE, f"the child did not crash at {step}: {err[-2000:]}"
    ledger = Ledger()
    ledger.read(out.splitlines())
    if step != "init-after-format-tmp":
        assert ledger.acked > 0
    pending = ledger.check(path, policy)
    # the spool goes on working after the crash: more entries, another restart
    proc = _child(path, policy, rounds=5)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    ledger.read(out.splitlines())
    assert set(pending) <= ledger.released          # the restart delivered the replay
    ledger.check(path, policy)


@pytest.mark.parametrize("policy", ["always", "never"])
def test_kill_9_at_random_moments_many_times(tmp_path, policy):
    rnd = random.Random(f"kill-9-{policy}")
    path = tmp_path / "sp"
    ledger = Ledger()
    for _ in range(6):
        proc = _child(path, policy, rounds=100_000)
        lines = []
        want = rnd.randint(1, 120)
        while len(lines) < want:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-2000:]
            lines.append(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # the rest through the same buffered reader: communicate() would skip what it holds
        rest = proc.stdout.read()
        proc.stdout.close()
        proc.stderr.close()
        ledger.read(lines + rest.splitlines())
        ledger.check(path, policy)
    assert ledger.acked > 0

"""Crash injection for tests: die abruptly at a named step of the write path.

`KAFKAD_SPOOL_CRASH_AT=<step>` makes the process call `os._exit(99)` the
`KAFKAD_SPOOL_CRASH_AFTER`-th time (default 1) it reaches that step. Nothing
is flushed, no finaliser runs: to the files it looks like `kill -9`. Tests
run a child process with these set; nobody sets them in production, and
unset they cost one attribute check per step.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 99

# Every step the spool announces, in the order the write path reaches them.
STEPS = (
    "init-after-format-tmp",                # FORMAT.tmp written, not yet renamed
    "during-segment-roll",                  # new segment file created, nothing in it yet
    "mid-write",                            # half of a buffered write reached the file
    "after-write-before-fsync",             # entries written, not yet fsynced
    "after-fsync-before-ack",               # fsynced, durable id not yet handed out
    "after-release-write-before-fsync",     # release records written, not yet fsynced
    "after-release-fsync-before-delete",    # releases durable, released segment still there
    "after-checkpoint-tmp-before-rename",   # checkpoint.tmp complete and fsynced
    "after-checkpoint-rename-before-cleanup",  # checkpoint in place, old release log still there
)


class CrashPoints:
    """Reads the environment once; `reached(step)` dies when the step is armed."""

    __slots__ = ("_step", "_left")

    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        step = env.get("KAFKAD_SPOOL_CRASH_AT", "")
        if step and step not in STEPS:
            raise ValueError(f"KAFKAD_SPOOL_CRASH_AT={step!r} is not a spool step; "
                             f"known: {', '.join(STEPS)}")
        self._step = step or None
        self._left = int(env.get("KAFKAD_SPOOL_CRASH_AFTER", "1"))

    @property
    def armed(self) -> str | None:
        return self._step

    def reached(self, step: str) -> None:
        if step == self._step:
            self._left -= 1
            if self._left <= 0:
                os._exit(CRASH_EXIT_CODE)

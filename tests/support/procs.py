"""Child processes a test starts end with the test, whatever happens in it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Iterator, Sequence


@contextlib.contextmanager
def reaped(procs: Sequence[subprocess.Popen], *, group: bool = False) -> Iterator[Sequence[subprocess.Popen]]:
    """Leave the block with every process in `procs` gone and reaped.

    Those still running (a failed assertion, a timeout) are SIGKILLed. With
    `group`, the processes were started with start_new_session=True and their
    whole process group is killed, which takes the children they forked too.
    """
    try:
        yield procs
    finally:
        for p in procs:
            if group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            elif p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(10)
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()

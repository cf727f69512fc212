"""A writer process for the crash tests: appends, commits, acknowledges, releases, and may be killed.

    python -m tests.spool.crash_child DIR POLICY SEGMENT_BYTES RELEASE_LOG_BYTES ROUNDS

Entry n carries n in its values and gets id n (the child numbers from the
spool's next id), so the parent can check content by id. It prints, flushed:
``ACK d`` after a commit returned durable id d (what the daemon would
acknowledge to the shim), ``REL lo hi`` before releasing ids lo..hi (they
may be gone after a crash from then on), ``RELD lo hi`` once that release was
committed (what a restart must not replay). On start it first "delivers"
every pending entry (releases it), as a restarted daemon does.
KAFKAD_SPOOL_CRASH_AT in the environment kills it at a step.
"""

from __future__ import annotations

import sys

from kafkad.config import SpoolConfig
from kafkad.spool import Spool
from tests.spool.helpers import entry, number


def main(path: str, policy: str, segment_bytes: int, release_log_bytes: int, rounds: int) -> None:
    cfg = SpoolConfig(enabled=True, path=path, fsync=policy, fsync_interval_ms=1,
                      segment_bytes=segment_bytes, max_bytes=64 << 20)
    sp = Spool.open(cfg, release_log_bytes=release_log_bytes)

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    for entry_id, e in sp.pending():
        assert number(e) == entry_id
        say(f"REL {entry_id} {entry_id}")
        sp.release([entry_id])
        sp.commit()
        say(f"RELD {entry_id} {entry_id}")
    n = sp.next_id - 1
    released_upto = n
    for _ in range(rounds):
        for _ in range(3):
            n += 1
            assert sp.append(entry(n)) == n
        say(f"ACK {sp.commit()}")
        target = sp.durable_id - 6
        if target > released_upto:
            say(f"REL {released_upto + 1} {target}")
            sp.release(range(released_upto + 1, target + 1))
            sp.commit()
            say(f"RELD {released_upto + 1} {target}")
            released_upto = target
    sp.close()
    say("DONE")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))

"""The durable spool: accepted submissions kept on local disk until the broker acknowledged them.

The interface the IPC server and the daemon use (docs/spool.md, "How to wire it")::

    spool = kafkad.spool.open(cfg.spool)          # blocking recovery; before serving
    entry_id = spool.append(SpoolEntry(...))      # quick; SpoolFull / SpoolUnavailable
    durable = spool.commit()                      # group commit; ack ids <= durable
    job = spool.prepare_sync(); await loop.run_in_executor(None, job.run); spool.finish_sync(job)
    spool.release(ids)                            # broker acknowledged
    for entry_id, entry in spool.pending(): ...   # replay, streamed from disk
    spool.recovered_sessions(); spool.stats(time.time()); spool.close()
"""

from __future__ import annotations

from kafkad.config import SpoolConfig

from .crash import CRASH_EXIT_CODE, STEPS as CRASH_STEPS
from .errors import SpoolError, SpoolFormatError, SpoolFull, SpoolLockedError, SpoolUnavailable
from .frame import SpoolEntry
from .spool import FORMAT_VERSION, ReplayCursor, Spool, State, SyncJob

__all__ = [
    "CRASH_EXIT_CODE", "CRASH_STEPS", "FORMAT_VERSION", "ReplayCursor", "Spool", "SpoolEntry",
    "SpoolError", "SpoolFormatError", "SpoolFull", "SpoolLockedError", "SpoolUnavailable",
    "State", "SyncJob", "open",
]


def open(cfg: SpoolConfig, **kwargs) -> Spool:  # noqa: A001 - the module's verb, as in kafkad.spool.open
    """Open and recover the spool described by `cfg` (see `Spool.open`)."""
    return Spool.open(cfg, **kwargs)

"""The spool's exceptions, grouped by how the caller reacts.

- `SpoolFormatError`: refuse to start; a person has to look at the directory.
- `SpoolFull`: this entry was not taken; block the sender or reject it
  (`[spool] when_full`), and try again after space was freed.
- `SpoolUnavailable`: an I/O error made the spool unusable; new messages get
  "spool unavailable"; what was already acknowledged as durable stays so.
"""

from __future__ import annotations


class SpoolError(Exception):
    """Base class of every error the spool raises on purpose."""


class SpoolFormatError(SpoolError):
    """The directory is not a spool this version can read; nothing was changed."""


class SpoolLockedError(SpoolError):
    """Another process holds the spool directory."""


class SpoolFull(SpoolError):
    """An entry was refused: taking it would exceed `max_bytes`, or the disk is full.

    `needed` is the entry's size on disk, `free` what the limit still allows,
    `reason` is "max_bytes" or "disk full", `when_full` the configured policy.
    """

    def __init__(self, message: str, *, needed: int, free: int, reason: str, when_full: str):
        super().__init__(message)
        self.needed = needed
        self.free = free
        self.reason = reason
        self.when_full = when_full


class SpoolUnavailable(SpoolError):
    """A write or fsync failed with an I/O error; the spool takes nothing more.

    `errno` and `filename` come from the OSError; `op` names the step
    ("write", "fsync", "create segment", ...). After a failed fsync nothing
    written since the last good fsync is treated as durable.
    """

    def __init__(self, message: str, *, op: str, errno: int | None, filename: str | None):
        super().__init__(message)
        self.op = op
        self.errno = errno
        self.filename = filename

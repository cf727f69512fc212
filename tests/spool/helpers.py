"""Shared helpers of the spool tests: configs in temp dirs and entries that identify themselves."""

from __future__ import annotations

import os

from kafkad.config import SpoolConfig
from kafkad.spool import SpoolEntry


def config(path, **overrides) -> SpoolConfig:
    base = dict(enabled=True, path=str(path), fsync="always", fsync_interval_ms=100,
                segment_bytes=4096, max_bytes=1 << 20, when_full="reject")
    base.update(overrides)
    return SpoolConfig(**base)


def entry(n: int, *, session: bytes = b"sess-A", size: int = 100, count: int = 1,
          partition: int | None = None) -> SpoolEntry:
    """The n-th submission of a session: its values carry n, so a read-back entry names itself."""
    values = [(b"%d:%d:" % (n, i)).ljust(size, b"v") for i in range(count)]
    return SpoolEntry(session_id=session, seq_first=n * count, seq_last=n * count + count - 1,
                      topic="orders", partition=n % 3 if partition is None else partition,
                      keys=[b"k%d" % n] * count, values=values, timestamp_ms=1_700_000_000_000 + n,
                      settings={"acks": 1, "codec": 0, "async_send": True})


def number(e: SpoolEntry) -> int:
    """The n given to `entry` for an entry read back (checks its content on the way)."""
    n = int(e.values[0].split(b":")[0])
    assert e == entry(n, session=e.session_id, size=len(e.values[0]), count=len(e.values),
                      partition=e.partition), f"entry {n} came back altered"
    return n


def segment_files(path) -> list[str]:
    return sorted(f for f in os.listdir(path) if f.endswith(".seg"))


def snapshot(path) -> dict:
    """Every file's name, bytes and mtime: to show a directory was not touched."""
    out = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        with open(full, "rb") as f:
            out[name] = (f.read(), os.stat(full).st_mtime_ns)
    return out

"""The durable spool: an append-only, segmented log of accepted submissions.

Part of the daemon's I/O shell. One `Spool` is owned by the daemon's asyncio
loop; its methods are quick and never wait for the disk, with two explicit
exceptions: `Spool.open` (recovery reads the whole spool once; call it before
the loop serves, or in an executor) and the fsync step, which is a `SyncJob`
the caller may run in an executor thread (see `prepare_sync`).

Directory layout (`[spool] path`)::

    FORMAT                        "kafkad-spool 1": refuse anything else
    LOCK                          flock()ed by the one process using the spool
    00000000000000000001.seg      segments, named by their first entry id
    acks-0000000001.log           release records (ranges of delivered ids)
    checkpoint                    all releases up to a release-log generation

Ids are assigned 1, 2, 3, ... in `append` order and never reused (the next id
after a restart is above every id seen on disk or in the release records).
docs/spool.md describes the format, the fsync policies and their loss windows,
damage handling and how the IPC server and the daemon wire it in.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import fcntl
import logging
import mmap
import os
import re
import struct
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Iterator

import msgpack

from kafkad.config import SpoolConfig

from .crash import CrashPoints
from .errors import SpoolError, SpoolFormatError, SpoolFull, SpoolLockedError, SpoolUnavailable
from .frame import (HEADER_BYTES, MAGIC, BadRegion, Frame, SpoolEntry, check_entry, decode_entry,
                    encode_entry, encode_frame, frame_at, pack_settings, scan)
from .ranges import RangeSet

log = logging.getLogger("kafkad.spool")

FORMAT_VERSION = 1
FORMAT_TEXT = f"kafkad-spool {FORMAT_VERSION}\n"
FSYNC_POLICIES = ("always", "interval", "never")
WHEN_FULL_POLICIES = ("block", "reject")

_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")
_ACKLOG_RE = re.compile(r"^acks-(\d{10})\.log$")
_CHECKPOINT = "checkpoint"
_CHECKPOINT_TMP = "checkpoint.tmp"
_TIME_INDEX_CAP = 4096      # points kept for the oldest-pending-age estimate
# A release log this big is folded into the checkpoint (and a new log started).
RELEASE_LOG_BYTES = 1 << 20


def _segment_name(first_id: int) -> str:
    return f"{first_id:020d}.seg"


def _acklog_name(gen: int) -> str:
    return f"acks-{gen:010d}.log"


class State(enum.Enum):
    OPEN = "open"              # taking entries
    DISK_FULL = "disk full"    # a write hit ENOSPC; unwritten entries stay buffered and are retried
    FAILED = "failed"          # an I/O error (or a failed fsync): takes nothing more
    CLOSED = "closed"


# Which state may follow which; anything else is a bug in this module.
_TRANSITIONS = {
    State.OPEN: {State.DISK_FULL, State.FAILED, State.CLOSED},
    State.DISK_FULL: {State.OPEN, State.FAILED, State.CLOSED},
    State.FAILED: {State.CLOSED},
    State.CLOSED: set(),
}


class _Segment:
    """One segment file: what is on disk, what is still buffered, what is pending."""

    __slots__ = ("first_id", "path", "size", "written", "buf", "buf_last_id", "last_id",
                 "unreleased", "fd", "recovered", "doomed")

    def __init__(self, first_id: int, path: str, *, recovered: bool = False, size: int = 0):
        self.first_id = first_id
        self.path = path
        self.size = size          # bytes on disk + buffered
        self.written = size       # bytes known to be in the file
        self.buf = bytearray()    # frames appended, not yet written
        self.buf_last_id = 0      # highest id in buf
        self.last_id = first_id - 1
        self.unreleased = 0
        self.fd: int | None = None
        self.recovered = recovered
        self.doomed = False       # scheduled for deletion by a sync job

    def __repr__(self) -> str:
        return (f"<segment {self.first_id}..{self.last_id} {self.size}B "
                f"unreleased={self.unreleased}{' doomed' if self.doomed else ''}>")


@dataclass
class SyncJob:
    """The blocking part of a group commit, safe to run in an executor thread.

    It holds its own duplicated file descriptors and pre-encoded bytes and
    touches no `Spool` state, so the loop may keep appending while it runs.
    `run()` never raises: an OSError is kept in `error` (with the step in
    `error_op`) for `Spool.finish_sync`.
    """

    sync_fds: list[int] = field(default_factory=list)
    dir_path: str = ""
    sync_dir: bool = False
    data_upto: int = 0                   # ids <= this are durable once the job succeeded
    ack_writes: int = 0                  # release records covered by the fsync
    checkpoint: bytes | None = None      # encoded checkpoint to install
    stale_acklogs: list[str] = field(default_factory=list)
    unlink: list[str] = field(default_factory=list)
    crash: CrashPoints | None = None
    error: OSError | None = None
    error_op: str = ""
    done: bool = False

    def run(self) -> None:
        op = "fsync"
        try:
            for fd in self.sync_fds:
                os.fsync(fd)
            if self.sync_dir:
                op = "fsync directory"
                _fsync_dir(self.dir_path)
            if self.crash and self.sync_fds and self.unlink:
                self.crash.reached("after-release-fsync-before-delete")
            if self.checkpoint is not None:
                op = "write checkpoint"
                _install_checkpoint(self.dir_path, self.checkpoint, self.crash)
                op = "remove old release log"
                for path in self.stale_acklogs:
                    _unlink_quiet(path)
            op = "delete segment"
            for path in self.unlink:
                _unlink_quiet(path)
        except OSError as exc:
            self.error, self.error_op = exc, op
        finally:
            for fd in self.sync_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.done = True


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _install_checkpoint(dir_path: str, data: bytes, crash: CrashPoints | None) -> None:
    """Write the checkpoint atomically: tmp file, fsync, rename, fsync the directory."""
    tmp = os.path.join(dir_path, _CHECKPOINT_TMP)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if crash:
        crash.reached("after-checkpoint-tmp-before-rename")
    os.replace(tmp, os.path.join(dir_path, _CHECKPOINT))
    _fsync_dir(dir_path)
    if crash:
        crash.reached("after-checkpoint-rename-before-cleanup")


def _whole_frame_id(buf, start: int, end: int) -> int | None:
    """The id in the header at `start` if that header's length spans exactly to `end`."""
    if end - start < HEADER_BYTES or buf[start:start + 2] != MAGIC:
        return None
    length, frame_id = struct.unpack_from("<IQ", buf, start + 6)
    return frame_id if start + HEADER_BYTES + length == end else None


def _check_config(cfg: SpoolConfig) -> None:
    if cfg.fsync not in FSYNC_POLICIES:
        raise ValueError(f"[spool] fsync must be one of {', '.join(FSYNC_POLICIES)}, not {cfg.fsync!r}")
    if cfg.when_full not in WHEN_FULL_POLICIES:
        raise ValueError(f"[spool] when_full must be one of {', '.join(WHEN_FULL_POLICIES)}, "
                         f"not {cfg.when_full!r}")
    for name in ("fsync_interval_ms", "segment_bytes", "max_bytes"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"[spool] {name} must be positive, not {getattr(cfg, name)!r}")
    if not cfg.path:
        raise ValueError("[spool] path must not be empty")


class Spool:
    """The spool of one daemon. Build it with `Spool.open(cfg)` (or `kafkad.spool.open`)."""

    # ---------------------------------------------------------------- opening

    def __init__(self, cfg: SpoolConfig, *, clock: Callable[[], float] = time.monotonic,
                 environ: dict | None = None, release_log_bytes: int = RELEASE_LOG_BYTES):
        """Internal: use `Spool.open`, which also recovers what is on disk."""
        _check_config(cfg)
        if release_log_bytes <= 0:
            raise ValueError(f"release_log_bytes must be positive, not {release_log_bytes!r}")
        self._release_log_bytes = release_log_bytes
        self.cfg = cfg
        self.path = os.path.abspath(cfg.path)
        self._clock = clock
        self._crash = CrashPoints(environ)
        self._state = State.OPEN
        self._error: SpoolError | None = None
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []
        self._seg_firsts: list[int] = []
        self._released = RangeSet()
        self._release_buf = RangeSet()      # released, not yet written to the release log
        self._next_id = 1
        self._boundary = 1                  # ids below were recovered from disk at open
        self._written_id = 0
        self._synced_id = 0
        self._handed_out = 0                # highest durable id a commit has returned
        self._data_bytes = 0
        self._blocked_need = 0
        self._dir_dirty = False
        self._last_sync = clock()
        self._sessions: dict[bytes, int] = {}
        # Encoded settings maps by the id of the caller's dict, with a copy to compare:
        # a session's map is encoded once, not for every submission.
        self._settings_cache: dict[int, tuple[dict, bytes]] = {}
        self._packer = msgpack.Packer(use_bin_type=True)
        self._time_index: list[tuple[int, int]] = []
        self._job: SyncJob | None = None
        # release log
        self._ack_gen = 1
        self._ack_fd: int | None = None
        self._ack_written = 0
        self._ack_record = 0
        self._ack_synced = True
        self._ack_writes = 0                # release records written (for sync bookkeeping)
        self._checkpoint_bytes = 0
        # counters
        self.replayed = 0
        self._damage = {"corrupt_regions": 0, "torn_tails": 0, "missing_segments": 0,
                        "damaged_entries": 0, "bad_checkpoint": 0, "bad_release_records": 0}
        self._counters = {"fsyncs": 0, "write_errors": 0, "full_rejections": 0,
                          "checkpoints": 0, "segments_deleted": 0}

    @classmethod
    def open(cls, cfg: SpoolConfig, *, clock: Callable[[], float] = time.monotonic,
             environ: dict | None = None, release_log_bytes: int = RELEASE_LOG_BYTES) -> "Spool":
        """Open (creating if needed) and recover the spool at `cfg.path`.

        Blocking: it reads every segment once. Raises SpoolFormatError, leaving
        the directory untouched, when it holds a spool of an unknown format
        version or something that is not a spool; SpoolLockedError when
        another process uses it. `clock` (monotonic seconds) drives the
        interval policy; `environ` replaces os.environ for the crash hooks;
        `release_log_bytes` is when the release log is folded into the checkpoint.
        """
        spool = cls(cfg, clock=clock, environ=environ, release_log_bytes=release_log_bytes)
        try:
            spool._check_format()
            if spool._lock_fd is None:
                spool._lock()
            spool._recover()
        except OSError as exc:
            spool._close_fds()
            raise SpoolUnavailable(
                f"spool {spool.path}: cannot open: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}",
                op="open", errno=exc.errno, filename=exc.filename) from exc
        except BaseException:
            spool._close_fds()
            raise
        return spool

    def _check_format(self) -> None:
        path = self.path
        if not os.path.isdir(path):
            if os.path.exists(path):
                raise SpoolFormatError(f"spool path {path} exists and is not a directory")
            os.makedirs(path, mode=0o700, exist_ok=True)
        fmt = os.path.join(path, "FORMAT")
        try:
            with open(fmt, "rb") as f:
                found = f.read(256)
        except FileNotFoundError:
            leftovers = set(os.listdir(path)) - {"FORMAT.tmp", "LOCK", "lost+found"}
            if leftovers:
                raise SpoolFormatError(
                    f"spool directory {path} has no FORMAT file but is not empty "
                    f"({', '.join(sorted(leftovers)[:5])}...): not a kafkad spool, or a damaged "
                    "one; refusing to touch it") from None
            self._lock()      # before writing anything: two starts must not both initialise
            if os.path.exists(fmt):
                self._check_format()    # the other one did; read what it wrote
                return
            tmp = fmt + ".tmp"
            with open(tmp, "wb") as f:
                f.write(FORMAT_TEXT.encode())
                f.flush()
                os.fsync(f.fileno())
            self._crash.reached("init-after-format-tmp")
            os.replace(tmp, fmt)
            _fsync_dir(path)
            return
        if found != FORMAT_TEXT.encode():
            shown = found.decode("utf-8", "replace").strip()[:60]
            raise SpoolFormatError(
                f"spool {path} has format {shown!r}; this kafkad reads only "
                f"{FORMAT_TEXT.strip()!r}. Nothing was changed: deliver or move the spool "
                "with the kafkad version that wrote it, then start again")

    def _lock(self) -> None:
        fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLockedError(f"spool {self.path} is in use by another process") from None
        self._lock_fd = fd

    # ---------------------------------------------------------------- recovery

    def _recover(self) -> None:
        names = os.listdir(self.path)
        _unlink_quiet(os.path.join(self.path, _CHECKPOINT_TMP))
        cp_next = self._read_checkpoint()
        self._read_release_logs(names)
        seg_ids = sorted(int(m.group(1)) for n in names if (m := _SEGMENT_RE.match(n)))
        seg_ids = [s for s in seg_ids if s > 0]
        prev_last = 0          # highest valid id seen so far
        # Why ids between prev_last and the next valid frame are absent. Below the first
        # segment, without a readable checkpoint, they are most likely delivered and deleted.
        gap_cause = "unknown" if self._damage["bad_checkpoint"] else "missing"
        for k, first in enumerate(seg_ids):
            is_last = k == len(seg_ids) - 1
            upper = seg_ids[k + 1] if not is_last else None
            path = os.path.join(self.path, _segment_name(first))
            if first <= prev_last:
                log.error("spool segment %s overlaps the previous one; skipping it", path)
                self._damage["corrupt_regions"] += 1
                continue
            self._resolve_gap(prev_last + 1, first, gap_cause)
            prev_last = max(prev_last, first - 1)
            seg, prev_last, ended_bad = self._scan_segment(path, first, upper, is_last, prev_last)
            gap_cause = "corrupt" if ended_bad else "missing"
            if seg is not None:
                self._segments.append(seg)
        torn_tail = bool(seg_ids) and gap_cause == "corrupt"
        end = max(cp_next, prev_last + 1)
        self._resolve_gap(prev_last + 1, end, "torn" if torn_tail else "missing")
        released_top = max((hi for _, hi in self._released.ranges()), default=1)
        self._next_id = max(end, released_top, 1)
        self._boundary = self._next_id
        self._written_id = self._synced_id = self._handed_out = self._next_id - 1
        self._seg_firsts = [s.first_id for s in self._segments]
        self._data_bytes = sum(s.size for s in self._segments)
        self._ack_synced = True
        if len(self._release_buf):
            # Written-off ids: record them (durably) before any segment is deleted,
            # so the damage is counted once, not again at every start.
            self._write_releases()
            self._sync_release_log()
        if self._damage["bad_checkpoint"]:
            # Replace the unreadable checkpoint by one of what is known now, so the next
            # start neither counts it again nor guesses about the ids below the first segment.
            doc = {"v": 1, "gen": self._ack_gen, "next": self._next_id,
                   "released": self._released.flat()}
            data = encode_frame(self._ack_gen, msgpack.packb(doc))
            _install_checkpoint(self.path, data, None)
            self._checkpoint_bytes = len(data)
        for seg in list(self._segments):
            if seg.unreleased == 0:
                self._drop_segment(seg)
                _unlink_quiet(seg.path)
                self._counters["segments_deleted"] += 1
        d = self._damage
        if any(d.values()):
            log.warning("spool %s recovered with damage: %s", self.path,
                        ", ".join(f"{k}={v}" for k, v in d.items() if v))
        log.info("spool %s: %d entries pending in %d segments, next id %d", self.path,
                 self.entries_pending, len(self._segments), self._next_id)

    def _read_checkpoint(self) -> int:
        path = os.path.join(self.path, _CHECKPOINT)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return 1
        self._checkpoint_bytes = len(data)
        frame = frame_at(data, 0, len(data))
        try:
            if frame is None or frame.end != len(data):
                raise ValueError("checksum or length mismatch")
            doc = msgpack.unpackb(frame.payload, raw=False)
            released = RangeSet.from_flat(doc["released"])
            gen, nxt = int(doc["gen"]), int(doc["next"])
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            self._damage["bad_checkpoint"] += 1
            log.error("spool checkpoint %s is damaged (%s); delivered entries it covered "
                      "may be sent again", path, exc)
            return 1
        self._released = released
        self._ack_gen = gen
        return nxt

    def _read_release_logs(self, names: list[str]) -> None:
        gens = sorted(int(m.group(1)) for n in names if (m := _ACKLOG_RE.match(n)))
        for gen in gens:
            path = os.path.join(self.path, _acklog_name(gen))
            if gen < self._ack_gen:      # superseded by the checkpoint
                _unlink_quiet(path)
                continue
            size = os.path.getsize(path)
            good_end = 0
            last_record = 0
            if size:
                with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    for item in scan(mm):
                        if isinstance(item, BadRegion):
                            self._damage["bad_release_records"] += 1
                            continue
                        try:
                            ranges = RangeSet.from_flat(msgpack.unpackb(item.payload))
                        except (ValueError, TypeError, msgpack.UnpackException):
                            self._damage["bad_release_records"] += 1
                            continue
                        for lo, hi in ranges.ranges():
                            self._released.add_range(lo, hi)
                        good_end, last_record = item.end, item.frame_id
            if gen == gens[-1]:
                if good_end < size:   # torn or damaged tail of the log being appended to
                    with open(path, "r+b") as f:
                        f.truncate(good_end)
                        os.fsync(f.fileno())
                self._ack_gen = gen
                self._ack_written = good_end
                self._ack_record = last_record
                self._ack_fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def _scan_segment(self, path: str, first: int, upper: int | None, is_last: bool,
                      prev_last: int) -> tuple[_Segment | None, int, bool]:
        """Read one segment; returns it (None if empty), the last valid id, and whether it ended bad."""
        size = os.path.getsize(path)
        if size == 0:
            _unlink_quiet(path)     # created by a roll that crashed before writing
            return None, prev_last, False
        seg = _Segment(first, path, recovered=True, size=size)
        ended_bad = False
        tail_counted = False
        good_end = 0
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for item in scan(mm):
                if isinstance(item, Frame):
                    entry = None
                    if item.frame_id > prev_last and (upper is None or item.frame_id < upper):
                        try:
                            entry = decode_entry(item.payload)
                        except ValueError:
                            entry = None
                    if entry is None:
                        ended_bad = True
                        self._damage["corrupt_regions"] += 1
                        continue
                    self._resolve_gap(prev_last + 1, item.frame_id, "corrupt")
                    prev_last = seg.last_id = item.frame_id
                    good_end = item.end
                    ended_bad = False
                    sid = entry.session_id
                    if self._sessions.get(sid, -1) < entry.seq_last:
                        self._sessions[sid] = entry.seq_last
                    if item.frame_id not in self._released:
                        seg.unreleased += 1
                        self._index_time(item.frame_id, entry.timestamp_ms)
                else:
                    ended_bad = True
                    if not (is_last and item.end == size):
                        self._damage["corrupt_regions"] += 1
                    elif _whole_frame_id(mm, item.start, size) == prev_last + 1:
                        # A complete record with a bad checksum, not a torn write: a flipped bit.
                        self._damage["corrupt_regions"] += 1
                        self._resolve_gap(prev_last + 1, prev_last + 2, "corrupt")
                        prev_last += 1
                        tail_counted = True
        if is_last and good_end < size:
            # A torn write (or damage) at the very end of the newest segment: cut it off.
            log.warning("spool segment %s: cutting %d bytes at offset %d (%s)", path,
                        size - good_end, good_end,
                        "a corrupt last record" if tail_counted else "a torn tail")
            if not tail_counted:
                self._damage["torn_tails"] += 1
            with open(path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
            seg.size = seg.written = good_end
        if seg.size == 0:
            _unlink_quiet(path)
            return None, prev_last, ended_bad
        return seg, prev_last, ended_bad

    def _resolve_gap(self, lo: int, hi: int, cause: str) -> None:
        """Ids [lo, hi) are not on disk: fine if released, else count them as damage and write them off."""
        if lo >= hi:
            return
        lost = (hi - lo) - self._released.count_in(lo, hi)
        if not lost:
            return
        if cause == "unknown":
            log.warning("spool %s: ids %d..%d are not on disk and the damaged checkpoint cannot "
                        "say whether they were delivered; taking them as delivered", self.path,
                        lo, hi - 1)
            self._released.add_range(lo, hi)
            self._release_buf.add_range(lo, hi)
            return
        self._damage["damaged_entries"] += lost
        if cause == "missing":
            self._damage["missing_segments"] += 1
        what = {"missing": "a missing segment", "corrupt": "corrupt records",
                "torn": "a torn tail"}[cause]
        log.error("spool %s: %d undelivered entries (ids %d..%d) lost to %s", self.path,
                  lost, lo, hi - 1, what)
        for a, b in list(self._released.missing_in(lo, hi)):
            self._released.add_range(a, b)
            self._release_buf.add_range(a, b)

    # ---------------------------------------------------------------- appending

    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, new: State) -> None:
        if new is not self._state:
            if new not in _TRANSITIONS[self._state]:
                raise AssertionError(f"spool state {self._state.name} -> {new.name} is not allowed")
            self._state = new

    def __repr__(self) -> str:
        return (f"<Spool {self.path} {self._state.name} ids<{self._next_id} "
                f"durable={self.durable_id} pending={self.entries_pending} "
                f"segments={len(self._segments)} bytes={self._data_bytes}/{self.cfg.max_bytes}>")

    def _check_usable(self) -> None:
        if self._state is State.FAILED:
            assert self._error is not None
            raise self._error
        if self._state is State.CLOSED:
            raise SpoolError(f"spool {self.path} is closed")

    @property
    def free_bytes(self) -> int:
        """How many more bytes of entries `max_bytes` allows."""
        return max(0, self.cfg.max_bytes - self._data_bytes)

    def is_full(self) -> bool:
        """True while senders should be held back: the disk is full, or the last
        refused entry still would not fit, or not even an empty frame would."""
        if self._state is State.DISK_FULL:
            return True
        free = self.free_bytes
        if self._blocked_need and free >= self._blocked_need:
            self._blocked_need = 0
        return bool(self._blocked_need) or free <= HEADER_BYTES

    def append(self, entry: SpoolEntry) -> int:
        """Buffer `entry` for the log and return its id. Quick: no I/O happens here.

        Raises SpoolFull if it would take the spool beyond `max_bytes` or the
        disk is full (nothing is taken then; under `when_full = "block"` the
        caller should have checked `is_full()` first and holds the entry until
        space is freed), ValueError if the entry is larger than `max_bytes`
        could ever hold, SpoolUnavailable after an I/O error.
        """
        state = self._state
        if state is not State.OPEN and state is not State.DISK_FULL:
            self._check_usable()
        check_entry(entry)
        settings = entry.settings
        cached = self._settings_cache.get(id(settings))
        if cached is None or cached[0] != settings:
            if len(self._settings_cache) >= 4096:
                self._settings_cache.clear()
            cached = (dict(settings), pack_settings(settings))
            self._settings_cache[id(settings)] = cached
        payload = encode_entry(entry, cached[1], self._packer)
        need = HEADER_BYTES + len(payload)
        max_bytes = self.cfg.max_bytes
        if need > max_bytes:
            raise ValueError(f"entry of {need} bytes can never fit in the spool "
                             f"([spool] max_bytes = {max_bytes})")
        if state is State.DISK_FULL:
            self._counters["full_rejections"] += 1
            raise SpoolFull(f"spool {self.path}: the disk is full", needed=need,
                            free=self.free_bytes, reason="disk full", when_full=self.cfg.when_full)
        if self._data_bytes + need > max_bytes:
            self._blocked_need = need
            self._counters["full_rejections"] += 1
            raise SpoolFull(f"spool {self.path} is full ({self._data_bytes} of "
                            f"{max_bytes} bytes; the entry needs {need})",
                            needed=need, free=self.free_bytes, reason="max_bytes",
                            when_full=self.cfg.when_full)
        entry_id = self._next_id
        segments = self._segments
        seg = segments[-1] if segments else None
        if seg is None or seg.recovered or (seg.size and seg.size + need > self.cfg.segment_bytes):
            seg = _Segment(entry_id, os.path.join(self.path, _segment_name(entry_id)))
            segments.append(seg)
            self._seg_firsts.append(entry_id)
        seg.buf += encode_frame(entry_id, payload)
        seg.buf_last_id = seg.last_id = entry_id
        seg.size += need
        seg.unreleased += 1
        self._data_bytes += need
        self._next_id = entry_id + 1
        idx = self._time_index
        if not idx or entry.timestamp_ms >= idx[-1][1] + 1000:
            self._index_time(entry_id, entry.timestamp_ms)
        return entry_id

    def _index_time(self, entry_id: int, ts_ms: int) -> None:
        idx = self._time_index
        if not idx or ts_ms >= idx[-1][1] + 1000:
            idx.append((entry_id, ts_ms))
            if len(idx) > _TIME_INDEX_CAP:
                del idx[1::2]         # thin out: the estimate gets coarser, never younger

    # ---------------------------------------------------------------- releasing

    def release(self, ids) -> int:
        """Mark delivered entries (broker acknowledged) as released; returns how many were new.

        `ids` is any iterable of ids (a `range` is cheapest). Quick: the release
        record is written by the next commit. Segments whose entries are all
        released are deleted once that record is durable. Releasing an id
        twice is harmless.
        """
        self._check_usable()
        top = self._next_id
        if isinstance(ids, range) and ids.step == 1:
            if ids and not (1 <= ids.start and ids.stop <= top):
                raise ValueError(f"ids: {ids!r} holds ids this spool did not hand out")
            runs = [(ids.start, ids.stop)] if ids else []
        else:
            ordered = sorted(set(ids))
            for entry_id in ordered[:1] + ordered[-1:]:
                if type(entry_id) is not int or not 1 <= entry_id < top:
                    raise ValueError(f"ids: {entry_id!r} is not an id this spool handed out")
            if any(type(i) is not int for i in ordered):
                raise ValueError("ids: every id must be an int")
            runs = []
            for entry_id in ordered:
                if runs and runs[-1][1] == entry_id:
                    runs[-1][1] = entry_id + 1
                else:
                    runs.append([entry_id, entry_id + 1])
        new = 0
        firsts, segments = self._seg_firsts, self._segments
        for lo, hi in runs:
            while lo < hi:
                k = bisect_right(firsts, lo) - 1
                piece_hi = min(hi, firsts[k + 1]) if k + 1 < len(firsts) else hi
                added = self._released.add_range(lo, piece_hi)
                if added:
                    self._release_buf.add_range(lo, piece_hi)
                    if k >= 0:       # ids below every segment are released already
                        segments[k].unreleased -= added
                    new += added
                lo = piece_hi
        return new

    def _drop_segment(self, seg: _Segment) -> None:
        k = self._segments.index(seg)
        del self._segments[k]
        self._seg_firsts = [s.first_id for s in self._segments]
        self._data_bytes -= seg.size
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None

    # ---------------------------------------------------------------- writing

    def _fail(self, op: str, exc: OSError, filename: str | None) -> SpoolUnavailable:
        err = SpoolUnavailable(
            f"spool {self.path}: {op} failed: {os.strerror(exc.errno) if exc.errno else exc}"
            f"{f' ({filename})' if filename else ''}; the spool takes no more entries and "
            f"nothing after id {self._synced_id if op.startswith('fsync') else self._written_id} "
            "is known to be on disk", op=op, errno=exc.errno, filename=filename)
        log.error("%s", err)
        self._counters["write_errors"] += 1
        self._error = err
        self._set_state(State.FAILED)
        return err

    def _disk_full(self, op: str, filename: str) -> None:
        self._counters["write_errors"] += 1
        if self._state is State.OPEN:
            log.warning("spool %s: the disk is full (%s %s); new entries are refused until "
                        "writes succeed again", self.path, op, filename)
            self._set_state(State.DISK_FULL)

    def _write_out(self) -> None:
        """Write buffered entries and release records to the files (no fsync)."""
        wrote = False
        buffered = []
        for seg in reversed(self._segments):   # buffered segments are always a suffix
            if not seg.buf:
                break
            buffered.append(seg)
        for seg in reversed(buffered):
            try:
                if seg.fd is None:
                    seg.fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    self._dir_dirty = True
                    self._crash.reached("during-segment-roll")
                if self._crash.armed == "mid-write":
                    half = len(seg.buf) // 2 or 1
                    os.pwrite(seg.fd, seg.buf[:half], seg.written)
                    self._crash.reached("mid-write")
                os.lseek(seg.fd, seg.written, os.SEEK_SET)
                _write_all(seg.fd, seg.buf)
            except OSError as exc:
                if seg.fd is not None:
                    try:
                        os.ftruncate(seg.fd, seg.written)  # no half frame stays behind
                    except OSError as exc2:
                        raise self._fail("truncate after a failed write", exc2, seg.path) from None
                if exc.errno in (errno_mod.ENOSPC, errno_mod.EDQUOT):
                    self._disk_full("write", seg.path)
                    return
                raise self._fail("write", exc, seg.path) from None
            seg.written += len(seg.buf)
            self._written_id = seg.buf_last_id
            seg.buf = bytearray()
            wrote = True
            if self.cfg.fsync == "never" and seg is not self._segments[-1]:
                os.close(seg.fd)      # rolled, and no fsync will ever want it
                seg.fd = None
        if wrote:
            self._crash.reached("after-write-before-fsync")
        if len(self._release_buf) and not self._write_releases():
            return
        if self._state is State.DISK_FULL:
            log.info("spool %s: writes succeed again; taking new entries", self.path)
            self._set_state(State.OPEN)

    def _write_releases(self) -> bool:
        path = os.path.join(self.path, _acklog_name(self._ack_gen))
        self._ack_record += 1
        data = encode_frame(self._ack_record, msgpack.packb(self._release_buf.flat()))
        try:
            if self._ack_fd is None:
                self._ack_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._dir_dirty = True
            _write_all(self._ack_fd, data)
        except OSError as exc:
            self._ack_record -= 1
            if self._ack_fd is not None:
                try:
                    os.ftruncate(self._ack_fd, self._ack_written)
                except OSError as exc2:
                    raise self._fail("truncate after a failed write", exc2, path) from None
            if exc.errno in (errno_mod.ENOSPC, errno_mod.EDQUOT):
                self._disk_full("write", path)
                return False
            raise self._fail("write", exc, path) from None
        self._ack_written += len(data)
        self._ack_writes += 1
        self._ack_synced = False
        self._release_buf = RangeSet()
        self._crash.reached("after-release-write-before-fsync")
        return True

    def _sync_release_log(self) -> None:
        if self._ack_fd is not None:
            os.fsync(self._ack_fd)
        if self._dir_dirty:
            _fsync_dir(self.path)
            self._dir_dirty = False
        self._ack_synced = True

    # ---------------------------------------------------------------- committing

    @property
    def durable_id(self) -> int:
        """The highest id the caller may acknowledge: every id up to it is durable
        under the fsync policy (fsynced for "always"; written to the OS, so it
        survives a crash of the daemon, for "interval" and "never")."""
        return self._synced_id if self.cfg.fsync == "always" else self._written_id

    @property
    def synced_id(self) -> int:
        """The highest id known to be fsynced (survives a power loss)."""
        return self._synced_id

    @property
    def written_id(self) -> int:
        return self._written_id

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def sync_in_progress(self) -> bool:
        return self._job is not None

    def sync_due_in(self) -> float | None:
        """Seconds until the interval policy wants an fsync (0: now); None when nothing waits."""
        if self.cfg.fsync != "interval" or (self._written_id <= self._synced_id and self._ack_synced):
            return None
        return max(0.0, self._last_sync + self.cfg.fsync_interval_ms / 1000 - self._clock())

    def commit(self) -> int:
        """Group commit: write what was appended/released, fsync as the policy says,
        and return `durable_id`. Runs the fsync inline; see `prepare_sync` to run
        it in an executor instead. Raises SpoolUnavailable after an I/O error."""
        job = self.prepare_sync()
        if job is not None:
            job.run()
            self.finish_sync(job)
        self._handed_out = self.durable_id
        return self._handed_out

    def prepare_sync(self, *, force: bool = False) -> SyncJob | None:
        """Write buffered data (quick, no fsync) and return the blocking rest as a
        SyncJob, or None when there is nothing to fsync or delete now.

        Run it with ``await loop.run_in_executor(None, job.run)`` then call
        `finish_sync(job)` on the loop. Only one job may be outstanding; while
        one is, this only writes and returns None. `force` fsyncs regardless of
        the policy (clean shutdown). Acknowledge up to `durable_id` right after
        this returns (for "interval" and "never" the written entries are durable
        now) and again after `finish_sync`.
        """
        job = self._prepare_sync(force)
        self._handed_out = self.durable_id
        return job

    def _prepare_sync(self, force: bool) -> SyncJob | None:
        self._check_usable()
        self._write_out()
        if self._job is not None:
            return None
        policy = self.cfg.fsync
        now = self._clock()
        unsynced = self._written_id > self._synced_id or not self._ack_synced
        sync_data = unsynced and (force or policy == "always" or (
            policy == "interval" and now - self._last_sync >= self.cfg.fsync_interval_ms / 1000))
        # A segment goes only once its entries were handed out as durable by an
        # earlier commit: the caller has acknowledged them to the shims by then, so
        # a crash cannot leave a shim replaying an entry the spool no longer knows.
        doomed = [s for s in self._segments[:-1]
                  if s.unreleased == 0 and not s.doomed and not s.buf
                  and s.last_id <= self._handed_out]
        if doomed and self._state is State.DISK_FULL and len(self._release_buf):
            # The release record cannot be written; deleting still frees space. After a
            # crash before it is written the range is reported as a missing segment.
            log.warning("spool %s: deleting %d delivered segments without a release record "
                        "(disk full)", self.path, len(doomed))
        compact = self._ack_written >= self._release_log_bytes and self._state is State.OPEN
        if not (sync_data or doomed or compact):
            return None
        job = SyncJob(dir_path=self.path, crash=self._crash, data_upto=self._written_id,
                      ack_writes=self._ack_writes)
        try:
            # Deleting and compacting need the release records durable first, so every
            # job fsyncs what is open, whatever made it necessary.
            for seg in self._segments:
                if seg.fd is not None and not seg.doomed:
                    job.sync_fds.append(os.dup(seg.fd))
            if self._ack_fd is not None:
                job.sync_fds.append(os.dup(self._ack_fd))
            job.sync_dir = self._dir_dirty
            self._dir_dirty = False
            if compact:
                self._rotate_release_log(job)
        except OSError as exc:
            for fd in job.sync_fds:
                os.close(fd)
            raise self._fail("prepare fsync", exc, self.path) from None
        for seg in doomed:
            seg.doomed = True
            job.unlink.append(seg.path)
        self._job = job
        return job

    def _rotate_release_log(self, job: SyncJob) -> None:
        """Start the next release-log generation; the job installs a checkpoint of
        everything released so far and then removes the older logs."""
        old_gen = self._ack_gen
        self._ack_gen += 1
        doc = {"v": 1, "gen": self._ack_gen, "next": self._written_id + 1,
               "released": self._released.flat()}
        job.checkpoint = encode_frame(self._ack_gen, msgpack.packb(doc))
        job.stale_acklogs = [os.path.join(self.path, _acklog_name(g))
                             for g in range(max(1, old_gen - 1), old_gen + 1)]
        if self._ack_fd is not None:
            os.close(self._ack_fd)   # the job holds its own duplicate to fsync
        self._ack_fd = None
        self._ack_written = 0
        self._ack_record = 0
        self._checkpoint_bytes = len(job.checkpoint)

    def finish_sync(self, job: SyncJob) -> int:
        """Take the result of a SyncJob on the loop; returns `durable_id`."""
        if job is not self._job or not job.done:
            raise ValueError("job: not the outstanding, finished SyncJob of this spool")
        self._job = None
        if job.error is not None:
            # Postgres' lesson: a failed fsync may have dropped the dirty pages; nothing
            # after the last good fsync is durable, and retrying would only pretend it is.
            raise self._fail(job.error_op, job.error, job.error.filename)
        if job.sync_fds:
            self._counters["fsyncs"] += 1
            if job.data_upto > self._synced_id:
                self._crash.reached("after-fsync-before-ack")
            self._synced_id = max(self._synced_id, job.data_upto)
            self._last_sync = self._clock()
            self._ack_synced = self._ack_writes == job.ack_writes
        if job.checkpoint is not None:
            self._counters["checkpoints"] += 1
        freed = [s for s in self._segments if s.doomed]
        for seg in freed:
            self._drop_segment(seg)
            self._counters["segments_deleted"] += 1
        if freed and self._state is State.DISK_FULL:
            self._write_out()     # the deletions freed disk space: retry the held writes now
        for seg in self._segments[:-1]:
            if seg.fd is not None and not seg.buf and seg.written and job.data_upto >= seg.last_id:
                os.close(seg.fd)   # rolled and fsynced: the loop needs its descriptor no more
                seg.fd = None
        self._handed_out = self.durable_id
        return self._handed_out

    # ---------------------------------------------------------------- reading back

    def recovered_sessions(self) -> dict[bytes, int]:
        """{session_id: highest sequence number held} over the entries found on disk at open."""
        return dict(self._sessions)

    @property
    def recovered_boundary(self) -> int:
        """Ids below this were recovered from disk at open; ids from it on are this run's."""
        return self._boundary

    def cursor(self, upto: int | None = None) -> "ReplayCursor":
        """A cursor over undelivered entries in id order, from disk, with bounded memory.

        `upto` (exclusive) defaults to no limit: the cursor follows the log as it
        grows, returning what has been written so far (see ReplayCursor.read).
        """
        return ReplayCursor(self, upto)

    def pending(self) -> Iterator[tuple[int, SpoolEntry]]:
        """(id, entry) for every undelivered entry recovered at open, in id order.

        Streams from disk one segment at a time; entries released meanwhile are
        skipped. Each yielded entry counts as replayed.
        """
        cur = ReplayCursor(self, self._boundary)
        while True:
            batch = cur.read(256)
            if not batch:
                return
            yield from batch

    # ---------------------------------------------------------------- stats

    @property
    def entries_pending(self) -> int:
        return (self._next_id - 1) - len(self._released)

    def oldest_pending_id(self) -> int | None:
        oldest = self._released.first_missing(1)
        return oldest if oldest < self._next_id else None

    def stats(self, now: float) -> dict:
        """Counters and gauges; `now` is wall-clock seconds (time.time())."""
        oldest = self.oldest_pending_id()
        age = None
        if oldest is not None:
            idx = self._time_index
            k = bisect_right(idx, (oldest, 1 << 62)) - 1
            if k > 0:
                del idx[:k]     # points before the oldest pending entry are no longer needed
                k = 0
            if k == 0 and idx and idx[0][0] <= oldest:
                age = max(0.0, now - idx[0][1] / 1000)
        d = self._damage
        return {
            "state": self._state.value,
            "bytes": self._data_bytes + self._ack_written + self._checkpoint_bytes,
            "data_bytes": self._data_bytes,
            "max_bytes": self.cfg.max_bytes,
            "segments": len(self._segments),
            "entries_pending": self.entries_pending,
            "oldest_pending_age_s": age,
            "replayed": self.replayed,
            "damaged": d["damaged_entries"] + d["corrupt_regions"] + d["torn_tails"]
            + d["missing_segments"] + d["bad_checkpoint"] + d["bad_release_records"],
            **d,
            "next_id": self._next_id,
            "durable_id": self.durable_id,
            "synced_id": self._synced_id,
            **self._counters,
            "full": self.is_full(),
        }

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        """Write and fsync everything (whatever the policy), then release the directory."""
        if self._state is State.CLOSED:
            return
        try:
            if self._state is not State.FAILED and self._job is None:
                self.commit()
                job = self.prepare_sync(force=True)
                if job is not None:
                    job.run()
                    self.finish_sync(job)
        finally:
            self._close_fds()
            self._set_state(State.CLOSED)

    def _close_fds(self) -> None:
        for seg in self._segments:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
        if self._ack_fd is not None:
            os.close(self._ack_fd)
            self._ack_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ReplayCursor:
    """Reads undelivered entries back from the segment files in id order.

    Memory is bounded: one segment is mapped at a time (file-backed pages the
    kernel may drop), and `read(n)` returns at most n entries. The cursor
    only sees bytes already written to the files: it stops at the written
    head and continues from there on a later `read` (call `commit` first).
    """

    def __init__(self, spool: Spool, upto: int | None):
        self._spool = spool
        self._upto = upto
        self._next_id = 1           # first id not yet considered
        self._seg_first = 0
        self._offset = 0

    @property
    def position(self) -> int:
        """The first id the cursor has not yet returned or skipped."""
        return self._next_id

    def caught_up(self) -> bool:
        """True when every id handed out so far (or below `upto`) was read."""
        end = self._spool.next_id if self._upto is None else min(self._upto, self._spool.next_id)
        return self._next_id >= end

    def read(self, max_entries: int = 256) -> list[tuple[int, SpoolEntry]]:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, not {max_entries!r}")
        sp = self._spool
        out: list[tuple[int, SpoolEntry]] = []
        while len(out) < max_entries and not self.caught_up():
            segs = [s for s in sp._segments if s.last_id >= self._next_id and s.written]
            if not segs:
                break
            seg = segs[0]
            if seg.first_id != self._seg_first:
                self._seg_first, self._offset = seg.first_id, 0
            limit = seg.written
            if self._offset >= limit:
                break       # the rest of this segment is not written yet
            try:
                fd = os.open(seg.path, os.O_RDONLY)
            except FileNotFoundError:
                self._next_id = seg.last_id + 1   # deleted meanwhile: all of it was released
                continue
            try:
                with mmap.mmap(fd, limit, access=mmap.ACCESS_READ) as mm:
                    self._read_segment(seg, mm, limit, max_entries, out)
            finally:
                os.close(fd)
            if self._offset >= limit and seg.written == seg.size:
                self._next_id = max(self._next_id, seg.last_id + 1)   # all of it was read
        return out

    def _read_segment(self, seg: _Segment, mm: mmap.mmap, limit: int, max_entries: int,
                      out: list) -> None:
        sp = self._spool
        upto = self._upto
        for item in scan(mm, self._offset, limit):
            if isinstance(item, BadRegion):
                self._offset = item.end
                if not seg.recovered:   # recovered segments were counted at open
                    sp._damage["corrupt_regions"] += 1
                    log.error("spool segment %s: unreadable bytes %d..%d written by this run",
                              seg.path, item.start, item.end)
                continue
            fid = item.frame_id
            if fid < self._next_id:
                self._offset = item.end
                continue
            if upto is not None and fid >= upto:
                self._next_id = upto
                return
            if fid in sp._released:
                self._offset, self._next_id = item.end, fid + 1
                continue
            try:
                entry = decode_entry(item.payload)
            except ValueError:
                self._offset, self._next_id = item.end, fid + 1
                continue        # counted at open (recovered) or impossible (this run's own bytes)
            self._offset, self._next_id = item.end, fid + 1
            if fid < sp._boundary:
                sp.replayed += 1
            out.append((fid, entry))
            if len(out) >= max_entries:
                return

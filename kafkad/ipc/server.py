"""The daemon's end of the shim link: a ZeroMQ ROUTER on the daemon's asyncio loop.

`IpcServer` binds the endpoint, reads every frame as untrusted input
(`client_shim.schema.decode_request` checks size, msgpack, kind and every
field), keeps the producer sessions, turns SEND/SEND_SYNC frames into
`Submission`s for `BrokerProducer.submit`, and turns the engine's `Outcome`s
back into RESULT replies (sync) or bulk ACK/FAILED frames (async).

Per session the server keeps `next_seq` (every entry below it was taken) and
the entries taken beyond it. A replayed entry that was taken is dropped (and
acknowledged again if it is already finished). An entry that does not follow
on means an earlier one was refused: it is refused as well (every such frame
gets REJECTED from `next_seq`, counted in `gap_replies`), so the shim replays
from `next_seq` and per-partition order survives refusals (queue full, this
session's share exceeded, daemon stopping).

The entries of one SEND frame are merged into one `Submission` per (topic,
partition): the engine's cost is per submission, and a busy shim packs
hundreds of one-message sends into a frame. Once a topic has a partition
the daemon picks (negative) in the frame, only runs merge
(`schema.group_key`), and a refused group holds back the later groups of
its topic: two negative values may be one partition.

Robustness: a bad frame gets an ERROR reply (while the peer's error budget
lasts) and a counter by reason, never an exception out of the reader; the
ROUTER has ROUTER_MANDATORY set so a reply to a vanished or stuck peer fails
visibly (EHOSTUNREACH/EAGAIN are counted; ACK/FAILED frames are retried)
instead of vanishing. ZeroMQ reads the peers' pipes round-robin, each read
round is capped, and each session may hold at most
`max_inflight_per_session` messages, so one flooding client cannot starve
the others.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno as _errno
import grp
import itertools
import logging
import operator
import os
import stat
import time
from typing import Callable

import msgpack
import zmq
from zmq.utils import monitor as zmq_monitor

from client_shim import schema
from client_shim.errors import for_code
from kafkad.config import IpcConfig
from kafkad.engine.describe import describe_all
from kafkad.engine.types import Outcome, QueueFull, RecordTooLarge, SessionSettings, Submission, where
from kafkad.spool import SpoolEntry, SpoolFull, SpoolUnavailable
from kafkad.spool import State as _SpoolState

_SPOOL_OPEN = _SpoolState.OPEN

log = logging.getLogger("kafkad.ipc")

# A reader callback yields to the loop after this many frames or this long,
# whichever comes first: senders that keep the socket full must not keep the
# broker connections' answers (and the requests they free) waiting until they pause.
_READ_BATCH = 4096
_READ_TURN_S = 0.010
_BAD_REPLY_BUDGET = 100           # error replies per peer before going quiet (then 1 in 1000)
_RECENT_FAILED = 1024             # finished-but-failed entries remembered per session for replays
_MAX_METADATA_TASKS = 256
# Peers told when a topic's partition list changes (those that asked METADATA for it):
# at most this many per topic and this many topics, the least recently asked go first.
_MAX_WATCHERS_PER_TOPIC = 4096
_MAX_WATCHED_TOPICS = 4096
_PROBE_TIMEOUT_S = 0.5
_REPLAY_BATCH = 256               # spool entries read back per pump step
_HELD_MAX_BYTES = 64 << 20        # SEND payload held while a full spool blocks senders (then stop reading)
_ENTRY_OVERHEAD = 2048            # bound on a spool entry's size beyond its keys and values (settings, header)
# ZeroMQ's MAXMSGSIZE is max_frame_bytes plus this: a frame a little over the
# limit still arrives and gets an ERROR(TOO_LARGE) reply naming it; a bigger one
# is cut off by ZeroMQ before it is buffered (it drops that peer's connection).
_FRAME_ENVELOPE = 64 << 10
# Messages ZeroMQ may take in from one peer before the loop reads them. While
# the loop is busy (a saturated main thread, or senders held by a full spool),
# more than this waits in the peer, so the daemon's memory stays bounded by its
# [queue] caps plus a few frames per connection (the shim cuts frames at
# TARGET_FRAME_BYTES, 256 KiB). It was 100,000: four shims flooding a busy
# daemon put 600 MiB into its receive pipes with 30 MiB queued in the engine.
_RCVHWM = 8
_CLOSE_LINGER_S = 1.0             # at close: how long replies already queued may take to reach the shims
# At a stop, the socket stays open this long after the last reply went out: a
# shim whose ZeroMQ receive queue is full when the connection closes loses what
# it had not read yet, linger or not (measured with libzmq 4.3.5: up to a third
# of a 3,000-frame burst), so a shim busy with the drain's ACKs lost the last ones.
_CLOSE_GRACE_S = 0.25
_DISCONNECT_LOG_EVERY_S = 60.0    # at most one log line per this many seconds about dropped connections
# The socket calls of every frame take plain ints: pyzmq's enum options and flags
# cost more in Python than the libzmq call (getsockopt(zmq.EVENTS) & zmq.POLLIN
# is 2.1 us, with ints 1.4; send_multipart 2.6-4 us, _send's two plain sends about 1).
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)


# FLUSH ([FLUSH, session_id], no reply): send what the session's producer has
# waiting for batching now (its producer is stopping).
FLUSH = schema.FLUSH
# Announced in every REGISTERED (a sixth, appended field): what this daemon
# understands beyond schema version 1's base kinds. "room" (not with a spool):
# after a QUEUE_FULL refusal it sends ROOM when there is room again.
FEATURES = ["flush", "send_groups", "room", "pick_partition"]
# ROOM goes out once the queue and the session's share are back to this fraction
# of their caps: each refusal then lets in at least a quarter of the caps, so a
# full queue costs a refusal per quarter drained, not one per frame offered.
_ROOM_AT = 0.75


_UNKNOWN_TOPIC_OR_PARTITION = 3
_MESSAGE_SIZE_TOO_LARGE = 10      # Kafka's MESSAGE_TOO_LARGE: a SEND entry larger than the whole spool
_SPOOL_ENTRY_MAX = 4 << 20        # the most one spool entry holds when several SEND entries are merged


def _entry_bytes(entry: list) -> int:
    """A bound on the bytes one SEND entry's keys and values take in a spool entry."""
    values, keys = entry[5], entry[4]
    size = 10 * len(values)
    for v in values:
        if v is not None:
            size += len(v)
    if keys is not None:
        for k in keys:
            if k is not None:
                size += len(k)
    return size


def _spool_entry_cap(spool) -> int:
    """How large a spool entry made of several SEND entries may grow: a small share of
    `max_bytes`, so one never exceeds what the spool can hold (a single SEND entry up
    to `max_bytes` still makes an entry of its own)."""
    return max(1, min(_SPOOL_ENTRY_MAX, spool.cfg.max_bytes // 4))


def _chain_end(groups: list, start: int) -> int | None:
    """Where the entries of a SEND_GROUPS frame end, if they continue a session's
    sequence from `start` without a hole or an overlap, one group per (topic,
    partition); else None. The schema checked each group's firsts (ints,
    strictly increasing) and counts (adding up to its values)."""
    if len({(g[0], g[1]) for g in groups}) != len(groups):
        return None
    total = entries = 0
    all_ones = True
    for g in groups:
        total += len(g[6])
        entries += len(g[3])
        if g[4] is not None:
            all_ones = False
    end = start + total
    if all_ones:
        # One message per entry: the firsts must be exactly start .. end-1. Each
        # group's are increasing, so its ends bound it; then `total` distinct
        # firsts within those bounds cover the range.
        if min(g[3][0] for g in groups) != start or max(g[3][-1] for g in groups) != end - 1:
            return None
        if len(groups) > 1:
            seen: set = set()
            for g in groups:
                seen.update(g[3])
            if len(seen) != total:
                return None
        return end
    size: dict[int, int] = {}
    for g in groups:
        size.update(zip(g[3], g[4] if g[4] is not None else itertools.repeat(1)))
    if len(size) != entries:
        return None
    seq = start
    for _ in range(entries):
        n = size.get(seq)
        if n is None:
            return None
        seq += n
    return seq if seq == end else None


def _entries_of_groups(groups: list) -> list[list]:
    """A SEND_GROUPS frame's groups as SEND entries, in seq order."""
    entries: list[list] = []
    for topic, partition, ts, firsts, counts, keys, values in (g[:7] for g in groups):
        if counts is None:
            if keys is None:
                entries.extend([f, topic, partition, ts, None, [v]] for f, v in zip(firsts, values))
            else:
                entries.extend([f, topic, partition, ts, [k], [v]] for f, k, v in zip(firsts, keys, values))
            continue
        i = 0
        for f, c in zip(firsts, counts):
            entries.append([f, topic, partition, ts, keys[i:i + c] if keys is not None else None,
                            values[i:i + c]])
            i += c
    entries.sort(key=operator.itemgetter(0))
    return entries


class EndpointInUse(Exception):
    """Another live daemon serves the endpoint (or the path is not ours to replace)."""


class _Session:
    __slots__ = ("sid", "settings", "peer", "next_seq", "taken_above", "inflight", "inflight_msgs",
                 "gap_reported", "recent_failed", "backlog", "unregistered", "pid", "last_seen", "sent",
                 "delivered", "failed", "settings_map", "failed_memory", "forgotten_hw", "wants_room")

    def __init__(self, sid: bytes, settings: SessionSettings | None, peer: bytes, next_seq: int, pid: int):
        self.sid = sid
        self.settings = settings
        self.peer = peer
        self.next_seq = next_seq           # every entry below it was taken
        self.taken_above: dict[int, int] = {}  # first_seq -> count of entries taken beyond next_seq
        self.inflight: dict[int, _AsyncToken] = {}  # first_seq of each unfinished entry -> its token
        self.inflight_msgs = 0
        self.gap_reported = False
        self.recent_failed: collections.OrderedDict[int, list] = collections.OrderedDict()
        self.backlog: list[bytes] = []
        self.unregistered = False
        self.pid = pid
        self.last_seen = time.monotonic()
        self.sent = self.delivered = self.failed = 0
        # The settings as a plain map for spool entries: one object per registration,
        # so the spool encodes it once (docs/spool.md).
        self.settings_map = _settings_map(settings) if settings is not None else None
        self.failed_memory = _RECENT_FAILED
        self.wants_room = False            # its shim waits for ROOM after a QUEUE_FULL refusal
        self.forgotten_hw = -1             # highest first seq of a failed entry no longer remembered


_SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(SessionSettings) if f.init)


def _error_text(code: int) -> str:
    """"error 10 (MessageSizeTooLargeError)": the errno and the kafka-python class
    the worker's shim raises or logs for it, so the two logs read alike."""
    return f"error {code} ({for_code(code).__name__})"


def _part_of(i: int, parts: list) -> str:
    """" (line i+1 of n)" for a failure logged over several lines, else nothing."""
    return f" (line {i + 1} of {len(parts)})" if len(parts) > 1 else ""


def _settings_map(ss: SessionSettings) -> dict:
    """The settings as a plain map for a spool entry (derived fields left out)."""
    return {name: getattr(ss, name) for name in _SETTINGS_FIELDS}


def _settings_from_map(m: dict) -> SessionSettings:
    """SessionSettings from a spool entry's map (keys this version does not know are ignored)."""
    return SessionSettings(**{k: v for k, v in m.items() if k in _SETTINGS_FIELDS})


class _AsyncToken:
    """One Submission made of one or more SEND entries of a session (same topic and partition).

    `firsts`/`counts` describe the entries in submission order (`counts` None:
    one message each, only without a spool); outcomes
    arrive as runs over the submission and are mapped back onto them
    (`runs`: entry position -> failed [index, count, error] runs, only when
    something failed). With a spool, `spool_ids` gives each entry's spool id
    (consecutive entries may share one); an id is released when the last entry
    holding it is finished.
    """

    __slots__ = ("session", "firsts", "counts", "values", "done", "entry_index", "entry_done", "runs",
                 "spool_ids")

    def __init__(self, session: _Session, firsts: list[int], counts: list[int], values: list,
                 spool_ids: list[int] | None = None):
        self.session = session
        self.firsts = firsts
        self.counts = counts
        self.values = values
        self.spool_ids = spool_ids
        self.done = 0            # messages of the submission reported so far
        self.entry_index = 0     # the entry the next reported message belongs to
        self.entry_done = 0      # messages of that entry reported so far
        self.runs: dict[int, list] | None = None


class _ReplayToken:
    """A spool entry recovered from disk at start, submitted again by the replay pump."""

    __slots__ = ("entry_id", "session_id", "values", "done", "failed")

    def __init__(self, entry_id: int, session_id: bytes, values: list):
        self.entry_id = entry_id
        self.session_id = session_id
        self.values = values
        self.done = 0
        self.failed = 0


class _SyncToken:
    __slots__ = ("peer", "req_id", "session", "count", "done", "error", "base_offset", "partition")

    def __init__(self, peer: bytes, req_id: int, session: _Session, count: int, partition: int):
        self.peer = peer
        self.req_id = req_id
        self.session = session
        self.count = count
        self.partition = partition
        self.done = 0
        self.error = 0
        self.base_offset = -1


def _ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


class IpcServer:
    """The ROUTER socket, the sessions, and the translation to and from the engine."""

    def __init__(self, cfg: IpcConfig, producer, *, stats_provider: Callable[[], dict], spool=None,
                 log_messages_on_error: bool = True):
        self.cfg = cfg
        self.producer = producer
        self.stats_provider = stats_provider
        # [logging] log_messages_on_error: ANDed with each session's own setting.
        self.log_messages_on_error = log_messages_on_error
        # The durable spool (kafkad.spool.Spool) or None; see docs/spool.md "How to wire it".
        self.spool = spool
        self._spool_broken = False         # after SpoolUnavailable: ack on broker delivery again
        self._await_durable: collections.deque = collections.deque()  # (entry_id, session, firsts)
        self._release: list[int] = []      # spool ids finished in this outcome batch
        self._deferred: collections.deque[Submission] = collections.deque()  # spooled, not yet submitted
        self._flush_after_pump: set[bytes] = set()   # sessions that asked for a FLUSH while deferred
        self._replay = None                # ReplayCursor over the recovered entries while replaying
        self._replay_queue: collections.deque = collections.deque()   # read back, not yet submitted
        self._held: collections.deque = collections.deque()   # (peer, sid, entries): spool full, "block"
        self._held_bytes = 0
        self._commit_scheduled = False
        self._sync_timer: asyncio.TimerHandle | None = None
        self._job = None
        self._job_future: asyncio.Future | None = None
        self._spool_c = collections.Counter()
        self.instance_id = os.urandom(16)
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._disconnects_unlogged = 0
        self._disconnect_log_at = 0.0
        self._last_reply_at = 0.0           # when the last frame went out (close waits a little after it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: dict[bytes, _Session] = {}
        self._stopping = False
        self._closed = False
        self._read_scheduled = False
        self._backlog_scheduled = False
        # Replies to no session (a sync RESULT to a thread's own socket) that met a
        # full pipe: per peer, in order, sent like the sessions' backlogs.
        self._peer_backlog: dict[bytes, list[bytes]] = {}
        self._bound_inode: tuple[int, int] | None = None
        self._bad_by_peer: dict[bytes, int] = {}
        self._metadata_tasks: set[asyncio.Task] = set()
        self._watchers: dict[str, dict[bytes, None]] = {}   # topic -> peers that asked, oldest first
        self._sync_inflight = 0
        # Sessions refused for a full queue or share (no spool), waiting for ROOM: sid -> session
        self._room_waiters: dict[bytes, _Session] = {}
        self._c = collections.Counter()
        self._bad = collections.Counter()
        self._rejected = collections.Counter()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "stopping" if self._stopping else \
            "serving" if self._sock is not None else "new"
        return f"<IpcServer {state} {self.cfg.endpoint} sessions={len(self._sessions)}>"

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the endpoint (replacing a dead daemon's socket file) and start reading."""
        self._loop = asyncio.get_running_loop()
        path = _ipc_path(self.cfg.endpoint)
        if path is not None:
            await self._clear_stale_socket(path)
            parent = os.path.dirname(path)
            if parent and not os.path.isdir(parent):
                os.makedirs(parent, mode=0o755, exist_ok=True)
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        if schema.ipv6_endpoint(self.cfg.endpoint):
            sock.setsockopt(zmq.IPV6, 1)     # ZeroMQ binds IPv4 only without it
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, _RCVHWM)
        # A hard cap so one message cannot exhaust memory; frames between
        # max_frame_bytes and this get an ERROR reply, bigger ones a disconnect.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        try:
            if path is not None:
                old_umask = os.umask(0o177)   # nobody else can connect before the chmod below
                try:
                    sock.bind(self.cfg.endpoint)
                finally:
                    os.umask(old_umask)
                self._set_permissions(path)
            else:
                sock.bind(self.cfg.endpoint)
        except BaseException as exc:
            sock.close(0)
            self._ctx.term()
            self._ctx = None
            if path is not None and self._bound_inode is None and os.path.exists(path) \
                    and not isinstance(exc, zmq.ZMQError):
                os.unlink(path)         # bound by us, but unusable (e.g. a bad socket_group)
            if isinstance(exc, zmq.ZMQError) and exc.errno == _errno.EADDRINUSE:
                raise EndpointInUse(f"{self.cfg.endpoint} is already in use by another process") from None
            raise
        self._sock = sock
        self._start_monitor()
        if self.spool is not None:
            self._start_spool()
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._on_readable)
        self._schedule_read()
        log.info("ipc: serving %s", self.cfg.endpoint)

    @property
    def max_message_bytes(self) -> int:
        """The socket's MAXMSGSIZE: a peer sending a bigger message is disconnected by ZeroMQ."""
        return self.cfg.max_frame_bytes + _FRAME_ENVELOPE

    def _start_monitor(self) -> None:
        """Watch the ROUTER's connections: ZeroMQ drops a peer that sends an oversized
        message without telling the application, so every drop is counted here."""
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._loop.add_reader(self._monitor.getsockopt(zmq.FD), self._on_monitor)
        self._loop.call_soon(self._on_monitor)

    def _on_monitor(self) -> None:
        mon = self._monitor
        if mon is None:
            return
        while True:
            try:
                event = zmq_monitor.recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._c["peers_accepted"] += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._c["peers_disconnected"] += 1
                self._disconnects_unlogged += 1
        now = time.monotonic()
        if self._disconnects_unlogged and now >= self._disconnect_log_at:
            # A shim that exits closes its connection too, so this is information,
            # not an alarm; the limit is named because nothing else reports that case.
            log.info("ipc: %d client connection(s) closed (%d in all): clients that exited, or that "
                     "sent a message over %d bytes, which ZeroMQ cuts off without delivering it",
                     self._disconnects_unlogged, self._c["peers_disconnected"], self.max_message_bytes)
            self._disconnects_unlogged = 0
            self._disconnect_log_at = now + _DISCONNECT_LOG_EVERY_S

    async def _clear_stale_socket(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise EndpointInUse(f"{path} exists and is not a socket; refusing to replace it")
        if await asyncio.to_thread(self._probe, self.cfg.endpoint):
            raise EndpointInUse(f"another kafkad is serving {self.cfg.endpoint}; "
                                "stop it first or choose another [ipc] endpoint")
        log.warning("ipc: removing the stale socket %s (nothing answers on it)", path)
        os.unlink(path)

    @staticmethod
    def _probe(endpoint: str) -> bool:
        """True if a daemon answers HELLO on `endpoint` within a short time."""
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if schema.ipv6_endpoint(endpoint):
                s.setsockopt(zmq.IPV6, 1)
            s.connect(endpoint)
            s.send(schema.encode([schema.HELLO, schema.SCHEMA_VERSION, 0]))
            return bool(s.poll(int(_PROBE_TIMEOUT_S * 1000)))
        finally:
            ctx.destroy(0)

    def _set_permissions(self, path: str) -> None:
        os.chmod(path, self.cfg.socket_mode)
        if self.cfg.socket_group:
            try:
                gid = grp.getgrnam(self.cfg.socket_group).gr_gid
            except KeyError:
                raise ValueError(f"[ipc] socket_group: no group named {self.cfg.socket_group!r}") from None
            os.chown(path, -1, gid)
        st = os.stat(path)
        self._bound_inode = (st.st_dev, st.st_ino)

    def stop_accepting(self) -> None:
        """From now on new messages are answered 'daemon stopping' (the shims keep them)."""
        self._stopping = True
        if self._held:
            # Held SENDs were never taken: the shims keep them for the next daemon.
            self._rejected["stopping"] += len(self._held)
            for peer, sid, entries in self._held:
                self._send(peer, schema.encode([schema.REJECTED, sid, entries[0][0], schema.E_STOPPING,
                                                "kafkad is stopping"]), self._sessions.get(sid))
            self._held.clear()
            self._held_bytes = 0

    def spooled_undelivered(self) -> int:
        """Messages written to the spool and not handed to the producer (replay or backlog)."""
        return sum(len(sub) for sub in self._deferred) + sum(len(e.values) for _, e in self._replay_queue)

    def hand_back(self, undelivered: list[Submission]) -> tuple[collections.Counter, list[Submission]]:
        """At the end of a drain without a spool: return undelivered async messages to their shims.

        A session whose shim is still connected holds every entry the daemon has
        not acknowledged or failed; instead of failing those entries, the daemon
        tells it `REJECTED(STOPPING, from_seq)` (from_seq: its oldest entry not
        finished) and forgets them: the shim keeps them and replays them, in
        order, to the next daemon (docs/ipc-schema.md, "Stopping"). Whether the
        shim is still there is what ZeroMQ says when the frame is handed over
        (ROUTER_MANDATORY: a peer that is gone fails at once).

        Returns (messages handed back per (topic, partition), the submissions not
        handed back: sync sends, spooled ones, and those of sessions that are
        gone or unregistered, which the caller fails as before).
        """
        handed: collections.Counter = collections.Counter()
        rest: list[Submission] = []
        by_session: dict[_Session, list[Submission]] = {}
        for sub in undelivered:
            token = sub.token
            if (isinstance(token, _AsyncToken) and token.spool_ids is None
                    and not token.session.unregistered
                    and self._sessions.get(token.session.sid) is token.session):
                by_session.setdefault(token.session, []).append(sub)
            else:
                rest.append(sub)
        for s, subs in by_session.items():
            tokens = list({id(sub.token): sub.token for sub in subs}.values())
            # Outcomes cover a token's messages in order, so what is left of it is
            # every entry from entry_index on (the first possibly in part).
            # (`counts` None: a SEND_GROUPS token, one message per entry.)
            left = [(t.firsts[i], 1 if t.counts is None else t.counts[i])
                    for t in tokens for i in range(t.entry_index, len(t.firsts))]
            n = sum(len(sub) for sub in subs)
            if not left:        # cannot happen (an undelivered part is unfinished); fail, never lose
                rest.extend(subs)
                continue
            frame = schema.encode([schema.REJECTED, s.sid, min(f for f, _ in left), schema.E_STOPPING,
                                   f"kafkad is stopping: {n} message(s) it did not deliver are handed "
                                   "back; they are replayed to the next daemon"])
            if not (self._send(s.peer, frame, s) or (s.backlog and s.backlog[-1] is frame)):
                rest.extend(subs)           # nobody holds them any more: failed and logged
                continue
            for first, count in left:
                if s.inflight.pop(first, None) is not None:
                    s.inflight_msgs -= count
            self._c["handed_back"] += n
            for sub in subs:
                handed[(sub.topic, sub.partition)] += len(sub)
        return handed, rest

    async def close(self) -> None:
        """Stop reading, acknowledge what the spool holds, close the socket, remove its file.

        With a spool, a last forced commit makes every accepted entry durable and
        the shims are told so (they may drop them); what the producer did not
        deliver stays in the spool for the next start. The caller closes the spool.
        """
        if self._closed:
            return
        self._closed = True
        for task in list(self._metadata_tasks):
            task.cancel()
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        if self.spool is not None and not self._spool_broken:
            await self._final_commit()
        if self._monitor is not None:
            self._loop.remove_reader(self._monitor.getsockopt(zmq.FD))
            self._sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        if self._sock is not None:
            try:
                self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
            except (zmq.ZMQError, ValueError):
                pass
            await self._let_replies_out()
            # Replies already handed to ZeroMQ (the ACKs of what the drain delivered,
            # FAILED, REJECTED) get a short linger to reach the shims: one lost at exit
            # makes its shim send the message again to the next daemon (a duplicate).
            self._sock.setsockopt(zmq.LINGER, int(_CLOSE_LINGER_S * 1000))
            self._sock.close()
            self._sock = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            await self._loop.run_in_executor(None, ctx.term)   # returns once sent or the linger ends
        path = _ipc_path(self.cfg.endpoint)
        if path is not None and self._bound_inode is not None:
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == self._bound_inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    async def _let_replies_out(self) -> None:
        """Hand ZeroMQ the replies waiting for a slow peer's pipe, then (after
        stop_accepting, i.e. a daemon stop) give the shims `_CLOSE_GRACE_S` after the
        last reply to read them; all within `_CLOSE_LINGER_S`."""
        deadline = time.monotonic() + _CLOSE_LINGER_S
        while self._peer_backlog or any(s.backlog for s in self._sessions.values()):
            self._flush_backlogs()
            if time.monotonic() >= deadline:
                lost = sum(len(s.backlog) for s in self._sessions.values()) + \
                    sum(len(frames) for frames in self._peer_backlog.values())
                if lost:
                    log.warning("ipc: closing with %d reply frame(s) that the shims did not take in "
                                "%.1fs; they replay those messages to the next daemon", lost, _CLOSE_LINGER_S)
                return
            await asyncio.sleep(0.01)
        if not self._stopping:
            return          # not a daemon stop (no drain whose replies matter)
        quiet_at = min(self._last_reply_at + _CLOSE_GRACE_S, deadline)
        if quiet_at > time.monotonic():
            await asyncio.sleep(quiet_at - time.monotonic())

    def stats(self) -> dict:
        inflight = sum(s.inflight_msgs for s in self._sessions.values())
        return {
            "endpoint": self.cfg.endpoint,
            "sessions": len(self._sessions),
            "stopping": self._stopping,
            "frames_in": self._c["frames_in"],
            "frames_out": self._c["frames_out"],
            "messages_in": self._c["messages_in"],
            "async_inflight_messages": inflight,
            "sync_inflight_requests": self._sync_inflight,
            "duplicates_dropped": self._c["duplicates"],
            "bad_frames": dict(self._bad),
            "bad_frames_total": sum(self._bad.values()),
            "rejected": dict(self._rejected),
            "replies_dropped_peer_gone": self._c["peer_gone"],
            "replies_dropped_peer_full": self._c["peer_full"],
            "error_replies_suppressed": self._c["suppressed"],
            "sessions_evicted": self._c["evicted"],
            "outcomes_forgotten": self._c["forgotten"],
            "gap_replies": self._c["gap_replies"],
            "flushes": self._c["flushes"],
            "handed_back_messages": self._c["handed_back"],
            "partition_changes_sent": self._c["partition_changes_sent"],
            "watched_topics": len(self._watchers),
            "send_groups_frames": self._c["send_groups_frames"],
            "send_groups_direct": self._c["send_groups_direct"],
            "room_sent": self._c["room_sent"],
            "room_waiting_sessions": len(self._room_waiters),
            "peers_accepted": self._c["peers_accepted"],
            "peers_disconnected": self._c["peers_disconnected"],
            **({"spool_deferred_messages": sum(len(sub) for sub in self._deferred),
                "spool_replaying": self._replay is not None or bool(self._replay_queue),
                "spool_replayed_messages": self._spool_c["replayed_messages"],
                "spool_replay_failed_messages": self._spool_c["replay_failed"],
                "spool_too_large_messages": self._spool_c["too_large"],
                "spool_held_frames": len(self._held),
                "spool_blocked": bool(self._held),
                "spool_unavailable": self._spool_broken}
               if self.spool is not None else {}),
        }

    # --- reading ---------------------------------------------------------------------

    def _schedule_read(self) -> None:
        if not self._read_scheduled and self._sock is not None:
            self._read_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        self._read_scheduled = False
        sock = self._sock
        if sock is None or self._closed:
            return          # closing: nothing more is taken (the shims keep what they send now)
        n = 0
        if self._held_bytes > _HELD_MAX_BYTES:
            return      # a full spool holds back senders: resumed by _resume_held
        drained = False
        # Every frame of this read, then one producer poll in this loop turn
        # (a sync send goes to the broker without waiting for the next turn).
        self.producer.hold_polls()
        recv, getsockopt = sock.recv, sock.getsockopt
        until = time.monotonic() + _READ_TURN_S
        turn_over = False
        try:
            while n < _READ_BATCH and self._held_bytes <= _HELD_MAX_BYTES:
                if n and time.monotonic() > until:
                    turn_over = True
                    break
                try:
                    peer = recv(_NOBLOCK)
                except zmq.Again:
                    drained = True
                    break
                # A ROUTER message is the peer's routing id and then what the peer
                # sent, at least one part; ZeroMQ hands over whole messages, so the
                # rest is there once the first part is.
                frame = recv(_NOBLOCK)
                n += 1
                self._c["frames_in"] += 1
                if getsockopt(_RCVMORE):
                    parts = 1
                    while getsockopt(_RCVMORE):
                        recv(_NOBLOCK)
                        parts += 1
                    self._bad_frame(peer, None, schema.E_MALFORMED,
                                    f"expected one frame per message, got {parts}")
                else:
                    self._on_frame(peer, frame)
                # Asking is cheaper than a recv that raises zmq.Again (a sync
                # send's read is one frame), and settles the FD's state as well.
                if not getsockopt(_EVENTS) & _POLLIN:
                    drained = True
                    break
        except zmq.ZMQError as exc:
            if self._sock is not None:
                log.error("ipc: reading the socket failed: %s", exc)
        finally:
            self.producer.release_polls()
        if self.spool is not None:
            self._schedule_commit()
        if not drained:
            # A read that ended on EAGAIN or on ZMQ_EVENTS without POLLIN left the
            # socket's event state settled (the FD signals the next input);
            # anything else: look again.
            self._check_events(force=turn_over or n >= _READ_BATCH)

    def _check_events(self, force: bool = False) -> None:
        """The ZeroMQ FD is edge-triggered: after reads and sends, look for more input."""
        sock = self._sock
        if sock is None:
            return
        if force or sock.getsockopt(_EVENTS) & _POLLIN:
            self._schedule_read()

    def _on_frame(self, peer: bytes, frame: bytes) -> None:
        try:
            kind, fields = schema.decode_request(frame, self.cfg.max_frame_bytes)
        except schema.SchemaError as exc:
            self._bad_frame(peer, self._guess_req_id(frame), exc.code, str(exc))
            return
        try:
            self._dispatch[kind](self, peer, *fields)
        except Exception:
            log.exception("ipc: internal error on a %s frame", schema.KIND_NAMES.get(kind))
            self._bad_frame(peer, schema.req_id_of(fields, kind), schema.E_INTERNAL,
                            "internal error; see the daemon log")

    def _guess_req_id(self, frame: bytes):
        """The req_id of a rejected frame, when it is simple to find (for the error reply)."""
        if len(frame) > self.cfg.max_frame_bytes:
            return None
        try:
            msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
            kind = msg[0]
            for i, (name, _) in enumerate(schema.FIELDS.get(kind, ())):
                if name == "req_id" and type(msg[i + 1]) is int and 0 <= msg[i + 1] <= schema.MAX_REQ_ID:
                    return msg[i + 1]
        except Exception:  # garbage: no req_id to echo
            return None
        return None

    def _bad_frame(self, peer: bytes, req_id, code: int, message: str) -> None:
        self._bad[schema.ERROR_NAMES.get(code, str(code)).lower()] += 1
        count = self._bad_by_peer.get(peer, 0) + 1
        if len(self._bad_by_peer) > 10_000:
            self._bad_by_peer.clear()
        self._bad_by_peer[peer] = count
        if count > _BAD_REPLY_BUDGET and count % 1000:
            self._c["suppressed"] += 1
            return
        if count == _BAD_REPLY_BUDGET:
            log.warning("ipc: a peer sent %d bad frames (last: %s); answering only 1 in 1000 now",
                        count, message)
        self._error(peer, req_id, code, message)

    def _error(self, peer: bytes, req_id, code: int, message: str, sid: bytes | None = None) -> None:
        self._send(peer, schema.encode([schema.ERROR, req_id, code, message, sid]))

    def _send(self, peer: bytes, frame: bytes, session: _Session | None = None) -> bool:
        sock = self._sock
        if sock is None:
            return False
        if session is None:
            if peer in self._peer_backlog:
                self._peer_backlog[peer].append(frame)  # behind what waits for this peer
                return False
        elif session.backlog:
            # Behind the session's frames that met a full pipe: a session's replies
            # leave in the order they were made (a ROOM never overtakes its REJECTED).
            session.backlog.append(frame)
            return False
        try:
            # send_multipart's part checks and enum flags, without them: with
            # ROUTER_MANDATORY a full pipe (EAGAIN) or a gone peer (EHOSTUNREACH)
            # fails the first part, and then nothing of the message is sent.
            sock.send(peer, _MORE_NOBLOCK)
            sock.send(frame, _NOBLOCK)
        except zmq.Again:
            self._c["peer_full"] += 1
            if session is not None:
                session.backlog.append(frame)
            else:
                self._peer_backlog[peer] = [frame]
            self._schedule_backlog()
            return False
        except zmq.ZMQError as exc:
            if exc.errno == _errno.EHOSTUNREACH:
                self._c["peer_gone"] += 1
                return False
            raise
        self._c["frames_out"] += 1
        self._last_reply_at = time.monotonic()
        return True

    def _schedule_backlog(self) -> None:
        if not self._backlog_scheduled and self._loop is not None:
            self._backlog_scheduled = True
            self._loop.call_later(0.02, self._flush_backlogs)

    def _flush_backlogs(self) -> None:
        self._backlog_scheduled = False
        for s in list(self._sessions.values()):
            if s.backlog:
                frames, s.backlog = s.backlog, []
                for i, frame in enumerate(frames):
                    if not self._send(s.peer, frame, s):
                        if s.backlog:
                            # A full pipe: _send kept frame i (s.backlog was empty since
                            # the swap) and scheduled another try; the rest waits behind it.
                            s.backlog = frames[i:]
                        else:
                            # The peer is gone: nobody takes these. A shim that comes back
                            # replays the entries and is answered again (duplicates dropped).
                            self._c["peer_gone"] += len(frames) - i - 1
                        break
                self._forget_if_done(s)
        self._flush_peer_backlogs()
        self._check_events()

    def _flush_peer_backlogs(self) -> None:
        """Send the replies waiting for a peer's pipe; drop them for a peer that is gone."""
        sock = self._sock
        if sock is None or not self._peer_backlog:
            return
        for peer in list(self._peer_backlog):
            frames = self._peer_backlog[peer]
            while frames:
                try:
                    sock.send(peer, _MORE_NOBLOCK)      # as in _send
                    sock.send(frames[0], _NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    if exc.errno != _errno.EHOSTUNREACH:
                        raise
                    self._c["peer_gone"] += len(frames)   # its caller is gone; nobody waits
                    frames.clear()
                    break
                frames.pop(0)
                self._c["frames_out"] += 1
                self._last_reply_at = time.monotonic()
            if frames:
                self._schedule_backlog()
            else:
                del self._peer_backlog[peer]

    # --- frame handlers --------------------------------------------------------------

    def _on_hello(self, peer, version, req_id) -> None:
        self._send(peer, schema.encode([schema.HELLO_OK, req_id, schema.SCHEMA_VERSION, self.instance_id,
                                        {"max_frame_bytes": self.cfg.max_frame_bytes}]))

    def _on_register(self, peer, version, req_id, sid, first_seq, settings) -> None:
        if version != schema.SCHEMA_VERSION:
            self._bad_frame(peer, req_id, schema.E_BAD_VERSION,
                            f"schema version {version} is not supported (this daemon speaks "
                            f"{schema.SCHEMA_VERSION})")
            return
        try:
            ss = SessionSettings(
                acks=settings["acks"], ack_timeout_ms=settings["ack_timeout_ms"], codec=settings["codec"],
                codec_level=settings["codec_level"], async_send=settings["async_send"],
                batch_n=settings["batch_n"], batch_t=float(settings["batch_t"]),
                retry_limit=settings["retry_limit"], retry_backoff_ms=settings["retry_backoff_ms"],
                retry_on_timeouts=settings["retry_on_timeouts"],
                log_messages_on_error=settings["log_messages_on_error"])
        except (ValueError, TypeError) as exc:
            self._bad_frame(peer, req_id, schema.E_INVALID, f"settings: {exc}")
            return
        s = self._sessions.get(sid)
        if s is None:
            if len(self._sessions) >= self.cfg.max_sessions and not self._evict_one():
                self._c["too_many_sessions"] += 1
                self._error(peer, req_id, schema.E_TOO_MANY_SESSIONS,
                            f"{len(self._sessions)} sessions open ([ipc] max_sessions), none idle "
                            "(each has messages in flight or answers not yet taken)", sid)
                return
            s = _Session(sid, ss, peer, first_seq, settings.get("pid", 0))
            self._sessions[sid] = s
            self._c["sessions_registered"] += 1
        else:
            if s.settings != ss or s.settings_map is None:
                s.settings_map = _settings_map(ss)
            s.settings, s.peer = ss, peer
            s.gap_reported = False
        s.pid = settings.get("pid", s.pid)
        s.wants_room = settings.get("room") is True
        # Failed outcomes are remembered for as long as the shim can still hold the entry
        # (its queue bound, in messages, bounds the entries it holds), at least _RECENT_FAILED.
        s.failed_memory = max(_RECENT_FAILED, int(settings.get("queue_maxsize") or 0))
        s.unregistered = False
        s.last_seen = time.monotonic()
        self._send(peer, schema.encode([schema.REGISTERED, req_id, sid, s.next_seq, self.instance_id,
                                        FEATURES if self.spool is None else
                                        [f for f in FEATURES if f != "room"]]))

    def _evict_one(self) -> bool:
        """Make room by dropping the longest-idle session with nothing left to answer.

        A session with entries in flight or with ACK/FAILED frames its shim has
        not taken yet is never evicted: its answers would be lost, and the shim
        would replay entries that were delivered (duplicates). Unregistered
        sessions go first.
        """
        idle = [s for s in self._sessions.values() if not s.inflight and not s.backlog]
        if not idle:
            return False
        victim = min(idle, key=lambda s: (not s.unregistered, s.last_seen))
        del self._sessions[victim.sid]
        self._c["evicted"] += 1
        return True

    def _session_for(self, peer, sid, req_id) -> _Session | None:
        s = self._sessions.get(sid)
        if s is None or s.unregistered:
            self._bad["unknown_session"] += 1
            self._error(peer, req_id, schema.E_UNKNOWN_SESSION, "session not registered", sid)
            return None
        s.peer = peer
        s.last_seen = time.monotonic()
        return s

    def _on_send(self, peer, sid, entries) -> None:
        s = self._session_for(peer, sid, None)
        if s is None:
            return
        if self._stopping:
            self._rejected["stopping"] += 1
            self._send(peer, schema.encode([schema.REJECTED, sid, entries[0][0], schema.E_STOPPING,
                                            "kafkad is stopping"]), s)
            return
        self._take_entries(s, peer, sid, entries)

    def _on_send_groups(self, peer, sid, groups) -> None:
        """SEND_GROUPS: the entries of a frame as columns per (topic, partition).

        The common frame (a shim sending on without a refusal) holds entries that
        continue the session's sequence without a hole: each group becomes one
        Submission as it came, with no Python work per message. Anything else
        (a replay with duplicates, a gap, a spool) is unpacked into SEND entries
        in seq order and takes the same path as a SEND, so the rules are one set.
        """
        self._c["send_groups_frames"] += 1
        s = self._session_for(peer, sid, None)
        if s is None:
            return
        if self._stopping:
            self._rejected["stopping"] += 1
            self._send(peer, schema.encode([schema.REJECTED, sid, min(g[3][0] for g in groups),
                                            schema.E_STOPPING, "kafkad is stopping"]), s)
            return
        if self.spool is None and not s.taken_above:
            expected = _chain_end(groups, s.next_seq)
            if expected is not None:
                self._c["send_groups_direct"] += 1
                acks: list[int] = []
                failed: list[list] = []
                self._submit_groups(s, peer, sid, [g[:7] for g in groups], expected, (), acks, failed)
                return
            low = min(g[3][0] for g in groups)
            if low > s.next_seq:
                # The whole frame lies past a gap (it was on its way behind a refused
                # one): refused as the entry-by-entry path would, without unpacking it.
                self._refuse_gap(s, peer, low)
                return
        self._take_entries(s, peer, sid, _entries_of_groups(groups))

    def _take_entries(self, s: _Session, peer, sid, entries) -> None:
        if self.spool is not None:
            if self._held:
                self._hold(peer, sid, entries)      # keep the order behind what waits already
            else:
                rest = self._on_send_spooled(s, peer, sid, entries)
                if rest:
                    self._hold(peer, sid, rest)
            return
        acks: list[int] = []
        failed: list[list] = []
        # 1. In seq order: drop what was taken before, stop at a gap.
        groups: dict[tuple, list] = {}
        latest: dict = {}            # schema.group_key's, once a topic has a negative partition
        expected = s.next_seq
        chain_dups: list[int] = []      # entries taken earlier that the chain of this frame passes
        above = s.taken_above
        for entry in entries:
            first, n = entry[0], len(entry[5])
            while expected < first and expected in above:
                # Taken earlier past a refusal and perhaps acknowledged since, so the
                # shim's replay need not hold it: the chain steps over it.
                chain_dups.append(expected)
                expected += above[expected]
            if first < s.next_seq or first in s.taken_above:
                self._c["duplicates"] += 1
                if first == expected:
                    expected = first + n
                    chain_dups.append(first)
                if first not in s.inflight:
                    self._finished_again(s, first, n, acks, failed)
                continue
            if first != expected:
                # An earlier entry was not taken: refuse from here; the shim replays
                # everything from next_seq, in order.
                self._refuse_gap(s, peer, first)
                break
            expected = first + n
            p = entry[2]
            gk = (entry[1], p) if p >= 0 and not latest else schema.group_key(latest, entry[1], p, len(groups))
            groups.setdefault(gk, []).append(entry)
        # As columns per (topic, partition): [topic, partition, ts, firsts, counts, keys, values].
        cols = []
        for (topic, partition, *_), group in groups.items():
            if len(group) == 1:
                e = group[0]
                cols.append((topic, partition, e[3], [e[0]], [len(e[5])], e[4], e[5]))
                continue
            values = [v for e in group for v in e[5]]
            keys = None if all(e[4] is None for e in group) else \
                [k for e in group for k in (e[4] if e[4] is not None else [None] * len(e[5]))]
            cols.append((topic, partition, group[0][3], [e[0] for e in group], [len(e[5]) for e in group],
                         keys, values))
        self._submit_groups(s, peer, sid, cols, expected, chain_dups, acks, failed)

    def _submit_groups(self, s: _Session, peer, sid, cols: list, expected: int, chain_dups,
                       acks: list, failed: list) -> None:
        """Submit the entries taken from one frame, one Submission per (topic, partition).

        `cols`: (topic, partition, ts, firsts, counts | None, keys | None, values)
        per (topic, partition), every entry in it following on from `next_seq`
        up to `expected` (with the `chain_dups` taken before); counts None means
        one message per entry.
        """
        # 2. One Submission per (topic, partition): the engine's cost is per submission.
        refused_from = None
        taken: list[tuple[list, list | None]] = []     # (firsts, counts) of each group taken
        # A topic with a negative partition in the frame can have several groups that land
        # in one partition (schema.group_key): once one of them is refused, so is every
        # later group of the topic, or a later record would go ahead of the refused one.
        picked = {c[0] for c in cols if c[1] < 0}
        stopped: set[str] = set()
        work = collections.deque(cols)
        while work:
            topic, partition, ts, firsts, counts, keys, values = work.popleft()
            n = len(values)
            if stopped and topic in stopped:
                low = firsts[0]
                refused_from = low if refused_from is None else min(refused_from, low)
                continue
            known = self.producer.partitions_for(topic)
            if known and partition >= 0 and partition not in known:
                self._fail_entries(s, topic, partition, firsts, counts, values, _UNKNOWN_TOPIC_OR_PARTITION,
                                   failed)
                taken.append((firsts, counts))
                continue
            # A session with nothing in flight takes any one group (as the engine's empty
            # queue does): one over the cap would be refused again at every replay.
            if s.inflight_msgs and s.inflight_msgs + n > self.cfg.max_inflight_per_session:
                why = (f"this session has {s.inflight_msgs} messages in flight "
                       "([ipc] max_inflight_per_session)")
            else:
                token = _AsyncToken(s, firsts, counts, values)
                if keys is None:
                    keys = [None] * n
                sub = Submission(sid, s.settings, topic, partition, keys, values, ts, token)
                try:
                    self.producer.submit(sub, len(firsts) > 1)
                except QueueFull as exc:
                    why = str(exc)
                except RecordTooLarge:
                    # One call's record is too large for any batch: that call fails,
                    # not the others merged with it; they are submitted without it.
                    rest = self._without_too_large(s, topic, partition, firsts, counts, keys, values, failed)
                    taken.append(rest[1])
                    if rest[0] is not None:
                        work.appendleft((topic, partition, ts, *rest[0]))
                    continue
                else:
                    s.inflight.update(zip(firsts, itertools.repeat(token)))
                    taken.append((firsts, counts))
                    s.inflight_msgs += n
                    s.sent += n
                    self._c["messages_in"] += n
                    continue
            self._rejected["queue_full"] += 1
            low = firsts[0]
            refused_from = low if refused_from is None else min(refused_from, low)
            refusal = why
            if picked and topic in picked:
                stopped.add(topic)
        # 3. Advance next_seq over what was taken.
        if refused_from is None:
            if cols:
                # Everything from next_seq up to `expected` is taken now.
                above = s.taken_above
                for first in chain_dups:
                    above.pop(first, None)
                s.next_seq = expected
                s.gap_reported = False
                while above and s.next_seq in above:
                    s.next_seq += above.pop(s.next_seq)
        else:
            for firsts, counts in taken:
                for first, count in zip(firsts, counts if counts is not None else itertools.repeat(1)):
                    self._taken(s, first, count)
        if refused_from is not None:
            s.gap_reported = True
            if self.spool is None and s.wants_room:
                self._room_waiters[sid] = s
            self._send(peer, schema.encode([schema.REJECTED, sid, refused_from, schema.E_QUEUE_FULL, refusal]), s)
        elif cols:
            self._room_waiters.pop(sid, None)      # taken after all (a replay on the shim's own timer)
        if acks:
            self._send(peer, schema.encode([schema.ACK, sid, acks]), s)
        if failed:
            self._send(peer, schema.encode([schema.FAILED, sid, failed]), s)

    # --- the spool path (docs/spool.md, "How to wire it") ---------------------------

    def _on_send_spooled(self, s: _Session, peer, sid, entries) -> list | None:
        """Take a SEND with a spool: write, then submit (or defer); ACK once durable.

        Entries are taken strictly as a prefix of the session's sequence from
        `next_seq`: the first refusal (this session's cap, a full or failed
        spool) ends what is taken, so the highest seq on disk + 1 is a correct
        `next_seq` after a crash. Returns the entries to hold when the spool is
        full under `when_full = "block"` (None otherwise).
        """
        spool = self.spool
        acks: list[int] = []
        failed: list[list] = []
        unknown: list[tuple[int, list, str, int, list]] = []
        runs: list[list] = []        # [topic, partition, entries, end_seq] contiguous, one spool entry each
        run_bytes: list[int] = []    # a bound on each run's size as a spool entry
        entry_cap = _spool_entry_cap(spool)
        record_room = self.producer.batch_cap // 2     # an entry no larger has no record too large
        expected = s.next_seq
        cap_left = self.cfg.max_inflight_per_session - s.inflight_msgs
        refused = None               # (from_seq, code, text)
        for entry in entries:
            first, n = entry[0], len(entry[5])
            if first < s.next_seq:
                self._c["duplicates"] += 1
                if first == expected:
                    expected = first + n
                token = s.inflight.get(first)
                if token is None:
                    self._finished_again(s, first, n, acks, failed)
                elif token.spool_ids is not None and \
                        token.spool_ids[token.firsts.index(first)] <= spool.durable_id:
                    acks.append(first)       # durable already; the first ACK was lost
                continue
            if first != expected:
                self._refuse_gap(s, peer, first)
                break
            topic, partition = entry[1], entry[2]
            known = self.producer.partitions_for(topic)
            if known and partition >= 0 and partition not in known:
                unknown.append((first, entry[5], topic, partition, [[0, n, _UNKNOWN_TOPIC_OR_PARTITION]]))
                expected = first + n
                continue
            size = _entry_bytes(entry)
            if size > record_room and self.producer.too_large(entry[4] or [None] * n, entry[5]):
                # A record too large for any batch: this call fails, not spooled (it would
                # fail the other calls merged into its spool entry and submission too).
                unknown.append((first, entry[5], topic, partition, [[0, n, _MESSAGE_SIZE_TOO_LARGE]]))
                expected = first + n
                continue
            if n > cap_left and (s.inflight_msgs or runs):     # nothing in flight: one entry goes over
                self._rejected["queue_full"] += 1
                refused = (first, schema.E_QUEUE_FULL, f"this session has {s.inflight_msgs} messages in "
                           "flight ([ipc] max_inflight_per_session)")
                break
            cap_left -= n
            last = runs[-1] if runs else None
            if last is not None and last[3] == first and last[0] == topic and last[1] == partition \
                    and run_bytes[-1] + size <= entry_cap:
                last[2].append(entry)
                last[3] = first + n
                run_bytes[-1] += size
            else:
                runs.append([topic, partition, [entry], first + n])
                run_bytes.append(_ENTRY_OVERHEAD + size)
            expected = first + n
        hold = None
        # One spool entry per (topic, partition) when the frame surely fits (the
        # common case: the append cost is per entry); else one per contiguous run,
        # so that whatever a refusal leaves taken is a prefix of the sequence.
        # Either way no spool entry grows past `entry_cap`: a replay after a
        # refusal packs a whole backlog into one frame, and one entry larger than
        # the spool could hold would be refused on every replay.
        if len(runs) > 1 and spool.state is _SPOOL_OPEN and spool.free_bytes >= sum(run_bytes):
            by_partition: dict[tuple, list] = {}
            latest: dict = {}
            for run, size in zip(runs, run_bytes):
                units_of = by_partition.setdefault(
                    schema.group_key(latest, run[0], run[1], len(by_partition)), [])
                if units_of and units_of[-1][0] + size - _ENTRY_OVERHEAD <= entry_cap:
                    units_of[-1][0] += size - _ENTRY_OVERHEAD
                    units_of[-1][1].append(run)
                else:
                    units_of.append([size, [run]])
            units = [unit for units_of in by_partition.values() for _, unit in units_of]
        else:
            units = [[run] for run in runs]
        stored: list[list] = []      # the runs whose spool entry was appended
        for unit in units:
            group = [e for run in unit for e in run[2]]
            if len(group) == 1:
                keys, values = group[0][4], group[0][5]
            else:
                values = [v for e in group for v in e[5]]
                keys = None if all(e[4] is None for e in group) else \
                    [k2 for e in group for k2 in (e[4] if e[4] is not None else [None] * len(e[5]))]
            try:
                entry_id = spool.append(SpoolEntry(sid, group[0][0], unit[-1][3] - 1, unit[0][0], unit[0][1],
                                                   keys, values, group[0][3], s.settings_map))
            except SpoolFull as exc:
                if spool.cfg.when_full == "block":
                    low = group[0][0]
                    hold = [e for e in entries if e[0] >= low]
                    refused = None
                    self._spool_c["blocked"] += 1
                else:
                    refused = (group[0][0], schema.E_QUEUE_FULL, f"spool full ({exc})")
                    self._rejected["spool_full"] += 1
                break
            except SpoolUnavailable as exc:
                self._spool_unavailable(exc)
                # E_QUEUE_FULL: every shim backs off and retries on it (docs/ipc-schema.md).
                refused = (group[0][0], schema.E_QUEUE_FULL, f"spool unavailable ({exc})")
                self._rejected["spool_unavailable"] += 1
                break
            except ValueError as exc:
                if len(group) > 1:
                    # Merged entries are capped well below max_bytes (_spool_entry_cap), so
                    # this means the bound is wrong: refuse from here rather than lose order.
                    log.error("ipc: %d merged entries of session %s do not fit the spool: %s",
                              len(group), s.sid.hex()[:12], exc)
                    refused = (group[0][0], schema.E_TOO_LARGE, str(exc))
                    break
                # One SEND entry larger than the whole spool can never be spooled. Refused,
                # the shim would replay it forever; it fails like a message the broker finds
                # too large (reported, logged), and what follows it is taken as usual.
                e = group[0]
                log.error("ipc: an entry of %d message(s) of session %s cannot be spooled: %s",
                          len(e[5]), s.sid.hex()[:12], exc)
                unknown.append((e[0], e[5], e[1], e[2], [[0, len(e[5]), _MESSAGE_SIZE_TOO_LARGE]]))
                self._spool_c["too_large"] += len(e[5])
                continue
            for run in unit:
                run.append(entry_id)
            stored.extend(unit)
        runs = stored
        if hold is not None:
            new_next = hold[0][0]
        elif refused is not None:
            new_next = refused[0]
        else:
            new_next = max(expected, s.next_seq)
        for first, values, topic, partition, fruns in unknown:
            if first < new_next:
                self._fail_entries(s, topic, partition, [first], [len(values)], values, fruns[0][2], failed)
        # Durability FIFO in id order; one Submission per (topic, partition).
        groups: dict[tuple, list] = {}
        durable_fifo = self._await_durable
        for run in sorted(runs, key=lambda r: r[4]):
            if durable_fifo and durable_fifo[-1][0] == run[4] and durable_fifo[-1][1] is s:
                durable_fifo[-1][2].extend(e[0] for e in run[2])
            else:
                durable_fifo.append((run[4], s, [e[0] for e in run[2]]))
        latest: dict = {}
        for run in runs:
            groups.setdefault(schema.group_key(latest, run[0], run[1], len(groups)), []).append(run)
        for (topic, partition, *_), gruns in groups.items():
            firsts, counts, ids, values, keys_parts = [], [], [], [], []
            any_keys = False
            for run in gruns:
                for e in run[2]:
                    firsts.append(e[0])
                    counts.append(len(e[5]))
                    ids.append(run[4])
                    values.extend(e[5])
                    if e[4] is not None:
                        any_keys = True
                    keys_parts.append(e)
            keys = [k2 for e in keys_parts for k2 in (e[4] if e[4] is not None else [None] * len(e[5]))] \
                if any_keys else [None] * len(values)
            token = _AsyncToken(s, firsts, counts, values, ids)
            self._submit_spooled(Submission(sid, s.settings, topic, partition, keys, values,
                                            gruns[0][2][0][3], token))
            for first in firsts:
                s.inflight[first] = token
            n = len(values)
            s.inflight_msgs += n
            s.sent += n
            self._c["messages_in"] += n
        if new_next > s.next_seq:
            s.next_seq = new_next
            s.gap_reported = False
        if refused is not None:
            # Always answered: a refusal happens on the chain from next_seq, so this frame
            # carried the entry the shim must replay from (frames after the gap are the
            # ones answered once, in the branch above).
            s.gap_reported = True
            self._send(peer, schema.encode([schema.REJECTED, sid, refused[0], refused[1], refused[2]]), s)
        if acks:
            self._send(peer, schema.encode([schema.ACK, sid, acks]), s)
        if failed:
            self._send(peer, schema.encode([schema.FAILED, sid, failed]), s)
        return hold

    def _hold(self, peer, sid, entries) -> None:
        self._held.append((peer, sid, entries))
        self._held_bytes += sum(len(v or b"") for e in entries for v in e[5])

    def _resume_held(self) -> None:
        """Under "block": take held SENDs again once the spool has room, in arrival order."""
        while self._held and not self.spool.is_full() and not self._stopping:
            peer, sid, entries = self._held.popleft()
            self._held_bytes -= sum(len(v or b"") for e in entries for v in e[5])
            s = self._sessions.get(sid)
            if s is None or s.unregistered:
                # Evicted or unregistered while held: the shim still holds these
                # entries; told so, it registers again and replays them.
                self._bad["unknown_session"] += 1
                self._error(peer, None, schema.E_UNKNOWN_SESSION,
                            "session not registered (it ended while its messages waited for spool room)",
                            sid)
                continue
            s.peer = peer
            rest = self._on_send_spooled(s, peer, sid, entries)
            if rest:
                self._held.appendleft((peer, sid, rest))
                self._held_bytes += sum(len(v or b"") for e in rest for v in e[5])
                break
        if not self._held:
            self._held_bytes = 0
        self._schedule_read()

    def _submit_spooled(self, sub: Submission) -> None:
        """Queue a spooled submission; the group commit submits it once its entry is written.

        Written first, so that whatever the broker may have received is in the
        file after a crash of the daemon (replayed, counted), never only in a
        shim's replay. A full producer queue defers it instead of refusing it
        (it is on disk already); the per-session in-flight cap bounds what waits.
        """
        self._deferred.append(sub)

    def _pump(self) -> None:
        """Feed the producer: recovered entries first (read from disk in id order), then deferred ones."""
        producer = self.producer
        while self._replay is not None or self._replay_queue:
            if not self._replay_queue:
                batch = self._replay.read(_REPLAY_BATCH)
                if not batch:
                    if self._replay.caught_up():
                        log.info("ipc: spool replay done: %d message(s) resubmitted",
                                 self._spool_c["replayed_messages"])
                        self._replay = None
                        break
                    return
                self._replay_queue.extend(batch)
            while self._replay_queue:
                entry_id, e = self._replay_queue[0]
                try:
                    settings = _settings_from_map(e.settings)
                except (TypeError, ValueError) as exc:
                    log.error("ipc: spool entry %d has unusable settings (%s); released as failed", entry_id, exc)
                    self._replay_queue.popleft()
                    self._spool_c["replay_failed"] += len(e.values)
                    self._release.append(entry_id)
                    continue
                token = _ReplayToken(entry_id, e.session_id, e.values)
                keys = e.keys if e.keys is not None else [None] * len(e.values)
                try:
                    producer.submit(Submission(e.session_id, settings, e.topic, e.partition, list(keys),
                                               list(e.values), e.timestamp_ms, token))
                except QueueFull:
                    return          # outcomes make room; on_outcomes pumps again
                self._replay_queue.popleft()
                self._spool_c["replayed_messages"] += len(e.values)
        while self._deferred:
            try:
                producer.submit(self._deferred[0])
            except QueueFull:
                return
            self._deferred.popleft()
        if self._flush_after_pump:
            sids, self._flush_after_pump = self._flush_after_pump, set()
            for sid in sids:
                producer.flush_session(sid)

    def _start_spool(self) -> None:
        """Seed sessions from the spool and start replaying what it recovered."""
        spool = self.spool
        for sid, highest in spool.recovered_sessions().items():
            if sid not in self._sessions:
                s = _Session(sid, None, b"", highest + 1, 0)
                s.unregistered = True      # known seqs, no settings: the shim must register again
                self._sessions[sid] = s
        if spool.entries_pending and spool.recovered_boundary > 1:
            self._replay = spool.cursor(spool.recovered_boundary)
            log.info("ipc: replaying %d spooled entr(ies) from %s", spool.entries_pending, spool.path)
            self._loop.call_soon(self._after_release)

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled and self._loop is not None and not self._spool_broken:
            self._commit_scheduled = True
            self._loop.call_soon(self._group_commit)

    def _group_commit(self) -> None:
        """Write what was appended/released; fsync in an executor when due; ACK what is durable."""
        self._commit_scheduled = False
        spool = self.spool
        if self._spool_broken or spool is None or self._closed:
            return
        try:
            job = spool.prepare_sync()
        except SpoolUnavailable as exc:
            self._spool_unavailable(exc)
            return
        self._ack_durable(spool.durable_id)
        if self._deferred and self._replay is None and not self._replay_queue:
            self._pump()
        if job is not None:
            self._job = job
            self._job_future = self._loop.run_in_executor(None, job.run)
            self._job_future.add_done_callback(self._job_done)
        due = spool.sync_due_in()
        if due is not None and self._sync_timer is None and self._job is None:
            self._sync_timer = self._loop.call_later(due, self._sync_timer_fired)
        if self._held:
            self._resume_held()

    def _sync_timer_fired(self) -> None:
        self._sync_timer = None
        self._schedule_commit()

    def _job_done(self, _fut) -> None:
        job, self._job = self._job, None
        self._job_future = None
        spool = self.spool
        if job is None or self._spool_broken:
            return
        try:
            durable = spool.finish_sync(job)
        except SpoolUnavailable as exc:
            self._spool_unavailable(exc)
            return
        self._ack_durable(durable)
        if spool.cfg.fsync == "always":
            if spool.written_id > spool.synced_id:
                self._schedule_commit()
        else:
            due = spool.sync_due_in()
            if due == 0:
                self._schedule_commit()
            elif due is not None and self._sync_timer is None:
                self._sync_timer = self._loop.call_later(due, self._sync_timer_fired)
        if self._held:
            self._resume_held()
        self._check_events()

    def _ack_durable(self, durable: int) -> None:
        """ACK every entry whose spool id is durable now (the shim may drop it)."""
        queue = self._await_durable
        if not queue or queue[0][0] > durable:
            return
        acks: dict[_Session, list[int]] = {}
        while queue and queue[0][0] <= durable:
            _, s, firsts = queue.popleft()
            acks.setdefault(s, []).extend(firsts)
        for s, seqs in acks.items():
            self._send(s.peer, schema.encode([schema.ACK, s.sid, seqs]), s)

    def _spool_unavailable(self, exc: Exception) -> None:
        """The spool failed (I/O error): take no more spooled messages; ack on delivery again."""
        if not self._spool_broken:
            self._spool_broken = True
            log.error("ipc: %s; new messages are refused (spool unavailable) until kafkad restarts; "
                      "messages taken so far are acknowledged when the broker has them", exc)
            # From now on an entry is acknowledged when its broker outcome arrives.
            # Entries the broker already has (no longer in flight, not failed) had
            # their outcome before that rule applied: acknowledge them now, or the
            # shim would replay them as never answered (duplicates).
            acks: dict[_Session, list[int]] = {}
            for _, s, firsts in self._await_durable:
                done = [f for f in firsts if f not in s.inflight and f not in s.recent_failed]
                if done:
                    acks.setdefault(s, []).extend(done)
            self._await_durable.clear()
            for s, seqs in acks.items():
                self._send(s.peer, schema.encode([schema.ACK, s.sid, seqs]), s)

    async def _final_commit(self) -> None:
        """At close: wait for a running fsync, then force one and ACK everything durable."""
        spool = self.spool
        try:
            if self._job_future is not None:
                await asyncio.shield(self._job_future)
                await asyncio.sleep(0)       # let _job_done run
            if self._job is None:
                job = spool.prepare_sync(force=True)
                if job is not None:
                    self._job = job
                    await self._loop.run_in_executor(None, job.run)
                    self._job = None
                    spool.finish_sync(job)
            self._ack_durable(spool.durable_id)
        except SpoolUnavailable as exc:
            self._spool_unavailable(exc)

    def _after_release(self) -> None:
        """After outcomes: release finished entries, commit, feed the producer, unblock senders."""
        if self._release:
            ids, self._release = self._release, []
            try:
                self.spool.release(ids)
            except SpoolUnavailable as exc:
                self._spool_unavailable(exc)
        self._pump()
        self._schedule_commit()

    def _refuse_gap(self, s: _Session, peer: bytes, first: int) -> None:
        """Answer a SEND whose entries start past `next_seq` (an earlier entry was not taken).

        Every such frame is answered, never dropped in silence: a shim whose
        first refusal was lost or overtaken (it re-registered while later frames
        were still on their way) would otherwise hold its messages forever while
        the daemon idles. REJECTED(from next_seq) makes it register again and
        replay from the oldest entry the daemon lacks.
        """
        self._c["gap_replies"] += 1
        if not s.gap_reported:
            s.gap_reported = True
            log.info("ipc: session %s (pid %d) sent seq %d, expected %d; asking it to replay",
                     s.sid.hex()[:12], s.pid, first, s.next_seq)
        self._send(peer, schema.encode([schema.REJECTED, s.sid, s.next_seq, schema.E_OUT_OF_ORDER,
                                        f"expected seq {s.next_seq}, got {first}"]), s)

    @staticmethod
    def _taken(s: _Session, first: int, n: int) -> None:
        """Record that entry [first, first+n) was taken; advance next_seq over what is contiguous."""
        if first == s.next_seq:
            s.next_seq = first + n
            s.gap_reported = False
            above = s.taken_above
            while above and s.next_seq in above:
                s.next_seq += above.pop(s.next_seq)
        else:
            s.taken_above[first] = n

    def _on_send_sync(self, peer, sid, req_id, topic, partition, ts, keys, values) -> None:
        s = self._session_for(peer, sid, req_id)
        if s is None:
            return
        if self._stopping:
            self._rejected["stopping"] += 1
            self._error(peer, req_id, schema.E_STOPPING, "kafkad is stopping", sid)
            return
        n = len(values)
        known = self.producer.partitions_for(topic)
        if known and partition >= 0 and partition not in known:
            self._c["messages_in"] += n
            self.producer.count_failed(topic, n, _UNKNOWN_TOPIC_OR_PARTITION)
            self._send(peer, schema.encode([schema.RESULT, req_id, partition, _UNKNOWN_TOPIC_OR_PARTITION, -1]))
            return
        token = _SyncToken(peer, req_id, s, n, partition)
        sub = Submission(sid, s.settings, topic, partition, keys if keys is not None else [None] * n,
                         values, ts, token)
        try:
            self.producer.submit(sub)
        except QueueFull as exc:
            self._rejected["queue_full"] += 1
            self._error(peer, req_id, schema.E_QUEUE_FULL, str(exc), sid)
            return
        self._sync_inflight += 1
        self._c["messages_in"] += n

    def _on_metadata(self, peer, req_id, topic) -> None:
        self._watch(topic, peer)
        parts = self.producer.partitions_for(topic)
        if parts:
            self._send(peer, schema.encode([schema.PARTITIONS, req_id, 0, sorted(parts)]))
            return
        if len(self._metadata_tasks) >= _MAX_METADATA_TASKS:
            self._error(peer, req_id, schema.E_QUEUE_FULL, "too many metadata requests waiting")
            return
        task = self._loop.create_task(self._fetch_metadata(peer, req_id, topic))
        self._metadata_tasks.add(task)
        task.add_done_callback(self._metadata_tasks.discard)

    async def _fetch_metadata(self, peer, req_id, topic) -> None:
        try:
            error, parts = await self.producer.fetch_partitions(topic, self.cfg.metadata_timeout_s)
            # No list yet, but no final answer either (no broker reachable, a leader
            # election, a topic being created): the shim may send with a negative
            # partition and the engine picks one once it knows the list.
            pick = bool(error) and not self.producer.topic_failed(topic)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ipc: metadata for %r failed: %s", topic, exc)
            error, parts, pick = 5, [], False
        self._send(peer, schema.encode([schema.PARTITIONS, req_id, error, sorted(parts), pick]))
        self._check_events()

    def _watch(self, topic: str, peer: bytes) -> None:
        """Remember that `peer` asked about `topic` (bounded; least recently asked forgotten first)."""
        peers = self._watchers.pop(topic, None)
        if peers is None:
            peers = {}
            if len(self._watchers) >= _MAX_WATCHED_TOPICS:
                del self._watchers[next(iter(self._watchers))]
        peers.pop(peer, None)
        peers[peer] = None
        if len(peers) > _MAX_WATCHERS_PER_TOPIC:
            del peers[next(iter(peers))]
        self._watchers[topic] = peers

    def on_partitions_changed(self, changes: list[tuple[str, int, list[int]]]) -> None:
        """A known topic's partition list changed: tell the peers that asked about it.

        `changes` holds (topic, error, partition ids) (BrokerProducer's
        on_partitions_changed). A peer ZeroMQ no longer knows is forgotten.
        """
        for topic, error, parts in changes:
            peers = self._watchers.get(topic)
            if not peers:
                continue
            frame = schema.encode([schema.PARTITIONS_CHANGED, topic, error, sorted(parts)])
            for peer in list(peers):
                if self._send(peer, frame) or peer in self._peer_backlog:
                    self._c["partition_changes_sent"] += 1
                else:
                    del peers[peer]         # gone: it would have to ask again anyway
            if not peers:
                del self._watchers[topic]
        self._check_events()

    def forget_topics(self, topics: list[str]) -> None:
        """The producer forgot these idle topics (metadata_max_idle_ms): drop their watchers.

        Their partition lists are no longer refreshed, so no PARTITIONS_CHANGED
        could come for them; a peer that asks again is watched again.
        """
        for topic in topics:
            self._watchers.pop(topic, None)

    def _on_unregister(self, peer, req_id, sid) -> None:
        s = self._sessions.get(sid)
        left = 0
        if s is not None:
            left = s.inflight_msgs
            s.unregistered = True
            # Forgotten now, or once its last outcome arrives and every ACK/FAILED
            # frame for it has left (a frame waiting for a full pipe needs its session).
            self._forget_if_done(s)
        self._send(peer, schema.encode([schema.UNREGISTERED, req_id, left]))

    def _forget_if_done(self, s: _Session) -> None:
        """Drop an unregistered session once nothing is in flight and nothing waits to be sent."""
        if s.unregistered and not s.inflight and not s.backlog and self._sessions.get(s.sid) is s:
            del self._sessions[s.sid]

    def _on_flush(self, peer, sid) -> None:
        """The session's producer is stopping: what it has waiting for batching goes out now.

        Frames are read in order, so every SEND the shim sent before the FLUSH
        was taken (or refused) already. With a spool, entries still waiting to
        be handed to the producer are flushed once the pump has submitted them.
        """
        s = self._session_for(peer, sid, None)
        if s is None:
            return          # ERROR(UNKNOWN_SESSION): the shim registers, replays and flushes again
        self._c["flushes"] += 1
        self.producer.flush_session(sid)
        if any(sub.session_id == sid for sub in self._deferred):
            self._flush_after_pump.add(sid)

    def _on_stats(self, peer, req_id) -> None:
        try:
            data = self.stats_provider()
            frame = msgpack.packb([schema.STATS_REPLY, req_id, data], use_bin_type=True, default=str)
        except Exception as exc:
            log.exception("ipc: the stats provider failed")
            self._error(peer, req_id, schema.E_INTERNAL, f"stats failed: {exc}")
            return
        self._send(peer, frame)

    _dispatch = {
        schema.HELLO: _on_hello,
        schema.REGISTER: _on_register,
        schema.SEND: _on_send,
        schema.SEND_SYNC: _on_send_sync,
        schema.METADATA: _on_metadata,
        schema.UNREGISTER: _on_unregister,
        schema.STATS: _on_stats,
        FLUSH: _on_flush,
        schema.SEND_GROUPS: _on_send_groups,
    }

    # --- outcomes --------------------------------------------------------------------

    def on_outcomes(self, outcomes: list[Outcome]) -> None:
        """The engine's reports: RESULT replies for sync sends, bulk ACK/FAILED for async."""
        if len(outcomes) == 1 and type(outcomes[0].token) is _SyncToken and self.spool is None:
            # a sync send's answer alone (the usual sync report): its RESULT, then the events
            self._sync_outcome(outcomes[0].token, outcomes[0])
            if self._room_waiters:
                self._offer_room()
            self._check_events()
            return
        acks: dict[_Session, list[int]] = {}
        failed: dict[_Session, list[list]] = {}
        # (session, topic, partition, error) -> the failed values, logged together below:
        # one record per message still, but not a line per submission (a producer whose
        # partitions kafkad picks makes one submission per call)
        failures: dict[tuple, list] = {}
        for o in outcomes:
            token = o.token
            if isinstance(token, _AsyncToken):
                self._async_outcome(token, o, acks, failed, failures)
            elif isinstance(token, _ReplayToken):
                self._replay_outcome(token, o)
            elif isinstance(token, _SyncToken):
                self._sync_outcome(token, o)
            else:
                log.error("ipc: an outcome with a foreign token %r", token)
        for (s, topic, partition, error), values in failures.items():
            self._log_failure(s, topic, partition, values, error)
        for s, seqs in acks.items():
            self._send(s.peer, schema.encode([schema.ACK, s.sid, seqs]), s)
        for s, entries in failed.items():
            self._send(s.peer, schema.encode([schema.FAILED, s.sid, entries]), s)
        for s in list(acks) + list(failed):
            self._forget_if_done(s)
        if self.spool is not None and not self._closed:
            self._after_release()
        if self._room_waiters:
            self._offer_room()
        self._check_events()

    def _offer_room(self) -> None:
        """ROOM to the longest-waiting session refused for a full queue, once the queue and its share have room.

        Without it a refused shim can only retry on a timer: too soon, and its
        replay (a backlog's worth of frames) is refused again; too late, and the
        queue runs dry while producers wait (4 producers, 1 KiB messages, a 32 MiB
        queue: 34-43k messages/s on the timer, 95-109k with ROOM). A shim also
        retries on its own after a second, so a lost ROOM only delays it.
        """
        if not self.producer.has_room(_ROOM_AT):
            return
        share = self.cfg.max_inflight_per_session * _ROOM_AT
        for sid, s in list(self._room_waiters.items()):
            if self._sessions.get(sid) is not s:
                del self._room_waiters[sid]         # unregistered or evicted since
            elif s.inflight_msgs <= share:
                # One session per outcome batch, the longest waiting first: its replay
                # may fill the room, and ROOM to all at once would have most of them
                # refused again, each with the frames it has in flight behind.
                del self._room_waiters[sid]
                self._c["room_sent"] += 1
                self._send(s.peer, schema.encode([schema.ROOM, sid]), s)
                return

    def _sync_outcome(self, token: _SyncToken, o: Outcome) -> None:
        """One run of a sync send; once all of it is accounted for, its RESULT."""
        if token.done == 0:
            token.base_offset = o.base_offset
        if o.error and not token.error:
            token.error = o.error
        if o.partition >= 0:
            token.partition = o.partition    # the one the engine picked, for a negative one
        token.done += o.delivered + o.failed
        if token.done >= token.count:
            self._sync_inflight -= 1
            offset = -1 if token.error else token.base_offset
            self._send(token.peer, schema.encode([schema.RESULT, token.req_id, token.partition,
                                                  token.error, offset]))

    def _replay_outcome(self, token: _ReplayToken, o: Outcome) -> None:
        """A recovered entry's run: log failures; release the entry once all of it is accounted for."""
        count = o.delivered + o.failed
        if o.failed:
            token.failed += o.failed
            self._spool_c["replay_failed"] += o.failed
            values = token.values[token.done:token.done + count]
            s = self._sessions.get(token.session_id)
            parts = self._shown(values, s.settings if s is not None and s.settings else None)
            for i, shown in enumerate(parts):
                log.error("ipc: %d spooled message(s) of session %s to %s failed with %s on replay; %s%s",
                          len(values), token.session_id.hex()[:12], where(o.topic, o.partition),
                          _error_text(o.error), shown,
                          _part_of(i, parts))
        token.done += count
        if token.done >= len(token.values):
            self._release.append(token.entry_id)

    def _async_outcome(self, token: _AsyncToken, o: Outcome, acks: dict, failed: dict,
                       failures: dict) -> None:
        """Map one run of a merged submission back onto its SEND entries; its failed
        values join `failures` for the log."""
        s = token.session
        count = o.delivered + o.failed
        if o.failed:
            failures.setdefault((s, o.topic, max(o.partition, -1), o.error), []).extend(
                token.values[token.done:token.done + count])
            if token.runs is None:
                token.runs = {}
        token.done += count
        firsts, counts, runs = token.firsts, token.counts, token.runs
        if counts is None:
            # One message per entry (a SEND_GROUPS group taken whole; never spooled):
            # the run finishes exactly `count` entries.
            i = token.entry_index
            token.entry_index = i + count
            seqs = firsts[i:i + count]
            pop = s.inflight.pop
            for first in seqs:
                pop(first, None)
            s.inflight_msgs -= count
            if o.failed:
                s.failed += count
                error = o.error
                failed_of = failed.setdefault(s, [])
                for first in seqs:
                    entry_runs = [[0, 1, error]]
                    self._remember_failed(s, first, entry_runs)
                    failed_of.append([first, entry_runs])
            else:
                s.delivered += count
                done_acks = acks.get(s)
                if done_acks is None:
                    acks[s] = seqs
                else:
                    done_acks += seqs
            return
        done_acks = None
        while count and token.entry_index < len(firsts):
            i = token.entry_index
            n = counts[i]
            take = min(count, n - token.entry_done)
            if o.failed:
                runs.setdefault(i, []).append([token.entry_done, take, o.error])
            token.entry_done += take
            count -= take
            if token.entry_done < n:
                continue
            token.entry_index = i + 1
            token.entry_done = 0
            first = firsts[i]
            s.inflight.pop(first, None)
            s.inflight_msgs -= n
            spool_ids = token.spool_ids
            if spool_ids is not None and (i + 1 == len(firsts) or spool_ids[i + 1] != spool_ids[i]):
                self._release.append(spool_ids[i])
            entry_runs = runs.get(i) if runs else None
            if entry_runs:
                bad = sum(r[1] for r in entry_runs)
                s.failed += bad
                s.delivered += n - bad
                self._remember_failed(s, first, entry_runs)
                failed.setdefault(s, []).append([first, entry_runs])
            else:
                s.delivered += n
                if spool_ids is not None and not self._spool_broken:
                    continue        # acknowledged when it became durable
                if done_acks is None:
                    done_acks = acks.setdefault(s, [])
                done_acks.append(first)

    def _fail_entries(self, s: _Session, topic: str, partition: int, firsts: list, counts: list | None,
                      values: list, code: int, failed: list) -> None:
        """Fail these SEND entries here (they never reach the producer): logged,
        remembered for replays, reported in `failed`, counted with the engine's failures."""
        i = 0
        for first, count in zip(firsts, counts if counts is not None else itertools.repeat(1)):
            runs = [[0, count, code]]
            self._log_failure(s, topic, partition, values[i:i + count], code)
            self._remember_failed(s, first, runs)
            failed.append([first, runs])
            i += count
        s.failed += len(values)
        self._c["messages_in"] += len(values)
        self.producer.count_failed(topic, len(values), code)

    def _without_too_large(self, s: _Session, topic: str, partition: int, firsts: list, counts: list | None,
                           keys: list, values: list, failed: list) -> tuple:
        """Split a merged group the producer refused with RecordTooLarge: the entries
        holding a record too large fail here; returns ((firsts, counts, keys, values)
        of the others, or None when none is left) and (firsts, counts) of those failed."""
        keep: tuple[list, list, list, list] = ([], [], [], [])
        bad_firsts: list[int] = []
        bad_counts: list[int] = []
        i = 0
        for first, count in zip(firsts, counts if counts is not None else itertools.repeat(1)):
            k, v = keys[i:i + count], values[i:i + count]
            i += count
            if self.producer.too_large(k, v):
                self._fail_entries(s, topic, partition, [first], [count], v, _MESSAGE_SIZE_TOO_LARGE, failed)
                bad_firsts.append(first)
                bad_counts.append(count)
            else:
                keep[0].append(first)
                keep[1].append(count)
                keep[2].extend(k)
                keep[3].extend(v)
        return (keep if keep[0] else None), (bad_firsts, bad_counts)

    def _remember_failed(self, s: _Session, first: int, runs: list) -> None:
        s.recent_failed[first] = runs
        if len(s.recent_failed) > s.failed_memory:
            old, _ = s.recent_failed.popitem(last=False)
            s.forgotten_hw = max(s.forgotten_hw, old)

    def _finished_again(self, s: _Session, first: int, n: int, acks: list, failed: list) -> None:
        """A replay of a finished entry: re-acknowledge it, report its failure again, or, when
        its outcome may have been a failure the session no longer remembers, say so."""
        runs = s.recent_failed.get(first)
        if runs is not None:
            failed.append([first, runs])
        elif first <= s.forgotten_hw:
            self._c["forgotten"] += 1
            log.warning("ipc: session %s (pid %d) replayed seq %d, finished long ago; its outcome is no "
                        "longer known (more than %d failed entries since); reported as outcome unknown",
                        s.sid.hex()[:12], s.pid, first, s.failed_memory)
            failed.append([first, [[0, n, schema.OUTCOME_FORGOTTEN]]])
        else:
            acks.append(first)

    def _shown(self, values: list, settings: SessionSettings | None) -> list[str]:
        """The failed messages for the log, every one of them over as many bounded
        parts as it takes (kafkad.engine.describe): this is each message's record.
        Their contents only if both the daemon's [logging] log_messages_on_error and
        the session's setting allow it, else their hashes."""
        return describe_all(values, self.log_messages_on_error and settings is not None
                            and settings.log_messages_on_error)

    def _log_failure(self, s: _Session, topic: str, partition: int, values: list, error: int) -> None:
        parts = self._shown(values, s.settings)
        for i, shown in enumerate(parts):
            log.error("ipc: %d message(s) of session %s (pid %d) to %s failed with %s; %s%s",
                      len(values), s.sid.hex()[:12], s.pid, where(topic, partition), _error_text(error), shown,
                      _part_of(i, parts))

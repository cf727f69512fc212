"""The daemon's end of the shim link: a ZeroMQ ROUTER on the daemon's asyncio loop.

`IpcServer` binds the endpoint, reads every frame as untrusted input
(`client_shim.schema.decode_request` checks size, msgpack, kind and every
field), keeps the producer sessions, turns SEND/SEND_SYNC frames into
`Submission`s for `BrokerProducer.submit`, and turns the engine's `Outcome`s
back into RESULT replies (sync) or bulk ACK/FAILED frames (async).

Per session the server keeps `next_seq` (every entry below it was taken) and
the entries taken beyond it. A replayed entry that was taken is dropped (and
acknowledged again if it is already finished). An entry that does not follow
on means an earlier one was refused: it is refused as well (REJECTED once per
gap), so the shim replays from `next_seq` and per-partition order survives
refusals (queue full, this session's share exceeded, daemon stopping).

The entries of one SEND frame are merged into one `Submission` per (topic,
partition): the engine's cost is per submission, and a busy shim packs
hundreds of one-message sends into a frame.

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
import errno as _errno
import grp
import hashlib
import logging
import os
import stat
import time
from typing import Callable

import msgpack
import zmq

from client_shim import schema
from kafkad.config import IpcConfig
from kafkad.engine.types import Outcome, QueueFull, SessionSettings, Submission

log = logging.getLogger("kafkad.ipc")

_READ_BATCH = 4096                # frames per reader callback before yielding to the loop
_BAD_REPLY_BUDGET = 100           # error replies per peer before going quiet (then 1 in 1000)
_RECENT_FAILED = 1024             # finished-but-failed entries remembered per session for replays
_MAX_METADATA_TASKS = 256
_PROBE_TIMEOUT_S = 0.5


class EndpointInUse(Exception):
    """Another live daemon serves the endpoint (or the path is not ours to replace)."""


class _Session:
    __slots__ = ("sid", "settings", "peer", "next_seq", "taken_above", "inflight", "inflight_msgs",
                 "gap_reported", "recent_failed", "backlog", "unregistered", "pid", "last_seen", "sent",
                 "delivered", "failed")

    def __init__(self, sid: bytes, settings: SessionSettings, peer: bytes, next_seq: int, pid: int):
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


class _AsyncToken:
    """One Submission made of one or more SEND entries of a session (same topic and partition).

    `firsts`/`counts` describe the entries in submission order; outcomes
    arrive as runs over the submission and are mapped back onto them
    (`runs`: entry position -> failed [index, count, error] runs, only when
    something failed).
    """

    __slots__ = ("session", "firsts", "counts", "values", "done", "entry_index", "entry_done", "runs")

    def __init__(self, session: _Session, firsts: list[int], counts: list[int], values: list):
        self.session = session
        self.firsts = firsts
        self.counts = counts
        self.values = values
        self.done = 0            # messages of the submission reported so far
        self.entry_index = 0     # the entry the next reported message belongs to
        self.entry_done = 0      # messages of that entry reported so far
        self.runs: dict[int, list] | None = None


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

    def __init__(self, cfg: IpcConfig, producer, *, stats_provider: Callable[[], dict]):
        self.cfg = cfg
        self.producer = producer
        self.stats_provider = stats_provider
        self.instance_id = os.urandom(16)
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: dict[bytes, _Session] = {}
        self._stopping = False
        self._closed = False
        self._read_scheduled = False
        self._backlog_scheduled = False
        self._bound_inode: tuple[int, int] | None = None
        self._bad_by_peer: dict[bytes, int] = {}
        self._metadata_tasks: set[asyncio.Task] = set()
        self._sync_inflight = 0
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
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        # A hard cap so one message cannot exhaust memory; frames between
        # max_frame_bytes and this get an ERROR reply, bigger ones a disconnect.
        sock.setsockopt(zmq.MAXMSGSIZE, max(4 * self.cfg.max_frame_bytes, 1 << 20))
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
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._on_readable)
        self._schedule_read()
        log.info("ipc: serving %s", self.cfg.endpoint)

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

    async def close(self) -> None:
        """Stop reading, close the socket and remove the socket file we created."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._metadata_tasks):
            task.cancel()
        if self._sock is not None:
            try:
                self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
            except (zmq.ZMQError, ValueError):
                pass
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        path = _ipc_path(self.cfg.endpoint)
        if path is not None and self._bound_inode is not None:
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == self._bound_inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass

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
        }

    # --- reading ---------------------------------------------------------------------

    def _schedule_read(self) -> None:
        if not self._read_scheduled and self._sock is not None:
            self._read_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        self._read_scheduled = False
        sock = self._sock
        if sock is None:
            return
        n = 0
        try:
            while n < _READ_BATCH:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                n += 1
                self._c["frames_in"] += 1
                if len(parts) != 2:
                    self._bad_frame(parts[0], None, schema.E_MALFORMED,
                                    f"expected one frame per message, got {len(parts) - 1}")
                    continue
                self._on_frame(parts[0], parts[1])
        except zmq.ZMQError as exc:
            if self._sock is not None:
                log.error("ipc: reading the socket failed: %s", exc)
        self._check_events(force=n >= _READ_BATCH)

    def _check_events(self, force: bool = False) -> None:
        """The ZeroMQ FD is edge-triggered: after reads and sends, look for more input."""
        sock = self._sock
        if sock is None:
            return
        if force or sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
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
        try:
            sock.send_multipart([peer, frame], zmq.NOBLOCK)
        except zmq.Again:
            self._c["peer_full"] += 1
            if session is not None:
                session.backlog.append(frame)
                self._schedule_backlog()
            return False
        except zmq.ZMQError as exc:
            if exc.errno == _errno.EHOSTUNREACH:
                self._c["peer_gone"] += 1
                return False
            raise
        self._c["frames_out"] += 1
        return True

    def _schedule_backlog(self) -> None:
        if not self._backlog_scheduled and self._loop is not None:
            self._backlog_scheduled = True
            self._loop.call_later(0.02, self._flush_backlogs)

    def _flush_backlogs(self) -> None:
        self._backlog_scheduled = False
        for s in self._sessions.values():
            if s.backlog:
                frames, s.backlog = s.backlog, []
                for i, frame in enumerate(frames):
                    if not self._send(s.peer, frame):
                        s.backlog = frames[i + 1:] + s.backlog if s.backlog else frames[i:]
                        break
        self._check_events()

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
                            f"{len(self._sessions)} sessions open ([ipc] max_sessions)", sid)
                return
            s = _Session(sid, ss, peer, first_seq, settings.get("pid", 0))
            self._sessions[sid] = s
            self._c["sessions_registered"] += 1
        else:
            s.settings, s.peer = ss, peer
            s.gap_reported = False
        s.unregistered = False
        s.last_seen = time.monotonic()
        self._send(peer, schema.encode([schema.REGISTERED, req_id, sid, s.next_seq, self.instance_id]))

    def _evict_one(self) -> bool:
        """Make room by dropping the longest-idle session with nothing in flight."""
        idle = [s for s in self._sessions.values() if not s.inflight]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_seen)
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
        acks: list[int] = []
        failed: list[list] = []
        # 1. In seq order: drop what was taken before, stop at a gap.
        groups: dict[tuple[str, int], list] = {}
        expected = s.next_seq
        chain_dups: list[int] = []      # entries taken earlier that the chain of this frame passes
        for entry in entries:
            first, n = entry[0], len(entry[5])
            if first < s.next_seq or first in s.taken_above:
                self._c["duplicates"] += 1
                if first == expected:
                    expected = first + n
                    chain_dups.append(first)
                if first not in s.inflight:
                    runs = s.recent_failed.get(first)
                    if runs is not None:
                        failed.append([first, runs])
                    else:
                        acks.append(first)
                continue
            if first != expected:
                # An earlier entry was not taken: refuse from here (once per gap);
                # the shim replays everything from next_seq, in order.
                if not s.gap_reported:
                    s.gap_reported = True
                    self._send(peer, schema.encode([schema.REJECTED, sid, s.next_seq, schema.E_OUT_OF_ORDER,
                                                    f"expected seq {s.next_seq}, got {first}"]), s)
                break
            expected = first + n
            groups.setdefault((entry[1], entry[2]), []).append(entry)
        # 2. One Submission per (topic, partition): the engine's cost is per submission.
        refused_from = None
        taken: list[tuple[int, int]] = []
        for (topic, partition), group in groups.items():
            n = sum(len(e[5]) for e in group)
            known = self.producer.partitions_for(topic)
            if known and partition not in known:
                for e in group:
                    runs = [[0, len(e[5]), 3]]
                    self._log_failure(s, topic, partition, e[5], 3)
                    self._remember_failed(s, e[0], runs)
                    failed.append([e[0], runs])
                    taken.append((e[0], len(e[5])))
                continue
            if s.inflight_msgs + n > self.cfg.max_inflight_per_session:
                code, why = schema.E_QUEUE_FULL, (f"this session has {s.inflight_msgs} messages in flight "
                                                  "([ipc] max_inflight_per_session)")
            else:
                if len(group) == 1:
                    keys, values, ts = group[0][4], group[0][5], group[0][3]
                else:
                    values = [v for e in group for v in e[5]]
                    keys = None if all(e[4] is None for e in group) else \
                        [k for e in group for k in (e[4] if e[4] is not None else [None] * len(e[5]))]
                    ts = group[0][3]
                firsts = [e[0] for e in group]
                counts = [len(e[5]) for e in group]
                token = _AsyncToken(s, firsts, counts, values)
                sub = Submission(sid, s.settings, topic, partition, keys if keys is not None else [None] * n,
                                 values, ts, token)
                try:
                    self.producer.submit(sub)
                except QueueFull as exc:
                    code, why = schema.E_QUEUE_FULL, str(exc)
                else:
                    inflight = s.inflight
                    for first in firsts:
                        inflight[first] = token
                    taken.extend(zip(firsts, counts))
                    s.inflight_msgs += n
                    s.sent += n
                    self._c["messages_in"] += n
                    continue
            self._rejected["queue_full"] += 1
            low = group[0][0]
            refused_from = low if refused_from is None else min(refused_from, low)
            refusal = why
        # 3. Advance next_seq over what was taken.
        if refused_from is None:
            if groups:
                # Everything from next_seq up to `expected` is taken now.
                above = s.taken_above
                for first in chain_dups:
                    above.pop(first, None)
                s.next_seq = expected
                s.gap_reported = False
                while above and s.next_seq in above:
                    s.next_seq += above.pop(s.next_seq)
        else:
            for first, count in taken:
                self._taken(s, first, count)
        if refused_from is not None and not s.gap_reported:
            s.gap_reported = True
            self._send(peer, schema.encode([schema.REJECTED, sid, refused_from, schema.E_QUEUE_FULL, refusal]), s)
        if acks:
            self._send(peer, schema.encode([schema.ACK, sid, acks]), s)
        if failed:
            self._send(peer, schema.encode([schema.FAILED, sid, failed]), s)

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
        if known and partition not in known:
            self._send(peer, schema.encode([schema.RESULT, req_id, partition, 3, -1]))
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
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ipc: metadata for %r failed: %s", topic, exc)
            error, parts = 5, []
        self._send(peer, schema.encode([schema.PARTITIONS, req_id, error, sorted(parts)]))
        self._check_events()

    def _on_unregister(self, peer, req_id, sid) -> None:
        s = self._sessions.get(sid)
        left = 0
        if s is not None:
            left = s.inflight_msgs
            if s.inflight:
                s.unregistered = True   # forgotten once its last outcome arrives
            else:
                del self._sessions[sid]
        self._send(peer, schema.encode([schema.UNREGISTERED, req_id, left]))

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
    }

    # --- outcomes --------------------------------------------------------------------

    def on_outcomes(self, outcomes: list[Outcome]) -> None:
        """The engine's reports: RESULT replies for sync sends, bulk ACK/FAILED for async."""
        acks: dict[_Session, list[int]] = {}
        failed: dict[_Session, list[list]] = {}
        for o in outcomes:
            token = o.token
            if isinstance(token, _AsyncToken):
                self._async_outcome(token, o, acks, failed)
            elif isinstance(token, _SyncToken):
                if token.done == 0:
                    token.base_offset = o.base_offset
                if o.error and not token.error:
                    token.error = o.error
                token.done += o.delivered + o.failed
                if token.done >= token.count:
                    self._sync_inflight -= 1
                    offset = -1 if token.error else token.base_offset
                    self._send(token.peer, schema.encode([schema.RESULT, token.req_id, token.partition,
                                                          token.error, offset]))
            else:
                log.error("ipc: an outcome with a foreign token %r", token)
        for s, seqs in acks.items():
            self._send(s.peer, schema.encode([schema.ACK, s.sid, seqs]), s)
        for s, entries in failed.items():
            self._send(s.peer, schema.encode([schema.FAILED, s.sid, entries]), s)
        for s in list(acks) + list(failed):
            if s.unregistered and not s.inflight and self._sessions.get(s.sid) is s:
                del self._sessions[s.sid]
        self._check_events()

    def _async_outcome(self, token: _AsyncToken, o: Outcome, acks: dict, failed: dict) -> None:
        """Map one run of a merged submission back onto its SEND entries."""
        s = token.session
        count = o.delivered + o.failed
        if o.failed:
            self._log_failure(s, o.topic, o.partition, token.values[token.done:token.done + count], o.error)
            if token.runs is None:
                token.runs = {}
        token.done += count
        firsts, counts, runs = token.firsts, token.counts, token.runs
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
            entry_runs = runs.get(i) if runs else None
            if entry_runs:
                bad = sum(r[1] for r in entry_runs)
                s.failed += bad
                s.delivered += n - bad
                self._remember_failed(s, first, entry_runs)
                failed.setdefault(s, []).append([first, entry_runs])
            else:
                s.delivered += n
                if done_acks is None:
                    done_acks = acks.setdefault(s, [])
                done_acks.append(first)

    def _remember_failed(self, s: _Session, first: int, runs: list) -> None:
        s.recent_failed[first] = runs
        if len(s.recent_failed) > _RECENT_FAILED:
            s.recent_failed.popitem(last=False)

    def _log_failure(self, s: _Session, topic: str, partition: int, values: list, error: int) -> None:
        if s.settings.log_messages_on_error:
            shown = repr(values)
        else:
            shown = "hashes " + ", ".join(hashlib.blake2b(v or b"", digest_size=8).hexdigest() for v in values)
        log.error("ipc: %d message(s) of session %s (pid %d) to %s[%d] failed with error %d; %s",
                  len(values), s.sid.hex()[:12], s.pid, topic, partition, error, shown)

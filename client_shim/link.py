"""The link from one application process to the kafkad daemon.

Threading model (chosen for the caller's cost and for fork safety): per
process and endpoint there is one `_Link` with one background I/O thread that
alone owns the ZeroMQ context's DEALER socket (ZeroMQ sockets must not be
shared between threads). Callers never touch the socket:

- an async send appends its entry to its session's `pending` (kept until the
  daemon acknowledges it) and `unsent` (what the I/O thread still has to
  write), under the session's lock, and wakes the I/O thread through a pipe
  only when that thread is asleep. The I/O thread packs everything waiting
  into as few frames as it can (hundreds of sends per frame under load), so
  the caller pays a few microseconds and ZeroMQ sees few, large frames.
- a request (metadata, stats, register, unregister) is a `_Request` handed
  to the I/O thread; the caller waits on its event.
- a sync send takes a shorter way once the link is up: the calling thread
  sends the frame and waits for the answer itself, on a DEALER socket of its
  own (one per thread, made on the thread's first sync send, never shared),
  which saves the two thread hand-offs of the way above (about 100 us of a
  round trip). Whenever that way cannot be sure of the outcome (the session
  is not registered yet, the thread's socket has not connected yet, or the
  daemon refused the request with ERROR, so it was not taken) the request
  goes the I/O thread's way, which registers again, backs off and retries.

Connection state comes from the socket monitor (handshake succeeded /
disconnected) and IMMEDIATE=1 (nothing is queued towards a daemon that is not
there). On every handshake each session registers again and replays its
unacknowledged entries in order; the daemon drops entries it already took
(per-session sequence numbers), so a daemon restart loses nothing that is
still pending here.

Fork safety: nothing here is created at import. The registry of links is
per process: `os.register_at_fork` clears it in the child (keeping the
parent's objects referenced but unused, so the child never closes or uses
the parent's context or socket), and each session checks `os.getpid()`.
"""

from __future__ import annotations

import atexit
import collections
import errno as _errno
import importlib
import itertools
import logging
import os
import re
import select
import sys
import threading
import time
import weakref

import zmq
from zmq.utils.monitor import recv_monitor_message

from client_shim import schema
from client_shim.errors import (
    AsyncProducerQueueFull,
    IllegalStateError,
    KafkadUnavailableError,
    KafkaProtocolError,
)

log = logging.getLogger("client_shim")

DEFAULT_ENDPOINT = "ipc:///run/kafkad/kafkad.sock"
ENDPOINT_ENV = "KAFKAD_ENDPOINT"
DEFAULT_TIMEOUT_S = 5.0
# A sync send the daemon has taken waits for Kafka's answer; the daemon
# always answers (its delivery timeout fails records), this is only a backstop.
RESULT_TIMEOUT_S = 300.0
# How long a sync send's own socket waits for its answer at a time between
# checks that the connection and the link are still there.
_DIRECT_WAIT_S = 0.1
# A refusal of the same REGISTER is logged again at most this often.
_REFUSAL_LOG_EVERY_S = 60.0
# After sending async entries the I/O thread waits this long (ms) for more
# before packing the next frame, instead of sleeping until woken per send.
# 3 ms rather than 1: a third of the wake-ups (each a poll, a GIL hand-over and
# contention for the session lock with the callers) for the same messages, in
# bigger frames that cost the daemon less per message; about 10% less worker
# CPU per message at 4 workers. Sync requests still wake the thread at once.
_LINGER_MS = 3
# Frames waiting for the socket (its high-water mark reached) before the I/O
# thread stops packing more; what is not packed stays in the sessions.
_OUTBOX_FRAMES = 64
# Frames ZeroMQ may queue towards the daemon. A frame is a copy of entries the
# session also holds (for replay), so while the daemon is busy (it takes in
# only 8 frames per connection) a deep queue would hold the backlog twice:
# 10,000 frames did. A backlog packs frames full (256 KiB), and 16 of them
# hold tens of milliseconds of the daemon's fastest intake: far more than the
# I/O thread's retry interval when the socket is full (5 ms).
_SNDHWM = 16
_REPLAY_BACKOFF_MIN_S = 0.01
_REPLAY_BACKOFF_MAX_S = 1.0
# After REJECTED(QUEUE_FULL) from a daemon that sends ROOM: how long to wait for it
# before replaying anyway (a ROOM lost with a full pipe, or a daemon reloaded with
# larger caps, which sends none).
_ROOM_WAIT_MAX_S = 1.0
# Topics whose partition lists one process keeps. Past it the longest-cached
# list is dropped (asked of the daemon again when next used), so a worker that
# writes to ever new topics keeps bounded memory and asks a bounded number of
# refreshes on every reconnect (the daemon remembers 4096 topics' askers).
MAX_CACHED_TOPICS = 4096
# While kafkad picks a topic's partitions (it knows no list yet), a producer asks
# it for the list again at most this often, without waiting for the answer.
PICK_RECHECK_S = 1.0
_MESSAGE_SIZE_TOO_LARGE = 10      # Kafka's MESSAGE_TOO_LARGE: how an entry the daemon can never take fails
_NOBLOCK = int(zmq.NOBLOCK)       # a plain int: pyzmq's enum flags cost Python calls per use
_CONNECT_RETRY_MIN_S = 0.1        # the I/O thread's retries while ZeroMQ refuses to connect
_CONNECT_RETRY_MAX_S = 1.0


# A Unix socket path holds 107 bytes (sun_path is 108 with its NUL; an abstract
# name's '@' counts as one); ZeroMQ refuses a longer one with ENAMETOOLONG.
_IPC_PATH_MAX = 107
# host:port. The host is checked only for what cannot be one to connect to
# (empty, blanks, a colon outside brackets, the bind-only '*'): names with '_',
# a trailing dot or an IPv6 zone are ZeroMQ's to resolve, and worked before
# this check existed.
_TCP_ADDRESS = re.compile(r"(?:\[([^\]\s]+)\]|([^\s:/\[\]*]+)):([0-9]+)")


def resolve_endpoint(endpoint: str | None) -> str:
    """`endpoint`, or the default; ValueError naming the problem if it cannot work.

    Checked here, at construction, because ZeroMQ reports a bad endpoint only
    when the I/O thread connects, long after the caller could have been told.
    """
    source = "endpoint"
    if endpoint is None:
        endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        if os.environ.get(ENDPOINT_ENV):
            source = f"endpoint (from ${ENDPOINT_ENV})"
    problem = _endpoint_problem(endpoint)
    if problem:
        raise ValueError(f"{source} {endpoint!r}: {problem}")
    return endpoint


def _endpoint_problem(endpoint) -> str | None:
    if not isinstance(endpoint, str):
        return "must be a str"
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not path:
            return "an ipc:// endpoint needs a socket path, as in 'ipc:///run/kafkad/kafkad.sock'"
        if path == "@":
            return "an abstract ipc:// endpoint needs a name after '@'"
        size = len(os.fsencode(path))
        if size > _IPC_PATH_MAX:
            return (f"the ipc:// path is {size} bytes; a Unix socket path holds at most "
                    f"{_IPC_PATH_MAX} (choose a shorter one)")
        return None
    if endpoint.startswith("tcp://"):
        m = _TCP_ADDRESS.fullmatch(endpoint[len("tcp://"):])
        if m is None:
            return "a tcp:// endpoint is host:port, as in 'tcp://127.0.0.1:9100' (IPv6: 'tcp://[::1]:9100')"
        if not 1 <= int(m.group(3)) <= 65535:
            return f"port must be 1..65535, not {m.group(3)}"
        return None
    return ("kafkad serves ipc:// or tcp:// endpoints, as in 'ipc:///run/kafkad/kafkad.sock' or "
            "'tcp://127.0.0.1:9100'")


class _Done:
    """A one-shot flag for one waiting thread: a bare lock, cheaper than threading.Event."""

    __slots__ = ("_lock",)

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass                 # already set

    def wait(self, timeout: float) -> bool:
        if self._lock.acquire(timeout=max(timeout, 0.0)):
            self._lock.release()
            return True
        return False


class _Request:
    """One request/reply exchange with the daemon, waited on by a caller thread."""

    __slots__ = ("req_id", "frame", "session", "event", "reply", "error", "sent",
                 "cancelled", "retry_at", "why_waiting")

    def __init__(self, req_id: int, frame: bytes, session: "_Session | None"):
        self.req_id = req_id
        self.frame = frame
        self.session = session
        self.event = _Done()
        self.reply: list | None = None
        self.error: BaseException | None = None
        self.sent = False
        self.cancelled = False
        self.retry_at = 0.0
        self.why_waiting = "the daemon is not connected"


# An async entry, the messages of one send_messages call, is one flat tuple:
# (first_seq, topic, partition, ts_ms, key, value, value, ...), the values from
# index _V on, every message with the call's key (bytes or None). A tuple of
# ints, strs, bytes and None is untracked by the garbage collector at its first
# (young) collection, so the up to async_queue_maxsize unacknowledged entries of
# a session never reach the oldest generation. As lists (an entry holding its
# values list) they did, and the full collections, each visiting every pending
# entry, cost a worker sending flat out about 1 us of its calling thread per
# message (docs/performance.md, "Where throughput is bound").
_V = 5


class _Session:
    """One producer's session in this process: its settings and unacknowledged entries."""

    def __init__(self, link: "_Link", settings: dict, *, maxsize: int, put_timeout: float,
                 log_messages: bool, label: str):
        self.link = link
        self.session_id = os.urandom(schema.SESSION_ID_LEN)
        self.settings = settings
        self.maxsize = maxsize
        self.put_timeout = put_timeout
        self.log_messages = log_messages
        self.label = label
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)   # waited on when the bound is reached
        self.drained = threading.Condition(self.lock)  # waited on by stop()
        self.next_seq = 0
        self.pending: dict[int, tuple] = {}            # first_seq -> entry, in seq order
        self.unsent: collections.deque = collections.deque()
        self.unacked = 0
        # I/O-thread state
        self.registered = False     # REGISTERED seen on the current connection
        self.register_sent = False
        self.register_rid: int | None = None    # the REGISTER whose REGISTERED (re)starts sending
        self.hold_until = 0.0       # replay back-off after a REJECTED
        # the next accepted REGISTERED replays every pending entry, not just from its
        # next_seq: set on (re)connect and for a session the daemon does not know,
        # cleared only there, so a late refusal read from the old connection cannot
        # narrow that replay (the acknowledgements the old connection lost)
        self.full_replay = True
        self.flushing = False       # its producer is stopping: ask the daemon not to hold its messages
        self.flush_due = False      # a FLUSH is to follow the entries sent so far
        self.backoff = _REPLAY_BACKOFF_MIN_S
        self.awaiting_room = None   # after REJECTED(QUEUE_FULL): its text, until ROOM (or the wait ends)
        self.paused = False         # the daemon is stopping: wait for the next one
        self.closed = False
        self.failed_messages = 0
        # Whether the daemon's session may lack entries this process already settled:
        # the instance id of the daemon that last answered REGISTERED for this id, and
        # whether a daemon since said it does not know the session (E_UNKNOWN_SESSION).
        self.daemon_instance: bytes | None = None
        self.daemon_forgot = False
        self.refused: str | None = None     # the daemon's last refusal of its REGISTER
        # The error for calls while this daemon refuses the settings for good (until a reconnect).
        self.refused_for_good: BaseException | None = None
        self.refused_logged_at = -_REFUSAL_LOG_EVERY_S

    # --- caller side --------------------------------------------------------

    def send_async(self, topic: str, partition: int, key: bytes | None, values) -> None:
        """Queue one send_messages call's `values` (a tuple or list), all with `key`."""
        n = len(values)
        ts = time.time_ns() // 1_000_000
        # acquire/release rather than `with`: half the cost (about 80 ns) on the
        # caller's hottest path.
        lock = self.lock
        lock.acquire()
        try:
            # Checked under the lock that stop() takes to collect what is left: an entry
            # is either in that collection (delivered or reported by stop()) or refused
            # here, never put into a session the I/O thread no longer sends.
            if self.closed:
                raise self._stopped_error(n, topic, partition)
            if self.maxsize and self.unacked + n > self.maxsize:
                self._wait_for_space(n, values)
                if self.closed:
                    raise self._stopped_error(n, topic, partition)
            seq = self.next_seq
            self.next_seq = seq + n
            # (A one-message entry without the unpacking: about 70 ns less per call.)
            self.pending[seq] = entry = (seq, topic, partition, ts, key, values[0]) if n == 1 else \
                (seq, topic, partition, ts, key, *values)
            self.unsent.append(entry)
            self.unacked += n
        finally:
            lock.release()
        if self.link.sleeping:
            self.link.wake()

    def _stopped_error(self, n: int, topic: str, partition: int) -> IllegalStateError:
        return IllegalStateError(f"{self.label} is stopped: {n} message(s) to {topic}[{partition}] "
                                 "were not sent")

    def _wait_for_space(self, n: int, values: list) -> None:
        if n > self.maxsize:
            raise AsyncProducerQueueFull(list(values), f"{n} messages exceed async_queue_maxsize={self.maxsize}")
        if self.put_timeout > 0:
            deadline = time.monotonic() + self.put_timeout
            while self.unacked + n > self.maxsize:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    break
                self.space.wait(left)
        if self.unacked + n > self.maxsize and not self.closed:
            raise AsyncProducerQueueFull(
                list(values), f"{self.unacked} messages not yet acknowledged by kafkad "
                f"(async_queue_maxsize={self.maxsize}, async_queue_put_timeout={self.put_timeout})")

    def wait_drained(self, timeout: float, *, close: bool = False) -> list[tuple]:
        """Wait until every entry is acknowledged or `timeout` passes; return what is left.

        With `close` (stop()), the session refuses new entries from the moment the
        result is taken, under the same lock, so no send slips in after it unseen.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self.lock:
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.drained.wait(left)
            if close:
                self.closed = True
                self.space.notify_all()     # a sender waiting for room is refused at once
            return list(self.pending.values())

    # --- I/O-thread side ------------------------------------------------------

    def settle(self, first_seqs) -> int:
        """Entries done (acknowledged, or failed and already reported): forget them; return their size."""
        freed = 0
        with self.lock:
            for seq in first_seqs:
                entry = self.pending.pop(seq, None)
                if entry is not None:
                    freed += len(entry) - _V
            self.unacked -= freed
            if freed:
                self.space.notify_all()
                if not self.pending:
                    self.drained.notify_all()
        return freed

    def missing_from(self, next_seq: int) -> bool:
        """True if an entry at or after `next_seq` (what the daemon waits for) is no longer held here."""
        with self.lock:
            expected = next_seq
            for seq, entry in self.pending.items():
                if seq + len(entry) - _V <= expected:
                    continue            # taken by the daemon already
                if seq > expected:
                    return True
                expected = seq + len(entry) - _V
            return expected < self.next_seq      # settled entries after the last one held

    def lacks(self, seq: int) -> bool:
        """True if entry `seq` was handed out but is no longer held (it was settled)."""
        with self.lock:
            if seq >= self.next_seq:
                return False
            for first, entry in self.pending.items():
                if first <= seq < first + len(entry) - _V:
                    return False
            return True

    def renumber(self) -> bytes:
        """Continue as a new session: a new id, the pending entries numbered 0, 1, ... in order.

        Returns the old id. Frames already packed keep the old id and numbers,
        so nothing the daemon answers for them can settle a renumbered entry.
        """
        with self.lock:
            old = self.session_id
            self.session_id = os.urandom(schema.SESSION_ID_LEN)
            pending: dict[int, tuple] = {}
            seq = 0
            for entry in self.pending.values():
                pending[seq] = (seq,) + entry[1:]
                seq += len(entry) - _V
            self.pending = pending
            self.next_seq = seq
            self.unsent = collections.deque()
            self.full_replay = True
            self.daemon_instance = None     # no daemon knows the new id yet
            self.daemon_forgot = False
        return old

    def hold(self, delay: float) -> None:
        """Register again (and replay) no sooner than `delay` seconds from now."""
        self.hold_until = max(self.hold_until, time.monotonic() + delay)

    def rebuild_unsent(self, from_seq: int | None) -> None:
        with self.lock:
            self.unsent = collections.deque(
                e for s, e in self.pending.items() if from_seq is None or s >= from_seq)


def _groups_frame(session_id: bytes, unsent: collections.deque) -> tuple[bytes, int]:
    """A SEND_GROUPS frame of the oldest unsent entries (up to about TARGET_FRAME_BYTES), and
    how many entries it holds.

    The entries become columns per (topic, partition), in seq order: the firsts,
    the values one after the other, the counts only when an entry holds more than
    one message, the keys only when one is set. The group's timestamp is its first
    entry's (the daemon stamps a merged submission with one time either way).
    """
    groups: dict = {}
    latest: dict = {}       # schema.group_key's, once a topic has a negative partition
    size = taken = 0
    target = schema.TARGET_FRAME_BYTES
    popleft = unsent.popleft
    while unsent and size < target:
        e = popleft()
        taken += 1
        n = len(e) - _V
        key = e[4]
        gk = (e[1], e[2]) if e[2] >= 0 and not latest else schema.group_key(latest, e[1], e[2], len(groups))
        g = groups.get(gk)
        if g is None:
            topic = e[1]
            g = groups[gk] = [topic, e[2], e[3], [e[0]], None if n == 1 else [n],
                              None if key is None else [key] * n, list(e[_V:])]
            size += 32 + len(topic)
        else:
            g[3].append(e[0])
            if n == 1 and g[4] is None:
                g[6].append(e[_V])
            else:
                if g[4] is None:
                    g[4] = [1] * (len(g[3]) - 1)
                g[4].append(n)
                g[6].extend(e[_V:])
            if key is not None:
                if g[5] is None:
                    g[5] = [None] * (len(g[6]) - n)
                g[5].extend([key] * n)
            elif g[5] is not None:
                g[5].extend([None] * n)
        if n == 1:
            v = e[_V]
            size += 16 if v is None else 16 + len(v)
        else:
            size += 16 + 6 * n + sum(len(v) for v in e[_V:] if v is not None)
        if key is not None:
            size += n * len(key)
    return schema.encode([schema.SEND_GROUPS, session_id, list(groups.values())]), taken


class _DirectSocket:
    """One thread's own DEALER socket for its sync sends; closed when the thread is gone."""

    __slots__ = ("sock", "lock", "__weakref__")

    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()      # held by the owning thread while it uses the socket
        weakref.finalize(self, _close_socket_in, sock, os.getpid())


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A DEALER socket to the daemon with the options both of this module's sockets need."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if schema.ipv6_endpoint(endpoint):
        sock.setsockopt(zmq.IPV6, 1)    # ZeroMQ connects over IPv4 only without it
    # Nothing is queued towards a daemon that is not there (the first send fails
    # until the handshake is done; the caller then takes the other way or waits).
    sock.setsockopt(zmq.IMMEDIATE, 1)
    # Unbounded receive queue: ACK/FAILED/RESULT frames are small and bounded by
    # what this process has sent. A bounded queue that is full when the daemon
    # closes loses answers it already gave, and their entries are then replayed
    # (duplicates after a clean restart).
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    return sock


def _close_socket_in(sock, pid: int) -> None:
    # After fork() a child drops the parent's other threads (and their sockets):
    # a socket made in the parent is never closed, nor used, in a child.
    if os.getpid() == pid:
        sock.close(0)


class _Link:
    """The per-process connection to one endpoint: one socket, one I/O thread."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.pid = os.getpid()
        self.sessions: dict[bytes, _Session] = {}
        self.requests: dict[int, _Request] = {}
        self.incoming: collections.deque = collections.deque()   # new _Request objects
        self.ops: collections.deque = collections.deque()        # callables run on the I/O thread
        # Sessions whose producers were garbage-collected without stop(), marked at once
        # by the finalizer (in whatever thread collected the producer), not through `ops`:
        # _at_exit must find them even if the I/O thread never got to its queued ops.
        self.orphans: set[_Session] = set()
        self.req_ids = itertools.count(1)
        self.lock = threading.Lock()
        self.sleeping = False
        self.connected = False
        self.instance_id: bytes | None = None
        self.features: frozenset = frozenset()   # what the daemon announced in REGISTERED
        # topic -> sorted partition ids, as the daemon last said (METADATA, PARTITIONS_CHANGED).
        # Replaced, never changed in place: a producer sees a new list object when it changed.
        self.partition_cache: dict[str, list[int]] = {}
        self._cache_lock = threading.Lock()      # cache_partitions runs in callers and the I/O thread
        self._refreshes: dict[int, str] = {}     # req_id -> topic of a METADATA nobody waits for
        # topic -> when to ask again: kafkad said it picks the topic's partitions
        # (PARTITIONS with `pick`), so sends carry a negative partition meanwhile
        self._picking: dict[str, float] = {}
        self._unknown_kinds: set = set()
        self.stats = collections.Counter()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.broken: str | None = None     # why the link cannot connect now, or why its I/O thread ended
        self._rfd, self._wfd = -1, -1
        self._ctx: zmq.Context | None = None
        self._direct = threading.local()                 # .sock: this thread's own _DirectSocket
        self._direct_all: weakref.WeakSet = weakref.WeakSet()   # closed at shutdown()

    # --- caller side ----------------------------------------------------------

    def ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self.lock:
            if self._thread is not None:
                return
            self._rfd, self._wfd = os.pipe()
            os.set_blocking(self._rfd, False)
            os.set_blocking(self._wfd, False)
            self._ctx = zmq.Context()
            t = threading.Thread(target=self._run, name=f"kafkad-shim-io[{self.endpoint}]", daemon=True)
            self._thread = t
            t.start()

    def wake(self) -> None:
        self.sleeping = False
        try:
            os.write(self._wfd, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the thread is awake anyway

    def call(self, fn) -> None:
        """Run `fn()` on the I/O thread (used for session bookkeeping)."""
        self.ensure_started()
        self.ops.append(fn)
        self.wake()

    def add_session(self, session: _Session) -> None:
        self.call(lambda: self._add_session(session))

    def request_flush(self, session: _Session) -> None:
        """The session's producer is stopping: ask the daemon to send what it holds of it now.

        The daemon otherwise holds a session's messages until `batch_send_every_n`
        of them are queued or the oldest has waited `batch_send_every_t`. A FLUSH
        frame follows the session's SEND frames on the link (so it covers every
        entry sent before it) and follows again after any replay. It is sent only
        to a daemon that announced "flush" in REGISTERED (otherwise stop() waits
        as before), and never once the session is closed (see _send_entries).
        """
        if self._thread is not None and os.getpid() == self.pid and not self._stop:
            self.call(lambda: self._start_flush(session))

    @staticmethod
    def _start_flush(session: _Session) -> None:
        session.flushing = True
        session.flush_due = True

    def request_direct(self, frame_fn, session: _Session, timeout: float, result_timeout: float) -> list:
        """`request`, sent and answered in the calling thread on its own socket when possible.

        Only for requests whose order against the I/O thread's frames does not
        matter: a sync producer's SEND_SYNC (its session sends nothing else on
        the I/O thread's socket once registered).
        """
        # current_pid(): the fork hook's pid (get_link installed it), not a system call.
        if not self.connected or not session.registered or self._stop or current_pid() != self.pid:
            return self.request(frame_fn, session, timeout, result_timeout)
        d = getattr(self._direct, "sock", None) or self._direct_socket()
        if d is None:
            return self.request(frame_fn, session, timeout, result_timeout)
        rid = next(self.req_ids)
        frame = frame_fn(rid)
        disconnects = self.stats.get("disconnects", 0)     # (a Counter's [] calls __missing__)
        with d.lock:
            if d.sock.closed:
                return self.request(frame_fn, session, timeout, result_timeout)
            try:
                d.sock.send(frame, _NOBLOCK)
            except zmq.Again:           # IMMEDIATE: this thread's socket has not connected yet
                return self.request(frame_fn, session, timeout, result_timeout)
            deadline = time.monotonic() + result_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise KafkadUnavailableError(
                        f"kafkad at {self.endpoint} took the request but did not answer in time")
                # A blocking recv with a timeout, not poll() then recv(): one
                # call less on the path of every sync send.
                try:
                    if left < _DIRECT_WAIT_S:   # the last wait before the deadline
                        d.sock.setsockopt(zmq.RCVTIMEO, max(1, int(left * 1000)))
                        try:
                            raw = d.sock.recv()
                        finally:
                            d.sock.setsockopt(zmq.RCVTIMEO, int(_DIRECT_WAIT_S * 1000))
                    else:
                        raw = d.sock.recv()
                except zmq.Again:
                    raw = None
                if raw is not None:
                    try:
                        reply = schema.decode_reply(raw)
                    except schema.SchemaError as exc:
                        log.warning("ignoring a malformed reply from kafkad: %s", exc)
                        continue
                    if len(reply) < 2 or reply[1] != rid:
                        continue            # the late answer to an earlier request that timed out
                    if reply[0] != schema.ERROR:
                        self.stats["direct_requests"] += 1
                        return reply
                    break                   # refused, so not taken: the I/O thread's way retries it
                if self.stats.get("disconnects", 0) != disconnects or self._stop:
                    raise KafkadUnavailableError(
                        f"the connection to kafkad at {self.endpoint} was lost before it answered; "
                        "the message may or may not have been delivered")
        return self.request(frame_fn, session, timeout, result_timeout)

    def _direct_socket(self) -> "_DirectSocket | None":
        d = getattr(self._direct, "sock", None)
        if d is not None:
            return d
        with self.lock:
            if self._stop or self._ctx is None:
                return None
            sock = _dealer(self._ctx, self.endpoint)
            # request_direct waits in recv() this long at a time, then checks for
            # a lost connection or a stopping link
            sock.setsockopt(zmq.RCVTIMEO, int(_DIRECT_WAIT_S * 1000))
            sock.connect(self.endpoint)
            d = _DirectSocket(sock)
            self._direct_all.add(d)
        self._direct.sock = d
        return d

    def request(self, frame_fn, session: _Session | None, timeout: float,
                result_timeout: float | None = None) -> list:
        """Send a request frame and wait for its reply (the reply frame as a list).

        `frame_fn(req_id) -> bytes`. Raises KafkadUnavailableError when the
        daemon does not take the request within `timeout` seconds, or does not
        answer within `result_timeout` after taking it (default: `timeout`).
        """
        self.ensure_started()
        broken = self.broken
        if broken is not None:          # ZeroMQ refuses the endpoint now, or the I/O thread ended
            raise KafkadUnavailableError(broken)
        req = _Request(next(self.req_ids), b"", session)
        req.frame = frame_fn(req.req_id)
        self.incoming.append(req)
        self.wake()
        if self.broken is not None and req in self.incoming:
            # Broke meanwhile, after the I/O thread's last look at `incoming`: take it back.
            try:
                self.incoming.remove(req)
            except ValueError:
                pass                    # the I/O thread took it after all: its answer decides
            else:
                raise KafkadUnavailableError(self.broken)
        start = time.monotonic()
        if not req.event.wait(timeout):
            if not req.sent:
                req.cancelled = True
                raise KafkadUnavailableError(
                    f"kafkad at {self.endpoint} did not take the request within {timeout:g}s "
                    f"({req.why_waiting})")
            left = (result_timeout if result_timeout is not None else timeout) - (time.monotonic() - start)
            if left <= 0 or not req.event.wait(left):
                req.cancelled = True
                raise KafkadUnavailableError(
                    f"kafkad at {self.endpoint} took the request but did not answer in time")
        if req.error is not None:
            raise req.error
        return req.reply

    # --- I/O thread --------------------------------------------------------------

    def _run(self) -> None:
        opened = self._open_retrying()
        if opened is None:
            return                      # stopped while ZeroMQ kept refusing
        sock, mon = opened
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(mon, zmq.POLLIN)
        poller.register(self._rfd, zmq.POLLIN)
        self._sock = sock
        # (frame, request or None, the session whose entries it carries or None)
        self._outbox: collections.deque = collections.deque()
        self._waiting: list[_Request] = []                       # not sendable yet
        try:
            while not self._stop:
                sent_before = self.stats["entries_sent"]
                busy = self._step(sock, mon)
                if self.stats["entries_sent"] != sent_before and not busy:
                    # Async sends are arriving: linger a moment without asking
                    # callers to wake us (no pipe write per send), so the next
                    # frame carries many entries. Requests still wake us at once.
                    events = dict(poller.poll(_LINGER_MS))
                    if self._rfd in events:
                        self._drain_wake_pipe()
                    continue
                self.sleeping = True
                if self.incoming or self.ops or self._has_unsent():
                    self.sleeping = False
                    continue
                timeout = self._poll_timeout() if not busy else 0
                events = dict(poller.poll(timeout))
                self.sleeping = False
                if self._rfd in events:
                    self._drain_wake_pipe()
        except Exception:
            log.exception("the shim's I/O thread for %s failed", self.endpoint)
            self._give_up("the client_shim I/O thread failed; see the log", logged=True)
        finally:
            poller.unregister(sock)
            sock.disable_monitor()
            mon.close(0)
            sock.close(0)

    def _open(self) -> tuple:
        """The I/O thread's DEALER socket, connecting, and its monitor socket.

        If ZeroMQ refuses, what was made is closed (an open socket would keep the
        context's term() at exit waiting forever) and the ZMQError raised.
        """
        sock = _dealer(self._ctx, self.endpoint)
        mon = None
        try:
            sock.setsockopt(zmq.SNDHWM, _SNDHWM)
            mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            sock.connect(self.endpoint)
        except zmq.ZMQError:
            if mon is not None:
                sock.disable_monitor()
                mon.close(0)
            sock.close(0)
            raise
        return sock, mon

    def _open_retrying(self) -> tuple | None:
        """`_open`, tried again until it works or the link stops.

        resolve_endpoint refuses the endpoints ZeroMQ is known to refuse; this is
        for the rest, above all no file descriptors left (EMFILE), which passes.
        No traceback: the reason is logged once, kept in `broken` and given to
        every request meanwhile (request() refuses new ones at once with it); async
        entries wait in their sessions as for a daemon that is down.
        """
        delay = _CONNECT_RETRY_MIN_S
        while True:
            try:
                opened = self._open()
            except zmq.ZMQError as exc:
                reason = f"cannot connect to kafkad at {self.endpoint}: {exc}"
                if reason != self.broken:
                    log.error("%s; trying again every %gs at most", reason, _CONNECT_RETRY_MAX_S)
                self.broken = reason
                self._fail_incoming(KafkadUnavailableError(reason))
            else:
                if self.broken is not None:
                    log.info("connected to kafkad at %s after all", self.endpoint)
                self.broken = None
                return opened
            if self._stop:
                return None
            select.select([self._rfd], [], [], delay)
            self._drain_wake_pipe()
            if self._stop:
                return None
            delay = min(delay * 2, _CONNECT_RETRY_MAX_S)

    def _fail_incoming(self, error: BaseException) -> None:
        while self.incoming:
            req = self.incoming.popleft()
            req.error = error
            req.event.set()

    def _give_up(self, reason: str, *, logged: bool = False) -> None:
        """The I/O thread ends: every request, waiting or still to come, fails with `reason`."""
        if not logged:
            log.error("%s; requests to it fail, and stop() reports what async producers queued", reason)
        self.broken = reason
        error = KafkadUnavailableError(reason)
        self._fail_incoming(error)      # (request() checks `broken` after queueing its own)
        self._fail_all(error)

    def _orphans_possible(self) -> bool:
        return bool(self.orphans)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass

    def _has_unsent(self) -> bool:
        if not self.connected or len(self._outbox) >= _OUTBOX_FRAMES:
            return False
        now = time.monotonic()
        for s in self.sessions.values():
            # (as _send_entries: a closed session's unsent entries never go out)
            if s.unsent and s.registered and not s.paused and not s.closed and s.hold_until <= now:
                return True
        return False

    def _poll_timeout(self) -> int:
        """Milliseconds until the next timed duty (replay back-off, request retry)."""
        now = time.monotonic()
        # A hold counts only for a session _step will register when it ends: a paused
        # session (the daemon stopping) or one whose REGISTER is out waits for a frame,
        # and a hold long past would make every poll return at once.
        due = [s.hold_until for s in self.sessions.values()
               if not s.register_sent and not s.closed and s.refused_for_good is None] if self.connected else []
        due += [r.retry_at for r in self._waiting if r.retry_at]
        if self._outbox:
            due.append(now + 0.005)
        if not due:
            return 1000
        return max(0, min(1000, int((min(due) - now) * 1000) + 1))

    def _step(self, sock, mon) -> bool:
        """One round of work; True if more work may be immediately possible."""
        while True:
            try:
                evt = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            if evt["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._on_connected()
            elif evt["event"] == zmq.EVENT_DISCONNECTED:
                self._on_disconnected()
        while self.ops:
            self.ops.popleft()()
        if self._orphans_possible():
            self._end_orphans()
        while self.incoming:
            req = self.incoming.popleft()
            if not req.cancelled:
                self.requests[req.req_id] = req
                self._waiting.append(req)
        n = 0
        while n < 10_000:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            self._on_frame(frame)
        if self.connected:
            now = time.monotonic()
            for s in self.sessions.values():
                if not s.register_sent and not s.closed and s.hold_until <= now:
                    if s.awaiting_room is not None:
                        log.warning("no room in kafkad's queue for %gs (%s); %s retries",
                                    _ROOM_WAIT_MAX_S, s.awaiting_room, s.label)
                        s.awaiting_room = None
                    self._register(s)
            self._send_waiting_requests()
            self._send_entries()
        return self._flush(sock) or n >= 10_000

    def _queue(self, frame: bytes, req: _Request | None = None, entries_of: _Session | None = None) -> None:
        self._outbox.append((frame, req, entries_of))

    def _withdraw_entries(self, s: _Session) -> None:
        """Drop the frames of `s`'s entries not yet handed to the socket (after a refusal).

        The daemon would refuse each as past the refusal's gap; the replay that
        follows the next REGISTERED sends their entries again (they stay pending).
        """
        if any(item[2] is s for item in self._outbox):
            kept = [item for item in self._outbox if item[2] is not s]
            self.stats["frames_withdrawn"] += len(self._outbox) - len(kept)
            self._outbox = collections.deque(kept)

    def _flush(self, sock) -> bool:
        while self._outbox and self.connected:
            frame, req, _ = self._outbox[0]
            if req is not None and req.cancelled:
                self._outbox.popleft()
                continue
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                return False
            except zmq.ZMQError as exc:
                if exc.errno == _errno.EHOSTUNREACH:
                    return False
                raise
            self._outbox.popleft()
            self.stats["frames_sent"] += 1
            if req is not None:
                req.sent = True
        return False

    def _add_session(self, session: _Session) -> None:
        self.sessions[session.session_id] = session
        if self.connected:
            self._register(session)

    def _register(self, session: _Session) -> None:
        with session.lock:
            first = min(session.pending) if session.pending else session.next_seq
        session.registered = False
        session.register_sent = True
        rid = next(self.req_ids)
        session.register_rid = rid
        req = _Request(rid, schema.encode([schema.REGISTER, schema.SCHEMA_VERSION, rid,
                                           session.session_id, first, session.settings]), session)
        req.sent = True
        self.requests[rid] = req
        self._queue(req.frame, None)

    def _on_connected(self) -> None:
        self.connected = True
        self.stats["connects"] += 1
        self._outbox.clear()
        for s in list(self.sessions.values()):
            s.paused = False
            s.full_replay = True
            s.refused_for_good = None       # (perhaps another daemon: it may take the settings)
            s.hold_until = 0.0
            s.backoff = _REPLAY_BACKOFF_MIN_S
            s.awaiting_room = None
            self._register(s)
        self._refresh_partitions()

    def _on_disconnected(self) -> None:
        self.connected = False
        self.stats["disconnects"] += 1
        self._outbox.clear()
        for s in self.sessions.values():
            s.registered = False
            s.register_sent = False
            s.register_rid = None
        for rid, req in list(self.requests.items()):
            kind = self._kind_of(req.frame)
            if kind == schema.REGISTER:
                del self.requests[rid]          # every session registers again on connect
            elif kind == schema.SEND_SYNC and req.sent:
                del self.requests[rid]
                req.error = KafkadUnavailableError(
                    f"the connection to kafkad at {self.endpoint} was lost before it answered; "
                    "the message may or may not have been delivered")
                req.event.set()
            else:                               # not taken yet, or harmless to ask again
                req.sent = False
                if req not in self._waiting:
                    self._waiting.append(req)

    @staticmethod
    def _kind_of(frame: bytes) -> int:
        # Every frame is a msgpack array whose first element is a positive fixint kind.
        return frame[1] if len(frame) > 1 else -1

    def _is_register(self, req: _Request) -> bool:
        return self._kind_of(req.frame) == schema.REGISTER

    def _send_waiting_requests(self) -> None:
        if not self._waiting:
            return
        now = time.monotonic()
        keep = []
        for req in self._waiting:
            if req.cancelled:
                self.requests.pop(req.req_id, None)
                continue
            s = req.session
            if s is not None and s.refused_for_good is not None:
                self.requests.pop(req.req_id, None)
                req.error = s.refused_for_good
                req.event.set()
                continue
            if req.retry_at > now or (s is not None and (not s.register_sent or s.paused)):
                keep.append(req)
                continue
            req.retry_at = 0.0
            self._queue(req.frame, req)
        self._waiting = keep

    def _send_entries(self) -> None:
        if len(self._outbox) >= _OUTBOX_FRAMES:
            return          # frames the socket refused wait here; the entries behind them stay in `unsent`
        for s in self.sessions.values():
            # A closed session's producer stopped: stop() has waited for or reported
            # every entry, and its UNREGISTER may be queued already (waiting requests
            # go out before entries in a round). Nothing of it may follow: a FLUSH
            # would be answered ERROR(UNKNOWN_SESSION), and an entry reported as not
            # delivered must not be sent after all.
            if not s.registered or s.paused or s.closed:
                continue
            unsent = s.unsent
            groups = "send_groups" in self.features
            while unsent and len(self._outbox) < _OUTBOX_FRAMES:
                if groups:
                    frame, n = _groups_frame(s.session_id, unsent)
                    self._queue(frame, None, s)
                    self.stats["entries_sent"] += n
                    if s.flushing:
                        s.flush_due = True
                    continue
                batch = []
                size = 0
                while unsent and size < schema.TARGET_FRAME_BYTES:
                    e = unsent.popleft()
                    values = list(e[_V:])
                    key = e[4]
                    batch.append([e[0], e[1], e[2], e[3], None if key is None else [key] * len(values),
                                  values])
                    size += 64 + len(e[1])
                    for v in values:
                        if v is not None:
                            size += len(v)
                    if key is not None:
                        size += len(key) * len(values)
                self._queue(schema.encode([schema.SEND, s.session_id, batch]), None, s)
                self.stats["entries_sent"] += len(batch)
                if s.flushing:
                    s.flush_due = True
            if s.flush_due and not unsent:
                kind = self._flush_kind()
                if kind is not None:
                    self._queue(schema.encode([kind, s.session_id]))
                    self.stats["flushes_sent"] += 1
                s.flush_due = False

    def _flush_kind(self) -> int | None:
        """The FLUSH kind, if the daemon announced it understands FLUSH."""
        if "flush" not in self.features:
            return None
        return schema.FLUSH

    # --- replies ----------------------------------------------------------------

    def _on_frame(self, frame: bytes) -> None:
        try:
            msg = schema.decode_reply(frame)
            kind = msg[0]
            handler = self._handlers.get(kind)
            if handler is None:
                # A newer daemon may send kinds this shim does not know (the schema's rule:
                # receivers ignore them); said once per kind, not per frame.
                if kind not in self._unknown_kinds and len(self._unknown_kinds) < 64:
                    self._unknown_kinds.add(kind)
                    log.warning("ignoring replies of unknown kind %r from kafkad", kind)
                return
            handler(self, msg)
        except (schema.SchemaError, IndexError, TypeError, ValueError) as exc:
            log.warning("ignoring a malformed reply from kafkad: %s", exc)

    def _finish(self, req_id, reply=None, error=None) -> _Request | None:
        req = self.requests.pop(req_id, None)
        if req is None:
            return None
        req.reply, req.error = reply, error
        req.event.set()
        return req

    def _h_registered(self, msg) -> None:
        _, rid, sid, next_seq, instance = msg[:5]
        self.requests.pop(rid, None)
        s = self.sessions.get(sid)
        self.instance_id = instance
        # A trailing list of feature names (appended within schema version 1).
        features = msg[5] if len(msg) > 5 else None
        self.features = frozenset(f for f in features if isinstance(f, str)) \
            if isinstance(features, list) else frozenset()
        if s is None:
            return
        if rid != s.register_rid:
            # The answer to a REGISTER that a refusal has since withdrawn: sending
            # resumes only at the REGISTERED of the REGISTER sent after the refusal's
            # back-off (or ROOM), or the back-off would not hold anything back.
            self.stats["superseded_registered"] += 1
            return
        # A daemon that knew this session all along steps over what it took beyond
        # next_seq (its taken_above): a plain replay from next_seq is right even when
        # the entries held here have holes. Only a session the daemon has just made
        # (it restarted, or evicted and forgot the session) knows nothing of them.
        daemon_session_is_new = s.daemon_forgot or s.daemon_instance != instance
        s.daemon_instance = instance
        s.daemon_forgot = False
        if daemon_session_is_new and s.missing_from(next_seq):
            # The daemon takes a new session's entries only in an unbroken run from
            # the REGISTER's first_seq, and this process no longer holds some of them:
            # acknowledged by a previous daemon (acknowledgements come per partition,
            # so what is left has holes). Those entries can never be sent again, so
            # the daemon would wait for them forever. Start over as a new session
            # whose entries are numbered without holes (late acknowledgements for the
            # old id are ignored: at worst an entry is written twice, never lost).
            self.stats["sessions_renumbered"] += 1
            old = s.renumber()
            del self.sessions[old]
            self.sessions[s.session_id] = s
            log.info("kafkad's new session for %s expects seqs this process no longer "
                     "holds (settled before the daemon restarted or forgot the session); continuing "
                     "as a new session", s.label)
            self._queue(schema.encode([schema.UNREGISTER, next(self.req_ids), old]))
            self._register(s)
            return
        s.registered = True
        s.refused = None
        s.refused_for_good = None
        s.awaiting_room = None
        # Replay, oldest first. After a (re)connect, or to a daemon that did not know
        # the session: everything unacknowledged (the daemon drops what it already
        # holds and acknowledges again what it finished: the acknowledgements the
        # old connection lost). After a refusal on this connection: from next_seq,
        # since the daemon holds everything below it and steps over what it took
        # beyond it.
        s.rebuild_unsent(None if s.full_replay else next_seq)
        s.full_replay = False

    def _h_ack(self, msg) -> None:
        s = self.sessions.get(msg[1])
        if s is not None:
            if s.settle(msg[2]):
                s.backoff = _REPLAY_BACKOFF_MIN_S    # the daemon takes messages again

    def _h_failed(self, msg) -> None:
        s = self.sessions.get(msg[1])
        if s is None:
            return
        done = []
        failures = []
        for first_seq, runs in msg[2]:
            with s.lock:
                entry = s.pending.get(first_seq)
            if entry is None:
                continue
            done.append(first_seq)
            for index, count, code in runs:
                s.failed_messages += count
                failures.append((entry, index, count, code))
                if code in (3, 6):
                    self.on_unknown_partition(entry[1])
        report_failures(s, failures)
        s.settle(done)

    def on_unknown_partition(self, topic: str) -> None:
        """A send failed for an unknown topic or partition: drop the cached partition list of `topic`.

        And stop leaving its partitions to kafkad: the next send asks again and
        waits for the answer (which raises when the topic does not exist).
        """
        with self._cache_lock:
            self.partition_cache.pop(topic, None)
            self._picking.pop(topic, None)

    def start_picking(self, topic: str) -> None:
        """kafkad answered `topic`'s METADATA with no list yet and `pick`: it picks for now."""
        with self._cache_lock:
            self._picking.pop(topic, None)
            self._picking[topic] = time.monotonic() + PICK_RECHECK_S
            while len(self._picking) > MAX_CACHED_TOPICS:
                self._picking.pop(next(iter(self._picking)), None)

    def picking(self, topic: str) -> bool:
        """Whether sends to `topic` (no cached list) leave the partition to kafkad.

        Once every PICK_RECHECK_S it also asks kafkad for the list again, in
        the background: the answer, when it has one, fills the cache and the
        next send uses it.
        """
        if topic not in self._picking:
            return False
        now = time.monotonic()
        with self._cache_lock:      # against cache_partitions on the I/O thread, and other callers
            until = self._picking.get(topic)
            if until is None or self.partition_cache.get(topic):
                return False
            ask = now >= until
            if ask:
                self._picking[topic] = now + PICK_RECHECK_S
        if ask:
            self.call(lambda: self._ask_partitions(topic))
        return True

    def _ask_partitions(self, topic: str) -> None:
        rid = next(self.req_ids)
        self._refreshes[rid] = topic
        self._queue(schema.encode([schema.METADATA, rid, topic]))

    def _set_partitions(self, topic: str, error: int, parts) -> None:
        if error or not parts:
            self.on_unknown_partition(topic)      # dropped: asked again at the next send
            return
        self.cache_partitions(topic, sorted(parts))

    def cache_partitions(self, topic: str, parts: list[int]) -> None:
        """Keep `parts` (sorted ids) as `topic`'s list, unless it is the one already held.

        A new list object only when the list changed: SimpleProducer restarts its
        cycle when it sees another object. At most MAX_CACHED_TOPICS are kept;
        the longest-cached goes first.
        """
        cache = self.partition_cache
        if self._picking:
            with self._cache_lock:
                self._picking.pop(topic, None)
        if cache.get(topic) == parts:
            return
        with self._cache_lock:
            cache.pop(topic, None)          # re-inserted last: the newest
            cache[topic] = parts
            while len(cache) > MAX_CACHED_TOPICS:
                cache.pop(next(iter(cache)), None)

    def _h_partitions_changed(self, msg) -> None:
        _, topic, error, parts = msg[:4]
        self.stats["partition_changes"] += 1
        log.info("kafkad says topic %r now has partitions %s", topic,
                 parts if not error else f"none (error {error})")
        self._set_partitions(topic, error, parts)

    def _h_partitions(self, msg) -> None:
        topic = self._refreshes.pop(msg[1], None)
        if topic is None:
            self._h_reply(msg)
        elif msg[2] == 0 and msg[3]:
            # The answer to a refresh sent on reconnect, or to a background ask while
            # kafkad picks this topic's partitions (both nobody waits for). An error
            # keeps the list held: a daemon that restarted while the brokers are down
            # answers one after its metadata timeout, and dropping the list would make
            # the next send wait for the brokers instead of queueing.
            self._set_partitions(topic, 0, msg[3])
        elif not (len(msg) > 4 and msg[4] is True) and topic in self._picking:
            # kafkad no longer offers to pick (the topic does not exist, access is
            # denied): the next send asks and waits, and raises what kafkad says.
            with self._cache_lock:
                self._picking.pop(topic, None)

    def _refresh_partitions(self) -> None:
        """After a (re)connect: ask again for every cached topic.

        The daemon may have restarted (it tells only peers that asked about a
        topic when its partitions change, and a new connection is a new peer),
        and the partitions may have changed meanwhile. Nobody waits for these
        answers: the cache keeps its list until they come.
        """
        self._refreshes.clear()
        # A new connection may be a new daemon (one that does not pick, or that has
        # the lists): the next send to each of these topics asks it again.
        with self._cache_lock:
            self._picking.clear()
        for topic in list(self.partition_cache):
            self._ask_partitions(topic)

    def _h_rejected(self, msg) -> None:
        _, sid, from_seq, code, text = msg[:5]
        s = self.sessions.get(sid)
        if s is None:
            return
        self.stats[f"rejected_{schema.ERROR_NAMES.get(code, code)}"] += 1
        if code == schema.E_STOPPING:
            # Refused while the daemon stops, or handed back at the end of its drain
            # (no spool): either way nothing from from_seq on is acknowledged, so it
            # is all still pending here, and every pending entry is replayed, in
            # order, once a daemon is connected again (_on_connected).
            if not s.paused:
                log.info("%s; %s keeps its messages for the next daemon", text, s.label)
            s.paused = True
            return
        if code == schema.E_TOO_LARGE:
            with s.lock:
                entry = s.pending.get(from_seq)
            if entry is not None:
                # The daemon can never take this entry: replayed, it would be refused
                # again, forever. It fails like a message the broker finds too large
                # (logged, counted); what follows it is replayed as usual.
                self.stats["too_large_failures"] += 1
                s.failed_messages += len(entry) - _V
                report_failures(s, [(entry, 0, len(entry) - _V, _MESSAGE_SIZE_TOO_LARGE)],
                                f" (kafkad refused it: {text})")
                s.settle([from_seq])
                # The daemon still waits for from_seq, which this process no longer
                # holds: the next REGISTER finds the hole and continues as a new session.
                s.daemon_forgot = True
        if code == schema.E_OUT_OF_ORDER and s.lacks(from_seq):
            # A daemon that kept this session all along never waits for an entry it
            # settled: its session is new although its instance id is the same (it
            # evicted the session while this process was disconnected). Registering
            # again will find the hole and continue as a new session.
            s.daemon_forgot = True
        if code == schema.E_QUEUE_FULL and "room" in self.features:
            # The daemon says ROOM once its queue has drained a quarter of its caps:
            # replaying before then would only be refused again.
            s.awaiting_room = text
            delay = _ROOM_WAIT_MAX_S
        elif code == schema.E_QUEUE_FULL:
            if s.backoff >= _REPLAY_BACKOFF_MAX_S / 2:
                log.warning("kafkad's queue is full (%s); %s retries", text, s.label)
            delay = s.backoff
            s.backoff = min(_REPLAY_BACKOFF_MAX_S, s.backoff * 2)
        else:
            delay = 0.0
        s.hold(delay)
        # The daemon answers every SEND past a gap with REJECTED(OUT_OF_ORDER,
        # next_seq), so refusals of the entries already in flight behind this one
        # follow. Every replay still starts with a REGISTER (after the back-off): it
        # learns the daemon's next_seq afresh and finds a daemon that forgot the
        # session, so a replay that is refused again is answered again.
        if code == schema.E_OUT_OF_ORDER and s.register_sent and not s.registered \
                and not s.daemon_forgot:
            # A REGISTER is on its way, so this answers a frame sent before it (the
            # link keeps order): the replay after its REGISTERED starts at the
            # daemon's next_seq then, which covers it. Another REGISTER would replay
            # the backlog once more, and each frame of that replay past a refusal
            # would bring another of these: a full queue's refusals would multiply.
            self.stats["stale_refusals"] += 1
            return
        s.registered = False
        s.register_sent = False
        s.register_rid = None           # a REGISTERED still on its way must not end the back-off
        self._withdraw_entries(s)

    def _h_room(self, msg) -> None:
        s = self.sessions.get(msg[1])
        if s is not None and s.awaiting_room is not None:
            s.awaiting_room = None
            s.hold_until = 0.0          # _step registers it again and replays at once
            self.stats["room"] += 1

    def _h_error(self, msg) -> None:
        _, rid, code, text = msg[:4]
        sid = msg[4] if len(msg) > 4 else None
        name = schema.ERROR_NAMES.get(code, str(code))
        if rid is not None and self._refreshes.pop(rid, None) is not None:
            return          # a reconnect refresh the daemon could not take: the cached list stays
        req = self.requests.get(rid) if rid is not None else None
        s = self.sessions.get(sid) if sid is not None else (req.session if req else None)
        if code == schema.E_UNKNOWN_SESSION and s is not None and not s.closed:
            # The daemon does not know this session (it restarted, or evicted
            # it): register again, then replay; a pending request is re-sent.
            if s.refused_for_good is not None:
                # This daemon refuses the session's settings whatever is tried: fail the
                # call rather than re-register it in a loop until a reconnect.
                if req is not None and not self._is_register(req):
                    self._finish(rid, error=s.refused_for_good)
                return
            if req is not None and not self._is_register(req):
                req.sent = False
                self._waiting.append(req)
            s.full_replay = True        # a new session on the daemon: replay everything
            s.daemon_forgot = True
            if s.refused is None or s.hold_until <= time.monotonic():
                self._register(s)       # (else after the back-off of a refused REGISTER)
            return
        if req is not None and code in (schema.E_QUEUE_FULL, schema.E_STOPPING):
            req.sent = False
            req.retry_at = time.monotonic() + (0.05 if code == schema.E_QUEUE_FULL else 0.2)
            req.why_waiting = f"kafkad answered {name}: {text}"
            self._waiting.append(req)
            return
        if req is not None and self._is_register(req):
            self.requests.pop(rid, None)
            if s is not None:
                now = time.monotonic()
                why = f"{name}: {text}"
                for_good = code in (schema.E_MALFORMED, schema.E_INVALID, schema.E_BAD_VERSION)
                if why != s.refused or now >= s.refused_logged_at + _REFUSAL_LOG_EVERY_S:
                    log.error("kafkad refused to register %s: %s (%s)", s.label, why,
                              "registering again after a reconnect" if for_good else "retrying every second")
                    s.refused_logged_at = now
                s.refused = why
                s.register_sent = False
                s.hold_until = now + 1.0
                if for_good:
                    # This daemon will refuse these settings each time (an older daemon
                    # than the shim, say): calls on the session fail now, not at the
                    # result timeout, and the REGISTER is not repeated until a reconnect
                    # (a new daemon may take it; repeating it would only use up the
                    # daemon's error replies to this process). Its async messages stay
                    # pending: stop() reports them if no daemon ever takes the session.
                    s.refused_for_good = KafkaProtocolError(f"kafkad refused the settings of {s.label}: {why}")
                    s.hold_until = float("inf")
                    self._fail_session_requests(s, s.refused_for_good)
            return
        if req is not None:
            self._finish(rid, error=KafkaProtocolError(f"kafkad refused the request: {name}: {text}"))
            return
        log.warning("kafkad reported %s: %s", name, text)

    def _fail_session_requests(self, s: _Session, error: BaseException) -> None:
        for w in [w for w in self._waiting if w.session is s]:
            self._waiting.remove(w)
            self.requests.pop(w.req_id, None)
            w.error = error
            w.event.set()
        for rid, w in list(self.requests.items()):
            if w.session is s and not self._is_register(w):
                self._finish(rid, error=error)

    def _h_reply(self, msg) -> None:
        self._finish(msg[1], reply=msg)

    _handlers = {
        schema.REGISTERED: _h_registered,
        schema.ACK: _h_ack,
        schema.FAILED: _h_failed,
        schema.REJECTED: _h_rejected,
        schema.ERROR: _h_error,
        schema.RESULT: _h_reply,
        schema.PARTITIONS: _h_partitions,
        schema.PARTITIONS_CHANGED: _h_partitions_changed,
        schema.ROOM: _h_room,
        schema.STATS_REPLY: _h_reply,
        schema.HELLO_OK: _h_reply,
        schema.UNREGISTERED: _h_reply,
    }

    def _fail_all(self, error: BaseException) -> None:
        for rid in list(self.requests):
            self._finish(rid, error=error)

    def remove_session(self, session: _Session) -> None:
        session.closed = True
        self.call(lambda: self.sessions.pop(session.session_id, None))

    def orphan_session(self, session: _Session) -> None:
        """The producer is gone (garbage-collected): deliver what is pending, then end the session."""
        if self._thread is not None and os.getpid() == self.pid and not self._stop and not session.closed:
            self.orphans.add(session)
            self.wake()

    def _end_orphans(self) -> None:
        for s in list(self.orphans):
            if s.closed:
                self.orphans.discard(s)
            # (an orphan whose add_session op has not run yet is not in `sessions`: it waits)
            elif not s.pending and self.sessions.get(s.session_id) is s:
                del self.sessions[s.session_id]
                self.orphans.discard(s)
                s.closed = True
                if self.connected:
                    # Nobody waits for the answer: it is dropped as an unknown req_id.
                    self._queue(schema.encode([schema.UNREGISTER, next(self.req_ids), s.session_id]))

    def shutdown(self, timeout: float = 1.0) -> None:
        """Stop the I/O thread and close the socket and context (interpreter exit)."""
        t = self._thread
        if t is None or os.getpid() != self.pid:
            return
        self._stop = True
        self.wake()
        t.join(timeout)
        idle = True
        for d in list(self._direct_all):
            # A thread still inside a sync send keeps its socket (and the context).
            if d.lock.acquire(timeout=0.1):
                d.sock.close(0)
                d.lock.release()
            else:
                idle = False
        if not t.is_alive() and idle:
            self._ctx.term()
            for fd in (self._rfd, self._wfd):
                try:
                    os.close(fd)
                except OSError:
                    pass


def report_failures(session: _Session, failures: list[tuple[tuple, int, int, int]], why: str = "") -> None:
    """Log messages that were not delivered: one record per (topic, partition, error).

    `failures` holds (entry, index, count, error code); the record carries the
    messages' contents, or only a hash of each when the producer was made with
    async_log_messages_on_error=False.
    """
    from client_shim.errors import for_code

    grouped: dict[tuple, list] = {}
    for entry, index, count, code in failures:
        # every partition left to kafkad (negative: one value per call) is one group
        grouped.setdefault((entry[1], max(entry[2], -1), code), []).append((entry, index, count))
    for (topic, partition, code), parts in grouped.items():
        values = [v for entry, index, count in parts for v in entry[_V + index:_V + index + count]]
        first = parts[0][0][0] + parts[0][1]
        if code == getattr(schema, "OUTCOME_FORGOTTEN", None):
            name = "outcome unknown (replayed after kafkad forgot how it ended: maybe delivered)"
        else:
            name = for_code(code).__name__
        shown = _shown_parts(values, session.log_messages)
        for i, text in enumerate(shown):
            log.error("kafkad could not deliver %d message(s) of %s to %s (first seq %d)%s: "
                      "[Error %d] %s; %s%s", len(values), session.label,
                      f"{topic}[{partition}]" if partition >= 0 else f"{topic} (partition left to kafkad)",
                      first, why, code,
                      name, text, f" (line {i + 1} of {len(shown)})" if len(shown) > 1 else "")


# How a failure record shows the messages: the daemon's rendering
# (kafkad.engine.describe, which this package cannot import; a test holds the
# two alike), so a worker's line and the daemon's can be matched. Every message
# is shown, over as many lines as it takes, each line a few KiB at most
# whatever the messages' size.
_SHOWN_CHARS = 100      # of each value's repr
_SHOWN_PER_LINE = 20    # values a line, with contents
_HASHES_PER_LINE = 200  # values a line, hashes only


def _shown_parts(values: list, contents: bool) -> list[str]:
    per = _SHOWN_PER_LINE if contents else _HASHES_PER_LINE
    parts = []
    for i in range(0, max(len(values), 1), per):
        shown = []
        for v in values[i:i + per]:
            if v is None:
                shown.append("None")
            elif not contents:
                shown.append(_digest(v))
            else:
                r = repr(v)
                if len(r) > _SHOWN_CHARS:
                    r = r[:_SHOWN_CHARS] + "..."
                shown.append(f"{r} ({len(v)} B, blake2b {_digest(v)})")
        parts.append(("messages: " if contents else "hashes ") + ", ".join(shown))
    return parts


def _digest(value: bytes | None) -> str:
    import hashlib

    return hashlib.blake2b(value or b"", digest_size=8).hexdigest()


# --- the per-process registry ---------------------------------------------------

_registry_lock = threading.Lock()
_links: dict[str, _Link] = {}
_left_behind: list = []        # the parent's objects, never used nor closed in a child
_stoppers: "weakref.WeakSet" = weakref.WeakSet()
_hooks_installed = False
# Per pool package: (pid, its util.Finalize running _at_exit), and the packages whose
# after-fork hook is registered (_arm_pool_exit).
_pool_finalizers: dict[str, tuple] = {}
_pool_forkers: set[str] = set()
_exited_pid: int | None = None  # the process that ran _at_exit
# This process's pid, kept by the fork hook once it is installed (None before):
# os.getpid() is a system call, and the producer checks the pid on every send.
_pid: int | None = None


def _after_fork_in_child() -> None:
    global _registry_lock, _pid
    _pid = os.getpid()
    _left_behind.append(list(_links.values()))
    _links.clear()
    _registry_lock = threading.Lock()


def current_pid() -> int:
    """os.getpid(), without the system call once the fork hook is installed (any link made).

    The hook runs in the child of os.fork() and of multiprocessing's fork, which
    is every fork after which Python code runs.
    """
    pid = _pid
    return pid if pid is not None else os.getpid()


def _at_exit() -> None:
    """Deliver what this process's producers hold, then close its links (once per process)."""
    global _exited_pid
    pid = os.getpid()
    if _exited_pid == pid:
        return                          # atexit after a multiprocessing finalizer, or the reverse
    _exited_pid = pid
    for producer in list(_stoppers):
        try:
            producer.stop()
        except Exception:
            log.exception("stopping a producer at exit failed")
    # Sessions whose producers were garbage-collected still hold messages.
    for link in list(_links.values()):
        if link.pid != os.getpid():
            continue
        for s in list(link.orphans):
            if s.pending and not s.closed:
                link.request_flush(s)
                wait = s.settings.get("stop_timeout_s", 30) if link.broken is None else 0
                left = s.wait_drained(wait)
                if left:
                    report_failures(s, [(e, 0, len(e) - _V, 7) for e in left],
                                    f" before exit (async_stop_timeout={wait:g}s)")
    for link in list(_links.values()):
        link.shutdown()


def _install_hooks() -> None:
    global _hooks_installed, _pid
    if not _hooks_installed:
        _hooks_installed = True
        _pid = os.getpid()
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(_at_exit)
    _arm_pool_exit()


def _arm_pool_exit() -> None:
    """Run _at_exit in this process also when a process pool ends it.

    multiprocessing's (and billiard's, celery's) child processes end through
    os._exit, which skips atexit hooks: a worker whose target returned would lose
    what its async producers still held, without a word. Their bootstrap runs the
    finalizers registered with `util.Finalize` first, but clears those registered
    before it (inherited from a forking parent, or made while a forkserver or spawn
    child imported its target's module), then runs the `util.register_after_fork`
    hooks: so _at_exit is registered as a finalizer whenever this process has none
    active, and again from such a hook. A process that also runs atexit runs
    _at_exit only once.
    """
    pid = os.getpid()
    for name in ("multiprocessing", "billiard"):
        if name not in sys.modules:     # a pool can only exist once its package is imported
            continue
        armed = _pool_finalizers.get(name)
        if armed is not None and armed[0] == pid and armed[1].still_active():
            continue
        try:
            util = importlib.import_module(name + ".util")
            _pool_finalizers[name] = (pid, util.Finalize(None, _at_exit, exitpriority=10))
            if name not in _pool_forkers:
                _pool_forkers.add(name)     # (inherited by forked children, as the hook is)
                util.register_after_fork(_pool_token, _rearm_after_pool_fork)
        except Exception as exc:        # never let this stop a send
            log.debug("could not register the exit hook with %s: %s", name, exc)


class _PoolToken:
    """What `util.register_after_fork` holds (weakly) for _rearm_after_pool_fork."""


_pool_token = _PoolToken()


def _rearm_after_pool_fork(_token) -> None:
    _arm_pool_exit()


def get_link(endpoint: str) -> _Link:
    """The link of this process to `endpoint` (created on first use)."""
    link = _links.get(endpoint)
    if link is not None and link.pid == os.getpid():
        return link
    with _registry_lock:
        _install_hooks()
        link = _links.get(endpoint)
        if link is None or link.pid != os.getpid():
            link = _Link(endpoint)
            _links[endpoint] = link
        return link


def stop_at_exit(producer) -> None:
    _install_hooks()
    _stoppers.add(producer)


def forget_at_exit(producer) -> None:
    _stoppers.discard(producer)

"""The legacy kafka-python producers (`Producer`, `SimpleProducer`, `KeyedProducer`).

Every constructor argument of kafka-python's documented `Producer` is here
with its default and meaning; the work is done by the daemon. A producer
owns one session with the daemon per process (created at its first send, and
again in a forked child), which carries its delivery settings.

- sync (`async_send=False`): `send_messages` waits for the broker's answer
  and returns `[ProduceResponsePayload(topic, partition, 0, offset)]`; with
  `req_acks=0` it returns `[]` once the daemon has the messages.
- async: `send_messages` returns `[]` at once; the daemon holds and batches
  (`batch_send_every_n`/`_t`), retries (`async_retry_*`) and acknowledges;
  this process keeps the unacknowledged messages (bounded by
  `async_queue_maxsize`) and replays them to a restarted daemon.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import numbers
import operator
import os
import random
import sys
import threading
import time
import warnings
import weakref

from client_shim import link as _linkmod
from client_shim import schema
from client_shim.client import DaemonClient, as_client
from client_shim.errors import (
    IllegalStateError,
    MessageSizeTooLargeError,
    UnsupportedCodecError,
    for_code,
)
from client_shim.partitioner import (
    HashedPartitioner,
    Murmur2Partitioner,
    Partitioner,
    RoundRobinPartitioner,
    pick_index,
)

log = logging.getLogger("client_shim")

CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4
ALL_CODECS = (CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD)
_CODEC_NAMES = {CODEC_NONE: "none", CODEC_GZIP: "gzip", CODEC_SNAPPY: "snappy", CODEC_LZ4: "lz4",
                CODEC_ZSTD: "zstd"}
# (lowest, highest) codec_compresslevel per codec that has levels: the daemon's
# (kafkad.protocol.codecs.LEVELS, checked by a test), so a level accepted here is
# never refused there. A level given with none or snappy is ignored, as
# kafka-python ignored it, and not sent.
CODEC_LEVELS = {CODEC_GZIP: (0, 9), CODEC_LZ4: (0, 16), CODEC_ZSTD: (-131072, 22)}

# Partitioners whose choice kafkad can make once it knows the partition count (pick_index).
_PICKABLE = (Murmur2Partitioner.partition, RoundRobinPartitioner.partition)

ProduceResponsePayload = collections.namedtuple(
    "ProduceResponsePayload", ["topic", "partition", "error", "offset"])


# The largest int a setting may be: msgpack carries ints of 64 bits.
_INT_MAX = 2**63 - 1
# The largest number of seconds (or milliseconds) a setting may be: the longest
# wait Python's locks and events take.
_SECONDS_MAX = threading.TIMEOUT_MAX


def _number(name, value, *, minimum=0, maximum=None, integer=False, allow_none=False):
    """`value` checked and made a plain int or float (numpy's numbers and fractions
    included), so that the daemon's checks of the settings cannot refuse it later."""
    if value is None and allow_none:
        return None
    ok_types = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind}{' or None' if allow_none else ''}, not {value!r}")
    if isinstance(value, numbers.Integral):
        value = operator.index(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")
    if maximum is None:
        maximum = _INT_MAX if integer else _SECONDS_MAX
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, not {value!r}")
    return value


def _caller_level() -> int:
    """warnings.warn's stacklevel for the first frame outside client_shim, from its caller."""
    level, f = 2, sys._getframe(2)   # stacklevel 1 is our caller (it warns), 2 its caller
    while f is not None and f.f_globals.get("__name__", "").startswith("client_shim."):
        level += 1
        f = f.f_back
    return level


def _choice(value, allowed):
    """`value` as a plain int if it is an integer among `allowed` (not a bool, not 1.0), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    value = operator.index(value)
    return value if value in allowed else None


_valid_topics: set[str] = set()   # names already checked (bounded; cleared when large)


def _check_topic(topic) -> str:
    if type(topic) is str and topic in _valid_topics:
        return topic
    if isinstance(topic, (bytes, bytearray)):
        try:
            topic = bytes(topic).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"topic {topic!r} is not a legal topic name") from None
    problem = schema.topic_problem(topic)
    if problem:
        raise (TypeError if not isinstance(topic, str) else ValueError)(f"topic {problem}")
    if len(_valid_topics) > 10_000:
        _valid_topics.clear()
    _valid_topics.add(topic)
    return topic


def _check_payloads(msg: tuple, key) -> list:
    if len(msg) == 1 and type(msg[0]) is bytes and (key is None or type(key) is bytes) \
            and len(msg[0]) < schema.MAX_CALL_BYTES:
        return [msg[0]]                     # the common case, checked at once
    if not msg:
        raise TypeError("send_messages needs at least one message payload")
    for m in msg:
        if m is not None and type(m) is not bytes:
            if isinstance(m, (bytes, bytearray, memoryview)):
                continue            # (a bytes subclass, e.g. numpy.bytes_, is bytes too)
            raise TypeError(f"all produce message payloads must be bytes or None, not {type(m).__name__} "
                            f"(encode text first, e.g. text.encode('utf-8'))")
    if key is not None and type(key) is not bytes:
        raise TypeError(f"key must be bytes or None, not {type(key).__name__}")
    values = [m if m is None or type(m) is bytes else bytes(m) for m in msg]
    if key is None and any(v is None for v in values):
        raise TypeError("a message needs a key or a payload: key and payload are both None")
    size = sum(len(v) for v in values if v is not None) + (len(key) * len(values) if key else 0) \
        + len(values) * schema.MESSAGE_OVERHEAD
    if size >= schema.MAX_CALL_BYTES:
        raise MessageSizeTooLargeError(
            f"one send_messages call carries {size} bytes ({schema.MESSAGE_OVERHEAD} per message "
            f"included); the link to kafkad takes less than {schema.MAX_CALL_BYTES} per call "
            f"(and brokers usually accept about 1 MiB per message)")
    return values


class Producer:
    """Base class of the producers: every documented kafka-python parameter.

    client: a `DaemonClient` (or `KafkaClient`), an endpoint string, or None
        for the default endpoint.
    req_acks: acknowledgements the broker waits for: ACK_NOT_REQUIRED (0),
        ACK_AFTER_LOCAL_WRITE (1, default), ACK_AFTER_CLUSTER_COMMIT (-1).
    ack_timeout: milliseconds the broker waits for `req_acks`, default 1000.
    codec: one of ALL_CODECS (None = CODEC_NONE); anything else raises
        UnsupportedCodecError here. codec_compresslevel: the codec's level
        (None: its default); gzip 0..9, lz4 0..16, zstd -131072..22, else
        ValueError here; ignored for CODEC_NONE and CODEC_SNAPPY.
    sync_fail_on_error: sync mode: raise the error (True) or return it in
        the payload with offset -1 (False).
    async_send (or `async` via **kwargs, or the deprecated batch_send):
        send from the daemon's queue in the background.
    batch_send_every_n / batch_send_every_t: async: messages go out this many
        at a time, or when the oldest waited this many seconds (20 / 20).
    async_retry_limit (None: unlimited), async_retry_backoff_ms (100),
    async_retry_on_timeouts (True): the daemon's retries of failed messages.
    async_queue_maxsize: bound on this producer's messages not yet
        acknowledged (0: none); async_queue_put_timeout: seconds to wait
        for room before AsyncProducerQueueFull (0: fail at once).
    async_log_messages_on_error: log failed messages' contents (True) or
        only their hashes. async_stop_timeout: seconds stop() waits (30).
    """

    ACK_NOT_REQUIRED = 0
    ACK_AFTER_LOCAL_WRITE = 1
    ACK_AFTER_CLUSTER_COMMIT = -1
    DEFAULT_ACK_TIMEOUT = 1000

    def __init__(self, client=None, req_acks=ACK_AFTER_LOCAL_WRITE, ack_timeout=DEFAULT_ACK_TIMEOUT,
                 codec=None, codec_compresslevel=None, sync_fail_on_error=True, async_send=False,
                 batch_send=False, batch_send_every_n=20, batch_send_every_t=20,
                 async_retry_limit=None, async_retry_backoff_ms=100, async_retry_on_timeouts=True,
                 async_queue_maxsize=0, async_queue_put_timeout=0, async_log_messages_on_error=True,
                 async_stop_timeout=30, **kwargs):
        if "async" in kwargs:
            async_send = kwargs.pop("async")
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s): "
                            f"{', '.join(sorted(kwargs))}")
        if batch_send:
            # Attributed to the application's line (SimpleProducer's __init__ calls this
            # one): Python shows a DeprecationWarning only when it points at __main__.
            warnings.warn("batch_send is deprecated, use async_send=True", DeprecationWarning,
                          stacklevel=_caller_level())
            async_send = True
        self.client: DaemonClient = as_client(client)
        acks = _choice(req_acks, (0, 1, -1))
        if acks is None:
            raise ValueError(f"req_acks must be 0, 1 or -1, not {req_acks!r}")
        req_acks = acks
        ack_timeout = _number("ack_timeout", ack_timeout, integer=True, maximum=2**31 - 1)
        if codec is None:
            codec = CODEC_NONE
        known = _choice(codec, ALL_CODECS)
        if known is None:
            raise UnsupportedCodecError(f"codec {codec!r} is not supported; use one of {ALL_CODECS}")
        codec = known
        codec_compresslevel = _number("codec_compresslevel", codec_compresslevel, minimum=-(2**31),
                                      maximum=2**31 - 1, integer=True, allow_none=True)
        if codec_compresslevel is not None and codec in CODEC_LEVELS:
            lo, hi = CODEC_LEVELS[codec]
            if not lo <= codec_compresslevel <= hi:
                raise ValueError(f"codec_compresslevel for {_CODEC_NAMES[codec]} must be {lo}..{hi} "
                                 f"(or None for the codec's default), not {codec_compresslevel!r}")
        batch_send_every_n = _number("batch_send_every_n", batch_send_every_n, minimum=1, integer=True)
        batch_send_every_t = _number("batch_send_every_t", batch_send_every_t)
        async_retry_limit = _number("async_retry_limit", async_retry_limit, integer=True, allow_none=True)
        async_retry_backoff_ms = _number("async_retry_backoff_ms", async_retry_backoff_ms)
        async_queue_maxsize = _number("async_queue_maxsize", async_queue_maxsize, integer=True)
        async_queue_put_timeout = _number("async_queue_put_timeout", async_queue_put_timeout)
        async_stop_timeout = _number("async_stop_timeout", async_stop_timeout)
        self.req_acks = req_acks
        self.ack_timeout = ack_timeout
        self.codec = codec
        self.codec_compresslevel = codec_compresslevel
        self.sync_fail_on_error = bool(sync_fail_on_error)
        self.async_send = bool(async_send)
        self.batch_send_every_n = batch_send_every_n
        self.batch_send_every_t = batch_send_every_t
        self.async_retry_limit = async_retry_limit
        self.async_retry_backoff_ms = async_retry_backoff_ms
        self.async_retry_on_timeouts = bool(async_retry_on_timeouts)
        self.async_queue_maxsize = async_queue_maxsize
        self.async_queue_put_timeout = async_queue_put_timeout
        self.async_log_messages_on_error = bool(async_log_messages_on_error)
        self.async_stop_timeout = async_stop_timeout
        self.stopped = False
        self._stopped_pid = None
        self._session = None
        self._session_pid = None
        self._session_lock = threading.Lock()
        self._lock_pid = os.getpid()
        if self.async_send:
            _linkmod.stop_at_exit(self)

    # `async` was the attribute name in kafka-python; it is a keyword now.
    def __getattr__(self, name):
        if name == "async":
            return self.async_send
        raise AttributeError(name)

    def _settings(self) -> dict:
        return {
            "acks": self.req_acks,
            "ack_timeout_ms": self.ack_timeout,
            "codec": self.codec,
            "codec_level": self.codec_compresslevel if self.codec in CODEC_LEVELS else None,
            "async_send": self.async_send,
            "batch_n": self.batch_send_every_n,
            "batch_t": self.batch_send_every_t,
            "retry_limit": self.async_retry_limit,
            "retry_backoff_ms": self.async_retry_backoff_ms,
            "retry_on_timeouts": self.async_retry_on_timeouts,
            "log_messages_on_error": self.async_log_messages_on_error,
            "queue_maxsize": self.async_queue_maxsize,
            "stop_timeout_s": self.async_stop_timeout,
            "pid": os.getpid(),
            "room": True,       # waits for ROOM after a QUEUE_FULL refusal (client_shim.schema)
        }

    def _get_session(self):
        """This process's session (made at the first send, and again in a forked child)."""
        pid = _linkmod.current_pid()    # the pid check: never use a parent's session in a child
        session = self._session
        if session is not None and self._session_pid == pid and not self.stopped:
            return session
        if self.stopped and self._stopped_pid == pid:
            raise IllegalStateError(f"{type(self).__name__} is stopped")
        if self._lock_pid != pid:       # forked: the parent's lock may be held forever
            self._session_lock = threading.Lock()
            self._lock_pid = pid
        with self._session_lock:
            if self._session is None or self._session_pid != pid:
                link = self.client._link
                session = _linkmod._Session(
                    link, self._settings(), maxsize=self.async_queue_maxsize,
                    put_timeout=self.async_queue_put_timeout,
                    log_messages=self.async_log_messages_on_error,
                    label=f"{type(self).__name__}@{id(self):x} (pid {pid})")
                link.add_session(session)
                # A producer dropped without stop() (one per request, say) must not
                # leave its session behind: it ends once its messages are settled.
                weakref.finalize(self, link.orphan_session, session).atexit = False
                self._session, self._session_pid = session, pid
                if self.stopped:            # a producer stopped in the parent is usable in a child
                    self.stopped = False
                if self.async_send:
                    _linkmod.stop_at_exit(self)
        return self._session

    def send_messages(self, topic, partition, *msg):
        """Send `msg` payloads (bytes or None) to `topic`/`partition`; see the class doc."""
        topic = _check_topic(topic)
        if type(partition) is not int or not 0 <= partition <= 2**31 - 1:
            raise TypeError(f"partition must be an int >= 0, not {partition!r}")
        values = self._check_payloads(msg, None)
        if values is None:
            return self._too_large(topic, partition)
        return self._send_messages(self._get_session(), topic, partition, values)

    def _check_payloads(self, msg: tuple, key) -> list | None:
        """`_check_payloads`, but None for a call over the per-call size limit when the
        contract says to return that failure (sync, sync_fail_on_error=False)."""
        try:
            return _check_payloads(msg, key)
        except MessageSizeTooLargeError:
            if self.async_send or self.sync_fail_on_error:
                raise
            return None

    @staticmethod
    def _too_large(topic: str, partition: int) -> list:
        # As the broker's refusal of a message too large would be returned: nothing was sent.
        # (-1: no partition chosen, when kafkad was to pick it)
        return [ProduceResponsePayload(topic, max(partition, -1), MessageSizeTooLargeError.errno, -1)]

    def _send_messages(self, session, topic, partition, values, key=None):
        """Send already validated `values` (and `key`) to `topic`/`partition`."""
        if self.async_send:
            session.send_async(topic, partition, key, values)
            return []
        return self._send_sync(session, topic, partition, None if key is None else [key] * len(values),
                               values)

    def _send_sync(self, session, topic, partition, keys, values):
        if session.closed:              # stopped by another thread since _get_session()
            raise IllegalStateError(f"{type(self).__name__} is stopped")
        ts = int(time.time() * 1000)
        reply = session.link.request_direct(
            lambda rid: schema.encode([schema.SEND_SYNC, session.session_id, rid, topic, partition,
                                       ts, keys, values]),
            session, self.client.timeout, _linkmod.RESULT_TIMEOUT_S)
        _, _, part, error, offset = reply[:5]
        if error:
            if error in (3, 6):
                _linkmod.get_link(self.client.endpoint).on_unknown_partition(topic)
            if self.sync_fail_on_error:
                where = f"{topic}[{part}]" if part >= 0 else f"{topic} (kafkad had not picked a partition yet)"
                raise for_code(error)(f"producing {len(values)} message(s) to {where} failed")
            return [ProduceResponsePayload(topic, max(part, -1), error, -1)]
        if self.req_acks == 0:
            return []
        return [ProduceResponsePayload(topic, part, 0, offset)]

    def stop(self, timeout=None):
        """Wait up to `timeout` (default async_stop_timeout) for this producer's
        messages, log those not delivered, and end the session. A second call
        does nothing."""
        if self.stopped:
            return
        timeout = _number("timeout", timeout, allow_none=True)
        self.stopped = True
        self._stopped_pid = os.getpid()
        _linkmod.forget_at_exit(self)
        session = self._session
        if session is None or self._session_pid != os.getpid():
            return
        wait = self.async_stop_timeout if timeout is None else timeout
        broken = session.link.broken
        if broken is not None:
            wait = 0                    # the link's I/O thread ended: nothing more will go out
        if self.async_send:
            # Like kafka-python's stop(), which sent its queue at once: ask the daemon
            # not to hold this producer's messages for batching any longer.
            session.link.request_flush(session)
        # Closes the session too: a send racing this stop() from another thread either
        # got in before (and is waited for or reported here) or raises IllegalStateError.
        left = session.wait_drained(wait if self.async_send else 0.0, close=True)
        if left:
            count = sum(len(e) - _linkmod._V for e in left)
            log.error("%s stopped with %d message(s) not delivered after %gs", session.label, count, wait)
            _linkmod.report_failures(session, [(e, 0, len(e) - _linkmod._V, 7) for e in left],
                                     f" within async_stop_timeout={wait:g}s" if broken is None
                                     else f" ({broken})")
        if session.link.connected:     # a daemon that is gone has no session to end
            try:
                session.link.request(
                    lambda rid: schema.encode([schema.UNREGISTER, rid, session.session_id]),
                    None, min(self.client.timeout, 1.0))
            except Exception as exc:  # the daemon going away meanwhile must not break stop()
                log.debug("unregister of %s failed: %s", session.label, exc)
        session.link.remove_session(session)

    def __repr__(self) -> str:
        mode = "async" if self.async_send else "sync"
        return f"<{type(self).__name__} {mode} client={self.client!r}>"


def _cached_partitions(session, client: DaemonClient, topic: str, pick: bool) -> list[int] | None:
    """The topic's partition list: from this process's cache, else asked of the daemon.

    None (only with `pick`): kafkad has no list yet and picks the partition
    itself (DaemonClient.partitions_or_pick).
    """
    cache = getattr(session.link, "partition_cache", None)
    parts = cache.get(topic) if cache is not None else None
    return parts if parts else client.partitions_or_pick(topic, pick=pick)


def _picked(index: int) -> int:
    """The partition field that has kafkad pick `index` modulo the partition count."""
    return -1 - index


class SimpleProducer(Producer):
    """Round-robin over the topic's partitions; all messages of one call go to one partition.

    random_start: begin at a random partition (True, default) or at the first.
    """

    def __init__(self, *args, **kwargs):
        self.random_start = kwargs.pop("random_start", True)
        super().__init__(*args, **kwargs)
        self._cycles: dict[str, tuple[list, int]] = {}
        self._cycle_lock = threading.Lock()
        # topic -> the round robin's count while kafkad picks the partitions (no list yet)
        self._pick_counts: dict[str, itertools.count] = {}

    def _next_partition(self, session, topic: str) -> int:
        # _cached_partitions, inline: one call less on every send.
        cache = getattr(session.link, "partition_cache", None)
        parts = cache.get(topic) if cache is not None else None
        if not parts:
            parts = self.client.partitions_or_pick(topic)
            if parts is None:
                return self._pick_next(topic)
        known = self._cycles.get(topic)
        if known is None or known[0] is not parts:
            with self._cycle_lock:
                known = self._cycles.get(topic)
                if known is None or known[0] is not parts:
                    start = random.randrange(len(parts)) if self.random_start else 0
                    known = (parts, itertools.cycle(parts[start:] + parts[:start]))
                    self._cycles.pop(topic, None)
                    self._cycles[topic] = known
                    while len(self._cycles) > _linkmod.MAX_CACHED_TOPICS:   # as bounded as the cache
                        self._cycles.pop(next(iter(self._cycles)), None)
        return next(known[1])      # atomic under the GIL: threads share the cycle safely

    def _pick_next(self, topic: str) -> int:
        """The next partition of the cycle as kafkad will pick it (no list known here yet)."""
        counts = self._pick_counts.get(topic)
        if counts is None:
            with self._cycle_lock:
                counts = self._pick_counts.get(topic)
                if counts is None:
                    start = random.randrange(2**31) if self.random_start else 0
                    counts = self._pick_counts[topic] = itertools.count(start)
                    while len(self._pick_counts) > _linkmod.MAX_CACHED_TOPICS:
                        self._pick_counts.pop(next(iter(self._pick_counts)), None)
        return _picked(next(counts) % 2**31)

    def send_messages(self, topic, *msg):
        # The steady state of an async producer in one call: one bytes payload under
        # the call limit, a topic already checked, this process's live session and a
        # partition list unchanged since the cycle was made. The same checks as the
        # way below, without its five function calls (about 0.3 us of the caller's
        # CPU per send); anything else takes that way.
        session = self._session
        if self.async_send and session is not None and len(msg) == 1 and type(msg[0]) is bytes \
                and len(msg[0]) < schema.MAX_CALL_BYTES and type(topic) is str and topic in _valid_topics \
                and self._session_pid == _linkmod._pid and not self.stopped:
            known = self._cycles.get(topic)
            if known is not None and known[0] is session.link.partition_cache.get(topic):
                session.send_async(topic, next(known[1]), None, msg)
                return []
        topic = _check_topic(topic)
        values = self._check_payloads(msg, None)
        session = self._get_session()
        partition = self._next_partition(session, topic)
        if values is None:
            return self._too_large(topic, partition)
        if self.async_send:             # _send_messages without a key, one call less per send
            session.send_async(topic, partition, None, values)
            return []
        return self._send_sync(session, topic, partition, None, values)


class KeyedProducer(Producer):
    """Chooses the partition with `partitioner` (a Partitioner subclass; default HashedPartitioner)."""

    def __init__(self, *args, **kwargs):
        partitioner = kwargs.pop("partitioner", None) or HashedPartitioner
        if not (isinstance(partitioner, type) and issubclass(partitioner, Partitioner)):
            raise TypeError(f"partitioner must be a Partitioner subclass, not {partitioner!r}")
        self.partitioner_class = partitioner
        self.partitioners: dict[str, Partitioner] = {}
        # kafkad can pick for the partitioners this package has (their choice needs
        # only the partition count: pick_index), not for one of the application's own.
        self._can_pick = partitioner.partition in _PICKABLE
        super().__init__(*args, **kwargs)

    def _next_partition(self, session, topic: str, key) -> int:
        parts = _cached_partitions(session, self.client, topic, self._can_pick)
        p = self.partitioners.get(topic)
        if p is None:
            p = self.partitioners[topic] = self.partitioner_class(parts)
        if parts is None:
            return _picked(pick_index(p, key))
        return p.partition(key, parts)

    def send_messages(self, topic, key, *msg):
        topic = _check_topic(topic)
        if type(key) is not bytes and isinstance(key, (bytes, bytearray, memoryview)):
            key = bytes(key)        # (a bytes subclass, e.g. numpy.bytes_, is bytes too)
        values = self._check_payloads(msg, key)
        session = self._get_session()
        partition = self._next_partition(session, topic, key)
        if values is None:
            return self._too_large(topic, partition)
        return self._send_messages(session, topic, partition, values, key=key)

    def send(self, topic, key, msg):
        """Deprecated alias of send_messages(topic, key, msg)."""
        warnings.warn("KeyedProducer.send is deprecated, use send_messages", DeprecationWarning, stacklevel=2)
        return self.send_messages(topic, key, msg)

    def __repr__(self) -> str:
        return f"<KeyedProducer {'async' if self.async_send else 'sync'} partitioner={self.partitioner_class.__name__}>"

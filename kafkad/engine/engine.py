"""The producer engine: every piece of producer state, no I/O, no clock.

`Engine` turns accepted `Submission`s into Produce requests and broker
answers into `Outcome`s. It never touches a socket or reads a clock: the
driver (`kafkad.broker`) calls it with events and the current time (`now`,
seconds on any monotonic clock) and, after every batch of events, calls
`poll(now)`, which returns an `Actions`: connections to open or close,
requests to write (in order, per node), connections that need SASL, outcomes
to report, and the time by which `poll` must run again. (A sync send may
skip those polls when `needs_poll` says they have nothing to do: the sync
fast path, `send_sync` and `take_outcomes`.)

How records move (docs/engine.md has the full rules):

    submit -> [SessionHold: async sessions wait for batch_n / batch_t]
           -> Lane (topic, partition, acks, ack timeout, codec, level)
              -> OPEN batch -> READY (sync record, full, linger_ms, drain)
              -> IN_FLIGHT (one batch per partition per request, one request
                 per broker and acks/timeout group, <= max in flight)
              -> DONE (acked: delivered outcome; failed: failed outcome)
                 or RETRY (backoff, resent in order with the same sequence)

Idempotence: each settings group with acks != 0 gets its own producer id
(InitProducerId) so each lane's sequence numbers are its own. Sequence
numbers are given when a batch is first sent and kept across retries. A
sequence the broker lost (OUT_OF_ORDER_SEQUENCE_NUMBER on the oldest
unacknowledged batch, UNKNOWN_PRODUCER_ID, INVALID_PRODUCER_EPOCH) bumps the
epoch as KIP-360 clients do: stop sending for the group, let in-flight
requests settle, InitProducerId with the current id and epoch (v3+; older
brokers hand out a new id), then renumber that partition's unacknowledged
batches from 0 and resend them in the original order. Other partitions keep
their numbered batches under the old stamp (a broker keeps producer state per
partition) and take the new one, from 0, once those have settled.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import replace
from typing import Any, Mapping

from kafkad.engine.batching import SEQ_MODULO, Batch, Chunk, Group, Lane, SessionHold
from kafkad.engine.connections import Actions, Conn, Request
from kafkad.engine.describe import describe_values
from kafkad.engine.metadata import MetadataCache
from kafkad.engine.states import BatchState, ConnState, PidState, advance
from kafkad.engine.types import (Outcome, ProducerDrained, QueueFull, RecordTooLarge, Submission, pick_partition,
                                 where)
from kafkad.protocol import (
    BATCH_OVERHEAD,
    UNSUPPORTED_VERSION,
    ApiVersionsRequest,
    ApiVersionsResponse,
    InitProducerIdRequest,
    InitProducerIdResponse,
    MetadataRequest,
    MetadataResponse,
    decode_response,
    encode_record_batch,
    pick_version,
    record_size_upper_bound,
)
from kafkad.protocol.produce import decode_produce_raw
from kafkad.protocol.errors import error_info

log = logging.getLogger("kafkad.engine")

# Error codes the engine acts on by number.
UNKNOWN_SERVER_ERROR = -1
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
REQUEST_TIMED_OUT = 7
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
# Produce answers that come after the leader appended the batch (acks=-1).
WRITTEN_BUT_FAILED = frozenset((REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND))
NETWORK_EXCEPTION = 13   # what a lost connection counts as
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46
INVALID_PRODUCER_EPOCH = 47
SASL_AUTHENTICATION_FAILED = 58
UNKNOWN_PRODUCER_ID = 59
SEQUENCE_LOST = frozenset({OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID, INVALID_PRODUCER_EPOCH})

API_PRODUCE, API_METADATA, API_VERSIONS, API_INIT_PID = 0, 3, 18, 22

# Fewest seconds between two Metadata requests (refreshes asked for by many
# errors at once collapse into one request). While a leader stays unknown or
# unreachable, consecutive refreshes back off from this, doubling, to
# `[kafka] retry_backoff_max_ms` (as librdkafka's fast leader query and the
# Java client's KIP-580 backoff do).
METADATA_MIN_INTERVAL = 0.1
# The size bound of one record beyond its key and value bytes.
_RECORD_OVERHEAD = record_size_upper_bound(None, None)
# Upper bounds of a Produce request's bytes around its batches.
_REQUEST_OVERHEAD = 128
_PARTITION_OVERHEAD = 32
_INF = float("inf")
# needs_poll looks at each lane with records; past this many it just says yes
_NEEDS_POLL_SCAN_MAX = 64
_OPEN = BatchState.OPEN   # enum member lookups are slow on the per-send path
_CONN_READY = ConnState.READY
_PID_READY, _PID_DISABLED = PidState.READY, PidState.DISABLED
# Connection states in which requests may be written (ApiVersions before READY).
_OPEN_STATES = frozenset({ConnState.NEGOTIATING, ConnState.AUTHENTICATING, ConnState.READY})
_DOWN_STATES = frozenset({ConnState.DOWN, ConnState.BACKOFF})
_LATENCY_SAMPLES = 1024
# Builds an Outcome from a tuple of its fields without the NamedTuple's Python-level
# __new__ (one frame less per delivered submission on the hottest path).
_new_outcome = tuple.__new__
# A broker that keeps failing is summarized this often (seconds), never logged per retry.
_FAILURE_SUMMARY_INTERVAL = 300.0
# Idle topics (metadata_max_idle_ms) are looked for at most this often (seconds).
_FORGET_INTERVAL_MAX = 5.0
# Forgotten lanes remembered per producer-id group for their sequence numbers;
# past this many, any new lane of the group bumps its epoch.
_FORGOTTEN_LANES_MAX = 10_000


class Engine:
    """All producer state. `kafka` and `queue` are kafkad.config KafkaConfig / QueueConfig."""

    def __init__(self, kafka, queue, *, rng: random.Random | None = None,
                 client_version: str = "", sweep_interval: float = 1.0,
                 log_messages_on_error: bool = True) -> None:
        if not kafka.bootstrap_servers:
            raise ValueError("kafka.bootstrap_servers: at least one host:port is needed")
        if kafka.idempotence and kafka.max_in_flight_per_connection > 5:
            raise ValueError("kafka.max_in_flight_per_connection: at most 5 with idempotence "
                             f"(brokers remember 5 batches per producer), not "
                             f"{kafka.max_in_flight_per_connection}")
        self.kafka = kafka
        self.queue = queue
        # [logging] log_messages_on_error: a failure log shows the messages only if both
        # this and the sender's own setting (SessionSettings) allow it.
        self.log_messages_on_error = log_messages_on_error
        self._rng = rng or random.Random()
        self._apply_config()
        self._client_version = client_version
        self._sasl = kafka.security_protocol.startswith("SASL")
        self.metadata = MetadataCache()
        self.conns: dict[int, Conn] = {}
        for i, addr in enumerate(kafka.bootstrap_servers):
            host, port = _split_hostport(addr)
            self.conns[-1 - i] = Conn(-1 - i, host, port, bootstrap=True)
        self._connect_cursor = 0
        self.groups: dict[tuple, Group] = {}
        self.lanes: dict[tuple, Lane] = {}
        self._active: dict[Lane, None] = {}      # lanes with batches, in insertion order
        self.holds: dict[tuple, SessionHold] = {}
        self._hold_due = _INF
        self._outcomes: list[Outcome] = []
        self._auth: list[int] = []
        self._closes: list[int] = []
        self._sends: list[Request] = []
        self._want_connect: set[int] = set()
        # the sync fast path (send_sync, take_outcomes, needs_poll)
        self._sync_lanes: list[Lane] = []   # lanes of sync submissions since the last poll
        self._deadline = _INF               # the deadline the last poll returned (inf: none)
        self._dirty_all = True
        self._last_sweep = -_INF
        self._sweep_interval = sweep_interval
        # metadata
        self._wanted: set[str] = set()
        self._meta_inflight = False
        self._meta_needed = True
        self._meta_asked: frozenset[str] = frozenset()   # the topics the last request named
        self._meta_next = 0.0
        self._meta_retries = 0      # refreshes in a row asked for by a missing leader
        self._leader_wait = False   # a lane visited by this poll waits for a leader
        self._topic_wait: dict[str, float] = {}   # topic -> since when the cluster says unknown
        # topic -> chunks waiting for the topic's partition list, in arrival order: those
        # whose partition the engine picks (Submission.partition < 0) and every later
        # chunk of the topic, so that none overtakes another (see _park)
        self._unplaced: dict[str, deque[Chunk]] = {}
        self.unplaced = 0          # messages in _unplaced (counted in queued too)
        # topic -> (error, partitions): layouts of known topics that changed, until poll reports them
        self._partition_changes: dict[str, tuple[int, list[int]]] = {}
        # the last connection failure with a Kafka code (see _expiry_cause), any broker
        self._cause = 0
        self._cause_text = ""
        self.draining = False
        self.drained = False   # take_undelivered ran: submit refuses everything
        # counters (messages unless named otherwise)
        self.accepted = 0
        self.delivered = 0
        self.failed = 0
        self.retried = 0
        self.dropped = 0
        self.handed_back = 0       # undelivered at stop, kept by their shims for the next daemon
        self.kept_in_spool = 0     # undelivered at stop, kept in the spool for the next start
        self.requests = 0
        self.sent = 0              # records written in Produce requests, each retry again
        self.sent_bytes = 0        # their RecordBatch bytes as written (compressed, headers included)
        self.delivered_bytes = 0   # keys and values of delivered records (as per topic)
        self.queued = 0            # held + in lanes, not on the wire
        self.queued_bytes = 0      # size bound of everything accepted and not finished
        self.held = 0
        self.in_flight = 0
        self._latency: dict[int, deque[float]] = {}
        self._topic_stats: dict[str, list[int]] = {}   # topic -> [delivered, bytes, failed]
        self._errors: dict[int, int] = {}
        # idle topics (metadata_max_idle_ms): topic -> when it was last sent to or asked about
        self._topic_used: dict[str, float] = {}
        self._forget_at = _INF       # the next look for idle topics (inf: no topic known)
        self._forgotten_topics: list[str] = []   # forgotten since the last poll
        self.topics_forgotten = 0

    def __repr__(self) -> str:
        return (f"<Engine conns={len(self.conns)} lanes={len(self._active)}/{len(self.lanes)} "
                f"queued={self.queued} in_flight={self.in_flight}>")

    # ------------------------------------------------------------------ submit

    def submit(self, sub: Submission, now: float, divisible: bool = False) -> None:
        """Take `sub` or raise QueueFull (nothing taken). Problems found now become Outcomes.

        After `take_undelivered` nothing is taken: ProducerDrained (a QueueFull).
        A record larger than any batch fails the whole submission (one call's
        messages go or fail together), unless `divisible` (the submission merges
        several calls): then RecordTooLarge is raised, nothing taken.
        """
        if self.drained:
            raise ProducerDrained("the producer is drained: it takes no more messages "
                                  "(the daemon is stopping)")
        values = sub.values
        n = len(values)
        if len(sub.keys) != n:
            raise ValueError(f"sub.keys: {len(sub.keys)} keys for {n} values")
        if n == 0:
            raise ValueError("sub.values: a submission needs at least one message")
        if type(sub.timestamp_ms) is not int:
            raise TypeError(f"sub.timestamp_ms: expected int milliseconds, "
                            f"got {type(sub.timestamp_ms).__name__}")
        keys = sub.keys
        if n == 1:   # the common shape (one send_messages call, one message): no iterators
            v, k = values[0], keys[0]
            if not ((type(v) is bytes or v is None) and (type(k) is bytes or k is None)):
                _check_bytes("sub.values", values)
                _check_bytes("sub.keys", keys)
            payload = (len(v) if v else 0) + (len(k) if k else 0)
        else:
            _check_bytes("sub.values", values)
            _check_bytes("sub.keys", keys)
            payload = sum(map(len, filter(None, values))) + sum(map(len, filter(None, sub.keys)))
        nbytes = payload + n * _RECORD_OVERHEAD
        cap = self._cap
        too_large = nbytes + BATCH_OVERHEAD > cap and self.too_large(sub.keys, sub.values)
        if too_large and divisible:
            raise RecordTooLarge(f"a record of {sub.topic}[{sub.partition}] is larger than the batch cap "
                                 f"({cap} bytes)")
        q = self.queue
        live = self.queued + self.in_flight
        # An empty queue takes any one submission, over the caps or not: the IPC
        # side merges a frame's calls into one submission per partition, and a
        # merge larger than the caps would otherwise be refused forever (the shim
        # replays the same frame). The overshoot is one submission, at most a frame.
        if live and (live + n > q.max_messages or self.queued_bytes + nbytes > q.max_bytes):
            raise QueueFull(f"queue full: {live} messages ({self.queued_bytes} bytes) queued; "
                            f"caps are {q.max_messages} messages and {q.max_bytes} bytes")
        self.accepted += n
        self.queued += n
        self.queued_bytes += nbytes
        chunk = Chunk(sub, 0, n, nbytes, now, now + self._delivery_s, not sub.settings.async_send)
        if too_large:
            self._fail_chunk(chunk, MESSAGE_TOO_LARGE, "a record is larger than the batch cap")
            return
        topic = sub.topic
        self._topic_used[topic] = now
        if sub.partition < 0 or (self._unplaced and topic in self._unplaced):
            self._park(chunk, now)
            return
        self._place(chunk, now)

    def _place(self, chunk: Chunk, now: float) -> SessionHold | None:
        """The rest of `submit` for a chunk with its partition: a sync chunk to its lane,
        an async one to its session's hold (returned, None when released at once)."""
        sub = chunk.sub
        topic = sub.topic
        info = self.metadata.topics.get(topic)
        if info is not None and not info.error and not 0 <= sub.partition < len(info.partitions):
            # Kafka numbers a topic's partitions 0..n-1
            self._fail_chunk(chunk, UNKNOWN_TOPIC_OR_PARTITION,
                             f"topic {topic!r} has {len(info.partitions)} partitions")
            return None
        if topic not in self._wanted:
            self._wanted.add(topic)
            self._meta_needed = True
            if self._forget_at == _INF:
                self._forget_at = now + self._forget_every
        if chunk.sync:
            self._sync_lanes.append(self._enqueue(chunk, now))
            return None
        s = sub.settings
        key = (sub.session_id, s)
        hold = self.holds.get(key)
        if hold is None:
            hold = self.holds[key] = SessionHold(key, s.batch_n, s.batch_t)
        hold.add(chunk)
        self.held += chunk.hi - chunk.lo
        if hold.count >= hold.batch_n:
            self._release(hold, now, everything=False)
            if not hold.count:
                del self.holds[key]
                return None
        due = hold.due
        if due < self._hold_due:
            self._hold_due = due
        return hold

    # ------------------------------------------------------------------ picked partitions

    def _park(self, chunk: Chunk, now: float) -> None:
        """Place `chunk` now if its topic's partitions are known, else keep it until they are.

        A submission with a negative partition leaves the choice to the engine:
        partition `pick_partition(code, partitions)` of the topic's sorted
        partition ids, once they are known (the shim sends this when it has no
        partition list itself: a cold start while no broker is reachable). While
        any chunk of a topic waits, every later chunk of that topic waits behind
        it, explicit partition or not, so that the records of one partition keep
        their arrival order.
        """
        topic = chunk.sub.topic
        waiting = self._unplaced.get(topic)
        if waiting is None:
            parts = self.metadata.partitions(topic)
            if parts:
                if chunk.sub.partition < 0:
                    chunk.sub = replace(chunk.sub, partition=pick_partition(chunk.sub.partition, parts))
                self._place(chunk, now)
                return
            waiting = self._unplaced[topic] = deque()
        waiting.append(chunk)
        self.unplaced += chunk.hi - chunk.lo
        if topic not in self._wanted or not self._meta_needed:
            self._wanted.add(topic)
            self._meta_needed = True
            if self._forget_at == _INF:
                self._forget_at = now + self._forget_every

    def _place_waiting(self, topic: str, now: float) -> None:
        """`topic`'s partitions became known: place its waiting chunks, in arrival order.

        An async chunk goes through its session's hold like any other, and the
        holds it joined are then released whole: it has waited already, and its
        producer may have asked for a flush meanwhile (`flush_session`).
        """
        waiting = self._unplaced.pop(topic, None)
        if not waiting:
            return
        parts = self.metadata.partitions(topic) or []
        holds: dict[tuple, SessionHold] = {}
        for chunk in waiting:
            self.unplaced -= chunk.hi - chunk.lo
            if chunk.sub.partition < 0:
                chunk.sub = replace(chunk.sub, partition=pick_partition(chunk.sub.partition, parts))
            hold = self._place(chunk, now)
            if hold is not None:
                holds[hold.key] = hold
        for key, hold in holds.items():
            self._release(hold, now, everything=True)
            if not hold.count and self.holds.get(key) is hold:
                del self.holds[key]

    def _fail_waiting(self, topic: str, code: int, why: str) -> None:
        """Fail every chunk of `topic` still waiting for its partitions."""
        self._fail_many(list(self._unplaced.pop(topic, ())), code, why)

    def _fail_many(self, chunks: list[Chunk], code: int, why: str) -> None:
        """Fail waiting chunks of one topic; the async ones with one log line for them all.

        A producer whose partitions the engine picks makes a submission per
        call: a line each would flood the log in an outage, and the IPC side
        records every async message anyway. A sync chunk (a caller blocked on
        its answer, which the IPC side does not log) keeps its own line.
        """
        n = 0
        firsts: list = []        # each async chunk's first message, for the summary
        allowed = self.log_messages_on_error
        for chunk in chunks:
            self.unplaced -= chunk.hi - chunk.lo
            if chunk.sync:
                self._fail_chunk(chunk, code, why)
                continue
            n += chunk.hi - chunk.lo
            sub = chunk.sub
            firsts.append(sub.values[chunk.lo])
            allowed = allowed and sub.settings.log_messages_on_error
            self._fail_chunk(chunk, code, why, quiet=True)
        if firsts:
            log.warning("failed to deliver %d message(s) in %d submission(s) to %s, waiting for its "
                        "partition list: %s%s; the first of each: %s", n, len(firsts), chunks[0].sub.topic,
                        _err_name(code), f" ({why})" if why else "", describe_values(firsts, allowed))

    def _expire_waiting(self, now: float) -> float:
        """Fail waiting chunks whose delivery timeout passed; return the next such time.

        Looks at each topic's oldest chunk only: chunks wait in arrival order, so
        their deadlines only grow (after a reload that shortened
        `delivery_timeout_ms`, a newer chunk fails once the ones before it did).
        """
        deadline = _INF
        for topic, waiting in list(self._unplaced.items()):
            expired = []
            while waiting and now >= waiting[0].deadline:
                expired.append(waiting.popleft())
            if expired:
                if self.connection_error():
                    code, why = self._cause, f"delivery timeout; no broker reachable: {self._cause_text}"
                else:
                    code, why = REQUEST_TIMED_OUT, f"delivery timeout; the partitions of {topic!r} are not known"
                self._fail_many(expired, code, why)
            if waiting:
                deadline = min(deadline, waiting[0].deadline)
            else:
                del self._unplaced[topic]
        return deadline

    def flush_session(self, session_id: bytes, now: float) -> None:
        """Release everything `session_id` holds for batching, at once (its producer is stopping).

        The records join their lanes as a sync session's would: they wait
        `linger_ms` only, not the session's `batch_n` / `batch_t`. Other
        sessions' holds are untouched; a session holding nothing is a no-op.
        """
        if type(session_id) is not bytes:
            raise TypeError(f"session_id: expected bytes, got {type(session_id).__name__}")
        for key in [k for k in self.holds if k[0] == session_id]:
            hold = self.holds.pop(key)
            self._release(hold, now, everything=True)
        # a hold that was due first may be gone: the next poll recomputes the due time
        self._hold_due = min(self._hold_due, now)

    @property
    def batch_cap(self) -> int:
        """The largest batch in bytes (a record must fit one)."""
        return self._cap

    def count_failed(self, topic: str, n: int, code: int) -> None:
        """Count `n` messages for `topic` that the IPC side failed itself, before they
        reached the engine (a partition the topic does not have, a record too large):
        they are taken and failed at once, so the books still balance."""
        self.accepted += n
        self._count_failure(topic, n, code)

    def _count_failure(self, topic: str, n: int, code: int) -> None:
        """`n` messages of `topic` failed with `code`: overall, per error, per topic."""
        self.failed += n
        self._errors[code] = self._errors.get(code, 0) + n
        ts = self._topic_stats.get(topic)
        if ts is None:
            ts = self._topic_stats[topic] = [0, 0, 0]
        ts[2] += n

    def too_large(self, keys: list, values: list) -> bool:
        """Whether one of these records is larger than any batch may be (it would fail)."""
        cap = self._cap - BATCH_OVERHEAD
        return any(record_size_upper_bound(len(k) if k else 0, len(v) if v else 0) > cap
                   for k, v in zip(keys, values))

    def _apply_config(self) -> None:
        kafka = self.kafka
        # A request carries its header and the topic and partition headers besides the batch.
        self._cap = min(kafka.batch_max_bytes,
                        kafka.request_max_bytes - _REQUEST_OVERHEAD - _PARTITION_OVERHEAD - 255)
        self._delivery_s = kafka.delivery_timeout_ms / 1000.0
        self._linger_s = kafka.linger_ms / 1000.0
        self._idle_s = kafka.metadata_max_idle_ms / 1000.0
        self._forget_every = min(_FORGET_INTERVAL_MAX, self._idle_s)
        self._dirty_all = True

    def _chunk_prefix_bytes(self, chunk: Chunk, k: int) -> int:
        sub = chunk.sub
        lo, hi = chunk.lo, chunk.lo + k
        return (sum(map(len, filter(None, sub.values[lo:hi])))
                + sum(map(len, filter(None, sub.keys[lo:hi]))) + k * _RECORD_OVERHEAD)

    def _release(self, hold: SessionHold, now: float, everything: bool) -> None:
        chunks = hold.release(now, everything, self._chunk_prefix_bytes)
        for c in chunks:
            self.held -= c.count
            self._enqueue(c, now)

    def _enqueue(self, chunk: Chunk, now: float) -> Lane:
        s = chunk.sub.settings
        gkey = s.batch_key
        key = (chunk.sub.topic, chunk.sub.partition, gkey)
        lane = self.lanes.get(key)
        if lane is None:
            group = self.groups.get(gkey)
            if group is None:
                group = self.groups[gkey] = Group(gkey, self.kafka.idempotence and s.acks != 0)
            lane = self.lanes[key] = Lane(key, chunk.sub.topic, chunk.sub.partition, group)
            group.lanes.append(lane)
            if group.forgot_many or group.forgotten:
                self._lane_back(group, lane)
        cap = self._cap
        batch = lane.open_batch(now, BATCH_OVERHEAD)
        while batch.nbytes + chunk.nbytes > cap:
            room = cap - batch.nbytes
            k = self._records_fitting(chunk, room)
            if k == 0 and batch.count == 0:
                k = 1  # caps lowered by a reload below a record already accepted
            if k:
                batch.add(chunk.split(k, self._chunk_prefix_bytes(chunk, k)))
            if batch.count:
                batch.advance(BatchState.READY)
            batch = lane.open_batch(now, BATCH_OVERHEAD)
        batch.add(chunk)
        lane.queued += chunk.hi - chunk.lo
        lane.dirty = True
        self._active[lane] = None
        return lane

    def _records_fitting(self, chunk: Chunk, room: int) -> int:
        """How many of the chunk's first records fit in `room` bytes (size bound)."""
        sub = chunk.sub
        keys, values = sub.keys, sub.values
        used = 0
        k = 0
        for i in range(chunk.lo, chunk.hi):
            key, val = keys[i], values[i]
            size = _RECORD_OVERHEAD + (len(key) if key else 0) + (len(val) if val else 0)
            if used + size > room:
                break
            used += size
            k += 1
        return k

    # ------------------------------------------------------------------ topics

    def partitions_for(self, topic: str) -> list[int] | None:
        return self.metadata.partitions(topic)

    def want_topic(self, topic: str, now: float) -> None:
        """Ask for `topic`'s metadata at the next chance (for fetch_partitions)."""
        self.touch_topic(topic, now)
        self._wanted.add(topic)
        self._meta_needed = True
        self._meta_next = 0.0
        info = self.metadata.topics.get(topic)
        if info is not None and info.error:
            # asked again, not settled: the wait for it to exist (_topic_wait) goes on
            # from when it began, or askers every second would keep it from ever ending
            del self.metadata.topics[topic]

    def touch_topic(self, topic: str, now: float) -> None:
        """`topic` is in use at `now` (someone waits for its metadata): not idle."""
        self._topic_used[topic] = now
        if self._forget_at == _INF:
            self._forget_at = now + self._forget_every

    def _forget_idle_topics(self, now: float) -> None:
        """Forget topics unused for metadata_max_idle_ms that have no records left (KIP-526).

        Runs from `poll` at most every `_forget_every` seconds: one pass over
        the topics, and over lanes and holds only when some topic is idle.
        A forgotten topic leaves `_wanted` (Metadata requests stop naming
        it), the metadata cache, its empty lanes and its per-topic counters
        (the totals stay); a later submission starts it over.
        """
        used = self._topic_used
        idle_s = self._idle_s
        cutoff = now - idle_s
        stale = {t for t, at in used.items() if at <= cutoff}
        if stale:
            # batches queued, retrying or on the wire all stay in their lane's list
            live = {lane.topic for lane in self._active if lane.batches}
            for hold in self.holds.values():
                live.update(c.sub.topic for c in hold.chunks)
            live.update(self._unplaced)
            stale -= live
        if stale:
            self._forget(stale, now)
        nxt = min((at for at in used.values()), default=_INF)
        self._forget_at = _INF if nxt == _INF else max(nxt + idle_s, now + self._forget_every)

    def _forget(self, topics: set[str], now: float) -> None:
        gone: set[Lane] = set()
        groups: set[Group] = set()
        for key, lane in list(self.lanes.items()):
            if lane.topic not in topics:
                continue
            del self.lanes[key]
            self._active.pop(lane, None)
            gone.add(lane)
            group = lane.group
            groups.add(group)
            if group.idempotent and group.producer_id >= 0 and lane.next_seq and lane.current:
                # The broker keeps this partition's last sequence under the current
                # producer id and epoch: a new lane starting at 0 would be refused.
                if len(group.forgotten) >= _FORGOTTEN_LANES_MAX:
                    group.forgotten.clear()
                    group.forgot_many = True
                if not group.forgot_many:
                    group.forgotten.add((lane.topic, lane.partition))
        for group in groups:
            group.lanes = [lane for lane in group.lanes if lane not in gone]
        if gone:
            for conn in self.conns.values():
                if conn.blocked:
                    conn.blocked -= gone
        for t in topics:
            del self._topic_used[t]
            self._wanted.discard(t)
            self.metadata.topics.pop(t, None)
            self._topic_wait.pop(t, None)
            self._topic_stats.pop(t, None)
        self.topics_forgotten += len(topics)
        self._forgotten_topics.extend(sorted(topics))
        log.info("forgot %d topic(s) unused for %d ms: %s", len(topics),
                 self.kafka.metadata_max_idle_ms, _names(topics))

    def _lane_back(self, group: Group, lane: Lane) -> None:
        """A new lane in a group that forgot lanes: bump the epoch if it was one of them.

        The broker still holds the forgotten lane's last sequence number under
        this producer id and epoch; the new lane, with nothing numbered, takes
        a new epoch from 0 (the same bump as after a lost sequence, without an
        error first).
        """
        if not (group.forgot_many or (lane.topic, lane.partition) in group.forgotten):
            return
        if group.state is PidState.READY:
            log.info("topic %r partition %d comes back after it was forgotten: new epoch for "
                     "producer id %d", lane.topic, lane.partition, group.producer_id)
            self._move(group, PidState.BUMP_PENDING)
        # any other state ends with a new producer id or epoch before the next send

    def topic_result(self, topic: str, now: float) -> tuple[int, list[int]] | None:
        """(0, partitions) or (error, []) once the answer is final; None while waiting."""
        info = self.metadata.topics.get(topic)
        if info is None:
            return None
        if info.error == 0:
            return 0, list(info.partitions)
        return (info.error, []) if self._topic_final(topic, info.error, now) else None

    def _topic_final(self, topic: str, code: int, now: float) -> bool:
        """Whether a topic-level metadata error is the answer, not a passing state.

        UNKNOWN_TOPIC_OR_PARTITION is final once the topic stayed unknown for
        `unknown_topic_wait_ms` (auto-creation, or a topic created moments ago
        elsewhere, shows up within it); other retriable errors (no leader
        yet...) never are; anything else at once.
        """
        if code == UNKNOWN_TOPIC_OR_PARTITION:
            since = self._topic_wait.get(topic)
            return since is None or now >= since + self.kafka.unknown_topic_wait_ms / 1000.0
        return not error_info(code).retriable

    # ------------------------------------------------------------------ connection events

    def connected(self, node: int, now: float) -> None:
        conn = self.conns[node]
        self._move(conn, ConnState.NEGOTIATING)
        self._send_api_versions(conn, now)

    def connect_failed(self, node: int, now: float, reason: str, error: int = 0) -> None:
        """A connection attempt failed. `error`: a Kafka code naming the cause (0: none).

        The driver gives a code when the cause will not go away by retrying
        (a TLS handshake refused: SASL_AUTHENTICATION_FAILED); records that
        time out waiting for this broker then fail with it (`_expiry_cause`).
        """
        conn = self.conns.get(node)
        if conn is None or conn.state in (ConnState.DOWN, ConnState.BACKOFF):
            return
        self._note_cause(conn, error, reason)
        self._log_failure(conn, now, logging.WARNING, "connection failed", reason)
        self._lost(conn, now, timed_out=None)

    def disconnected(self, node: int, now: float, reason: str, error: int = 0) -> None:
        """An open connection closed. `error` as for `connect_failed`."""
        conn = self.conns.get(node)
        if conn is None or conn.state in (ConnState.DOWN, ConnState.BACKOFF):
            return
        self._note_cause(conn, error, reason)
        if conn.state is ConnState.READY:
            # a working connection went away: news, whatever happens next
            log.warning("kafka broker %s (%s:%s): connection lost: %s (%d requests in flight)",
                        node, conn.host, conn.port, reason, len(conn.inflight))
        else:
            self._log_failure(conn, now, logging.WARNING, "connection closed before it was ready",
                              reason)
        self._lost(conn, now, timed_out=None)

    def authenticated(self, node: int, now: float) -> None:
        self._conn_ready(self.conns[node], now)

    def auth_failed(self, node: int, now: float, reason: str,
                    error: int = SASL_AUTHENTICATION_FAILED) -> None:
        """SASL failed on `node`; `error` is the Kafka code (kafkad.broker.security errno)."""
        conn = self.conns.get(node)
        if conn is None or conn.state is not ConnState.AUTHENTICATING:
            return
        self._note_cause(conn, error, reason)
        self._log_failure(conn, now, logging.ERROR, "authentication failed", reason)
        conn.failures = max(conn.failures, 30)  # permanent: the longest backoff
        self._lost(conn, now, timed_out=None)

    def _conn_ready(self, conn: Conn, now: float) -> None:
        self._move(conn, ConnState.READY)
        conn.failures = 0
        if conn.fail_count:
            log.info("kafka broker %s (%s:%s): connected again after %d failed attempt(s) "
                     "over %.1f s", conn.node, conn.host, conn.port, conn.fail_count,
                     now - conn.failing_since)
            conn.fail_count = 0
            conn.fail_what = ""
        conn.cause = self._cause = 0
        conn.cause_text = self._cause_text = ""

    def _note_cause(self, conn: Conn, error: int, reason: str) -> None:
        """Remember why `conn` failed when the driver named a Kafka error for it."""
        conn.cause = self._cause = error
        conn.cause_text = self._cause_text = reason if error else ""

    def connection_error(self) -> int:
        """The Kafka code of the last connection failure while no connection is ready, else 0."""
        if self._cause and not any(c.state is ConnState.READY for c in self.conns.values()):
            return self._cause
        return 0

    def unreachable(self) -> bool:
        """Every broker known failed its last connection attempt, and none is being tried now.

        False until each has been tried once since it was last ready (a daemon
        just started, or a connection that just dropped and is about to be
        tried again, has not failed yet). The IPC side answers a topic's
        METADATA at once then, instead of after `[ipc] metadata_timeout_s`.
        """
        return all(c.fail_count and c.state in _DOWN_STATES for c in self.conns.values())

    def _expiry_cause(self, lane: Lane) -> tuple[int, str]:
        """The error and log text for records of `lane` whose delivery timeout passed.

        REQUEST_TIMED_OUT unless the records were kept from the broker by a
        connection that keeps failing for a reason that has a Kafka code (a
        refused login or TLS handshake): then that code, so the sender sees
        the cause. The partition's leader's connection decides; with no
        leader known (no metadata yet), the last failure of any connection,
        if none is ready.
        """
        leader = self.metadata.leader(lane.topic, lane.partition)
        if leader >= 0:
            conn = self.conns.get(leader)
            if conn is not None and conn.cause:
                return conn.cause, f"delivery timeout; broker {leader}: {conn.cause_text}"
        elif self.connection_error():
            return self._cause, f"delivery timeout; no broker reachable: {self._cause_text}"
        return REQUEST_TIMED_OUT, "delivery timeout"

    def _log_failure(self, conn: Conn, now: float, level: int, what: str, reason: str) -> None:
        """Log a failed connection attempt once per change of state, never per retry.

        A broker that stays away is retried every second or so. The operator
        needs its first failure (or a change in what fails, e.g. from refused
        to a refused login), a summary with the count every
        _FAILURE_SUMMARY_INTERVAL while it lasts, and one line when it
        connects again (`_conn_ready`). Each retry is logged at DEBUG.
        """
        conn.fail_count += 1
        head = "kafka broker %s (%s:%s): "
        if conn.fail_count == 1 or what != conn.fail_what:
            if conn.fail_count == 1:
                conn.failing_since = now
            conn.fail_what = what
            conn.logged_at = now
            log.log(level, head + "%s: %s (retrying with backoff; further failures are summarized "
                    "every %d minutes)", conn.node, conn.host, conn.port, what, reason,
                    _FAILURE_SUMMARY_INTERVAL // 60)
        elif now - conn.logged_at >= _FAILURE_SUMMARY_INTERVAL:
            conn.logged_at = now
            log.log(level, head + "still failing: %d attempts failed over %.0f s; the last: %s: %s",
                    conn.node, conn.host, conn.port, conn.fail_count, now - conn.failing_since,
                    what, reason)
        else:
            log.debug(head + "%s: %s (attempt %d)", conn.node, conn.host, conn.port, what, reason,
                      conn.fail_count)

    def _move(self, obj, state) -> None:
        """Change a connection's or producer id's state; every lane may be affected."""
        advance(obj, state)
        self._dirty_all = True

    def set_writable(self, node: int, writable: bool) -> None:
        """The driver's send buffer for `node` is over (False) or back under (True) its limit.

        Nothing new is sent to a node that is not writable, which bounds the
        bytes waiting in a socket buffer when acks=0 traffic (no in-flight
        limit) meets a slow broker.
        """
        conn = self.conns.get(node)
        if conn is not None and conn.writable != writable:
            conn.writable = writable
            self._dirty_all = True

    def versions(self, node: int) -> dict[int, tuple[int, int]]:
        """The API version ranges broker `node` announced ({api_key: (min, max)})."""
        return dict(self.conns[node].versions)

    def _lost(self, conn: Conn, now: float, timed_out: Request | None) -> None:
        """The connection is gone: settle everything that was on it, then back off."""
        reqs = list(conn.inflight)
        conn.inflight.clear()
        # Requests queued for this connection but not handed out yet are settled
        # below with the rest; they are never handed out (`_take_sends`).
        if conn.state is not ConnState.CONNECTING:
            self._meta_needed = True  # a lost broker often means moved leaders
        self._move(conn, ConnState.BACKOFF)
        conn.writable = True
        conn.failures += 1
        base = self.kafka.reconnect_backoff_ms / 1000.0
        cap = self.kafka.reconnect_backoff_max_ms / 1000.0
        conn.retry_at = now + self._jitter(min(cap, base * 2 ** min(conn.failures - 1, 30)))
        rt = self.kafka.request_timeout_ms / 1000.0
        for req in reqs:
            key = req.api_key
            if key == API_PRODUCE:
                timed = req is timed_out or now >= req.sent_at + rt
                for b in req.batches:
                    b.maybe_written = True
                    self._batch_failed(b, REQUEST_TIMED_OUT if timed else NETWORK_EXCEPTION,
                                       now, timeout=timed, lost=True)
            elif key == API_METADATA:
                self._meta_inflight = False
            elif key == API_INIT_PID:
                group = req.group
                self._move(group, PidState.NONE)
                group.retry_at = now + self._jitter(0.1)

    # ------------------------------------------------------------------ responses

    def decode(self, req: Request, frame: bytes) -> Any:
        """Decode the answer to `req` (raises kafkad.protocol.ProtocolError)."""
        return decode_response(req.response_cls, req.version, frame)[1]

    def answer(self, req: Request, frame: bytes, now: float) -> None:
        """The answer frame to `req`: `response(req, decode(req, frame), now)`, the usual one faster.

        A clean answer to a one-batch Produce request (a sync send's) is read
        as plain values (`decode_produce_raw`) and delivers its batch without
        the message objects; anything else (an error code, another shape, a
        frame the fast reader does not take) goes the general way. Raises
        kafkad.protocol.ProtocolError for a bad frame.
        """
        if req.api_key == API_PRODUCE:
            batches = req.batches
            if len(batches) == 1:
                raw = decode_produce_raw(req.version, frame)
                if raw is not None:
                    topics = raw[1]
                    if len(topics) == 1:
                        name, parts = topics[0]
                        if len(parts) == 1:
                            p = parts[0]
                            b = batches[0]
                            lane = b.lane
                            if p[1] == 0 and p[0] == lane.partition and name == lane.topic:
                                if self._answered(req, now):
                                    self._delivered(b, p[2], now)
                                return
        self.response(req, self.decode(req, frame), now)

    def _answered(self, req: Request, now: float) -> bool:
        """`req` is answered: off its connection's in-flight list. False: ignore the answer.

        An answer is ignored when the connection was given up (and its
        requests settled) meanwhile.
        """
        conn = self.conns[req.node]
        inflight = conn.inflight
        if not inflight or inflight[0] is not req:
            if req in inflight:
                raise AssertionError(f"{req!r} answered out of order on {conn!r}")
            return False
        inflight.popleft()
        if conn.blocked:
            for lane in conn.blocked:
                lane.dirty = True
            conn.blocked.clear()
        lat = self._latency.get(req.node)
        if lat is None:
            lat = self._latency[req.node] = deque(maxlen=_LATENCY_SAMPLES)
        lat.append(now - req.sent_at)
        return True

    def response(self, req: Request, msg, now: float) -> None:
        """The decoded answer to `req` (the oldest request in flight on its connection)."""
        if not self._answered(req, now):
            return
        key = req.api_key
        if key == API_PRODUCE:
            self._on_produce(req, msg, now)
        elif key == API_METADATA:
            self._on_metadata(msg, now)
        elif key == API_INIT_PID:
            self._on_init_pid(req, msg, now)
        elif key == API_VERSIONS:
            conn = self.conns[req.node]
            self._on_api_versions(conn, msg, now)

    def _on_api_versions(self, conn: Conn, msg, now: float) -> None:
        if msg.error_code == UNSUPPORTED_VERSION:
            theirs = [k for k in msg.api_keys if k.api_key == API_VERSIONS]
            cur = conn.api_versions_version
            if theirs:
                nxt = pick_version(API_VERSIONS, theirs[0].min_version, theirs[0].max_version)
            else:
                nxt = cur - 1
            if nxt is None or nxt >= cur or nxt < 0:
                self._protocol_failure(conn, now, "broker refused every ApiVersions version")
                return
            conn.api_versions_version = nxt
            self._send_api_versions(conn, now)
            return
        if msg.error_code:
            self._protocol_failure(conn, now, f"ApiVersions answered {_err_name(msg.error_code)}")
            return
        conn.versions = {k.api_key: (k.min_version, k.max_version) for k in msg.api_keys}
        missing = [k for k in (API_PRODUCE, API_METADATA) if conn.version(k) is None]
        if missing:
            self._protocol_failure(conn, now, f"no common version for APIs {missing} "
                                   f"(broker offers {conn.versions})")
            return
        if self._sasl:
            self._move(conn, ConnState.AUTHENTICATING)
            self._auth.append(conn.node)
        else:
            self._conn_ready(conn, now)

    def _protocol_failure(self, conn: Conn, now: float, why: str) -> None:
        self._note_cause(conn, UNSUPPORTED_VERSION, why)
        self._log_failure(conn, now, logging.ERROR, "unusable broker", why)
        self._closes.append(conn.node)
        conn.failures = max(conn.failures, 30)
        self._lost(conn, now, timed_out=None)

    def _send_api_versions(self, conn: Conn, now: float) -> None:
        v = conn.api_versions_version
        msg = ApiVersionsRequest(client_software_name="kafkad",
                                 client_software_version=self._client_version or "0")
        self._push(conn, Request(conn.node, msg, v, ApiVersionsResponse, now))

    def _on_metadata(self, msg, now: float) -> None:
        self._dirty_all = True   # leaders may have moved
        self._meta_inflight = False
        # Settled only if the request named every topic wanted now: one wanted
        # while it was on the wire (fetch_partitions) still needs asking for.
        self._meta_needed = not self._wanted <= self._meta_asked
        before = {t.name: self.metadata.partitions(t.name) for t in msg.topics if t.name is not None}
        self.metadata.update(msg, now)
        # topics named by a request sent before they were forgotten stay forgotten
        stray = before.keys() - self._topic_used.keys()
        for name in stray:
            self.metadata.topics.pop(name, None)
        self._note_partition_changes(before)
        for node, (host, port) in self.metadata.brokers.items():
            conn = self.conns.get(node)
            if conn is None:
                self.conns[node] = Conn(node, host, port)
            elif (conn.host, conn.port) != (host, port) and conn.state is ConnState.DOWN:
                conn.host, conn.port = host, port
        for t in msg.topics:
            name = t.name
            if name in stray:
                continue
            if t.error_code == 0:
                self._topic_wait.pop(name, None)
                parts = self.metadata.partitions(name) or []
                self._fail_missing_partitions(name, set(parts), now)
                if any(self.metadata.leader(name, p) < 0 for p in parts):
                    self._meta_needed = True
                if parts and name in self._unplaced:
                    self._place_waiting(name, now)
            elif name is not None:
                self._meta_needed = True
                self._topic_wait.setdefault(name, now)

    def _note_partition_changes(self, before: dict[str, list[int] | None]) -> None:
        """Remember topics whose known partition list changed (reported by the next poll).

        Only a topic that had a layout counts: its first layout is what a
        fetch_partitions asker receives anyway. A passing (retriable) error keeps
        the last layout (MetadataCache.update), so only a lasting one is a change.
        """
        for name, old in before.items():
            if old is None:
                continue
            new = self.metadata.partitions(name)
            if new is None:
                info = self.metadata.topics.get(name)
                self._partition_changes[name] = (info.error if info is not None else UNKNOWN_TOPIC_OR_PARTITION, [])
            elif new != old:
                self._partition_changes[name] = (0, list(new))

    def _fail_missing_partitions(self, topic: str, parts: set[int], now: float) -> None:
        for lane in list(self._active):
            if lane.topic == topic and lane.partition not in parts:
                self._fail_lane(lane, UNKNOWN_TOPIC_OR_PARTITION, now,
                                f"topic {topic!r} has no partition {lane.partition}")

    def _on_init_pid(self, req: Request, msg, now: float) -> None:
        group = req.group
        code = msg.error_code
        if code == 0 and (msg.producer_id, msg.producer_epoch) == (group.producer_id, group.epoch):
            # The stamp the group has: renumbering under it would reuse sequence numbers
            # the broker remembers, whose records it would answer "duplicate" and never
            # write. A bump answered so is asked again for a new id; a new id answered
            # so leaves nothing safe to number with.
            if req.msg.producer_id >= 0:
                log.warning("the broker answered a bump of producer id %d epoch %d with the same "
                            "id and epoch; asking for a new id", group.producer_id, group.epoch)
                group.fresh_id = True
                self._move(group, PidState.NONE)
                return
            code = UNKNOWN_SERVER_ERROR
        if code == 0:
            group.producer_id = msg.producer_id
            group.epoch = msg.producer_epoch
            group.fresh_id = False
            group.forgotten.clear()   # a lane coming back starts at 0 under the new id or epoch
            group.forgot_many = False
            self._move(group, PidState.READY)
            pid, epoch = group.producer_id, group.epoch
            for lane in group.lanes:
                # The rest keep their numbered batches under the stamp those were sent
                # with (the broker may have written them: a resend under the new one
                # would be written again) and take the new one once they settled.
                if lane.start_over or not lane.numbered:
                    lane.restamp(pid, epoch)
            return
        info = error_info(code)
        if info.retriable:
            self._move(group, PidState.NONE)
            group.retry_at = now + self._jitter(0.1)
        elif req.msg.producer_id >= 0:
            # The bump was refused: INVALID_PRODUCER_EPOCH or PRODUCER_FENCED, or a
            # broker that cannot bump (Tansu answers UNKNOWN_SERVER_ERROR). A new
            # producer id does as well; only a refusal of that turns idempotence off.
            log.warning("producer id %d epoch %d cannot be bumped (%s); asking for a new id",
                        group.producer_id, group.epoch, _err_name(code))
            group.fresh_id = True
            self._move(group, PidState.NONE)
        else:
            log.error("InitProducerId failed with %s: sending acks=%d batches without "
                      "idempotence (retries may then duplicate records)",
                      _err_name(code), group.acks)
            self._move(group, PidState.DISABLED)
            for lane in group.lanes:
                for b in lane.batches:
                    b.seq = -1

    def _on_produce(self, req: Request, msg, now: float) -> None:
        answers = {}
        for t in msg.responses:
            for p in t.partition_responses:
                answers[(t.name, p.index)] = p
        for b in req.batches:
            lane = b.lane
            p = answers.get((lane.topic, lane.partition))
            if p is None:
                self._batch_failed(b, UNKNOWN_SERVER_ERROR, now, timeout=False, lost=False)
                continue
            code = p.error_code
            if code == 0 or code == DUPLICATE_SEQUENCE_NUMBER:
                self._delivered(b, p.base_offset, now)
            else:
                self._batch_failed(b, code, now, timeout=False, lost=False, answer=p)

    # ------------------------------------------------------------------ batch results

    def _off_wire(self, b: Batch) -> None:
        lane = b.lane
        lane.dirty = True
        if lane.group.acks != 0:
            lane.inflight -= 1
            lane.group.inflight -= 1
        self.in_flight -= b.count

    def _delivered(self, b: Batch, base_offset: int, now: float) -> None:
        lane = b.lane
        self._off_wire(b)
        if lane.batches[0] is b:
            out = self._outcomes
        else:
            # An earlier batch of the lane is unsettled (answered 7 or 20, to be resent):
            # its records come first in their submissions, and the I/O shell maps a
            # submission's outcomes onto its records in the order they come. These
            # wait until everything ahead of them has settled (_finish).
            out = []
            parked = lane.parked
            if parked is None:
                parked = lane.parked = []
            # by place in the lane, not by time: a batch ahead may be acknowledged later
            i = len(parked)
            while i and parked[i - 1][0] > b.order:
                i -= 1
            parked.insert(i, (b.order, out, b))
        off = base_offset
        topic = lane.topic
        ts = self._topic_stats.get(topic)
        if ts is None:
            ts = self._topic_stats[topic] = [0, 0, 0]
        partition = lane.partition
        append = out.append
        # One Outcome per chunk: with one-message submissions, one per record.
        if off < 0:
            for c in b.chunks:
                append(_new_outcome(Outcome, (c.sub.token, topic, partition, 0, -1,
                                              c.hi - c.lo, 0)))
        else:
            for c in b.chunks:
                n = c.hi - c.lo
                append(_new_outcome(Outcome, (c.sub.token, topic, partition, 0, off, n, 0)))
                off += n
        self._finish(b)
        nbytes = b.nbytes - BATCH_OVERHEAD   # the chunks' size bounds (Batch keeps the sum)
        self.queued_bytes -= nbytes
        ts[0] += b.count
        payload = nbytes - b.count * _RECORD_OVERHEAD
        ts[1] += payload
        self.delivered += b.count
        self.delivered_bytes += payload

    def _finish(self, b: Batch) -> None:
        lane = b.lane
        advance(b, BatchState.DONE)
        batches = lane.batches
        batches.remove(b)
        parked = lane.parked
        if parked:
            # Outcomes parked behind b (and whatever else was ahead of them) go now
            # if nothing ahead of them is left.
            ahead = batches[0].order if batches else _INF
            n = 0
            for order, outs, _ in parked:
                if order > ahead:
                    break
                self._outcomes += outs
                n += 1
            del parked[:n]
        if not batches:
            self._active.pop(lane, None)

    def _batch_failed(self, b: Batch, code: int, now: float, *, timeout: bool, lost: bool,
                      answer=None) -> None:
        """A send of `b` failed with `code` (or was lost): retry what may be retried, in order."""
        lane = b.lane
        group = lane.group
        if code in WRITTEN_BUT_FAILED:
            # The leader wrote it (and remembers its sequence range); only its replicas
            # fell short. Dropping it later must not hand its sequence numbers to the
            # records behind it: the broker would take them for this batch's retry and
            # answer "duplicate" without writing them (an epoch bump instead).
            b.maybe_written = True
        self._off_wire(b)
        lane.queued += b.count
        self.queued += b.count
        advance(b, BatchState.RETRY)
        info = error_info(code)
        if info.invalid_metadata:
            hint = getattr(answer, "current_leader", None)
            if hint is not None and self.metadata.leader_hint(
                    lane.topic, lane.partition, hint.leader_id, hint.leader_epoch):
                self._dirty_all = True   # the resend can go to the new leader at once
            else:
                self.metadata.forget_leader(lane.topic, lane.partition)
            self._meta_needed = True
        collateral = False
        if code in SEQUENCE_LOST:
            retriable = True
            if code == OUT_OF_ORDER_SEQUENCE_NUMBER and (lane.batches[0] is not b or b.sent_seq != b.seq):
                # an earlier batch failed first, or records failed out of one moved this
                # batch's numbers down since it was sent: resend in order
                collateral = True
            elif group.state is not PidState.READY:
                lane.start_over = True   # sent before a bump already under way: it renumbers
                collateral = True
            else:
                current = lane.current
                log.warning("%s[%d]: broker lost producer %d's sequence (%s): %s",
                            lane.topic, lane.partition, lane.pid, _err_name(code),
                            "bumping the epoch" if current else "starting over under the current epoch")
                if current:
                    group.fresh_id = code == INVALID_PRODUCER_EPOCH
                self._start_over(lane)
        elif code == MESSAGE_TOO_LARGE and b.count > 1:
            self._split(b)
            retriable = True
            collateral = True
        else:
            retriable = timeout or lost or info.retriable
        self._retry_or_fail(b, code, now, retriable=retriable, timeout=timeout,
                            counts=not collateral)

    def _split(self, b: Batch) -> None:
        """The broker's batch limit is smaller than ours: halve `b` (same sequence range)."""
        lane = b.lane
        half = b.count // 2
        first = Batch(lane, b.created_at, BATCH_OVERHEAD)
        moved = 0
        keep: list[Chunk] = []
        for c in b.chunks:
            if moved >= half:
                keep.append(c)
            elif moved + c.count <= half:
                first.add(c)
                moved += c.count
            else:
                k = half - moved
                first.add(c.split(k, self._chunk_prefix_bytes(c, k)))
                moved += k
                keep.append(c)
        b.set_chunks(keep, BATCH_OVERHEAD)
        first.state = BatchState.RETRY   # born a copy of b's state, not a transition
        first.attempts = b.attempts
        first.maybe_written = b.maybe_written
        # Its place: after everything ahead of b (in the lane or parked), before b.
        idx = lane.batches.index(b)
        lo = lane.batches[idx - 1].order if idx else b.order - 1.0
        for order, _, _ in lane.parked or ():
            if lo < order < b.order:
                lo = order
        first.order = (lo + b.order) / 2
        if b.seq >= 0:
            first.seq = b.seq
            b.seq = (b.seq + first.count) % SEQ_MODULO
        lane.batches.insert(idx, first)
        self._log_split(lane)

    def _log_split(self, lane: Lane) -> None:
        log.warning("%s[%d]: broker refused a batch as too large; sending smaller batches "
                    "(lower [kafka] batch_max_bytes to match the topic's max.message.bytes)",
                    lane.topic, lane.partition)

    def _retry_or_fail(self, b: Batch, code: int, now: float, *, retriable: bool,
                       timeout: bool, counts: bool) -> None:
        lane = b.lane
        if lane.batches[0] is not b:
            # Records ahead of b in its lane are unresolved (waiting for a resend or
            # still on the wire). Failing b now would report a submission's later
            # records before its earlier ones, and outcomes map onto records by
            # arrival order: b waits as a collateral retry instead, and its fate is
            # decided in lane order (by its resend, or by the expiry sweep).
            b.retry_at = now
            return
        keep: list[Chunk] = []
        failed: list[tuple[Chunk, int]] = []
        retries = b.attempts  # failures so far, this one included
        for c in b.chunks:
            s = c.sub.settings
            if not retriable:
                failed.append((c, code))
            elif now >= c.deadline:
                failed.append((c, REQUEST_TIMED_OUT))
            elif timeout and not s.retry_on_timeouts:
                failed.append((c, REQUEST_TIMED_OUT))
            elif (counts and s.async_send and s.retry_limit is not None
                  and retries > s.retry_limit):
                failed.append((c, code))
            else:
                keep.append(c)
        if failed:
            self._drop_from_batch(b, keep, failed, now)
            if not keep:
                return
        b.retry_at = now + (self._backoff(b) if counts else 0.0)
        if counts:
            self.retried += b.count

    def _drop_from_batch(self, b: Batch, keep: list[Chunk], failed: list[tuple[Chunk, int]],
                         now: float, why: str | None = None) -> None:
        """Fail `failed` chunks out of `b` (state RETRY or not yet sent), fixing sequences."""
        lane = b.lane
        lane.dirty = True
        removed = sum(c.count for c, _ in failed)
        if b.seq >= 0:
            if b.maybe_written:
                # Unknown whether the broker wrote them: only a new epoch makes the
                # remaining sequence numbers safe again.
                self._start_over(lane)
            else:
                lane.remove_sequence_gap(b, removed)
        lane.queued -= removed
        self.queued -= removed
        for c, code in failed:
            self._fail_chunk(c, code, why, lane=lane)
        if keep:
            b.set_chunks(keep, BATCH_OVERHEAD)
        else:
            self._finish(b)

    def _start_over(self, lane: Lane) -> None:
        """`lane`'s sequence numbers are not safe under its stamp: renumber it under a newer one.

        Under the group's current stamp, that takes an epoch bump. A lane still
        under an older stamp has never sent under the current one, which it
        takes, from 0, once nothing of it is on the wire (`_visit_lane`).
        """
        lane.start_over = True
        lane.dirty = True
        group = lane.group
        if group.state is PidState.READY and lane.current:
            self._move(group, PidState.BUMP_PENDING)

    def _fail_lane(self, lane: Lane, code: int, now: float, why: str) -> None:
        """Fail the records of `lane` ahead of its first batch on the wire.

        Records behind a batch on the wire wait for its answer (or its request
        timeout): failing them first would report a submission's records out of
        order. The lane fails them in order once it is visited again.
        """
        for b in list(lane.batches):
            if b.state is BatchState.IN_FLIGHT:
                break
            self._drop_from_batch(b, [], [(c, code) for c in b.chunks], now, why or None)

    def _fail_chunk(self, c: Chunk, code: int, why: str | None, lane: Lane | None = None,
                    quiet: bool = False) -> None:
        """Report `c` failed with `code`: one outcome, one log line (unless `quiet`), counted."""
        sub = c.sub
        n = c.hi - c.lo
        if lane is None:      # failed before it joined a lane: still counted as queued
            self.queued -= n
        self.queued_bytes -= c.nbytes
        self._count_failure(sub.topic, n, code)
        self._outcomes.append(Outcome(sub.token, sub.topic, sub.partition, code, -1, 0, n))
        if quiet:
            return
        log.warning("failed to deliver %d message(s) to %s: %s%s; %s", n, where(sub.topic, sub.partition),
                    _err_name(code), f" ({why})" if why else "",
                    _describe(sub, c.lo, c.hi, self.log_messages_on_error))

    def _backoff(self, b: Batch) -> float:
        s = b.chunks[0].sub.settings
        base = s.retry_backoff_ms / 1000.0
        cap = self.kafka.retry_backoff_max_ms / 1000.0
        return self._jitter(min(cap, base * 2 ** min(b.attempts - 1, 30)))

    def _jitter(self, t: float) -> float:
        return t * (0.8 + 0.4 * self._rng.random())

    # ------------------------------------------------------------------ the sync fast path
    #
    # A sync send to a settled daemon needs two things of the engine: its batch
    # built and handed out, and its outcome once answered. A poll after each
    # would look at everything else too (connections, timers, metadata,
    # producer ids, every lane), and on the path of a sync round trip that
    # costs as much as the sync work itself. A driver may instead call
    # `send_sync` after a sync submission and `take_outcomes` after answers,
    # and skip the poll those events ask for while `needs_poll` says no: the
    # poll would then have nothing to do before the deadline it last returned.

    def send_sync(self, now: float) -> list[Request]:
        """The requests the sync submissions since the last poll can send now.

        Only those submissions' lanes are looked at, exactly as the poll
        would look at them; what they cannot send yet waits for the poll.
        While every lane waits for a look (new metadata, a sweep) or a drain
        runs, nothing: the poll decides.
        """
        lanes, self._sync_lanes = self._sync_lanes, []
        if not lanes or self._dirty_all or self.draining:
            return []
        if len(lanes) == 1 and self._send_one(lanes[0], now):
            return self._take_sends()
        buckets: dict[tuple, list[list[Batch]]] = {}
        for lane in lanes:
            if lane.dirty and lane in self._active:
                lane.dirty = False
                lane.wake_at = self._visit_lane(lane, now, buckets)
        for (node, acks, timeout_ms), picked in buckets.items():
            self._build_requests(self.conns[node], acks, timeout_ms, picked, now)
        return self._take_sends()

    def _send_one(self, lane: Lane, now: float) -> bool:
        """`send_sync` for the usual case, one lane holding one new sync batch; False: not that case.

        What `_visit_lane` and `_build_requests` do for such a lane, without
        their loops and containers: the batch is due (sync), not expired, its
        group has its producer id (or none is used), its leader's connection
        is ready and writable and takes one more request. In any other case
        nothing is changed and the general way decides.
        tests/engine/test_sync_fast_path.py compares both ways.
        """
        batches = lane.batches
        if len(batches) != 1 or not lane.dirty or lane.inflight or lane not in self._active:
            return False
        b = batches[0]
        if b.state is not _OPEN or not b.sync or now >= b.deadline:
            return False
        group = lane.group
        if group.state is not _PID_READY and group.state is not _PID_DISABLED:
            return False
        leader = self.metadata.leader(lane.topic, lane.partition)
        if leader < 0:
            return False
        conn = self.conns.get(leader)
        if conn is None or conn.state is not _CONN_READY or not conn.writable:
            return False
        acks = group.acks
        if acks != 0 and len(conn.inflight) >= self.kafka.max_in_flight_per_connection:
            return False
        lane.dirty = False
        lane.wake_at = b.deadline
        advance(b, BatchState.READY)
        try:
            self._encode(b)
        except Exception as exc:  # noqa: BLE001 - as in _build_requests
            self._drop_from_batch(
                b, [], [(c, UNKNOWN_SERVER_ERROR) for c in b.chunks], now,
                f"could not encode the batch: {type(exc).__name__}: {exc}")
            return True
        self._send_produce(conn, acks, group.timeout_ms, [b], now)
        return True

    def take_outcomes(self) -> list[Outcome]:
        """The outcomes settled since the last poll (answers read), now rather than in its Actions."""
        out, self._outcomes = self._outcomes, []
        return out

    def needs_poll(self, now: float) -> bool:
        """Whether `poll(now)` would do anything that its last deadline does not already cover.

        False only when, since the last poll, the engine took sync
        submissions (sent by `send_sync`) and clean Produce answers (their
        outcomes taken) and nothing else. What makes the few checks below
        enough: every state change of a connection or producer id marks every
        lane for a look (`_move` sets `_dirty_all`), a failed batch marks its
        lane, and whatever a poll does later than now is in its deadline. So:
        nothing is due, nothing waits to be handed out, no lane waits for a
        look or a wake-up before that deadline, no producer id is to be asked
        for (a new group with records, a bump whose last batch came back), and
        no request on the wire times out before it.
        tests/engine/test_sync_fast_path.py checks that a poll then does
        nothing.
        """
        due = self._deadline
        if (now >= due or self._dirty_all or self.draining or self._sync_lanes or self._outcomes
                or self._sends or self._auth or self._closes or self._want_connect
                or self._partition_changes or self._forgotten_topics or self._hold_due < due
                or (self._meta_needed and not self._meta_inflight)):
            return True
        if len(self._active) > _NEEDS_POLL_SCAN_MAX:
            return True     # a busy producer: its polls are shared by many records anyway
        for lane in self._active:
            if lane.dirty or lane.wake_at < due:
                return True
        rt = self.kafka.request_timeout_ms / 1000.0
        for conn in self.conns.values():
            if conn.inflight and conn.inflight[0].sent_at + rt < due:
                return True
        # what _poll_group acts on: neither is a state change (_dirty_all)
        for group in self.groups.values():
            st = group.state
            if st is PidState.NONE:
                if any(lane.batches for lane in group.lanes):
                    return True     # records waiting for their first producer id
            elif st is PidState.BUMP_PENDING and not group.inflight:
                return True         # the bump's last batch on the wire came back
        return False

    # ------------------------------------------------------------------ poll

    def poll(self, now: float) -> Actions:
        """Everything due at `now`: timers, releases, expiry, new requests. See `Actions`."""
        act = Actions()
        deadline = _INF
        self._sync_lanes.clear()    # looked at below if send_sync did not
        rt = self.kafka.request_timeout_ms / 1000.0
        # 1. request timeouts, reconnect backoffs, bootstrap connections no longer needed
        # Bootstrap connections go once a broker known by node id is ready (its
        # list came from Metadata). Not before: when no advertised address can be
        # reached, the bootstrap connection is the only way to learn a new list,
        # and closing it once ready would reopen it at once, in a loop.
        retire = any(not c.bootstrap and c.state is ConnState.READY for c in self.conns.values())
        for conn in list(self.conns.values()):
            if (retire and conn.bootstrap and conn.state is ConnState.READY
                    and not conn.inflight):
                # Talk to brokers by node id only, so that each broker sees one
                # connection from this daemon.
                self._closes.append(conn.node)
                self._move(conn, ConnState.BACKOFF)
                conn.retry_at = now
                continue
            if conn.inflight:
                first = conn.inflight[0]
                if now >= first.sent_at + rt:
                    why = (f"no answer to {first!r} within {self.kafka.request_timeout_ms} ms; "
                           f"closing the connection")
                    if conn.state is ConnState.READY:
                        log.warning("kafka broker %s (%s:%s): %s", conn.node, conn.host,
                                    conn.port, why)
                    else:
                        self._log_failure(conn, now, logging.WARNING, "no answer", why)
                    self._closes.append(conn.node)
                    self._lost(conn, now, timed_out=first)
            if conn.state is ConnState.BACKOFF:
                if now >= conn.retry_at:
                    self._move(conn, ConnState.DOWN)
                else:
                    deadline = min(deadline, conn.retry_at)
        # 2. session holds
        if self.draining or now >= self._hold_due:
            due = _INF
            for key, hold in list(self.holds.items()):
                if self.draining or now >= hold.due:
                    self._release(hold, now, everything=True)
                if hold.count == 0:
                    del self.holds[key]
                else:
                    due = min(due, hold.due)
            self._hold_due = due
        deadline = min(deadline, self._hold_due)
        # 3. idle topics, then metadata
        if now >= self._forget_at:
            self._forget_idle_topics(now)
        deadline = min(deadline, self._forget_at, self._poll_metadata(now, act))
        # 4. producer ids
        for group in self.groups.values():
            deadline = min(deadline, self._poll_group(group, now, act))
        # 5. lanes: expiry, readiness, what can be sent where; records waiting for
        # their topic's partitions: expiry
        deadline = min(deadline, self._poll_lanes(now, act))
        if self._unplaced:
            deadline = min(deadline, self._expire_waiting(now))
        if self._meta_needed and not self._meta_inflight:
            # a lane found its leader unknown or unreachable: refresh now or at the backoff
            deadline = min(deadline, self._poll_metadata(now, act))
        act.closes, self._closes = self._closes, []
        act.outcomes, self._outcomes = self._outcomes, []
        if self._partition_changes:
            act.partition_changes = [(t, err, parts) for t, (err, parts) in self._partition_changes.items()]
            self._partition_changes = {}
        if self._forgotten_topics:
            act.forgotten_topics, self._forgotten_topics = self._forgotten_topics, []
        self._handout(act)
        for conn in self.conns.values():
            if conn.state is ConnState.DOWN and conn.node in self._want_connect:
                self._move(conn, ConnState.CONNECTING)
                act.connects.append((conn.node, conn.host, conn.port))
        self._want_connect.clear()
        # 6. the next request timeout, taken now that this poll's own requests
        # are in flight: step 1 runs before they are sent, and the last request
        # of a stream has no later event to bring the engine back for it.
        for conn in self.conns.values():
            if conn.inflight:
                deadline = min(deadline, conn.inflight[0].sent_at + rt)
        self._deadline = deadline
        act.deadline = None if deadline == _INF else deadline
        return act

    def _handout(self, act: Actions) -> None:
        """Move the queued requests and SASL starts into `act`, for open connections only.

        Requests are queued by events between polls (`connected` queues
        ApiVersions) and by `poll` itself; the connection may be lost or
        closed before they leave. `_take_sends` (here and in `send_sync`) is
        the one place they leave the engine, so whatever path closed a
        connection, nothing is handed out for it: its requests were settled
        when it was lost, and the driver has no socket for it any more.
        """
        if self._sends:
            act.sends = self._take_sends()
        if self._auth:
            auth, self._auth = self._auth, []
            conns = self.conns
            act.authenticate = [n for n in auth if conns[n].state is ConnState.AUTHENTICATING]

    def _take_sends(self) -> list[Request]:
        sends, self._sends = self._sends, []
        conns = self.conns
        return [r for r in sends if conns[r.node].state in _OPEN_STATES]

    def _push(self, conn: Conn, req: Request) -> None:
        if req.expects_response:
            conn.inflight.append(req)
        self.requests += 1
        self._sends.append(req)

    def _ready_conn(self) -> Conn | None:
        best = None
        for conn in self.conns.values():
            if conn.state is ConnState.READY and (best is None or
                                                  len(conn.inflight) < len(best.inflight)):
                best = conn
        return best

    def _connect_some(self, now: float) -> None:
        """No connection is ready: open one to a known broker or a bootstrap address.

        A broker that failed since it was last ready (a leader that went
        away, reconnected to in the background) does not count as the
        attempt under way, and is the last choice: the metadata that says
        where its partitions went must come from another broker.
        """
        if any(c.state in (ConnState.CONNECTING, ConnState.NEGOTIATING, ConnState.AUTHENTICATING)
               and not c.failures for c in self.conns.values()):
            return
        down = [c for c in self.conns.values() if c.state is ConnState.DOWN]
        # Brokers from metadata first (healthy ones before failing ones); bootstrap
        # addresses when none of them can be tried.
        known = [c for c in down if not c.bootstrap]
        candidates = [c for c in known if not c.failures] or known or down
        if not candidates:
            return
        self._connect_cursor = (self._connect_cursor + 1) % len(candidates)
        self._want_connect.add(candidates[self._connect_cursor].node)

    def _poll_metadata(self, now: float, act: Actions) -> float:
        md = self.metadata
        if md.updated_at is not None and now >= md.updated_at + self.kafka.metadata_max_age_ms / 1000.0:
            self._meta_needed = True
        # records of topics the cluster says do not exist: fail them after the wait
        wait_s = self.kafka.unknown_topic_wait_ms / 1000.0
        deadline = _INF
        for name, since in list(self._topic_wait.items()):
            info = md.topics.get(name)
            if info is None or info.error == 0:
                continue
            if self._topic_final(name, info.error, now):
                for lane in list(self._active):
                    if lane.topic == name:
                        self._fail_lane(lane, info.error, now, "")
                if name in self._unplaced:
                    self._fail_waiting(name, info.error, "")
                # stop asking about it until someone sends to it again
                self._wanted.discard(name)
                del self._topic_wait[name]
            elif now < since + wait_s:
                deadline = min(deadline, since + wait_s)
        if md.updated_at is not None and not self._meta_needed:
            deadline = min(deadline, md.updated_at + self.kafka.metadata_max_age_ms / 1000.0)
        if not self._meta_needed or self._meta_inflight:
            return deadline
        if now < self._meta_next:
            return min(deadline, self._meta_next)
        conn = self._ready_conn()
        if conn is None:
            self._connect_some(now)
            return deadline
        v = conn.version(API_METADATA)
        self._meta_asked = frozenset(self._wanted)
        topics = [MetadataRequest.MetadataRequestTopic(name=t) for t in sorted(self._meta_asked)]
        msg = MetadataRequest(topics=topics,
                              allow_auto_topic_creation=self.kafka.allow_auto_create_topics)
        self._push(conn, Request(conn.node, msg, v, MetadataResponse, now))
        self._meta_inflight = True
        cap = max(METADATA_MIN_INTERVAL, self.kafka.retry_backoff_max_ms / 1000.0)
        self._meta_next = now + min(cap, self._jitter(
            METADATA_MIN_INTERVAL * 2 ** min(self._meta_retries, 30)))
        self._meta_retries += 1
        return deadline

    def _poll_group(self, group: Group, now: float, act: Actions) -> float:
        st = group.state
        if st is PidState.BUMP_PENDING:
            if group.inflight:
                return _INF
        elif st is not PidState.NONE:
            return _INF
        if not any(lane.batches for lane in group.lanes):
            return _INF
        if now < group.retry_at:
            return group.retry_at
        conn = self._ready_conn()
        if conn is None:
            self._connect_some(now)
            return _INF
        rng = conn.versions.get(API_INIT_PID)
        v = None if rng is None else pick_version(API_INIT_PID, rng[0], rng[1])
        if v is None:
            log.error("broker %s does not offer InitProducerId: sending without idempotence",
                      conn.node)
            self._move(group, PidState.INITIALIZING)    # (asked, in effect: the answer is no)
            self._move(group, PidState.DISABLED)
            for lane in group.lanes:
                for b in lane.batches:
                    b.seq = -1
            return _INF
        bump = (st is PidState.BUMP_PENDING and v >= 3 and group.producer_id >= 0
                and not group.fresh_id)
        msg = InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000,
                                    producer_id=group.producer_id if bump else -1,
                                    producer_epoch=group.epoch if bump else -1)
        self._move(group, PidState.INITIALIZING)
        self._push(conn, Request(conn.node, msg, v, InitProducerIdResponse, now, group=group))
        return _INF

    def _poll_lanes(self, now: float, act: Actions) -> float:
        """Visit the lanes that changed or whose timers are due; send what can go."""
        deadline = _INF
        if self._active and now >= self._last_sweep + self._sweep_interval:
            # Safety net: look at every lane now and then even if no event said so.
            self._dirty_all = True
        visit_all = self._dirty_all
        if visit_all:
            self._dirty_all = False
            self._last_sweep = now
            self._leader_wait = False
        buckets: dict[tuple, list[list[Batch]]] = {}
        for lane in list(self._active):
            if not (visit_all or lane.dirty or now >= lane.wake_at):
                if lane.wake_at < deadline:
                    deadline = lane.wake_at
                continue
            lane.dirty = False
            wake = self._visit_lane(lane, now, buckets)
            lane.wake_at = wake
            if wake < deadline:
                deadline = wake
        for (node, acks, timeout_ms), lanes in buckets.items():
            self._build_requests(self.conns[node], acks, timeout_ms, lanes, now)
        if visit_all and not self._leader_wait:
            self._meta_retries = 0   # every lane has a reachable leader: the next refresh is fast
        if self._active:
            deadline = min(deadline, self._last_sweep + self._sweep_interval)
        return deadline

    def _visit_lane(self, lane: Lane, now: float, buckets: dict) -> float:
        """Expire, ready and pick `lane`'s batches; return when it needs a look again."""
        deadline = _INF
        group = lane.group
        # expiry of records not on the wire, in lane order up to the first batch on
        # the wire: the records behind it wait for its answer or request timeout,
        # so that each submission's outcomes come in record order
        for b in list(lane.batches):
            if b.state is BatchState.IN_FLIGHT:
                break
            if now >= b.deadline:
                code, why = self._expiry_cause(lane)
                keep = [c for c in b.chunks if now < c.deadline]
                expired = [(c, code) for c in b.chunks if now >= c.deadline]
                self._drop_from_batch(b, keep, expired, now, why)
                if keep:
                    # b stays unresolved: the records behind it (and outcomes parked
                    # behind it) come after its own, so they wait for it
                    deadline = b.deadline
                    break
            else:
                deadline = b.deadline
                break
        if not lane.batches:
            return _INF
        # readiness
        linger = self._linger_s
        draining = self.draining
        waiting_retry = False
        for b in lane.batches:
            st = b.state
            if st is BatchState.OPEN:
                if b.sync or draining or now >= b.created_at + linger:
                    advance(b, BatchState.READY)
                else:
                    deadline = min(deadline, b.created_at + linger)
            elif st is BatchState.RETRY:
                if lane.inflight or waiting_retry:
                    waiting_retry = True
                elif now >= b.retry_at:
                    advance(b, BatchState.READY)
                else:
                    deadline = min(deadline, b.retry_at)
                    waiting_retry = True
        # The checks below that give up wait for an event that marks lanes dirty:
        # a producer id, metadata, a connection state change, an answer.
        if group.state is not PidState.READY and group.idempotent:
            return deadline
        stale = group.idempotent and not lane.current
        if stale and lane.start_over:
            if lane.inflight:
                return deadline          # its answers, under the old stamp, come first
            lane.restamp(group.producer_id, group.epoch)
            stale = False
        md = self.metadata
        leader = md.leader(lane.topic, lane.partition)
        if leader < 0:
            self._want_leader(lane)
            return deadline
        if lane.inflight and lane.node != leader:
            return deadline  # the leader moved: let the old leader's answers settle first
        conn = self.conns.get(leader)
        if conn is None:
            host_port = md.brokers.get(leader)
            if host_port is None:
                self._meta_needed = True
                return deadline
            conn = self.conns[leader] = Conn(leader, *host_port)
        if conn.state is not ConnState.READY or not conn.writable:
            conn.blocked.add(lane)
            if conn.state is ConnState.DOWN:
                self._want_connect.add(leader)
            if conn.failures:
                # The leader could not be reached since it was last ready (refused,
                # timed out, lost): its partitions may have moved. Only metadata from
                # another broker can say so; reconnecting alone would wait for
                # metadata_max_age_ms.
                self._want_leader(lane)
            return deadline
        if group.acks == 0:
            limit = _INF
        elif group.idempotent:
            limit = self.kafka.max_in_flight_per_connection
        else:
            limit = 1   # without sequence numbers only one at a time keeps the order
        picked: list[Batch] = []
        n_inflight = lane.inflight
        for b in lane.batches:
            st = b.state
            if st is BatchState.IN_FLIGHT:
                continue
            if st is not BatchState.READY or n_inflight + len(picked) >= limit:
                break
            if stale and b.seq < 0 and (n_inflight or (picked and picked[-1].seq >= 0)):
                # Batches numbered under the old stamp are unsettled: the first one under
                # the new stamp (sequence 0) would make the broker refuse their resends.
                break
            picked.append(b)
        if picked:
            bkey = (leader, group.acks, group.timeout_ms)
            buckets.setdefault(bkey, []).append(picked)
        return deadline

    def _want_leader(self, lane: Lane) -> None:
        """`lane` has no leader it can reach: ask the cluster again (rate-bounded in poll)."""
        self._meta_needed = True
        self._leader_wait = True
        self._wanted.add(lane.topic)   # records released from a hold after a give-up

    def _build_requests(self, conn: Conn, acks: int, timeout_ms: int,
                        lanes: list[list[Batch]], now: float) -> None:
        """Produce requests for `conn`: each takes at most one batch per partition, in lane order."""
        cap = self.kafka.request_max_bytes
        max_inflight = self.kafka.max_in_flight_per_connection
        queues = [deque(picked) for picked in lanes]
        while queues:
            if acks != 0 and len(conn.inflight) >= max_inflight:
                conn.blocked.update(q[0].lane for q in queues)
                return
            batches: list[Batch] = []
            tps: set[tuple[str, int]] = set()
            size = _REQUEST_OVERHEAD
            for q in queues:
                b = q[0]
                lane = b.lane
                group = lane.group
                if group.idempotent and group.state is not PidState.READY:
                    # Another lane of the group started an epoch bump in this poll
                    # (an expired batch that may have been written): nothing more
                    # goes until the new epoch, else these batches would go out
                    # without sequence numbers and could overtake each other.
                    q.clear()
                    continue
                tp = (lane.topic, lane.partition)
                if tp in tps:
                    continue   # same partition under other batch settings: next request
                try:
                    wire = self._encode(b)
                except Exception as exc:  # noqa: BLE001 - a failing codec must not wedge the lane
                    if lane.batches[0] is not b:
                        # Earlier records of the lane are on the wire: fail b once it is
                        # the lane's oldest (their answers mark the lane dirty), so its
                        # submission's outcomes stay in record order.
                        q.clear()
                        continue
                    q.popleft()
                    self._drop_from_batch(
                        b, [], [(c, UNKNOWN_SERVER_ERROR) for c in b.chunks], now,
                        f"could not encode the batch: {type(exc).__name__}: {exc}")
                    continue
                need = len(wire) + len(lane.topic) + _PARTITION_OVERHEAD
                if batches and size + need > cap:
                    continue
                size += need
                tps.add(tp)
                batches.append(q.popleft())
            if batches:
                self._send_produce(conn, acks, timeout_ms, batches, now)
            queues = [q for q in queues if q]

    def _encode(self, b: Batch) -> bytes:
        lane = b.lane
        group = lane.group
        if b.seq < 0 and group.idempotent and group.state is PidState.READY:
            if not lane.current:
                # nothing of the lane is numbered or on the wire (_visit_lane, _send_one)
                lane.restamp(group.producer_id, group.epoch)
            lane.assign_sequence(b)
        if group.idempotent and b.seq >= 0:
            wkey = (lane.pid, lane.epoch, b.seq)
        else:
            wkey = (-1, -1, -1)
        if b.wire is not None and b.wire_key == wkey:
            return b.wire
        chunks = b.chunks
        if len(chunks) == 1:
            c = chunks[0]
            sub = c.sub
            if c.lo == 0 and c.hi == len(sub.values):
                keys, values = sub.keys, sub.values
            else:
                keys, values = sub.keys[c.lo:c.hi], sub.values[c.lo:c.hi]
            stamps = [sub.timestamp_ms] * (c.hi - c.lo)
        else:
            keys, values, stamps = [], [], []
            add_key, add_value, add_stamp = keys.append, values.append, stamps.append
            for c in chunks:
                sub = c.sub
                lo, hi = c.lo, c.hi
                if hi - lo == 1:   # one-message submissions: no slices
                    add_key(sub.keys[lo])
                    add_value(sub.values[lo])
                    add_stamp(sub.timestamp_ms)
                else:
                    keys += sub.keys[lo:hi]
                    values += sub.values[lo:hi]
                    stamps += [sub.timestamp_ms] * (hi - lo)
        b.wire = encode_record_batch(keys, values, stamps, producer_id=wkey[0],
                                     producer_epoch=wkey[1], base_sequence=wkey[2],
                                     codec=group.codec, level=group.level)
        b.wire_key = wkey
        return b.wire

    def _send_produce(self, conn: Conn, acks: int, timeout_ms: int, batches: list[Batch],
                      now: float) -> None:
        if len(batches) == 1:   # a sync send's request: one batch, one partition
            lane = batches[0].lane
            topic_data = [(lane.topic, [(lane.partition, batches[0].wire)])]
        else:
            by_topic: dict[str, list] = {}
            for b in batches:
                lane = b.lane
                by_topic.setdefault(lane.topic, []).append((lane.partition, b.wire))
            topic_data = list(by_topic.items())
        v = conn.version(API_PRODUCE)
        req = Request.produce(conn.node, v, now, acks, timeout_ms, topic_data, batches)
        for b in batches:
            lane = b.lane
            advance(b, BatchState.IN_FLIGHT)
            b.attempts += 1
            b.sent_seq = b.seq
            b.sent_at = now
            b.node = conn.node
            lane.queued -= b.count
            self.queued -= b.count
            self.in_flight += b.count
            self.sent += b.count
            self.sent_bytes += len(b.wire)
            if acks != 0:
                lane.inflight += 1
                lane.node = conn.node
                lane.group.inflight += 1
        self._push(conn, req)
        if acks == 0:
            for b in batches:
                self._delivered(b, -1, now)

    # ------------------------------------------------------------------ drain

    def start_drain(self) -> None:
        """From now on: release every hold and send every batch without lingering."""
        self.draining = True
        self._dirty_all = True
        self._hold_due = 0.0

    @property
    def idle(self) -> bool:
        """Nothing accepted is still queued, held or on the wire."""
        return self.queued == 0 and self.in_flight == 0

    def take_undelivered(self) -> list[Submission]:
        """Give up on everything not delivered yet; return it as Submissions (or parts).

        Records on the wire are included: their fate is unknown, so whoever
        takes them over (the spool) may write some twice but loses none. From
        now on `submit` raises ProducerDrained, so what is returned stays
        exactly what was not delivered (nothing slips in behind it).
        """
        self.drained = True
        out: list[Submission] = []

        def part(c: Chunk) -> Submission:
            sub = c.sub
            if c.lo == 0 and c.hi == len(sub.values):
                return sub
            return replace(sub, keys=sub.keys[c.lo:c.hi], values=sub.values[c.lo:c.hi])

        # Lanes before holds: a hold releases a submission from its front, so a
        # submission's parts in lanes come before its part still held.
        for lane in list(self._active):
            if not lane.parked:
                for b in lane.batches:
                    out.extend(part(c) for c in b.chunks)
                    b.state = BatchState.DONE
            else:
                # Batches delivered behind undelivered ones, in lane order: a submission
                # with an earlier part returned is handed over whole from there (the
                # caller hands back or fails what follows that part too), so its
                # parked records go with it, no longer counted delivered; the other
                # parked outcomes are reported.
                cut: set[int] = set()
                for _, outs, b in sorted([(b.order, None, b) for b in lane.batches] + lane.parked,
                                         key=lambda entry: entry[0]):
                    if outs is None:
                        for c in b.chunks:
                            out.append(part(c))
                            cut.add(id(c.sub))
                        b.state = BatchState.DONE
                        continue
                    for o, c in zip(outs, b.chunks):
                        if id(c.sub) in cut:
                            out.append(part(c))
                            self._undeliver(lane, c)
                        else:
                            self._outcomes.append(o)
                lane.parked = None
            lane.batches.clear()
            lane.inflight = 0
            lane.queued = 0
        self._active.clear()
        for hold in self.holds.values():
            out.extend(part(c) for c in hold.chunks)
            hold.chunks.clear()
            hold.count = 0
        self.holds.clear()
        # Then what waits for its topic's partitions: each is a whole submission, and
        # later than anything of its topic above (what came behind it waits too).
        for waiting in self._unplaced.values():
            out.extend(part(c) for c in waiting)
        self._unplaced.clear()
        self.unplaced = 0
        for group in self.groups.values():
            group.inflight = 0
        for conn in self.conns.values():
            for req in conn.inflight:
                if req.api_key == API_PRODUCE:
                    req.batches = []
        n = sum(len(s.values) for s in out)
        self.dropped += n
        self.queued = self.held = self.in_flight = 0
        self.queued_bytes = 0
        if n:
            log.warning("drain deadline reached: %d message(s) in %d submission(s) not delivered",
                        n, len(out))
        return out

    def _undeliver(self, lane: Lane, c: Chunk) -> None:
        """Take back the delivered count of `c`, delivered but not reported (see take_undelivered)."""
        n = c.hi - c.lo
        payload = c.nbytes - n * _RECORD_OVERHEAD
        self.delivered -= n
        self.delivered_bytes -= payload
        ts = self._topic_stats.get(lane.topic)
        if ts is not None:
            ts[0] -= n
            ts[1] -= payload

    def note_handed_back(self, n: int) -> None:
        """`n` of the messages `take_undelivered` returned went back to their senders.

        Without a spool the I/O shell hands a live shim's undelivered async
        messages back at stop (the shim keeps and replays them): they are
        counted as handed back, not as dropped, so the books still balance.
        """
        if not 0 <= n <= self.dropped:
            raise ValueError(f"cannot hand back {n} messages: only {self.dropped} were given up")
        self.dropped -= n
        self.handed_back += n

    def note_settled_at_stop(self, *, failed: Mapping[str, int] | None = None, code: int = 0,
                             kept: int = 0) -> None:
        """Of the messages `take_undelivered` returned (counted as dropped), `failed`
        (per topic) were reported to their senders (with `code`) and `kept` stay in the
        spool: neither was given up unreported, so they move to `failed` (overall, per
        topic, per error) and `kept_in_spool`."""
        failed = failed or {}
        told = sum(failed.values())
        if kept < 0 or any(n < 0 for n in failed.values()) or told + kept > self.dropped:
            raise ValueError(f"cannot settle {told} failed and {kept} kept messages: "
                             f"only {self.dropped} were given up")
        self.dropped -= told + kept
        for topic, n in failed.items():
            self._count_failure(topic, n, code)
        self.kept_in_spool += kept

    # ------------------------------------------------------------------ config and stats

    RESTART_KEYS = ("bootstrap_servers", "client_id", "security_protocol", "idempotence",
                    "tls", "sasl", "max_in_flight_per_connection")

    def reconfigure(self, kafka, queue) -> list[str]:
        """Take new settings; return the `[kafka]` keys that only a restart applies."""
        need = [f"kafka.{k}" for k in self.RESTART_KEYS
                if getattr(kafka, k) != getattr(self.kafka, k)]
        keep = {k: getattr(self.kafka, k) for k in self.RESTART_KEYS}
        self.kafka = replace(kafka, **keep)
        self.queue = queue
        self._apply_config()
        if self._topic_used:
            self._forget_at = 0.0   # a new metadata_max_idle_ms applies at the next poll
        return need

    def stats(self) -> dict:
        """A plain-dict snapshot (all counts are messages unless named bytes)."""
        brokers = {}
        # A bootstrap address is a stand-in (node -1, -2, ...) until metadata names the
        # brokers; then, closed and idle, it would only show as "down" beside the real
        # broker at the same address. It shows again while it is used or retried.
        known = any(not c.bootstrap for c in self.conns.values())
        for node, conn in self.conns.items():
            if known and conn.bootstrap and conn.state is ConnState.DOWN and not conn.inflight:
                continue
            xs = sorted(self._latency.get(node, ()))
            brokers[str(node)] = {
                "address": f"{conn.host}:{conn.port}",
                "state": conn.state.value,
                # over the last answers (up to 1024); None before the first one
                "latency_p50_ms": round(xs[len(xs) // 2] * 1000, 3) if xs else None,
                "latency_p99_ms": (round(xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000, 3)
                                   if xs else None),
                "in_flight_requests": len(conn.inflight),
            }
        return {
            "accepted": self.accepted,
            "queued": self.queued,
            "queued_bytes": self.queued_bytes,
            "held": self.held,
            "unplaced": self.unplaced,
            "in_flight": self.in_flight,
            "delivered": self.delivered,
            "failed": self.failed,
            "retried": self.retried,
            "dropped": self.dropped,
            "handed_back": self.handed_back,
            "kept_in_spool": self.kept_in_spool,
            "requests": self.requests,
            "sent": self.sent,
            "sent_bytes": self.sent_bytes,
            "delivered_bytes": self.delivered_bytes,
            "topics_forgotten": self.topics_forgotten,
            "errors": {_err_name(k): v for k, v in self._errors.items()},
            "brokers": brokers,
            "topics": {t: {"delivered": v[0], "delivered_bytes": v[1], "failed": v[2]}
                       for t, v in self._topic_stats.items()},
            "producer_ids": {f"acks={g.acks},codec={g.codec}": g.state.value
                             for g in self.groups.values()},
        }


_BYTES_OR_NONE = frozenset({bytes, type(None)})


def _names(topics, most: int = 10) -> str:
    names = sorted(topics)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(map(repr, names[:most])) + more


def _check_bytes(what: str, items: list) -> None:
    """TypeError naming the first entry that is neither bytes nor None."""
    if type(items) is list and items.count(None) == len(items):
        return          # no keys at all (the common case): a C-level identity scan
    if _BYTES_OR_NONE.issuperset(map(type, items)):   # C speed for the common case
        return
    for i, x in enumerate(items):
        if type(x) is not bytes and x is not None:
            raise TypeError(f"{what}[{i}]: expected bytes or None, got {type(x).__name__}")


def _split_hostport(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bootstrap_servers: {addr!r} is not host:port")
    return host.strip("[]"), int(port)


def _err_name(code: int) -> str:
    try:
        info = error_info(code)
        return f"{info.name} ({code})"
    except (KeyError, ValueError):
        return f"error {code}"


def _describe(sub: Submission, lo: int, hi: int, allowed: bool) -> str:
    """The failed messages for the log (kafkad.engine.describe): contents only if both
    `allowed` (the daemon's setting) and the sender's setting let them be shown."""
    return describe_values(sub.values[lo:hi], allowed and sub.settings.log_messages_on_error)

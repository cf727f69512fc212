"""Records on their way: chunks, per-session holds, batches and lanes.

* A `Chunk` is a contiguous run `[lo, hi)` of one `Submission`'s messages. The
  engine never copies messages: holds, batches and retries move chunks, and a
  chunk is split only where a hold releases `batch_n` messages or a batch
  reaches its size cap.
* A `SessionHold` keeps an async session's chunks until the session's release
  rule fires (`batch_n` messages held, or the oldest held for `batch_t`).
* A `Lane` is one partition as written with one set of batch settings
  (acks, ack timeout, codec, level): an ordered deque of `Batch`es, the last
  one OPEN for new records. With idempotence it also owns the partition's
  sequence numbers, under the producer id and epoch they were given with
  (its stamp): after an epoch bump a lane keeps the old stamp until its
  numbered batches settle, unless it is the one that must start over.
* A `Batch` becomes one RecordBatch on the wire; once it has a sequence
  number its records never change order or move to another batch, except
  when records are failed out of it (see `Lane.remove_sequence_gap`).

Sizes are upper bounds of the encoded record sizes (`record_size_upper_bound`
summed), so a batch never exceeds its cap once encoded, before compression.
"""

from __future__ import annotations

from collections import deque

from kafkad.engine.states import BatchState, PidState, advance
from kafkad.engine.types import Submission

SEQ_MODULO = 2**31  # sequence numbers are int32 and wrap to 0
_OPEN = BatchState.OPEN  # enum member lookups are slow on the per-submission path


class Chunk:
    """Messages `[lo, hi)` of `sub`; `nbytes` is their encoded size bound."""

    __slots__ = ("sub", "lo", "hi", "nbytes", "accepted_at", "deadline", "sync")

    def __init__(self, sub: Submission, lo: int, hi: int, nbytes: int,
                 accepted_at: float, deadline: float, sync: bool) -> None:
        self.sub = sub
        self.lo = lo
        self.hi = hi
        self.nbytes = nbytes
        self.accepted_at = accepted_at
        self.deadline = deadline
        self.sync = sync

    def __repr__(self) -> str:
        return (f"<Chunk {self.sub.topic}[{self.sub.partition}] {self.lo}:{self.hi} "
                f"{self.nbytes}B{' sync' if self.sync else ''}>")

    @property
    def count(self) -> int:
        return self.hi - self.lo

    def split(self, k: int, left_bytes: int) -> "Chunk":
        """Cut off and return the first `k` messages (of size `left_bytes`); keep the rest."""
        head = Chunk(self.sub, self.lo, self.lo + k, left_bytes, self.accepted_at,
                     self.deadline, self.sync)
        self.lo += k
        self.nbytes -= left_bytes
        return head


class SessionHold:
    """An async session's held chunks, oldest first."""

    __slots__ = ("key", "chunks", "count", "batch_n", "batch_t")

    def __init__(self, key, batch_n: int, batch_t: float) -> None:
        self.key = key
        self.chunks: deque[Chunk] = deque()
        self.count = 0
        self.batch_n = batch_n
        self.batch_t = batch_t

    def __repr__(self) -> str:
        return f"<SessionHold {self.key!r} held={self.count} n={self.batch_n} t={self.batch_t}>"

    @property
    def due(self) -> float:
        """When the oldest held chunk must go (infinity when nothing is held)."""
        return self.chunks[0].accepted_at + self.batch_t if self.chunks else float("inf")

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.count += chunk.count

    def release(self, now: float, everything: bool, sizer) -> list[Chunk]:
        """Chunks to send now, oldest first: groups of `batch_n`, or all when due.

        `sizer(chunk, k)` gives the size bound of a chunk's first k messages
        (used only when a chunk must be cut to make a group of exactly batch_n).
        """
        if everything or (self.chunks and now >= self.due):
            out = list(self.chunks)
            self.chunks.clear()
            self.count = 0
            return out
        out: list[Chunk] = []
        # Every whole group of batch_n goes now, in one piece: a chunk is cut at most
        # once, where the last whole group ends (cutting at every group boundary gave
        # the same records in more, smaller chunks).
        need = self.count - self.count % self.batch_n
        self.count -= need
        while need:
            head = self.chunks[0]
            if head.count <= need:
                self.chunks.popleft()
                out.append(head)
                need -= head.count
            else:
                out.append(head.split(need, sizer(head, need)))
                need = 0
        return out


class Batch:
    """Records of one lane that travel as one RecordBatch."""

    __slots__ = ("lane", "state", "chunks", "count", "nbytes", "created_at", "sync",
                 "seq", "sent_seq", "attempts", "retry_at", "maybe_written", "wire",
                 "wire_key", "sent_at", "node", "deadline", "order")

    def __init__(self, lane: "Lane", created_at: float, overhead: int) -> None:
        self.lane = lane
        self.state = _OPEN
        self.chunks: list[Chunk] = []
        self.count = 0
        self.nbytes = overhead
        self.created_at = created_at
        self.sync = False
        self.seq = -1            # base sequence (-1: none given yet / not idempotent)
        self.sent_seq = -1       # the base sequence of the copy now on the wire
        self.attempts = 0        # sends so far
        self.retry_at = 0.0
        self.maybe_written = False  # a send's fate is unknown (timeout or lost connection)
        self.wire: bytes | None = None  # encoded RecordBatch, reused while wire_key holds
        self.wire_key: tuple | None = None
        self.sent_at = 0.0
        self.node = -1
        self.deadline = float("inf")   # the earliest delivery deadline of its records
        self.order = 0.0         # its place in its lane: increasing along the lane (see Engine._split)

    def __repr__(self) -> str:
        return (f"<Batch {self.lane.topic}[{self.lane.partition}] {self.state.name} "
                f"n={self.count} {self.nbytes}B seq={self.seq} attempts={self.attempts}>")

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.count += chunk.hi - chunk.lo
        self.nbytes += chunk.nbytes
        if chunk.sync:
            self.sync = True
        if chunk.deadline < self.deadline:
            self.deadline = chunk.deadline

    def set_chunks(self, chunks: list[Chunk], overhead: int) -> None:
        """Keep only `chunks` (records were failed out of it or moved to another batch)."""
        self.chunks = chunks
        self.count = sum(c.hi - c.lo for c in chunks)
        self.nbytes = overhead + sum(c.nbytes for c in chunks)
        self.deadline = min((c.deadline for c in chunks), default=float("inf"))
        self.wire = None

    def advance(self, new: BatchState) -> None:
        advance(self, new)


class Lane:
    """One partition under one set of batch settings: an ordered deque of batches."""

    __slots__ = ("topic", "partition", "group", "batches", "inflight", "next_seq",
                 "node", "queued", "key", "dirty", "wake_at", "pid", "epoch",
                 "start_over", "made", "parked")

    def __init__(self, key, topic: str, partition: int, group) -> None:
        self.key = key
        self.topic = topic
        self.partition = partition
        self.group = group
        self.batches: deque[Batch] = deque()
        self.inflight = 0        # batches of this lane on the wire
        self.next_seq = 0        # the sequence the next new batch gets
        # The producer id and epoch of the sequence numbers above and of its batches';
        # the group's own, or older ones (an epoch bump leaves a lane's numbered
        # batches under the stamp they were first sent with).
        self.pid = -1
        self.epoch = -1
        # Its numbers are not safe under its stamp any more (the broker lost them, or
        # a batch that may have been written was dropped): it starts over from 0
        # under the group's current stamp once nothing of it is on the wire.
        self.start_over = False
        self.node = -1           # the node the in-flight batches went to
        self.queued = 0          # records in batches not on the wire
        # Engine.poll looks at a lane only when it is dirty (something about it
        # changed) or its next timer (linger, retry backoff, expiry) is due.
        self.dirty = True
        self.wake_at = float("inf")
        self.made = 0            # batches made so far: the next one's `order`
        # Batches delivered while an earlier batch of the lane was still unsettled, as
        # (batch order, outcomes, batch), sorted by order: their outcomes are reported
        # once everything ahead of them has settled (Engine._finish). None when empty.
        self.parked: list | None = None

    def __repr__(self) -> str:
        states = ",".join(b.state.name for b in self.batches)
        return (f"<Lane {self.topic}[{self.partition}] {self.group.key} [{states}] "
                f"inflight={self.inflight} pid={self.pid}/{self.epoch} "
                f"next_seq={self.next_seq}{' start-over' if self.start_over else ''}>")

    def open_batch(self, now: float, overhead: int) -> Batch:
        """The batch taking new records (a fresh one if the last is closed)."""
        batches = self.batches
        if batches:
            last = batches[-1]
            if last.state is _OPEN:
                return last
        b = Batch(self, now, overhead)
        b.order = self.made
        self.made += 1
        self.batches.append(b)
        return b

    def assign_sequence(self, batch: Batch) -> None:
        batch.seq = self.next_seq
        self.next_seq = (self.next_seq + batch.count) % SEQ_MODULO

    def remove_sequence_gap(self, after: Batch, removed: int) -> None:
        """`removed` records holding sequences in `after` were failed and never written.

        The broker still expects the first of them next, so every later batch
        (and the next new one) moves down by `removed`. Later batches already
        on the wire carry the old numbers; the broker answers them with
        OUT_OF_ORDER_SEQUENCE_NUMBER and they are resent with the new ones.
        """
        if removed == 0:
            return
        seen = False
        for b in self.batches:
            if b is after:
                seen = True
                continue
            if seen and b.seq >= 0:
                b.seq = (b.seq - removed) % SEQ_MODULO
        self.next_seq = (self.next_seq - removed) % SEQ_MODULO

    @property
    def current(self) -> bool:
        """Whether its stamp is its group's producer id and epoch (else an older one, or none yet)."""
        group = self.group
        return self.pid == group.producer_id and self.epoch == group.epoch

    @property
    def numbered(self) -> bool:
        """Whether a batch holds a sequence number (numbered batches lead the lane)."""
        return bool(self.batches) and self.batches[0].seq >= 0

    def restamp(self, pid: int, epoch: int) -> None:
        """Take `pid`/`epoch` as the stamp: every unacknowledged batch renumbered from 0.

        Only with nothing of the lane on the wire (an answer under the old
        stamp would be read against the new numbers).
        """
        self.pid = pid
        self.epoch = epoch
        self.start_over = False
        self.next_seq = 0
        for b in self.batches:
            if b.seq >= 0:
                self.assign_sequence(b)
                b.maybe_written = False  # under the new stamp it was never sent


class Group:
    """Lanes sharing batch settings; with acks != 0 and idempotence, one producer id."""

    __slots__ = ("key", "acks", "timeout_ms", "codec", "level", "state", "producer_id",
                 "epoch", "inflight", "retry_at", "lanes", "fresh_id", "forgotten", "forgot_many")

    def __init__(self, key: tuple, idempotent: bool) -> None:
        self.key = key
        self.acks, self.timeout_ms, self.codec, self.level = key
        self.state = PidState.NONE if idempotent else PidState.DISABLED
        self.producer_id = -1
        self.epoch = -1
        self.inflight = 0          # batches of this group on the wire
        self.retry_at = 0.0
        self.lanes: list[Lane] = []
        self.fresh_id = False      # the next InitProducerId must ask for a new id, not a bump
        # (topic, partition) of lanes forgotten (metadata_max_idle_ms) with sequence
        # numbers in use under the current producer id and epoch; past a bound,
        # `forgot_many` stands for all of them. Both cleared by a new id or epoch.
        self.forgotten: set[tuple[str, int]] = set()
        self.forgot_many = False

    def __repr__(self) -> str:
        return (f"<Group acks={self.acks} timeout={self.timeout_ms} codec={self.codec} "
                f"{self.state.name} pid={self.producer_id}/{self.epoch} inflight={self.inflight}>")

    @property
    def idempotent(self) -> bool:
        return self.state is not PidState.DISABLED

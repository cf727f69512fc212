"""The data that crosses the seam between the IPC side and the broker engine.

The IPC layer turns a producer session's SEND frame into a `Submission`; the
engine hands back one or more `Outcome`s per submission (a submission can be
split across batches, and each part is reported once: delivered or failed).
`QueueFull` is raised by `BrokerProducer.submit` when the global caps would be
exceeded, and its subclass `ProducerDrained` once `drain` has handed back the
undelivered; nothing of that submission was taken.

These classes are plain data: no I/O, no clock, cheap to build (the IPC side
creates one `Submission` per SEND frame, so `Submission` does no validation
beyond what the engine needs to stay consistent; `SessionSettings`, built once
per session, checks every field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Compression codec ids, the same numbers as client_shim's CODEC_* constants
# and the RecordBatch attributes field.
CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4
CODECS = (CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD)

ACKS = (0, 1, -1)


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """One producer session's delivery settings (the shim's constructor arguments).

    Sessions with equal (acks, ack_timeout_ms) share Produce requests; sessions
    with equal (codec, codec_level) as well share RecordBatches.
    """

    acks: int = 1                    # 0, 1 or -1 (all in-sync replicas)
    ack_timeout_ms: int = 1000       # the broker's wait for replicas (Produce timeout_ms)
    codec: int = CODEC_NONE          # CODEC_* above
    codec_level: int | None = None   # None: the codec's default level
    async_send: bool = False         # False: every submission is released at once
    batch_n: int = 20                # async: release this many held messages at once
    batch_t: float = 20.0            # async: ...or all held when the oldest waited this long (s)
    retry_limit: int | None = None   # async: retries per record; None = unlimited
    retry_backoff_ms: int = 100      # first retry backoff; doubles, with jitter
    retry_on_timeouts: bool = True   # False: a request timeout fails its records
    log_messages_on_error: bool = True  # False: failure logs carry only a hash
    # (acks, ack_timeout_ms, codec, codec_level): sessions with equal keys share
    # batches. Derived, kept so the engine's hot path does not rebuild it.
    batch_key: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.acks not in ACKS:
            raise ValueError(f"acks must be one of 0, 1, -1, not {self.acks!r}")
        if not isinstance(self.ack_timeout_ms, int) or not 0 <= self.ack_timeout_ms <= 2**31 - 1:
            raise ValueError(f"ack_timeout_ms must be an int in [0, 2**31), not {self.ack_timeout_ms!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, not {self.codec!r}")
        if self.codec_level is not None and not isinstance(self.codec_level, int):
            raise ValueError(f"codec_level must be an int or None, not {self.codec_level!r}")
        if not isinstance(self.batch_n, int) or self.batch_n < 1:
            raise ValueError(f"batch_n must be an int >= 1, not {self.batch_n!r}")
        if not isinstance(self.batch_t, (int, float)) or self.batch_t < 0:
            raise ValueError(f"batch_t must be a number of seconds >= 0, not {self.batch_t!r}")
        if self.retry_limit is not None and (not isinstance(self.retry_limit, int) or self.retry_limit < 0):
            raise ValueError(f"retry_limit must be None or an int >= 0, not {self.retry_limit!r}")
        if not isinstance(self.retry_backoff_ms, (int, float)) or self.retry_backoff_ms < 0:
            raise ValueError(f"retry_backoff_ms must be >= 0, not {self.retry_backoff_ms!r}")
        object.__setattr__(self, "batch_key",
                           (self.acks, self.ack_timeout_ms, self.codec, self.codec_level))


@dataclass(frozen=True, slots=True)
class Submission:
    """Messages for one (topic, partition) from one session, in order.

    A negative `partition` leaves the choice to the engine: it picks
    `pick_partition(partition, ids)` once the topic's partition ids are known
    (and reports the partition it picked in the outcomes).

    `keys` and `values` have the same length; an entry is bytes or None.
    `token` is opaque to the engine and comes back in every `Outcome`.
    """

    session_id: bytes
    settings: SessionSettings
    topic: str
    partition: int
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamp_ms: int
    token: Any = None

    def __len__(self) -> int:
        return len(self.values)


class Outcome(NamedTuple):
    """What became of a submission, or of a contiguous run of its messages.

    A submission's messages are reported in order; the outcomes for one token
    add up to len(submission) (`delivered + failed` each time; one of the two
    is zero). `base_offset` is the offset of the run's first record, -1 when
    unknown (acks=0) or failed. A NamedTuple (immutable, built by keyword or
    position) because the engine makes one per delivered submission part on
    its hottest path.
    """

    token: Any
    topic: str
    partition: int
    error: int          # 0 = delivered; otherwise a Kafka error code
    base_offset: int
    delivered: int
    failed: int


class QueueFull(Exception):
    """The global caps ([queue] max_messages / max_bytes) would be exceeded.

    Nothing of the refused submission was taken.
    """


class RecordTooLarge(ValueError):
    """A divisible submission holds a record larger than any batch may be.

    Raised by `submit(sub, now, divisible=True)` instead of failing the whole
    submission: the caller merged several calls into it and submits them one
    by one instead, so that only the call with the record fails. Nothing of
    the refused submission was taken.
    """


class ProducerDrained(QueueFull):
    """The producer was drained (`drain` handed back what it held): it takes no more.

    A subclass of QueueFull, so a caller that keeps a refused submission for
    later (the IPC server's spool replay and deferred queue) keeps this one
    too instead of handing it to an engine nobody will empty again. Nothing
    of the refused submission was taken.
    """


def pick_partition(code: int, partitions: list[int]) -> int:
    """The partition a negative `Submission.partition` stands for, from the sorted ids.

    `code` is -1 - i: partition `partitions[i % len(partitions)]`. The shim
    sends i = murmur2(key) & 0x7fffffff for a hashed key (the partition the
    Java client would pick) or a round-robin counter, so the daemon picks what
    the shim would have picked had it known the list.
    """
    return partitions[(-1 - code) % len(partitions)]


def where(topic: str, partition: int) -> str:
    """`topic[partition]` for logs; a partition still to be picked (negative) says so."""
    return f"{topic}[{partition}]" if partition >= 0 else f"{topic} (partition not picked yet)"

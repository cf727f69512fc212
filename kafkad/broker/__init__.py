"""kafkad.broker: the asyncio driver around the sans-IO engine.

`BrokerProducer` is the whole interface the rest of the daemon uses (see
DESIGN.md, "engine and its I/O driver"). This first version fixes the
interface so the IPC and daemon layers can code against it; it queues what it
is given (honouring the global caps) and hands it back on drain, while the
engine that talks to brokers lands behind the same methods.
"""

from __future__ import annotations

from typing import Callable

from kafkad.config import KafkaConfig, QueueConfig
from kafkad.engine.types import Outcome, QueueFull, SessionSettings, Submission

__all__ = ["BrokerProducer", "Outcome", "QueueFull", "SessionSettings", "Submission"]


class BrokerProducer:
    """Owns the broker connections and the producer engine; driven by the running loop."""

    def __init__(self, kafka: KafkaConfig, queue: QueueConfig, *,
                 on_outcomes: Callable[[list[Outcome]], None]) -> None:
        self._kafka = kafka
        self._queue_cfg = queue
        self._on_outcomes = on_outcomes
        self._queued: list[Submission] = []
        self._messages = 0
        self._bytes = 0
        self._accepted = 0

    async def start(self) -> None:
        """Start connecting in the background; returns at once (brokers may be down)."""

    def submit(self, sub: Submission) -> None:
        """Take a submission, or raise QueueFull (nothing taken) when the caps would be exceeded."""
        n = len(sub.values)
        size = sum(len(v) for v in sub.values if v) + sum(len(k) for k in sub.keys if k)
        if (self._messages + n > self._queue_cfg.max_messages
                or self._bytes + size > self._queue_cfg.max_bytes):
            raise QueueFull(f"queue full: {self._messages} messages / {self._bytes} bytes queued")
        self._queued.append(sub)
        self._messages += n
        self._bytes += size
        self._accepted += n

    def partitions_for(self, topic: str) -> list[int] | None:
        """Partition ids of `topic` from the metadata cache, or None when not known yet."""
        return None

    async def fetch_partitions(self, topic: str, timeout: float) -> tuple[int, list[int]]:
        """(error_code, partition ids) of `topic`, asking the cluster if needed."""
        return 5, []  # LEADER_NOT_AVAILABLE until the engine is connected

    async def drain(self, deadline: float) -> list[Submission]:
        """Send what is queued until `deadline` (loop clock); return what was not delivered."""
        left, self._queued = self._queued, []
        self._messages = self._bytes = 0
        return left

    async def close(self) -> None:
        """Close every connection; undelivered messages stay counted as queued."""

    def reload(self, kafka: KafkaConfig, queue: QueueConfig) -> list[str]:
        """Apply new settings; return the names of settings that need a restart."""
        self._queue_cfg = queue
        return []

    def stats(self) -> dict:
        """A plain-dict snapshot of the counters."""
        return {"accepted": self._accepted, "queued_messages": self._messages,
                "queued_bytes": self._bytes, "in_flight": 0, "delivered": 0,
                "failed": 0, "retried": 0, "dropped": 0, "requests": 0,
                "brokers": {}, "topics": {}}

"""The metadata cache: brokers, topics, partition leaders (with leader epochs).

Fed with decoded Metadata responses; answers "who leads this partition" and
"which partitions does this topic have". A partition's leader is replaced only
by an answer with a leader epoch at least as new as the one we hold, so a
broker with stale metadata cannot move a partition back to an old leader;
unless the topic's id changed (Metadata v10+): a topic deleted and created
again starts its leader epochs from 0, and its old epochs mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kafkad.protocol.errors import error_info

UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5


@dataclass(slots=True)
class TopicInfo:
    """What we know about one topic. `error` is the topic-level error of the last answer."""

    error: int = 0
    partitions: list[int] = field(default_factory=list)
    # partition -> (leader node id, leader epoch); leader -1 when there is none
    leaders: dict[int, tuple[int, int]] = field(default_factory=dict)
    topic_id: object = None   # the cluster's id of the topic (a UUID), None when not told


class MetadataCache:
    """Brokers and topic layouts as last answered by the cluster."""

    def __init__(self) -> None:
        self.brokers: dict[int, tuple[str, int]] = {}
        self.topics: dict[str, TopicInfo] = {}
        self.updated_at: float | None = None

    def __repr__(self) -> str:
        return f"<MetadataCache brokers={sorted(self.brokers)} topics={len(self.topics)}>"

    def leader(self, topic: str, partition: int) -> int:
        """The leader's node id, or -1 when unknown."""
        info = self.topics.get(topic)
        if info is None:
            return -1
        return info.leaders.get(partition, (-1, -1))[0]

    def partitions(self, topic: str) -> list[int] | None:
        info = self.topics.get(topic)
        if info is None or info.error:
            return None
        return info.partitions

    def forget_leader(self, topic: str, partition: int) -> None:
        """Stop routing to the current leader (it said it no longer leads); keep its epoch."""
        info = self.topics.get(topic)
        if info is not None and partition in info.leaders:
            _, epoch = info.leaders[partition]
            info.leaders[partition] = (-1, epoch)

    def leader_hint(self, topic: str, partition: int, leader: int, epoch: int) -> bool:
        """Take a Produce answer's current-leader hint (KIP-951) if it is newer; True if taken."""
        info = self.topics.get(topic)
        if info is None or leader < 0 or leader not in self.brokers:
            return False
        _, held = info.leaders.get(partition, (-1, -1))
        if epoch < 0 or epoch < held:
            return False
        info.leaders[partition] = (leader, epoch)
        return True

    def update(self, response, now: float) -> list[str]:
        """Fold a MetadataResponse in; return the topics the answer mentioned."""
        brokers = {b.node_id: (b.host, b.port) for b in response.brokers}
        if brokers:
            self.brokers = brokers
        seen = []
        for t in response.topics:
            name = t.name
            if name is None:
                continue
            seen.append(name)
            old = self.topics.get(name)
            if t.error_code:
                if error_info(t.error_code).retriable and old is not None and not old.error:
                    # A transient answer (leader election...) keeps the last good layout.
                    continue
                self.topics[name] = TopicInfo(error=t.error_code)
                continue
            tid = getattr(t, "topic_id", None)
            if tid is not None and not tid.int:
                tid = None                      # the zero id: not told (Metadata < v10)
            info = TopicInfo(partitions=sorted(p.partition_index for p in t.partitions), topic_id=tid)
            if old is not None and tid is None:
                info.topic_id = old.topic_id
            renewed = old is not None and tid is not None and old.topic_id is not None and tid != old.topic_id
            # (a topic created again under the same name starts over: its epochs too)
            old_leaders = old.leaders if old is not None and not renewed else {}
            for p in t.partitions:
                epoch = p.leader_epoch if p.leader_epoch is not None else -1
                leader = p.leader_id if p.error_code in (0, 9) else -1  # 9: replica not available
                prev = old_leaders.get(p.partition_index)
                if prev is not None and epoch != -1 and prev[1] > epoch:
                    info.leaders[p.partition_index] = prev  # stale answer: keep the newer leader
                else:
                    info.leaders[p.partition_index] = (leader, epoch)
            self.topics[name] = info
        self.updated_at = now
        return seen

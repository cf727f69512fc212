"""A fake Kafka cluster at the message level, to drive the sans-IO engine in tests.

`FakeCluster` answers the engine's `Request`s with real protocol message
objects (ApiVersions, Metadata, InitProducerId, Produce). Its Produce handling
follows a real broker's idempotence rules: it decodes every RecordBatch with
kafkad.protocol, keeps per (producer, partition) the epoch last written and
the last five batches' sequence ranges, answers a resent batch with its
original offset, a sequence gap with OUT_OF_ORDER_SEQUENCE_NUMBER, an epoch
older than the partition's with INVALID_PRODUCER_EPOCH, and starts the
partition's sequence over at a newer epoch (which must begin at 0). As in
Kafka, InitProducerId changes no partition's state: a partition learns of a
new epoch from the first batch that carries it. Tests inject errors, move
leaders, hold answers back (timeouts) and read the partition logs.

`Harness` is the driver: a fake clock, the engine, and `run()` that polls
and answers until nothing is left to do.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace

from kafkad.config import KafkaConfig, QueueConfig
from kafkad.engine.engine import Engine, Request
from kafkad.engine.types import SessionSettings, Submission
from kafkad.protocol import (
    ApiVersionsResponse,
    InitProducerIdResponse,
    MetadataResponse,
    ProduceResponse,
    decode_record_batches,
    encode_request,
    encode_response,
)
from kafkad.protocol.produce import produce_request
from kafkad.protocol.framing import API_VERSIONS_SUPPORTED

MR = MetadataResponse
PR = ProduceResponse


@dataclass
class Written:
    """One record as stored in a fake partition log."""

    offset: int
    key: bytes | None
    value: bytes | None
    producer_id: int
    sequence: int


@dataclass
class FakeCluster:
    brokers: tuple[int, ...] = (1, 2, 3)
    topics: dict[str, int] = field(default_factory=dict)   # topic -> partition count
    leaders: dict[tuple[str, int], int] = field(default_factory=dict)
    leader_epochs: dict[tuple[str, int], int] = field(default_factory=dict)
    dedupe: bool = True
    auto_create: bool = False
    leader_hints: bool = False   # NOT_LEADER answers name the new leader (KIP-951)
    api_versions_max: int = 3
    missing_apis: frozenset = frozenset()   # API keys its ApiVersions answer leaves out
    logs: dict[tuple[str, int], list[Written]] = field(default_factory=lambda: defaultdict(list))
    # (topic, partition) -> error codes to answer the next produce attempts with
    produce_errors: dict[tuple[str, int], deque] = field(default_factory=lambda: defaultdict(deque))
    # ... error codes to answer after writing the batch (acks=-1: 7 when the replicas
    # were too slow, 20 NOT_ENOUGH_REPLICAS_AFTER_APPEND): the log has it, and the
    # broker remembers its sequence range
    errors_after_append: dict[tuple[str, int], deque] = field(default_factory=lambda: defaultdict(deque))
    init_pid_errors: deque = field(default_factory=deque)
    requests: list = field(default_factory=list)
    next_pid: int = 1000
    # (pid, topic, partition) -> deque of (first_seq, last_seq, base_offset), the last 5
    _seqs: dict = field(default_factory=lambda: defaultdict(lambda: deque(maxlen=5)))
    # (pid, topic, partition) -> the epoch of the batches in _seqs
    _part_epochs: dict = field(default_factory=dict)
    _epochs: dict = field(default_factory=dict)     # pid -> its latest epoch (the coordinator's)
    topic_ids: dict = field(default_factory=dict)   # topic -> its UUID (new at every create)

    def create(self, topic: str, partitions: int = 3) -> None:
        self.topics[topic] = partitions
        self.topic_ids[topic] = uuid.uuid4()
        for p in range(partitions):
            self.leaders[(topic, p)] = self.brokers[p % len(self.brokers)]
            self.leader_epochs[(topic, p)] = 0

    def delete(self, topic: str) -> None:
        """Delete `topic` with its records and its producers' sequence state."""
        n = self.topics.pop(topic)
        self.topic_ids.pop(topic)
        for p in range(n):
            for d in (self.leaders, self.leader_epochs, self.logs):
                d.pop((topic, p), None)
        for d in (self._seqs, self._part_epochs):
            for key in [k for k in d if k[1] == topic]:
                del d[key]

    def move_leader(self, topic: str, partition: int, broker: int) -> None:
        self.leaders[(topic, partition)] = broker
        self.leader_epochs[(topic, partition)] += 1

    def forget_producers(self) -> None:
        """Lose every producer's sequence state (as after a broker's producer state expires)."""
        self._seqs.clear()
        self._part_epochs.clear()
        self._epochs.clear()

    def port(self, node: int) -> int:
        return 9000 + node

    # ------------------------------------------------------------------ answers

    def answer(self, req: Request):
        self.requests.append(req)
        if req.produce_values is not None:
            # what the driver writes from the plain values is byte for byte the
            # request `msg` stands for (`msg` is made from the same values)
            assert produce_request(req.version, 7, "c", *req.produce_values) == encode_request(
                req.msg, req.version, 7, "c")
        name = type(req.msg).__name__
        return getattr(self, "_" + name)(req)

    def _ApiVersionsRequest(self, req: Request):
        if req.version > self.api_versions_max:
            # The error-35 answer: a v0 body that lists our own range.
            return ApiVersionsResponse(error_code=35, api_keys=[
                ApiVersionsResponse.ApiVersion(api_key=18, min_version=0,
                                               max_version=self.api_versions_max)])
        keys = [ApiVersionsResponse.ApiVersion(api_key=k, min_version=lo, max_version=hi)
                for k, (lo, hi) in API_VERSIONS_SUPPORTED.items() if k not in self.missing_apis]
        return ApiVersionsResponse(error_code=0, api_keys=keys)

    def _MetadataRequest(self, req: Request):
        brokers = [MR.MetadataResponseBroker(node_id=b, host="127.0.0.1", port=self.port(b))
                   for b in self.brokers]
        topics = []
        for t in req.msg.topics:
            name = t.name
            if name not in self.topics and self.auto_create and req.msg.allow_auto_topic_creation:
                self.create(name)
                topics.append(MR.MetadataResponseTopic(error_code=5, name=name, partitions=[]))
                continue
            if name not in self.topics:
                topics.append(MR.MetadataResponseTopic(error_code=3, name=name, partitions=[]))
                continue
            parts = [MR.MetadataResponsePartition(
                error_code=0, partition_index=p, leader_id=self.leaders[(name, p)],
                leader_epoch=self.leader_epochs[(name, p)], replica_nodes=list(self.brokers),
                isr_nodes=list(self.brokers)) for p in range(self.topics[name])]
            topics.append(MR.MetadataResponseTopic(error_code=0, name=name, partitions=parts,
                                                   topic_id=self.topic_ids[name]))
        return MR(brokers=brokers, controller_id=self.brokers[0], topics=topics)

    def _InitProducerIdRequest(self, req: Request):
        if self.init_pid_errors:
            return InitProducerIdResponse(error_code=self.init_pid_errors.popleft(),
                                          producer_id=-1, producer_epoch=-1)
        m = req.msg
        if m.producer_id >= 0 and m.producer_id in self._epochs:
            if self._epochs[m.producer_id] != m.producer_epoch:
                return InitProducerIdResponse(error_code=47, producer_id=-1, producer_epoch=-1)
            epoch = m.producer_epoch + 1
            pid = m.producer_id
        elif m.producer_id >= 0:
            pid, epoch = m.producer_id, m.producer_epoch + 1
        else:
            pid, epoch = self.next_pid, 0
            self.next_pid += 1
        self._epochs[pid] = epoch
        return InitProducerIdResponse(error_code=0, producer_id=pid, producer_epoch=epoch)

    def _ProduceRequest(self, req: Request):
        out = []
        for t in req.msg.topic_data:
            parts = []
            for p in t.partition_data:
                parts.append(self._produce_partition(req.node, t.name, p.index, p.records))
            out.append(PR.TopicProduceResponse(name=t.name, partition_responses=parts))
        return PR(responses=out)

    def _produce_partition(self, node: int, topic: str, partition: int, records: bytes):
        tp = (topic, partition)

        def resp(code: int, offset: int = -1, **kw):
            return PR.PartitionProduceResponse(
                index=partition, error_code=code, base_offset=offset, **kw)

        if topic not in self.topics or partition >= self.topics[topic]:
            return resp(3)
        if self.leaders[tp] != node:
            if self.leader_hints:
                return resp(6, current_leader=PR.LeaderIdAndEpoch(
                    leader_id=self.leaders[tp], leader_epoch=self.leader_epochs[tp]))
            return resp(6)
        if self.produce_errors[tp]:
            return resp(self.produce_errors[tp].popleft())
        (batch,) = decode_record_batches(records)
        log = self.logs[tp]
        pid, seq, n = batch.producer_id, batch.base_sequence, len(batch.records)
        epoch = batch.producer_epoch
        if pid >= 0 and self.dedupe:
            if pid not in self._epochs:
                return resp(59)
            held = self._part_epochs.get((pid, topic, partition))
            cache = self._seqs[(pid, topic, partition)]
            if held is not None and epoch < held:
                return resp(47)
            if held is not None and epoch > held:
                if seq != 0:
                    return resp(45)      # a new epoch starts the partition's sequence over
                cache.clear()
            for first, last, base in cache:
                if first == seq and last == seq + n - 1:
                    return resp(46, base)
            expected = (cache[-1][1] + 1) if cache else 0
            if seq != expected:
                return resp(45)
        base = len(log)
        for i, r in enumerate(batch.records):
            log.append(Written(base + i, r.key, r.value, pid, seq + i if seq >= 0 else -1))
        if pid >= 0:
            self._seqs[(pid, topic, partition)].append((seq, seq + n - 1, base))
            self._part_epochs[(pid, topic, partition)] = epoch
        if self.errors_after_append[tp]:
            return resp(self.errors_after_append[tp].popleft())
        return resp(0, base)


class Harness:
    """An engine, a fake cluster and a fake clock; `run()` plays the network."""

    def __init__(self, cluster: FakeCluster | None = None, **kafka) -> None:
        self.cluster = cluster or FakeCluster()
        queue = kafka.pop("queue", QueueConfig())
        log_messages_on_error = kafka.pop("log_messages_on_error", True)   # [logging]
        kafka.setdefault("bootstrap_servers", ("127.0.0.1:9001",))
        self.kafka = KafkaConfig(**kafka)
        # No safety sweep: a lane that misses its wake-up must show up as a failure here.
        self.engine = Engine(self.kafka, queue, rng=random.Random(7), sweep_interval=float("inf"),
                             log_messages_on_error=log_messages_on_error)
        self.now = 1000.0
        self.outcomes = []
        self.partition_changes = []     # what polls reported in Actions.partition_changes
        self.up: set[int] = set(self.cluster.brokers)   # brokers accepting connections
        self.hold_answers: set[int] = set()             # brokers that never answer
        self.hang_up: set[int] = set()   # brokers that close connections before answering
        self.sent: list[Request] = []
        self.unanswered: list[Request] = []
        self.connects: list[int] = []
        self.closes: list[int] = []
        # What a connection to a broker that is not up reports: (reason, Kafka code).
        self.refusal: tuple[str, int] = ("connection refused", 0)
        # SASL: None logs every connection in; else (reason, Kafka code) refuses it.
        self.login_refusal: tuple[str, int] | None = None
        # Produce answers reach the engine as frames (Engine.answer); False: as messages
        self.frames = True

    def node_broker(self, node: int) -> int:
        """The fake broker behind an engine node id (bootstrap nodes are -1, -2, ...)."""
        if node < 0:
            addr = self.kafka.bootstrap_servers[-1 - node]
            return int(addr.rsplit(":", 1)[1]) - 9000
        return node

    def submit(self, topic: str, partition: int, values, *, settings=None, keys=None,
               session: bytes = b"s1", token=None):
        values = [v if isinstance(v, bytes) or v is None else str(v).encode() for v in values]
        sub = Submission(session, settings or SessionSettings(), topic, partition,
                         list(keys) if keys is not None else [None] * len(values), values,
                         1_700_000_000_000, token)
        self.engine.submit(sub, self.now)
        return sub

    def check_accounting(self) -> None:
        e = self.engine
        assert e.accepted == (e.delivered + e.failed + e.dropped + e.handed_back + e.kept_in_spool + e.queued
                              + e.in_flight), e.stats()
        assert e.queued >= 0 and e.in_flight >= 0 and e.held >= 0
        # bytes are the size bounds of the same records: nothing left, no bytes left
        assert e.queued_bytes >= 0 and (e.queued_bytes == 0) == (e.queued + e.in_flight == 0), \
            e.stats()

    def step(self) -> bool:
        """One poll and its consequences; True when anything happened."""
        act = self.engine.poll(self.now)
        self.deadline = act.deadline
        self.outcomes += act.outcomes
        self.partition_changes += list(act.partition_changes)
        did = bool(act.outcomes or act.sends or act.connects or act.closes or act.authenticate)
        self.closes += act.closes
        for node, host, port in act.connects:
            self.connects.append(node)
            if self.node_broker(node) in self.up:
                self.engine.connected(node, self.now)
            else:
                self.engine.connect_failed(node, self.now, *self.refusal)
        for node in act.authenticate:
            if self.login_refusal is None:
                self.engine.authenticated(node, self.now)
            else:
                self.engine.auth_failed(node, self.now, *self.login_refusal)
        for req in act.sends:
            self.sent.append(req)
            broker = self.node_broker(req.node)
            if not req.expects_response:
                self.cluster.answer(req)
                continue
            if broker in self.hang_up:
                self.engine.disconnected(req.node, self.now, "closed by the broker")
                continue
            if broker in self.hold_answers or broker not in self.up:
                self.unanswered.append(req)
                continue
            self.deliver(req, self.cluster.answer(req))
        self.check_accounting()
        return did

    def deliver(self, req: Request, msg) -> None:
        """Hand the engine `msg`, the answer to `req`, as the driver does.

        A Produce answer goes as its frame (`Engine.answer`: the fast reading
        of a clean one-batch answer, the general decoding of the rest).
        """
        if req.api_key == 0 and self.frames:
            self.engine.answer(req, encode_response(msg, req.version, 7)[4:], self.now)
        else:
            self.engine.response(req, msg, self.now)

    def run(self, until: float | None = None, max_steps: int = 10_000) -> None:
        """Play events and timers until idle (or the clock reaches `until`)."""
        for _ in range(max_steps):
            if self.step():
                continue
            d = self.deadline
            if until is None and self.engine.idle:
                return
            if d is None or (until is not None and d > until):
                if until is not None and until > self.now:
                    self.now = until
                    continue
                return
            assert d >= self.now, f"deadline {d} in the past at {self.now}"
            self.now = d
        raise AssertionError("engine did not settle")

    def produce_requests(self) -> list[Request]:
        return [r for r in self.sent if type(r.msg).__name__ == "ProduceRequest"]

    def values(self, topic: str, partition: int) -> list[bytes]:
        return [w.value for w in self.cluster.logs[(topic, partition)]]

    def by_token(self):
        out = defaultdict(list)
        for o in self.outcomes:
            out[o.token].append(o)
        return out


def settings(**kw) -> SessionSettings:
    return replace(SessionSettings(), **kw)

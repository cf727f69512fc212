"""What the engine knows about broker connections, and what it asks the driver to do.

* `Conn`: one broker node as the engine sees it (state machine, requests in
  flight in send order, the API versions it announced, reconnect backoff).
  The driver owns the socket; the engine only reads and moves this record.
* `Request`: one request handed to the driver, handed back with its answer.
* `Actions`: everything one `Engine.poll` asks the driver to do.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Sequence

from kafkad.engine.states import ConnState
from kafkad.engine.types import Outcome
from kafkad.protocol import API_VERSIONS_SUPPORTED, ProduceRequest, ProduceResponse, pick_version

if TYPE_CHECKING:
    from kafkad.engine.batching import Batch, Group

API_VERSIONS = 18
_API_PRODUCE = ProduceRequest.API_KEY
_INF = float("inf")


class Actions:
    """What the driver must do after `Engine.poll`, in this order: close, connect, send."""

    __slots__ = ("closes", "connects", "sends", "authenticate", "outcomes", "partition_changes",
                 "forgotten_topics", "deadline")

    def __init__(self) -> None:
        self.closes: list[int] = []
        self.connects: list[tuple[int, str, int]] = []
        self.sends: list[Request] = []
        self.authenticate: list[int] = []
        self.outcomes: list[Outcome] = []
        # (topic, error, partition ids): a known topic's partition list changed
        # (error 0), or the topic is gone for good (error, []); for the IPC side
        self.partition_changes: Sequence[tuple[str, int, list[int]]] = ()   # a list when there are any
        # topics forgotten after metadata_max_idle_ms unused (the IPC side drops its watchers)
        self.forgotten_topics: Sequence[str] = ()
        self.deadline: float | None = None

    def __repr__(self) -> str:
        return (f"<Actions close={self.closes} connect={[c[0] for c in self.connects]} "
                f"send={self.sends} auth={self.authenticate} outcomes={len(self.outcomes)} "
                f"deadline={self.deadline}>")


class Request:
    """One request handed to the driver: write `msg` at `version` to `node`.

    `expects_response` is False only for acks=0 Produce requests. The driver
    passes the same object back to `Engine.answer` (or `Engine.response`,
    with the decoded answer).

    A Produce request (`Request.produce`) is built from plain values, not
    message objects: it is the request of every send. `produce_values` holds
    (acks, timeout_ms, [(topic, [(partition, records), ...]), ...]) and the
    driver writes them with `kafkad.protocol.produce.produce_request` (one
    join, its correlation id in the header). Its `msg`, the same request as a
    ProduceRequest, is made only when something asks for it (tests, fakes).
    `produce_values` is None for every other request: the driver encodes `msg`.
    """

    __slots__ = ("node", "_msg", "version", "expects_response", "sent_at", "batches", "group",
                 "response_cls", "api_key", "produce_values")

    def __init__(self, node: int, msg, version: int, response_cls, now: float,
                 expects_response: bool = True, batches: list[Batch] | None = None,
                 group: Group | None = None) -> None:
        self.node = node
        self._msg = msg
        self.api_key = msg.API_KEY
        self.version = version
        self.response_cls = response_cls
        self.expects_response = expects_response
        self.sent_at = now
        self.batches = batches
        self.group = group
        self.produce_values = None

    @classmethod
    def produce(cls, node: int, version: int, now: float, acks: int, timeout_ms: int,
                topic_data: list, batches: list[Batch]) -> "Request":
        """A Produce request of (acks, timeout_ms, topic_data) at `version`.

        `topic_data`: [(topic, [(partition, records), ...]), ...] as
        `produce_request` takes it; `msg` is made from the same values.
        """
        req = cls.__new__(cls)
        req.node = node
        req._msg = None
        req.api_key = _API_PRODUCE
        req.version = version
        req.response_cls = ProduceResponse
        req.expects_response = acks != 0
        req.sent_at = now
        req.batches = batches
        req.group = None
        req.produce_values = (acks, timeout_ms, topic_data)
        return req

    @property
    def msg(self):
        msg = self._msg
        if msg is None:
            acks, timeout_ms, topic_data = self.produce_values
            TPD, PPD = ProduceRequest.TopicProduceData, ProduceRequest.PartitionProduceData
            msg = self._msg = ProduceRequest(
                transactional_id=None, acks=acks, timeout_ms=timeout_ms,
                topic_data=[TPD(name=name, partition_data=[PPD(index=i, records=r) for i, r in parts])
                            for name, parts in topic_data])
        return msg

    def __repr__(self) -> str:
        extra = f" batches={len(self.batches)}" if self.batches else ""
        return f"<Request {type(self.msg).__name__} v{self.version} node={self.node}{extra}>"


class Conn:
    """One broker node's connection as the engine sees it (the driver owns the socket)."""

    __slots__ = ("node", "host", "port", "state", "inflight", "versions", "retry_at",
                 "failures", "bootstrap", "api_versions_version", "logged_at", "writable",
                 "blocked", "cause", "cause_text", "fail_count", "failing_since", "fail_what")

    def __init__(self, node: int, host: str, port: int, bootstrap: bool = False) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.state = ConnState.DOWN
        self.inflight: deque[Request] = deque()
        self.versions: dict[int, tuple[int, int]] = {}
        self.retry_at = 0.0
        self.failures = 0
        self.bootstrap = bootstrap
        self.api_versions_version = API_VERSIONS_SUPPORTED[API_VERSIONS][1]
        # failed attempts since the connection was last ready (engine._log_failure)
        self.fail_count = 0
        self.failing_since = 0.0
        self.fail_what = ""      # the kind of failure last logged loudly
        self.logged_at = -_INF   # when a failure of this connection was last logged loudly
        self.writable = True     # False while the socket's send buffer is over its limit
        self.blocked: set = set()  # lanes with batches waiting for this connection
        # Why the last attempt failed, as a Kafka error code, when the driver could
        # name one (refused login or TLS handshake); 0 once the connection is ready.
        self.cause = 0
        self.cause_text = ""

    def __repr__(self) -> str:
        return (f"<Conn node={self.node} {self.host}:{self.port} {self.state.name} "
                f"inflight={len(self.inflight)}>")

    def version(self, api_key: int) -> int | None:
        rng = self.versions.get(api_key)
        return None if rng is None else pick_version(api_key, rng[0], rng[1])

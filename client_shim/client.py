"""`DaemonClient`: what the producers use to reach kafkad (and `KafkaClient`/`SimpleClient`).

A `DaemonClient` is only an endpoint and a timeout; the socket, the I/O
thread and the partition-list cache belong to the process-wide link for that
endpoint (see `client_shim.link`), created on first use and re-created in a
forked child. Creating a client therefore costs nothing and opens nothing.
"""

from __future__ import annotations

import logging
import threading
import warnings

from client_shim import schema
from client_shim.errors import for_code
from client_shim.link import DEFAULT_TIMEOUT_S, _Link, get_link, resolve_endpoint

log = logging.getLogger("client_shim")


class DaemonClient:
    """The link to the local kafkad daemon.

    endpoint: ZeroMQ endpoint of the daemon; None means `$KAFKAD_ENDPOINT`,
        else `ipc:///run/kafkad/kafkad.sock`.
    timeout: seconds to wait for the daemon to take a request (and to answer
        the quick ones: metadata, stats); past it, `KafkadUnavailableError`.
    """

    def __init__(self, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        self.endpoint = resolve_endpoint(endpoint)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.endpoint!r}, timeout={self.timeout:g})"

    # The link is looked up on every use, so that a client made before fork()
    # gets the child's own link in the child.
    @property
    def _link(self) -> _Link:
        return get_link(self.endpoint)

    def ping(self) -> dict:
        """Ask the daemon who it is: {'version': schema version, 'instance_id': hex}."""
        reply = self._link.request(
            lambda rid: schema.encode([schema.HELLO, schema.SCHEMA_VERSION, rid]), None, self.timeout)
        return {"version": reply[2], "instance_id": bytes(reply[3]).hex(), "limits": reply[4]}

    def stats(self) -> dict:
        """The daemon's counters and gauges (what `kafkad stats` prints)."""
        reply = self._link.request(lambda rid: schema.encode([schema.STATS, rid]), None, self.timeout)
        return reply[2]

    def partitions_for(self, topic: str, refresh: bool = False) -> list[int]:
        """The sorted partition ids of `topic` (cached per process; asked of the daemon)."""
        return self.partitions_or_pick(topic, refresh, pick=False)    # a list, or it raises

    def partitions_or_pick(self, topic: str, refresh: bool = False, pick: bool = True) -> list[int] | None:
        """`partitions_for`, or None when kafkad has no list yet but will pick the partition.

        kafkad says so (PARTITIONS with `pick`) when no broker answers or the
        topic is not settled yet (a leader election, a topic being created):
        a producer then sends with a negative partition (client_shim.schema
        PICK_PARTITION_MIN) and kafkad picks, once it knows the list, the
        partition the producer's partitioner would have picked. For the next
        PICK_RECHECK_S this process does not ask again (`_Link.picking`).
        Raises the error kafkad gave when it does not offer that (`pick`
        False, an older daemon, or a lasting error such as an unknown topic).
        """
        link = self._link
        cache = _partition_cache(link)
        if not refresh:
            parts = cache.get(topic)
            if parts:
                return parts
            if pick and link.picking(topic):
                return None
        reply = link.request(lambda rid: schema.encode([schema.METADATA, rid, topic]), None,
                             self.timeout, result_timeout=self.timeout * 2)
        error, parts = reply[2], sorted(reply[3])
        if error or not parts:
            link.on_unknown_partition(topic)
            if error and len(reply) > 4 and reply[4] is True:
                link.start_picking(topic)
                if pick:
                    return None
            err = for_code(error or 5)
            raise err(f"no partitions known for topic {topic!r}")
        link.cache_partitions(topic, parts)
        return cache.get(topic) or parts     # the list object producers will see

    # --- the legacy KafkaClient surface producers' callers sometimes touch ----

    def get_partition_ids_for_topic(self, topic) -> list[int]:
        return self.partitions_for(_topic_str(topic))

    def has_metadata_for_topic(self, topic) -> bool:
        return bool(_partition_cache(self._link).get(_topic_str(topic)))

    def ensure_topic_exists(self, topic, timeout: float = 30) -> None:
        self.partitions_for(_topic_str(topic), refresh=True)

    def load_metadata_for_topics(self, *topics) -> None:
        for t in topics:
            self.partitions_for(_topic_str(t), refresh=True)

    @property
    def topic_partitions(self) -> dict:
        cache = dict(_partition_cache(self._link))      # a copy: the I/O thread may change it
        return {t: {p: None for p in parts} for t, parts in cache.items()}

    def copy(self) -> "DaemonClient":
        return type(self)(endpoint=self.endpoint, timeout=self.timeout)

    def close(self) -> None:
        """Nothing to release: the process-wide link lives until interpreter exit."""

    def reinit(self) -> None:
        """Legacy no-op: the link re-creates itself after fork and reconnects on its own."""


def _partition_cache(link: _Link) -> dict:
    # Kept by the link: PARTITIONS_CHANGED from the daemon and unknown-partition
    # failures update it on the I/O thread (a whole list replaced at a time).
    return link.partition_cache


def _topic_str(topic) -> str:
    return topic.decode("ascii") if isinstance(topic, (bytes, bytearray)) else topic


_warned_hosts = False
_warn_lock = threading.Lock()


class KafkaClient(DaemonClient):
    """Drop-in for kafka-python's `KafkaClient`/`SimpleClient`: the daemon owns the brokers.

    kafka-python's arguments, in its order: `hosts`, `client_id`, `timeout`,
    `correlation_id`, `metrics`. All but `timeout` concern the brokers and are
    accepted and ignored (one warning per process), as are other old keyword
    arguments. `timeout` was the brokers' socket timeout (120 s by default);
    here it is the `DaemonClient` timeout when given, else that default (5 s):
    a missing daemon is reported in seconds, not after two minutes.
    """

    def __init__(self, hosts=None, client_id=None, timeout: float = DEFAULT_TIMEOUT_S,
                 correlation_id=None, metrics=None, *, endpoint: str | None = None, **ignored):
        global _warned_hosts
        given = {"hosts": hosts, "client_id": client_id, "correlation_id": correlation_id,
                 "metrics": metrics}
        if ignored or any(v is not None for v in given.values()):
            with _warn_lock:
                if not _warned_hosts:
                    _warned_hosts = True
                    what = ", ".join([name for name, v in given.items() if v is not None] + sorted(ignored))
                    msg = (f"{type(self).__name__}: {what} ignored; kafkad owns the broker "
                           "connections (set KAFKAD_ENDPOINT or pass endpoint= to choose the daemon)")
                    warnings.warn(msg, UserWarning, stacklevel=2)
                    log.warning(msg)
        super().__init__(endpoint=endpoint, timeout=timeout)


SimpleClient = KafkaClient


def as_client(client) -> DaemonClient:
    """A producer's `client` argument: a DaemonClient, an endpoint string, or None."""
    if isinstance(client, DaemonClient):
        return client
    if client is None or isinstance(client, str):
        return DaemonClient(client)
    raise TypeError(f"client must be a DaemonClient (or KafkaClient), an endpoint string or None, "
                    f"not {type(client).__name__}")

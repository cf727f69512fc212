"""kafkad.broker: the asyncio driver around the sans-IO producer engine.

`BrokerProducer` is the whole interface the rest of the daemon uses (see
DESIGN.md, "engine and its I/O driver"). It owns the sockets
(`BrokerConnection`, one per broker node), the timer and the event loop
callbacks; every decision is the engine's (`kafkad.engine.engine.Engine`).

The loop: every event (a submission, a connection up or down, an answer, a
timer) changes the engine and asks for one `poll`, scheduled with
`call_soon` so that a burst of events (many submissions from many workers in
one loop iteration) is looked at once and shares requests. The two callbacks
that bring most events, a read of the IPC socket (every frame it drained)
and a broker connection's `data_received` (every answer in the bytes read),
bracket their events with `hold_polls()` / `release_polls()` and so get that
one poll at their end, in the same loop turn: a `call_soon` costs a loop
turn (an epoll call and the loop's bookkeeping), and a sync send used to
pay two of them on its way. `poll` returns what to do; the driver does it
and arms one timer for the engine's next deadline. Nothing polls on a fixed
interval. A sync submission and a connection's answers skip the poll they
would ask for when the engine says it has nothing to do (the sync fast path:
`Engine.send_sync`, `take_outcomes`, `needs_poll`): in a settled daemon a
sync send then costs no poll at all.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import ssl
import time
from typing import Callable, Mapping

from kafkad import __version__
from kafkad.broker.connection import BrokerConnection
from kafkad.config import KafkaConfig, QueueConfig
from kafkad.engine.engine import Engine
from kafkad.engine.types import Outcome, ProducerDrained, QueueFull, SessionSettings, Submission

__all__ = ["BrokerProducer", "Outcome", "ProducerDrained", "QueueFull", "SessionSettings",
           "Submission"]

log = logging.getLogger("kafkad.broker")

REQUEST_TIMED_OUT = 7
BROKER_NOT_AVAILABLE = 8
SASL_AUTHENTICATION_FAILED = 58
# Never re-arm the timer closer than this: a deadline already past is served
# by the poll that is about to run, not by a spinning timer.
_MIN_TIMER_S = 0.0005


def _find_malloc_trim():
    """glibc's malloc_trim, or None (another C library, or no symbol table to ask)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


_malloc_trim = _find_malloc_trim()


class BrokerProducer:
    """Owns the broker connections and the producer engine; driven by the running loop."""

    def __init__(self, kafka: KafkaConfig, queue: QueueConfig, *,
                 on_outcomes: Callable[[list[Outcome]], None],
                 on_partitions_changed: Callable[[list[tuple[str, int, list[int]]]], None] | None = None,
                 on_topics_forgotten: Callable[[list[str]], None] | None = None,
                 log_messages_on_error: bool = True,
                 ) -> None:
        if not callable(on_outcomes):
            raise TypeError("on_outcomes: expected a callable taking a list of Outcome")
        self.kafka = kafka
        self.engine = Engine(kafka, queue, client_version=__version__,
                             log_messages_on_error=log_messages_on_error)
        self._on_outcomes = on_outcomes
        # (topic, error, partition ids) of known topics whose layout changed (Actions.partition_changes)
        self._on_partitions_changed = on_partitions_changed
        # topics the engine forgot after metadata_max_idle_ms unused (Actions.forgotten_topics)
        self._on_topics_forgotten = on_topics_forgotten
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self._conns: dict[int, BrokerConnection] = {}
        self._poll_scheduled = False   # a call_soon(_poll) is queued
        self._held = 0                 # hold_polls() depth
        self._poll_wanted = False      # wake() while held: poll at release_polls()
        self._sync_waiting = False     # sync submissions while held: sent at release_polls()
        self._polling = False          # inside _poll (no poll from within a poll)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._topic_waiters: dict[str, list[asyncio.Future]] = {}
        self._idle_waiters: list[asyncio.Future] = []
        self._closed = False
        self._trim_armed = False

    # After the queue held this many bytes, its memory is handed back to the OS
    # once it empties (docs/engine.md, "Memory"). A class attribute for tests.
    trim_after_bytes = 64 * 1024 * 1024

    def __repr__(self) -> str:
        return f"<BrokerProducer {self.engine!r} connections={sorted(self._conns)}>"

    # ------------------------------------------------------------------ the seam

    async def start(self) -> None:
        """Start connecting in the background; returns at once (brokers may be down)."""
        self.loop = asyncio.get_running_loop()
        if self.kafka.security_protocol in ("SSL", "SASL_SSL"):
            from kafkad.broker.security import make_ssl_context

            self.ssl_context = make_ssl_context(self.kafka)
        self.wake()

    def submit(self, sub: Submission, divisible: bool = False) -> None:
        """Take a submission, or raise QueueFull (nothing taken). Never blocks.

        `divisible`: as for `Engine.submit` (RecordTooLarge instead of failing a
        merged submission for one oversized record).

        Once `drain` has handed back the undelivered, every submission is
        refused with ProducerDrained (a QueueFull subclass): the outcomes that
        drain's last poll reports may prompt the IPC side to submit more.
        """
        if self.loop is None:
            raise RuntimeError("BrokerProducer.submit: await start() first")
        if self._closed:
            raise RuntimeError("BrokerProducer.submit: the producer is closed")
        now = self.loop.time()
        self.engine.submit(sub, now, divisible)
        if sub.settings.async_send:
            self.wake()
        elif self._held:
            # in a burst (one read of the IPC socket): its sync records share
            # requests, sent at release_polls
            self._sync_waiting = True
        else:
            self._send_sync(now)

    def _send_sync(self, now: float) -> None:
        """Write the sync submissions' requests now; poll only if that leaves work (Engine.needs_poll).

        Never raises: it runs inside I/O callbacks and release_polls, which
        must always end their burst. A failure is logged and a poll asked
        for, as when a poll fails.
        """
        try:
            sends = self.engine.send_sync(now)
            if sends:
                self._write(sends, now)
            if sends and not self._needs_poll(now):
                return
        except Exception:  # noqa: BLE001 - as a failed poll: logged, and the poll tries again
            log.exception("the producer failed sending sync requests")
        self.wake()

    def flush_session(self, session_id: bytes) -> None:
        """Send what session `session_id` holds for batching now (its producer is stopping).

        An async session's messages wait in the engine for `batch_n` of them
        or `batch_t` seconds; a stopping producer must not wait that long.
        They go out like a sync session's, after `linger_ms` at most. Never
        blocks; the outcomes come through `on_outcomes` as usual.
        """
        if self.loop is None:
            raise RuntimeError("BrokerProducer.flush_session: await start() first")
        self.engine.flush_session(session_id, self.loop.time())
        self.wake()

    def has_room(self, fraction: float) -> bool:
        """Whether the queue holds at most `fraction` of its `[queue]` caps (messages and bytes)."""
        engine = self.engine
        q = engine.queue
        return (engine.queued + engine.in_flight <= q.max_messages * fraction
                and engine.queued_bytes <= q.max_bytes * fraction)

    def too_large(self, keys: list, values: list) -> bool:
        """Whether a record among these is larger than any batch may be (Engine.too_large)."""
        return self.engine.too_large(keys, values)

    @property
    def batch_cap(self) -> int:
        """The largest batch in bytes: an entry of at most half this has no record too large."""
        return self.engine.batch_cap

    def count_failed(self, topic: str, n: int, code: int) -> None:
        """Messages the IPC side failed itself, counted with the engine's (Engine.count_failed)."""
        self.engine.count_failed(topic, n, code)

    def partitions_for(self, topic: str) -> list[int] | None:
        """Partition ids of `topic` from the metadata cache, or None when not known yet."""
        return self.engine.partitions_for(topic)

    def topic_failed(self, topic: str) -> bool:
        """Whether the cluster's answer for `topic` is a lasting error (it does not exist,
        access denied): records for it fail, so none should wait for its partitions."""
        result = self.engine.topic_result(topic, self.loop.time())
        return result is not None and result[0] != 0

    async def fetch_partitions(self, topic: str, timeout: float) -> tuple[int, list[int]]:
        """(error_code, partition ids) of `topic`, asking the cluster when the cache has none.

        On timeout: the topic's last error if the cluster gave one, else the
        cause no broker could be reached (e.g. 58 for a refused login or TLS
        handshake), else REQUEST_TIMED_OUT (7). Before the timeout, as soon as
        every broker failed its last connection attempt (`Engine.unreachable`):
        that cause, else BROKER_NOT_AVAILABLE (8).
        """
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic: expected a topic name, got {topic!r}")
        known = self.engine.partitions_for(topic)
        if known is not None:
            return 0, list(known)
        self.engine.want_topic(topic, self.loop.time())
        fut = self.loop.create_future()
        self._topic_waiters.setdefault(topic, []).append(fut)
        self.wake()
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            info = self.engine.metadata.topics.get(topic)
            if info is not None and info.error:
                return info.error, []
            return self.engine.connection_error() or REQUEST_TIMED_OUT, []
        finally:
            waiters = self._topic_waiters.get(topic)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._topic_waiters[topic]

    async def drain(self, deadline: float) -> list[Submission]:
        """Send everything until `deadline` (loop clock); return exactly what was not delivered."""
        engine = self.engine
        engine.start_drain()
        self.wake()
        if not engine.idle:
            fut = self.loop.create_future()
            self._idle_waiters.append(fut)
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - self.loop.time()))
            except asyncio.TimeoutError:
                pass
            finally:
                if fut in self._idle_waiters:
                    self._idle_waiters.remove(fut)
        left = engine.take_undelivered()
        # Report what finished while draining. on_outcomes may try to submit more
        # (the IPC server's spool replay): the engine refuses it from now on
        # (ProducerDrained), so `left` stays exactly what was not delivered.
        self._poll()
        return left

    def note_settled_at_stop(self, *, failed: Mapping[str, int] | None = None, code: int = 0,
                             kept: int = 0) -> None:
        """Of what `drain` returned, `failed` were reported to their senders and `kept` stay
        in the spool (see Engine.note_settled_at_stop)."""
        self.engine.note_settled_at_stop(failed=failed, code=code, kept=kept)

    def note_handed_back(self, n: int) -> None:
        """`n` messages of what `drain` returned went back to their shims (see Engine.note_handed_back)."""
        self.engine.note_handed_back(n)

    async def close(self) -> None:
        """Close every connection. Call drain() first: records still queued stay counted."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()
        for waiters in list(self._topic_waiters.values()) + [self._idle_waiters]:
            for fut in waiters:
                if not fut.done():
                    fut.cancel()

    def reload(self, kafka: KafkaConfig, queue: QueueConfig) -> list[str]:
        """Apply new settings now; return the settings that need a restart to apply."""
        need = self.engine.reconfigure(kafka, queue)
        self.kafka = self.engine.kafka
        if self.loop is not None:
            self.wake()
        return need

    def stats(self) -> dict:
        """A plain-dict snapshot: counters, gauges, per-broker latency, per-topic counts."""
        out = self.engine.stats()
        out["connections"] = len(self._conns)
        return out

    # ------------------------------------------------------------------ driving the engine

    def wake(self) -> None:
        """Ask for one engine poll soon (collapses with other requests in this loop turn)."""
        if not self._poll_scheduled and not self._closed and self.loop is not None:
            if self._held:
                self._poll_wanted = True
                return
            self._poll_scheduled = True
            self.loop.call_soon(self._poll)

    def hold_polls(self) -> None:
        """A burst of events starts (one read of the IPC socket or of a broker).

        Until the matching `release_polls`, `wake` only notes that a poll is
        wanted. Pairs nest. For I/O callbacks: submissions and answers that
        arrive together still share one poll, without waiting a loop turn.
        """
        self._held += 1

    def release_polls(self, poll: bool = True) -> None:
        """The burst is over: run the poll it asked for now (`poll=False`: in the next turn).

        The burst's sync submissions go first, in shared requests, and the
        poll runs only if that leaves it work (`_send_sync`). From inside a poll (an outcome callback that reads the IPC socket
        again) the poll is scheduled instead: `Engine.poll` is never re-entered.
        """
        if self._sync_waiting and self._held == 1:
            self._sync_waiting = False
            if poll:
                self._send_sync(self.loop.time())   # still held: its wake() only notes; never raises
            else:
                self.wake()     # the poll (next turn) sends them, after the failure is known
        self._held -= 1
        if self._held or not self._poll_wanted:
            return
        self._poll_wanted = False
        if poll and not self._polling and not self._poll_scheduled:
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - as asyncio would log a failed call_soon(_poll)
                log.exception("the producer poll failed")   # the caller's callback goes on
        else:
            self.wake()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._poll()

    def _poll(self) -> None:
        self._poll_scheduled = False
        if self._closed:
            return
        self._polling = True
        try:
            self._poll_once()
        finally:
            self._polling = False

    def _poll_once(self) -> None:
        loop = self.loop
        now = loop.time()
        for topic in self._topic_waiters:
            self.engine.touch_topic(topic, now)   # still asked about: not idle
        try:
            act = self.engine.poll(now)
        except Exception:  # noqa: BLE001 - a bug must not stop delivery for good
            log.exception("the producer engine failed in poll(); trying again in 1 s")
            loop.call_later(1.0, self.wake)
            return
        for node in act.closes:
            conn = self._conns.pop(node, None)
            if conn is not None:
                conn.close()
        for node, host, port in act.connects:
            old = self._conns.pop(node, None)
            if old is not None:
                old.close()
            self._conns[node] = BrokerConnection(self, node, host, port)
        conns = self._conns
        unwritable = self._write(act.sends, now, report=False)
        for node in act.authenticate:
            conn = conns.get(node)
            if conn is None or not conn.is_open:
                unwritable.add(node)
            else:
                conn.start_auth()
        if unwritable:
            self._report_unwritable(unwritable, now)
        if act.outcomes:
            self._report_outcomes(act.outcomes)
        if act.partition_changes:
            self._report_partition_changes(act.partition_changes)
        if act.forgotten_topics and self._on_topics_forgotten is not None:
            try:
                self._on_topics_forgotten(act.forgotten_topics)
            except Exception:  # noqa: BLE001 - the engine must keep running
                log.exception("on_topics_forgotten callback failed")
        deadline = act.deadline
        if deadline is not None:
            deadline = max(deadline, now + _MIN_TIMER_S)
            if deadline < self._timer_at - 1e-4 or self._timer is None:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(deadline, self._on_timer)
                self._timer_at = deadline
        if self._topic_waiters:
            unreachable = self.engine.unreachable()
            for topic, waiters in list(self._topic_waiters.items()):
                result = self.engine.topic_result(topic, now)
                if result is None and unreachable:
                    # No broker answers now: say so at once rather than after the
                    # timeout (a shim then lets the daemon pick the partition later).
                    result = (self.engine.connection_error() or BROKER_NOT_AVAILABLE, [])
                if result is not None:
                    for fut in waiters:
                        if not fut.done():
                            fut.set_result(result)
        engine = self.engine
        if engine.queued_bytes > self.trim_after_bytes:
            self._trim_armed = True
        elif self._trim_armed and engine.idle:
            self._trim_armed = False
            self._release_freed_memory()
        if self._idle_waiters and engine.idle:
            for fut in self._idle_waiters:
                if not fut.done():
                    fut.set_result(None)

    def _write(self, sends: list, now: float, report: bool = True) -> set[int]:
        """Write the engine's requests; return the nodes with no open connection to write to.

        `report`: treat those connections as lost now (else the caller does).
        """
        conns = self._conns
        unwritable: set[int] = set()
        for req in sends:
            conn = conns.get(req.node)
            if conn is None or not conn.is_open:
                unwritable.add(req.node)
            else:
                conn.send(req)
        if unwritable and report:
            self._report_unwritable(unwritable, now)
        return unwritable

    def _report_outcomes(self, outcomes: list[Outcome]) -> None:
        try:
            self._on_outcomes(outcomes)
        except Exception:  # noqa: BLE001 - the engine must keep running
            log.exception("on_outcomes callback failed for %d outcomes", len(outcomes))

    def _needs_poll(self, now: float) -> bool:
        """Whether a poll has work now: the engine's (Engine.needs_poll) or this driver's own."""
        return bool(self._topic_waiters or self._idle_waiters or self._trim_armed
                    or self._timer is None or self.engine.needs_poll(now))

    def answers_read(self, now: float) -> None:
        """A connection handed its answers to the engine: report what they settled.

        Then ask for a poll only if one has work (a clean answer to a sync
        send in a settled daemon has none): see Engine.needs_poll.
        """
        try:
            outcomes = self.engine.take_outcomes()
            if outcomes:
                self._report_outcomes(outcomes)
            if not self._needs_poll(now):
                return
        except Exception:  # noqa: BLE001 - never out of data_received: the poll reports them
            log.exception("the producer failed reporting answers")
        self.wake()

    def _report_partition_changes(self, changes: list[tuple[str, int, list[int]]]) -> None:
        for topic, error, parts in changes:
            if error:
                log.warning("topic %r: the cluster now answers error %d for it (its partition list is gone)",
                            topic, error)
            else:
                log.info("topic %r now has %d partitions", topic, len(parts))
        if self._on_partitions_changed is not None:
            try:
                self._on_partitions_changed(changes)
            except Exception:  # noqa: BLE001 - the engine must keep running
                log.exception("on_partitions_changed callback failed")

    @staticmethod
    def _release_freed_memory() -> None:
        """Give the heap freed by a large delivered load back to the OS (glibc only).

        Payloads over 512 bytes live in glibc's heap, which keeps what is freed
        for reuse: after a load that filled the queue the daemon's RSS stays
        near its peak with nothing alive in it. malloc_trim(0) returns the free
        pages (about 20 ms for a 400 MiB heap); called once per such load.
        """
        if _malloc_trim is None:
            return
        t0 = time.perf_counter()
        _malloc_trim(0)
        log.debug("queue emptied after a large load: freed heap returned to the OS in %.1f ms",
                  (time.perf_counter() - t0) * 1000)

    def _report_unwritable(self, nodes: set[int], now: float) -> None:
        """The engine handed out work for connections this driver does not hold open.

        The engine promises never to do that (`Engine._handout`); should the
        two still disagree, the requests are not dropped and the poll's other
        actions are not lost: the connection counts as lost, so the engine
        settles (retries) what it had on it and connects again.
        """
        for node in sorted(nodes):
            log.error("kafka broker %s: the engine handed out a request but no open connection "
                      "exists to write it to; treating the connection as lost", node)
            conn = self._conns.pop(node, None)
            if conn is not None:
                conn.close()
            self.engine.disconnected(node, now, "no open connection to write to")
        self.wake()

    def conn_event(self, conn: BrokerConnection, what: str, reason: str, error: int = 0) -> None:
        """A connection's news, passed to the engine unless the engine already let it go.

        `error`, for failures: the Kafka code naming a cause that retrying will
        not cure (records kept from the broker fail with it), or 0.
        """
        if self._conns.get(conn.node) is not conn:
            return
        engine = self.engine
        now = self.loop.time()
        if what == "connected":
            engine.connected(conn.node, now)
        elif what == "connect_failed":
            del self._conns[conn.node]
            engine.connect_failed(conn.node, now, reason, error)
        elif what == "disconnected":
            del self._conns[conn.node]
            engine.disconnected(conn.node, now, reason, error)
        elif what == "authenticated":
            engine.authenticated(conn.node, now)
        elif what == "auth_failed":
            del self._conns[conn.node]
            conn.close()
            engine.auth_failed(conn.node, now, reason, error)
        self.wake()

    @staticmethod
    def connect_error_code(exc: BaseException) -> int:
        """The Kafka code for a failed connection attempt: 58 for a refused TLS handshake, else 0.

        Kafka has no error code for TLS: the Java client raises
        SslAuthenticationException, an AuthenticationException like the
        SaslAuthenticationException that code 58 stands for, and librdkafka
        uses a local (negative) code. SASL_AUTHENTICATION_FAILED (58) is the
        protocol's one code for "this client could not prove who it is or
        could not trust the broker", and like a TLS failure it is not
        retriable. The log line says what exactly failed. Timeouts and
        refused TCP connections get no code (the records time out with 7).
        """
        if isinstance(exc, ssl.SSLError) or isinstance(getattr(exc, "__cause__", None), ssl.SSLError):
            return SASL_AUTHENTICATION_FAILED
        return 0

    def describe_connect_error(self, conn: BrokerConnection, exc: BaseException) -> str:
        """A sentence for a failed connection attempt (TLS failures say what to check)."""
        if isinstance(exc, asyncio.TimeoutError):
            return f"no connection within {self.kafka.connect_timeout_ms} ms"
        if isinstance(exc, ssl.SSLError) or isinstance(getattr(exc, "__cause__", None), ssl.SSLError):
            from kafkad.broker.security import describe_tls_error

            return describe_tls_error(exc, f"{conn.host}:{conn.port}", self.kafka)
        return f"{type(exc).__name__}: {exc}"

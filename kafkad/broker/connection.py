"""One broker connection: an asyncio protocol, its frames and its correlation ids.

A `BrokerConnection` is created when the engine asks for a connection to a
node and lives until the socket closes or the engine asks to close it. It
writes requests in the order the engine hands them over, reads whole frames
with `FrameReader`, checks that each answer's correlation id is the oldest one
outstanding (Kafka answers in order on a connection) and hands the decoded
answer to the engine. It also runs the SASL exchange when the engine asks for
it. Everything it learns goes to its owner (`BrokerProducer`) as calls; it
keeps no producer state of its own.

It is the protocol of its transport (TCP, or TLS under asyncio's SSL
protocol): `data_received` feeds the frame reader and hands whole answers to
the engine in the same callback, then asks the owner for the poll those
answers call for in the same loop turn (`BrokerProducer.hold_polls` /
`release_polls`). A stream reader task would cost two more loop turns per
answer (the reader's future, then the task step), a sync send's latency.
A task per connection still connects, waits for the end of the connection
and reports it (`_run`). It is a `BufferedProtocol`: the transport reads into
one buffer the connection keeps (`get_buffer`), and only the bytes read are
copied out; a plain protocol gets a new 256 KiB `recv` buffer per read, which
costs more than the rest of reading a small answer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any

from kafkad.protocol import (
    FrameReader,
    ProtocolError,
    decode_response,
    encode_request,
    peek_correlation_id,
)
from kafkad.protocol.messages import RESPONSE_FOR
from kafkad.protocol.produce import produce_request

if TYPE_CHECKING:
    from kafkad.broker import BrokerProducer
    from kafkad.engine.engine import Request

log = logging.getLogger("kafkad.broker")

# Size of a connection's read buffer (what asyncio's transports read at most per call).
READ_BUFFER_BYTES = 256 * 1024
# Bytes waiting in a socket's send buffer above which nothing new is handed to it.
WRITE_BUFFER_LIMIT = 8 * 1024 * 1024
# Largest answer accepted from a broker (Metadata of a very large cluster fits).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class _Exchange:
    """A request sent outside the engine (SASL), answered through a future."""

    __slots__ = ("response_cls", "version", "future")

    def __init__(self, response_cls, version: int, future: asyncio.Future) -> None:
        self.response_cls = response_cls
        self.version = version
        self.future = future


class BrokerConnection(asyncio.BufferedProtocol):
    """The socket to one broker node, driven by its owner's event loop."""

    def __init__(self, owner: "BrokerProducer", node: int, host: str, port: int) -> None:
        self.owner = owner
        self.node = node
        self.host = host
        self.port = port
        self.closed = False
        self._ending = False   # the socket ended; _run is about to report it
        self._answered = False  # a whole answer frame has arrived on this connection
        self._transport: asyncio.Transport | None = None
        # The reason the connection ended, set once by data_received (a bad
        # answer) or connection_lost; _run waits for it.
        self._end: asyncio.Future = asyncio.get_running_loop().create_future()
        self._blocked = False   # over WRITE_BUFFER_LIMIT: the engine was told not to write
        self._rbuf: memoryview | None = None   # the read buffer, made at the first read
        self._pending: deque[tuple[int, Any]] = deque()
        # acks=0 Produce requests: a Kafka broker never answers them, some
        # brokers (Tansu) do; such an answer is recognised and dropped.
        self._unanswered: deque[int] = deque()
        self._corr = 0
        self._frames = FrameReader(MAX_RESPONSE_BYTES)
        self._client_id = owner.kafka.client_id
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"kafkad-broker-{node}")
        self._auth_task: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<BrokerConnection node={self.node} {self.host}:{self.port} pending={len(self._pending)}>"

    @property
    def is_open(self) -> bool:
        """Connected and not closed: requests can be written now."""
        return self._transport is not None and not self.closed

    # ------------------------------------------------------------------ writing

    def send(self, req: "Request") -> None:
        """Write one engine request (the engine already counts it as in flight)."""
        corr = self._next_corr()
        values = req.produce_values
        if values is not None:  # a Produce request, as plain values: one join, no objects
            data = produce_request(req.version, corr, self._client_id, *values)
        else:
            data = encode_request(req.msg, req.version, corr, self._client_id)
        if req.expects_response:
            self._pending.append((corr, req))
        else:
            self._unanswered.append(corr)
            if len(self._unanswered) > 4096:
                self._unanswered.popleft()
        transport = self._transport
        transport.write(data)
        if not self._blocked and transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            # Past asyncio's high-water mark as well, so resume_writing follows
            # once the buffer is down to its low-water mark.
            self._blocked = True
            self.owner.engine.set_writable(self.node, False)

    def pause_writing(self) -> None:
        """asyncio's high-water mark (64 KiB) passed: nothing to do below WRITE_BUFFER_LIMIT."""

    def resume_writing(self) -> None:
        """The send buffer is down to asyncio's low-water mark: let the engine write again."""
        if self._blocked:
            self._blocked = False
            if not self.closed:
                self.owner.engine.set_writable(self.node, True)
                self.owner.wake()

    async def exchange(self, msg, version: int):
        """Send `msg` outside the engine and await its answer (used by SASL)."""
        if self.closed or self._transport is None:
            raise ConnectionError(f"connection to broker {self.node} is closed")
        corr = self._next_corr()
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((corr, _Exchange(RESPONSE_FOR[type(msg)], version, fut)))
        self._transport.write(encode_request(msg, version, corr, self._client_id))
        return await asyncio.wait_for(fut, self.owner.kafka.request_timeout_ms / 1000.0)

    def _next_corr(self) -> int:
        self._corr = (self._corr + 1) & 0x7FFFFFFF
        return self._corr

    # ------------------------------------------------------------------ life cycle

    def start_auth(self) -> None:
        self._auth_task = asyncio.get_running_loop().create_task(
            self._authenticate(), name=f"kafkad-sasl-{self.node}")

    async def _authenticate(self) -> None:
        from kafkad.broker import security

        engine = self.owner.engine
        try:
            await security.authenticate(self.exchange, self.owner.kafka, engine.versions(self.node))
        except asyncio.CancelledError:
            raise
        except security.AuthenticationError as exc:
            if not self.closed:
                self.owner.conn_event(self, "auth_failed", str(exc), exc.errno)
            return
        except security.SecurityConfigError as exc:
            # e.g. the password file is unreadable: no login is possible
            if not self.closed:
                self.owner.conn_event(self, "auth_failed", str(exc),
                                      security.SASL_AUTHENTICATION_FAILED)
            return
        except (OSError, asyncio.TimeoutError, ProtocolError, ValueError) as exc:
            if not self.closed and not self._ending:   # else _run reports the lost connection
                self.owner.conn_event(self, "auth_failed", f"{type(exc).__name__}: {exc}", 0)
            return
        if not self.closed:
            self.owner.conn_event(self, "authenticated", "")

    async def _run(self) -> None:
        owner = self.owner
        try:
            ctx = owner.ssl_context
            timeout = owner.kafka.connect_timeout_ms / 1000.0
            transport, _ = await asyncio.wait_for(
                owner.loop.create_connection(lambda: self, self.host, self.port, ssl=ctx,
                                             server_hostname=self.host if ctx else None),
                timeout)
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            if not self.closed:
                owner.conn_event(self, "connect_failed", owner.describe_connect_error(self, exc),
                                 owner.connect_error_code(exc))
            return
        if self.closed:
            transport.close()
            return
        self._transport = transport
        owner.conn_event(self, "connected", "")
        try:
            reason = await self._end
        finally:
            transport.close()
        self._ending = True
        self._fail_exchanges(reason)
        auth = self._auth_task
        if auth is not None and not auth.done():
            # A broker refusing a login answers, then closes: the refusal (with
            # its error code) is the news, not the end of the stream after it.
            # The SASL task has its answer or the ConnectionError by now.
            await asyncio.wait([auth])
        error = 0
        if owner.ssl_context is not None and not self._answered:
            # Under TLS 1.3 a broker refusing our client certificate (or wanting
            # one) says so only after our side of the handshake has finished:
            # we see the connection end before any answer. Name that cause.
            # The code is that of a refused TLS handshake (connect_error_code).
            from kafkad.broker.security import SASL_AUTHENTICATION_FAILED, describe_early_close

            early = describe_early_close(f"{self.host}:{self.port}", owner.kafka)
            reason = early if reason == "closed by the broker" else f"{early} ({reason})"
            error = SASL_AUTHENTICATION_FAILED
        if not self.closed:
            self.closed = True
            owner.conn_event(self, "disconnected", reason, error)

    # ------------------------------------------------------------------ the protocol

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._rbuf is None:
            self._rbuf = memoryview(bytearray(READ_BUFFER_BYTES))
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._rbuf[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Bytes from the broker: whole answers go to the engine, their outcomes out, then a poll."""
        if self._end.done():
            return          # a bad answer already ended this connection
        try:
            frames = self._frames.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if not frames or self.closed:
            return
        self._answered = True
        owner = self.owner
        # The answers, then the poll they call for (if it has work: see
        # BrokerProducer.answers_read), in this loop turn. Not after a failure:
        # _run must report the lost connection before the next poll writes
        # anything, so that poll runs in a later turn, as it used to.
        owner.hold_polls()
        ok = False
        try:
            now = owner.loop.time()
            try:
                self._dispatch(frames, now)
                ok = True
            except Exception as exc:  # noqa: BLE001 - every failure ends this connection
                self._fail(exc)
            if ok:
                owner.answers_read(now)     # their outcomes, and a poll if one has work
        finally:
            owner.release_polls(poll=ok)

    def _fail(self, exc: Exception) -> None:
        if not isinstance(exc, (OSError, ProtocolError, ssl.SSLError)):
            log.error("broker %s: unexpected error on the connection", self.node, exc_info=exc)
        self._ended(f"{type(exc).__name__}: {exc}")
        if self._transport is not None:
            self._transport.close()

    def eof_received(self) -> None:
        return None         # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended("closed by the broker" if exc is None else f"{type(exc).__name__}: {exc}")

    def _ended(self, reason: str) -> None:
        if not self._end.done():
            self._end.set_result(reason)

    def _dispatch(self, frames: list[bytes], now: float) -> None:
        """Hand each answer to its request's owner, checking the correlation ids' order.

        Runs in `data_received`: nothing of the answered requests survives
        the callback (a local still naming the last Produce request would
        keep its records, batches, submissions, payloads and the encoded
        batch, alive until the connection's next answer, which on an idle
        connection is never).
        """
        engine = self.owner.engine
        pending = self._pending
        for frame in frames:
            corr = peek_correlation_id(frame)
            if self._unanswered and not (pending and pending[0][0] == corr):
                if corr in self._unanswered:
                    # an answer to an acks=0 request: drop it and those sent before it
                    while self._unanswered.popleft() != corr:
                        pass
                    continue
            if not pending or pending[0][0] != corr:
                expected = pending[0][0] if pending else None
                raise ProtocolError(f"answer with correlation id {corr}, expected {expected}")
            _, req = pending.popleft()
            if isinstance(req, _Exchange):
                if not req.future.done():
                    req.future.set_result(decode_response(req.response_cls, req.version, frame)[1])
                continue
            engine.answer(req, frame, now)

    def _fail_exchanges(self, reason: str) -> None:
        for _, req in self._pending:
            if isinstance(req, _Exchange) and not req.future.done():
                req.future.set_exception(ConnectionError(reason))
        self._pending.clear()

    def close(self) -> None:
        """Close at the engine's request (the engine already settled what was in flight)."""
        self.closed = True
        self._fail_exchanges("closed")
        if self._transport is not None:
            self._transport.close()
        for task in (self._task, self._auth_task):
            if task is not None and not task.done():
                task.cancel()

    async def wait_closed(self) -> None:
        for task in (self._task, self._auth_task):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

"""One broker connection: an asyncio stream, its frames and its correlation ids.

A `BrokerConnection` is created when the engine asks for a connection to a
node and lives until the socket closes or the engine asks to close it. It
writes requests in the order the engine hands them over, reads whole frames
with `FrameReader`, checks that each answer's correlation id is the oldest one
outstanding (Kafka answers in order on a connection) and hands the decoded
answer to the engine. It also runs the SASL exchange when the engine asks for
it. Everything it learns goes to its owner (`BrokerProducer`) as calls; it
keeps no producer state of its own.
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

if TYPE_CHECKING:
    from kafkad.broker import BrokerProducer
    from kafkad.engine.engine import Request

log = logging.getLogger("kafkad.broker")

_READ_CHUNK = 256 * 1024
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


class BrokerConnection:
    """The socket to one broker node, driven by its owner's event loop."""

    def __init__(self, owner: "BrokerProducer", node: int, host: str, port: int) -> None:
        self.owner = owner
        self.node = node
        self.host = host
        self.port = port
        self.closed = False
        self._ending = False   # the socket ended; _run is about to report it
        self._answered = False  # a whole answer frame has arrived on this connection
        self._writer: asyncio.StreamWriter | None = None
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
        self._drain_task: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<BrokerConnection node={self.node} {self.host}:{self.port} pending={len(self._pending)}>"

    @property
    def is_open(self) -> bool:
        """Connected and not closed: requests can be written now."""
        return self._writer is not None and not self.closed

    # ------------------------------------------------------------------ writing

    def send(self, req: "Request") -> None:
        """Write one engine request (the engine already counts it as in flight)."""
        corr = self._next_corr()
        data = encode_request(req.msg, req.version, corr, self._client_id)
        if req.expects_response:
            self._pending.append((corr, req))
        else:
            self._unanswered.append(corr)
            if len(self._unanswered) > 4096:
                self._unanswered.popleft()
        writer = self._writer
        writer.write(data)
        if (self._drain_task is None and writer.transport.get_write_buffer_size()
                > WRITE_BUFFER_LIMIT):
            self.owner.engine.set_writable(self.node, False)
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Wait for the send buffer to empty below asyncio's low-water mark, then resume."""
        try:
            await self._writer.drain()
        except (OSError, ConnectionError):
            return   # the read loop reports the lost connection
        finally:
            self._drain_task = None
        if not self.closed:
            self.owner.engine.set_writable(self.node, True)
            self.owner.wake()

    async def exchange(self, msg, version: int):
        """Send `msg` outside the engine and await its answer (used by SASL)."""
        if self.closed or self._writer is None:
            raise ConnectionError(f"connection to broker {self.node} is closed")
        corr = self._next_corr()
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((corr, _Exchange(RESPONSE_FOR[type(msg)], version, fut)))
        self._writer.write(encode_request(msg, version, corr, self._client_id))
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
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=ctx,
                                        server_hostname=self.host if ctx else None,
                                        limit=_READ_CHUNK),
                timeout)
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            if not self.closed:
                owner.conn_event(self, "connect_failed", owner.describe_connect_error(self, exc),
                                 owner.connect_error_code(exc))
            return
        if self.closed:
            writer.close()
            return
        self._writer = writer
        owner.conn_event(self, "connected", "")
        try:
            await self._read_loop(reader)
            reason = "closed by the broker"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure ends this connection
            reason = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, (OSError, ProtocolError, ssl.SSLError)):
                log.exception("broker %s: unexpected error on the connection", self.node)
        finally:
            writer.close()
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

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        owner = self.owner
        while True:
            data = await reader.read(_READ_CHUNK)
            if not data:
                return
            frames = self._frames.feed(data)
            if frames and not self.closed:
                self._answered = True
                self._dispatch(frames, owner.loop.time())
                owner.wake()
            # This frame waits in read() next, maybe for good: keep nothing of this read.
            data = frames = None

    def _dispatch(self, frames: list[bytes], now: float) -> None:
        """Hand each answer to its request's owner, checking the correlation ids' order.

        A method of its own so that nothing of the answered requests survives
        in the read loop's frame while it waits for the next bytes: a local
        still naming the last Produce request would keep its records (batches,
        submissions, payloads and the encoded batch) alive until the
        connection's next answer, which on an idle connection is never.
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
            engine.response(req, engine.decode(req, frame), now)

    def _fail_exchanges(self, reason: str) -> None:
        for _, req in self._pending:
            if isinstance(req, _Exchange) and not req.future.done():
                req.future.set_exception(ConnectionError(reason))
        self._pending.clear()

    def close(self) -> None:
        """Close at the engine's request (the engine already settled what was in flight)."""
        self.closed = True
        self._fail_exchanges("closed")
        if self._writer is not None:
            self._writer.close()
        for task in (self._task, self._auth_task, self._drain_task):
            if task is not None and not task.done():
                task.cancel()

    async def wait_closed(self) -> None:
        for task in (self._task, self._auth_task):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

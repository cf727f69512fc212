"""A TLS-terminating TCP proxy for tests: TLS outside, plain TCP to the broker behind it.

The Tansu build used by the tests serves no TLS, so TLS tests put this proxy
in front of it and start Tansu with ``advertised_port`` set to the proxy's
port: every connection a client opens (bootstrap and leaders alike) goes
through the proxy.

The proxy runs its own asyncio loop in a background thread (`LoopServer`,
shared with `tests.support.saslgateway`), so it serves synchronous clients
(librdkafka, kafka-python) and a test's own event loop alike. It only listens
on 127.0.0.1, on a free port unless one is given, and `stop()` closes every
connection it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading

from .net import free_port


class LoopServer:
    """An asyncio server running in a daemon thread; subclasses implement `handle`.

    `start()` returns once the listening socket is bound (or re-raises why it
    could not be); `stop()` closes the listener, cancels every connection
    task and joins the thread. Usable as a context manager.
    """

    host = "127.0.0.1"

    def __init__(self, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port(self.host)
        self._ssl = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        #: Connections whose handler ran (after the TLS handshake, if any).
        self.connections = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise TypeError(f"{type(self).__name__} must implement handle()")

    def start(self):
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}:{self.port}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._track, self.host, self.port, ssl=self._ssl,
                                                ssl_handshake_timeout=5 if self._ssl else None)
        except BaseException as exc:  # handed to start()'s caller
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the peer went away: nothing to serve any more
        except asyncio.CancelledError:
            # stop() cancels live connections. Ending normally keeps asyncio's
            # stream callback from logging the cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes from reader to writer until EOF (everything read is written and drained)."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy both ways between two connections until one side closes.

    Kafka clients never half-close, and TLS streams cannot: when either side
    is done the caller closes both, the way a broker's socket would close.
    """
    tasks = [asyncio.ensure_future(pipe(a[0], b[1])), asyncio.ensure_future(pipe(b[0], a[1]))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()  # a copy that failed raises here; EOF returns None
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def server_ssl_context(cert_file: str, key_file: str, *,
                       client_ca_file: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context; with `client_ca_file`, clients must present a certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca_file)
    return ctx


class TlsProxy(LoopServer):
    """TLS on 127.0.0.1:`port`, forwarded as plain TCP to `upstream` ("host:port").

    >>> with TlsProxy("127.0.0.1:9092", pki.server_cert, pki.server_key) as proxy:
    ...     ...  # clients connect to proxy.address with TLS
    """

    def __init__(self, upstream: str, cert_file: str, key_file: str, *,
                 client_ca_file: str | None = None, port: int = 0) -> None:
        host, _, uport = upstream.rpartition(":")
        if not host or not uport.isdigit():
            raise ValueError(f"upstream must be 'host:port', not {upstream!r}")
        self.upstream = (host, int(uport))
        self.requires_client_cert = bool(client_ca_file)
        super().__init__(port, server_ssl_context(cert_file, key_file,
                                                  client_ca_file=client_ca_file))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            await splice((reader, writer), (up_reader, up_writer))
        finally:
            up_writer.close()

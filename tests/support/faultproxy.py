"""A controllable TCP proxy in front of a Kafka broker, for fault-injection tests.

The proxy listens on a free port of 127.0.0.1 and forwards every connection to
the broker. Its asyncio loop runs in a background thread, so a test drives it
with plain method calls while the client and the daemon under test keep
running:

    with FaultProxy("127.0.0.1", tansu_port) as proxy:
        ...                       # pass-through
        proxy.cut()               # abort every open connection now
        proxy.refuse(5.0)         # close new connections on accept for 5 s
        proxy.blackhole()         # accept and read, never answer
        proxy.hold_responses(3.0) # the broker's answers reach the client 3 s late
        proxy.lose_responses(1)   # the next Produce is written, its answer never comes
        proxy.set_latency(0.05)   # 50 ms each way
        proxy.heal()              # back to plain pass-through
        proxy.stats()             # requests per api key, records per Produce batch

`hold_responses` delays every answer, the handshake of a reconnecting client
included, so a client cannot retry until the hold is lifted. `lose_responses`
is the sharper tool for "the broker wrote the batch but the answer was lost":
the connection that carried the next Produce request forwards nothing from
that request's response on (the broker still wrote it), the client times
out, reconnects through a healthy proxy and retries the same batch.

The broker must advertise the proxy's address, or clients would bypass the
proxy after their first Metadata answer: `Tansu(advertised_port=proxy.port)`.
The proxy port is reserved before the broker starts (`FaultProxy.reserve()`
binds the listening socket at once), so the broker can be told about it.

Traffic accounting: the client-to-broker stream is parsed frame by frame
(4-byte size, then the request header: api_key, api_version, correlation_id,
client_id). For Produce requests the body is walked to every RecordBatch and
the record count is read from the v2 batch header, so benchmarks can report
how well a producer batches. Parsing is observation only: bytes are forwarded
unchanged whether or not they parse, and a frame the proxy cannot understand
is counted under `unparsed_produce`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

PRODUCE = 0

# --- RecordBatch v2 header, byte offsets from the start of the batch ----------
# baseOffset int64 @0, batchLength int32 @8 (bytes after this field),
# partitionLeaderEpoch int32 @12, magic int8 @16, crc uint32 @17,
# attributes int16 @21, lastOffsetDelta int32 @23, baseTimestamp int64 @27,
# maxTimestamp int64 @35, producerId int64 @43, producerEpoch int16 @51,
# baseSequence int32 @53, recordsCount int32 @57, first record @61.
_BATCH_LENGTH_AT = 8
_MAGIC_AT = 16
_PRODUCER_ID_AT = 43
_BASE_SEQUENCE_AT = 53
_RECORDS_COUNT_AT = 57
_BATCH_HEADER_LEN = 61
_LOG_OVERHEAD = 12  # baseOffset + batchLength: not counted by batchLength

# Produce is flexible (compact strings/arrays, tagged fields) from v9 on and
# names topics by UUID instead of by name from v13 on (KIP-516).
_PRODUCE_FIRST_FLEXIBLE = 9
_PRODUCE_FIRST_TOPIC_ID = 13


class _Truncated(Exception):
    """The frame ended before the field being read."""


class _Reader:
    """Just enough of the Kafka primitive types to walk a Produce request."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0):
        self.buf = buf
        self.pos = pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Truncated
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise _Truncated

    def nullable_string(self) -> None:
        n = self.int16()
        if n > 0:
            self.take(n)

    def compact_nullable(self) -> int:
        """Skip a compact string/bytes (length + 1 as uvarint); return its length or -1."""
        n = self.uvarint() - 1
        if n > 0:
            self.take(n)
        return n

    def tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()              # tag
            self.take(self.uvarint())   # size-prefixed value


@dataclass(frozen=True)
class BatchSeen:
    """One RecordBatch observed inside a Produce request."""

    api_version: int
    records: int
    producer_id: int
    base_sequence: int


def parse_request_header(frame: bytes) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id) of a request frame (size prefix removed)."""
    if len(frame) < 8:
        raise ValueError(f"request frame of {len(frame)} bytes is shorter than its header")
    return struct.unpack_from(">hhi", frame, 0)


def record_batches(records: bytes) -> list[tuple[int, int, int]]:
    """(records_count, producer_id, base_sequence) of each v2 batch in a `records` field.

    A `records` field may hold several batches back to back; each occupies
    12 + batchLength bytes. Batches of an older magic are reported with -1
    counts (this proxy only reads the v2 layout).
    """
    out = []
    pos = 0
    while pos + _BATCH_HEADER_LEN <= len(records):
        (length,) = struct.unpack_from(">i", records, pos + _BATCH_LENGTH_AT)
        magic = records[pos + _MAGIC_AT]
        if magic != 2:
            out.append((-1, -1, -1))
        else:
            (pid,) = struct.unpack_from(">q", records, pos + _PRODUCER_ID_AT)
            (seq,) = struct.unpack_from(">i", records, pos + _BASE_SEQUENCE_AT)
            (count,) = struct.unpack_from(">i", records, pos + _RECORDS_COUNT_AT)
            out.append((count, pid, seq))
        if length <= 0:
            break
        pos += _LOG_OVERHEAD + length
    return out


def produce_batches(frame: bytes) -> list[BatchSeen]:
    """Every RecordBatch of a Produce request frame (size prefix removed), v3 and up.

    Raises ValueError when the frame is not a Produce request or is truncated.
    """
    api_key, version, _ = parse_request_header(frame)
    if api_key != PRODUCE:
        raise ValueError(f"api_key {api_key} is not Produce")
    flexible = version >= _PRODUCE_FIRST_FLEXIBLE
    r = _Reader(frame, 8)
    try:
        r.nullable_string()               # client_id: never compact in the header
        if flexible:
            r.tagged_fields()             # request header v2
            r.compact_nullable()          # transactional_id
        elif version >= 3:
            r.nullable_string()
        r.int16()                         # acks
        r.int32()                         # timeout_ms
        seen = []
        topics = r.uvarint() - 1 if flexible else r.int32()
        for _ in range(max(topics, 0)):
            if version >= _PRODUCE_FIRST_TOPIC_ID:
                r.take(16)                # topic_id
            elif flexible:
                r.compact_nullable()      # name
            else:
                r.nullable_string()
            parts = r.uvarint() - 1 if flexible else r.int32()
            for _ in range(max(parts, 0)):
                r.int32()                 # partition index
                if flexible:
                    n = r.uvarint() - 1
                else:
                    n = r.int32()
                if n > 0:
                    for count, pid, seq in record_batches(r.take(n)):
                        seen.append(BatchSeen(version, count, pid, seq))
                if flexible:
                    r.tagged_fields()
            if flexible:
                r.tagged_fields()
        return seen
    except (_Truncated, struct.error) as exc:
        raise ValueError(f"Produce v{version} request truncated at byte {r.pos}") from exc


@dataclass
class ProxyStats:
    """A snapshot of what went through the proxy (see `FaultProxy.stats`)."""

    connections: int = 0
    refused: int = 0
    cut: int = 0
    requests: dict[int, int] = field(default_factory=dict)        # api_key -> count
    versions: dict[int, set[int]] = field(default_factory=dict)   # api_key -> versions seen
    batches: list[BatchSeen] = field(default_factory=list)
    unparsed_produce: int = 0
    lost_responses: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    @property
    def produce_requests(self) -> int:
        return self.requests.get(PRODUCE, 0)

    @property
    def records(self) -> int:
        return sum(b.records for b in self.batches if b.records > 0)

    def records_per_batch(self) -> float:
        return self.records / len(self.batches) if self.batches else 0.0


class _Direction:
    """One half of a connection: reads, optionally delays, writes in order."""

    def __init__(self, conn: "_Connection", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, upstream: bool):
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.upstream = upstream
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump(self) -> None:
        proxy = self.conn.proxy
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                if self.upstream:
                    proxy._account_up(self.conn, data)
                else:
                    proxy._stats.bytes_down += len(data)
                    data = self.conn.filter_down(data)
                if self.conn.blackholed or not data:
                    continue
                delay = proxy._delay(upstream=self.upstream)
                self.queue.put_nowait((time.monotonic() + delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            self.queue.put_nowait((0.0, b""))

    async def deliver(self) -> None:
        try:
            while True:
                due, data = await self.queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.writer.write(data)
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.conn.close()


class _Connection:
    def __init__(self, proxy: "FaultProxy", client_r, client_w):
        self.proxy = proxy
        self.client_r = client_r
        self.client_w = client_w
        self.broker_w: asyncio.StreamWriter | None = None
        self.blackholed = False
        self.up_buf = bytearray()
        self.down_pending = b""          # start of a response header split across reads
        self.down_remaining = 0          # bytes of the current response still to pass
        self.lose_ids: set[int] = set()  # correlation ids whose answer must be lost
        self.frozen = False              # an answer was lost: nothing more goes to the client
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    def filter_down(self, data: bytes) -> bytes:
        """Pass whole responses until one whose answer must be lost; from it on pass nothing."""
        if self.frozen:
            return b""
        buf = self.down_pending + data if self.down_pending else data
        out = []
        i = 0
        n = len(buf)
        while i < n:
            if self.down_remaining:
                take = min(self.down_remaining, n - i)
                out.append(buf[i:i + take])
                self.down_remaining -= take
                i += take
                continue
            if n - i < 8:     # size + correlation id not complete yet
                break
            size, corr = struct.unpack_from(">ii", buf, i)
            if corr in self.lose_ids:
                self.frozen = True
                self.proxy._stats.lost_responses += 1
                i = n
                break
            self.down_remaining = 4 + size
        self.down_pending = bytes(buf[i:]) if not self.frozen else b""
        return b"".join(out)

    async def run(self) -> None:
        proxy = self.proxy
        if proxy._mode == "blackhole":
            self.blackholed = True
            # Read and discard until the client gives up or the proxy heals/cuts.
            d = _Direction(self, self.client_r, self.client_w, upstream=True)
            await d.pump()
            self.close()
            return
        try:
            broker_r, self.broker_w = await asyncio.open_connection(proxy.target_host, proxy.target_port)
        except OSError:
            self.close()
            return
        up = _Direction(self, self.client_r, self.broker_w, upstream=True)
        down = _Direction(self, broker_r, self.client_w, upstream=False)
        self.tasks = [asyncio.ensure_future(t) for t in (up.pump(), up.deliver(), down.pump(), down.deliver())]
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.client_w, self.broker_w):
            if w is None:
                continue
            if abort:
                w.transport.abort()
            else:
                w.close()
        for t in self.tasks:
            t.cancel()
        self.proxy._conns.discard(self)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of `target_host:target_port`; see the module docstring."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 0, *, port: int = 0):
        self.target_host = target_host
        self.target_port = target_port
        self._listen_sock: socket.socket | None = None
        self.port = port
        self._mode = "pass"          # pass | refuse | blackhole
        self._refuse_until = 0.0
        self._up_delay = 0.0
        self._down_delay = 0.0
        self._hold = 0.0
        self._lose_budget = 0
        self._conns: set[_Connection] = set()
        self._stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    # --- life cycle -----------------------------------------------------------

    def reserve(self) -> int:
        """Bind the listening socket now and return its port (before the broker exists)."""
        if self._listen_sock is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(128)
            self._listen_sock = s
            self.port = s.getsockname()[1]
        return self.port

    def start(self) -> "FaultProxy":
        if not self.target_port:
            raise ValueError("target_port: the broker's port must be set before start()")
        self.reserve()
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._accept, sock=self._listen_sock))
            except BaseException as exc:  # reported to the caller of start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError(f"fault proxy could not listen on 127.0.0.1:{self.port}") from failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            async def shutdown() -> None:
                if self._server is not None:
                    self._server.close()
                for c in list(self._conns):
                    c.close(abort=True)
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        if self._listen_sock is not None:
            self._listen_sock.close()
        self._loop = self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- faults (callable from any thread) -------------------------------------

    def _call(self, fn, *args):
        """Run fn(*args) on the proxy's loop and wait for it, so a fault is in place on return."""
        if self._loop is None:
            raise RuntimeError("the fault proxy is not running: call start() first")

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def heal(self) -> None:
        """Plain pass-through again: no refusal, no delay; blackholed connections are aborted."""
        def do():
            self._mode = "pass"
            self._refuse_until = 0.0
            self._up_delay = self._down_delay = self._hold = 0.0
            self._lose_budget = 0
            for c in list(self._conns):
                if c.blackholed:
                    c.close(abort=True)
        self._call(do)

    def cut(self) -> int:
        """Abort (RST) every open connection now; returns how many were cut."""
        def do():
            conns = list(self._conns)
            for c in conns:
                c.close(abort=True)
            self._stats.cut += len(conns)
            return len(conns)
        return self._call(do)

    def refuse(self, seconds: float | None = None) -> None:
        """Close every new connection on accept, for `seconds` (None: until heal())."""
        if seconds is not None and seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")

        def do():
            self._mode = "refuse"
            self._refuse_until = float("inf") if seconds is None else time.monotonic() + seconds
        self._call(do)

    def blackhole(self) -> None:
        """New and open connections: read what the client sends, never forward or answer."""
        def do():
            self._mode = "blackhole"
            for c in self._conns:
                c.blackholed = True
        self._call(do)

    def hold_responses(self, seconds: float) -> None:
        """Every broker answer read from now on reaches the client `seconds` late.

        The broker has already acted on the request (the batch is written), so
        a client with a shorter request timeout sees a lost response.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")

        def do():
            self._hold = seconds
        self._call(do)

    def lose_responses(self, count: int = 1) -> None:
        """Lose `count` Produce answers, one per connection: the broker writes, the client never hears.

        The connection that carried such a request goes silent from that
        answer on (later answers on it would be out of order anyway), so the
        client's request times out; the next Produce on a new connection is
        the next one to lose, until `count` were lost. A Produce with acks=0
        has no answer: it still uses up one of the `count`.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")

        def do():
            self._lose_budget = count
        self._call(do)

    def set_latency(self, seconds: float, *, up: bool = True, down: bool = True) -> None:
        """Delay every chunk by `seconds` in the chosen directions (order is kept)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")

        def do():
            if up:
                self._up_delay = seconds
            if down:
                self._down_delay = seconds
        self._call(do)

    def stats(self) -> ProxyStats:
        """A copy of the counters, taken on the proxy's loop."""
        def do():
            s = self._stats
            return ProxyStats(s.connections, s.refused, s.cut, dict(s.requests),
                              {k: set(v) for k, v in s.versions.items()}, list(s.batches),
                              s.unparsed_produce, s.lost_responses, s.bytes_up, s.bytes_down)
        return self._call(do)

    def reset_stats(self) -> None:
        def do():
            self._stats = ProxyStats()
        self._call(do)

    @property
    def open_connections(self) -> int:
        return self._call(lambda: len(self._conns))

    # --- loop side ----------------------------------------------------------

    def _delay(self, upstream: bool) -> float:
        return self._up_delay if upstream else self._down_delay + self._hold

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == "refuse":
            if time.monotonic() < self._refuse_until:
                self._stats.refused += 1
                writer.transport.abort()
                return
            self._mode = "pass"
        self._stats.connections += 1
        conn = _Connection(self, reader, writer)
        self._conns.add(conn)
        try:
            await conn.run()
        except asyncio.CancelledError:
            # stop(): the connection is aborted below; end the handler quietly
            # (asyncio logs a handler task that ends cancelled as an error).
            pass
        finally:
            conn.close()

    def _account_up(self, conn: _Connection, data: bytes) -> None:
        """Split the client's stream into request frames and count them."""
        s = self._stats
        s.bytes_up += len(data)
        buf = conn.up_buf
        buf += data
        while len(buf) >= 4:
            (size,) = struct.unpack_from(">i", buf, 0)
            if size < 0 or len(buf) < 4 + size:
                if size < 0:
                    buf.clear()   # not Kafka framing: stop parsing this stream
                break
            frame = bytes(buf[4:4 + size])
            del buf[:4 + size]
            if size < 8:
                continue
            api_key, version, corr = parse_request_header(frame)
            s.requests[api_key] = s.requests.get(api_key, 0) + 1
            if api_key == PRODUCE and self._lose_budget > 0 and not conn.lose_ids:
                self._lose_budget -= 1
                conn.lose_ids.add(corr)
            s.versions.setdefault(api_key, set()).add(version)
            if api_key == PRODUCE:
                try:
                    s.batches.extend(produce_batches(frame))
                except ValueError:
                    s.unparsed_produce += 1


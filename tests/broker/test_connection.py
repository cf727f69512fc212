"""BrokerConnection on its own, against a plain asyncio server: back-pressure, answers, the end.

The connection is driven by a stand-in owner that records what the
connection tells it (the same calls `BrokerProducer` receives), so these
tests see the connection's own behaviour: the socket is real.
"""

from __future__ import annotations

import asyncio

import pytest

import kafkad.broker.connection as connection
from kafkad.broker.connection import BrokerConnection
from kafkad.config import KafkaConfig
from kafkad.engine.connections import Request
from kafkad.protocol import ApiVersionsRequest, ApiVersionsResponse, encode_response


class _Engine:
    def __init__(self):
        self.writable: list[tuple[int, bool]] = []
        self.answers: list = []

    def set_writable(self, node, flag):
        self.writable.append((node, flag))

    def decode(self, req, frame):
        from kafkad.protocol import decode_response
        return decode_response(req.response_cls, req.version, frame)[1]

    def response(self, req, msg, now):
        self.answers.append((req, msg))

    def answer(self, req, frame, now):
        self.response(req, self.decode(req, frame), now)


class _Owner:
    """What BrokerConnection calls on BrokerProducer, recorded."""

    def __init__(self):
        self.kafka = KafkaConfig(bootstrap_servers=("127.0.0.1:9",))
        self.ssl_context = None
        self.loop = asyncio.get_running_loop()
        self.engine = _Engine()
        self.events: list[tuple[str, str]] = []
        self.wakes = 0
        self.polls = 0
        self.held = 0
        self.reports: list[tuple[int, int]] = []   # (answers seen, polls held) at answers_read

    def conn_event(self, conn, what, reason, error=0):
        self.events.append((what, reason))

    def wake(self):
        self.wakes += 1

    def hold_polls(self):
        self.held += 1

    def answers_read(self, now):
        self.reports.append((len(self.engine.answers), self.held))
        self.wake()

    def release_polls(self, poll=True):
        self.held -= 1
        if poll:
            self.polls += 1

    def describe_connect_error(self, conn, exc):
        return str(exc)

    def connect_error_code(self, exc):
        return 0


async def _until(pred, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def _request(node=1):
    return Request(node, ApiVersionsRequest(client_software_name="t", client_software_version="1"),
                   3, ApiVersionsResponse, 0.0)


def test_a_full_send_buffer_stops_the_engine_writing_until_it_drains(monkeypatch):
    monkeypatch.setattr(connection, "WRITE_BUFFER_LIMIT", 256 * 1024)

    async def main():
        reading = asyncio.Event()
        got = 0

        async def serve(reader, writer):
            nonlocal got
            await reading.wait()
            while data := await reader.read(1 << 20):
                got += len(data)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        owner = _Owner()
        conn = BrokerConnection(owner, 1, "127.0.0.1", port)
        await _until(lambda: conn.is_open)
        assert owner.events == [("connected", "")]
        # The peer does not read: the kernel buffers fill, then asyncio's buffer grows.
        sent = 0
        while not owner.engine.writable:
            conn.send(_request())
            sent += 1
            assert sent < 200_000
        assert owner.engine.writable == [(1, False)]
        reading.set()
        await _until(lambda: len(owner.engine.writable) == 2, timeout=20)
        assert owner.engine.writable == [(1, False), (1, True)]
        assert owner.wakes >= 1
        conn.close()
        await conn.wait_closed()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_answers_reach_the_engine_in_data_received_then_one_poll():
    async def main():
        async def serve(reader, writer):
            # read two requests, answer both in one write
            frames = []
            for _ in range(2):
                size = int.from_bytes(await reader.readexactly(4), "big")
                body = await reader.readexactly(size)
                frames.append(int.from_bytes(body[4:8], "big"))
            writer.write(b"".join(encode_response(ApiVersionsResponse(), 0, c) for c in frames))
            await writer.drain()
            await reader.read()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        owner = _Owner()
        conn = BrokerConnection(owner, 1, "127.0.0.1", port)
        await _until(lambda: conn.is_open)
        reqs = [Request(1, ApiVersionsRequest(), 0, ApiVersionsResponse, 0.0) for _ in range(2)]
        for r in reqs:
            conn.send(r)
        await _until(lambda: len(owner.engine.answers) == 2)
        assert [r for r, _ in owner.engine.answers] == reqs
        assert owner.held == 0 and owner.polls >= 1
        # what the answers settled is reported once they are all in, inside the
        # held burst (before its poll)
        assert owner.reports[-1] == (2, 1)
        conn.close()
        await conn.wait_closed()
        assert owner.events == [("connected", "")]   # closed by us: nothing reported
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("answer", [b"eof", b"bad-corr"])
def test_the_end_of_the_connection_is_reported_once_and_a_bad_answer_does_not_poll(answer):
    async def main():
        async def serve(reader, writer):
            size = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(size)
            if answer == b"bad-corr":
                writer.write(encode_response(ApiVersionsResponse(), 0, 999_999))
                await writer.drain()
                await reader.read()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        owner = _Owner()
        conn = BrokerConnection(owner, 1, "127.0.0.1", port)
        await _until(lambda: conn.is_open)
        conn.send(_request())
        await _until(lambda: len(owner.events) == 2)
        what, reason = owner.events[1]
        assert what == "disconnected"
        if answer == b"eof":
            assert reason == "closed by the broker"
        else:
            assert "correlation id 999999" in reason
            assert owner.polls == 0 and owner.held == 0 and owner.reports == []
        assert conn.closed and not conn.is_open
        await conn.wait_closed()
        assert len(owner.events) == 2
        server.close()
        await server.wait_closed()

    asyncio.run(main())

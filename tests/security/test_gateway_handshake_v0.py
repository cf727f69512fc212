"""The gateway's pre-KIP-152 path: after SaslHandshake v0 the tokens travel unframed.

No client used in these tests speaks it (librdkafka and kafkad use
SaslAuthenticate), so it is exercised here with hand-driven frames.
"""

from __future__ import annotations

import socket
import struct

from kafkad.protocol import (
    MetadataRequest,
    MetadataResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
    decode_response,
    encode_request,
)
from kafkad.protocol.sasl import plain_initial_response
from tests.security.conftest import USERS


def _recv_frame(s: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the gateway")
            buf += chunk
        return buf
    return exactly(struct.unpack(">i", exactly(4))[0])


def _handshake_v0(stack, password: str) -> tuple[socket.socket, bytes | None]:
    host, port = stack.gateway.address.split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(encode_request(SaslHandshakeRequest(mechanism="PLAIN"), 0, 1, "raw"))
    _, hs = decode_response(SaslHandshakeResponse, 0, _recv_frame(s))
    assert hs.error_code == 0 and "PLAIN" in hs.mechanisms
    token = plain_initial_response("alice", password)
    s.sendall(struct.pack(">i", len(token)) + token)
    try:
        return s, _recv_frame(s)
    except ConnectionError:
        return s, None


def test_raw_tokens_after_handshake_v0_then_requests_pass(sasl_stack):
    s, reply = _handshake_v0(sasl_stack, USERS["alice"])
    with s:
        assert reply == b""  # PLAIN's empty server token, unframed
        s.sendall(encode_request(MetadataRequest(topics=None), 1, 2, "raw"))
        corr, meta = decode_response(MetadataResponse, 1, _recv_frame(s))
    assert corr == 2 and meta.brokers  # answered by Tansu behind the gateway


def test_bad_raw_token_after_handshake_v0_hangs_up(sasl_stack):
    s, reply = _handshake_v0(sasl_stack, "wrong")
    s.close()
    assert reply is None
    assert any("bad username or password" in f for f in sasl_stack.gateway.failures)

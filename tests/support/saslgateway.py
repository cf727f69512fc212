"""An in-test SASL gateway: a Kafka broker's SASL server side, in front of Tansu.

Neither the Tansu build nor the librdkafka mock cluster serves SASL, so SASL
tests put this gateway in front of Tansu (started with ``advertised_port`` =
the gateway's port, or the TLS proxy's port for SASL_SSL). Per connection it
behaves like a Kafka broker's SASL listener (KIP-43, KIP-152):

- ApiVersions (any time) is forwarded to Tansu, and the answer is patched to
  advertise SaslHandshake (17) v0-v1 and SaslAuthenticate (36) v0-v2.
- SaslHandshake v0/v1 picks the mechanism; an unknown one gets
  UNSUPPORTED_SASL_MECHANISM (33) with the enabled list, then the connection
  closes. After v1, the tokens come in SaslAuthenticate requests; after v0,
  as bare size-prefixed tokens (the pre-KIP-152 framing).
- SaslAuthenticate runs the server side of the mechanism. PLAIN compares the
  password; SCRAM-SHA-256/512 is checked as RFC 5802/7677 says: the server
  keeps only salt, iteration count, StoredKey and ServerKey; it recovers the
  ClientKey from the proof, hashes it, compares with StoredKey, and answers
  with the server signature. Bad credentials get SASL_AUTHENTICATION_FAILED
  (58), then the connection closes.
- Any other request before authentication closes the connection (as Kafka
  does); once authenticated, bytes flow to and from Tansu untouched.

Framing: the gateway is the *server* side, which needs request decoding and
response encoding. kafkad.protocol is the client side (``encode_request``,
``decode_response``), so the few server-side structures needed here (request
header v1/v2, the SaslHandshake/SaslAuthenticate request bodies and
responses, the ApiVersions response's api_keys array) are read and written
by the small helpers in this file, following the Kafka JSON schemas.

What happened is recorded for assertions: `authenticated` holds
(mechanism, username) per successful login, `failures` a reason per failed
one, `refused` the api keys of requests refused before authentication.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kafkad.protocol.sasl import parse_scram_attributes, saslname_unescape, scram_salted_password

from .tlsproxy import LoopServer, splice

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
# What the gateway answers itself: api_key -> (min, max) version.
GATEWAY_APIS = {SASL_HANDSHAKE: (0, 1), SASL_AUTHENTICATE: (0, 2)}

UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_VERSION = 35

SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512", "SCRAM-SHA-1": "sha1"}
MAX_FRAME = 1 << 20  # SASL-phase frames are tiny; anything bigger is a confused client


class AuthFailed(Exception):
    """The client's credentials or exchange are wrong; str() is the reason for the test log."""


# --- SCRAM and PLAIN, server side -----------------------------------------------------------


@dataclass(frozen=True)
class ScramCredential:
    """What a SCRAM server stores for a user (RFC 5802 section 3): never the password."""

    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def __repr__(self) -> str:
        return f"<ScramCredential {self.mechanism} i={self.iterations}>"


def make_scram_credential(mechanism: str, password: str, salt: bytes,
                          iterations: int = 4096) -> ScramCredential:
    digest = SCRAM_HASHES[mechanism]
    salted = scram_salted_password(mechanism, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    return ScramCredential(mechanism, salt, iterations,
                           hashlib.new(digest, client_key).digest(), server_key)


class PlainServer:
    """RFC 4616 on the server: one message, ``authzid NUL authcid NUL passwd``."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = users
        self.username: str | None = None

    def respond(self, token: bytes) -> tuple[bytes, bool]:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise AuthFailed("PLAIN message is not authzid NUL authcid NUL passwd")
        authzid, user_b, password_b = parts
        try:
            user, password = user_b.decode(), password_b.decode()
        except UnicodeDecodeError:
            raise AuthFailed("PLAIN message is not UTF-8") from None
        if authzid and authzid != user_b:
            raise AuthFailed("PLAIN authzid differs from the username")
        expected = self._users.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise AuthFailed(f"PLAIN: bad username or password for {user!r}")
        self.username = user
        return b"", True


class ScramServer:
    """The server side of one SCRAM exchange (two client messages)."""

    def __init__(self, mechanism: str, credentials: Mapping[str, ScramCredential],
                 server_nonce: str) -> None:
        self.mechanism = mechanism
        self._digest = SCRAM_HASHES[mechanism]
        self._credentials = credentials
        self._server_nonce = server_nonce
        self._step = 0
        self._cred: ScramCredential | None = None
        self._client_first_bare = b""
        self._server_first = b""
        self._gs2_header = b""
        self._nonce = ""
        self.username: str | None = None

    def respond(self, token: bytes) -> tuple[bytes, bool]:
        if self._step == 0:
            self._step = 1
            return self._first(token), False
        if self._step == 1:
            self._step = 2
            return self._final(token), True
        raise AuthFailed("SCRAM exchange already finished")

    def _first(self, msg: bytes) -> bytes:
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        try:
            cbind, authzid, bare = msg.split(b",", 2)
        except ValueError:
            raise AuthFailed("client-first message has no GS2 header") from None
        if cbind not in (b"n", b"y"):
            raise AuthFailed("channel binding requested; not supported")
        self._gs2_header = cbind + b"," + authzid + b","
        try:
            attrs = parse_scram_attributes(bare, "client-first message")
            user = saslname_unescape(attrs.get("n", ""))
        except Exception as exc:
            raise AuthFailed(str(exc)) from None
        if "m" in attrs:
            raise AuthFailed("client-first message demands an unsupported extension")
        if not bare.startswith(b"n=") or "r" not in attrs or not attrs["r"]:
            raise AuthFailed("client-first message lacks n= or r=")
        cred = self._credentials.get(user)
        if cred is None:
            raise AuthFailed(f"{self.mechanism}: unknown user {user!r}")
        self.username, self._cred = user, cred
        self._client_first_bare = bare
        self._nonce = attrs["r"] + self._server_nonce
        self._server_first = (f"r={self._nonce},s={base64.b64encode(cred.salt).decode()},"
                              f"i={cred.iterations}").encode()
        return self._server_first

    def _final(self, msg: bytes) -> bytes:
        assert self._cred is not None
        head, sep, proof_b64 = msg.rpartition(b",p=")
        if not sep:
            raise AuthFailed("client-final message has no proof")
        try:
            attrs = parse_scram_attributes(head, "client-final message")
            proof = base64.b64decode(proof_b64, validate=True)
        except Exception as exc:
            raise AuthFailed(str(exc)) from None
        if attrs.get("c") != base64.b64encode(self._gs2_header).decode():
            raise AuthFailed("channel binding attribute does not match the GS2 header")
        if attrs.get("r") != self._nonce:
            raise AuthFailed("client-final nonce differs from the one agreed")
        auth_message = self._client_first_bare + b"," + self._server_first + b"," + head
        client_signature = hmac.new(self._cred.stored_key, auth_message, self._digest).digest()
        if len(proof) != len(client_signature):
            raise AuthFailed("client proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(hashlib.new(self._digest, client_key).digest(),
                                   self._cred.stored_key):
            raise AuthFailed(f"{self.mechanism}: bad password for {self.username!r}")
        server_signature = hmac.new(self._cred.server_key, auth_message, self._digest).digest()
        return b"v=" + base64.b64encode(server_signature)


# --- minimal server-side Kafka framing (see module docstring) ------------------------------


class _Reader:
    """Reads Kafka primitives from one frame; IndexError/struct.error if it runs short."""

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError("frame ends early")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return struct.unpack(">h", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self._take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise ValueError("varint too long")

    def string(self) -> str | None:
        n = self.int16()
        return None if n < 0 else self._take(n).decode()

    def bytes_(self, compact: bool) -> bytes:
        n = self.uvarint() - 1 if compact else self.int32()
        return self._take(max(n, 0))

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self._take(self.uvarint())

    def rest(self) -> bytes:
        return self.buf[self.pos:]


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _is_flexible(api_key: int, version: int) -> bool:
    return (api_key == SASL_AUTHENTICATE and version >= 2) or (api_key == API_VERSIONS and version >= 3)


@dataclass(frozen=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: _Reader


def parse_request(frame: bytes) -> RequestHeader:
    r = _Reader(frame)
    api_key, version, corr = r.int16(), r.int16(), r.int32()
    client_id = r.string()
    if _is_flexible(api_key, version):
        r.skip_tagged_fields()
    return RequestHeader(api_key, version, corr, client_id, r)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def handshake_response(corr: int, error: int, mechanisms: Iterable[str]) -> bytes:
    mechs = [m.encode() for m in mechanisms]
    body = struct.pack(">ihi", corr, error, len(mechs))
    body += b"".join(struct.pack(">h", len(m)) + m for m in mechs)
    return _frame(body)


def authenticate_response(corr: int, version: int, error: int, message: str | None,
                          auth_bytes: bytes) -> bytes:
    msg = None if message is None else message.encode()
    if version >= 2:  # flexible: response header v1, compact types, tagged fields
        out = struct.pack(">i", corr) + b"\0" + struct.pack(">h", error)
        out += b"\0" if msg is None else _uvarint(len(msg) + 1) + msg
        out += _uvarint(len(auth_bytes) + 1) + auth_bytes
        out += struct.pack(">q", 0) + b"\0"
        return _frame(out)
    out = struct.pack(">ih", corr, error)
    out += struct.pack(">h", -1) if msg is None else struct.pack(">h", len(msg)) + msg
    out += struct.pack(">i", len(auth_bytes)) + auth_bytes
    if version >= 1:
        out += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication
    return _frame(out)


def patch_api_versions(version: int, payload: bytes) -> bytes:
    """Add (or replace) SaslHandshake and SaslAuthenticate in an ApiVersions response frame.

    ApiVersions responses always use response header v0 (KIP-511), so the
    correlation id is followed directly by the body. Error answers (e.g. 35
    with a v0 body) pass unchanged: the client retries with an older version.
    """
    r = _Reader(payload)
    corr, error = r.int32(), r.int16()
    if error:
        return _frame(payload)
    flexible = version >= 3
    count = r.uvarint() - 1 if flexible else r.int32()
    apis: dict[int, tuple[int, int]] = {}
    for _ in range(count):
        key, lo, hi = r.int16(), r.int16(), r.int16()
        if flexible:
            r.skip_tagged_fields()
        apis[key] = (lo, hi)
    apis.update(GATEWAY_APIS)
    out = struct.pack(">ih", corr, error)
    out += _uvarint(len(apis) + 1) if flexible else struct.pack(">i", len(apis))
    for key in sorted(apis):
        out += struct.pack(">hhh", key, *apis[key]) + (b"\0" if flexible else b"")
    return _frame(out + r.rest())  # throttle_time_ms and tagged fields as the broker sent them


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    if not 0 <= size <= MAX_FRAME:
        raise ValueError(f"frame size {size} out of range before authentication")
    return await reader.readexactly(size)


# --- the gateway ----------------------------------------------------------------------------


class SaslGateway(LoopServer):
    """SASL on 127.0.0.1:`port` for `users` ({username: password}), forwarding to `upstream`."""

    def __init__(self, upstream: str, users: Mapping[str, str], *,
                 mechanisms: Iterable[str] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
                 iterations: int = 4096, port: int = 0) -> None:
        host, _, uport = upstream.rpartition(":")
        if not host or not uport.isdigit():
            raise ValueError(f"upstream must be 'host:port', not {upstream!r}")
        self.upstream = (host, int(uport))
        self.mechanisms = tuple(mechanisms)
        for m in self.mechanisms:
            if m != "PLAIN" and m not in SCRAM_HASHES:
                raise ValueError(f"mechanisms: unknown SASL mechanism {m!r}")
        self._users = dict(users)
        self._scram = {m: {u: make_scram_credential(m, p, os.urandom(16), iterations)
                           for u, p in self._users.items()}
                       for m in self.mechanisms if m in SCRAM_HASHES}
        self.authenticated: list[tuple[str, str]] = []
        self.failures: list[str] = []
        self.refused: list[int] = []
        super().__init__(port)

    def _mechanism_server(self, mechanism: str) -> PlainServer | ScramServer:
        if mechanism == "PLAIN":
            return PlainServer(self._users)
        return ScramServer(mechanism, self._scram[mechanism],
                           base64.b64encode(os.urandom(18)).decode())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            upstream = await self._authenticate(reader, writer)
            if upstream is not None:
                await splice((reader, writer), upstream)
        finally:
            if upstream is not None:
                upstream[1].close()

    async def _authenticate(self, reader, writer):
        """Serve the SASL phase; the upstream connection once authenticated, None to hang up."""
        upstream = None
        mech_server: PlainServer | ScramServer | None = None
        while True:
            frame = await read_frame(reader)
            req = parse_request(frame)
            if req.api_key == API_VERSIONS:
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                upstream[1].write(_frame(frame))
                await upstream[1].drain()
                answer = await read_frame(upstream[0])
                writer.write(patch_api_versions(req.api_version, answer))
                await writer.drain()
                continue
            if req.api_key == SASL_HANDSHAKE and mech_server is None:
                if req.api_version > 1:
                    self.failures.append(f"SaslHandshake v{req.api_version} unsupported")
                    return self._close_upstream(upstream)
                mechanism = req.body.string() or ""
                if mechanism not in self.mechanisms:
                    writer.write(handshake_response(req.correlation_id, UNSUPPORTED_SASL_MECHANISM,
                                                    self.mechanisms))
                    await writer.drain()
                    self.failures.append(f"unsupported mechanism {mechanism!r}")
                    return self._close_upstream(upstream)
                writer.write(handshake_response(req.correlation_id, 0, self.mechanisms))
                await writer.drain()
                mech_server = self._mechanism_server(mechanism)
                if req.api_version == 0:
                    ok = await self._raw_tokens(reader, writer, mech_server)
                    if not ok:
                        return self._close_upstream(upstream)
                    break
                continue
            if req.api_key == SASL_AUTHENTICATE and mech_server is not None:
                if req.api_version > 2:
                    self.failures.append(f"SaslAuthenticate v{req.api_version} unsupported")
                    return self._close_upstream(upstream)
                token = req.body.bytes_(compact=req.api_version >= 2)
                try:
                    reply, done = mech_server.respond(token)
                except AuthFailed as exc:
                    self.failures.append(str(exc))
                    writer.write(authenticate_response(
                        req.correlation_id, req.api_version, SASL_AUTHENTICATION_FAILED,
                        f"Authentication failed: invalid credentials for SASL mechanism "
                        f"{self._mechanism_name(mech_server)}", b""))
                    await writer.drain()
                    return self._close_upstream(upstream)
                writer.write(authenticate_response(req.correlation_id, req.api_version, 0,
                                                   None, reply))
                await writer.drain()
                if done:
                    break
                continue
            # Anything else before authentication: a Kafka broker hangs up.
            self.refused.append(req.api_key)
            return self._close_upstream(upstream)
        assert mech_server is not None and mech_server.username is not None
        self.authenticated.append((self._mechanism_name(mech_server), mech_server.username))
        if upstream is None:
            upstream = await asyncio.open_connection(*self.upstream)
        return upstream

    async def _raw_tokens(self, reader, writer, mech_server) -> bool:
        """SaslHandshake v0: tokens travel as bare size-prefixed frames, failures as a hang-up."""
        while True:
            token = await read_frame(reader)
            try:
                reply, done = mech_server.respond(token)
            except AuthFailed as exc:
                self.failures.append(str(exc))
                return False
            writer.write(_frame(reply))
            await writer.drain()
            if done:
                return True

    @staticmethod
    def _mechanism_name(server: PlainServer | ScramServer) -> str:
        return server.mechanism if isinstance(server, ScramServer) else "PLAIN"

    @staticmethod
    def _close_upstream(upstream) -> None:
        if upstream is not None:
            upstream[1].close()
        return None

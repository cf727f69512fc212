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

Framing: the gateway is the *server* side; it decodes requests and encodes
responses with kafkad.protocol's broker-side helpers (``decode_request``,
``encode_response``), and reads Tansu's ApiVersions answer with
``decode_response``. Only the api key and version are peeked by hand, to
refuse requests kafkad.protocol has no class for without decoding them.

What happened is recorded for assertions: `authenticated` holds
(mechanism, username) per successful login, `failures` a reason per failed
one, `refused` the api keys of requests refused before authentication.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kafkad.protocol import (
    ApiVersionsResponse,
    ProtocolError,
    SaslAuthenticateResponse,
    SaslHandshakeResponse,
    decode_request,
    decode_response,
    encode_response,
)
from kafkad.protocol.sasl import parse_scram_attributes, saslname_unescape, scram_salted_password

from .tlsproxy import LoopServer, splice

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
# What the gateway answers itself: api_key -> (min, max) version.
GATEWAY_APIS = {SASL_HANDSHAKE: (0, 1), SASL_AUTHENTICATE: (0, 2)}

UNSUPPORTED_SASL_MECHANISM = 33
SASL_AUTHENTICATION_FAILED = 58

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


# --- framing: kafkad.protocol's broker-side helpers ---------------------------------------


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def peek_api(frame: bytes) -> tuple[int, int]:
    """(api_key, api_version) of a request frame, without decoding the rest."""
    if len(frame) < 4:
        raise ProtocolError(f"request frame of {len(frame)} bytes has no header")
    return struct.unpack_from(">hh", frame)


def patch_api_versions(version: int, response_frame: bytes) -> bytes:
    """Tansu's ApiVersions answer (frame without size prefix) with SaslHandshake and
    SaslAuthenticate added, as a whole frame. Error answers (35 with a v0 body:
    the client retries with an older version) and versions kafkad.protocol
    does not implement pass unchanged."""
    if not ApiVersionsResponse.MIN_VERSION <= version <= ApiVersionsResponse.MAX_VERSION:
        return _frame(response_frame)
    corr, resp = decode_response(ApiVersionsResponse, version, response_frame)
    if resp.error_code:
        return _frame(response_frame)
    apis = {a.api_key: a for a in resp.api_keys}
    for key, (lo, hi) in GATEWAY_APIS.items():
        apis[key] = ApiVersionsResponse.ApiVersion(api_key=key, min_version=lo, max_version=hi)
    patched = dataclasses.replace(resp, api_keys=tuple(apis[k] for k in sorted(apis)))
    return encode_response(patched, version, corr)


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
            api_key, api_version = peek_api(frame)
            if api_key == API_VERSIONS:
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                upstream[1].write(_frame(frame))
                await upstream[1].drain()
                answer = await read_frame(upstream[0])
                writer.write(patch_api_versions(api_version, answer))
                await writer.drain()
                continue
            if api_key not in (SASL_HANDSHAKE, SASL_AUTHENTICATE) or (
                    (api_key == SASL_HANDSHAKE) != (mech_server is None)):
                # Anything else before authentication, or SASL requests out of
                # order: a Kafka broker hangs up.
                self.refused.append(api_key)
                return self._close_upstream(upstream)
            try:
                header, request = decode_request(frame)
            except ProtocolError as exc:
                self.failures.append(f"undecodable request: {exc}")
                return self._close_upstream(upstream)
            corr, version = header.correlation_id, header.api_version
            if api_key == SASL_HANDSHAKE:
                if request.mechanism not in self.mechanisms:
                    writer.write(encode_response(SaslHandshakeResponse(
                        error_code=UNSUPPORTED_SASL_MECHANISM, mechanisms=self.mechanisms),
                        version, corr))
                    await writer.drain()
                    self.failures.append(f"unsupported mechanism {request.mechanism!r}")
                    return self._close_upstream(upstream)
                writer.write(encode_response(SaslHandshakeResponse(
                    error_code=0, mechanisms=self.mechanisms), version, corr))
                await writer.drain()
                mech_server = self._mechanism_server(request.mechanism)
                if version == 0:
                    if not await self._raw_tokens(reader, writer, mech_server):
                        return self._close_upstream(upstream)
                    break
                continue
            try:
                reply, done = mech_server.respond(request.auth_bytes)
            except AuthFailed as exc:
                self.failures.append(str(exc))
                writer.write(encode_response(SaslAuthenticateResponse(
                    error_code=SASL_AUTHENTICATION_FAILED,
                    error_message=f"Authentication failed: invalid credentials for SASL "
                                  f"mechanism {self._mechanism_name(mech_server)}",
                    auth_bytes=b""), version, corr))
                await writer.drain()
                return self._close_upstream(upstream)
            writer.write(encode_response(SaslAuthenticateResponse(error_code=0, auth_bytes=reply),
                                         version, corr))
            await writer.drain()
            if done:
                break
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

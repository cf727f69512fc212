"""kafkad.broker.security over real sockets, through the TLS proxy and the SASL gateway.

This drives the two hooks exactly as the broker connection code is meant to:
open the connection with `make_ssl_context` (and ``server_hostname``), ask
ApiVersions, run `authenticate` with an `exchange` that sends one request and
decodes its response, then use the connection (a Metadata request answered
by Tansu behind the peers). It checks the hooks independently of the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl

import pytest

from kafkad.broker.security import (
    AuthenticationError,
    authenticate,
    describe_tls_error,
    make_ssl_context,
    uses_sasl,
    uses_tls,
)
from kafkad.config import KafkaConfig, SaslConfig, TlsConfig
from kafkad.protocol import (
    ApiVersionsRequest,
    FrameReader,
    MetadataRequest,
    MetadataResponse,
    decode_response,
    encode_request,
)
from kafkad.protocol.messages import RESPONSE_FOR
from tests.security.conftest import USERS


class Connection:
    """The smallest broker connection: one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader(1 << 20)
        self.pending: list[bytes] = []
        self.corr = itertools.count(1)

    @classmethod
    async def open(cls, address: str, kafka: KafkaConfig) -> "Connection":
        host, port = address.rsplit(":", 1)
        ctx = make_ssl_context(kafka) if uses_tls(kafka) else None
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=ctx, server_hostname=host if ctx else None)
        return cls(reader, writer)

    async def exchange(self, msg, version):
        corr = next(self.corr)
        self.writer.write(encode_request(msg, version, corr, "kafkad-security-test"))
        await self.writer.drain()
        while not self.pending:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the peer closed the connection")
            self.pending += self.frames.feed(data)
        got, response = decode_response(RESPONSE_FOR[type(msg)], version, self.pending.pop(0))
        assert got == corr
        return response

    async def api_versions(self) -> dict[int, tuple[int, int]]:
        resp = await self.exchange(ApiVersionsRequest(client_software_name="kafkad-test",
                                                      client_software_version="0"), 3)
        if resp.error_code:
            resp = await self.exchange(ApiVersionsRequest(), 0)
        assert resp.error_code == 0
        return {a.api_key: (a.min_version, a.max_version) for a in resp.api_keys}

    def close(self) -> None:
        self.writer.close()


async def _connect_and_use(address: str, kafka: KafkaConfig) -> MetadataResponse:
    conn = await Connection.open(address, kafka)
    try:
        versions = await conn.api_versions()
        if uses_sasl(kafka):
            await authenticate(conn.exchange, kafka, versions)
        return await conn.exchange(MetadataRequest(topics=None), 1)
    finally:
        conn.close()


def _sasl(mechanism: str, password: str, user: str = "alice") -> SaslConfig:
    return SaslConfig(mechanism=mechanism, username=user, password=password)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_authenticated_connection_reaches_the_broker(sasl_stack, mechanism):
    kafka = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl=_sasl(mechanism, USERS["alice"]))
    meta = asyncio.run(_connect_and_use(sasl_stack.bootstrap, kafka))
    assert [b.port for b in meta.brokers] == [int(sasl_stack.bootstrap.rsplit(":", 1)[1])]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_wrong_password_is_refused_on_the_wire(sasl_stack, mechanism):
    kafka = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl=_sasl(mechanism, "wrong-one"))
    with pytest.raises(AuthenticationError, match=r"SaslAuthenticationFailedError \(58\)") as info:
        asyncio.run(_connect_and_use(sasl_stack.bootstrap, kafka))
    assert "wrong-one" not in str(info.value)


def test_sasl_over_tls_on_the_wire(sasl_ssl_stack, pki):
    kafka = KafkaConfig(security_protocol="SASL_SSL", tls=TlsConfig(ca_file=pki.ca_file),
                        sasl=_sasl("SCRAM-SHA-512", USERS["bob,admin=1"], user="bob,admin=1"))
    meta = asyncio.run(_connect_and_use(sasl_ssl_stack.bootstrap, kafka))
    assert meta.brokers
    assert ("SCRAM-SHA-512", "bob,admin=1") in sasl_ssl_stack.gateway.authenticated


def test_tls_with_the_right_ca(tls_stack, pki):
    kafka = KafkaConfig(security_protocol="SSL", tls=TlsConfig(ca_file=pki.ca_file))
    assert asyncio.run(_connect_and_use(tls_stack.bootstrap, kafka)).brokers


@pytest.mark.parametrize("stack_name,ca,expect", [
    ("tls_stack", "other_ca_file", "was not accepted"),
    ("wrong_host_stack", "ca_file", "not valid for this host name"),
])
def test_tls_refusals_explain_themselves(request, pki, stack_name, ca, expect):
    stack = request.getfixturevalue(stack_name)
    kafka = KafkaConfig(security_protocol="SSL", tls=TlsConfig(ca_file=getattr(pki, ca)))
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        asyncio.run(_connect_and_use(stack.bootstrap, kafka))
    assert expect in describe_tls_error(info.value, stack.bootstrap, kafka)


def test_wrong_host_accepted_when_hostname_check_is_off(wrong_host_stack, pki):
    kafka = KafkaConfig(security_protocol="SSL",
                        tls=TlsConfig(ca_file=pki.ca_file, check_hostname=False))
    assert asyncio.run(_connect_and_use(wrong_host_stack.bootstrap, kafka)).brokers


def test_mutual_tls_on_the_wire(mtls_stack, pki):
    kafka = KafkaConfig(security_protocol="SSL", tls=TlsConfig(
        ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key,
        key_password_file=pki.client_key_password_file))
    assert asyncio.run(_connect_and_use(mtls_stack.bootstrap, kafka)).brokers
    without = KafkaConfig(security_protocol="SSL", tls=TlsConfig(ca_file=pki.ca_file))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        asyncio.run(_connect_and_use(mtls_stack.bootstrap, without))

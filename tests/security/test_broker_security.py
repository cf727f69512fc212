"""kafkad.broker.security: the TLS context, the password sources and the SASL exchange.

`authenticate` is driven here through the real wire encoding (kafkad.protocol
frames decoded by the broker-side helpers) against the same verifying SASL
server the gateway uses, so every request it builds is checked byte-level.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading

import pytest

from kafkad.broker.security import (
    AuthenticationError,
    SecurityConfigError,
    authenticate,
    describe_early_close,
    describe_tls_error,
    make_ssl_context,
    resolve_password,
    uses_sasl,
    uses_tls,
)
from kafkad.config import KafkaConfig, SaslConfig, TlsConfig
from kafkad.protocol import (
    SaslAuthenticateResponse,
    SaslHandshakeResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from tests.support.saslgateway import (
    AuthFailed,
    PlainServer,
    ScramServer,
    make_scram_credential,
)
from tests.support.tlsproxy import server_ssl_context

SECRET = "s3cret-Pa55word-that-must-never-leak"


def _kafka(**sasl) -> KafkaConfig:
    base = {"mechanism": "PLAIN", "username": "alice", "password": SECRET}
    return KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl=SaslConfig(**{**base, **sasl}))


# --- make_ssl_context ----------------------------------------------------------------------

def _tls(**tls) -> KafkaConfig:
    return KafkaConfig(security_protocol="SSL", tls=TlsConfig(**tls))


def test_context_verifies_and_offers_tls12_or_newer(pki):
    ctx = make_ssl_context(_tls(ca_file=pki.ca_file))
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert any("kafkad test ca" in str(c.get("subject")) for c in ctx.get_ca_certs())


def test_check_hostname_off_still_verifies_the_chain(pki):
    ctx = make_ssl_context(_tls(ca_file=pki.ca_file, check_hostname=False))
    assert ctx.check_hostname is False
    assert ctx.verify_mode is ssl.CERT_REQUIRED


def test_no_ca_file_means_the_system_trust_store(pki):
    ctx = make_ssl_context(_tls())
    assert not any("kafkad test ca" in str(c.get("subject")) for c in ctx.get_ca_certs())
    assert ctx.verify_mode is ssl.CERT_REQUIRED


def test_missing_or_bad_ca_file_names_the_key(pki, tmp_path):
    with pytest.raises(SecurityConfigError, match=r"\[kafka.tls\] ca_file .*no such file"):
        make_ssl_context(_tls(ca_file=str(tmp_path / "absent.pem")))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(SecurityConfigError, match=r"ca_file .*junk.pem"):
        make_ssl_context(_tls(ca_file=str(junk)))


def test_client_certificate_with_encrypted_key(pki, tmp_path):
    ctx = make_ssl_context(_tls(ca_file=pki.ca_file, cert_file=pki.client_cert,
                                key_file=pki.client_key,
                                key_password_file=pki.client_key_password_file))
    assert isinstance(ctx, ssl.SSLContext)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("nope\n")
    with pytest.raises(SecurityConfigError, match="wrong key_password_file") as info:
        make_ssl_context(_tls(ca_file=pki.ca_file, cert_file=pki.client_cert,
                              key_file=pki.client_key, key_password_file=str(wrong)))
    assert "nope" not in str(info.value)
    with pytest.raises(SecurityConfigError, match="encrypted and key_password_file is not set"):
        make_ssl_context(_tls(ca_file=pki.ca_file, cert_file=pki.client_cert,
                              key_file=pki.client_key))


def test_security_protocol_helpers():
    assert [uses_tls(KafkaConfig(security_protocol=p)) for p in
            ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")] == [False, True, False, True]
    assert [uses_sasl(KafkaConfig(security_protocol=p)) for p in
            ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")] == [False, False, True, True]


def test_make_ssl_context_wants_a_kafka_config():
    with pytest.raises(TypeError, match="kafka_cfg"):
        make_ssl_context(TlsConfig())


def _handshake_error(pki, cert, key, kafka_cfg) -> tuple[BaseException, str]:
    """Connect with kafka_cfg's context to a one-shot TLS server; the client's failure."""
    server_ctx = server_ssl_context(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                make_ssl_context(kafka_cfg).wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        t.join(5)
        listener.close()
    broker = f"127.0.0.1:{port}"
    return info.value, describe_tls_error(info.value, broker, kafka_cfg)


def test_describe_tls_error_for_an_unknown_ca(pki):
    _, text = _handshake_error(pki, pki.server_cert, pki.server_key,
                               _tls(ca_file=pki.other_ca_file))
    assert "not accepted" in text and pki.other_ca_file in text


def test_describe_tls_error_for_a_wrong_host_name(pki):
    _, text = _handshake_error(pki, pki.wrong_host_cert, pki.wrong_host_key,
                               _tls(ca_file=pki.ca_file))
    assert "not valid for this host name" in text and "check_hostname" in text


def test_describe_early_close_points_at_the_client_certificate(pki):
    without = describe_early_close("b:9093", _tls(ca_file=pki.ca_file))
    assert "may require a client certificate" in without and "cert_file" in without
    with_cert = describe_early_close("b:9093", _tls(cert_file=pki.client_cert,
                                                    key_file=pki.client_key))
    assert pki.client_cert in with_cert and "not accept" in with_cert


# --- resolve_password ----------------------------------------------------------------------

def test_password_sources_in_order(tmp_path, monkeypatch):
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    monkeypatch.setenv("KAFKAD_TEST_PW", "from-env")
    assert resolve_password(SaslConfig(password="literal")) == "literal"
    assert resolve_password(SaslConfig(password_env="KAFKAD_TEST_PW")) == "from-env"
    assert resolve_password(SaslConfig(password_file=str(f), password_env="KAFKAD_TEST_PW")) == "from-file"
    f.write_text("rotated\r\n")
    assert resolve_password(SaslConfig(password_file=str(f))) == "rotated"
    f.write_text("  keeps inner spaces  \n\n")
    assert resolve_password(SaslConfig(password_file=str(f))) == "  keeps inner spaces  \n"


def test_password_problems_name_the_key_not_the_secret(tmp_path, monkeypatch):
    with pytest.raises(SecurityConfigError, match=r"password_file .*cannot read"):
        resolve_password(SaslConfig(password_file=str(tmp_path / "absent")))
    monkeypatch.delenv("KAFKAD_TEST_UNSET", raising=False)
    with pytest.raises(SecurityConfigError, match="KAFKAD_TEST_UNSET"):
        resolve_password(SaslConfig(password_env="KAFKAD_TEST_UNSET"))
    with pytest.raises(SecurityConfigError, match="empty password"):
        resolve_password(SaslConfig())
    with pytest.raises(TypeError, match="sasl_cfg"):
        resolve_password(KafkaConfig())


def test_config_reprs_hide_the_password():
    assert SECRET not in repr(_kafka())


# --- authenticate --------------------------------------------------------------------------

class WireBroker:
    """A broker-side SASL peer reached through real frames: requests are encoded by
    kafkad.protocol, decoded as a broker would, answered, and decoded back."""

    def __init__(self, users: dict[str, str], mechanisms=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")):
        self.users = users
        self.mechanisms = list(mechanisms)
        self.server = None
        self.seen: list[tuple[str, int]] = []
        self._corr = 0

    async def exchange(self, msg, version):
        self._corr += 1
        frame = encode_request(msg, version, self._corr, "kafkad-test")
        header, request = decode_request(frame[4:])
        self.seen.append((type(request).__name__, header.api_version))
        response = self._answer(request)
        out = encode_response(response, version, header.correlation_id)
        corr, decoded = decode_response(type(response), version, out[4:])
        assert corr == self._corr
        return decoded

    def _answer(self, request):
        if type(request).__name__ == "SaslHandshakeRequest":
            if request.mechanism not in self.mechanisms:
                return SaslHandshakeResponse(error_code=33, mechanisms=self.mechanisms)
            if request.mechanism == "PLAIN":
                self.server = PlainServer(self.users)
            else:
                creds = {u: make_scram_credential(request.mechanism, p, b"salt" + u.encode(), 4096)
                         for u, p in self.users.items()}
                self.server = ScramServer(request.mechanism, creds, "broker-nonce")
            return SaslHandshakeResponse(error_code=0, mechanisms=self.mechanisms)
        try:
            reply, _ = self.server.respond(request.auth_bytes)
        except AuthFailed:
            return SaslAuthenticateResponse(error_code=58, error_message="Authentication failed",
                                            auth_bytes=b"")
        return SaslAuthenticateResponse(error_code=0, auth_bytes=reply)


VERSIONS = {17: (0, 1), 36: (0, 2), 18: (0, 3)}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("auth_max", [0, 1, 2])
def test_authenticate_succeeds_with_each_mechanism_and_version(mechanism, auth_max):
    broker = WireBroker({"alice": SECRET})
    asyncio.run(authenticate(broker.exchange, _kafka(mechanism=mechanism),
                             {**VERSIONS, 36: (0, auth_max)}))
    assert broker.server.username == "alice"
    steps = 1 if mechanism == "PLAIN" else 2
    assert broker.seen == [("SaslHandshakeRequest", 1)] + [("SaslAuthenticateRequest", auth_max)] * steps


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_wrong_password_is_a_clear_authentication_error(mechanism, caplog):
    broker = WireBroker({"alice": "the-real-one"})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        asyncio.run(authenticate(broker.exchange, _kafka(mechanism=mechanism), VERSIONS))
    err = info.value
    assert err.errno == 58 and err.error_name == "SaslAuthenticationFailedError"
    assert f"SASL {mechanism} as 'alice'" in str(err) and "Authentication failed" in str(err)
    assert SECRET not in str(err) and SECRET not in repr(err) and SECRET not in caplog.text


def test_a_mechanism_the_broker_does_not_enable(caplog):
    broker = WireBroker({"alice": SECRET}, mechanisms=["SCRAM-SHA-512"])
    with pytest.raises(AuthenticationError, match="it enables: SCRAM-SHA-512") as info:
        asyncio.run(authenticate(broker.exchange, _kafka(mechanism="PLAIN"), VERSIONS))
    assert info.value.errno == 33 and info.value.error_name == "UnsupportedSaslMechanismError"


@pytest.mark.parametrize("versions,match", [
    ({18: (0, 3)}, "does not offer SaslHandshake"),
    ({17: (0, 0), 36: (0, 2)}, "offers SaslHandshake v0-v0"),
    ({17: (0, 1)}, "no SaslAuthenticate version"),
    ({17: (0, 1), 36: (3, 4)}, "no SaslAuthenticate version"),
])
def test_brokers_without_usable_sasl_versions(versions, match):
    broker = WireBroker({"alice": SECRET})
    with pytest.raises(AuthenticationError, match=match) as info:
        asyncio.run(authenticate(broker.exchange, _kafka(), versions))
    assert info.value.errno == 35
    assert broker.seen == []  # nothing sent to a broker that cannot do it


def test_an_unknown_mechanism_is_a_config_error():
    with pytest.raises(SecurityConfigError, match="mechanism must be one of"):
        asyncio.run(authenticate(WireBroker({}).exchange, _kafka(mechanism="GSSAPI"), VERSIONS))


def test_the_password_is_read_from_its_file_at_each_authentication(tmp_path):
    f = tmp_path / "pw"
    f.write_text("first\n")
    cfg = _kafka(mechanism="SCRAM-SHA-256", password="", password_file=str(f))
    asyncio.run(authenticate(WireBroker({"alice": "first"}).exchange, cfg, VERSIONS))
    f.write_text("second\n")
    asyncio.run(authenticate(WireBroker({"alice": "second"}).exchange, cfg, VERSIONS))
    with pytest.raises(AuthenticationError):
        asyncio.run(authenticate(WireBroker({"alice": "first"}).exchange, cfg, VERSIONS))

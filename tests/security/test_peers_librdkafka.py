"""The TLS proxy and the SASL gateway, proven with librdkafka as the client.

Before kafkad is tested against these peers, a mature client must succeed
(and fail) against them exactly as it would against a real Kafka listener:
records produced through them are read back, bad credentials and untrusted
certificates are refused.
"""

from __future__ import annotations

import socket
import struct
import threading

import confluent_kafka  # installed by scripts/bootstrap.sh: its absence is a failure
import pytest

from tests.security._readback import read_back
from tests.security.conftest import USERS
from tests.support.saslgateway import SaslGateway

MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _produce(bootstrap: str, topic: str, conf: dict, n: int = 30) -> tuple[list, list]:
    """Produce n records (spread over 3 partitions); returns (delivery errors, client errors)."""
    delivery_errors: list = []
    client_errors: list = []
    producer = confluent_kafka.Producer({
        "bootstrap.servers": bootstrap, "message.timeout.ms": 10_000, "log_level": 3,
        "error_cb": client_errors.append, **conf})
    for i in range(n):
        producer.produce(topic, value=b"value-%d" % i, key=b"key-%d" % i, partition=i % 3,
                         on_delivery=lambda err, msg: err and delivery_errors.append(err))
    left = producer.flush(15)
    assert left == 0, f"{left} records not delivered; errors: {client_errors[:3]}"
    return delivery_errors, client_errors


def _expect_refused(bootstrap: str, topic: str, conf: dict, *codes: int) -> list:
    """Produce once, wait for one of the client errors `codes`, drop the record; returns the errors."""
    seen = threading.Event()
    errors: list = []

    def on_error(err):
        errors.append(err)
        if err.code() in codes:
            seen.set()

    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "log_level": 0,
                                         "error_cb": on_error, **conf})
    producer.produce(topic, value=b"must-not-arrive", partition=0)
    for _ in range(100):
        producer.poll(0.1)
        if seen.is_set():
            break
    producer.purge()
    producer.flush(1)
    assert seen.is_set(), f"expected client error {codes}, got {errors}"
    return errors


def _sasl_conf(mechanism: str, user: str, password: str, protocol: str = "SASL_PLAINTEXT") -> dict:
    return {"security.protocol": protocol, "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("user", sorted(USERS))
def test_gateway_lets_librdkafka_in_with_good_credentials(sasl_stack, mechanism, user):
    topic = sasl_stack.new_topic("gw-good")
    conf = _sasl_conf(mechanism, user, USERS[user])
    delivery_errors, _ = _produce(sasl_stack.bootstrap, topic, conf)
    assert delivery_errors == []
    got = read_back(sasl_stack.bootstrap, topic, 3, 30, conf)
    assert sorted(v for recs in got.values() for _, v, _ in recs) == sorted(
        b"value-%d" % i for i in range(30))
    assert [k for k, _, _ in got[1]] == [b"key-%d" % i for i in range(1, 30, 3)]
    assert (mechanism, user) in sasl_stack.gateway.authenticated


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_gateway_refuses_librdkafka_with_a_wrong_password(sasl_stack, mechanism):
    topic = sasl_stack.new_topic("gw-bad")
    failures_before = len(sasl_stack.gateway.failures)
    errors = _expect_refused(sasl_stack.bootstrap, topic,
                             _sasl_conf(mechanism, "alice", "not-the-password"),
                             confluent_kafka.KafkaError._AUTHENTICATION)
    assert any("invalid credentials" in e.str() for e in errors)
    assert len(sasl_stack.gateway.failures) > failures_before
    # Nothing reached the broker (read with good credentials).
    good = _sasl_conf(mechanism, "alice", USERS["alice"])
    assert sum(map(len, read_back(sasl_stack.bootstrap, topic, 3, 0, good).values())) == 0


def test_gateway_refuses_an_unknown_user(sasl_stack):
    topic = sasl_stack.new_topic("gw-nouser")
    _expect_refused(sasl_stack.bootstrap, topic, _sasl_conf("SCRAM-SHA-256", "mallory", "x"),
                    confluent_kafka.KafkaError._AUTHENTICATION)
    assert any("unknown user 'mallory'" in f for f in sasl_stack.gateway.failures)


def test_gateway_hangs_up_on_requests_before_authentication(sasl_stack):
    # A Metadata v1 request (api_key 3), no topics: header v1 + int32 -1 (null array).
    body = struct.pack(">hhih", 3, 1, 7, 4) + b"test" + struct.pack(">i", -1)
    host, port = sasl_stack.gateway.address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        assert s.recv(4) == b"", "the gateway answered instead of closing the connection"
    assert 3 in sasl_stack.gateway.refused


def test_gateway_refuses_a_disabled_mechanism(tansu):
    with SaslGateway(tansu.bootstrap, USERS, mechanisms=["SCRAM-SHA-512"]) as gw:
        errors = _expect_refused(gw.address, "any-topic", _sasl_conf("PLAIN", "alice", USERS["alice"]),
                                 confluent_kafka.KafkaError._AUTHENTICATION)
    assert any("SCRAM-SHA-512" in e.str() for e in errors), errors
    assert gw.failures == ["unsupported mechanism 'PLAIN'"]


def test_tls_proxy_serves_librdkafka_with_the_right_ca(tls_stack, pki):
    topic = tls_stack.new_topic("tls-good")
    conf = {"security.protocol": "SSL", "ssl.ca.location": pki.ca_file}
    _produce(tls_stack.bootstrap, topic, conf)
    got = read_back(tls_stack.bootstrap, topic, 3, 30, conf)
    assert sum(map(len, got.values())) == 30


def test_tls_proxy_is_refused_by_librdkafka_trusting_another_ca(tls_stack, pki):
    topic = tls_stack.new_topic("tls-otherca")
    errors = _expect_refused(tls_stack.bootstrap, topic,
                             {"security.protocol": "SSL", "ssl.ca.location": pki.other_ca_file},
                             confluent_kafka.KafkaError._SSL)
    assert any("certificate verify failed" in e.str() for e in errors), errors


def test_mtls_proxy_wants_a_client_certificate(mtls_stack, pki):
    topic = mtls_stack.new_topic("mtls")
    with open(pki.client_key_password_file) as f:
        key_password = f.read().strip()
    conf = {"security.protocol": "SSL", "ssl.ca.location": pki.ca_file,
            "ssl.certificate.location": pki.client_cert, "ssl.key.location": pki.client_key,
            "ssl.key.password": key_password}
    _produce(mtls_stack.bootstrap, topic, conf, n=6)
    assert sum(map(len, read_back(mtls_stack.bootstrap, topic, 3, 6, conf).values())) == 6
    # Without a certificate the proxy ends the handshake (with TLS 1.3 the
    # client sees the alert after its side finished, hence several codes).
    connections = mtls_stack.front.connections
    _expect_refused(mtls_stack.bootstrap, topic,
                    {"security.protocol": "SSL", "ssl.ca.location": pki.ca_file},
                    confluent_kafka.KafkaError._SSL, confluent_kafka.KafkaError._TRANSPORT,
                    confluent_kafka.KafkaError._ALL_BROKERS_DOWN)
    assert mtls_stack.front.connections == connections, "a connection without certificate got through"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_sasl_over_tls_with_librdkafka(sasl_ssl_stack, pki, mechanism):
    topic = sasl_ssl_stack.new_topic("sasl-ssl")
    conf = {**_sasl_conf(mechanism, "alice", USERS["alice"], "SASL_SSL"),
            "ssl.ca.location": pki.ca_file}
    _produce(sasl_ssl_stack.bootstrap, topic, conf, n=9)
    assert sum(map(len, read_back(sasl_ssl_stack.bootstrap, topic, 3, 9, conf).values())) == 9
    assert (mechanism, "alice") in sasl_ssl_stack.gateway.authenticated

"""kafkad's BrokerProducer end to end through TLS and SASL peers in front of Tansu.

Good settings: every record is acknowledged and read back (in order, per
partition) by librdkafka through the same secured listener. Bad settings
(untrusted CA, wrong host name, missing client certificate, wrong password):
nothing is delivered, every record is reported failed once, and the reason
reaches the log as a clear sentence without the password.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from kafkad.broker import BrokerProducer
from kafkad.config import KafkaConfig, QueueConfig, SaslConfig, TlsConfig
from kafkad.engine.types import Outcome, SessionSettings, Submission
from tests.security._readback import read_back
from tests.security.conftest import USERS

N_PER_PARTITION = 20
PARTITIONS = 3
BAD_PASSWORD = "definitely-Not-the-Password-42"
# What records that cannot reach the broker fail with (not REQUEST_TIMED_OUT, 7): a
# refused login, and a refused TLS handshake, are SASL_AUTHENTICATION_FAILED (58);
# Kafka has no TLS code (kafkad.broker.BrokerProducer.connect_error_code says why).
AUTHENTICATION_FAILED = 58


def _kafka(bootstrap: str, protocol: str, *, tls: TlsConfig | None = None,
           sasl: SaslConfig | None = None, fail_fast: bool = False) -> KafkaConfig:
    timing = {}
    if fail_fast:
        # Records that cannot be delivered fail after 2 s instead of 2 minutes.
        timing = dict(request_timeout_ms=1000, delivery_timeout_ms=2000,
                      reconnect_backoff_ms=50, reconnect_backoff_max_ms=200)
    return KafkaConfig(bootstrap_servers=(bootstrap,), security_protocol=protocol,
                       tls=tls or TlsConfig(), sasl=sasl or SaslConfig(),
                       connect_timeout_ms=3000, **timing)


async def _produce(kafka: KafkaConfig, topic: str, timeout: float,
                   stats: list | None = None) -> list[Outcome]:
    """Submit N_PER_PARTITION records to each partition; the outcomes once all are settled.

    `stats`, when given, receives the producer's stats() taken before it closes.
    """
    outcomes: list[Outcome] = []
    settled = asyncio.Event()
    total = N_PER_PARTITION * PARTITIONS

    def on_outcomes(batch: list[Outcome]) -> None:
        outcomes.extend(batch)
        if sum(o.delivered + o.failed for o in outcomes) >= total:
            settled.set()

    producer = BrokerProducer(kafka, QueueConfig(), on_outcomes=on_outcomes)
    await producer.start()
    try:
        now_ms = int(time.time() * 1000)
        settings = SessionSettings(acks=-1)
        for p in range(PARTITIONS):
            producer.submit(Submission(
                session_id=b"security-test", settings=settings, topic=topic, partition=p,
                keys=[b"k%d" % p] * N_PER_PARTITION,
                values=[b"p%d-%03d" % (p, i) for i in range(N_PER_PARTITION)],
                timestamp_ms=now_ms, token=p))
        await asyncio.wait_for(settled.wait(), timeout)
        if stats is not None:
            stats.append(producer.stats())
    finally:
        await producer.close()
    return outcomes


def _assert_all_delivered(outcomes: list[Outcome], stack, topic: str, reader_conf: dict) -> None:
    assert [o for o in outcomes if o.error] == []
    assert sum(o.delivered for o in outcomes) == N_PER_PARTITION * PARTITIONS
    got = read_back(stack.bootstrap, topic, PARTITIONS, N_PER_PARTITION * PARTITIONS, reader_conf)
    for p in range(PARTITIONS):
        assert [v for _, v, _ in got[p]] == [b"p%d-%03d" % (p, i) for i in range(N_PER_PARTITION)]
        first = min(o.base_offset for o in outcomes if o.partition == p)
        assert got[p][0][2] == first


def _assert_nothing_delivered(outcomes: list[Outcome], stack, topic: str, reader_conf: dict,
                              error: int) -> None:
    """Every record failed once, with `error` (the cause, not a timeout), and none was stored."""
    assert sum(o.delivered for o in outcomes) == 0
    assert sum(o.failed for o in outcomes) == N_PER_PARTITION * PARTITIONS
    assert {(o.error, o.base_offset) for o in outcomes} == {(error, -1)}
    got = read_back(stack.bootstrap, topic, PARTITIONS, 0, reader_conf)
    assert sum(map(len, got.values())) == 0


def _run(coro):
    return asyncio.run(coro)


# --- TLS -----------------------------------------------------------------------------------

def test_tls_with_the_right_ca_delivers(tls_stack, pki):
    topic = tls_stack.new_topic("kd-tls")
    kafka = _kafka(tls_stack.bootstrap, "SSL", tls=TlsConfig(ca_file=pki.ca_file))
    outcomes = _run(_produce(kafka, topic, timeout=20))
    _assert_all_delivered(outcomes, tls_stack, topic,
                          {"security.protocol": "SSL", "ssl.ca.location": pki.ca_file})


def test_tls_with_an_unknown_ca_is_refused(tls_stack, pki, caplog):
    topic = tls_stack.new_topic("kd-tls-ca")
    kafka = _kafka(tls_stack.bootstrap, "SSL", tls=TlsConfig(ca_file=pki.other_ca_file),
                   fail_fast=True)
    caplog.set_level(logging.INFO)
    outcomes = _run(_produce(kafka, topic, timeout=20))
    _assert_nothing_delivered(outcomes, tls_stack, topic,
                              {"security.protocol": "SSL", "ssl.ca.location": pki.ca_file},
                              AUTHENTICATION_FAILED)
    assert "certificate" in caplog.text and pki.other_ca_file in caplog.text


def test_tls_with_a_wrong_host_name_is_refused_unless_the_check_is_off(wrong_host_stack, pki,
                                                                       caplog):
    topic = wrong_host_stack.new_topic("kd-tls-host")
    reader = {"security.protocol": "SSL", "ssl.ca.location": pki.ca_file,
              "ssl.endpoint.identification.algorithm": "none"}
    caplog.set_level(logging.INFO)
    kafka = _kafka(wrong_host_stack.bootstrap, "SSL", tls=TlsConfig(ca_file=pki.ca_file),
                   fail_fast=True)
    outcomes = _run(_produce(kafka, topic, timeout=20))
    _assert_nothing_delivered(outcomes, wrong_host_stack, topic, reader, AUTHENTICATION_FAILED)
    assert "host name" in caplog.text

    relaxed = _kafka(wrong_host_stack.bootstrap, "SSL",
                     tls=TlsConfig(ca_file=pki.ca_file, check_hostname=False))
    _assert_all_delivered(_run(_produce(relaxed, topic, timeout=20)), wrong_host_stack, topic,
                          reader)


def test_mutual_tls(mtls_stack, pki, caplog):
    topic = mtls_stack.new_topic("kd-mtls")
    with open(pki.client_key_password_file) as f:
        key_password = f.read().strip()
    reader = {"security.protocol": "SSL", "ssl.ca.location": pki.ca_file,
              "ssl.certificate.location": pki.client_cert, "ssl.key.location": pki.client_key,
              "ssl.key.password": key_password}
    kafka = _kafka(mtls_stack.bootstrap, "SSL", tls=TlsConfig(
        ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key,
        key_password_file=pki.client_key_password_file))
    _assert_all_delivered(_run(_produce(kafka, topic, timeout=20)), mtls_stack, topic, reader)

    refused_topic = mtls_stack.new_topic("kd-mtls-nocert")
    no_cert = _kafka(mtls_stack.bootstrap, "SSL", tls=TlsConfig(ca_file=pki.ca_file),
                     fail_fast=True)
    caplog.set_level(logging.INFO)
    _assert_nothing_delivered(_run(_produce(no_cert, refused_topic, timeout=20)), mtls_stack,
                              refused_topic, reader, AUTHENTICATION_FAILED)
    # TLS 1.3 (what both sides speak here) shows the refusal as an end of stream
    # after the handshake; the log names the likely cause, the missing certificate.
    assert "client certificate" in caplog.text


# --- SASL ----------------------------------------------------------------------------------

def _reader_sasl(mechanism: str, protocol: str = "SASL_PLAINTEXT") -> dict:
    return {"security.protocol": protocol, "sasl.mechanism": mechanism,
            "sasl.username": "alice", "sasl.password": USERS["alice"]}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_with_good_credentials_delivers(sasl_stack, mechanism, caplog):
    topic = sasl_stack.new_topic("kd-sasl")
    kafka = _kafka(sasl_stack.bootstrap, "SASL_PLAINTEXT",
                   sasl=SaslConfig(mechanism=mechanism, username="alice", password=USERS["alice"]))
    before = sasl_stack.gateway.authenticated.count((mechanism, "alice"))
    caplog.set_level(logging.DEBUG)
    stats: list = []
    _assert_all_delivered(_run(_produce(kafka, topic, timeout=20, stats=stats)), sasl_stack,
                          topic, _reader_sasl(mechanism))
    assert sasl_stack.gateway.authenticated.count((mechanism, "alice")) > before
    # The secret is in neither the logs (at any level) nor the stats.
    assert USERS["alice"] not in caplog.text
    assert stats and USERS["alice"] not in repr(stats[0])


def test_sasl_scram_with_an_escaped_username(sasl_stack, tmp_path):
    topic = sasl_stack.new_topic("kd-sasl-esc")
    user = "bob,admin=1"
    pw_file = tmp_path / "pw"
    pw_file.write_text(USERS[user] + "\n")
    kafka = _kafka(sasl_stack.bootstrap, "SASL_PLAINTEXT",
                   sasl=SaslConfig(mechanism="SCRAM-SHA-256", username=user,
                                   password_file=str(pw_file)))
    _assert_all_delivered(_run(_produce(kafka, topic, timeout=20)), sasl_stack, topic,
                          _reader_sasl("SCRAM-SHA-256"))
    assert ("SCRAM-SHA-256", user) in sasl_stack.gateway.authenticated


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_with_a_wrong_password_fails_clearly(sasl_stack, mechanism, caplog):
    topic = sasl_stack.new_topic("kd-sasl-bad")
    kafka = _kafka(sasl_stack.bootstrap, "SASL_PLAINTEXT", fail_fast=True,
                   sasl=SaslConfig(mechanism=mechanism, username="alice", password=BAD_PASSWORD))
    caplog.set_level(logging.DEBUG)
    outcomes = _run(_produce(kafka, topic, timeout=20))
    _assert_nothing_delivered(outcomes, sasl_stack, topic, _reader_sasl(mechanism),
                              AUTHENTICATION_FAILED)
    assert "SaslAuthenticationFailedError (58)" in caplog.text
    assert f"SASL {mechanism} as 'alice'" in caplog.text
    assert BAD_PASSWORD not in caplog.text


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_sasl_over_tls(sasl_ssl_stack, pki, mechanism):
    topic = sasl_ssl_stack.new_topic("kd-sasl-ssl")
    kafka = _kafka(sasl_ssl_stack.bootstrap, "SASL_SSL", tls=TlsConfig(ca_file=pki.ca_file),
                   sasl=SaslConfig(mechanism=mechanism, username="alice", password=USERS["alice"]))
    _assert_all_delivered(_run(_produce(kafka, topic, timeout=20)), sasl_ssl_stack, topic,
                          {**_reader_sasl(mechanism, "SASL_SSL"), "ssl.ca.location": pki.ca_file})

"""Fixtures for TLS and SASL tests: throwaway PKI and broker stacks behind a proxy or gateway.

Each stack is a Tansu broker advertising the port of the component in front
of it, so that every connection a client makes (bootstrap, then the
partition leaders) passes through that component:

    tls_stack        client --TLS--> TlsProxy --> Tansu
    mtls_stack       the same, and the proxy demands a client certificate
    wrong_host_stack TlsProxy with a certificate for broker.invalid only
    sasl_stack       client --SASL--> SaslGateway --> Tansu
    sasl_ssl_stack   client --TLS--> TlsProxy --SASL--> SaslGateway --> Tansu

Stacks live for the test session (Tansu starts in well under a second); tests
isolate themselves with fresh topics (`Stack.new_topic`).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import pytest

from tests.support.certs import TestPki, make_test_pki, openssl_binary
from tests.support.net import free_port
from tests.support.saslgateway import SaslGateway
from tests.support.tansu import Tansu
from tests.support.tlsproxy import LoopServer, TlsProxy

#: The accounts the SASL gateway knows. The odd one exercises saslname escaping.
USERS = {"alice": "alice-secret-pw", "bob,admin=1": "p@ss,w=rd é"}

_topics = itertools.count()


@dataclass
class Stack:
    tansu: Tansu
    front: LoopServer                       # what clients connect to
    parts: list[LoopServer] = field(default_factory=list)
    gateway: SaslGateway | None = None

    @property
    def bootstrap(self) -> str:
        return self.front.address

    def new_topic(self, prefix: str, partitions: int = 3) -> str:
        name = f"{prefix}-{os.getpid()}-{next(_topics)}"
        self.tansu.create_topic(name, partitions)
        return name

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.stop()
        self.tansu.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> TestPki:
    if openssl_binary() is None:
        pytest.skip("the openssl command line tool is not installed (needed to make test certificates)")
    return make_test_pki(str(tmp_path_factory.mktemp("pki")))


def _start(front_port: int, build) -> Stack:
    tansu = Tansu(advertised_port=front_port).start()
    parts: list[LoopServer] = []
    try:
        parts = build(tansu.bootstrap)
        for p in parts:
            p.start()
    except BaseException:
        for p in reversed(parts):
            p.stop()
        tansu.stop()
        raise
    gateway = next((p for p in parts if isinstance(p, SaslGateway)), None)
    return Stack(tansu, parts[-1], parts, gateway)


@pytest.fixture(scope="session")
def tls_stack(pki):
    port = free_port()
    stack = _start(port, lambda up: [TlsProxy(up, pki.server_cert, pki.server_key, port=port)])
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def mtls_stack(pki):
    port = free_port()
    stack = _start(port, lambda up: [TlsProxy(up, pki.server_cert, pki.server_key,
                                              client_ca_file=pki.ca_file, port=port)])
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def wrong_host_stack(pki):
    port = free_port()
    stack = _start(port, lambda up: [TlsProxy(up, pki.wrong_host_cert, pki.wrong_host_key,
                                              port=port)])
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def sasl_stack():
    port = free_port()
    stack = _start(port, lambda up: [SaslGateway(up, USERS, port=port)])
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def sasl_ssl_stack(pki):
    port = free_port()

    def build(up):
        gateway = SaslGateway(up, USERS)
        return [gateway, TlsProxy(gateway.address, pki.server_cert, pki.server_key, port=port)]

    stack = _start(port, build)
    yield stack
    stack.stop()

"""Fixtures of the reliability suite: a Tansu broker behind a fault proxy, a daemon runner."""

from __future__ import annotations

import itertools
import os

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.tansu import Tansu

_names = itertools.count()


class ProxiedBroker:
    """A Tansu broker reached only through a FaultProxy (it advertises the proxy's port)."""

    def __init__(self) -> None:
        self.proxy = FaultProxy()
        port = self.proxy.reserve()
        self.tansu = Tansu(advertised_port=port).start()
        self.proxy.target_port = self.tansu.port
        self.proxy.start()

    @property
    def bootstrap(self) -> str:
        """What clients use: the proxy."""
        return self.proxy.address

    def create_topic(self, name: str, partitions: int = 3) -> None:
        self.tansu.create_topic(name, partitions)

    def close(self) -> None:
        self.proxy.stop()
        self.tansu.stop()


@pytest.fixture
def proxied():
    """A fresh Tansu behind a fresh FaultProxy (fresh, so faults never leak between tests)."""
    pb = ProxiedBroker()
    try:
        yield pb
    finally:
        pb.close()


@pytest.fixture
def ptopic(proxied, request):
    """A fresh 3-partition topic on the `proxied` broker."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:50]
    name = f"r-{base}-{os.getpid()}-{next(_names)}"
    proxied.create_topic(name, partitions=3)
    return name


@pytest.fixture
def kafkad_factory():
    """Make `KafkadProcess` daemons (not started); every one is stopped and removed afterwards."""
    from tests.support.daemon import KafkadProcess

    made: list[KafkadProcess] = []

    def make(bootstrap, **kw) -> KafkadProcess:
        d = KafkadProcess(bootstrap, **kw)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.close()

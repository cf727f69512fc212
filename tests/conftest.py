"""Fixtures shared by the whole suite: real brokers, started and cleaned up per use."""

from __future__ import annotations

import itertools
import os
import sys

import pytest

from tests.support.mockcluster import MockCluster
from tests.support.tansu import Tansu

_names = itertools.count()


@pytest.fixture(autouse=True)
def _ipc_fakes_cleanup():
    """After each test, passed or failed, stop the tests.ipc.fakes servers it left
    running and remove their temp dirs (only if some test imported the fakes)."""
    yield
    fakes = sys.modules.get("tests.ipc.fakes")
    if fakes is not None:
        fakes.cleanup()


@pytest.fixture(scope="session")
def tansu():
    """One real Tansu broker for the session (memory storage). Use `topic` for isolation."""
    broker = Tansu().start()
    yield broker
    broker.stop()


@pytest.fixture
def topic(tansu, request):
    """A fresh 3-partition topic on the session's Tansu, named after the test."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:60]
    name = f"t-{base}-{os.getpid()}-{next(_names)}"
    tansu.create_topic(name, partitions=3)
    return name


@pytest.fixture
def mock_cluster():
    """A fresh 3-broker librdkafka mock cluster."""
    mc = MockCluster(3)
    yield mc
    mc.close()

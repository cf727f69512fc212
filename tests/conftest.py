"""Fixtures shared by the whole suite: real brokers, started and cleaned up per use."""

from __future__ import annotations

import itertools
import os
import sys

import pytest

from tests.support.mockcluster import MockCluster
from tests.support.tansu import Tansu

_names = itertools.count()


# Helpers whose cleanup() ends what a test started with them: the IPC fakes'
# servers and temp dirs, the reliability harness's worker processes.
_CLEANUPS = ("tests.ipc.fakes", "tests.reliability.harness")


@pytest.fixture(autouse=True)
def _helpers_cleanup():
    """After each test, passed or failed, run the cleanup() of each helper some test imported."""
    yield
    errors = []
    for name in _CLEANUPS:
        module = sys.modules.get(name)
        if module is not None:
            try:
                module.cleanup()
            except Exception as exc:  # still run the others
                errors.append(exc)
    if errors:
        raise errors[0]


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

"""Fixtures shared by the IPC server tests: a server on a thread of its own, a raw peer."""

from __future__ import annotations

import pytest

from tests.ipc.fakes import ServerThread
from tests.ipc.test_server import Peer


@pytest.fixture
def server():
    st = ServerThread().start()
    yield st
    st.stop()


@pytest.fixture
def peer(server):
    p = Peer(server.endpoint)
    yield p
    p.close()

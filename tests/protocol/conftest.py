"""Fixtures for the protocol tests."""

from __future__ import annotations

import pytest

from .strategies import decode_all


@pytest.fixture
def strict_decode():
    """`strict_decode(cls, version, buf)`: decode a body, failing the test when bytes are left unread."""
    return decode_all

"""Shared helpers for the protocol tests: strict decoding that fails on unread bytes."""

from __future__ import annotations

import pytest

from kafkad.protocol import decode_body


def decode_all(cls, version, buf):
    """Decode a whole body; a test fails if any byte is left unread."""
    msg, end = decode_body(cls, version, buf)
    assert end == len(buf), f"{cls.__name__} v{version}: {len(buf) - end} of {len(buf)} bytes unread"
    return msg


@pytest.fixture
def strict_decode():
    """`strict_decode(cls, version, buf)`: decode, failing the test when bytes are left unread."""
    return decode_all

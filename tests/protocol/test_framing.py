"""FrameReader: whole frames from any chunking, the size cap enforced on the prefix."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafkad.protocol import FrameReader, ProtocolError, peek_correlation_id

from .strategies import FAST


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@FAST
@given(st.lists(st.binary(min_size=4, max_size=300), min_size=1, max_size=6), st.data())
def test_any_chunking_yields_the_same_frames(payloads, data):
    stream = b"".join(_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = FrameReader(1024)
    got = []
    prev = 0
    for cut in cuts + [len(stream)]:
        got += reader.feed(stream[prev:cut])
        prev = cut
    assert got == payloads
    assert reader.buffered == 0


def test_partial_frame_stays_buffered():
    reader = FrameReader(100)
    assert reader.feed(_frame(b"abcdefgh")[:7]) == []
    assert reader.buffered == 7
    assert reader.feed(b"defgh") == [b"abcdefgh"]


def test_cap_is_checked_on_the_size_prefix_alone():
    reader = FrameReader(1000)
    # Only the 4-byte prefix has arrived: the reader refuses before any payload.
    with pytest.raises(ProtocolError, match="exceeds the limit of 1000"):
        reader.feed(struct.pack(">i", 1001))
    assert reader.buffered == 0


@pytest.mark.parametrize("size", [-1, 0, 3, -(1 << 31)])
def test_sizes_too_small_for_a_header(size):
    with pytest.raises(ProtocolError, match="too small"):
        FrameReader(1000).feed(struct.pack(">i", size) + b"\x00" * 8)


def test_frame_exactly_at_the_cap():
    assert FrameReader(8).feed(_frame(b"12345678")) == [b"12345678"]


@pytest.mark.parametrize("bad", [0, 3, -5, 2.5, None])
def test_bad_cap_is_a_value_error(bad):
    with pytest.raises(ValueError, match="max_frame_bytes"):
        FrameReader(bad)


def test_peek_correlation_id():
    assert peek_correlation_id(b"\x00\x00\x01\x02rest") == 258
    with pytest.raises(ProtocolError):
        peek_correlation_id(b"\x00\x01")

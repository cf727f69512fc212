"""The pure pieces: frame encoding and scanning, entry encoding, the range set."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from kafkad.spool.frame import (HEADER_BYTES, BadRegion, Frame, SpoolEntry, decode_entry,
                                encode_entry, encode_frame, frame_at, scan)
from kafkad.spool.ranges import RangeSet


@given(st.lists(st.tuples(st.integers(1, 2**63), st.binary(max_size=300)), max_size=20))
def test_frames_round_trip_in_order(items):
    buf = b"".join(encode_frame(i, p) for i, p in items)
    got = list(scan(buf))
    assert all(isinstance(f, Frame) for f in got)
    assert [(f.frame_id, f.payload) for f in got] == items
    assert sum(f.end - f.start for f in got) == len(buf)


@given(st.binary(min_size=1, max_size=200), st.data())
def test_any_single_bit_flip_is_detected(payload, data):
    frame = bytearray(encode_frame(7, payload))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= 1 << data.draw(st.integers(0, 7))
    assert frame_at(bytes(frame), 0, len(frame)) is None


def test_scan_resyncs_after_garbage_and_reports_it():
    a, b = encode_frame(1, b"first"), encode_frame(2, b"second")
    buf = a + b"\xd5\x9a garbage \xd5" + b
    got = list(scan(buf))
    assert [type(x) for x in got] == [Frame, BadRegion, Frame]
    assert got[1] == BadRegion(len(a), len(buf) - len(b))
    assert got[2].payload == b"second"


def test_a_truncated_frame_is_a_bad_region_to_the_end():
    buf = encode_frame(1, b"ok") + encode_frame(2, b"x" * 50)[:HEADER_BYTES + 3]
    got = list(scan(buf))
    assert isinstance(got[-1], BadRegion) and got[-1].end == len(buf)


entries = st.builds(
    SpoolEntry, session_id=st.binary(min_size=1, max_size=16), seq_first=st.integers(0, 2**40),
    seq_last=st.just(2**41), topic=st.text(min_size=1, max_size=20),
    partition=st.integers(0, 10_000), keys=st.none() | st.just([b"k", None]),
    values=st.just([b"v", None]), timestamp_ms=st.integers(0, 2**50),
    settings=st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**64 - 1) | st.booleans() | st.none(),
                             max_size=4))


@given(entries)
def test_entries_round_trip(e):
    assert decode_entry(encode_entry(e)) == e


def test_unstorable_fields_are_a_type_error():
    e = SpoolEntry(b"s", 0, 0, "t", 0, None, [b"v"], 0, {"x": 2**70})
    with pytest.raises(TypeError, match="settings cannot be stored"):
        encode_entry(e)
    e = SpoolEntry(b"s", 0, 0, "t", 0, None, [object()], 0, {})
    with pytest.raises(TypeError, match="entry cannot be stored"):
        encode_entry(e)


def test_decode_refuses_other_payloads():
    with pytest.raises(ValueError, match="format version"):
        decode_entry(b"\x93\x01\x02\x03")
    with pytest.raises(ValueError):
        decode_entry(b"\xc1")


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=40),
       st.integers(0, 240), st.integers(0, 240))
def test_range_set_behaves_like_a_set(adds, lo, hi):
    rs, model = RangeSet(), set()
    for start, length in adds:
        new = rs.add_range(start, start + length)
        assert new == len(set(range(start, start + length)) - model)
        model |= set(range(start, start + length))
    assert len(rs) == len(model)
    assert all((x in rs) == (x in model) for x in range(0, 250))
    assert rs.count_in(lo, hi) == len([x for x in model if lo <= x < hi])
    assert rs.first_missing(lo) == next(x for x in range(lo, 300) if x not in model)
    gaps = [x for a, b in rs.missing_in(lo, hi) for x in range(a, b)]
    assert gaps == [x for x in range(lo, hi) if x not in model]
    starts_ends = list(rs.ranges())
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(starts_ends, starts_ends[1:]))  # merged
    assert RangeSet.from_flat(rs.flat()).flat() == rs.flat()

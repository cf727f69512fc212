"""RecordBatch v2: round trips, layout, CRC, and an independent decoder (kafka-python's)."""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafkad.protocol import (
    BATCH_OVERHEAD,
    ProtocolError,
    decode_record_batches,
    encode_record_batch,
    headers_size,
    record_size_upper_bound,
)
from kafkad.protocol.records import encode_records

from .strategies import FAST

# kafka-python 3 loads its schemas with a deprecated importlib API.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

blobs = st.one_of(st.none(), st.binary(max_size=300))
header_lists = st.lists(st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=20))),
                        max_size=3)


@st.composite
def batches(draw, codecs=st.sampled_from([0, 1, 2, 3, 4])):
    n = draw(st.integers(1, 40))
    keys = draw(st.lists(blobs, min_size=n, max_size=n))
    values = draw(st.lists(blobs, min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(0, 1 << 45), min_size=n, max_size=n))
    headers = draw(st.one_of(st.none(), st.lists(header_lists, min_size=n, max_size=n)))
    pid = draw(st.integers(-1, (1 << 63) - 1))
    return keys, values, ts, headers, pid, draw(codecs)


@FAST
@given(batches())
def test_round_trip(batch):
    keys, values, ts, headers, pid, codec = batch
    raw = encode_record_batch(keys, values, ts, producer_id=pid, producer_epoch=3, base_sequence=17,
                              codec=codec, headers=headers, base_offset=100)
    (got,) = decode_record_batches(raw)
    assert got.codec == codec
    assert (got.producer_id, got.producer_epoch, got.base_sequence) == (pid, 3, 17)
    assert got.base_timestamp == min(ts) and got.max_timestamp == max(ts)
    assert got.last_offset_delta == len(values) - 1
    assert [r.offset for r in got.records] == list(range(100, 100 + len(values)))
    assert [r.key for r in got.records] == keys
    assert [r.value for r in got.records] == values
    assert [r.timestamp for r in got.records] == ts
    want_headers = [tuple(h) for h in headers] if headers is not None else [()] * len(values)
    assert [r.headers for r in got.records] == want_headers
    if codec == 0:
        sizes = sum(record_size_upper_bound(
            None if k is None else len(k), None if v is None else len(v),
            headers_size(headers[i]) if headers else 0) for i, (k, v) in enumerate(zip(keys, values)))
        assert len(raw) <= BATCH_OVERHEAD + sizes


@FAST
@given(batches(codecs=st.sampled_from([0, 1, 3, 4])))
def test_kafka_python_reads_our_batches(batch):
    """An independent decoder (kafka-python 3's DefaultRecordBatch) agrees, CRC included."""
    from kafka.record.default_records import DefaultRecordBatch

    keys, values, ts, headers, pid, codec = batch
    raw = encode_record_batch(keys, values, ts, producer_id=pid, codec=codec, headers=headers)
    theirs = DefaultRecordBatch(bytearray(raw))
    assert theirs.validate_crc()
    recs = list(theirs)
    assert [r.key for r in recs] == keys
    assert [r.value for r in recs] == values
    assert [r.timestamp for r in recs] == ts
    if headers is not None:
        assert [list(r.headers) for r in recs] == [list(h) for h in headers]


def test_layout_of_a_one_record_batch():
    raw = encode_record_batch([b"k"], [b"val"], [1000], producer_id=7, producer_epoch=1,
                              base_sequence=5)
    base_offset, length, epoch, magic, crc = struct.unpack_from(">qiibI", raw)
    assert (base_offset, epoch, magic) == (0, -1, 2)
    assert length == len(raw) - 12
    assert crc == crc32c.crc32c(raw[21:])
    attrs, last_delta, first_ts, max_ts, pid, pepoch, seq, count = struct.unpack_from(
        ">hiqqqhii", raw, 21)
    assert (attrs, last_delta, first_ts, max_ts, pid, pepoch, seq, count) == (
        0, 0, 1000, 1000, 7, 1, 5, 1)
    # length 10 (zigzag 0x14) | attrs 0 | ts delta 0 | offset delta 0 | key len 1 "k" | value len 3 "val" | 0 headers
    assert raw[61:] == b"\x14\x00\x00\x00\x02k\x06val\x00"


def test_large_varints_beyond_the_table():
    big = b"x" * 70000
    raw = encode_record_batch([big], [None], [5])
    assert decode_record_batches(raw)[0].records[0].key == big
    n = 40000  # offset deltas past the precomputed table
    raw = encode_record_batch([None] * n, [b""] * n, list(range(n)))
    recs = decode_record_batches(raw)[0].records
    assert recs[-1].offset == n - 1 and recs[-1].timestamp == n - 1


def test_several_batches_in_one_buffer():
    a = encode_record_batch([None], [b"a"], [1], base_offset=0)
    b = encode_record_batch([None, None], [b"b", b"c"], [2, 3], codec=1, base_offset=1)
    got = decode_record_batches(a + b)
    assert [r.value for bt in got for r in bt.records] == [b"a", b"b", b"c"]
    assert [r.offset for bt in got for r in bt.records] == [0, 1, 2]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(keys=[None], values=[b"a", b"b"], timestamps_ms=[1, 2]), ValueError, "equal lengths"),
    (dict(keys=[], values=[], timestamps_ms=[]), ValueError, "at least one"),
    (dict(keys=["k"], values=[b"a"], timestamps_ms=[1]), TypeError, r"keys\[0\]"),
    (dict(keys=[None], values=[1], timestamps_ms=[1]), TypeError, r"values\[0\]"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=[1], codec=9), ValueError, "codec"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=[1], codec=2, level=3), ValueError, "level"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=[1], codec=1, level=10), ValueError, "level"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=[1], headers=[[("k", "v")]]), TypeError,
     r"headers\[0\]\[0\]"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=[1], headers=[]), ValueError, "headers"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=[1], producer_epoch=1 << 20), ValueError,
     "producer"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=[1], base_offset=1 << 63), ValueError,
     "base_offset"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=[1 << 63]), ValueError, "timestamps_ms"),
    (dict(keys=[None], values=[b"a"], timestamps_ms=["1"]), ValueError, "timestamps_ms"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        encode_record_batch(**kwargs)


def test_crc_mismatch_is_detected():
    raw = bytearray(encode_record_batch([None], [b"value"], [1]))
    raw[-2] ^= 0xFF
    with pytest.raises(ProtocolError, match="CRC"):
        decode_record_batches(bytes(raw))


def test_records_section_matches_a_slow_reference():
    """The table-driven encoder against a direct transcription of the record layout."""
    from kafkad.protocol.primitives import encode_varint

    def slow(keys, values, ts, base):
        out = b""
        for i, (k, v, t) in enumerate(zip(keys, values, ts)):
            body = b"\x00" + encode_varint(t - base) + encode_varint(i)
            body += encode_varint(-1) if k is None else encode_varint(len(k)) + k
            body += encode_varint(-1) if v is None else encode_varint(len(v)) + v
            body += encode_varint(0)
            out += encode_varint(len(body)) + body
        return out

    keys = [None, b"", b"k" * 200, None]
    values = [b"v" * 127, None, b"", b"w" * 20000]
    ts = [10, 10 + (1 << 20), 10, 11]
    assert encode_records(keys, values, ts, 10) == slow(keys, values, ts, 10)


def _slow_records(keys, values, ts, base):
    from kafkad.protocol.primitives import encode_varint

    out = []
    for i, (k, v, t) in enumerate(zip(keys, values, ts)):
        body = b"\x00" + encode_varint(t - base) + encode_varint(i)
        body += encode_varint(-1) if k is None else encode_varint(len(k)) + k
        body += encode_varint(-1) if v is None else encode_varint(len(v)) + v
        body += encode_varint(0)
        out.append(encode_varint(len(body)) + body)
    return b"".join(out)


@FAST
@given(st.lists(st.tuples(blobs, st.integers(0, 1 << 45)), min_size=1, max_size=60))
def test_keyless_records_take_the_short_path_with_the_same_bytes(rows):
    """No keys, no headers (the daemon's common case) has an encoder of its own."""
    values = [v for v, _ in rows]
    ts = [t for _, t in rows]
    keys = [None] * len(values)
    assert encode_records(keys, values, ts, min(ts)) == _slow_records(keys, values, ts, min(ts))


def test_keyless_records_past_the_offset_table_and_with_large_values():
    n = 5000                                           # offset deltas beyond the 4096-entry table
    values = [None if i % 97 == 0 else b"v" * (i % 300) for i in range(n)]
    values[4500] = b"w" * 40000                        # a length varint beyond the 2**15 table
    ts = [1_700_000_000_000 + (i // 7) for i in range(n)]
    ts[4999] += 1 << 20
    keys = [None] * n
    base = min(ts)
    assert encode_records(keys, values, ts, base) == _slow_records(keys, values, ts, base)
    (batch,) = decode_record_batches(encode_record_batch(keys, values, ts))
    assert [r.value for r in batch.records] == values and [r.timestamp for r in batch.records] == ts


@FAST
@given(blobs, st.one_of(blobs, st.binary(min_size=1 << 15, max_size=(1 << 15) + 10)),
       st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-1, (1 << 63) - 1),
       st.integers(-1, (1 << 15) - 1), st.integers(-1, (1 << 31) - 1), st.sampled_from([0, 1, 3, 4]))
def test_a_one_record_batch_takes_its_short_path_with_the_same_bytes(key, value, ts, pid, epoch, seq, codec):
    """One record without headers (a sync send's batch) has an encoder of its own.

    The reference is the general path: an empty header list per record gives the
    same bytes (a zero header count) and skips the short path. Compressed batches
    are compared decoded (a compressor need not be deterministic across calls).
    """
    kw = dict(producer_id=pid, producer_epoch=epoch, base_sequence=seq, codec=codec)
    fast = encode_record_batch([key], [value], [ts], **kw)
    ref = encode_record_batch([key], [value], [ts], headers=[()], **kw)
    if codec == 0:
        assert fast == ref
    assert decode_record_batches(fast) == decode_record_batches(ref)

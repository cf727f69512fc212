"""RecordBatch v2 (magic 2): encoding for Produce, decoding for tests and the spool.

Layout of one batch (all integers big-endian)::

    base_offset            int64    \\
    batch_length           int32     | 12 bytes before batch_length's count starts
    partition_leader_epoch int32    /
    magic                  int8     (2)
    crc                    uint32   CRC-32C of everything after this field
    attributes             int16    bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control
    last_offset_delta      int32
    base_timestamp         int64    (the smallest timestamp; every delta is >= 0)
    max_timestamp          int64
    producer_id            int64
    producer_epoch         int16
    base_sequence          int32
    record_count           int32
    records...             possibly compressed as one block

and of one record (varints are zigzag-encoded)::

    length varint | attributes int8 | timestamp_delta varlong | offset_delta varint |
    key_length varint | key | value_length varint | value |
    header_count varint | (key_length varint | key | value_length varint | value)*

Encoding speed: building records is the daemon's hottest loop.  The
encoder looks every varint below 2**15 up in a precomputed table, builds
each record as a handful of byte strings appended to one list, and joins
once; the CRC is computed over the joined buffer by the `crc32c` C extension.
A batch of one record without headers (every sync send's) skips the
general checks and loops (`_encode_one`, the same bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import count
from typing import Sequence

import crc32c

from . import codecs
from .primitives import (
    ProtocolError,
    decode_varint,
    decode_varlong,
    encode_uvarint,
)

__all__ = [
    "BATCH_OVERHEAD", "Record", "RecordBatch", "encode_record_batch", "decode_record_batches",
    "record_size_upper_bound", "headers_size",
]

MAGIC = 2
BATCH_OVERHEAD = 61
# Bytes before the field batch_length counts from (base_offset + batch_length).
_LOG_OVERHEAD = 12
_PREFIX = struct.Struct(">qiibI")        # base_offset, batch_length, leader_epoch, magic, crc
_AFTER_CRC = struct.Struct(">hiqqqhii")  # attributes .. record_count
_CRC_START = _PREFIX.size                # 21
assert _PREFIX.size + _AFTER_CRC.size == BATCH_OVERHEAD

ATTR_CODEC_MASK = 0x07
ATTR_LOG_APPEND_TIME = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20

_INT32_MAX = (1 << 31) - 1
_BLOB_TYPES = frozenset((bytes, bytearray, type(None)))
_TABLE = 1 << 15
# _ZZ[n] is the zigzag varint of the non-negative n, for n < _TABLE.
_ZZ: tuple[bytes, ...] = tuple(encode_uvarint(n << 1) for n in range(_TABLE))
_NULL = b"\x01"   # zigzag(-1): a null key or value
_ZERO = b"\x00"   # zigzag(0)

# Worst case per record, besides the key, value and header bytes:
# length (5) + attributes (1) + timestamp delta (10) + offset delta (5)
# + key length (5) + value length (5) + header count (5).
_RECORD_FIXED_MAX = 5 + 1 + 10 + 5 + 5 + 5 + 5


def _zz(n: int) -> bytes:
    """Zigzag varint of a non-negative int (table lookup below 2**15)."""
    return _ZZ[n] if n < _TABLE else encode_uvarint(n << 1)


def record_size_upper_bound(key_len: int | None, value_len: int | None, headers_len: int = 0) -> int:
    """Largest encoded size of one record with these key/value lengths (None = null).

    `headers_len` is `headers_size(headers)` for the record's headers (0 for none).
    Add `BATCH_OVERHEAD` once per batch; the bound holds before compression.
    """
    return _RECORD_FIXED_MAX + (key_len or 0) + (value_len or 0) + headers_len


def headers_size(headers: Sequence[tuple[str, bytes | None]]) -> int:
    """Largest encoded size of a record's header entries (for `record_size_upper_bound`)."""
    total = 0
    for hk, hv in headers:
        total += 10 + len(hk.encode()) + (len(hv) if hv is not None else 0)
    return total


def _encode_headers(hdrs: Sequence[tuple[str, bytes | None]], where: int) -> bytes:
    if not hdrs:
        return _ZERO
    parts = [_zz(len(hdrs))]
    for j, item in enumerate(hdrs):
        try:
            hk, hv = item
        except (TypeError, ValueError):
            raise TypeError(f"headers[{where}][{j}]: expected a (str, bytes | None) pair") from None
        if not isinstance(hk, str):
            raise TypeError(f"headers[{where}][{j}]: header key must be str, not {type(hk).__name__}")
        raw = hk.encode()
        parts.append(_zz(len(raw)))
        parts.append(raw)
        if hv is None:
            parts.append(_NULL)
        elif isinstance(hv, (bytes, bytearray)):
            parts.append(_zz(len(hv)))
            parts.append(bytes(hv))
        else:
            raise TypeError(
                f"headers[{where}][{j}]: header value must be bytes or None, not {type(hv).__name__}")
    return b"".join(parts)


def _check_inputs(keys: Sequence, values: Sequence, timestamps_ms: Sequence,
                  headers: Sequence | None) -> int:
    n = len(values)
    if len(keys) != n or len(timestamps_ms) != n:
        raise ValueError(
            f"keys, values and timestamps_ms must have equal lengths "
            f"(got {len(keys)}, {n}, {len(timestamps_ms)})")
    if headers is not None and len(headers) != n:
        raise ValueError(f"headers: {len(headers)} entries for {n} records")
    if n == 0:
        raise ValueError("values: a RecordBatch needs at least one record")
    if n > _INT32_MAX:
        raise ValueError(f"values: {n} records do not fit in one batch")
    for what, seq in (("keys", keys), ("values", values)):
        if type(seq) is list and seq.count(None) == n:
            continue    # all None (keyless records): a C-level identity scan
        # One pass collecting the types is much cheaper than isinstance per item;
        # the slow scan only runs to name the offending index.
        if not set(map(type, seq)) <= _BLOB_TYPES:
            for i, item in enumerate(seq):
                if item is not None and not isinstance(item, (bytes, bytearray)):
                    raise TypeError(
                        f"{what}[{i}]: expected bytes or None, got {type(item).__name__}")
    return n


def encode_records(keys: Sequence[bytes | None], values: Sequence[bytes | None],
                   timestamps_ms: Sequence[int], base_timestamp: int,
                   headers: Sequence[Sequence[tuple[str, bytes | None]]] | None = None) -> bytes:
    """The uncompressed records section (no batch header); inputs are assumed checked.

    Every record becomes nine byte strings appended to one list (no
    concatenation per record), its length computed from the parts' lengths;
    one join builds the section.
    """
    if headers is None and (type(keys) is list and keys.count(None) == len(keys)):
        return _encode_values_only(values, timestamps_ms, base_timestamp)
    out: list[bytes] = []
    extend = out.extend
    zz, table = _ZZ, _TABLE
    null, zero, empty = _NULL, _ZERO, b""
    tail = zero
    for i, k, v, t in zip(count(), keys, values, timestamps_ms):
        d = t - base_timestamp
        tsd = zz[d] if d < table else _zz(d)
        od = zz[i] if i < table else _zz(i)
        if k is None:
            kh, k, kl = null, empty, 0
        else:
            kl = len(k)
            kh = zz[kl] if kl < table else _zz(kl)
        if v is None:
            vh, v, vl = null, empty, 0
        else:
            vl = len(v)
            vh = zz[vl] if vl < table else _zz(vl)
        if headers is not None:
            tail = _encode_headers(headers[i], i)
        size = 1 + len(tsd) + len(od) + len(kh) + kl + len(vh) + vl + len(tail)
        extend((zz[size] if size < table else _zz(size), zero, tsd, od, kh, k, vh, v, tail))
    return b"".join(out)


# _OD_NULL_KEY[i]: the offset delta i followed by a null key, the middle of a keyless record.
_OD_NULL_KEY: tuple[bytes, ...] = tuple(_ZZ[i] + _NULL for i in range(4096))


def _encode_values_only(values: Sequence[bytes | None], timestamps_ms: Sequence[int],
                        base_timestamp: int) -> bytes:
    """`encode_records` for the common case: no keys, no headers (same bytes).

    A record is then six parts: its length, attributes and timestamp delta
    (one string per distinct delta, built once), offset delta and null key
    (from a table), the value's length, the value, and a zero header count.
    """
    out: list[bytes] = []
    extend = out.extend
    zz, table, mids, n_mids = _ZZ, _TABLE, _OD_NULL_KEY, len(_OD_NULL_KEY)
    null, zero = _NULL, _ZERO
    heads: dict[int, bytes] = {}
    for i, v, t in zip(count(), values, timestamps_ms):
        d = t - base_timestamp
        head = heads.get(d)
        if head is None:
            head = heads[d] = zero + (zz[d] if d < table else _zz(d))
        mid = mids[i] if i < n_mids else _zz(i) + null
        if v is None:
            size = len(head) + len(mid) + 2
            extend((zz[size], head, mid, null, zero))
            continue
        vl = len(v)
        vh = zz[vl] if vl < table else _zz(vl)
        size = len(head) + len(mid) + len(vh) + vl + 1
        extend((zz[size] if size < table else _zz(size), head, mid, vh, v, zero))
    return b"".join(out)


def encode_record_batch(keys: Sequence[bytes | None], values: Sequence[bytes | None],
                        timestamps_ms: Sequence[int], *, producer_id: int = -1,
                        producer_epoch: int = -1, base_sequence: int = -1, codec: int = 0,
                        level: int | None = None,
                        headers: Sequence[Sequence[tuple[str, bytes | None]]] | None = None,
                        base_offset: int = 0) -> bytes:
    """One RecordBatch v2 holding these records, ready for ProduceRequest `records`.

    `codec`: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd; `level` the codec's level
    (None = its default; see `kafkad.protocol.codecs`).  The batch's base
    timestamp is the smallest timestamp, so every timestamp delta is >= 0.
    """
    if headers is None and len(values) == 1 and len(keys) == 1 and len(timestamps_ms) == 1:
        one = _encode_one(keys[0], values[0], timestamps_ms[0], producer_id, producer_epoch,
                          base_sequence, codec, level, base_offset)
        if one is not None:
            return one
    n = _check_inputs(keys, values, timestamps_ms, headers)
    try:
        base_ts = min(timestamps_ms)
        max_ts = max(timestamps_ms)
    except TypeError:
        raise TypeError("timestamps_ms: expected a sequence of ints") from None
    if not isinstance(base_ts, int) or not isinstance(max_ts, int) or base_ts < -(1 << 63) or \
            max_ts >= (1 << 63):
        raise ValueError("timestamps_ms: expected int64 milliseconds")
    compress = codecs.compressor(codec, level)
    records = encode_records(keys, values, timestamps_ms, base_ts, headers)
    if compress is not None:
        records = compress(records)
    try:
        tail = _AFTER_CRC.pack(codec, n - 1, base_ts, max_ts, producer_id, producer_epoch,
                               base_sequence, n)
    except struct.error as exc:
        raise ValueError(f"producer_id/producer_epoch/base_sequence out of range: {exc}") from None
    crc = crc32c.crc32c(records, crc32c.crc32c(tail))
    batch_length = BATCH_OVERHEAD - _LOG_OVERHEAD + len(records)
    if batch_length > _INT32_MAX:
        raise ValueError(f"a batch of {batch_length} bytes exceeds the protocol limit")
    try:
        prefix = _PREFIX.pack(base_offset, batch_length, -1, MAGIC, crc)
    except struct.error as exc:
        raise ValueError(f"base_offset: {base_offset!r} is not an int64 ({exc})") from None
    return b"".join((prefix, tail, records))


# attributes 0, timestamp delta 0, offset delta 0: the middle of a batch's only record
_ONE_HEAD = b"\x00\x00\x00"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _encode_one(key, value, ts, producer_id, producer_epoch, base_sequence, codec, level,
                base_offset):
    """`encode_record_batch` of one record without headers (a sync send's batch), or None.

    The same bytes, without the general checks and loops; None for anything
    unusual (a type or value the general path must check and name).
    """
    if type(ts) is not int or not _INT64_MIN <= ts <= _INT64_MAX:
        return None
    if key is None:
        kpart = _NULL
    elif type(key) is bytes and len(key) < _TABLE:
        kpart = _ZZ[len(key)] + key
    else:
        return None
    if value is None:
        vpart = _NULL
    elif type(value) is bytes and len(value) < _TABLE:
        vpart = _ZZ[len(value)] + value
    else:
        return None
    size = 4 + len(kpart) + len(vpart)     # _ONE_HEAD, the parts, a zero header count
    if size >= _TABLE:
        return None
    records = b"".join((_ZZ[size], _ONE_HEAD, kpart, vpart, _ZERO))
    if codec or level is not None:
        compress = codecs.compressor(codec, level)   # raises for an unknown codec or level
        if compress is not None:
            records = compress(records)
    try:
        tail = _AFTER_CRC.pack(codec, 0, ts, ts, producer_id, producer_epoch, base_sequence, 1)
        prefix = _PREFIX.pack(base_offset, BATCH_OVERHEAD - _LOG_OVERHEAD + len(records), -1, MAGIC,
                              crc32c.crc32c(records, crc32c.crc32c(tail)))
    except struct.error:
        return None
    return b"".join((prefix, tail, records))


@dataclass(frozen=True, slots=True)
class Record:
    """One record read back: absolute offset and timestamp, key, value, headers."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """One RecordBatch read back, with its records decompressed and decoded."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records: tuple[Record, ...]

    @property
    def codec(self) -> int:
        return self.attributes & ATTR_CODEC_MASK

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)

    @property
    def log_append_time(self) -> bool:
        return bool(self.attributes & ATTR_LOG_APPEND_TIME)


def _read_bytes(buf: bytes, pos: int, limit: int, what: str) -> tuple[bytes | None, int]:
    n, pos = decode_varint(buf, pos)
    if n == -1:
        return None, pos
    end = pos + n
    if n < 0 or end > limit:
        raise ProtocolError(f"{what}: bad length {n} at byte {pos}")
    return buf[pos:end], end


def _decode_records(buf: bytes, count: int, base_offset: int, base_ts: int) -> tuple[Record, ...]:
    if count > len(buf):  # every record takes several bytes
        raise ProtocolError(f"record count {count} cannot fit in {len(buf)} bytes")
    out = []
    pos = 0
    for i in range(count):
        length, pos = decode_varint(buf, pos)
        end = pos + length
        if length < 0 or end > len(buf):
            raise ProtocolError(f"record {i}: length {length} runs past the records section")
        rec = buf  # fields are read in place; every read is bounded by `end`
        p = pos + 1  # attributes (unused in v2)
        if p > end:
            raise ProtocolError(f"record {i}: empty")
        ts_delta, p = decode_varlong(rec, p)
        off_delta, p = decode_varint(rec, p)
        key, p = _read_bytes(rec, p, end, f"record {i} key")
        value, p = _read_bytes(rec, p, end, f"record {i} value")
        hcount, p = decode_varint(rec, p)
        if hcount < 0 or hcount > end - p:
            raise ProtocolError(f"record {i}: bad header count {hcount}")
        hdrs = []
        for j in range(hcount):
            hk, p = _read_bytes(rec, p, end, f"record {i} header {j} key")
            if hk is None:
                raise ProtocolError(f"record {i} header {j}: null key")
            hv, p = _read_bytes(rec, p, end, f"record {i} header {j} value")
            try:
                hdrs.append((hk.decode(), hv))
            except UnicodeDecodeError:
                raise ProtocolError(f"record {i} header {j}: key is not UTF-8") from None
        if p != end:
            raise ProtocolError(f"record {i}: length says {length} bytes, fields use {p - pos}")
        out.append(Record(base_offset + off_delta, base_ts + ts_delta, key, value, tuple(hdrs)))
        pos = end
    if pos != len(buf):
        raise ProtocolError(f"{len(buf) - pos} bytes left after {count} records")
    return tuple(out)


def decode_record_batches(buf: bytes) -> list[RecordBatch]:
    """Every RecordBatch in `buf` (as sent in Produce or stored in the spool).

    Checks magic, batch length, CRC-32C and every record's length;
    anything malformed raises ProtocolError.
    """
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    batches = []
    pos = 0
    end = len(buf)
    while pos < end:
        if end - pos < BATCH_OVERHEAD:
            raise ProtocolError(f"truncated batch header at byte {pos}")
        base_offset, batch_length, leader_epoch, magic, crc = _PREFIX.unpack_from(buf, pos)
        if magic != MAGIC:
            raise ProtocolError(f"batch at byte {pos}: magic {magic} is not 2")
        total = _LOG_OVERHEAD + batch_length
        if batch_length < BATCH_OVERHEAD - _LOG_OVERHEAD or pos + total > end:
            raise ProtocolError(f"batch at byte {pos}: bad batch_length {batch_length}")
        body = buf[pos + _CRC_START:pos + total]
        actual = crc32c.crc32c(body)
        if actual != crc:
            raise ProtocolError(f"batch at byte {pos}: CRC-32C {actual:#010x} != stored {crc:#010x}")
        (attributes, last_delta, base_ts, max_ts, pid, epoch, base_seq,
         count) = _AFTER_CRC.unpack_from(body, 0)
        if count < 0:
            raise ProtocolError(f"batch at byte {pos}: negative record count {count}")
        records = body[_AFTER_CRC.size:]
        codec = attributes & ATTR_CODEC_MASK
        if codec:
            records = codecs.decompress(codec, records)
        recs = _decode_records(records, count, base_offset, base_ts)
        if count and recs[-1].offset - base_offset != last_delta:
            raise ProtocolError(
                f"batch at byte {pos}: last_offset_delta {last_delta} does not match the records")
        batches.append(RecordBatch(base_offset, batch_length, leader_epoch, magic, crc, attributes,
                                   last_delta, base_ts, max_ts, pid, epoch, base_seq, recs))
        pos += total
    return batches

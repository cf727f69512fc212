"""Fast paths for Produce, the request of every send: anything unusual is left to the schema.

Every Produce request kafkad sends is answered by one ProduceResponse, so its
decoding is on the path of every sync send. The schema decoder (`schema`)
walks the declaration field by field through closures, about 10-20 us for a
one-partition answer; the answers a healthy cluster sends have one shape,
which this module reads with a few `struct` calls: per partition no record
errors, no error message and no tagged fields, and no tagged fields
anywhere else. `decode_produce_response` returns None for any other frame
(an answer with record errors, KIP-951 leader hints, unknown tagged fields,
a varint longer than one byte, a truncated or malformed frame), and the
caller decodes it with the schema decoder, which gives the exact error for
a bad frame. The result, when there is one, equals what the schema decoder
returns for the same bytes (tests/protocol/test_produce_fast.py checks it).

`decode_produce_raw` is the same reading without the message objects:
plain tuples, for the engine's answer to a one-batch request (a sync send's).

`encode_produce_request` writes the frame `encode_request` writes for a
ProduceRequest (byte for byte, checked by the same tests) in about a third
of the time; for anything it does not expect (a wrong type, a value out of
range) it returns None and `encode_request` runs the schema encoder, which
raises the error naming the field. It is `produce_body` (the body, from
plain values) framed by `produce_frame` (size prefix and header). The
daemon's own requests skip both: the engine keeps a request's plain values
and the connection writes them with its correlation id in one join
(`produce_request`); the two-step form serves `encode_request` and the tests.
"""

from __future__ import annotations

import struct

from .messages import ProduceRequest, ProduceResponse
from .primitives import encode_uvarint

__all__ = ["decode_produce_raw", "decode_produce_response", "encode_produce_request",
           "produce_body", "produce_frame", "produce_request"]

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
# index, error_code, base_offset, log_append_time_ms (v2+) [, log_start_offset (v5+)]
_PART_V3 = struct.Struct(">ihqq")
_PART_V5 = struct.Struct(">ihqqq")

_HEAD = struct.Struct(">ihhi")     # size, api_key, api_version, correlation_id
_ACKS_TIMEOUT = struct.Struct(">hi")
_I16_LEN = struct.Struct(">h")
_NULL_I16 = b"\xff\xff"
_NULL_I32 = b"\xff\xff\xff\xff"
_ONE = b"\x00\x00\x00\x01"       # an int32 1: a one-element array

_Topic = ProduceResponse.TopicProduceResponse
_Part = ProduceResponse.PartitionProduceResponse

# One-byte unsigned varints (0..127): the compact lengths of nearly every request.
_UVARINT1 = tuple(bytes((i,)) for i in range(0x80))


def _uvarint(n: int) -> bytes:
    return _UVARINT1[n] if 0 <= n < 0x80 else encode_uvarint(n)


# (client_id, header v2) -> its header bytes (one daemon has one client_id)
_client_ids: dict[tuple, bytes] = {}


def decode_produce_response(version: int, frame: bytes, strict: bool = False):
    """(correlation_id, ProduceResponse) for the usual shape of answer, else None.

    `frame` is a whole response frame without its size prefix; `version` is
    3-11 (the caller checked it). With `strict`, bytes left after the body
    also give None (the schema decoder then reports them).
    """
    raw = decode_produce_raw(version, frame, strict)
    if raw is None:
        return None
    corr, topics, throttle = raw
    if version >= 5:
        out = tuple(_Topic(name=name, partition_responses=tuple(
            _Part(index=f[0], error_code=f[1], base_offset=f[2], log_append_time_ms=f[3],
                  log_start_offset=f[4]) for f in parts)) for name, parts in topics)
    else:
        out = tuple(_Topic(name=name, partition_responses=tuple(
            _Part(index=f[0], error_code=f[1], base_offset=f[2], log_append_time_ms=f[3])
            for f in parts)) for name, parts in topics)
    return corr, ProduceResponse(responses=out, throttle_time_ms=throttle)


def decode_produce_raw(version: int, frame: bytes, strict: bool = False):
    """`decode_produce_response` without the message objects: (corr, topics, throttle_time_ms) or None.

    `topics` is a list of (name, parts), `parts` a list of (index,
    error_code, base_offset, log_append_time_ms[, log_start_offset from v5])
    tuples: the same frames give None, the same values otherwise. The engine
    reads the answer to a one-batch request from this (no objects built).
    """
    try:
        return _decode(version, frame, strict)
    except (struct.error, IndexError, UnicodeDecodeError):
        return None


def _decode(version: int, frame: bytes, strict: bool):
    flexible = version >= 9
    part = _PART_V5 if version >= 5 else _PART_V3
    psize = part.size
    with_errors = version >= 8     # record_errors, error_message
    corr = _I32.unpack_from(frame, 0)[0]
    pos = 4
    if flexible:
        if frame[pos]:             # response header tagged fields
            return None
        pos += 1
        n = frame[pos] - 1         # compact array: length + 1, in one byte below 128
        pos += 1
        if n < 0 or n >= 127:
            return None
    else:
        n = _I32.unpack_from(frame, pos)[0]
        pos += 4
        if n < 0:
            return None
    topics = []
    for _ in range(n):
        if flexible:
            size = frame[pos] - 1
            pos += 1
            if size < 0 or size >= 127:
                return None
        else:
            size = _I16.unpack_from(frame, pos)[0]
            pos += 2
            if size < 0:
                return None
        end = pos + size
        if end > len(frame):
            return None
        name = frame[pos:end].decode("utf-8")
        pos = end
        if flexible:
            count = frame[pos] - 1
            pos += 1
            if count < 0 or count >= 127:
                return None
        else:
            count = _I32.unpack_from(frame, pos)[0]
            pos += 4
            if count < 0:
                return None
        parts = []
        for _ in range(count):
            parts.append(part.unpack_from(frame, pos))
            pos += psize
            if with_errors:
                if flexible:
                    # record_errors empty (1), error_message null (0), no tagged fields (0)
                    if frame[pos] != 1 or frame[pos + 1] != 0 or frame[pos + 2] != 0:
                        return None
                    pos += 3
                else:
                    if _I32.unpack_from(frame, pos)[0] != 0 or _I16.unpack_from(frame, pos + 4)[0] != -1:
                        return None
                    pos += 6
        if flexible:
            if frame[pos]:         # topic tagged fields
                return None
            pos += 1
        topics.append((name, parts))
    throttle = _I32.unpack_from(frame, pos)[0]
    pos += 4
    if flexible:
        if frame[pos]:             # top-level tagged fields (node_endpoints, ...)
            return None
        pos += 1
    if strict and pos != len(frame):
        return None
    return corr, topics, throttle


def encode_produce_request(msg, version: int, correlation_id: int, client_id: str | None):
    """The request frame (size prefix included) `encode_request` makes for `msg`, or None.

    None when `msg` is not a ProduceRequest of the expected types and ranges:
    the caller then uses the schema encoder, which raises the precise error.
    """
    if type(msg) is not ProduceRequest or not 3 <= version <= 11:
        return None
    try:
        return _encode(msg, version, correlation_id, client_id)
    except (TypeError, ValueError, struct.error, AttributeError, UnicodeError):
        return None


def _encode(msg, version: int, correlation_id: int, client_id: str | None):
    topics = msg.topic_data
    if type(topics) not in (list, tuple):
        return None
    PTD, PPD = ProduceRequest.TopicProduceData, ProduceRequest.PartitionProduceData
    topic_data = []
    for t in topics:
        if type(t) is not PTD:
            return None
        parts_ = t.partition_data
        if type(parts_) not in (list, tuple):
            return None
        pairs = []
        for p in parts_:
            if type(p) is not PPD:
                return None
            pairs.append((p.index, p.records))
        topic_data.append((t.name, pairs))
    body = produce_body(version, msg.acks, msg.timeout_ms, topic_data, msg.transactional_id)
    return produce_frame(version, correlation_id, client_id, body)


def produce_body(version: int, acks: int, timeout_ms: int, topic_data,
                 transactional_id: str | None = None) -> bytes:
    """A ProduceRequest body (what follows the request header), from plain values.

    `topic_data` is a sequence of (topic name, [(partition index, records
    bytes or None), ...]). The bytes are those the schema encoder writes for
    the same ProduceRequest; `produce_frame` puts the header in front. Values
    out of range raise (struct.error, ValueError, TypeError).
    """
    return b"".join(_body_parts(version, acks, timeout_ms, topic_data, transactional_id))


def produce_request(version: int, correlation_id: int, client_id: str | None, acks: int,
                    timeout_ms: int, topic_data) -> bytes:
    """`produce_frame(version, correlation_id, client_id, produce_body(...))` in one join.

    What the engine's Produce requests are written as: no body is kept
    beside the batches while the request is in flight, and the records are
    copied once, into the frame handed to the socket.
    """
    parts = _body_parts(version, acks, timeout_ms, topic_data, None)
    cid = _client_id_bytes(client_id, version >= 9)
    return b"".join((_HEAD.pack(len(cid) + sum(map(len, parts)) + 8, ProduceRequest.API_KEY, version,
                               correlation_id), cid, *parts))


def _body_parts(version: int, acks: int, timeout_ms: int, topic_data, transactional_id):
    flexible = version >= 9
    if transactional_id is None and len(topic_data) == 1 and len(topic_data[0][1]) == 1:
        # one partition (a sync send's request): one join, no loops
        name, ((index, records),) = topic_data[0]
        if type(records) is bytes:
            raw = name.encode()
            if flexible:
                return (b"\x00", _ACKS_TIMEOUT.pack(acks, timeout_ms), b"\x02",
                        _uvarint(len(raw) + 1), raw, b"\x02", _I32.pack(index),
                        _uvarint(len(records) + 1), records, b"\x00\x00\x00")
            if len(raw) <= 0x7FFF:
                return (_NULL_I16, _ACKS_TIMEOUT.pack(acks, timeout_ms), _ONE,
                        _I16_LEN.pack(len(raw)), raw, _ONE, _I32.pack(index),
                        _I32.pack(len(records)), records)
    parts: list = []
    add = parts.append
    tid = transactional_id
    if flexible:
        if tid is None:
            add(b"\x00")
        else:
            raw = tid.encode()
            add(_uvarint(len(raw) + 1) + raw)
    else:
        if tid is None:
            add(_NULL_I16)
        else:
            raw = tid.encode()
            if len(raw) > 0x7FFF:
                raise ValueError("transactional_id: too long")
            add(_I16_LEN.pack(len(raw)) + raw)
    add(_ACKS_TIMEOUT.pack(acks, timeout_ms))
    add(_uvarint(len(topic_data) + 1) if flexible else _I32.pack(len(topic_data)))
    for name, parts_ in topic_data:
        raw = name.encode()
        if flexible:
            add(_uvarint(len(raw) + 1) + raw)
            add(_uvarint(len(parts_) + 1))
        else:
            if len(raw) > 0x7FFF:
                raise ValueError("name: too long")
            add(_I16_LEN.pack(len(raw)) + raw)
            add(_I32.pack(len(parts_)))
        for index, records in parts_:
            add(_I32.pack(index))
            if records is None:
                add(b"\x00" if flexible else _NULL_I32)
            elif type(records) is bytes:
                if flexible:
                    add(_uvarint(len(records) + 1))
                    add(records)
                    add(b"\x00")  # partition tagged fields
                    continue
                add(_I32.pack(len(records)))
                add(records)
            else:
                raise TypeError(f"records: expected bytes or None, got {type(records).__name__}")
            if flexible:
                add(b"\x00")      # partition tagged fields
        if flexible:
            add(b"\x00")          # topic tagged fields
    if flexible:
        add(b"\x00")              # request tagged fields
    return parts


def produce_frame(version: int, correlation_id: int, client_id: str | None, body: bytes) -> bytes:
    """The whole Produce request frame (size prefix and header v1/v2) around `body`.

    The same bytes as `encode_request` for the ProduceRequest `body` encodes;
    a connection frames each request with its own correlation id.
    """
    cid = _client_id_bytes(client_id, version >= 9)
    # size counts api_key, api_version, correlation_id (8), the client id and the body
    return b"".join((_HEAD.pack(len(cid) + len(body) + 8, ProduceRequest.API_KEY, version,
                               correlation_id), cid, body))


def _client_id_bytes(client_id: str | None, flexible: bool) -> bytes:
    """The request header's client id (and, from header v2, its empty tagged fields)."""
    cid = _client_ids.get((client_id, flexible))
    if cid is None:
        if client_id is None:
            cid = _NULL_I16
        else:
            raw = client_id.encode()
            if len(raw) > 0x7FFF:
                raise ValueError("client_id: too long")
            cid = _I16_LEN.pack(len(raw)) + raw
        if flexible:
            cid += b"\x00"      # header v2: client_id stays a classic string; no tagged fields
        if len(_client_ids) < 16:
            _client_ids[(client_id, flexible)] = cid
    return cid

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

`encode_produce_request` writes the frame `encode_request` writes for a
ProduceRequest (byte for byte, checked by the same tests) in about a third
of the time; for anything it does not expect (a wrong type, a value out of
range) it returns None and `encode_request` runs the schema encoder, which
raises the error naming the field.
"""

from __future__ import annotations

import struct

from .messages import ProduceRequest, ProduceResponse
from .primitives import encode_uvarint

__all__ = ["decode_produce_response", "encode_produce_request"]

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

_Topic = ProduceResponse.TopicProduceResponse
_Part = ProduceResponse.PartitionProduceResponse

# One-byte unsigned varints (0..127): the compact lengths of nearly every request.
_UVARINT1 = tuple(bytes((i,)) for i in range(0x80))


def _uvarint(n: int) -> bytes:
    return _UVARINT1[n] if 0 <= n < 0x80 else encode_uvarint(n)


# client_id -> its classic string encoding (one daemon has one client_id)
_client_ids: dict[str, bytes] = {}


def decode_produce_response(version: int, frame: bytes, strict: bool = False):
    """(correlation_id, ProduceResponse) for the usual shape of answer, else None.

    `frame` is a whole response frame without its size prefix; `version` is
    3-11 (the caller checked it). With `strict`, bytes left after the body
    also give None (the schema decoder then reports them).
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
            fields = part.unpack_from(frame, pos)
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
            if version >= 5:
                parts.append(_Part(index=fields[0], error_code=fields[1], base_offset=fields[2],
                                   log_append_time_ms=fields[3], log_start_offset=fields[4]))
            else:
                parts.append(_Part(index=fields[0], error_code=fields[1], base_offset=fields[2],
                                   log_append_time_ms=fields[3]))
        if flexible:
            if frame[pos]:         # topic tagged fields
                return None
            pos += 1
        topics.append(_Topic(name=name, partition_responses=tuple(parts)))
    throttle = _I32.unpack_from(frame, pos)[0]
    pos += 4
    if flexible:
        if frame[pos]:             # top-level tagged fields (node_endpoints, ...)
            return None
        pos += 1
    if strict and pos != len(frame):
        return None
    return corr, ProduceResponse(responses=tuple(topics), throttle_time_ms=throttle)


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
    flexible = version >= 9
    parts: list = [b""]            # the header goes in front once the size is known
    add = parts.append
    if client_id is None:
        cid = _NULL_I16
    else:
        cid = _client_ids.get(client_id)
        if cid is None:
            raw = client_id.encode()
            if len(raw) > 0x7FFF:
                return None
            cid = _I16_LEN.pack(len(raw)) + raw
            if len(_client_ids) < 16:
                _client_ids[client_id] = cid
    tid = msg.transactional_id
    if flexible:
        add(cid + b"\x00")        # header v2: client_id stays a classic string; no tagged fields
        if tid is None:
            add(b"\x00")
        else:
            raw = tid.encode()
            add(_uvarint(len(raw) + 1) + raw)
    else:
        add(cid)
        if tid is None:
            add(_NULL_I16)
        else:
            raw = tid.encode()
            if len(raw) > 0x7FFF:
                return None
            add(_I16_LEN.pack(len(raw)) + raw)
    add(_ACKS_TIMEOUT.pack(msg.acks, msg.timeout_ms))
    topics = msg.topic_data
    if type(topics) not in (list, tuple):
        return None
    add(_uvarint(len(topics) + 1) if flexible else _I32.pack(len(topics)))
    PTD, PPD = ProduceRequest.TopicProduceData, ProduceRequest.PartitionProduceData
    for t in topics:
        if type(t) is not PTD:
            return None
        raw = t.name.encode()
        parts_ = t.partition_data
        if type(parts_) not in (list, tuple):
            return None
        if flexible:
            add(_uvarint(len(raw) + 1) + raw)
            add(_uvarint(len(parts_) + 1))
        else:
            if len(raw) > 0x7FFF:
                return None
            add(_I16_LEN.pack(len(raw)) + raw)
            add(_I32.pack(len(parts_)))
        for p in parts_:
            if type(p) is not PPD:
                return None
            records = p.records
            add(_I32.pack(p.index))
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
                return None
            if flexible:
                add(b"\x00")      # partition tagged fields
        if flexible:
            add(b"\x00")          # topic tagged fields
    if flexible:
        add(b"\x00")              # request tagged fields
    size = sum(map(len, parts)) + 8   # + api_key, api_version, correlation_id
    parts[0] = _HEAD.pack(size, ProduceRequest.API_KEY, version, correlation_id)
    return b"".join(parts)

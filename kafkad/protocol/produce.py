"""A fast decoder for the usual Produce answer; anything else is left to the schema decoder.

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
"""

from __future__ import annotations

import struct

from .messages import ProduceResponse

__all__ = ["decode_produce_response"]

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
# index, error_code, base_offset, log_append_time_ms (v2+) [, log_start_offset (v5+)]
_PART_V3 = struct.Struct(">ihqq")
_PART_V5 = struct.Struct(">ihqqq")

_Topic = ProduceResponse.TopicProduceResponse
_Part = ProduceResponse.PartitionProduceResponse


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

"""Malformed input never escapes as anything but ProtocolError, and is never read past its end."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafkad.protocol import (
    ApiVersionsResponse,
    MetadataResponse,
    ProduceResponse,
    ProtocolError,
    decode_record_batches,
    decode_request,
    decode_response,
    encode_record_batch,
    encode_request,
    encode_response,
)
from kafkad.protocol.messages import REQUESTS, RESPONSES
from kafkad.protocol.primitives import decode_uvarint, decode_varlong

from .strategies import FAST, message_strategy

RESP = [(cls, v) for cls in RESPONSES for v in range(cls.MIN_VERSION, cls.MAX_VERSION + 1)]
REQ = [(cls, v) for cls in REQUESTS for v in range(cls.MIN_VERSION, cls.MAX_VERSION + 1)]


def _only_protocol_errors(fn, *args):
    try:
        fn(*args)
    except ProtocolError:
        pass


@pytest.mark.parametrize("cls,version", RESP, ids=[f"{c.__name__}-v{v}" for c, v in RESP])
def test_every_truncation_of_a_response_is_a_protocol_error(cls, version):
    @FAST
    @given(message_strategy(cls, version, long=False))  # every cut is decoded
    def check(msg):
        if cls is ApiVersionsResponse:
            msg = type(msg)(api_keys=msg.api_keys)  # error 35 bodies take the lenient path
        frame = encode_response(msg, version, 1)[4:]
        for cut in range(len(frame)):
            with pytest.raises(ProtocolError):
                decode_response(cls, version, frame[:cut], strict=True)
        with pytest.raises(ProtocolError, match="left over"):
            decode_response(cls, version, frame + b"\x00", strict=True)
        assert decode_response(cls, version, frame + b"\x00")[1] == msg  # lenient by default
    check()


@pytest.mark.parametrize("cls,version", REQ, ids=[f"{c.__name__}-v{v}" for c, v in REQ])
def test_every_truncation_of_a_request_is_a_protocol_error(cls, version):
    @FAST
    @given(message_strategy(cls, version, long=False))  # every cut is decoded
    def check(msg):
        frame = encode_request(msg, version, 1, "c")[4:]
        for cut in range(len(frame)):
            with pytest.raises(ProtocolError):
                decode_request(frame[:cut])
    check()


@FAST
@given(st.sampled_from(RESP), st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_errors(cls_version, junk):
    cls, version = cls_version
    _only_protocol_errors(decode_response, cls, version, junk)
    _only_protocol_errors(decode_request, junk)


@FAST
@given(st.binary(max_size=300))
def test_random_record_batches_only_raise_protocol_errors(junk):
    _only_protocol_errors(decode_record_batches, junk)


@FAST
@given(st.sampled_from([0, 1, 2, 3, 4]), st.data())
def test_corrupted_batches_are_caught(codec, data):
    raw = bytearray(encode_record_batch([b"key", None], [b"value" * 20, b"v"], [1, 2], codec=codec))
    # base_offset (0-7) and partition_leader_epoch (12-15) are outside the CRC
    # by design (the broker rewrites them); every other byte is checked.
    pos = data.draw(st.integers(8, len(raw) - 1).filter(lambda p: not 12 <= p < 16))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ProtocolError):
        decode_record_batches(bytes(raw))


def test_truncated_batches():
    raw = encode_record_batch([None], [b"v" * 50], [1])
    for cut in range(1, len(raw)):
        with pytest.raises(ProtocolError):
            decode_record_batches(raw[:cut])


def test_huge_array_count_is_refused_before_looping():
    # MetadataResponse v1: brokers array claiming 2**31-1 entries in a 10-byte frame.
    frame = struct.pack(">ii", 1, 0x7FFFFFFF) + b"\x00\x00"
    with pytest.raises(ProtocolError, match="cannot fit"):
        decode_response(MetadataResponse, 1, frame)


def test_negative_lengths():
    # ProduceResponse v3: one topic whose name has length -2.
    frame = struct.pack(">iih", 1, 1, -2)
    with pytest.raises(ProtocolError, match="string length -2"):
        decode_response(ProduceResponse, 3, frame)
    # Null where the schema does not allow it (topic name, v3).
    frame = struct.pack(">iih", 1, 1, -1)
    with pytest.raises(ProtocolError, match="name"):
        decode_response(ProduceResponse, 3, frame)


def test_errors_name_the_field():
    # ProduceResponse v3 truncated in the middle of partition_responses[0].base_offset.
    frame = struct.pack(">iih1siihq", 1, 1, 1, b"t", 1, 0, 0, 5)[:-4]
    with pytest.raises(ProtocolError, match=r"partition_responses.*base_offset"):
        decode_response(ProduceResponse, 3, frame)


def test_overlong_varints():
    with pytest.raises(ProtocolError, match="longer than 5"):
        decode_uvarint(b"\xff" * 6, 0)
    with pytest.raises(ProtocolError, match="longer than 10"):
        decode_varlong(b"\xff" * 11, 0)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_uvarint(b"\xff\xff", 0)


def test_tagged_field_running_past_the_end():
    body = bytearray(encode_response(MetadataResponse(), 9, 1)[4:])
    body[-1:] = b"\x01\x00\x7f"  # tag 0 claims 127 bytes that are not there
    with pytest.raises(ProtocolError, match="tagged field"):
        decode_response(MetadataResponse, 9, bytes(body))

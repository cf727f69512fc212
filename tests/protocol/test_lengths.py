"""Length prefixes at the sizes where their encoding changes, as exact bytes.

Round trips cannot catch a length written in a wrong but self-consistent
form (say 0xFF and four bytes for anything over 127): the decoder reads back
what the encoder wrote. These expected bytes are written out by hand from the
Kafka protocol guide: a compact length is the unsigned varint (LEB128) of
length + 1, 0 for null; a classic string length is an int16, a classic bytes
or array length an int32, -1 for null. Each varint below is worked out in
its comment, not computed by kafkad.
"""

from __future__ import annotations

import pytest

from kafkad.protocol import (
    ApiVersionsRequest,
    MetadataRequest,
    ProduceRequest,
    ProtocolError,
    decode_request,
    encode_body,
    encode_request,
)
from kafkad.protocol.primitives import (
    BYTES,
    INT8,
    STRING,
    ArrayType,
    decode_uvarint,
    encode_uvarint,
)
from kafkad.protocol.produce import produce_request

H = bytes.fromhex

# n -> unsigned varint of n: seven bits a byte, low group first, high bit set
# on every byte but the last.
UVARINTS = [
    (0, "00"),
    (1, "01"),
    (127, "7f"),                       # the largest one-byte varint
    (128, "8001"),                     # 0000000 | 1
    (129, "8101"),                     # 0000001 | 1
    (255, "ff01"),                     # 1111111 | 1
    (256, "8002"),                     # 0000000 | 2
    (16383, "ff7f"),                   # 2**14 - 1: the largest two-byte varint
    (16384, "808001"),                 # 2**14
    (16385, "818001"),
    (2097151, "ffff7f"),               # 2**21 - 1
    (2097152, "80808001"),             # 2**21
    (2**31 - 1, "ffffffff07"),         # the largest int32 length: five bytes
]


@pytest.mark.parametrize("n,wire", UVARINTS, ids=[str(n) for n, _ in UVARINTS])
def test_unsigned_varints(n, wire):
    assert encode_uvarint(n) == H(wire)
    assert decode_uvarint(H(wire) + b"\xaa", 0) == (n, len(H(wire)))
    for cut in range(len(H(wire))):
        with pytest.raises(ProtocolError):
            decode_uvarint(H(wire)[:cut], 0)


# Compact (flexible versions) length n -> varint of n + 1.
COMPACT = [
    (0, "01"),
    (1, "02"),
    (126, "7f"),
    (127, "8001"),     # 128: the first length with a two-byte prefix
    (128, "8101"),     # 129
    (254, "ff01"),     # 255
    (255, "8002"),     # 256
    (16382, "ff7f"),   # 16383: the last two-byte prefix
    (16383, "808001"),  # 16384: the first three-byte prefix
    (16384, "818001"),  # 16385
]
# Classic string length n -> int16; classic bytes/array length n -> int32.
CLASSIC = [
    (0, "0000", "00000000"),
    (126, "007e", "0000007e"),
    (127, "007f", "0000007f"),
    (128, "0080", "00000080"),
    (255, "00ff", "000000ff"),
    (256, "0100", "00000100"),
    (16383, "3fff", "00003fff"),
    (16384, "4000", "00004000"),
    (32767, "7fff", "00007fff"),   # the largest classic string
    (65536, None, "00010000"),
]


def _enc(wire_type, flexible, value, nullable=True):
    parts = []
    wire_type.encoder(flexible, nullable)(parts, value)
    return b"".join(parts)


def _dec(wire_type, flexible, buf, nullable=True):
    return wire_type.decoder(flexible, nullable)(buf, 0)


def _payloads(n):
    """(wire type, value, the bytes after the prefix) of length n for each type."""
    text = "é" + "x" * (n - 2) if n >= 2 else "x" * n  # n bytes of UTF-8, not all ASCII
    raw = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    return [(STRING, text, text.encode()), (BYTES, raw, raw),
            (ArrayType(INT8), (7,) * n, b"\x07" * n)]


@pytest.mark.parametrize("n,prefix", COMPACT, ids=[str(n) for n, _ in COMPACT])
def test_compact_lengths(n, prefix):
    for wt, value, payload in _payloads(n):
        wire = H(prefix) + payload
        assert _enc(wt, True, value) == wire, wt.name
        assert _dec(wt, True, wire + b"\xaa") == (value, len(wire)), wt.name
        # A prefix cut short is malformed, never read as a shorter length.
        for cut in range(1, len(H(prefix))):
            with pytest.raises(ProtocolError):
                _dec(wt, True, H(prefix)[:cut])


@pytest.mark.parametrize("n,short,wide", CLASSIC, ids=[str(n) for n, *_ in CLASSIC])
def test_classic_lengths(n, short, wide):
    for wt, value, payload in _payloads(n):
        prefix = short if wt is STRING else wide
        if prefix is None:
            with pytest.raises(ValueError, match="exceeds the limit"):
                _enc(wt, False, value)
            continue
        wire = H(prefix) + payload
        assert _enc(wt, False, value) == wire, wt.name
        assert _dec(wt, False, wire + b"\xaa") == (value, len(wire)), wt.name


def test_null_lengths():
    for wt in (STRING, BYTES, ArrayType(INT8)):
        assert _enc(wt, True, None) == H("00")
        assert _enc(wt, False, None) == H("ffff" if wt is STRING else "ffffffff")
        assert _dec(wt, True, H("00")) == (None, 1)


# The same prefixes inside whole messages, through the schema codec and the
# Produce fast path.

def test_long_compact_string_in_api_versions_v3():
    name = "k" * 127
    expected = (H("8001") + name.encode()   # client_software_name: compact, 127 + 1 = 128
                + H("02") + b"1"            # client_software_version "1"
                + H("00"))                  # tagged fields
    msg = ApiVersionsRequest(client_software_name=name, client_software_version="1")
    assert encode_body(msg, 3) == expected


@pytest.mark.parametrize("count,compact", [(127, "8001"), (128, "8101")])
def test_long_arrays_in_metadata(count, compact):
    topics = (MetadataRequest.MetadataRequestTopic(name="t"),) * count
    msg = MetadataRequest(topics=topics)
    v9 = (H(compact)                        # topics: compact array, count + 1
          + H("027400") * count             #   name "t" (compact), topic tagged fields
          + H("01" "00" "00" "00"))         # auto create, cluster ops, topic ops, tags
    assert encode_body(msg, 9) == v9
    v1 = (count.to_bytes(4, "big")          # topics: int32 count
          + H("000174") * count)            #   name "t" (int16 length)
    assert encode_body(msg, 1) == v1


@pytest.mark.parametrize("size,compact", [(126, "7f"), (127, "8001"), (200, "c901"),
                                          (16383, "808001")])
def test_long_records_and_topic_in_produce(size, compact):
    # 200 + 1 = 201 = 1001001 | 1 -> c9 01
    records = bytes(range(256)) * (size // 256) + bytes(size % 256)
    topic = "t" * size
    P = ProduceRequest
    msg = P(acks=-1, timeout_ms=30000, topic_data=(P.TopicProduceData(name=topic, partition_data=(
        P.PartitionProduceData(index=0, records=records),)),))
    v9 = (H("00"                            # transactional_id null (compact)
            "ffff" "00007530"               # acks -1, timeout_ms 30000
            "02")                           # topic_data: compact array of 1
          + H(compact) + topic.encode()     #   name
          + H("02" "00000000")              #   partition_data: 1; index 0
          + H(compact) + records            #     records (compact bytes)
          + H("00" "00" "00"))              #     tags; topic tags; body tags
    v3 = (H("ffff" "ffff" "00007530" "00000001")
          + size.to_bytes(2, "big") + topic.encode()
          + H("00000001" "00000000")
          + size.to_bytes(4, "big") + records)
    for version, body in ((9, v9), (3, v3)):
        assert encode_body(msg, version) == body, f"schema codec v{version}"
        frame = encode_request(msg, version, 5, "c")
        assert frame.endswith(body), f"encode_request v{version}"
        assert produce_request(version, 5, "c", -1, 30000, [(topic, [(0, records)])]) == frame
        assert decode_request(frame[4:])[1] == msg

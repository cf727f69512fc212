"""Compression codecs: framing as the Java client writes it, levels honoured, both snappy framings read."""

from __future__ import annotations

import struct
import zlib

import lz4.frame
import pytest
import snappy
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from kafkad.protocol import ProtocolError, decode_record_batches, encode_record_batch
from kafkad.protocol.codecs import GZIP, LZ4, SNAPPY, ZSTD, compress, decompress

from .strategies import FAST

TEXT = b"".join(b"record %d of a fairly repetitive payload; " % i for i in range(4000))


@FAST
@given(st.sampled_from([GZIP, SNAPPY, LZ4, ZSTD]), st.binary(max_size=5000))
def test_round_trip(codec, data):
    assert decompress(codec, compress(codec, data)) == data


def test_gzip_is_a_gzip_member():
    out = compress(GZIP, TEXT)
    assert out[:2] == b"\x1f\x8b"
    assert zlib.decompress(out, 31) == TEXT


def test_snappy_uses_xerial_framing_with_32k_blocks():
    out = compress(SNAPPY, TEXT)
    assert out[:16] == b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    # Walk the blocks: each is an int32 length and a raw snappy block of <= 32 KiB input.
    pos, pieces = 16, []
    while pos < len(out):
        (n,) = struct.unpack_from(">i", out, pos)
        block = snappy.decompress(out[pos + 4:pos + 4 + n])
        assert len(block) <= 32 * 1024
        pieces.append(block)
        pos += 4 + n
    assert len(pieces) == -(-len(TEXT) // (32 * 1024)) and b"".join(pieces) == TEXT


def test_snappy_reads_a_raw_block_too():
    assert decompress(SNAPPY, snappy.compress(TEXT)) == TEXT


def test_lz4_is_a_frame_with_independent_64k_blocks():
    out = compress(LZ4, TEXT)
    assert out[:4] == b"\x04\x22\x4d\x18"
    flg, bd = out[4], out[5]
    assert flg & 0x20, "blocks must be independent"
    assert (bd >> 4) & 0x7 == 4, "64 KiB maximum block size"
    assert lz4.frame.decompress(out) == TEXT


def test_zstd_reads_frames_without_a_content_size():
    streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    data = streamed.compress(TEXT) + streamed.flush()
    assert decompress(ZSTD, data) == TEXT
    assert compress(ZSTD, TEXT)[:4] == b"\x28\xb5\x2f\xfd"


@pytest.mark.parametrize("codec,low,high", [(GZIP, 1, 9), (LZ4, 0, 16), (ZSTD, 1, 19)])
def test_levels_are_honoured(codec, low, high):
    fast, best = compress(codec, TEXT, low), compress(codec, TEXT, high)
    assert fast != best and len(best) < len(fast)
    assert decompress(codec, fast) == decompress(codec, best) == TEXT


@pytest.mark.parametrize("codec,level", [(GZIP, 10), (GZIP, -2), (LZ4, 17), (ZSTD, 23),
                                          (SNAPPY, 1), (0, 1), (ZSTD, True), (GZIP, 2.0)])
def test_bad_levels(codec, level):
    with pytest.raises(ValueError, match="level"):
        compress(codec, TEXT, level)


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD, 5, 7])
def test_garbage_is_a_protocol_error(codec):
    with pytest.raises(ProtocolError):
        decompress(codec, b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x09garbage!!"
                   if codec == SNAPPY else b"definitely not compressed")


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD])
def test_compressed_batches_set_the_codec_bits(codec):
    raw = encode_record_batch([None, b"k"], [TEXT[:3000], b"v"], [1, 2], codec=codec)
    (batch,) = decode_record_batches(raw)
    assert struct.unpack_from(">h", raw, 21)[0] & 7 == codec == batch.codec
    assert [r.value for r in batch.records] == [TEXT[:3000], b"v"]
    assert len(raw) < 3000

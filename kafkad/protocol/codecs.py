"""Compression of a RecordBatch's records section: gzip, snappy, lz4, zstd.

Codec ids are the RecordBatch attribute bits: 0 none, 1 gzip, 2 snappy,
3 lz4, 4 zstd.  Framing follows what the Java client writes, so every Kafka
client and broker reads it:

* gzip: a gzip member (RFC 1952), as java.util.zip.GZIPOutputStream writes.
  Reading accepts gzip or zlib wrappers.
* snappy: the xerial "snappy-java" stream framing the Java client writes:
  magic ``\\x82SNAPPY\\x00``, int32 version 1, int32 compatible version 1,
  then blocks of (int32 compressed length, raw snappy block) each covering
  at most 32 KiB of input.  Reading accepts that framing or one raw snappy
  block (what librdkafka may send).
* lz4: the LZ4 frame format (KIP-57) with independent 64 KiB blocks and no
  checksums beyond the frame's header checksum, as the Java client writes.
* zstd: one zstd frame (content size recorded).  Reading also accepts frames
  without a content size (the Java client streams them).

Levels (None = the codec's default, which matches the Java client's):
gzip 0-9 (default 6), lz4 0-16 (default 9, the Java client's; levels below 3
all use the fast mode), zstd -131072..22 (default 3).  Snappy has no levels: a
level is refused rather than silently ignored.
"""

from __future__ import annotations

import struct
import zlib
from typing import Callable

import lz4.frame
import snappy
import zstandard

from .primitives import ProtocolError

__all__ = ["NONE", "GZIP", "SNAPPY", "LZ4", "ZSTD", "CODEC_NAMES", "compressor", "compress",
           "decompress"]

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}

# (min level, max level, default level) per codec with levels.
LEVELS: dict[int, tuple[int, int, int]] = {
    GZIP: (0, 9, 6),
    LZ4: (0, 16, 9),
    ZSTD: (-131072, 22, 3),
}

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK = 32 * 1024
_I32 = struct.Struct(">i")


def _check_level(codec: int, level: int | None) -> int | None:
    if level is None:
        return LEVELS[codec][2] if codec in LEVELS else None
    if codec not in LEVELS:
        raise ValueError(f"level: {CODEC_NAMES.get(codec, codec)} has no compression levels "
                         f"(got {level!r}; pass None)")
    lo, hi, _ = LEVELS[codec]
    if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
        raise ValueError(f"level: {CODEC_NAMES[codec]} levels are {lo}..{hi}, got {level!r}")
    return level


def _gzip(level: int) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 16+15: gzip wrapper
        return c.compress(data) + c.flush()
    return run


def _snappy_xerial(data: bytes) -> bytes:
    parts = [_XERIAL_HEADER]
    view = memoryview(data)
    for start in range(0, len(data), _XERIAL_BLOCK):
        block = snappy.compress(bytes(view[start:start + _XERIAL_BLOCK]))
        parts.append(_I32.pack(len(block)))
        parts.append(block)
    return b"".join(parts)


def _lz4(level: int) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        return lz4.frame.compress(data, compression_level=level,
                                  block_size=lz4.frame.BLOCKSIZE_MAX64KB, block_linked=False,
                                  content_checksum=False, store_size=False)
    return run


def _zstd(level: int) -> Callable[[bytes], bytes]:
    compressor = zstandard.ZstdCompressor(level=level)
    return compressor.compress


def compressor(codec: int, level: int | None = None) -> Callable[[bytes], bytes] | None:
    """A function compressing a records section with `codec` at `level`; None for codec 0.

    Raises ValueError for an unknown codec or a level the codec does not have.
    """
    if codec == NONE:
        if level is not None:
            raise ValueError(f"level: codec none has no levels (got {level!r})")
        return None
    if codec not in CODEC_NAMES:
        raise ValueError(f"codec: {codec!r} is not one of {sorted(CODEC_NAMES)} "
                         f"({', '.join(CODEC_NAMES.values())})")
    lvl = _check_level(codec, level)
    if codec == GZIP:
        return _gzip(lvl)
    if codec == SNAPPY:
        return _snappy_xerial
    if codec == LZ4:
        return _lz4(lvl)
    return _zstd(lvl)


def compress(codec: int, data: bytes, level: int | None = None) -> bytes:
    """`data` compressed with `codec` (0 returns it unchanged)."""
    fn = compressor(codec, level)
    return data if fn is None else fn(data)


def _unsnappy(data: bytes) -> bytes:
    if not data.startswith(_XERIAL_MAGIC):
        return snappy.decompress(data)
    if len(data) < len(_XERIAL_HEADER):
        raise ProtocolError("snappy: truncated xerial header")
    parts = []
    pos = len(_XERIAL_HEADER)
    end = len(data)
    while pos < end:
        if end - pos < 4:
            raise ProtocolError(f"snappy: truncated block length at byte {pos}")
        n = _I32.unpack_from(data, pos)[0]
        pos += 4
        if n < 0 or pos + n > end:
            raise ProtocolError(f"snappy: block of {n} bytes at byte {pos} runs past the end")
        parts.append(snappy.decompress(data[pos:pos + n]))
        pos += n
    return b"".join(parts)


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def decompress(codec: int, data: bytes) -> bytes:
    """Decompress a records section; any codec failure is a ProtocolError."""
    try:
        if codec == GZIP:
            return zlib.decompress(data, 47)  # wbits 32+15: gzip or zlib header
        if codec == SNAPPY:
            return _unsnappy(data)
        if codec == LZ4:
            return lz4.frame.decompress(data)
        if codec == ZSTD:
            return _unzstd(data)
    except ProtocolError:
        raise
    except Exception as exc:  # each library raises its own error types
        raise ProtocolError(f"{CODEC_NAMES[codec]} decompression failed: {exc}") from None
    raise ProtocolError(f"unknown compression codec {codec}")

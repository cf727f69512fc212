"""Kafka wire primitives: fixed-width integers, varints, strings, bytes, UUIDs, arrays.

Every wire type is a `WireType` that hands out an encoder and a decoder for a
given (flexible, nullable) combination, so the schema layer can compile one
plan per message version and never branch on the encoding at run time.

Conventions used throughout `kafkad.protocol`:

* An *encoder* is ``enc(parts: list[bytes], value) -> None``; it appends the
  encoded bytes of `value` to `parts` (joined once at the end).
* A *decoder* is ``dec(buf: bytes, pos: int) -> (value, new_pos)``.  Decoders
  never read past ``len(buf)``: variable-length items are checked against the
  remaining bytes before they are sliced, and truncated fixed-width reads
  surface as `ProtocolError` (the schema layer translates `struct.error`).

"Flexible" versions (KIP-482) use compact (unsigned varint, length + 1)
lengths and carry tagged-field sections; older versions use int16/int32
lengths with -1 for null.
"""

from __future__ import annotations

import struct
import uuid
from abc import ABC, abstractmethod
from typing import Any, Callable

Encoder = Callable[[list, Any], None]
Decoder = Callable[[bytes, int], tuple[Any, int]]


class ProtocolError(Exception):
    """Bytes that do not follow the Kafka protocol (truncated, bad lengths, unknown version, ...).

    The message names where the problem was found (message, field, offset).
    """


_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")

INT32_MAX = (1 << 31) - 1


# --------------------------------------------------------------------------
# varints

def encode_uvarint(n: int) -> bytes:
    """Unsigned LEB128 varint (used for compact lengths, tags and tag sizes)."""
    if n < 0:
        raise ValueError(f"unsigned varint cannot hold negative value {n}")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_varint(n: int) -> bytes:
    """Signed zigzag varint/varlong (used inside RecordBatch records)."""
    return encode_uvarint((n << 1) ^ (n >> 63))


def decode_uvarint(buf: bytes, pos: int, max_bytes: int = 5) -> tuple[int, int]:
    """Read an unsigned varint of at most `max_bytes` bytes (5 for 32-bit, 10 for 64-bit)."""
    end = len(buf)
    if pos >= end:
        raise ProtocolError(f"truncated varint at byte {pos}")
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    start = pos
    pos += 1
    while True:
        if pos >= end:
            raise ProtocolError(f"truncated varint at byte {start}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if pos - start >= max_bytes:
            raise ProtocolError(f"varint longer than {max_bytes} bytes at byte {start}")


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Read a signed zigzag varint (32-bit)."""
    n, pos = decode_uvarint(buf, pos, 5)
    return (n >> 1) ^ -(n & 1), pos


def decode_varlong(buf: bytes, pos: int) -> tuple[int, int]:
    """Read a signed zigzag varlong (64-bit)."""
    n, pos = decode_uvarint(buf, pos, 10)
    return (n >> 1) ^ -(n & 1), pos


def take(buf: bytes, pos: int, n: int, what: str) -> tuple[bytes, int]:
    """Slice `n` bytes at `pos`, refusing to read past the end of `buf`."""
    end = pos + n
    if n < 0 or end > len(buf):
        raise ProtocolError(
            f"{what}: length {n} at byte {pos} runs past the end of the buffer ({len(buf)} bytes)")
    return bytes(buf[pos:end]), end


# --------------------------------------------------------------------------
# wire types

class WireType(ABC):
    """One Kafka schema type; subclasses build encoders/decoders per (flexible, nullable)."""

    name = "?"
    default: Any = None

    @abstractmethod
    def encoder(self, flexible: bool, nullable: bool) -> Encoder:
        """The encoder for this type in the given encoding."""

    @abstractmethod
    def decoder(self, flexible: bool, nullable: bool) -> Decoder:
        """The decoder for this type in the given encoding."""

    def __repr__(self) -> str:
        return self.name


class FixedType(WireType):
    """int8/int16/int32/int64/uint16/float64: struct-packed, no nulls."""

    def __init__(self, name: str, st: struct.Struct, default: Any = 0):
        self.name = name
        self._st = st
        self.default = default

    def encoder(self, flexible: bool, nullable: bool) -> Encoder:
        pack = self._st.pack

        def enc(parts: list, v: Any) -> None:
            parts.append(pack(v))
        return enc

    def decoder(self, flexible: bool, nullable: bool) -> Decoder:
        unpack_from = self._st.unpack_from
        size = self._st.size

        def dec(buf: bytes, pos: int) -> tuple[Any, int]:
            return unpack_from(buf, pos)[0], pos + size
        return dec


class BoolType(WireType):
    name = "bool"
    default = False

    def encoder(self, flexible: bool, nullable: bool) -> Encoder:
        def enc(parts: list, v: Any) -> None:
            if not isinstance(v, bool):
                raise TypeError(f"expected bool, got {type(v).__name__}")
            parts.append(b"\x01" if v else b"\x00")
        return enc

    def decoder(self, flexible: bool, nullable: bool) -> Decoder:
        def dec(buf: bytes, pos: int) -> tuple[Any, int]:
            if pos >= len(buf):
                raise ProtocolError(f"truncated bool at byte {pos}")
            return buf[pos] != 0, pos + 1
        return dec


class UuidType(WireType):
    name = "uuid"
    default = uuid.UUID(int=0)

    def encoder(self, flexible: bool, nullable: bool) -> Encoder:
        def enc(parts: list, v: Any) -> None:
            if not isinstance(v, uuid.UUID):
                raise TypeError(f"expected uuid.UUID, got {type(v).__name__}")
            parts.append(v.bytes)
        return enc

    def decoder(self, flexible: bool, nullable: bool) -> Decoder:
        def dec(buf: bytes, pos: int) -> tuple[Any, int]:
            raw, pos = take(buf, pos, 16, "uuid")
            return uuid.UUID(bytes=raw), pos
        return dec


def _length_codec(flexible: bool, wide: bool) -> tuple[Callable[[int], bytes], Decoder]:
    """(pack_length, read_length) for strings (wide=False: int16) or bytes/arrays (int32).

    Null is length -1 in both the classic and (as compact length 0) flexible forms.
    """
    if flexible:
        def pack(n: int) -> bytes:
            return encode_uvarint(n + 1)

        def read(buf: bytes, pos: int) -> tuple[int, int]:
            n, pos = decode_uvarint(buf, pos)
            return n - 1, pos
        return pack, read
    st = _I32 if wide else _I16
    pack_st, unpack_from, size = st.pack, st.unpack_from, st.size

    def read_fixed(buf: bytes, pos: int) -> tuple[int, int]:
        if pos + size > len(buf):
            raise ProtocolError(f"truncated length at byte {pos}")
        return unpack_from(buf, pos)[0], pos + size
    return pack_st, read_fixed


class StringType(WireType):
    """UTF-8 string: int16 length (classic) or compact length (flexible); -1/0 is null."""

    name = "string"
    default = ""

    def encoder(self, flexible: bool, nullable: bool) -> Encoder:
        pack_len, _ = _length_codec(flexible, wide=False)
        limit = INT32_MAX if flexible else 0x7FFF

        def enc(parts: list, v: Any) -> None:
            if v is None:
                if not nullable:
                    raise ValueError("null is not allowed in this version")
                parts.append(pack_len(-1))
                return
            if not isinstance(v, str):
                raise TypeError(f"expected str, got {type(v).__name__}")
            raw = v.encode()
            if len(raw) > limit:
                raise ValueError(f"string of {len(raw)} bytes exceeds the limit of {limit}")
            parts.append(pack_len(len(raw)))
            parts.append(raw)
        return enc

    def decoder(self, flexible: bool, nullable: bool) -> Decoder:
        _, read_len = _length_codec(flexible, wide=False)

        def dec(buf: bytes, pos: int) -> tuple[Any, int]:
            n, pos = read_len(buf, pos)
            if n < 0:
                if n == -1 and nullable:
                    return None, pos
                raise ProtocolError(f"invalid string length {n} at byte {pos}")
            raw, pos = take(buf, pos, n, "string")
            try:
                return raw.decode(), pos
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"string is not valid UTF-8: {exc}") from None
        return dec


class BytesType(WireType):
    """Opaque bytes: int32 length (classic) or compact length (flexible); -1/0 is null.

    Also used for the `records` type (a RecordBatch set carried as bytes).
    Encoders accept bytes, bytearray or memoryview.
    """

    def __init__(self, name: str = "bytes", default: Any = b""):
        self.name = name
        self.default = default

    def encoder(self, flexible: bool, nullable: bool) -> Encoder:
        pack_len, _ = _length_codec(flexible, wide=True)

        def enc(parts: list, v: Any) -> None:
            if v is None:
                if not nullable:
                    raise ValueError("null is not allowed in this version")
                parts.append(pack_len(-1))
                return
            if not isinstance(v, (bytes, bytearray, memoryview)):
                raise TypeError(f"expected bytes, got {type(v).__name__}")
            n = v.nbytes if isinstance(v, memoryview) else len(v)
            if n > INT32_MAX - 1:
                raise ValueError(f"{n} bytes exceed the protocol limit")
            parts.append(pack_len(n))
            parts.append(v)
        return enc

    def decoder(self, flexible: bool, nullable: bool) -> Decoder:
        _, read_len = _length_codec(flexible, wide=True)
        what = self.name

        def dec(buf: bytes, pos: int) -> tuple[Any, int]:
            n, pos = read_len(buf, pos)
            if n < 0:
                if n == -1 and nullable:
                    return None, pos
                raise ProtocolError(f"invalid {what} length {n} at byte {pos}")
            return take(buf, pos, n, what)
        return dec


class ArrayType(WireType):
    """Array of another type: int32 count (classic) or compact count (flexible); -1/0 is null.

    Decoded arrays are tuples; encoders accept any sequence.
    """

    default = ()

    def __init__(self, inner: WireType):
        self.inner = inner
        self.name = f"[]{inner.name}"

    def encoder(self, flexible: bool, nullable: bool) -> Encoder:
        pack_len, _ = _length_codec(flexible, wide=True)
        inner = self.inner.encoder(flexible, False)

        def enc(parts: list, v: Any) -> None:
            if v is None:
                if not nullable:
                    raise ValueError("null is not allowed in this version")
                parts.append(pack_len(-1))
                return
            if isinstance(v, (str, bytes, bytearray, memoryview)):
                raise TypeError(f"expected a sequence of {self.inner.name}, got {type(v).__name__}")
            parts.append(pack_len(len(v)))
            for i, item in enumerate(v):
                try:
                    inner(parts, item)
                except (TypeError, ValueError, struct.error) as exc:
                    raise type(exc)(f"[{i}]: {exc}") from None
        return enc

    def decoder(self, flexible: bool, nullable: bool) -> Decoder:
        _, read_len = _length_codec(flexible, wide=True)
        inner = self.inner.decoder(flexible, False)

        def dec(buf: bytes, pos: int) -> tuple[Any, int]:
            n, pos = read_len(buf, pos)
            if n < 0:
                if n == -1 and nullable:
                    return None, pos
                raise ProtocolError(f"invalid array length {n} at byte {pos}")
            # Every element takes at least one byte: a count larger than the
            # remaining bytes is malformed and must not drive a huge loop.
            if n > len(buf) - pos:
                raise ProtocolError(
                    f"array of {n} elements at byte {pos} cannot fit in the "
                    f"{len(buf) - pos} remaining bytes")
            out = []
            append = out.append
            for i in range(n):
                try:
                    item, pos = inner(buf, pos)
                except (ProtocolError, struct.error) as exc:
                    raise ProtocolError(f"[{i}]: {reason(exc)}") from None
                append(item)
            return tuple(out), pos
        return dec


def reason(exc: BaseException) -> str:
    """A decoding failure as text: struct's short-buffer errors read as "truncated"."""
    if isinstance(exc, struct.error):
        return "truncated"
    return str(exc)


INT8 = FixedType("int8", _I8)
INT16 = FixedType("int16", _I16)
UINT16 = FixedType("uint16", _U16)
INT32 = FixedType("int32", _I32)
UINT32 = FixedType("uint32", _U32)
INT64 = FixedType("int64", _I64)
FLOAT64 = FixedType("float64", _F64, 0.0)
BOOL = BoolType()
STRING = StringType()
BYTES = BytesType()
RECORDS = BytesType("records", None)
UUID = UuidType()

PRIMITIVES: dict[str, WireType] = {
    t.name: t for t in (INT8, INT16, UINT16, INT32, UINT32, INT64, FLOAT64, BOOL, STRING, BYTES,
                        RECORDS, UUID)
}

pack_i16 = _I16.pack
pack_i32 = _I32.pack
unpack_i16 = _I16.unpack_from
unpack_i32 = _I32.unpack_from

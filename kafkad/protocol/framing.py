"""Frames and headers: size prefixes, request/response headers, version choice.

A Kafka frame is a 4-byte big-endian size followed by that many bytes.  A
request frame holds a request header and a body; a response frame holds a
response header and a body.  Header versions follow the body's encoding:

* request header v1 (api_key, api_version, correlation_id, client_id as a
  classic nullable string) for classic versions; v2 (v1 plus an empty tagged
  field section) for flexible versions.  client_id stays a classic string in
  v2, as in Kafka;
* response header v0 (correlation_id) for classic versions and v1
  (correlation_id plus tagged fields) for flexible ones, EXCEPT ApiVersions:
  its response always uses header v0, because the client cannot know yet
  which versions the broker speaks (KIP-511).

`encode_response` and `decode_request` are the broker-side mirror images;
kafkad uses them only in tests and fakes.
"""

from __future__ import annotations

import struct
from typing import Any

from . import messages as m
from .primitives import ProtocolError, decode_uvarint, pack_i32
from .produce import decode_produce_response, encode_produce_request
from .schema import decode_body, encode_body, is_flexible

__all__ = [
    "API_VERSIONS_SUPPORTED", "pick_version", "encode_request", "decode_response",
    "peek_correlation_id", "encode_response", "decode_request", "RequestHeader", "FrameReader",
    "UNSUPPORTED_VERSION",
]

UNSUPPORTED_VERSION = 35

# api_key -> (min, max) versions kafkad implements.
API_VERSIONS_SUPPORTED: dict[int, tuple[int, int]] = {
    cls.API_KEY: (cls.MIN_VERSION, cls.MAX_VERSION) for cls in m.REQUESTS
}

_HEAD = struct.Struct(">hhi")       # api_key, api_version, correlation_id
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


def pick_version(api_key: int, broker_min: int, broker_max: int) -> int | None:
    """The highest version of `api_key` both kafkad and the broker support, or None."""
    ours = API_VERSIONS_SUPPORTED.get(api_key)
    if ours is None:
        raise ValueError(f"api_key: kafkad does not implement API {api_key}")
    hi = min(ours[1], broker_max)
    return hi if hi >= max(ours[0], broker_min) else None


def _response_header_flexible(cls: type, version: int) -> bool:
    return cls.API_KEY != m.ApiVersionsResponse.API_KEY and is_flexible(cls, version)


def encode_request(msg: Any, version: int, correlation_id: int, client_id: str | None) -> bytes:
    """The whole request frame (size prefix included) for `msg` at `version`."""
    cls = type(msg)
    if cls is m.ProduceRequest:
        # the request of every send: a fast encoder, the schema one for anything unusual
        fast = encode_produce_request(msg, version, correlation_id, client_id)
        if fast is not None:
            return fast
    if getattr(cls, "KIND", None) != "request":
        raise TypeError(f"msg: expected a kafkad.protocol request message, got {cls.__name__}")
    if not isinstance(correlation_id, int) or not -(1 << 31) <= correlation_id < (1 << 31):
        raise ValueError(f"correlation_id: {correlation_id!r} is not an int32")
    body = encode_body(msg, version)
    if client_id is None:
        cid = b"\xff\xff"
    else:
        if not isinstance(client_id, str):
            raise TypeError(f"client_id: expected str or None, got {type(client_id).__name__}")
        raw = client_id.encode()
        if len(raw) > 0x7FFF:
            raise ValueError("client_id: longer than 32767 bytes")
        cid = _I16.pack(len(raw)) + raw
    head = _HEAD.pack(cls.API_KEY, version, correlation_id) + cid
    if is_flexible(cls, version):
        head += b"\x00"  # header v2: empty tagged-field section
    return b"".join((pack_i32(len(head) + len(body)), head, body))


def peek_correlation_id(frame: bytes) -> int:
    """The correlation id at the start of a response frame (size prefix removed)."""
    if len(frame) < 4:
        raise ProtocolError(f"frame of {len(frame)} bytes is too short for a correlation id")
    return _I32.unpack_from(frame, 0)[0]


def _skip_tagged(frame: bytes, pos: int, what: str) -> int:
    count, pos = decode_uvarint(frame, pos)
    for _ in range(count):
        _, pos = decode_uvarint(frame, pos)
        size, pos = decode_uvarint(frame, pos)
        pos += size
        if pos > len(frame):
            raise ProtocolError(f"{what}: tagged field runs past the end of the frame")
    return pos


def _decode_whole(cls: type, version: int, frame: bytes, pos: int) -> Any:
    msg, end = decode_body(cls, version, frame, pos)
    if end != len(frame):
        raise ProtocolError(
            f"{cls.__name__} v{version}: {len(frame) - end} bytes left over after the body "
            f"(frame of {len(frame)} bytes)")
    return msg


def decode_response(cls: type, version: int, frame: bytes, *,
                    strict: bool = False) -> tuple[int, Any]:
    """(correlation_id, message) from one whole response frame without its size prefix.

    Bytes after the body are ignored unless `strict` (tests use strict=True),
    as the Java client and librdkafka ignore them: brokers are not all exact,
    e.g. the librdkafka mock cluster appends a byte to Metadata v9+ answers.

    ApiVersions special case: a broker that does not support the requested
    version answers with error 35 (UNSUPPORTED_VERSION) and a version-0 body
    listing (since KIP-511) its own ApiVersions range; that body is decoded as
    version 0 so the caller can retry with `pick_version`.
    """
    if getattr(cls, "KIND", None) != "response":
        raise TypeError(f"cls: expected a kafkad.protocol response class, got {cls!r}")
    if not isinstance(version, int) or not cls.MIN_VERSION <= version <= cls.MAX_VERSION:
        raise ProtocolError(f"{cls.__name__} version {version} is not implemented "
                            f"(kafkad knows {cls.MIN_VERSION}-{cls.MAX_VERSION})")
    if not isinstance(frame, bytes):
        frame = bytes(frame)
    if cls is m.ProduceResponse:
        # the answer to every Produce request: its usual shape has a fast decoder
        fast = decode_produce_response(version, frame, strict)
        if fast is not None:
            return fast
    correlation_id = peek_correlation_id(frame)
    pos = 4
    if _response_header_flexible(cls, version):
        pos = _skip_tagged(frame, pos, f"{cls.__name__} response header")
    if (cls is m.ApiVersionsResponse and version > 0 and len(frame) >= pos + 2
            and _I16.unpack_from(frame, pos)[0] == UNSUPPORTED_VERSION):
        return correlation_id, _unsupported_api_versions(version, frame, pos)
    if strict:
        return correlation_id, _decode_whole(cls, version, frame, pos)
    return correlation_id, decode_body(cls, version, frame, pos)[0]


def _unsupported_api_versions(version: int, frame: bytes, pos: int) -> Any:
    """An ApiVersions error-35 answer: a v0 body per KIP-511, read as leniently as Java does.

    Kafka brokers send a version-0 body (with their own ApiVersions range
    since KIP-511).  Other implementations differ: the librdkafka mock
    cluster, for one, sends a body that is neither v0 nor the requested
    version.  The Java client tries the requested version, then v0; kafkad
    tries v0, then the requested version, and otherwise keeps only the error
    code (empty `api_keys`), so the caller steps down one version and retries.
    """
    for attempt in (0, version):
        try:
            return _decode_whole(m.ApiVersionsResponse, attempt, frame, pos)
        except ProtocolError:
            continue
    return m.ApiVersionsResponse(error_code=UNSUPPORTED_VERSION)


def encode_response(msg: Any, version: int, correlation_id: int) -> bytes:
    """The whole response frame (size prefix included); for fakes and tests."""
    cls = type(msg)
    if getattr(cls, "KIND", None) != "response":
        raise TypeError(f"msg: expected a kafkad.protocol response message, got {cls.__name__}")
    body = encode_body(msg, version)
    head = _I32.pack(correlation_id)
    if _response_header_flexible(cls, version):
        head += b"\x00"
    return b"".join((pack_i32(len(head) + len(body)), head, body))


class RequestHeader:
    """A decoded request header (broker side)."""

    __slots__ = ("api_key", "api_version", "correlation_id", "client_id")

    def __init__(self, api_key: int, api_version: int, correlation_id: int, client_id: str | None):
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id
        self.client_id = client_id

    def __repr__(self) -> str:
        return (f"RequestHeader(api_key={self.api_key}, api_version={self.api_version}, "
                f"correlation_id={self.correlation_id}, client_id={self.client_id!r})")


def decode_request(frame: bytes) -> tuple[RequestHeader, Any]:
    """(header, message) from one whole request frame without its size prefix; for fakes and tests."""
    if not isinstance(frame, bytes):
        frame = bytes(frame)
    if len(frame) < 10:
        raise ProtocolError(f"request frame of {len(frame)} bytes is too short for a header")
    api_key, version, correlation_id = _HEAD.unpack_from(frame, 0)
    n = _I16.unpack_from(frame, 8)[0]
    pos = 10
    if n == -1:
        client_id = None
    elif n < 0 or pos + n > len(frame):
        raise ProtocolError(f"request header: bad client_id length {n}")
    else:
        try:
            client_id = frame[pos:pos + n].decode()
        except UnicodeDecodeError:
            raise ProtocolError("request header: client_id is not valid UTF-8") from None
        pos += n
    cls = m.REQUEST_BY_KEY.get(api_key)
    if cls is None:
        raise ProtocolError(f"request for API {api_key}, which kafkad does not implement")
    if not cls.MIN_VERSION <= version <= cls.MAX_VERSION:
        raise ProtocolError(f"{cls.__name__} version {version} is not implemented")
    if is_flexible(cls, version):
        pos = _skip_tagged(frame, pos, "request header")
    header = RequestHeader(api_key, version, correlation_id, client_id)
    return header, _decode_whole(cls, version, frame, pos)


class FrameReader:
    """Splits a byte stream into whole frames (size prefix removed).

    The size prefix is checked against `max_frame_bytes` as soon as it
    arrives, before the frame's bytes are waited for, so a bogus or hostile
    size never makes the reader buffer (or the caller allocate) a huge frame.
    """

    __slots__ = ("max_frame_bytes", "_buf")

    def __init__(self, max_frame_bytes: int):
        if not isinstance(max_frame_bytes, int) or max_frame_bytes < 4:
            raise ValueError(f"max_frame_bytes: must be an int >= 4, got {max_frame_bytes!r}")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return every frame now complete, in order."""
        buf = self._buf
        if not buf and len(data) >= 4:
            # nothing buffered and `data` is exactly one frame (a sync send's answer)
            size = _I32.unpack_from(data, 0)[0]
            if len(data) - 4 == size and 4 <= size <= self.max_frame_bytes:
                return [bytes(data[4:])]
        buf += data
        frames = []
        pos = 0
        end = len(buf)
        cap = self.max_frame_bytes
        while end - pos >= 4:
            size = _I32.unpack_from(buf, pos)[0]
            if size < 4 or size > cap:
                self._buf = bytearray()
                if size > cap:
                    raise ProtocolError(f"frame of {size} bytes exceeds the limit of {cap} bytes")
                raise ProtocolError(f"frame size {size} is too small to hold a header")
            if end - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return frames

"""On-disk framing of spool records and the encoding of one entry.

Every record in a segment (and in the release log, and the checkpoint) is one
frame::

    magic   2 bytes   b"\\xd5\\x9a"
    crc     u32 LE    CRC32C of everything after it (length, id, payload)
    length  u32 LE    payload length
    id      u64 LE    entry id (segments), record number (release log)
    payload length bytes

The CRC covers the length and the id, so a flipped bit anywhere in a frame is
detected, and a reader that lost its place finds the next frame again by
looking for the magic and checking the CRC (`scan`). Functions here work on
bytes, `mmap` objects or anything else with `find` and slicing; they do no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import crc32c
import msgpack

MAGIC = b"\xd5\x9a"
_HEADER = struct.Struct("<2sIIQ")
HEADER_BYTES = _HEADER.size           # 18
_BODY = struct.Struct("<IQ")          # length, id: the part of the header the CRC covers
MAX_PAYLOAD = (1 << 31) - 1           # a sanity bound for lengths read back from disk

ENTRY_VERSION = 1                     # first element of an entry's msgpack array


def encode_frame(frame_id: int, payload: bytes) -> bytes:
    """One frame holding `payload` under `frame_id`."""
    body = _BODY.pack(len(payload), frame_id)
    crc = crc32c.crc32c(payload, crc32c.crc32c(body))
    return b"".join((MAGIC, crc.to_bytes(4, "little"), body, payload))


@dataclass(frozen=True, slots=True)
class Frame:
    """A valid frame found in a buffer: [start, end) and its id and payload."""

    start: int
    end: int
    frame_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class BadRegion:
    """Bytes [start, end) that hold no valid frame (corruption, or a torn write at the end)."""

    start: int
    end: int


def frame_at(buf: Any, pos: int, limit: int) -> Frame | None:
    """The valid frame starting exactly at `pos` (ending at or before `limit`), or None."""
    if limit - pos < HEADER_BYTES or buf[pos:pos + 2] != MAGIC:
        return None
    _, crc, length, frame_id = _HEADER.unpack(buf[pos:pos + HEADER_BYTES])
    end = pos + HEADER_BYTES + length
    if length > MAX_PAYLOAD or end > limit:
        return None
    payload = bytes(buf[pos + HEADER_BYTES:end])
    if crc32c.crc32c(payload, crc32c.crc32c(buf[pos + 6:pos + HEADER_BYTES])) != crc:
        return None
    return Frame(pos, end, frame_id, payload)


def scan(buf: Any, start: int = 0, limit: int | None = None) -> Iterator[Frame | BadRegion]:
    """Every valid frame in buf[start:limit], in order, and the bad regions between them.

    After a bad frame the scan resumes at the next occurrence of the magic that
    begins a valid frame, so one damaged record never hides the ones after it.
    It always moves forward, so it ends on any input.
    """
    limit = len(buf) if limit is None else limit
    pos = start
    while pos < limit:
        frame = frame_at(buf, pos, limit)
        if frame is not None:
            yield frame
            pos = frame.end
            continue
        bad_start = pos
        nxt = buf.find(MAGIC, pos + 1, limit)
        while nxt != -1 and frame_at(buf, nxt, limit) is None:
            nxt = buf.find(MAGIC, nxt + 1, limit)
        pos = limit if nxt == -1 else nxt
        yield BadRegion(bad_start, pos)


class SpoolEntry(NamedTuple):
    """One submission as the spool keeps it (immutable; a tuple for speed).

    `seq_first`..`seq_last` is the session's sequence range of the messages
    (one per value); `keys` is None (no keys) or a list as long as `values`;
    `settings` is the session's settings as a msgpack-able map. `check_entry`
    validates one (`Spool.append` does).
    """

    session_id: bytes
    seq_first: int
    seq_last: int
    topic: str
    partition: int
    keys: list[bytes | None] | None
    values: list[bytes | None]
    timestamp_ms: int
    settings: dict


def check_entry(e: SpoolEntry) -> None:
    """TypeError/ValueError naming the field when `e` is not a storable entry."""
    # Written for speed (one call per submission).
    if type(e) is not SpoolEntry:
        raise TypeError(f"entry must be a SpoolEntry, not {type(e).__name__}")
    if type(e.session_id) is not bytes:
        raise TypeError(f"session_id must be bytes, not {type(e.session_id).__name__}")
    if type(e.topic) is not str or not e.topic:
        raise TypeError("topic must be a non-empty str")
    if type(e.seq_first) is not int or e.seq_first < 0:
        raise ValueError(f"seq_first must be a non-negative int, not {e.seq_first!r}")
    if type(e.seq_last) is not int or e.seq_last < e.seq_first:
        raise ValueError(f"seq_last must be an int >= seq_first ({e.seq_first}), not {e.seq_last!r}")
    if type(e.partition) is not int or not -2**31 <= e.partition < 2**31:
        raise ValueError(f"partition must be an int in [-2**31, 2**31) (negative: the daemon "
                         f"picks it), not {e.partition!r}")
    if type(e.timestamp_ms) is not int or e.timestamp_ms < 0:
        raise ValueError(f"timestamp_ms must be a non-negative int, not {e.timestamp_ms!r}")
    values, keys = e.values, e.keys
    if type(values) not in (list, tuple) or not values:
        raise TypeError("values must be a non-empty list of bytes or None")
    if keys is not None and (type(keys) not in (list, tuple) or len(keys) != len(values)):
        raise TypeError("keys must be None or a list as long as values")
    if type(e.settings) is not dict:
        raise TypeError(f"settings must be a dict, not {type(e.settings).__name__}")


def pack_settings(settings: dict) -> bytes:
    """The msgpack form of a settings map (callers may cache it per session)."""
    try:
        return msgpack.packb(settings, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"settings cannot be stored: {exc} (plain msgpack types only)") from None


def encode_entry(entry: SpoolEntry, packed_settings: bytes | None = None,
                 packer: msgpack.Packer | None = None) -> bytes:
    """The entry's payload bytes: a msgpack array led by ENTRY_VERSION.

    `packed_settings`, if given, must be `pack_settings(entry.settings)`; it
    saves encoding the same map for every submission of a session. `packer`
    (a `msgpack.Packer(use_bin_type=True)` the caller owns) saves building one.
    """
    if packed_settings is None:
        packed_settings = pack_settings(entry.settings)
    head = (ENTRY_VERSION, entry.session_id, entry.seq_first, entry.seq_last, entry.topic,
            entry.partition, entry.keys, entry.values, entry.timestamp_ms)
    try:
        packed = packer.pack(head) if packer is not None else msgpack.packb(head, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        if packer is not None:
            packer.reset()      # drop whatever half-packed bytes the failure left behind
        raise TypeError(f"entry cannot be stored: {exc} (keys and values must be bytes or None)") from None
    # packed is a 9-element fixarray (one header byte, 0x99): widen it to 10 elements.
    return b"\x9a" + packed[1:] + packed_settings


def decode_entry(payload: bytes) -> SpoolEntry:
    """The entry held in `payload`; ValueError when it is not one this version wrote."""
    try:
        item = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated classes on bad input
        raise ValueError(f"undecodable entry: {exc}") from None
    if not isinstance(item, list) or len(item) != 10 or item[0] != ENTRY_VERSION:
        raise ValueError("not a spool entry of format version 1")
    entry = SpoolEntry(*item[1:])
    try:
        check_entry(entry)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed entry: {exc}") from None
    return entry

"""Hypothesis strategies for every kafkad.protocol message, derived from its schema declaration,
and `decode_all`, the decoder that fails a test when bytes are left unread.

Walking the same `Field` declarations the codecs are compiled from means a
new field or version is covered without editing the tests; values are drawn
only for fields present in the version under test (the others must keep
their defaults, which is what a decoder returns for them).

Strings, bytes and arrays are mostly short, but now and then long enough that
their length prefix crosses a varint boundary (1 to 2 bytes at 127, 2 to 3
at 16383, counted as the compact length + 1 is): short values alone never
encode a length prefix of more than one byte.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kafkad.protocol import decode_body

# Modest example counts keep the whole protocol suite well under a minute.
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_INTS = {
    "int8": st.integers(-(1 << 7), (1 << 7) - 1),
    "int16": st.integers(-(1 << 15), (1 << 15) - 1),
    "uint16": st.integers(0, (1 << 16) - 1),
    "int32": st.integers(-(1 << 31), (1 << 31) - 1),
    "uint32": st.integers(0, (1 << 32) - 1),
    "int64": st.integers(-(1 << 63), (1 << 63) - 1),
}


# Byte lengths of long strings and bytes: either side of the compact
# (length + 1) varint's 1/2-byte and 2/3-byte boundaries and of the classic
# prefixes' low byte.
LONG_LENGTHS = (126, 127, 128, 129, 255, 256, 16382, 16383, 16384)
# Element counts of long arrays: the 1/2-byte boundary only (16383 structs
# would be slow to encode for every example).
LONG_COUNTS = (126, 127, 128)


def _sometimes(short: st.SearchStrategy, long: st.SearchStrategy) -> st.SearchStrategy:
    """`short` four times in five, else `long` (shrinks towards short)."""
    return st.integers(0, 4).flatmap(lambda i: long if i == 4 else short)


def _long_text() -> st.SearchStrategy:
    # Any text, padded with ASCII to exactly a boundary byte length.
    return st.tuples(st.text(max_size=4), st.sampled_from(LONG_LENGTHS)).map(
        lambda t: t[0] + "a" * (t[1] - len(t[0].encode())))


def _long_bytes() -> st.SearchStrategy:
    return st.tuples(st.binary(max_size=8), st.sampled_from(LONG_LENGTHS)).map(
        lambda t: t[0] + bytes(t[1] - len(t[0])))


def _base(f: Any, msg_cls: type, version: int, long: bool) -> st.SearchStrategy:
    if f.struct_name is not None:
        return struct_strategy(getattr(msg_cls, f.struct_name), f.fields, msg_cls, version, long)
    name = f.primitive.name
    if name in _INTS:
        return _INTS[name]
    if name == "bool":
        return st.booleans()
    if name == "float64":
        return st.floats(allow_nan=False)
    if name == "string":
        short = st.text(max_size=12)
        return _sometimes(short, _long_text()) if long else short
    if name in ("bytes", "records"):
        short = st.binary(max_size=40)
        return _sometimes(short, _long_bytes()) if long else short
    if name == "uuid":
        return st.uuids()
    raise AssertionError(f"no strategy for {name}")


def field_strategy(f: Any, msg_cls: type, version: int, long: bool = True) -> st.SearchStrategy:
    base = _base(f, msg_cls, version, long)
    if f.is_array:
        short = st.lists(base, max_size=3).map(tuple)
        if long:
            # One element repeated, itself without long values, so that
            # long arrays nested in long arrays cannot multiply the size.
            repeated = st.tuples(_base(f, msg_cls, version, False), st.sampled_from(LONG_COUNTS))
            base = _sometimes(short, repeated.map(lambda t: (t[0],) * t[1]))
        else:
            base = short
    if version in f.nullable:
        base = st.one_of(st.none(), base)
    return base


def struct_strategy(cls: type, fields: Any, msg_cls: type, version: int,
                    long: bool = True) -> st.SearchStrategy:
    kw = {f.name: field_strategy(f, msg_cls, version, long) for f in fields if version in f.versions}
    return st.builds(cls, **kw)


def message_strategy(cls: type, version: int, *, long: bool = True) -> st.SearchStrategy:
    """Any valid `cls` message for `version`; `long=False` keeps every string, bytes
    and array short (for tests whose cost grows with the square of the size)."""
    return struct_strategy(cls, cls._FIELDS, cls, version, long)


def decode_all(cls: type, version: int, buf: bytes) -> Any:
    """Decode a whole body; the calling test fails if any byte is left unread."""
    msg, end = decode_body(cls, version, buf)
    assert end == len(buf), f"{cls.__name__} v{version}: {len(buf) - end} of {len(buf)} bytes unread"
    return msg

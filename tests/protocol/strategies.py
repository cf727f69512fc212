"""Hypothesis strategies for every kafkad.protocol message, derived from its schema declaration,
and `decode_all`, the decoder that fails a test when bytes are left unread.

Walking the same `Field` declarations the codecs are compiled from means a
new field or version is covered without editing the tests; values are drawn
only for fields present in the version under test (the others must keep
their defaults, which is what a decoder returns for them).
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


def _base(f: Any, msg_cls: type, version: int) -> st.SearchStrategy:
    if f.struct_name is not None:
        return struct_strategy(getattr(msg_cls, f.struct_name), f.fields, msg_cls, version)
    name = f.primitive.name
    if name in _INTS:
        return _INTS[name]
    if name == "bool":
        return st.booleans()
    if name == "float64":
        return st.floats(allow_nan=False)
    if name == "string":
        return st.text(max_size=12)
    if name in ("bytes", "records"):
        return st.binary(max_size=40)
    if name == "uuid":
        return st.uuids()
    raise AssertionError(f"no strategy for {name}")


def field_strategy(f: Any, msg_cls: type, version: int) -> st.SearchStrategy:
    base = _base(f, msg_cls, version)
    if f.is_array:
        base = st.lists(base, max_size=3).map(tuple)
    if version in f.nullable:
        base = st.one_of(st.none(), base)
    return base


def struct_strategy(cls: type, fields: Any, msg_cls: type, version: int) -> st.SearchStrategy:
    kw = {f.name: field_strategy(f, msg_cls, version) for f in fields if version in f.versions}
    return st.builds(cls, **kw)


def message_strategy(cls: type, version: int) -> st.SearchStrategy:
    """Any valid `cls` message for `version`."""
    return struct_strategy(cls, cls._FIELDS, cls, version)


def decode_all(cls: type, version: int, buf: bytes) -> Any:
    """Decode a whole body; the calling test fails if any byte is left unread."""
    msg, end = decode_body(cls, version, buf)
    assert end == len(buf), f"{cls.__name__} v{version}: {len(buf) - end} of {len(buf)} bytes unread"
    return msg

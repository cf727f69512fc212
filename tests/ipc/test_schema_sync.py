"""The SEND_SYNC shortcut of `schema.decode_request` accepts and refuses exactly what
the general per-field checks do, on well-formed and hostile frames alike."""

from __future__ import annotations

from unittest import mock

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from client_shim import schema

SID = b"s" * 16
LIMIT = 1 << 20

# Each field: values the general checks accept and values they refuse (wrong
# types, bools where ints go, the edges of every range, bad names and items).
_edges = st.sampled_from([0, 1, -1, -2, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -2**63])
_ints = st.one_of(_edges, st.integers(-2**63, 2**64 - 1))
_anything = st.one_of(st.none(), st.booleans(), _ints, st.floats(allow_nan=False),
                      st.text(max_size=5), st.binary(max_size=20), st.lists(_ints, max_size=2),
                      st.dictionaries(st.text(max_size=2), _ints, max_size=1))
# Mostly the edges of the int ranges (hypothesis would otherwise seldom pick them).
_int_field = st.integers(0, 3).flatmap(lambda k: (_edges, _edges, _ints, _anything)[k])
_blob = st.one_of(st.none(), st.binary(max_size=8))
_blobs = st.one_of(st.lists(_blob, max_size=4), st.lists(st.one_of(_blob, _anything), max_size=3), _anything)
FIELD_VALUES = [
    st.one_of(st.binary(min_size=15, max_size=17), _anything),                  # session_id
    _int_field,                                                                # req_id
    st.one_of(st.sampled_from(["t", ".", "..", "a.b", "a" * 249, "a" * 250, "a b", "t\n", "é", ""]),
              st.text(alphabet="ab._-/", max_size=4), _anything),              # topic
    _int_field,                                                                # partition
    _int_field,                                                                # timestamp_ms
    st.one_of(st.none(), _blobs),                                              # keys
    _blobs,                                                                    # values
]


@st.composite
def sync_frames(draw):
    """A SEND_SYNC frame with one field (sometimes several) drawn from anything,
    sometimes too short or with extra fields."""
    fields = [SID, 7, "topic", 0, 1_700_000_000_000, None, [b"v"]]
    if draw(st.integers(0, 4)):
        i = draw(st.integers(0, 6))
        fields[i] = draw(FIELD_VALUES[i])
    else:
        for i, strategy in enumerate(FIELD_VALUES):
            if draw(st.booleans()):
                fields[i] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        fields = fields[:draw(st.integers(0, 6))]
    elif draw(st.integers(0, 4)) == 0:
        fields.append(draw(_anything))
    return msgpack.packb([schema.SEND_SYNC, *fields], use_bin_type=True)


def _outcome(frame: bytes):
    try:
        return "ok", schema.decode_request(frame, LIMIT)
    except schema.SchemaError as exc:
        return "refused", exc.code, str(exc)


def _general(frame: bytes):
    with mock.patch.object(schema, "_sync_fields_ok", lambda msg: False):
        return _outcome(frame)


@settings(max_examples=1500, deadline=None)
@given(sync_frames())
def test_the_sync_shortcut_decides_as_the_general_checks(frame):
    assert _outcome(frame) == _general(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda tail: b"\x98\x04" + tail))
def test_hostile_bytes_after_the_sync_kind_decide_as_the_general_checks(frame):
    # 0x98 0x04: an 8-element array starting with SEND_SYNC, then anything at all.
    assert _outcome(frame) == _general(frame)


def test_the_shortcut_takes_a_well_formed_frame_and_refuses_the_rest():
    ok = [schema.SEND_SYNC, SID, 7, "t", 3, -1, [b"k", None], [b"a", None]]
    assert schema._sync_fields_ok(ok)
    assert schema.decode_request(schema.encode(ok + ["a later field"]), LIMIT) == (schema.SEND_SYNC, ok[1:])
    for i, bad in [(1, b"short"), (2, True), (2, -1), (3, ".."), (3, "a/b"), (4, 2**31), (5, 2**63),
                   (5, -2), (6, [1]), (6, {"k": 1}), (6, [b"k"]), (6, [b"k", None, None]), (7, []),
                   (7, [b"a", "text"]), (7, None)]:
        frame = list(ok)
        frame[i] = bad
        assert not schema._sync_fields_ok(frame), (i, bad)
        assert _outcome(schema.encode(frame)) == _general(schema.encode(frame))
        assert _outcome(schema.encode(frame))[0] == "refused"


@settings(max_examples=200, deadline=None)
@given(sync_frames())
def test_encode_makes_the_bytes_msgpack_packb_makes(frame):
    msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    assert schema.encode(msg) == msgpack.packb(msg, use_bin_type=True) == frame


def test_sync_keys_must_match_values_in_length():
    """As in a SEND entry: a keys list is as long as values (a frame the engine would
    refuse with an internal error otherwise)."""
    frame = schema.encode([schema.SEND_SYNC, SID, 7, "t", 0, 0, [b"k"], [b"a", b"b"]])
    assert _outcome(frame) == _general(frame) == (
        "refused", schema.E_MALFORMED, "keys and values must have the same length")
    ok = schema.encode([schema.SEND_SYNC, SID, 7, "t", 0, 0, [b"k", None], [b"a", b"b"]])
    assert _outcome(ok) == _general(ok) == ("ok", (schema.SEND_SYNC, [SID, 7, "t", 0, 0, [b"k", None], [b"a", b"b"]]))

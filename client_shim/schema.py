"""The frames on the shim <-> kafkad link: one versioned definition for both sides.

Transport: ZeroMQ DEALER (each shim process) to ROUTER (the daemon). Every
ZeroMQ message is one frame (the ROUTER adds the peer's routing id in front):
a msgpack array whose first element is the kind, then the kind's fields in the
order listed in `FIELDS`. docs/ipc-schema.md describes the same thing for
people; this module is what both sides run.

Versioning: `SCHEMA_VERSION` travels in HELLO and REGISTER. A daemon answers
a version it does not speak with ERROR(BAD_VERSION). Within one version a
sender may append fields at the end of a frame and a receiver ignores fields
beyond those it knows (`decode` allows it); anything else (removing,
reordering, changing a field's meaning or type) needs a new version. A new
shim -> daemon kind within a version is sent only to a daemon that lists its
feature name in REGISTERED (FLUSH: "flush", SEND_GROUPS: "send_groups"); a
daemon that lists "room" sends ROOM after a QUEUE_FULL refusal, so the shim
waits for it instead of retrying on a timer.

The module is pure (stdlib + msgpack): the daemon imports it, the shim owns
it, and it never imports either side.
"""

from __future__ import annotations

import math
import re

import msgpack

SCHEMA_VERSION = 1

# --- kinds: shim -> daemon -------------------------------------------------
HELLO = 1         # [HELLO, version, req_id]
REGISTER = 2      # [REGISTER, version, req_id, session_id, first_seq, settings]
SEND = 3          # [SEND, session_id, entries]; entry = [first_seq, topic, partition, ts_ms, keys|None, values]
SEND_SYNC = 4     # [SEND_SYNC, session_id, req_id, topic, partition, ts_ms, keys|None, values]
METADATA = 5      # [METADATA, req_id, topic]
UNREGISTER = 6    # [UNREGISTER, req_id, session_id]
STATS = 7         # [STATS, req_id]
FLUSH = 8         # [FLUSH, session_id]  (no reply; only to a daemon announcing "flush")
SEND_GROUPS = 9   # [SEND_GROUPS, session_id, groups]; group = [topic, partition, ts_ms, firsts, counts|None, keys|None, values]
                  # (async, like SEND; only to a daemon announcing "send_groups")

# --- kinds: daemon -> shim -------------------------------------------------
HELLO_OK = 64     # [HELLO_OK, req_id, version, instance_id, limits]
REGISTERED = 65   # [REGISTERED, req_id, session_id, next_seq, instance_id]
RESULT = 66       # [RESULT, req_id, partition, error, base_offset]
ACK = 67          # [ACK, session_id, [first_seq, ...]]  (whole SEND entries delivered)
FAILED = 68       # [FAILED, session_id, [[first_seq, [[index, count, error], ...]], ...]]
REJECTED = 69     # [REJECTED, session_id, from_seq, code, message]  (async entries from from_seq not taken)
PARTITIONS = 70   # [PARTITIONS, req_id, error, [partition ids], pick]; pick: see PICK_PARTITION_MIN
STATS_REPLY = 71  # [STATS_REPLY, req_id, {stats}]
ERROR = 72        # [ERROR, req_id|None, code, message, session_id|None]
UNREGISTERED = 73  # [UNREGISTERED, req_id, undelivered_count]
# Unasked: the partition list of a topic this peer asked about (METADATA) changed, or
# (error != 0, []) the topic is gone. The shim replaces its cached list; a shim that
# does not know the kind ignores it (receivers ignore kinds they do not know).
PARTITIONS_CHANGED = 74  # [PARTITIONS_CHANGED, topic, error, [partition ids]]
# Unasked, from a daemon announcing "room" in REGISTERED: the queue that refused this
# session's entries with REJECTED(QUEUE_FULL) has room again; replay them now.
ROOM = 75         # [ROOM, session_id]

KIND_NAMES = {v: k for k, v in dict(globals()).items()
              if k.isupper() and isinstance(v, int) and 1 <= v < 128 and k not in ("SCHEMA_VERSION",)}

# --- link-level error codes (ERROR and REJECTED frames; not Kafka codes) ----
E_MALFORMED = 1          # not msgpack, not an array, wrong field types or counts
E_UNKNOWN_KIND = 2
E_TOO_LARGE = 3          # frame over max_frame_bytes, or a field over its limit
E_BAD_VERSION = 4
E_UNKNOWN_SESSION = 5    # SEND/SEND_SYNC/UNREGISTER for a session never registered (or evicted)
E_QUEUE_FULL = 6         # the daemon's queue (or this session's share of it) is full
E_STOPPING = 7           # the daemon is shutting down and takes no new messages
E_OUT_OF_ORDER = 8       # a SEND entry skipped sequence numbers (an earlier one was not taken)
E_TOO_MANY_SESSIONS = 9
E_INVALID = 10           # well-formed but invalid values (settings, topic name, partition)
E_INTERNAL = 11

ERROR_NAMES = {v: k[2:] for k, v in dict(globals()).items() if k.startswith("E_")}

# An error code in a FAILED run (beside Kafka's codes, which are all above -2):
# the entry was replayed after the daemon forgot how it ended. It failed or was
# delivered before; the daemon cannot say which, so it does not claim success.
OUTCOME_FORGOTTEN = -1000

# --- limits ----------------------------------------------------------------
MAX_TOPIC_LEN = 249
SESSION_ID_LEN = 16
MAX_REQ_ID = 2**63 - 1
MAX_SEQ = 2**63 - 1
MAX_PARTITION = 2**31 - 1
# A negative partition p asks the daemon to pick: partition i % n of the topic's
# n sorted partition ids, i = -1 - p (PICK_PARTITION_MIN <= p <= -1). The shim
# sends one only while it knows no partition list for the topic and the daemon
# it is connected to answered that topic's METADATA with `pick` (a daemon that
# predates this never does; it also lists "pick_partition" in REGISTERED).
# docs/ipc-schema.md "Partitions the daemon picks".
PICK_PARTITION_MIN = -2**31


def group_key(latest: dict, topic: str, partition: int, fresh: int) -> tuple:
    """The key under which an item of a frame may be merged with others, order kept.

    Whoever merges a frame's entries per (topic, partition) (the shim's
    SEND_GROUPS, the daemon's submissions and spool entries) asks this for
    each item in seq order. It is (topic, partition) while the topic had no
    negative partition in the frame. From a topic's first negative one on,
    an item joins only the topic's latest group, and only with the same
    partition value; anything else starts a group of its own: two negative
    values can stand for the same partition, and merging past one would let a
    later record overtake an earlier one of that partition. `latest` is the
    caller's dict for this frame (empty at its start); `fresh` a number no
    other group of the frame has (the group count, say).
    """
    if partition >= 0 and topic not in latest:
        return (topic, partition)
    key = latest.get(topic)
    if key is None or key[1] != partition:
        key = (topic, partition, fresh)
    latest[topic] = key
    return key
# One send_messages call (its payloads and keys) must stay below this, so an
# entry always fits a frame under the daemon's default max_frame_bytes (16 MiB).
MAX_CALL_BYTES = 8 * 1024 * 1024
# What each message of a call adds to a frame besides its bytes (msgpack's bin
# headers of its value and key), counted against MAX_CALL_BYTES: a call of
# millions of empty messages is as large as its frame, not zero.
MESSAGE_OVERHEAD = 10
# The shim cuts SEND frames at about this size (many entries per frame); the
# daemon's own cap ([ipc] max_frame_bytes) is what it enforces.
TARGET_FRAME_BYTES = 256 * 1024

SETTINGS_FIELDS = {
    # name: (types, required)
    "acks": (int, True),
    "ack_timeout_ms": (int, True),
    "codec": (int, True),
    "codec_level": ((int, type(None)), True),
    "async_send": (bool, True),
    "batch_n": (int, True),
    "batch_t": ((int, float), True),
    "retry_limit": ((int, type(None)), True),
    "retry_backoff_ms": ((int, float), True),
    "retry_on_timeouts": (bool, True),
    "log_messages_on_error": (bool, True),
    "queue_maxsize": (int, False),
    "stop_timeout_s": ((int, float), False),
    "pid": (int, False),
    # This shim waits for ROOM after REJECTED(QUEUE_FULL) from a daemon announcing
    # "room"; a daemon sends ROOM only to sessions that said so.
    "room": (bool, False),
}

_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")


def ipv6_endpoint(endpoint: str) -> bool:
    """Whether `endpoint` names an IPv6 address (tcp://[::1]:PORT): its ZeroMQ socket
    needs the IPV6 option. Only then: with it, a host name such as localhost may
    resolve to ::1 alone, where IPv4 peers (older shims and daemons) cannot reach it."""
    return endpoint.startswith("tcp://[")


class SchemaError(ValueError):
    """A frame that does not follow this schema; `code` is an E_* value."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def topic_problem(topic) -> str | None:
    """Why `topic` is not a valid Kafka topic name, or None if it is."""
    if not isinstance(topic, str):
        return f"must be a str, not {type(topic).__name__}"
    if topic in (".", ".."):
        return f"{topic!r} is not allowed"
    if not _TOPIC_RE.match(topic):
        return (f"{topic!r} is not a legal name: 1-249 characters of "
                "ASCII letters, digits, '.', '_' and '-'")
    return None


_Packer = msgpack.Packer


def encode(frame: list) -> bytes:
    # msgpack.packb(frame, use_bin_type=True) without packb's **kwargs wrapper
    # (0.3 of its 0.65 us on a sync send's frame); the same Packer, the same bytes.
    return _Packer(use_bin_type=True).pack(frame)


# --- decoding (used by the daemon on untrusted input, and by the shim) -----

def _int(lo: int, hi: int):
    def check(v, name):
        if type(v) is not int or not lo <= v <= hi:
            raise SchemaError(E_MALFORMED, f"{name} must be an int in [{lo}, {hi}]")
        return v
    return check


def _session_id(v, name):
    if type(v) is not bytes or len(v) != SESSION_ID_LEN:
        raise SchemaError(E_MALFORMED, f"{name} must be {SESSION_ID_LEN} bytes")
    return v


def _topic(v, name):
    problem = topic_problem(v)
    if problem:
        raise SchemaError(E_INVALID, f"{name} {problem}")
    return v


def _blobs(v, name, *, optional=False):
    if v is None and optional:
        return v
    if type(v) is not list:
        raise SchemaError(E_MALFORMED, f"{name} must be a list")
    for item in v:
        if item is not None and type(item) is not bytes:
            raise SchemaError(E_MALFORMED, f"{name} items must be bytes or nil")
    return v


def _values(v, name):
    _blobs(v, name)
    if not v:
        raise SchemaError(E_INVALID, f"{name} must hold at least one message")
    return v


def _keys(v, name):
    return _blobs(v, name, optional=True)


def _settings(v, name):
    if type(v) is not dict:
        raise SchemaError(E_MALFORMED, f"{name} must be a map")
    for key, (types, required) in SETTINGS_FIELDS.items():
        if key not in v:
            if required:
                raise SchemaError(E_MALFORMED, f"{name}.{key} is missing")
            continue
        val = v[key]
        if isinstance(val, bool) and types is not bool and bool not in (
                types if isinstance(types, tuple) else (types,)):
            raise SchemaError(E_MALFORMED, f"{name}.{key} must not be a bool")
        if not isinstance(val, types):
            raise SchemaError(E_MALFORMED, f"{name}.{key} has the wrong type")
        if type(val) is float and not math.isfinite(val):
            raise SchemaError(E_INVALID, f"{name}.{key} must be a finite number")
    return v


def _entries(v, name):
    # The hot path of the daemon (one call per SEND frame, hundreds of entries
    # each): checks are inlined, and a topic name is checked once per frame.
    if type(v) is not list or not v:
        raise SchemaError(E_MALFORMED, f"{name} must be a non-empty list")
    good_topics: set = set()
    for e in v:
        if type(e) is not list or len(e) < 6:
            raise SchemaError(E_MALFORMED, f"{name} items must be [first_seq, topic, partition, ts_ms, keys, values]")
        first, topic, partition, ts, keys, values = e if len(e) == 6 else e[:6]
        if type(first) is not int or type(partition) is not int or type(ts) is not int:
            raise SchemaError(E_MALFORMED, "first_seq, partition and timestamp_ms must be ints")
        if not (0 <= first <= MAX_SEQ and PICK_PARTITION_MIN <= partition <= MAX_PARTITION and -1 <= ts < 2**63):
            raise SchemaError(E_MALFORMED, f"first_seq, partition or timestamp_ms out of range in entry {first}")
        if type(topic) is not str or topic not in good_topics:   # (a list or map is unhashable)
            _topic(topic, "topic")
            good_topics.add(topic)
        if type(values) is not list:
            raise SchemaError(E_MALFORMED, "values must be a list")
        if len(values) == 1:
            item = values[0]
            if item is not None and type(item) is not bytes:
                raise SchemaError(E_MALFORMED, "values items must be bytes or nil")
        elif not values:
            raise SchemaError(E_INVALID, "values must hold at least one message")
        else:
            for item in values:
                if item is not None and type(item) is not bytes:
                    raise SchemaError(E_MALFORMED, "values items must be bytes or nil")
        if keys is not None:
            _blobs(keys, "keys")
            if len(keys) != len(values):
                raise SchemaError(E_MALFORMED, "keys and values must have the same length")
    return v


_BLOB_TYPES = frozenset((bytes, type(None)))
_INT_TYPES = frozenset((int,))
_GROUP_SHAPE = "[topic, partition, timestamp_ms, firsts, counts|nil, keys|nil, values]"


def _groups(v, name):
    # SEND_GROUPS: the entries of a frame by (topic, partition), as columns. The
    # daemon's hot path: per-item checks are C-level passes over whole columns
    # (set(map(type, ...)), min, max, sum), never a Python loop per message.
    if type(v) is not list or not v:
        raise SchemaError(E_MALFORMED, f"{name} must be a non-empty list")
    good_topics: set = set()
    for g in v:
        if type(g) is not list or len(g) < 7:
            raise SchemaError(E_MALFORMED, f"{name} items must be {_GROUP_SHAPE}")
        topic, partition, ts, firsts, counts, keys, values = g if len(g) == 7 else g[:7]
        if type(partition) is not int or type(ts) is not int:
            raise SchemaError(E_MALFORMED, "partition and timestamp_ms must be ints")
        if not (PICK_PARTITION_MIN <= partition <= MAX_PARTITION and -1 <= ts < 2**63):
            raise SchemaError(E_MALFORMED, "partition or timestamp_ms out of range")
        if type(topic) is not str or topic not in good_topics:   # (a list or map is unhashable)
            _topic(topic, "topic")
            good_topics.add(topic)
        if type(values) is not list or type(firsts) is not list:
            raise SchemaError(E_MALFORMED, "firsts and values must be lists")
        n = len(values)
        if not n or not firsts:
            raise SchemaError(E_INVALID, "a group must hold at least one message")
        if not set(map(type, values)) <= _BLOB_TYPES:
            raise SchemaError(E_MALFORMED, "values items must be bytes or nil")
        if keys is not None:
            if type(keys) is not list or len(keys) != n:
                raise SchemaError(E_MALFORMED, "keys must be nil or a list as long as values")
            if not set(map(type, keys)) <= _BLOB_TYPES:
                raise SchemaError(E_MALFORMED, "keys items must be bytes or nil")
        if set(map(type, firsts)) != _INT_TYPES:
            raise SchemaError(E_MALFORMED, "firsts must be ints")
        if counts is None:
            last = 1               # one message per entry
            if len(firsts) != n:
                raise SchemaError(E_MALFORMED, "without counts, firsts and values must have the same length")
        else:
            if type(counts) is not list or len(counts) != len(firsts):
                raise SchemaError(E_MALFORMED, "counts must be nil or a list as long as firsts")
            if set(map(type, counts)) != _INT_TYPES or min(counts) < 1:
                raise SchemaError(E_MALFORMED, "counts must be ints >= 1")
            if sum(counts) != n:
                raise SchemaError(E_MALFORMED, "counts must add up to the number of values")
            last = counts[-1]
        # Strictly increasing (so firsts[0] and firsts[-1] bound them), within range.
        if firsts[0] < 0 or firsts[-1] + last - 1 > MAX_SEQ:
            raise SchemaError(E_MALFORMED, "firsts out of range")
        if len(firsts) > 1 and (sorted(firsts) != firsts or len(set(firsts)) != len(firsts)):
            raise SchemaError(E_MALFORMED, "firsts must be strictly increasing")
    return v


def _any(v, name):
    return v


_req = _int(0, MAX_REQ_ID)
_version = _int(0, 2**31 - 1)

# Client -> daemon frames: the daemon checks every field with these.
FIELDS = {
    HELLO: (("version", _version), ("req_id", _req)),
    REGISTER: (("version", _version), ("req_id", _req), ("session_id", _session_id),
               ("first_seq", _int(0, MAX_SEQ)), ("settings", _settings)),
    SEND: (("session_id", _session_id), ("entries", _entries)),
    SEND_SYNC: (("session_id", _session_id), ("req_id", _req), ("topic", _topic),
                ("partition", _int(PICK_PARTITION_MIN, MAX_PARTITION)), ("timestamp_ms", _int(-1, 2**63 - 1)),
                ("keys", _keys), ("values", _values)),
    METADATA: (("req_id", _req), ("topic", _topic)),
    UNREGISTER: (("req_id", _req), ("session_id", _session_id)),
    STATS: (("req_id", _req),),
    FLUSH: (("session_id", _session_id),),
    SEND_GROUPS: (("session_id", _session_id), ("groups", _groups)),
}


_topic_match = _TOPIC_RE.match


def _sync_fields_ok(msg: list) -> bool:
    """True if a SEND_SYNC frame's fields pass every check of FIELDS[SEND_SYNC].

    The sync path's shortcut (one call, no per-field calls): it accepts exactly
    what the general checks accept; on False the general checks run and name
    the problem. tests/ipc/test_schema_sync.py holds it to that.
    """
    sid, req_id, topic, partition, ts, keys, values = msg[1:8]
    if type(sid) is not bytes or len(sid) != SESSION_ID_LEN:
        return False
    if type(req_id) is not int or not 0 <= req_id <= MAX_REQ_ID:
        return False
    if type(topic) is not str or topic in (".", "..") or not _topic_match(topic):
        return False
    if type(partition) is not int or not PICK_PARTITION_MIN <= partition <= MAX_PARTITION:
        return False
    if type(ts) is not int or not -1 <= ts <= 2**63 - 1:
        return False
    if type(values) is not list or not values:
        return False
    if len(values) == 1:
        if type(values[0]) is not bytes and values[0] is not None:
            return False
    elif not set(map(type, values)) <= _BLOB_TYPES:
        return False
    return keys is None or (type(keys) is list and len(keys) == len(values)
                            and set(map(type, keys)) <= _BLOB_TYPES)


def decode_request(frame: bytes, max_bytes: int) -> tuple[int, list]:
    """Unpack and check a client frame: (kind, fields). Raises SchemaError.

    Safe on hostile input: the size is checked before unpacking, msgpack's
    own limits are bounded by the frame length, and every field is checked
    for type and range (extra trailing fields are ignored, per the version rule).
    """
    if len(frame) > max_bytes:
        raise SchemaError(E_TOO_LARGE, f"frame of {len(frame)} bytes is over the {max_bytes}-byte limit")
    try:
        msg = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise SchemaError(E_MALFORMED, f"not a msgpack frame ({type(exc).__name__})") from None
    if type(msg) is not list or not msg:
        raise SchemaError(E_MALFORMED, "a frame must be a non-empty msgpack array")
    kind = msg[0]
    if type(kind) is not int:
        raise SchemaError(E_MALFORMED, "the first element of a frame must be the kind (int)")
    if kind == SEND_SYNC and len(msg) >= 8 and _sync_fields_ok(msg):
        return kind, msg[1:8]
    spec = FIELDS.get(kind)
    if spec is None:
        raise SchemaError(E_UNKNOWN_KIND, f"unknown frame kind {kind!r}")
    if len(msg) - 1 < len(spec):
        raise SchemaError(E_MALFORMED, f"{KIND_NAMES[kind]} needs {len(spec)} fields, got {len(msg) - 1}")
    fields = msg[1:len(spec) + 1]
    for value, (name, check) in zip(fields, spec):
        check(value, name)
    if kind == SEND_SYNC and fields[5] is not None and len(fields[5]) != len(fields[6]):
        raise SchemaError(E_MALFORMED, "keys and values must have the same length")
    return kind, fields


def decode_reply(frame: bytes) -> list:
    """Unpack a daemon frame for the shim (a trusted peer): the raw array."""
    msg = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=False)
    if type(msg) is not list or not msg or type(msg[0]) is not int:
        raise SchemaError(E_MALFORMED, "reply is not a frame")
    return msg


def req_id_of(frame_fields: list, kind: int):
    """The req_id of a decoded client frame, or None for kinds that have none."""
    for (name, _), value in zip(FIELDS[kind], frame_fields):
        if name == "req_id":
            return value
    return None

"""Hostile input: the daemon's frame decoder under hypothesis, a live flood of bad frames from
raw ZeroMQ sockets of several types next to a good client, and mutated config files.

The decoder's entry point is `client_shim.schema.decode_request(frame, max_bytes)` (the daemon's
IPC server calls it on every frame). Its contract: return (kind, fields) with every field
checked, or raise `SchemaError` with an E_* code; nothing else, whatever the bytes.
"""

from __future__ import annotations

import os
import random
import re
import threading

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_shim import schema
from tests.reliability.harness import report
from tests.support.audit import audit, check_accounting, read_topic, stamp, worker_key

MAX = 1 << 20

# msgpack-able values, nested: what a confused or malicious peer could pack.
_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.floats(allow_nan=True) | st.text(max_size=40) | st.binary(max_size=64))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)


def _check_decode(frame: bytes) -> None:
    try:
        kind, fields = schema.decode_request(frame, MAX)
    except schema.SchemaError as exc:
        assert exc.code in schema.ERROR_NAMES, exc.code
        return
    # Accepted: a known kind with exactly its declared fields.
    assert kind in schema.FIELDS
    assert len(fields) == len(schema.FIELDS[kind])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_decoder_on_arbitrary_bytes(frame):
    _check_decode(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(schema.FIELDS)), st.lists(_values, max_size=9))
def test_decoder_on_frames_of_every_kind_with_random_fields(kind, fields):
    _check_decode(msgpack.packb([kind, *fields], use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_decoder_on_valid_frames_with_one_field_corrupted(data):
    sid = bytes(range(16))
    good = {
        schema.SEND: [schema.SEND, sid, [[0, "topic", 0, 1, None, [b"v"]]]],
        schema.SEND_SYNC: [schema.SEND_SYNC, sid, 1, "topic", 0, 1, [b"k"], [b"v"]],
        schema.METADATA: [schema.METADATA, 1, "topic"],
        schema.UNREGISTER: [schema.UNREGISTER, 1, sid],
        schema.STATS: [schema.STATS, 1],
    }
    kind = data.draw(st.sampled_from(sorted(good)))
    frame = list(good[kind])
    kind_, _ = schema.decode_request(msgpack.packb(frame, use_bin_type=True), MAX)  # valid as built
    assert kind_ == kind
    i = data.draw(st.integers(min_value=1, max_value=len(frame) - 1))
    frame[i] = data.draw(_values)
    _check_decode(msgpack.packb(frame, use_bin_type=True))


def test_decoder_refuses_oversized_frames_before_unpacking():
    with pytest.raises(schema.SchemaError) as err:
        schema.decode_request(b"\x91" + b"\x00" * 2048, 1024)
    assert err.value.code == schema.E_TOO_LARGE


# --- live flood ------------------------------------------------------------------


def _hostile_frames(rng: random.Random) -> list[bytes]:
    sid = os.urandom(16)
    frames = [
        b"", b"\x00", b"\xc1", os.urandom(64), b"\x91", b"\xdd\xff\xff\xff\xff",  # truncated array32
        msgpack.packb({"kind": 1}), msgpack.packb([]), msgpack.packb(["HELLO"]),
        msgpack.packb([999, 1, 2]), msgpack.packb([schema.SEND, sid, [[0, "t", 0, 1, None, [b"v"]]]]),
        msgpack.packb([schema.SEND_SYNC, sid, 1, "bad topic!", 0, 1, None, [b"v"]]),
        msgpack.packb([schema.REGISTER, 999, 1, sid, 0, {}]),
        msgpack.packb([schema.REGISTER, schema.SCHEMA_VERSION, 1, b"short", 0, {"acks": 7}]),
        msgpack.packb([schema.METADATA, -1, "x" * 300]),
        msgpack.packb([schema.SEND, sid, [[0, "t", 2**40, 1, None, [b"v"] * 3]]]),
        b"\x92" + b"\xc4\xff" * 10,
    ]
    frames += [os.urandom(rng.randint(1, 256)) for _ in range(20)]
    return frames


def _flood(endpoint: str, stop: threading.Event, sent: list[int], errors: list[BaseException]) -> None:
    try:
        _flood_until(endpoint, stop, sent)
    except BaseException as exc:  # reported by the test: a flooder that died floods nothing
        errors.append(exc)


def _flood_until(endpoint: str, stop: threading.Event, sent: list[int]) -> None:
    import zmq

    rng = random.Random(7)
    ctx = zmq.Context()
    socks = []
    try:
        for kind in (zmq.DEALER, zmq.REQ, zmq.PUSH, zmq.PUB, zmq.PAIR, zmq.ROUTER, zmq.DEALER):
            s = ctx.socket(kind)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 1000)
            s.connect(endpoint)
            socks.append((kind, s))
        frames = _hostile_frames(rng)
        big = b"\x91\xc6" + (20 * 1024 * 1024).to_bytes(4, "big") + b"\x00" * (20 * 1024 * 1024)
        n = 0
        while not stop.is_set():
            for kind, s in socks:
                try:
                    if kind == zmq.REQ:
                        if n % 50:
                            continue
                        s.send(rng.choice(frames), zmq.NOBLOCK)
                        # REQ needs a reply before the next send: replace the socket instead.
                        # Only every 50th turn: closed sockets are reaped asynchronously and a
                        # context holds at most 1023 (zmq reports EMFILE past that).
                        s.close(0)
                        s2 = ctx.socket(zmq.REQ)
                        s2.setsockopt(zmq.LINGER, 0)
                        s2.connect(endpoint)
                        socks[socks.index((kind, s))] = (kind, s2)
                    elif kind == zmq.ROUTER:
                        s.send_multipart([b"nobody", rng.choice(frames)], zmq.NOBLOCK)
                    elif n % 500 == 499 and kind == zmq.DEALER:
                        s.send(big, zmq.NOBLOCK)                            # over max_frame_bytes
                    elif n % 7 == 0:
                        s.send_multipart([rng.choice(frames), rng.choice(frames)], zmq.NOBLOCK)
                    else:
                        s.send(rng.choice(frames), zmq.NOBLOCK)
                    n += 1
                except zmq.Again:
                    pass
        sent.append(n)
    finally:
        for _, s in socks:
            s.close(0)
        ctx.term()


@pytest.mark.broker
def test_hostile_flood_while_a_good_client_keeps_working(tansu, topic, kafkad_factory):
    from client_shim import KeyedProducer

    d = kafkad_factory(tansu.bootstrap, request_timeout_ms=3000)
    d.start()
    stop = threading.Event()
    sent: list[int] = []
    errors: list[BaseException] = []
    flooders = [threading.Thread(target=_flood, args=(d.endpoint, stop, sent, errors), daemon=True)
                for _ in range(2)]
    for t in flooders:
        t.start()
    good = KeyedProducer(d.endpoint)
    count = 300
    try:
        for seq in range(count):
            (r,) = good.send_messages(topic, worker_key(0), stamp(0, seq))
            assert r.error == 0
    finally:
        stop.set()
        for t in flooders:
            t.join(20)
        good.stop()
    assert not errors, f"a flooder died: {errors!r}"
    stats = d.stats()
    rep = audit(read_topic(tansu.bootstrap, topic, expected=count), {0: range(count)})
    bad = stats["ipc"]["bad_frames_total"]
    report("hostile-flood", rep, d, hostile_frames_sent=sum(sent), bad_frames_counted=bad)
    assert rep.clean, rep.details()
    assert d.running
    assert bad > 100, stats["ipc"]
    assert check_accounting(stats) == []
    assert "Traceback" not in d.logs()


# --- config files ------------------------------------------------------------------

# PATH[:LINE]: key: problem (the key may be a short label, e.g. "invalid TOML").
_PROBLEM = re.compile(r"^\S+?(:\d+)?: [^:]+: .+$")


def _mutations(text: str, rng: random.Random) -> list[str]:
    lines = text.splitlines()
    out = []
    for _ in range(40):
        ls = list(lines)
        op = rng.randrange(6)
        i = rng.randrange(len(ls))
        if op == 0:
            ls[i] = ls[i][: rng.randrange(len(ls[i]) + 1)]                   # truncate a line
        elif op == 1:
            ls.insert(i, f"typo_key_{rng.randrange(99)} = 1")                   # unknown key
        elif op == 2 and "=" in ls[i] and not ls[i].lstrip().startswith("#"):
            k = ls[i].split("=")[0]
            ls[i] = k + "= " + rng.choice(['"x"', "-1", "1e99", "[1, 2]", "{}", "true", "99999999999"])
        elif op == 3:
            ls.insert(i, rng.choice(["[kafka", "[[kafka]]", "[nosuch]", "= 1", "x = ", "\x00"]))
        elif op == 4:
            ls.insert(i, ls[i])                                                 # duplicate a line
        else:
            ls[i] = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 30)))
        out.append("\n".join(ls) + "\n")
    return out


def test_check_config_on_mutated_files_exits_0_or_2_with_located_problems(tmp_path):
    """Every mutation of the example: exit 0, or exit 2 with only `PATH:LINE: key: problem` lines.

    tests/service covers each documented error path with a fixed file; this
    throws random damage at the real command and checks it never crashes,
    never prints a traceback and never returns an unlocated complaint.
    """
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    example = open(os.path.join(root, "kafkad.toml.example")).read()
    rng = random.Random(20261127)
    paths = []
    for n, text in enumerate(_mutations(example, rng)):
        p = tmp_path / f"m{n}.toml"
        p.write_text(text)
        paths.append(p)
    # One interpreter checks every file (a process per file would cost seconds).
    code = ("import sys, contextlib, io\nfrom kafkad.cli import main\n"
            "for p in sys.argv[1:]:\n"
            "    out, err = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "        try:\n"
            "            rc = main(['check-config', '--no-file-checks', p])\n"
            "        except SystemExit as e:\n"
            "            rc = e.code\n"
            "    print(repr((p, rc, err.getvalue())))\n")
    r = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
                       timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    import ast

    outcomes = [ast.literal_eval(line) for line in r.stdout.splitlines() if line.startswith("(")]
    assert len(outcomes) == len(paths)
    codes = {0: 0, 2: 0}
    for path, rc, err in outcomes:
        assert rc in (0, 2), (path, rc, err, open(path).read())
        codes[rc] += 1
        if rc == 2:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert lines, f"exit 2 without a message for {path}"
            for ln in lines:
                assert ln.startswith(str(path)), (ln, open(path).read())
                assert _PROBLEM.match(ln), ln
        assert "Traceback" not in err
    assert codes[2] > 20, codes

"""Damage on disk and I/O errors: torn tails, flipped bits, missing segments, unknown formats, full disks."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import kafkad.spool as spool_mod
from kafkad.spool import SpoolFormatError, SpoolFull, SpoolUnavailable, State
from kafkad.spool.frame import HEADER_BYTES, BadRegion, Frame, encode_frame, scan
from tests.spool.helpers import config, entry, number, segment_files, snapshot


def _fill(cfg, n, **kw):
    with spool_mod.open(cfg) as sp:
        ids = [sp.append(entry(i, **kw)) for i in range(1, n + 1)]
        sp.commit()
    return ids


def _frame_bounds(path):
    """[(start, end, id)] of the frames in a healthy segment file."""
    data = open(path, "rb").read()
    return [(f.start, f.end, f.frame_id) for f in scan(data) if isinstance(f, Frame)]


def test_torn_tail_is_cut_and_everything_before_it_kept(tmp_path):
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1 << 20)
    _fill(cfg, 20)
    seg = path / segment_files(path)[-1]
    good_size = os.path.getsize(seg)
    half_frame = encode_frame(21, b"x" * 200)[:100]
    with open(seg, "ab") as f:
        f.write(half_frame)
    with spool_mod.open(cfg) as sp:
        assert [number(e) for _, e in sp.pending()] == list(range(1, 21))
        st = sp.stats(time.time())
        assert st["torn_tails"] == 1 and st["damaged_entries"] == 0
        assert os.path.getsize(seg) == good_size
        sp.append(entry(21))
        sp.commit()
    with spool_mod.open(cfg) as sp:
        assert [number(e) for _, e in sp.pending()] == list(range(1, 22))
        assert sp.stats(time.time())["damaged"] == 0     # counted once, not at every start


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_flipped_bit_costs_exactly_the_record_it_hit(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("flip") / "sp"
    cfg = config(path, segment_bytes=1500)
    _fill(cfg, 30, size=60)
    segs = segment_files(path)
    name = data.draw(st.sampled_from(segs), label="segment")
    size = os.path.getsize(path / name)
    pos = data.draw(st.integers(0, size - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    hit = next(fid for start, end, fid in _frame_bounds(path / name) if start <= pos < end)
    with open(path / name, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ (1 << bit)]))
    with spool_mod.open(cfg) as sp:
        got = [number(e) for _, e in sp.pending()]
        st_ = sp.stats(time.time())
    assert got == [n for n in range(1, 31) if n != hit]
    assert st_["damaged"] >= 1
    with spool_mod.open(cfg) as sp:                      # a second start finds it settled
        assert [number(e) for _, e in sp.pending()] == got


def test_garbage_between_records_is_skipped_and_counted(tmp_path):
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1 << 20)
    _fill(cfg, 10)
    seg = path / segment_files(path)[0]
    bounds = _frame_bounds(seg)
    data = bytearray(open(seg, "rb").read())
    s, e, _ = bounds[4]                      # wipe record 5 entirely, magic included
    data[s:e] = b"\x00" * (e - s)
    open(seg, "wb").write(data)
    with spool_mod.open(cfg) as sp:
        assert [number(x) for _, x in sp.pending()] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
        st_ = sp.stats(time.time())
        assert st_["corrupt_regions"] == 1 and st_["damaged_entries"] == 1


def test_scan_always_moves_forward_on_random_bytes():
    rnd = bytes((i * 7919 + 13) % 251 for i in range(50_000)) + b"\xd5\x9a" * 300
    items = list(scan(rnd))
    assert all(isinstance(i, BadRegion) for i in items)
    assert items[0].start == 0 and items[-1].end == len(rnd)


def test_a_missing_segment_is_counted_and_the_rest_kept(tmp_path):
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1024)
    _fill(cfg, 40)
    segs = segment_files(path)
    victim = segs[2]
    lost = {fid for _, _, fid in _frame_bounds(path / victim)}
    os.unlink(path / victim)
    with spool_mod.open(cfg) as sp:
        assert [number(e) for _, e in sp.pending()] == [n for n in range(1, 41) if n not in lost]
        st_ = sp.stats(time.time())
        assert st_["missing_segments"] == 1 and st_["damaged_entries"] == len(lost)
        assert sp.next_id == 41
    with spool_mod.open(cfg) as sp:
        assert sp.stats(time.time())["missing_segments"] == 0  # written off, counted once


def test_a_missing_newest_segment_is_noticed_through_the_checkpoint(tmp_path):
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1024)
    with spool_mod.open(cfg, release_log_bytes=1) as sp:
        for n in range(1, 41):
            sp.append(entry(n))
        sp.commit()
        sp.release([1])
        sp.commit()                                   # writes a checkpoint: next id 41
    newest = segment_files(path)[-1]
    lost = {fid for _, _, fid in _frame_bounds(path / newest)}
    os.unlink(path / newest)
    with spool_mod.open(cfg) as sp:
        assert sp.stats(time.time())["missing_segments"] == 1
        assert sp.stats(time.time())["damaged_entries"] == len(lost)
        assert sp.next_id == 41                        # no id is handed out twice


def test_a_damaged_checkpoint_is_counted_and_only_causes_replays(tmp_path):
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1024)
    with spool_mod.open(cfg, release_log_bytes=1) as sp:
        for n in range(1, 41):
            sp.append(entry(n))
        sp.commit()
        sp.release(range(1, 21))
        sp.commit()
        sp.commit()                                  # deletes the delivered segments
        first_kept = int(segment_files(path)[0].split(".")[0])
        assert first_kept > 1
    with open(path / "checkpoint", "r+b") as f:
        f.seek(HEADER_BYTES + 2)
        f.write(b"\xff")
    with spool_mod.open(cfg) as sp:
        got = [number(e) for _, e in sp.pending()]
        st_ = sp.stats(time.time())
    assert got == list(range(first_kept, 41))         # nothing undelivered is lost
    assert st_["bad_checkpoint"] == 1
    assert st_["missing_segments"] == 0               # deleted segments are not "missing"
    with spool_mod.open(cfg) as sp:                      # repaired: counted once
        assert [number(e) for _, e in sp.pending()] == got
        assert sp.stats(time.time())["bad_checkpoint"] == 0


@pytest.mark.parametrize("content", [b"kafkad-spool 2\n", b"something else"])
def test_unknown_format_version_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "sp"
    cfg = config(path)
    _fill(cfg, 5)
    (path / "FORMAT").write_bytes(content)
    (path / "LOCK").unlink()
    before = snapshot(path)
    with pytest.raises(SpoolFormatError, match="Nothing was changed"):
        spool_mod.open(cfg)
    assert snapshot(path) == before


def test_a_directory_that_is_not_a_spool_is_refused(tmp_path):
    path = tmp_path / "sp"
    path.mkdir()
    (path / "00000000000000000001.seg").write_bytes(b"data")
    before = snapshot(path)
    with pytest.raises(SpoolFormatError, match="no FORMAT"):
        spool_mod.open(config(path))
    assert snapshot(path) == before


def _raise_on(monkeypatch, name, err, *, after=0):
    """Make os.<name> raise OSError(err) after `after` successful calls."""
    real = getattr(os, name)
    calls = {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        return real(*args)
    monkeypatch.setattr(os, name, failing)
    return lambda: monkeypatch.setattr(os, name, real)


def test_injected_enospc_on_write_keeps_durable_data_and_recovers(tmp_path, monkeypatch):
    # Injection by replacing os.write (the spool's only write call for entries).
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1 << 20)
    with spool_mod.open(cfg) as sp:
        for n in range(1, 6):
            sp.append(entry(n))
        assert sp.commit() == 5
        restore = _raise_on(monkeypatch, "write", errno.ENOSPC)
        sp.append(entry(6))
        assert sp.commit() == 5                        # not written: not durable
        assert sp.state is State.DISK_FULL and sp.is_full()
        with pytest.raises(SpoolFull) as info:
            sp.append(entry(7))
        assert info.value.reason == "disk full"
        restore()
        assert sp.commit() == 6                        # retried once space is back
        assert sp.state is State.OPEN
        sp.append(entry(7))
        sp.commit()
    with spool_mod.open(cfg) as sp:
        assert [number(e) for _, e in sp.pending()] == list(range(1, 8))
        assert sp.stats(time.time())["damaged"] == 0


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_eio_makes_the_spool_unavailable_without_pretending(tmp_path, monkeypatch, call):
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1 << 20)
    sp = spool_mod.open(cfg)
    for n in range(1, 4):
        sp.append(entry(n))
    assert sp.commit() == 3
    restore = _raise_on(monkeypatch, call, errno.EIO)
    sp.append(entry(4))
    with pytest.raises(SpoolUnavailable) as info:
        sp.commit()
    assert info.value.errno == errno.EIO and info.value.op.startswith(call)
    assert sp.durable_id == 3                           # id 4 was never acknowledged
    restore()
    with pytest.raises(SpoolUnavailable):               # a later fsync would only pretend
        sp.commit()
    with pytest.raises(SpoolUnavailable):
        sp.append(entry(5))
    assert sp.stats(time.time())["state"] == "failed"
    sp.close()
    with spool_mod.open(cfg) as sp:
        got = [number(e) for _, e in sp.pending()]
        assert got[:3] == [1, 2, 3] and set(got) <= {1, 2, 3, 4}


def _mount_tmpfs(where, size):
    """Mount a tmpfs of `size` on `where`; None when done, else why not."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    if not shutil.which("mount"):
        return "needs mount(8) to mount a small tmpfs"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        # In a container root usually lacks CAP_SYS_ADMIN and mount(2) fails.
        return (f"mount -t tmpfs failed as root (no CAP_SYS_ADMIN, as in most containers?): "
                f"{r.stderr.strip()}")
    return None


def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    why_not = _mount_tmpfs(mnt, "64k")
    if why_not:
        pytest.skip(f"{why_not}; test_injected_enospc_on_write covers the logic")
    try:
        cfg = config(mnt / "sp", max_bytes=10 << 20, segment_bytes=8192)
        sp = spool_mod.open(cfg)
        durable = 0
        n = 0
        while sp.state is State.OPEN and n < 5000:
            n += 1
            sp.append(entry(n, size=500))
            durable = sp.commit()
        assert sp.state is State.DISK_FULL, "the tmpfs never filled up"
        with pytest.raises(SpoolFull):
            sp.append(entry(n + 1))
        sp.release(range(1, durable + 1))               # the broker delivered everything durable
        sp.commit()                                     # deleting segments frees the disk
        assert sp.state is State.OPEN and sp.commit() == n
        sp.close()
        with spool_mod.open(cfg) as sp2:
            assert [number(e) for _, e in sp2.pending()] == list(range(durable + 1, n + 1))
            assert sp2.stats(time.time())["damaged"] == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_enospc_on_the_release_log_keeps_the_releases_and_retries(tmp_path, monkeypatch):
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1 << 20)
    with spool_mod.open(cfg) as sp:
        for n in range(1, 11):
            sp.append(entry(n))
        sp.commit()
        restore = _raise_on(monkeypatch, "write", errno.ENOSPC)
        sp.release([1, 2, 3])
        sp.commit()
        assert sp.state is State.DISK_FULL
        restore()
        sp.commit()
        assert sp.state is State.OPEN
    with spool_mod.open(cfg) as sp:
        assert [number(e) for _, e in sp.pending()] == list(range(4, 11))


def test_a_failed_fsync_in_the_executor_job_is_reported_by_finish_sync(tmp_path, monkeypatch):
    with spool_mod.open(config(tmp_path / "sp")) as sp:
        sp.append(entry(1))
        assert sp.commit() == 1
        sp.append(entry(2))
        job = sp.prepare_sync()
        _raise_on(monkeypatch, "fsync", errno.EIO)
        job.run()                                   # never raises: the error is kept
        assert job.error is not None and job.error.errno == errno.EIO
        with pytest.raises(SpoolUnavailable, match="fsync"):
            sp.finish_sync(job)
        assert sp.durable_id == 1 and sp.synced_id == 1
        monkeypatch.undo()

"""The spool's normal life: append, commit under each fsync policy, release, roll, delete, reopen."""

from __future__ import annotations

import os
import time
import tracemalloc

import pytest

import kafkad.spool as spool_mod
from kafkad.spool import Spool, SpoolEntry, SpoolFull, SpoolLockedError, State
from tests.spool.helpers import config, entry, number, segment_files


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def fsyncs(monkeypatch):
    """Counts os.fsync calls (the spool's durability points) while still doing them."""
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_round_trip_keeps_every_field_and_order(tmp_path):
    cfg = config(tmp_path / "sp")
    with spool_mod.open(cfg) as sp:
        ids = [sp.append(entry(n, count=1 + n % 4, session=b"s%d" % (n % 3))) for n in range(1, 60)]
        assert ids == list(range(1, 60))
        assert sp.commit() == 59
    with spool_mod.open(cfg) as sp:
        got = list(sp.pending())
        assert [i for i, _ in got] == ids
        assert [number(e) for _, e in got] == list(range(1, 60))
        assert sp.stats(time.time())["replayed"] == 59


def test_a_partition_left_to_the_daemon_survives_a_reopen(tmp_path):
    """A negative partition (the daemon picks it once it knows the topic) is stored as is."""
    cfg = config(tmp_path / "sp")
    with spool_mod.open(cfg) as sp:
        for p in (-1, -2**31, 7):
            sp.append(SpoolEntry(b"s", 0, 0, "t", p, None, [b"v"], 1, {}))
        sp.commit()
    with spool_mod.open(cfg) as sp:
        assert [e.partition for _, e in sp.pending()] == [-1, -2**31, 7]


def test_entry_validation_names_the_field(tmp_path):
    with spool_mod.open(config(tmp_path / "sp")) as sp:
        for bad, kind, field in [
            (SpoolEntry("text", 0, 0, "t", 0, None, [b"v"], 1, {}), TypeError, "session_id"),
            (SpoolEntry(b"s", 5, 4, "t", 0, None, [b"v"], 1, {}), ValueError, "seq_last"),
            (SpoolEntry(b"s", 0, 1, "t", 0, [b"k"], [b"v", b"w"], 1, {}), TypeError, "keys"),
            (SpoolEntry(b"s", 0, 0, "t", -2**31 - 1, None, [b"v"], 1, {}), ValueError, "partition"),
            (SpoolEntry(b"s", 0, 0, "t", 2**31, None, [b"v"], 1, {}), ValueError, "partition"),
            (SpoolEntry(b"s", 0, 0, "t", 0, None, [], 1, {}), TypeError, "values"),
            (SpoolEntry(b"s", 0, 0, "t", 0, None, [b"v"], 1, []), TypeError, "settings"),
            ((b"s", 0, 0, "t", 0, None, [b"v"], 1, {}), TypeError, "SpoolEntry"),
            (SpoolEntry(b"s", 0, 0, "t", 0, None, [object()], 1, {}), TypeError, "cannot be stored"),
        ]:
            with pytest.raises(kind, match=field):
                sp.append(bad)
        assert sp.next_id == 1                      # nothing was taken
        sp.append(entry(1))                         # a failed encoding leaves nothing behind
        sp.commit()
    with spool_mod.open(config(tmp_path / "sp")) as sp:
        assert [number(e) for _, e in sp.pending()] == [1]


def test_a_changed_settings_map_is_encoded_again(tmp_path):
    cfg = config(tmp_path / "sp")
    settings = {"acks": 1}
    with spool_mod.open(cfg) as sp:
        sp.append(SpoolEntry(b"s", 0, 0, "t", 0, None, [b"a"], 1, settings))
        settings["acks"] = -1
        sp.append(SpoolEntry(b"s", 1, 1, "t", 0, None, [b"b"], 1, settings))
        sp.commit()
    with spool_mod.open(cfg) as sp:
        assert [e.settings for _, e in sp.pending()] == [{"acks": 1}, {"acks": -1}]


def test_bad_config_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        spool_mod.open(config(tmp_path, fsync="sometimes"))
    with pytest.raises(ValueError, match="when_full"):
        spool_mod.open(config(tmp_path, when_full="drop"))
    with pytest.raises(ValueError, match="max_bytes"):
        spool_mod.open(config(tmp_path, max_bytes=0))


def test_append_does_no_io_and_durable_waits_for_commit(tmp_path, fsyncs):
    with spool_mod.open(config(tmp_path / "sp", fsync="always")) as sp:
        before = len(fsyncs)
        sp.append(entry(1))
        sp.append(entry(2))
        assert segment_files(tmp_path / "sp") == []      # nothing written yet
        assert sp.durable_id == 0
        assert sp.commit() == 2
        assert len(fsyncs) > before


def test_policy_always_fsyncs_every_commit(tmp_path, fsyncs):
    with spool_mod.open(config(tmp_path / "sp", fsync="always")) as sp:
        for n in range(1, 6):
            base = len(fsyncs)
            sp.append(entry(n))
            assert sp.commit() == n
            assert len(fsyncs) > base, "a commit under 'always' must fsync"
            assert sp.synced_id == n


def test_policy_interval_acks_written_and_fsyncs_on_the_period(tmp_path, fsyncs):
    clock = FakeClock()
    with spool_mod.open(config(tmp_path / "sp", fsync="interval", fsync_interval_ms=100),
                        clock=clock) as sp:
        base = len(fsyncs)
        sp.append(entry(1))
        assert sp.commit() == 1                 # written: survives a daemon crash
        assert sp.synced_id == 0 and len(fsyncs) == base
        assert sp.sync_due_in() == pytest.approx(0.1)
        clock.now += 0.05
        sp.append(entry(2))
        assert sp.commit() == 2 and sp.synced_id == 0
        clock.now += 0.06
        assert sp.sync_due_in() == 0
        assert sp.commit() == 2
        assert sp.synced_id == 2 and len(fsyncs) > base
        assert sp.sync_due_in() is None         # nothing waits for an fsync


def test_policy_never_does_not_fsync_data(tmp_path, fsyncs):
    with spool_mod.open(config(tmp_path / "sp", fsync="never", segment_bytes=1 << 20)) as sp:
        base = len(fsyncs)
        for n in range(1, 50):
            sp.append(entry(n))
            assert sp.commit() == n
        assert len(fsyncs) == base
        assert sp.synced_id == 0


def test_sync_job_can_run_in_an_executor(tmp_path):
    import asyncio

    async def main():
        with spool_mod.open(config(tmp_path / "sp", fsync="always")) as sp:
            sp.append(entry(1))
            job = sp.prepare_sync()
            assert job is not None and sp.durable_id == 0
            sp.append(entry(2))                 # the loop keeps taking entries meanwhile
            assert sp.prepare_sync() is None    # one job at a time; this one only writes
            await asyncio.get_running_loop().run_in_executor(None, job.run)
            assert sp.finish_sync(job) == 1     # the job covered what was written before it
            assert sp.commit() == 2
    asyncio.run(main())


def test_segments_roll_and_are_deleted_when_released(tmp_path):
    path = tmp_path / "sp"
    with spool_mod.open(config(path, segment_bytes=2048)) as sp:
        ids = [sp.append(entry(n)) for n in range(1, 101)]
        sp.commit()
        segs = segment_files(path)
        assert len(segs) > 4
        assert all(os.path.getsize(path / s) <= 2048 for s in segs)
        assert int(segs[0].split(".")[0]) == 1      # named by the first entry id
        sp.release(ids[:60])
        sp.commit()
        left = segment_files(path)
        assert len(left) < len(segs)
        firsts = [int(s.split(".")[0]) for s in left]
        # only segments that still hold an unreleased entry (or the active one) remain
        assert firsts[0] <= 61 and (len(firsts) == 1 or firsts[1] > 61)
        assert sp.stats(time.time())["entries_pending"] == 40
        sp.release(ids[60:])
        sp.commit()
        assert len(segment_files(path)) == 1        # the active segment stays
    with spool_mod.open(config(path, segment_bytes=2048)) as sp:
        assert list(sp.pending()) == []
        assert sp.next_id == 101                    # ids are never reused
        assert segment_files(path) == []            # fully released: removed at open


def test_release_is_idempotent_and_checks_ids(tmp_path):
    with spool_mod.open(config(tmp_path / "sp")) as sp:
        sp.append(entry(1))
        assert sp.release([1]) == 1
        assert sp.release([1]) == 0
        with pytest.raises(ValueError, match="ids"):
            sp.release([2])
        with pytest.raises(ValueError, match="ids"):
            sp.release(["1"])


def test_releases_survive_restart_and_checkpoint_compaction(tmp_path):
    path = tmp_path / "sp"
    cfg = config(path, segment_bytes=1 << 20)
    with spool_mod.open(cfg, release_log_bytes=300) as sp:
        for n in range(1, 301):
            sp.append(entry(n))
        sp.commit()
        for n in range(1, 301, 2):                  # out of order, sparse
            sp.release([n])
            sp.commit()
        assert sp.stats(time.time())["checkpoints"] > 3
        assert len([f for f in os.listdir(path) if f.startswith("acks-")]) == 1
    with spool_mod.open(cfg) as sp:
        assert [number(e) for _, e in sp.pending()] == list(range(2, 301, 2))


def test_max_bytes_is_never_exceeded_and_rejects_cleanly(tmp_path):
    path = tmp_path / "sp"
    cfg = config(path, max_bytes=20_000, segment_bytes=4096)
    with spool_mod.open(cfg) as sp:
        accepted = []
        with pytest.raises(SpoolFull) as info:
            for n in range(1, 1000):
                accepted.append(sp.append(entry(n)))
                sp.commit()
                assert sp.stats(time.time())["data_bytes"] <= 20_000
        assert info.value.reason == "max_bytes" and info.value.when_full == "reject"
        assert sp.is_full()
        on_disk = sum(os.path.getsize(path / s) for s in segment_files(path))
        assert on_disk <= 20_000
        assert sp.next_id == accepted[-1] + 1       # the refused entry got no id
        sp.release(accepted[:40])
        sp.commit()
        assert not sp.is_full()                     # space was freed by deleting segments
        sp.append(entry(5000))
    with pytest.raises(ValueError, match="never fit"):
        with spool_mod.open(cfg) as sp:
            sp.append(entry(1, size=30_000))


def test_pending_streams_with_bounded_memory(tmp_path):
    path = tmp_path / "sp"
    cfg = config(path, fsync="never", segment_bytes=1 << 20, max_bytes=64 << 20)
    with spool_mod.open(cfg) as sp:
        for n in range(1, 4001):
            sp.append(entry(n, size=1000, count=4))  # ~16 MB of entries
            if n % 200 == 0:
                sp.commit()
    with spool_mod.open(cfg) as sp:
        tracemalloc.start()
        try:
            count = 0
            for _, e in sp.pending():
                count += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert count == 4000
        assert peak < 4 << 20, f"replay allocated {peak} bytes for a 16 MB spool"


def test_cursor_follows_the_log_across_recovery_and_new_traffic(tmp_path):
    cfg = config(tmp_path / "sp")
    with spool_mod.open(cfg) as sp:
        for n in range(1, 11):
            sp.append(entry(n))
        sp.commit()
        sp.release([2, 3])
    with spool_mod.open(cfg) as sp:
        cur = sp.cursor()
        first = cur.read(4)
        assert [i for i, _ in first] == [1, 4, 5, 6]
        sp.append(entry(11))                 # new traffic while replaying
        sp.release([7])
        rest = cur.read(100)
        assert [i for i, _ in rest] == [8, 9, 10]   # 11 is not written yet
        assert not cur.caught_up()
        sp.commit()
        assert [i for i, _ in cur.read(100)] == [11]
        assert cur.caught_up()
        assert sp.stats(time.time())["replayed"] == 7  # only recovered entries count


def test_recovered_sessions_report_the_highest_sequence_held(tmp_path):
    cfg = config(tmp_path / "sp")
    with spool_mod.open(cfg) as sp:
        for n in range(1, 8):
            sp.append(entry(n, session=b"A", count=3))
        for n in range(1, 4):
            sp.append(entry(n, session=b"B"))
        sp.commit()
        sp.release([1, 2, 3])
        assert sp.recovered_sessions() == {}
    with spool_mod.open(cfg) as sp:
        assert sp.recovered_sessions() == {b"A": 7 * 3 + 2, b"B": 3}


def test_stats_report_bytes_segments_age_and_pending(tmp_path):
    cfg = config(tmp_path / "sp", segment_bytes=1024)
    with spool_mod.open(cfg) as sp:
        for n in range(1, 31):
            sp.append(SpoolEntry(b"s", n, n, "t", 0, None, [b"x" * 50], 1_000_000 + n * 1000, {}))
        sp.commit()
        st = sp.stats(now=2_000.0)
        assert st["entries_pending"] == 30 and st["segments"] == len(segment_files(tmp_path / "sp"))
        assert st["bytes"] >= st["data_bytes"] > 30 * 50
        assert st["oldest_pending_age_s"] == pytest.approx(2_000.0 - 1_001.0)
        sp.release(range(1, 11))
        sp.commit()
        st = sp.stats(now=2_000.0)
        assert st["entries_pending"] == 20
        assert st["oldest_pending_age_s"] == pytest.approx(2_000.0 - 1_011.0)
        sp.release(range(11, 31))
        assert sp.stats(now=2_000.0)["oldest_pending_age_s"] is None


def test_a_second_process_cannot_open_the_same_spool(tmp_path):
    cfg = config(tmp_path / "sp")
    with spool_mod.open(cfg):
        with pytest.raises(SpoolLockedError, match="in use"):
            Spool.open(cfg)


def test_close_fsyncs_under_every_policy_and_repr_shows_state(tmp_path, fsyncs):
    sp = spool_mod.open(config(tmp_path / "sp", fsync="never"))
    sp.append(entry(1))
    assert "OPEN" in repr(sp)
    sp.close()
    assert sp.synced_id == 1 and sp.state is State.CLOSED
    with pytest.raises(spool_mod.SpoolError, match="closed"):
        sp.append(entry(2))


def test_a_segment_outlives_the_commit_that_made_its_entries_durable(tmp_path):
    # The broker may acknowledge before the spool's commit; the shim must have been
    # told "durable" (after that commit) before the records are deleted.
    path = tmp_path / "sp"
    with spool_mod.open(config(path, segment_bytes=1024)) as sp:
        ids = [sp.append(entry(n)) for n in range(1, 30)]
        sp.release(ids[:20])
        assert sp.commit() == 29
        kept = segment_files(path)
        assert int(kept[0].split(".")[0]) == 1, "deleted before its entries were handed out"
        sp.commit()
        assert int(segment_files(path)[0].split(".")[0]) > 1


def test_is_full_holds_until_the_refused_entry_would_fit(tmp_path):
    cfg = config(tmp_path / "sp", max_bytes=6000, segment_bytes=1024, when_full="block")
    with spool_mod.open(cfg) as sp:
        ids = []
        while True:
            try:
                ids.append(sp.append(entry(len(ids) + 1)))
            except SpoolFull as exc:
                assert exc.when_full == "block" and exc.needed > exc.free
                break
        sp.commit()
        assert sp.is_full()
        sp.release(ids[:1])                          # frees nothing yet: its segment has others
        sp.commit()
        sp.commit()
        assert sp.is_full()
        sp.release(ids[:14])                         # whole segments released
        sp.commit()
        sp.commit()                                  # deleted one commit after durable
        assert not sp.is_full()
        assert sp.append(entry(99)) == ids[-1] + 1


def test_cursor_skips_segments_deleted_while_replaying(tmp_path):
    cfg = config(tmp_path / "sp", segment_bytes=1024)
    with spool_mod.open(cfg) as sp:
        for n in range(1, 41):
            sp.append(entry(n))
        sp.commit()
    with spool_mod.open(cfg) as sp:
        cur = sp.cursor()
        assert [i for i, _ in cur.read(3)] == [1, 2, 3]
        sp.release(range(1, 30))                     # delivered meanwhile (another path)
        sp.commit()
        sp.append(entry(41))
        sp.commit()
        sp.commit()
        assert int(segment_files(tmp_path / "sp")[0].split(".")[0]) > 1
        assert [i for i, _ in cur.read(100)] == list(range(30, 42))
        assert cur.caught_up()

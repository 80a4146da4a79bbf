"""Reclaiming the space of dead records (docs/format.md 8.11) on a real vault: erased
calls' audio and dropped records freed, everything else intact and verifying, the
index rebuilt by reindex equal to the one the reclaim left, crash points (SIGKILL of a
child process at each step of a rewrite)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callvault.vault import Vault, VaultError

SEGMENT_BYTES = 32 << 10  # small: a call spans several segments
PER_RECORD = 10  # frames per audio record
ROOT = Path(__file__).resolve().parents[2]


def packets(call_id: str, leg: int, first: int, n: int) -> tuple[np.ndarray, bytes]:
    lengths = np.empty(n, dtype=np.int32)
    parts = []
    for i in range(n):
        d = hashlib.sha256(f"{call_id}/{leg}/{first + i}".encode()).digest()
        k = 20 + d[0] % 40
        parts.append((d * 3)[:k])
        lengths[i] = k
    return lengths, b"".join(parts)


def record(v: Vault, call_ids: list[str], frames: int = 400, seal: bool = True) -> None:
    """Record the calls at once (their records interleaved in the segments)."""
    writers = [v.open_call(c, legs=["agent", "customer"], agent="ann") for c in call_ids]
    futures = []
    for first in range(0, frames, PER_RECORD):
        for c, w in zip(call_ids, writers, strict=True):
            for leg in (0, 1):
                futures.append(w.append(leg, first, *packets(c, leg, first, PER_RECORD)))
    for f in futures:
        f.result()
    if seal:
        for w in writers:
            w.seal(summary={"legs": []}, frames=frames)


def entries(v: Vault, *, moved_ok: bool = False) -> dict[str, Any]:
    out = {}
    for e in v.list_calls():
        d = dataclasses.asdict(e)
        if moved_ok:
            d.pop("manifest_ref")  # a rewrite moves the SEAL record
            d.pop("open_ref")  # the OPEN record
            d.pop("lifecycle_refs")  # and the LIFECYCLE records
        out[e.call_id] = d
    return out


def audio(v: Vault) -> dict[str, Any]:
    """The packets of every call that is not erased."""
    out = {}
    for e in v.list_calls():
        if e.state != "erased":
            out[e.call_id] = [
                (data, lengths.tolist())
                for data, lengths in v.read_packets(e.call_id, to_frame=10**6)
            ]
    return out


def stored(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "segments").glob("*.seg"))


def check_reindex_equal(data: Path) -> None:
    """Reopen, and rebuild the index from the segments: the same calls, all verifying."""
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        before, sound = entries(v), audio(v)
        assert v.verify_all() == []
        assert v.reindex() > 0
        assert entries(v) == before and audio(v) == sound
        assert v.verify_all() == []
        assert v.report.replays == []
    with Vault.open(data, rebuild_index=True, segment_bytes=SEGMENT_BYTES) as v:
        assert entries(v) == before and audio(v) == sound and v.verify_all() == []


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_an_erased_call_is_reclaimed_and_the_others_stay(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["a"])
        record(v, ["b"], frames=1600)  # b's audio fills segments of its own
        record(v, ["c"])
        v.erase("b", reason="retention")
        before, sound = entries(v, moved_ok=True), audio(v)
        assert set(sound) == {"a", "c"}
        dead = v.reclaimable_bytes()
        assert dead > 0 and v.stats()["reclaimable_bytes"] == dead
        size = stored(data)
        r = v.reclaim()
        assert r.bytes_freed > 0 and r.segments_removed + r.segments_rewritten >= 2
        assert stored(data) == size - r.bytes_freed
        # nearly all of b's audio is gone (the segments shared with a and c may stay)
        assert r.bytes_freed > dead * 0.6
        assert v.reclaimed_bytes() == r.bytes_freed == v.stats()["reclaimed_bytes"]
        assert v.reclaimable_bytes() == r.reclaimable_bytes < dead
        assert entries(v, moved_ok=True) == before and audio(v) == sound
        assert v.verify_call("b") == [] and v.verify_all() == []
        e = v.get_call("b")
        assert (
            e.state == "erased" and e.records == 320 and list(v.index.records("default", "b")) == []
        )
        with pytest.raises(VaultError, match="destroyed"):
            v.read_packets("b")
        assert v.reclaim().bytes_freed == 0  # nothing left above the threshold
    check_reindex_equal(data)


def test_interleaved_calls_are_rewritten_with_their_order_kept(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["x", "y", "z"])  # every segment holds records of the three
        record(v, ["tail"], frames=40)
        v.erase("y", reason="asked")
        before, sound = entries(v, moved_ok=True), audio(v)
        segments = v._reader.segments()
        r = v.reclaim(threshold=0.2)
        assert r.segments_rewritten >= 2 and r.segments_written >= 1 and r.records_moved > 0
        assert r.bytes_freed > 0
        after = v._reader.segments()
        new = [s for s in after if s not in segments]
        assert new and all(v._reader.origin(s) < s for s in new)
        assert entries(v, moved_ok=True) == before and audio(v) == sound
        assert v.verify_all() == []
        # a second pass rewrites a rewritten segment again (its origin kept)
        v.erase("x", reason="asked")
        r2 = v.reclaim(threshold=0.2)
        assert r2.bytes_freed > 0
        assert audio(v) == {k: sound[k] for k in ("z", "tail")} and v.verify_all() == []
    check_reindex_equal(data)


def test_dropped_records_are_reclaimed(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["keep"])
        record(v, ["raw"], frames=1600)  # segments of raw's audio alone
        record(v, ["keep2"])
        n = v.get_call("raw").records
        freed = v.drop_records("raw", list(range(n)))
        assert freed > 0 and v.reclaimable_bytes() == freed
        assert v.drop_records("raw", [0, 1]) == 0  # no longer referenced: nothing
        keep = {k: audio(v)[k] for k in ("keep", "keep2")}
        r = v.reclaim(threshold=0.5)
        assert r.bytes_freed >= freed * 0.6 and r.segments_removed >= 1
        assert {k: audio(v)[k] for k in ("keep", "keep2")} == keep
        assert v.verify_call("keep") == [] and v.verify_call("keep2") == []
        with pytest.raises(VaultError, match="no call"):
            v.drop_records("nope", [0])


def test_scan_finds_dead_records_the_counters_missed(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["a"])
        record(v, ["b"])
        record(v, ["c"])
        v.erase("b", reason="r")
        b = v.index.batch()
        for seg in v.index.dead_bytes():
            b.forget_segment(seg)  # as an index that never counted them
        v.index.write(b)
        assert v.reclaimable_bytes() == 0 and v.reclaim().bytes_freed == 0
        r = v.reclaim(scan=True)
        assert r.bytes_freed > 0 and v.verify_all() == []


def test_reclaim_beside_a_call_being_recorded(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["gone", "live"], frames=300, seal=False)
        w_gone = v._open[("default", "gone")]
        w_gone.seal(summary={"legs": []}, frames=300)
        v.erase("gone", reason="r")
        w = v._open[("default", "live")]
        r = v.reclaim(threshold=0.3)
        assert r.bytes_freed > 0
        for first in range(300, 400, PER_RECORD):  # the open call goes on after the rewrite
            for leg in (0, 1):
                w.append(leg, first, *packets("live", leg, first, PER_RECORD)).result()
        w.seal(summary={"legs": []}, frames=400)
        expect = [packets("live", leg, 0, 400)[1] for leg in (0, 1)]
        assert [d for d, _ in v.read_packets("live", to_frame=400)] == expect
        assert v.verify_all() == []
    check_reindex_equal(data)


def test_reclaim_refuses_a_damaged_vault_and_bad_thresholds(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["a"], frames=40)
        with pytest.raises(ValueError, match="threshold"):
            v.reclaim(threshold=0)
        v.report.damage.append("something")
        with pytest.raises(VaultError, match="damage"):
            v.reclaim()
    with Vault.open(data, read_only=True) as ro, pytest.raises(VaultError, match="read-only"):
        ro.reclaim()


def test_an_older_index_lets_go_of_erased_audio_on_open(data: Path) -> None:
    """An index of format 3 kept an erased call's records: opening migrates it (the
    entries deleted, their bytes counted as dead), so the reclaim frees them."""
    from callvault.store.index import U32, RecordEntry

    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["a"])
        record(v, ["b"])
        record(v, ["c"])
        kept = list(v.index.records("default", "a"))
        refs = {i: r for i, r in kept}
        v.erase("a", reason="r")
        b = v.index.batch()
        for i, r in refs.items():  # what format 3 left: the entries stay
            b.put_record("default", "a", i, RecordEntry(*dataclasses.astuple(r)))
        for seg in v.index.dead_bytes():
            b.forget_segment(seg)
        b.put_meta(b"meta/format", U32.pack(3))
        v.index.write(b)
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert list(v.index.records("default", "a")) == []
        assert v.reclaimable_bytes() == sum(r.length for r in refs.values())
        assert v.reclaim().bytes_freed > 0 and v.verify_all() == []


# -- crash points ---------------------------------------------------------------------

CHILD = """
import sys
from callvault.vault import Vault
v = Vault.open(sys.argv[1], segment_bytes=int(sys.argv[2]))
r = v.reclaim(threshold=float(sys.argv[3]))
print("DONE", r.bytes_freed, flush=True)
v.close()
"""


def run_child(data: Path, step: str, threshold: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CALLVAULT_RECLAIM_CRASH=step)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "engine"), str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(SEGMENT_BYTES), str(threshold)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("step", ["copied", "journaled", "published", "indexed", "removing"])
def test_a_reclaim_killed_at_each_step_loses_nothing(tmp_path: Path, step: str) -> None:
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["p", "q"])  # interleaved: the rewrite copies p's records
        record(v, ["r"])  # r's own segments: removed whole
        record(v, ["s"], frames=40)
        v.erase("q", reason="r")
        v.erase("r", reason="r")
        before, sound = entries(v, moved_ok=True), audio(v)
        files = sorted(p.name for p in (data / "segments").iterdir())
        size = stored(data)
    p = run_child(data, step, 0.3)
    assert p.returncode == -9, p.stdout + p.stderr  # killed at the step
    left = sorted(p.name for p in (data / "segments").iterdir())
    assert left != files or step == "copied"
    twin = tmp_path / "twin"  # the same crashed directory, opened by reindex first
    shutil.copytree(data, twin)
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert v.report.replays == [] and v.report.damage == []
        assert (v.report.reclaim is not None) == (step != "copied")
        assert entries(v, moved_ok=True) == before and audio(v) == sound
        assert v.verify_all() == []
        assert not (data / "reclaim").exists()
        assert not list((data / "segments").glob("*.tmp"))
        v.reclaim(threshold=0.3)  # the next run finishes the job
        assert entries(v, moved_ok=True) == before and audio(v) == sound
        assert v.verify_all() == [] and v.reclaim(threshold=0.3).bytes_freed == 0
        assert v.reclaimed_bytes() == size - stored(data)  # counted once
    check_reindex_equal(data)
    with Vault.open(twin, rebuild_index=True, segment_bytes=SEGMENT_BYTES) as v:
        assert v.report.replays == []
        assert entries(v, moved_ok=True) == before and audio(v) == sound
        assert v.verify_all() == []


BUSY_CHILD = """
import sys, threading
from callvault.vault import Vault
from tests.vault.test_reclaim import PER_RECORD, packets
v = Vault.open(sys.argv[1], segment_bytes=int(sys.argv[2]))
w = v.resume_call("live")
first = list(w.frames)  # per leg: a kill may have stored one leg's record only
print("ready", flush=True)

def record():
    while True:
        for leg in (0, 1):
            f = w.append(leg, first[leg], *packets("live", leg, first[leg], PER_RECORD))
            f.add_done_callback(lambda f: print("ACK", f.result().chain_index, flush=True))
            first[leg] += PER_RECORD
        f.result()

threading.Thread(target=record, daemon=True).start()
for e in v.list_calls():
    if e.state == "sealed":
        v.erase(e.call_id, reason="r")
        v.reclaim(threshold=0.2)
v.reclaim(threshold=0.2)
print("done", flush=True)
threading.Event().wait(30)
"""


def test_reclaim_killed_while_a_call_is_recorded(tmp_path: Path) -> None:
    """A child records a call while it erases calls and reclaims; killed at random
    points: every acknowledged record of the call is there, everything verifies, no
    record is indexed twice, and reindex gives the same calls."""
    import random

    rng = random.Random(10)
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        for i in range(6):
            record(v, [f"old{i}", f"old{i}b"], frames=200)
        v.open_call("live", legs=["agent", "customer"])
    acked = -1
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "engine"), str(ROOT / "clients" / "python")]
    )
    # 6 per CI run; `make stress` (CALLVAULT_STRESS_KILLS=1000) gives 60
    for _ in range(max(6, int(os.environ.get("CALLVAULT_STRESS_KILLS", "100")) // 16)):
        proc = subprocess.Popen(
            [sys.executable, "-c", BUSY_CHILD, str(data), str(SEGMENT_BYTES)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=rng.uniform(0.05, 1.5))
        proc.kill()
        out = proc.stdout.read()
        proc.wait()
        for line in out.splitlines():
            if line.startswith("ACK "):
                acked = max(acked, int(line.split()[1]))
        with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
            assert v.report.replays == [] and v.report.damage == []
            e = v.get_call("live")
            assert e.records > acked
            frames = min(v.durable_frames("live"))
            got = v.read_packets("live", to_frame=frames)
            assert [d for d, _ in got] == [packets("live", g, 0, frames)[1] for g in (0, 1)]
            assert v.verify_all() == []
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert acked > 10 and v.reclaimed_bytes() > 0  # the children did both
    check_reindex_equal(data)


def test_a_read_in_progress_reads_on_across_a_rewrite(data: Path) -> None:
    """A reader that took the call's references before the rewrite (a playback walks
    the index lazily) still reads every packet: the removed files stay open in the
    vault's reader until the next run."""
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["keep", "gone"], frames=800)
        record(v, ["tail"], frames=40)
        v.erase("gone", reason="r")
        expect = audio(v)["keep"]
        chunks = v.iter_frames("keep", to_frame=800, chunk=50)
        first = next(chunks)
        assert v.reclaim(threshold=0.3).segments_rewritten >= 2
        rest = list(chunks)
        got = [first, *rest]
        for leg in (0, 1):
            data_ = b"".join(c[1][leg][0] for c in got)
            assert data_ == expect[leg][0]
        assert audio(v)["keep"] == expect  # and read afresh from the copies
        v.reclaim(threshold=0.3)  # the next run closes the removed files
        assert v._reader._retired == set()


def test_copies_do_not_pile_up(data: Path) -> None:
    """Each run leaves a small copy (what stays of an erased call: its OPEN and SEAL
    records); the next runs merge the small copies next to each other (and to the
    segments they rewrite) instead of keeping one more file each."""
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        for i in range(8):
            record(v, [f"g{i}"], frames=1600)
        record(v, ["tail"], frames=40)
        sound = audio(v)
        small = []
        for i in range(8):
            v.erase(f"g{i}", reason="r")
            assert v.reclaim(threshold=0.3).bytes_freed > 0
            after = v._reader.segments()
            small.append(len([s for s in after[:-1] if v._reader.size(s) < SEGMENT_BYTES // 4]))
        assert max(small) <= 2, small  # merged, not one more per run
        assert audio(v) == {"tail": sound["tail"]} and v.verify_all() == []
        assert v.reclaim(threshold=0.3).bytes_freed == 0  # and it settles
    check_reindex_equal(data)

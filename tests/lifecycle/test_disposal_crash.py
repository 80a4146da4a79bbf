"""SIGKILL during a dispose (a child process killed at a named step: the receipt
written, the erasure done, each step of the reclaim after it): afterwards no call
that was not due is lost or changed, none is half-disposed once the next run (or a
server start: ``disposal.finish``) has run, everything verifies, and reindex agrees."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from callvault.lifecycle import disposal
from callvault.vault import Vault

from .disposal_helpers import DAY_US, SEGMENT_BYTES, child_env, record, retention

T0 = 1_900_000_000_000_000
NOW = T0 + 30 * DAY_US
DUE = ["d1", "d2", "d3"]
KEPT = ["k1", "k2"]

CHILD = """
import sys
from callvault.lifecycle import disposal
from callvault.vault import Vault
v = Vault.open(sys.argv[1], segment_bytes=int(sys.argv[2]))
v.clock = lambda: int(sys.argv[3])
r = disposal.plan(v)
disposal.save(v, r)
print("PLANNED", r.id, flush=True)
out = disposal.apply(v, r, reclaim_threshold=0.3)
print("DONE", out["disposed"], flush=True)
v.close()
"""


def state(v: Vault) -> dict[str, Any]:
    out = {}
    for e in v.list_calls():
        d = dataclasses.asdict(e)
        for place in ("manifest_ref", "open_ref", "lifecycle_refs"):
            d.pop(place)  # a reclaim moves the SEAL, OPEN and LIFECYCLE records
        out[e.call_id] = d
    return out


def make(data: Path) -> dict[str, Any]:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        v.clock = lambda: T0
        calls: dict[str, Any] = {}
        for i, c in enumerate(["d1", "k1", "d2", "k2", "d3"]):  # interleaved in segments
            due = c.startswith("d")
            calls[c] = retention(T0 + (10 + i if due else 400) * DAY_US)
        record(v, calls)
        return state(v)


def run_child(data: Path, crash: str, reclaim_crash: str = "") -> subprocess.CompletedProcess[str]:
    env = child_env(CALLVAULT_DISPOSE_CRASH=crash, CALLVAULT_RECLAIM_CRASH=reclaim_crash)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(SEGMENT_BYTES), str(NOW)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_after(data: Path, before: dict[str, Any], report_id: str, receipted: int = 0) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        v.clock = lambda: NOW
        assert v.report.replays == [] and v.report.damage == []
        for c in DUE:  # each either untouched, receipted (not erased) or disposed
            e = v.get_call(c)
            assert (e.state, e.disposal is not None) in {
                ("sealed", False),
                ("sealed", True),
                ("erased", True),
            }, c
        cut = [c for c in DUE if v.get_call(c).state == "sealed" and v.get_call(c).disposal]
        assert len(cut) == receipted
        # the next run finishes what the crash cut short, then disposes of the rest
        finished = disposal.finish(v)
        assert sorted(f["call_id"] for f in finished) == cut
        for f in finished:
            assert f["outcome"] == "disposed"
        for c in DUE:
            e = v.get_call(c)
            assert e.state == "erased" or e.disposal is None  # never half-disposed
        disposal.run(v, disposal.Settings(reclaim_threshold=0.3))
        after = state(v)
        for c in DUE:
            e = v.get_call(c)
            assert e.state == "erased" and e.disposal is not None
            assert not v.call_keys.path("default", c).exists()
        for c in KEPT:  # not due: exactly as before
            assert after[c] == before[c], c
            assert v.verify_call(c) == []
            assert len(list(v.read_packets(c))) > 0
        assert v.verify_all() == []
        kept = disposal.load(v, report_id)
        assert kept.id == report_id
        final = state(v)
    twin = data.parent / (data.name + "-reindexed")
    shutil.copytree(data, twin)
    with Vault.open(twin, rebuild_index=True, segment_bytes=SEGMENT_BYTES) as w:
        assert w.report.replays == []
        assert state(w) == final
        assert w.verify_all() == []


@pytest.mark.parametrize("crash", ["receipt:1", "erased:1", "receipt:2", "erased:3"])
def test_dispose_killed_between_receipt_and_erasure(tmp_path: Path, crash: str) -> None:
    data = tmp_path / "data"
    before = make(data)
    p = run_child(data, crash)
    assert p.returncode == -9, p.stdout + p.stderr
    report_id = p.stdout.split()[1]
    check_after(data, before, report_id, receipted=1 if crash.startswith("receipt") else 0)


@pytest.mark.parametrize("step", ["copied", "journaled", "published", "indexed", "removing"])
def test_dispose_killed_in_its_reclaim(tmp_path: Path, step: str) -> None:
    data = tmp_path / "data"
    before = make(data)
    p = run_child(data, "", reclaim_crash=step)
    assert p.returncode == -9, p.stdout + p.stderr
    report_id = p.stdout.split()[1]
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        for c in DUE:  # every erasure was done before the reclaim
            assert v.get_call(c).state == "erased"
    check_after(data, before, report_id)


def test_a_completed_dispose_for_comparison(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = make(data)
    p = run_child(data, "")
    assert p.returncode == 0 and "DONE 3" in p.stdout, p.stdout + p.stderr
    check_after(data, before, p.stdout.split()[1])

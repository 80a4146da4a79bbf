"""The real `callvault dispose` CLI, time moved by `faketime` (Debian's libfaketime):
dry run, apply, the report verified offline (and a tampered one refused), a clock
that went back refused, approval by a second identity. The vault is made with the
library (retention ends set at seal, as the policy does), everything else is the
command line."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callvault.vault import Vault

from ..servers import start_server
from .disposal_helpers import DAY_US, SEGMENT_BYTES, child_env, record, retention

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime")


def cv(
    data: Path, *args: str, shift: str = "", ok: bool = True, user: str = "alice"
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "callvault.cli", "--data", str(data), *args]
    if shift:
        cmd = ["faketime", "-f", shift, *cmd]
    # libfaketime also shifts CLOCK_MONOTONIC by default, and a timed wait (the
    # segment writer's group commit) then waits the shift in real time: wall clock only
    env = child_env(LOGNAME=user, USER=user, FAKETIME_DONT_FAKE_MONOTONIC="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    now = time.time_ns() // 1000
    with Vault.open(d, segment_bytes=SEGMENT_BYTES) as v:
        record(
            v,
            {
                "a": retention(now + 10 * DAY_US),
                "b": retention(now + 100 * DAY_US, mode="compliance", rule="vip"),
                "c": retention(now + 1000 * DAY_US),
                "d": None,
            },
        )
    return d


def calls_of(text: str) -> list[str]:
    return [c["call_id"] for c in json.loads(text)["report"]["calls"]]


def test_dispose_with_faketime(data: Path, tmp_path: Path) -> None:
    assert calls_of(cv(data, "dispose", "--dry-run", "--json").stdout) == []
    assert calls_of(cv(data, "dispose", "--dry-run", "--json", shift="+50d").stdout) == ["a"]
    plan = cv(data, "dispose", "--dry-run", "--json", shift="+400d").stdout
    assert calls_of(plan) == ["a", "b"]
    assert "a" in cv(data, "ls").stdout  # a dry run changes nothing
    # the report verifies offline with the log's public key; a tampered one does not
    key = cv(data, "checkpoint", "--public-key").stderr.strip().splitlines()[-1]
    (tmp_path / "log.pub").write_text(key + "\n")
    (tmp_path / "plan.json").write_text(plan)
    ok = cv(data, "dispose", "verify-report", str(tmp_path / "plan.json"), "--public-key", key)
    assert "verifies: 2 call(s)" in ok.stdout
    doc = json.loads(plan)
    doc["report"]["calls"].pop()  # "b" left out
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    bad = cv(
        data,
        "dispose",
        "verify-report",
        str(tmp_path / "bad.json"),
        "--public-key",
        str(tmp_path / "log.pub"),
        ok=False,
    )
    assert bad.returncode == 1 and "does not verify" in bad.stderr
    # apply, 400 days on
    out = cv(data, "dispose", "--json", shift="+400d").stdout
    applied = json.loads(out)
    assert applied["status"] == "applied" and applied["results"]["disposed"] == 2
    rid = applied["report"]["id"]
    kept = data / "lifecycle" / "reports" / f"{rid}.json"
    assert kept.exists()
    assert "verifies" in cv(data, "dispose", "verify-report", str(kept), "--public-key", key).stdout
    with Vault.open(data, read_only=True) as v:  # the keys: shredded, the others kept
        assert [v.call_keys.path("default", c).exists() for c in "abcd"] == [0, 0, 1, 1]
        assert v.get_call("a").disposal["report"] == rid  # type: ignore[index]
    gone = cv(data, "export", "a", "-o", str(tmp_path / "a.ogg"), shift="+400d", ok=False)
    assert gone.returncode == 1 and "erased" in gone.stderr
    assert cv(data, "verify", "c", shift="+400d").returncode == 0
    assert cv(data, "verify", "b", shift="+400d").returncode == 0  # the tombstone verifies
    listed = cv(data, "dispose", "reports", shift="+400d").stdout
    assert rid in listed and "applied" in listed and "2 disposed" in listed
    # back to the real clock: 400 days earlier than the vault recorded
    back = cv(data, "dispose", "--dry-run", ok=False)
    assert back.returncode == 1
    assert "earlier than" in back.stderr
    assert "the vault recorded: refusing to dispose" in back.stderr
    # faketime again, later still: nothing more due until c's end
    assert "nothing is due" in cv(data, "dispose", shift="+401d").stdout


def test_approval_by_a_second_identity(data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[disposal]\napproval = true\n")
    out = cv(data, "dispose", "--config", str(cfg), "--json", shift="+50d").stdout
    pending = json.loads(out)
    assert pending["status"] == "pending" and calls_of(out) == ["a"]
    rid = pending["report"]["id"]
    assert "pending" in cv(data, "dispose", "reports", shift="+50d").stdout
    assert "a" in cv(data, "ls").stdout
    same = cv(data, "dispose", "approve", rid, shift="+50d", ok=False)
    assert same.returncode == 1 and "another identity must approve it" in same.stderr
    done = cv(data, "dispose", "approve", rid, "--json", shift="+50d", user="bob").stdout
    doc = json.loads(done)
    assert doc["status"] == "applied" and doc["approved_by"]["name"] == "local:bob"
    assert doc["results"]["disposed"] == 1
    info = cv(data, "info", "a", shift="+50d").stdout
    assert "erased" in info


def test_a_server_under_faketime_disposes_on_schedule(data: Path, tmp_path: Path) -> None:
    """A real `callvault serve` 400 days on (faketime), its sweeper every 0.5 s, and
    the real CLI against it (--server): dry run, the report kept, Admin.Stats."""
    cfg = tmp_path / "serve.toml"
    cfg.write_text("reclaim_interval_s = 0\n[disposal]\ninterval_s = 0.5\n")
    # libfaketime preloaded into the server itself (the `faketime` wrapper would take
    # the SIGTERM that stops it, and leave the server running)
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not libs:
        pytest.skip("no libfaketime.so.1 under /usr/lib/*/faketime")
    lib = libs[0]
    fake = {"LD_PRELOAD": lib, "FAKETIME": "+400d", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    server = start_server(data, args=("--config", str(cfg)), env=fake)
    faked = ("faketime", "-f", "+400d", sys.executable, "-m", "callvault.cli")
    try:
        addr = server.address

        def remote(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
            cmd = [*faked, "--server", addr, *args]
            env = child_env(FAKETIME_DONT_FAKE_MONOTONIC="1")
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            assert not ok or p.returncode == 0, p.stdout + p.stderr
            return p

        deadline = time.monotonic() + 60
        stats: dict[str, object] = {}
        while time.monotonic() < deadline:
            stats = json.loads(remote("stats", "--json").stdout)
            if stats.get("disposed_calls") == 2:
                break
            time.sleep(0.2)
        assert stats["disposed_calls"] == 2 and stats["disposal_error"] == ""
        assert int(str(stats["last_disposal_us"])) > (time.time_ns() // 1000) + 399 * DAY_US
        listed = remote("dispose", "reports").stdout
        assert "applied" in listed and "2 disposed" in listed
        assert calls_of(remote("dispose", "--dry-run", "--json").stdout) == []
        info = remote("info", "a").stdout
        assert "erased" in info
        assert remote("verify", "c").returncode == 0
    finally:
        assert server.stop() == 0, server.output()
    # the server's clock went 400 days on; the real one did not: refused
    back = cv(data, "dispose", "--dry-run", ok=False)
    assert back.returncode == 1 and "refusing to dispose" in back.stderr

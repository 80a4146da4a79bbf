"""`callvault --data DIR reclaim`: an erased call's audio freed by the local verb,
the others intact; usage errors (the through-a-server verb: tests/server/
test_reclaim_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

from callvault.vault import Vault
from tests.servers import run_cli
from tests.vault.test_reclaim import SEGMENT_BYTES, audio, record


def test_erase_then_reclaim_frees_the_audio(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["a"])
        record(v, ["b"], frames=1600)
        record(v, ["c"])
        sound = audio(v)
    d = ("--data", str(data))
    run_cli(*d, "erase", "b", "--reason", "retention")
    before = json.loads(run_cli(*d, "stats", "--json").stdout)
    assert before["reclaimable_bytes"] > 100_000 and before["reclaimed_bytes"] == 0
    out = run_cli(*d, "reclaim").stdout
    freed = int(out.split()[0])
    assert freed > 100_000 and "segment(s) removed" in out
    after = json.loads(run_cli(*d, "stats", "--json").stdout)
    assert after["stored_bytes"] == before["stored_bytes"] - freed
    assert after["reclaimed_bytes"] == freed
    assert json.loads(run_cli(*d, "reclaim", "--json", "--scan").stdout)["bytes_freed"] == 0
    assert run_cli(*d, "verify", "--all").stdout.startswith("OK")
    assert run_cli(*d, "verify", "b").stdout.startswith("OK")
    with Vault.open(data, read_only=True) as v:
        assert audio(v) == {k: sound[k] for k in ("a", "c")}


def test_reclaim_usage_errors(tmp_path: Path) -> None:
    p = run_cli("--data", str(tmp_path / "none"), "reclaim", ok=False)
    assert p.returncode == 1 and "no vault at" in p.stderr
    p = run_cli("--data", str(tmp_path), "reclaim", "--threshold", "x", ok=False)
    assert p.returncode == 2 and "not a number" in p.stderr

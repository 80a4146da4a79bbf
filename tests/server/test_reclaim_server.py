"""Reclaim through a real server: Admin.Reclaim (`callvault --server ADDR reclaim`),
Admin.Stats' reclaimable and reclaimed bytes, and the scheduled run
(`reclaim_interval_s`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from callvault_client import Client
from callvault_client.errors import InvalidArgument

from callvault.vault import Vault
from tests.servers import run_cli, start_server
from tests.vault.test_reclaim import SEGMENT_BYTES, audio, record

pytestmark = pytest.mark.timeout(300)


def _vault(tmp_path: Path, **settings: float) -> tuple[Path, Path, dict[str, object]]:
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, ["a"])
        record(v, ["b"], frames=1600)  # b's audio has segments of its own
        record(v, ["c"])
        sound = audio(v)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"segment_bytes": SEGMENT_BYTES, **settings}))
    return data, config, sound


def test_reclaim_verb_and_stats_through_the_server(tmp_path: Path) -> None:
    data, config, sound = _vault(tmp_path, reclaim_interval_s=0)  # never on its own
    server = start_server(data, args=("--config", str(config)))
    s = ("--server", server.address)
    try:
        run_cli(*s, "erase", "b", "--reason", "retention")
        stats = json.loads(run_cli(*s, "stats", "--json").stdout)
        assert stats["reclaimable_bytes"] > 100_000 and stats["reclaimed_bytes"] == 0
        assert stats["reclaim_error"] == ""
        p = run_cli(*s, "reclaim", "--threshold", "5", ok=False)
        assert p.returncode == 2 and "not in (0, 1]" in p.stderr
        with Client(server.address) as c, pytest.raises(InvalidArgument, match=r"\(0, 1\]"):
            c.reclaim(threshold=2)
        done = json.loads(run_cli(*s, "reclaim", "--json").stdout)
        assert done["bytes_freed"] > 100_000 and done["segments_removed"] >= 2
        assert done["reclaimed_bytes"] == done["bytes_freed"]
        out = run_cli(*s, "reclaim").stdout
        assert out.startswith("0 bytes reclaimed: 0 segment(s) removed")
        stats = json.loads(run_cli(*s, "stats", "--json").stdout)
        assert stats["reclaimed_bytes"] == done["bytes_freed"]
        assert stats["reclaimable_bytes"] == done["reclaimable_bytes"]
        assert run_cli(*s, "verify", "--all").stdout.startswith("OK")
    finally:
        server.stop()
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert audio(v) == {k: sound[k] for k in ("a", "c")} and v.verify_all() == []


def test_the_server_reclaims_on_its_schedule(tmp_path: Path) -> None:
    data, config, sound = _vault(tmp_path, reclaim_interval_s=0.2, reclaim_threshold=0.3)
    server = start_server(data, args=("--config", str(config)))
    try:
        with Client(server.address) as c:
            c.erase("b", "retention")
            deadline = time.monotonic() + 60
            while c.stats().reclaimed_bytes == 0:
                assert time.monotonic() < deadline, "no scheduled reclaim within 60 s"
                time.sleep(0.1)
            st = c.stats()
            assert st.reclaimed_bytes > 100_000 and st.reclaim_error == ""
    finally:
        assert server.stop() == 0
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert audio(v) == {k: sound[k] for k in ("a", "c")} and v.verify_all() == []


def test_bad_reclaim_settings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"reclaim_threshold": 0}))
    p = run_cli("serve", "--data", str(tmp_path / "d"), "--config", str(config), ok=False)
    assert p.returncode != 0 and "reclaim_threshold" in p.stderr

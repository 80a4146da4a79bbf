"""`callvault tenant erase|rotate-key` (docs/format.md 8.6) on a vault directory and,
for erase, on a server, as real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callvault.media import sample
from callvault.vault import Vault
from tests.servers import run_cli, start_server
from tests.vault.test_tenant_keys import SEGMENT_BYTES, record, tenant_dir

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(p, seconds=2.0)
    return p


def make(data: Path, capture: Path) -> None:
    for tenant, call_id in (("t1", "a"), ("t1", "b"), ("t2", "c")):
        run_cli(
            "--data", str(data), "--tenant", tenant, "import", "--call-id", call_id, str(capture)
        )


def test_tenant_verbs_on_a_vault_directory(tmp_path: Path, capture: Path) -> None:
    data = tmp_path / "data"
    make(data, capture)
    cv = ("--data", str(data))
    p = run_cli(*cv, "tenant", "rotate-key", "t1")
    assert p.stdout == (
        "tenant t1: key-encryption key generation 2 active; 2 key file(s) re-wrapped, "
        "no audio rewritten\n"
    )
    assert run_cli(*cv, "verify", "--all").stdout.startswith("OK")
    p = run_cli(*cv, "tenant", "erase", "t1", ok=False)
    assert p.returncode == 2 and "--reason" in p.stderr
    p = run_cli(*cv, "tenant", "erase", "t1", "--reason", "contract ended")
    assert p.stdout.startswith(
        "tenant t1 erased: its key-encryption key is destroyed, 2 call(s) unreadable; "
        "the tombstone is log leaf 3"
    )
    assert not tenant_dir(data, "t1").exists()
    p = run_cli(*cv, "--tenant", "t1", "export", "a", "-o", str(tmp_path / "a.ogg"), ok=False)
    assert p.returncode == 1 and "erased" in p.stderr
    doc = json.loads(run_cli(*cv, "--tenant", "t1", "info", "a", "--json").stdout)
    assert doc["state"] == "erased" and doc["erased"]["reason"] == "tenant erased: contract ended"
    p = run_cli(*cv, "--tenant", "t1", "import", "--call-id", "new", str(capture), ok=False)
    assert p.returncode == 1 and "tenant t1 was erased: it takes no new calls" in p.stderr
    p = run_cli(*cv, "tenant", "erase", "t1", "--reason", "again", ok=False)
    assert p.returncode == 1 and "already erased" in p.stderr
    p = run_cli(*cv, "tenant", "rotate-key", "t1", ok=False)
    assert p.returncode == 1 and "tenant t1 was erased" in p.stderr
    run_cli(*cv, "--tenant", "t2", "export", "c", "-o", str(tmp_path / "c.ogg"))
    assert (tmp_path / "c.ogg").stat().st_size > 1000
    out = run_cli(*cv, "verify", "--all").stdout
    assert out.startswith("OK")
    # another tenant's bundle is made and verifies offline (the log holds t1's leaf)
    run_cli(*cv, "--tenant", "t2", "bundle", "c", "-o", str(tmp_path / "c.bundle"))
    key = tmp_path / "log.pub"
    key.write_text(run_cli(*cv, "checkpoint", "--public-key").stderr)
    p = run_cli("verify-bundle", str(tmp_path / "c.bundle"), "--public-key", str(key))
    assert "bundle verifies" in p.stdout
    p = run_cli(*cv, "--tenant", "t1", "bundle", "a", "-o", str(tmp_path / "a.bundle"), ok=False)
    assert p.returncode == 1 and "erased" in p.stderr


def test_tenant_erase_through_a_server(tmp_path: Path, capture: Path) -> None:
    data = tmp_path / "data"
    make(data, capture)
    server = start_server(data)
    try:
        s = ("--server", server.address)
        p = run_cli(*s, "tenant", "erase", "t1", "--reason", "gdpr")
        assert "2 call(s) unreadable" in p.stdout
        p = run_cli(*s, "--tenant", "t1", "export", "b", "-o", str(tmp_path / "b.ogg"), ok=False)
        assert p.returncode == 1 and "erased" in p.stderr
        run_cli(*s, "--tenant", "t2", "export", "c", "-o", str(tmp_path / "c.ogg"))
        assert run_cli(*s, "verify", "--all").stdout.startswith("OK")
        p = run_cli(*s, "tenant", "rotate-key", "t2", ok=False)
        assert p.returncode == 1 and "runs on --data DIR" in p.stderr
    finally:
        server.stop()
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert v.tenant_erasure("t1") is not None and v.verify_all() == []
        record(v, "t2", ["d"])  # the other tenant records on

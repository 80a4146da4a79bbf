"""`callvault bundle [--with-customer-number]`, local and through `--server`, as real
processes: the customer number's key is in the bundle only when asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callvault.store import crypto
from callvault.store import records as rec
from tests.servers import run_cli, start_server

pytestmark = pytest.mark.timeout(300)

NUMBER = "+15557654321"


def _number_opens(d: Path, key_file: str) -> bool:
    m = json.loads((d / "manifest.json").read_text())
    key = bytes.fromhex((d / key_file).read_text().strip())
    blob = bytes.fromhex(m["customer_number_sealed"].removeprefix(rec.NUMBER_PREFIX))
    aad = rec.call_aad(m["tenant"], m["call_id"]) + rec.NUMBER_AAD
    try:
        return crypto.decrypt_blob(key, blob=blob, aad=aad).decode() == NUMBER
    except crypto.CryptoError:
        return False


@pytest.mark.parametrize("where", ["local", "remote"])
def test_bundle_carries_the_customer_number_only_when_asked(tmp_path: Path, where: str) -> None:
    run_cli("sample", "-o", str(tmp_path / "call.pcap"), "--seconds", "2")
    data = tmp_path / "data"
    run_cli(
        "--data",
        str(data),
        "import",
        "--call-id",
        "c1",
        "--meta",
        f"customer_number={NUMBER}",
        str(tmp_path / "call.pcap"),
    )
    server = start_server(data) if where == "remote" else None
    try:
        target = ("--server", server.address) if server else ("--data", str(data))
        plain, full = tmp_path / "plain", tmp_path / "full"
        run_cli(*target, "bundle", "c1", "-o", str(plain))
        run_cli(*target, "bundle", "c1", "-o", str(full), "--with-customer-number")
    finally:
        if server is not None:
            server.stop()
    assert not (plain / "customer-number.key").exists()
    assert not _number_opens(plain, "call.key")
    assert _number_opens(full, "customer-number.key")
    for d in (plain, full):
        assert run_cli("verify-bundle", str(d)).stdout.endswith("bundle verifies\n")

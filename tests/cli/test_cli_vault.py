"""`callvault --data DIR <verb>`: the vault's command line, as real processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from callvault.media import sample
from tests.servers import CLI, run_cli


def cv(data: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("--data", str(data), *args, ok=ok)


@pytest.fixture(scope="module")
def vault_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    sample.demo_capture(tmp / "call.pcap", seconds=5.0)
    data = tmp / "data"
    out = cv(
        data,
        "import",
        "--call-id",
        "c1",
        "--meta",
        "agent=ann",
        "--meta",
        "tags=vip,qa",
        "--meta",
        "customer_number=+15557654321",
        "--meta",
        "start=2026-11-01T09:00:00",
        str(tmp / "call.pcap"),
    ).stdout
    assert out.startswith("c1 sealed ") and len(out.split()[2]) == 64
    cv(
        data,
        "import",
        "--call-id",
        "c2",
        "--meta",
        "agent=bob",
        "--meta",
        "start=2026-11-02T09:00:00",
        str(tmp / "call.pcap"),
    )
    return data


def test_ls_filters(vault_dir: Path) -> None:
    rows = json.loads(cv(vault_dir, "ls", "--json").stdout)
    assert [r["call_id"] for r in rows] == ["c1", "c2"]
    assert rows[0]["start"] == "2026-11-01T09:00:00+00:00" and rows[0]["state"] == "sealed"
    assert [
        r["call_id"] for r in json.loads(cv(vault_dir, "ls", "--agent", "bob", "--json").stdout)
    ] == ["c2"]
    assert [
        r["call_id"] for r in json.loads(cv(vault_dir, "ls", "--tag", "qa", "--json").stdout)
    ] == ["c1"]
    since = json.loads(cv(vault_dir, "ls", "--since", "2026-11-01T12:00:00", "--json").stdout)
    assert [r["call_id"] for r in since] == ["c2"]


def test_info(vault_dir: Path) -> None:
    doc = json.loads(cv(vault_dir, "info", "c1", "--json").stdout)
    assert doc["customer_number"] == "+15557654321" and doc["agent"] == "ann"
    assert doc["tags"] == ["vip", "qa"] and 4.9 < doc["seconds"] < 5.1
    assert [leg["leg"] for leg in doc["legs_detail"]] == ["agent", "customer"]


def test_export_and_verify(vault_dir: Path, tmp_path: Path) -> None:
    cv(vault_dir, "export", "c1", "-o", str(tmp_path / "c1.ogg"), "--from", "1", "--to", "3")
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=channels",
            "-of",
            "json",
            str(tmp_path / "c1.ogg"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(probe.stdout)
    assert doc["streams"][0]["channels"] == 2 and abs(float(doc["format"]["duration"]) - 2) < 0.01
    assert "OK" in cv(vault_dir, "verify", "--all").stdout
    assert "OK" in cv(vault_dir, "verify", "c1", "c2").stdout


def test_bundle_and_verify_bundle(vault_dir: Path, tmp_path: Path) -> None:
    cv(vault_dir, "bundle", "c1", "-o", str(tmp_path / "b"))
    key = tmp_path / "log.pub"
    key.write_text(cv(vault_dir, "checkpoint", "--public-key").stderr)
    p = subprocess.run(
        [*CLI, "verify-bundle", str(tmp_path / "b"), "--public-key", str(key)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and "bundle verifies" in p.stdout, p.stdout
    rec = tmp_path / "b" / "records" / "000001"
    raw = bytearray(rec.read_bytes())
    raw[-3] ^= 0x10
    rec.write_bytes(bytes(raw))
    p = subprocess.run(
        [*CLI, "verify-bundle", str(tmp_path / "b"), "--public-key", str(key)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "does NOT verify" in p.stdout and "record 1" in p.stdout


def test_verify_names_the_damaged_call_and_record(tmp_path: Path) -> None:
    sample.demo_capture(tmp_path / "call.pcap", seconds=3.0)
    data = tmp_path / "data"
    cv(data, "import", "--call-id", "x", str(tmp_path / "call.pcap"))
    seg = sorted((data / "segments").iterdir())[0]
    raw = bytearray(seg.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    seg.write_bytes(bytes(raw))
    p = cv(data, "verify", "x", ok=False)
    assert p.returncode == 1 and "FAILED call x record" in p.stdout, p.stdout


def test_erase_reindex_rotate(tmp_path: Path) -> None:
    sample.demo_capture(tmp_path / "call.pcap", seconds=3.0)
    data = tmp_path / "data"
    cv(data, "import", "--call-id", "e1", str(tmp_path / "call.pcap"))
    cv(data, "import", "--call-id", "e2", str(tmp_path / "call.pcap"))
    assert "erased" in cv(data, "erase", "e1", "--reason", "customer request").stdout
    assert "re-wrapped" in cv(data, "rotate-key").stdout
    assert "rebuilt" in cv(data, "reindex").stdout
    assert "OK" in cv(data, "verify", "--all").stdout
    doc = json.loads(cv(data, "info", "e1", "--json").stdout)
    assert doc["state"] == "erased" and doc["erased"]["reason"] == "customer request"
    p = cv(data, "export", "e1", "-o", str(tmp_path / "e1.ogg"), ok=False)
    assert p.returncode == 1 and "destroyed" in p.stderr
    cv(data, "export", "e2", "-o", str(tmp_path / "e2.ogg"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "nope"], "no call nope"),
        (["import", "--call-id", "z", "--meta", "colour", "x.pcap"], "KEY=VALUE"),
        (["import", "--call-id", "z", "--meta", "agent=a", "--meta", "agent=b", "x.pcap"], "twice"),
        (["import", "--call-id", "bad id", "x.pcap"], "call_id 'bad id': use 1 to 128"),
        (["export", "c1", "-o", "c1.mp3"], "name it .ogg or .wav"),
        (["bundle", "c1", "-o", "."], "exists: a bundle goes into a new directory"),
        (["ls", "--since", "yesterday"], "not a time"),
        (["verify"], "--all"),
    ],
)
def test_bad_requests_are_one_clear_line(vault_dir: Path, args: list[str], message: str) -> None:
    p = cv(vault_dir, *args, ok=False)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr


def test_vault_verbs_need_data() -> None:
    p = subprocess.run([*CLI, "ls"], capture_output=True, text=True)
    assert p.returncode != 0 and "--data DIR" in p.stderr

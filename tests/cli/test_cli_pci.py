"""PCI on a local vault through the command line: `import` masks in-band DTMF and
withholds digits by default, `scan` finds what is left (and every digit when masking
is off), `info` shows that DTMF occurred and where, the digits only when kept."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from callvault.cli import scan as scan_cli
from callvault.media import scan
from tests import pcicall
from tests.servers import run_cli


def cv(data: Path, *args: str, ok: bool = True) -> Any:
    return run_cli("--data", str(data), *args, ok=ok)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pcicall.write_capture(tmp_path_factory.mktemp("pci") / "call.pcap")


def scan_json(data: Path, call_id: str) -> tuple[int, dict[str, Any]]:
    p = cv(data, "scan", call_id, "--json", ok=False)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


def test_import_masks_by_default_and_scan_finds_no_tone(capture: Path, tmp_path: Path) -> None:
    data = tmp_path / "v"
    cv(data, "import", "--call-id", "m", str(capture))
    rc, doc = scan_json(data, "m")
    assert (rc, doc["hits"], doc["clean"]) == (0, [], True)
    assert "no DTMF-like tone found" in cv(data, "scan", "m").stdout
    info = json.loads(cv(data, "info", "m", "--json").stdout)
    # DTMF occurred (4 in-band digits, 2 RFC 4733 events) and where: never which digits
    assert info["dtmf_events"] == len(pcicall.INBAND) + len(pcicall.RFC4733)
    assert info["digits_kept"] is False
    agent, customer = info["legs_detail"]
    inband = [(e["start_ms"], e.get("digit"), e["masked"]) for e in agent["dtmf"]]
    assert len(inband) == len(pcicall.INBAND)
    for (start_ms, digit, masked), (at, *_rest) in zip(inband, pcicall.INBAND, strict=True):
        assert abs(start_ms - at * 1000) <= 20 and digit is None and masked
    assert [e["start_ms"] for e in customer["telephone_events"]] == [
        int(at * 1000) for at, _ in pcicall.RFC4733
    ]
    assert all("digit" not in e for e in customer["telephone_events"])
    text = cv(data, "info", "m").stdout
    assert "DTMF (digits not kept) digit at 0:02.000" in text
    assert not re.search(r"\b[0-9#*] at ", text)


def test_import_without_masking_scan_finds_every_digit(capture: Path, tmp_path: Path) -> None:
    data = tmp_path / "v"
    cv(data, "import", "--call-id", "u", "--no-mask-dtmf", str(capture))
    rc, doc = scan_json(data, "u")
    assert rc == 1 and not doc["clean"]
    hits = doc["hits"]
    assert [h["leg"] for h in hits] == ["agent"] * len(pcicall.INBAND), hits
    for h, (at, digit, ms, db) in zip(hits, pcicall.INBAND, strict=True):
        assert (h["low_hz"], h["high_hz"]) == pcicall.pair(digit)
        assert abs(h["start_s"] - at) <= 0.02 and abs(h["duration_ms"] - ms) <= 25
        assert abs(h["low_dbm0"] - db) <= 3 and abs(h["high_dbm0"] - db) <= 3
    out = cv(data, "scan", "u", ok=False)
    assert out.returncode == 1 and f"{len(hits)} DTMF-like tone(s) found" in out.stdout
    info = json.loads(cv(data, "info", "u", "--json").stdout)
    assert [e["masked"] for e in info["legs_detail"][0]["dtmf"]] == [False] * len(pcicall.INBAND)


def test_keep_digits_keeps_and_marks_them(capture: Path, tmp_path: Path) -> None:
    data = tmp_path / "v"
    cv(data, "import", "--call-id", "k", "--keep-digits", str(capture))
    info = json.loads(cv(data, "info", "k", "--json").stdout)
    assert info["digits_kept"] is True
    agent, customer = info["legs_detail"]
    assert agent["digits_kept"] and customer["digits_kept"]
    assert [e["digit"] for e in agent["dtmf"]] == [d for _, d, _, _ in pcicall.INBAND]
    assert [e["digit"] for e in customer["telephone_events"]] == [d for _, d in pcicall.RFC4733]
    assert scan_json(data, "k")[0] == 0  # kept digits, masked tones all the same


def test_scan_doc_states_the_module_thresholds() -> None:
    doc = scan_cli.SCAN_DOC
    assert f"from {scan.MIN_DBM0:g} dBm0" in doc
    assert f"to {scan.MAX_TWIST_DB:g} dB either way" in doc
    assert f"holding {scan.MIN_RATIO:g} of the" in doc
    ms = (scan.BLOCK + (scan.MIN_BLOCKS - 1) * scan.HOP) * 1000 // scan.SAMPLE_RATE
    assert f"lasting {ms} ms" in doc

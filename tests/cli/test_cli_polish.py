"""Polish found by the adversarial re-test of issue 9, through the real `callvault`
binary on a real vault (``--data``) and a real server (``--server``):

- `ls` and `ls --json` show a call with audio in a codec callvault does not record
  (issue 9 section 2: "shown in info and ls");
- a failed `import` leaves no new vault directory behind;
- `ls --since X --until Y` with Y not after X says so with readable dates, before
  asking a vault or a server.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from callvault.media.rtppack import PT_PCMU, build_packet
from callvault.media.sample import write_udp_capture
from tests.servers import run_cli, start_server

PT_G722 = 9


def capture(path: Path, *, g722_from: int | None) -> None:
    """A capture of one call, 150 packets per leg: the customer leg PCMU; the agent
    leg PCMU, from packet ``g722_from`` on G.722 (payload type 9; None: never).

    A leg entirely in G.722 is refused by import (tests/e2e/test_g722.py); a leg
    whose codec changes to G.722 mid-call is stored, that span sealed as an
    unsupported-codec gap."""
    grams = []
    for i in range(150):
        t = 1_700_000_000 + i / 50
        g722 = g722_from is not None and i >= g722_from
        agent = build_packet(
            PT_G722 if g722 else PT_PCMU, 100 + i, 160 * i, 0xA, bytes(range(1, 161))
        )
        customer = build_packet(PT_PCMU, 500 + i, 160 * i, 0xB, bytes(range(1, 161)))
        grams.append((t, ("10.0.0.1", 4000), ("10.0.0.2", 5000), agent))
        grams.append((t + 0.001, ("10.0.0.2", 6000), ("10.0.0.1", 7000), customer))
    write_udp_capture(path, grams)


def _ls(where: list[str], *args: str) -> tuple[list[dict[str, object]], str]:
    rows = json.loads(run_cli(*where, "ls", "--json", *args).stdout)
    table = run_cli(*where, "ls", *args).stdout
    return rows, table


def _check_ls_shows_the_codec(where: list[str]) -> None:
    rows, table = _ls(where)
    by_id = {r["call_id"]: r for r in rows}
    assert by_id["mixed"]["unsupported_codec"] == {
        "legs": ["agent"],
        "payload_types": [PT_G722],
        "frames": 100,  # packets 50..149 of the agent leg
    }, by_id["mixed"]
    assert by_id["clean"]["unsupported_codec"] is None
    lines = {line.split()[0]: line for line in table.splitlines()}
    assert lines["mixed"].endswith("!codec agent:PT9"), table
    assert "vip" in lines["mixed"]  # the tags are still there, before the flag
    assert "!codec" not in lines["clean"], table
    # the same frames `info` reports for the leg
    info = json.loads(run_cli(*where, "info", "mixed", "--json").stdout)
    agent = next(leg for leg in info["legs_detail"] if leg["leg"] == "agent")
    assert agent["unsupported_codec"]["frames"] == 100


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("caps")
    mixed, clean = d / "mixed.pcap", d / "clean.pcap"
    capture(mixed, g722_from=50)
    capture(clean, g722_from=None)
    return mixed, clean


def test_ls_marks_a_call_with_an_unsupported_codec_locally(
    tmp_path: Path, captures: tuple[Path, Path]
) -> None:
    mixed, clean = captures
    data = str(tmp_path / "vault")
    run_cli("--data", data, "import", str(mixed), "--call-id", "mixed", "--meta", "tags=vip")
    run_cli("--data", data, "import", str(clean), "--call-id", "clean")
    _check_ls_shows_the_codec(["--data", data])
    # sealed in the manifest: a rebuilt index still knows it
    run_cli("--data", data, "reindex")
    _check_ls_shows_the_codec(["--data", data])


def test_ls_marks_a_call_with_an_unsupported_codec_through_a_server(
    tmp_path: Path, captures: tuple[Path, Path]
) -> None:
    mixed, clean = captures
    server = start_server(tmp_path / "served")
    try:
        where = ["--server", server.address]
        run_cli(*where, "import", str(mixed), "--call-id", "mixed", "--meta", "tags=vip")
        run_cli(*where, "import", str(clean), "--call-id", "clean")
        _check_ls_shows_the_codec(where)
    finally:
        server.stop()


def test_a_failed_import_leaves_no_new_vault(tmp_path: Path, captures: tuple[Path, Path]) -> None:
    junk = tmp_path / "notapcap"
    junk.write_text("hello\n")

    def refused(data: Path) -> None:
        p = run_cli("--data", str(data), "import", str(junk), "--call-id", "c1", ok=False)
        assert p.returncode == 1
        assert p.stderr.startswith(f"callvault: error: {junk} is not a pcap or pcapng capture")

    new = tmp_path / "new" / "vault"  # neither it nor its parent exists
    refused(new)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"  # an existing directory keeps what it had, and only that
    empty.mkdir()
    (empty / "notes").write_text("mine\n")
    refused(empty)
    assert sorted(p.name for p in empty.iterdir()) == ["notes"]
    key = tmp_path / "kek"  # a key file this run made goes with its vault
    p = run_cli(
        "--data", str(new), "--key-file", str(key), "import", str(junk), "--call-id", "c1",
        ok=False,
    )  # fmt: skip
    assert p.returncode == 1 and not new.exists() and not key.exists()
    # An existing vault keeps everything, the failed import adds nothing.
    vault = tmp_path / "vault"
    run_cli("--data", str(vault), "import", str(captures[1]), "--call-id", "kept")
    before = sorted(p.name for p in vault.iterdir())  # (RocksDB's own files churn)
    refused(vault)
    assert sorted(p.name for p in vault.iterdir()) == before
    rows = json.loads(run_cli("--data", str(vault), "ls", "--json").stdout)
    assert [r["call_id"] for r in rows] == ["kept"]
    # and a good import into a fresh directory still makes the vault
    run_cli("--data", str(new), "import", str(captures[1]), "--call-id", "c1")
    assert [r["call_id"] for r in json.loads(run_cli("--data", str(new), "ls", "--json").stdout)]


def _until_not_after_since(p: subprocess.CompletedProcess[str]) -> None:
    assert p.returncode == 1, p.stderr
    m = re.fullmatch(
        r"callvault: error: --until \((\S+)\) is not after --since \((\S+)\): .*\n", p.stderr
    )
    assert m is not None, p.stderr
    assert m[2] == "2026-12-01T00:00:00+00:00"
    assert m[1] <= m[2] and "until_us" not in p.stderr


def test_until_before_since_is_told_with_dates(tmp_path: Path) -> None:
    # no vault needed: the arguments are checked first (and none is created)
    args = ("ls", "--since", "2026-12-01", "--until", "2020-01-01")
    _until_not_after_since(run_cli("--data", str(tmp_path / "v"), *args, ok=False))
    assert not (tmp_path / "v").exists()
    p = run_cli(
        "--data",
        str(tmp_path / "v"),
        "ls",
        "--since",
        "2026-12-01",
        "--until",
        "2026-12-01",
        ok=False,
    )
    _until_not_after_since(p)  # equal is not after either
    server = start_server(tmp_path / "served")
    try:
        _until_not_after_since(run_cli("--server", server.address, *args, ok=False))
    finally:
        server.stop()

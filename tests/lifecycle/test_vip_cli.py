"""`callvault --data DIR vip add|rm|ls`: numbers stored only as keyed hashes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.servers import CLI, run_cli


def test_vip_add_rm_ls_never_stores_numbers(tmp_path: Path) -> None:
    data = tmp_path / "v"
    run_cli("--data", str(data), "init")
    out = run_cli("--data", str(data), "vip", "add", "+1 555 010 2000", "+1-555-010-2000").stdout
    assert "1 number(s) added" in out
    p = subprocess.run(
        [*CLI, "--data", str(data), "vip", "add", "--from", "-"],
        input="+44 20 7946 0000\n# a comment\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert "1 number(s) added (2 VIP hash(es) stored)" in p.stdout
    hashes = run_cli("--data", str(data), "vip", "ls").stdout.split()
    assert len(hashes) == 2 and all(len(h) == 64 for h in hashes)
    for f in (p for p in (data / "keys").iterdir() if p.is_file()):
        assert b"5550102000" not in f.read_bytes() and b"2079460000" not in f.read_bytes()
    assert run_cli("--data", str(data), "vip", "ls", "--check", "0015550102000").stdout == "VIP\n"
    run_cli("--data", str(data), "vip", "rm", "+15550102000")
    miss = run_cli("--data", str(data), "vip", "ls", "--check", "+15550102000", ok=False)
    assert miss.returncode == 1 and miss.stdout == "not a VIP\n"
    bad = run_cli("--data", str(data), "vip", "add", "call me maybe", ok=False)
    assert bad.returncode == 1 and "digits" in bad.stderr
    none = run_cli("--data", str(tmp_path / "nope"), "vip", "add", "+1", ok=False)
    assert none.returncode == 1 and "no vault at" in none.stderr

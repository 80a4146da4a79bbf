"""The README's first minute: `make run`'s demo, the server, scripts/first-call.sh."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.servers import CLI, start_server

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_first_call_script_records_lists_exports_and_verifies(tmp_path: Path) -> None:
    demo = subprocess.run(
        [*CLI, "demo", "--data", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert demo.returncode == 0, demo.stderr
    assert "scripts/first-call.sh" in demo.stdout
    srv = start_server(tmp_path / "vault")
    try:
        env = {
            **os.environ,
            "SERVER": srv.address,
            "SIDECAR": f"127.0.0.1:{free_port()}",
            "DATA": str(tmp_path),
            "CALL": "first",
            "RTP": "127.0.0.1:41000-41099",
            "PATH": f"{Path(CLI[0]).parent}:{os.environ['PATH']}",
        }
        p = subprocess.run(
            [str(ROOT / "scripts" / "first-call.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        assert "OK: 1 call(s) verified" in p.stdout
        assert "stream|channels=2" in p.stdout
        assert (tmp_path / "first.ogg").stat().st_size > 10_000
    finally:
        srv.stop()

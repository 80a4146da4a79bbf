"""`callvault call start / call stop` as real processes: what they refuse before
asking the sidecar, and a sidecar that is not there. (Against a real sidecar they
run in tests/e2e/test_sidecar.py.)"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.servers import run_cli


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def call(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("call", *args, ok=False, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--call-id", "bad id/1"], "call_id 'bad id/1': use 1 to 128 characters"),
        (["--call-id", "c1", "--legs", "agent,a b"], "leg name 'a b'"),
        (["--call-id", "c1", "--meta", "start=1"], "KEY=VALUE"),
        (["--call-id", "c1", "--meta", "agent"], "KEY=VALUE"),
        (["--call-id", "c1", "--meta", "q=1", "--meta", "q=2"], "q is given twice"),
    ],
)
def test_call_start_refuses_bad_arguments_in_one_line(args: list[str], message: str) -> None:
    p = call("start", "--sidecar", f"127.0.0.1:{closed_port()}", *args)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("callvault: error: ") and message in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1


@pytest.mark.parametrize("verb", ["start", "stop", "ls"])
def test_no_sidecar_is_a_clear_error(verb: str) -> None:
    address = f"127.0.0.1:{closed_port()}"
    p = call(verb, "--sidecar", address, *(["--call-id", "c1"] if verb != "ls" else []))
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith(f"callvault: error: sidecar {address}: "), p.stderr
    assert "Traceback" not in p.stderr


def test_sidecar_control_listens_on_loopback_unless_told(tmp_path: Path) -> None:
    """The control API has no TLS: a non-loopback --listen is refused before anything
    starts (no spool made), naming both ways out."""
    spool = tmp_path / "spool"
    p = run_cli(
        "sidecar", "--server", "127.0.0.1:1", "--rtp", "127.0.0.1:40000-40010",
        "--listen", "0.0.0.0:0", "--spool", str(spool), ok=False, timeout=60,
    )  # fmt: skip
    assert p.returncode != 0
    assert "not a loopback address" in p.stderr and "--insecure-listen" in p.stderr
    assert not spool.exists()

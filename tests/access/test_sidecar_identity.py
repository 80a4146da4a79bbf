"""The sidecar's two credentials, all real processes: its control API takes tokens of
its own store (SPOOL/access; `call start` without one is UNAUTHENTICATED), and it
sends its server token on the uplink and the GetCall probe. A sidecar without a
good server token loses nothing: the call waits in the spool until it has one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from callvault_client import Client

from tests.e2e.sidecar_procs import rtp_range, send_rtp, wait_sealed, wait_state
from tests.servers import CLI, Proc, run_cli, spawn, start_server


def start_sidecar(upstream: str, spool: Path, rtp: str, log_dir: Path, *args: str) -> Proc:
    argv = ["sidecar", "--server", upstream, "--rtp", rtp, "--listen", "127.0.0.1:0"]
    return spawn("sidecar", [*argv, "--spool", str(spool), *args], log_dir)


def call(
    verb: str, sidecar: Proc, call_id: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "call", verb, "--sidecar", sidecar.address, "--call-id", call_id, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def server_token(data: Path, name: str, role: str) -> str:
    p = run_cli(
        "--data", str(data), "token", "create", "--name", name, "--role", role, "--platform"
    )
    return p.stdout.strip()


def test_control_api_needs_a_token_of_the_sidecars_store(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")  # open mode: the uplink needs no token
    spool = tmp_path / "spool"
    made = run_cli("token", "create", "--spool", str(spool), "--name", "pbx1")
    control = made.stdout.strip()
    assert "role recorder" in made.stderr
    p = run_cli(
        "token", "create", "--spool", str(spool), "--name", "x", "--role", "admin", ok=False
    )
    assert p.returncode == 1 and "role recorder" in p.stderr
    sidecar = start_sidecar(server.address, spool, rtp_range(), tmp_path)
    try:
        assert "OPEN MODE" not in sidecar.output()
        p = call("start", sidecar, "c-1")
        assert p.returncode == 1 and "no credentials" in p.stderr, p.stderr
        p = call("start", sidecar, "c-1", "--token", "cvt_0123456789abcdef_" + "A" * 43)
        assert p.returncode == 1 and "unknown token" in p.stderr
        p = call("start", sidecar, "c-1", "--token", control)
        assert p.returncode == 0, p.stderr
        ports = json.loads(p.stdout)
        send_rtp(ports, 0.5)
        tf = tmp_path / "control.token"
        tf.write_text(control)
        p = call("stop", sidecar, "c-1", "--token-file", str(tf))
        assert p.returncode == 0, p.stderr
        wait_sealed_env(sidecar, control, "c-1")
        ls = subprocess.run(
            [*CLI, "call", "ls", "--sidecar", sidecar.address, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "CALLVAULT_TOKEN": control},
        )
        assert ls.returncode == 0, ls.stderr
        assert json.loads(ls.stdout)["health"] == "SERVING"
        # revoked at once
        run_cli("token", "revoke", "--spool", str(spool), "pbx1")
        p = call("start", sidecar, "c-2", "--token", control)
        assert p.returncode == 1 and "(pbx1) was revoked at" in p.stderr
        assert control.split("_", 2)[2] not in sidecar.output()
        assert "c-1" in {r["call_id"] for r in json.loads(ls.stdout)["calls"]}
    finally:
        sidecar.stop()
        server.stop()


def wait_sealed_env(sidecar: Proc, token: str, call_id: str) -> None:
    """wait_sealed through a raw channel with the control token's metadata."""
    import time

    deadline = time.monotonic() + 90
    from callvault_client import SidecarClient

    with SidecarClient(sidecar.address, token=token) as c:
        while time.monotonic() < deadline:
            if any(x.call_id == call_id and x.state == "sealed" for x in c.list_calls()):
                return
            time.sleep(0.1)
    raise AssertionError(f"{call_id} not sealed; log:\n{sidecar.output()}")


def test_open_control_api_warns_and_takes_loopback_callers(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        assert "OPEN MODE" in sidecar.output() and "token create --spool" in sidecar.output()
        p = call("start", sidecar, "o-1")
        assert p.returncode == 0, p.stderr
        assert call("stop", sidecar, "o-1").returncode == 0
    finally:
        sidecar.stop()
        server.stop()


def test_uplink_without_a_token_keeps_the_call_spooled_until_it_has_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    admin = server_token(data, "root", "admin")  # the server is no longer open
    spool, rtp = tmp_path / "spool", rtp_range()
    sidecar = start_sidecar(server.address, spool, rtp, tmp_path)
    try:
        p = call("start", sidecar, "u-1")  # the GetCall probe is refused: started anyway
        assert p.returncode == 0, p.stderr
        send_rtp(json.loads(p.stdout), 0.5)
        assert call("stop", sidecar, "u-1").returncode == 0
        wait_state(sidecar, "u-1", "forwarding")
        import time

        deadline = time.monotonic() + 30
        while "UNAUTHENTICATED" not in sidecar.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "UNAUTHENTICATED" in sidecar.output()
        assert wait_state(sidecar, "u-1", "forwarding").state == "forwarding"  # not lost
    finally:
        sidecar.stop()
    tf = tmp_path / "server.token"
    tf.write_text(admin + "\n")
    sidecar = start_sidecar(server.address, spool, rtp, tmp_path, "--token-file", str(tf))
    try:
        sealed = wait_sealed(sidecar, "u-1")
        assert sealed.packets > 0
        with Client(server.address, token=admin) as c:
            assert c.get_call("u-1").state == "sealed"
        assert admin.split("_", 2)[2] not in sidecar.output() + server.output()
    finally:
        sidecar.stop()
        server.stop()


def test_sidecar_records_with_a_recorder_token_from_the_environment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    recorder = server_token(data, "pbx1", "recorder")
    admin = server_token(data, "root", "admin")
    argv = [
        "sidecar",
        "--server",
        server.address,
        "--rtp",
        rtp_range(),
        "--listen",
        "127.0.0.1:0",
        "--spool",
        str(tmp_path / "spool"),
    ]
    sidecar = spawn("sidecar", argv, tmp_path, env={"CALLVAULT_TOKEN": recorder})
    try:
        p = call("start", sidecar, "r-1")
        assert p.returncode == 0, p.stderr
        send_rtp(json.loads(p.stdout), 0.5)
        assert call("stop", sidecar, "r-1").returncode == 0
        wait_sealed(sidecar, "r-1")
        with Client(server.address, token=admin) as c:
            assert c.get_call("r-1").state == "sealed"
        log = sidecar.output()
        assert "UNAUTHENTICATED" not in log
        # the recorder may not read: the GetCall probe's refusal is said once, quietly
        assert log.count("does not let this sidecar ask") == 1
        assert "cannot say whether" not in log
    finally:
        sidecar.stop()
        server.stop()

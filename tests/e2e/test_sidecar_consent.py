"""Consent and recording rules end to end, all real processes: `callvault serve` with a
recording policy, `callvault sidecar`, `callvault call start --region --consent`, ffmpeg
sending G.711 RTP. Declined all-party consent: no audio anywhere (no spool file of the
call, no AUDIO record in the vault's segments), a decision entry `ls --decisions`
lists; granted: recorded with its decision. While the server is away the sidecar never
spools audio of a call whose consent is declined or unknown."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from callvault.media import wav
from callvault.sidecar.spool import spool_name
from tests.cli.test_cli_transcode import clicks
from tests.e2e.sidecar_procs import (
    call_info,
    call_state,
    cli,
    ffmpeg_sender,
    free_tcp_port,
    rtp_range,
    send_rtp,
    start_sidecar,
    wait_sealed,
    wait_state,
)
from tests.lifecycle.test_rules_server import audio_records
from tests.servers import run_cli, start_server

pytestmark = pytest.mark.slow

POLICY = """
[recording]
record = "all"
[regions.ca]
consent = "all-party"
[regions.uk]
consent = "one-party"
"""


def _policy(tmp: Path) -> tuple[str, ...]:
    (tmp / "policy.toml").write_text(POLICY)
    return ("--config", str(tmp / "policy.toml"))


def _spool_files(spool: Path, call_id: str) -> list[Path]:
    d = spool / spool_name("", call_id)
    return [p for p in d.rglob("*") if p.is_file()] if d.exists() else []


def _start(
    sidecar_addr: str, call_id: str, *extra: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "call", "start", "--sidecar", sidecar_addr, "--call-id", call_id, *extra, ok=ok, timeout=60
    )


def _ffmpeg(tmp: Path, ports: dict[str, int], seconds: float = 2.0) -> None:
    senders = []
    for i, (name, port) in enumerate(ports.items()):
        wav.write(
            tmp / f"{name}.wav", [clicks(seconds, [0.5, 1.2], hz=500.0 + 200 * i).astype(np.int16)]
        )
        senders.append(ffmpeg_sender(tmp / f"{name}.wav", port))
    try:
        for s in senders:
            assert s.wait(timeout=120) == 0
    finally:
        for s in senders:
            s.kill()


def test_declined_all_party_consent_stores_no_audio_anywhere(tmp_path: Path) -> None:
    data, spool = tmp_path / "data", tmp_path / "spool"
    server = start_server(data, args=_policy(tmp_path))
    sidecar = start_sidecar(server.address, spool, rtp_range(), tmp_path)
    try:
        p = _start(sidecar.address, "no-1", "--region", "ca", "--consent", "declined")
        ports = json.loads(p.stdout)
        assert set(ports) == {"agent", "customer"}
        assert "not recorded" in p.stderr and "consent is declined" in p.stderr
        # a real sender sends the call's RTP all the same; while it does, nothing spools
        seen: list[list[Path]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append(_spool_files(spool, "no-1"))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            _ffmpeg(tmp_path, ports)
        finally:
            stop.set()
            watcher.join()
        assert seen and all(s == [] for s in seen)
        c = call_state(sidecar, "no-1")
        assert c is not None and c.state == "not_recorded" and c.packets == 0
        stopped = json.loads(
            run_cli("call", "stop", "--sidecar", sidecar.address, "--call-id", "no-1").stdout
        )
        assert stopped["state"] == "not_recorded" and "consent" in stopped["reason"]
        # the call id is decided: starting it again is refused (granted or not)
        again = _start(sidecar.address, "no-1", "--region", "ca", "--consent", "granted", ok=False)
        assert again.returncode == 1 and "(not_recorded)" in again.stderr, again.stderr
        # the decision: remote ls --decisions, info
        out = run_cli("--server", server.address, "ls", "--decisions", "--json").stdout
        rows = json.loads(out)
        assert [(r["call_id"], r["rule"], r["region"], r["consent"]) for r in rows] == [
            ("no-1", "consent", "ca", "declined")
        ]
        info = json.loads(run_cli("--server", server.address, "info", "no-1", "--json").stdout)
        assert info["state"] == "not_recorded" and info["decision"]["recorded"] is False
        assert json.loads(run_cli("--server", server.address, "ls", "--json").stdout) == []
    finally:
        assert sidecar.stop() == 0
        server.stop()
    assert _spool_files(spool, "no-1") == []
    assert audio_records(data, "no-1") == 0
    local = cli(data, "ls", "--decisions")
    assert local.returncode == 0 and "no-1" in local.stdout and "not-recorded" in local.stdout


def test_granted_all_party_consent_is_recorded_with_its_decision(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, args=_policy(tmp_path))
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        p = _start(sidecar.address, "yes-1", "--region", "ca", "--consent", "granted")
        assert p.stderr == ""
        ports = json.loads(p.stdout)
        _ffmpeg(tmp_path, ports)
        time.sleep(0.3)
        run_cli("call", "stop", "--sidecar", sidecar.address, "--call-id", "yes-1")
        assert wait_sealed(sidecar, "yes-1").packets > 0
        # an unknown region is refused at start, naming the server's regions
        bad = _start(sidecar.address, "fr-1", "--region", "fr", "--consent", "granted", ok=False)
        assert bad.returncode == 1 and "the server's regions are ca, uk" in bad.stderr
    finally:
        assert sidecar.stop() == 0
        server.stop()
    info = call_info(data, "yes-1")
    assert info["state"] == "sealed" and info["seconds"] > 1.0
    assert info["decision"] == {
        "recorded": True,
        "rule": "all",
        "reason": 'record = "all"',
        "region": "ca",
        "consent": "granted",
    }
    assert audio_records(data, "yes-1") > 0


def test_sidecar_without_its_server_never_spools_a_call_that_may_be_declined(
    tmp_path: Path,
) -> None:
    data, spool = tmp_path / "data", tmp_path / "spool"
    port = free_tcp_port()
    sidecar = start_sidecar(f"127.0.0.1:{port}", spool, rtp_range(), tmp_path)
    server = None
    try:
        for consent in ("declined", "unknown"):
            p = _start(
                sidecar.address, f"x-{consent}", "--region", "ca", "--consent", consent, ok=False
            )
            assert p.returncode == 1 and "UNAVAILABLE" not in p.stdout
            assert f"consent {consent} may be recorded" in p.stderr, p.stderr
            assert not (spool / spool_name("", f"x-{consent}")).exists()
        # a call that says nothing about consent starts and is spooled while the server
        # is away; the server's Started then says not recorded: spool deleted, RTP dropped
        ports = json.loads(_start(sidecar.address, "later-1", "--region", "ca").stdout)
        send_rtp(ports, 1.0, seed=4)
        assert _spool_files(spool, "later-1") != []
        server = start_server(data, port=port, args=_policy(tmp_path))
        dropped = wait_state(sidecar, "later-1", "not_recorded")
        assert "consent is unknown" in dropped.reason
        send_rtp(ports, 0.3, seed=5)  # dropped: the call's ports are closed
        assert not (spool / spool_name("", "later-1")).exists()
        stopped = json.loads(
            run_cli("call", "stop", "--sidecar", sidecar.address, "--call-id", "later-1").stdout
        )
        assert stopped["state"] == "not_recorded"
        rows = json.loads(run_cli("--server", server.address, "ls", "--decisions", "--json").stdout)
        assert [r["call_id"] for r in rows] == ["later-1"]
    finally:
        assert sidecar.stop() == 0
        if server is not None:
            server.stop()
    assert audio_records(data, "later-1") == 0

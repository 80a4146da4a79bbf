"""Real processes for the sidecar's end-to-end tests: `callvault sidecar`, `callvault call
start/stop`, ffmpeg RTP senders, and the checks of a recorded call (export, verify, info)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from tests.servers import Proc, run_cli, spawn


def start_sidecar(
    upstream: str,
    spool: Path,
    rtp: str,
    log_dir: Path,
    *,
    listen_port: int = 0,
    args: tuple[str, ...] = (),
) -> Proc:
    """`callvault sidecar` forwarding to ``upstream``; returns once its control API serves."""
    argv = [
        "sidecar",
        "--server",
        upstream,
        "--rtp",
        rtp,
        "--listen",
        f"127.0.0.1:{listen_port}",
        "--spool",
        str(spool),
        *args,
    ]
    return spawn("sidecar", argv, log_dir)


def call_start(sidecar: Proc, call_id: str, *meta: str) -> dict[str, int]:
    meta_args = [a for m in meta for a in ("--meta", m)]
    p = run_cli(
        "call", "start", "--sidecar", sidecar.address, "--call-id", call_id, *meta_args, timeout=60
    )
    ports: dict[str, int] = json.loads(p.stdout)
    return ports


def call_stop(sidecar: Proc, call_id: str) -> dict[str, int]:
    p = run_cli("call", "stop", "--sidecar", sidecar.address, "--call-id", call_id, timeout=60)
    out: dict[str, int] = json.loads(p.stdout)
    return out


def list_calls(sidecar: Proc) -> list[pb.SidecarCall]:
    with grpc.insecure_channel(sidecar.address) as ch:
        return list(pbg.SidecarStub(ch).ListCalls(pb.ListCallsRequest(), timeout=10).calls)


def wait_sealed(sidecar: Proc, call_id: str, timeout: float = 90.0) -> pb.SidecarCall:
    """Poll ListCalls until the sidecar reports the call sealed (its spool deleted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in list_calls(sidecar):
            if c.call_id == call_id and c.state == "sealed":
                return c
        time.sleep(0.1)
    raise AssertionError(
        f"{call_id} not sealed after {timeout} s; sidecar log:\n{sidecar.output()}"
    )


def ffmpeg_sender(wav: Path, port: int) -> subprocess.Popen[bytes]:
    """The issue's RTP sender: ffmpeg -re -i LEG.wav -c:a pcm_mulaw -f rtp rtp://127.0.0.1:PORT"""
    return subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-re",
            "-i",
            str(wav),
            "-c:a",
            "pcm_mulaw",
            "-f",
            "rtp",
            f"rtp://127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--data", str(data), *args, ok=False, timeout=120)


def call_info(data: Path, call_id: str) -> dict[str, Any]:
    """`callvault --data DIR info CALL --json` (the per-leg summary is its legs_detail)."""
    p = cli(data, "info", call_id, "--json")
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def rtp_range(size: int = 40) -> str:
    """A UDP port range for one test's sidecar (the sidecar skips ports in use)."""
    base = 20000 + 2 * random.randrange(5000)
    return f"127.0.0.1:{base}-{base + size - 1}"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_rtp(ports: dict[str, int], seconds: float = 1.0, *, seed: int = 0) -> int:
    """Send ``seconds`` of G.711 speech to each leg's port from this process, paced as
    a PBX sends it (one 20 ms packet per leg every 20 ms); returns the packets sent."""
    from callvault.media import sample

    legs = [
        sample.rtp_packets(
            sample.synthetic_speech(seconds, seed=seed + i),
            sample.LegPlan(ssrc=0x1000 + seed * 16 + i, jitter_ms=0),
            t0=0.0,
            seed=seed + i,
        )
        for i in range(len(ports))
    ]
    sends = sorted(
        (at, port, pkt) for port, pkts in zip(ports.values(), legs, strict=True) for at, pkt in pkts
    )
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for at, port, pkt in sends:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            s.sendto(pkt, ("127.0.0.1", port))
    return len(sends)


def call_state(sidecar: Proc, call_id: str) -> pb.SidecarCall | None:
    for c in list_calls(sidecar):
        if c.call_id == call_id:
            return c
    return None


def wait_state(sidecar: Proc, call_id: str, state: str, timeout: float = 60.0) -> pb.SidecarCall:
    """Poll ListCalls until the sidecar reports the call in ``state``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = call_state(sidecar, call_id)
        if c is not None and c.state == state:
            return c
        time.sleep(0.1)
    raise AssertionError(
        f"{call_id} not {state} after {timeout} s ({call_state(sidecar, call_id)}); "
        f"sidecar log:\n{sidecar.output()}"
    )

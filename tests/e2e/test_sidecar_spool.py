"""The sidecar's spool at rest, all real processes: `callvault sidecar`, `callvault call
start/stop`, `callvault serve`, RTP sent from a UDP socket. The spool of a live call
holds neither the customer number nor the G.711 payload in clear; a sidecar restarted on
that spool forwards every packet; a missing key file stops the sidecar with a clear error."""

from __future__ import annotations

import json
import random
import socket
import stat
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb

from callvault import _net
from callvault.sidecar.spool import KEY_FILE, Spool, load_sidecar_key, spool_name
from tests.e2e.sidecar_procs import (
    call_info,
    call_start,
    call_stop,
    free_tcp_port,
    list_calls,
    rtp_range,
    start_sidecar,
    wait_sealed,
)
from tests.servers import Proc, run_cli, start_server

pytestmark = pytest.mark.slow

NUMBER = "+4930123456789"
PACKETS = 50  # per leg, 20 ms each


def _payload(leg: int) -> bytes:
    """A known G.711 payload (160 bytes, 20 ms), the same in every packet of a leg."""
    return random.Random(leg).randbytes(160)


def _send(ports: dict[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(PACKETS):
            for leg, port in enumerate(ports.values()):
                head = struct.pack("!BBHII", 0x80, 0, 1000 + i, 8000 + 160 * i, 0x1000 + leg)
                s.sendto(head + _payload(leg), ("127.0.0.1", port))
            time.sleep(0.02)


def _wait_spooled(sidecar: Proc, call_id: str, packets: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (c,) = [c for c in list_calls(sidecar) if c.call_id == call_id]
        if c.packets >= packets:
            return
        time.sleep(0.05)
    raise AssertionError(f"{call_id}: {packets} packets not spooled")


def test_live_spool_is_encrypted_and_survives_a_restart(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port = free_tcp_port()  # the server starts later: the call waits in the spool
    rtp = rtp_range()
    sidecar = start_sidecar(f"127.0.0.1:{port}", spool, rtp, tmp_path)
    server = None
    try:
        ports = call_start(sidecar, "e2e-enc", f"customer_number={NUMBER}")
        _send(ports)
        _wait_spooled(sidecar, "e2e-enc", 2 * PACKETS)
        # the live call's spool: no customer number, no payload, owner-only
        (d,) = [p for p in spool.iterdir() if p.is_dir()]
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert stat.S_IMODE((spool / KEY_FILE).stat().st_mode) == 0o600
        raw = b"".join(p.read_bytes() for p in d.iterdir())
        assert NUMBER.encode() not in raw and NUMBER[1:].encode() not in raw
        for leg in (0, 1):
            assert _payload(leg)[:24] not in raw and _payload(leg)[100:124] not in raw
        sidecar.stop()  # SIGTERM; the spool stays
        sidecar = start_sidecar(f"127.0.0.1:{port}", spool, rtp, tmp_path)
        (recovered,) = list_calls(sidecar)
        assert recovered.state == "receiving" and recovered.packets == 2 * PACKETS
        call_stop(sidecar, "e2e-enc")
        server = start_server(tmp_path / "data", port=port)
        wait_sealed(sidecar, "e2e-enc")
    finally:
        sidecar.stop()
        if server is not None:
            server.stop()
    info = call_info(tmp_path / "data", "e2e-enc")
    assert info["customer_number"] == NUMBER
    for leg in info["legs_detail"]:
        assert leg["lost"] == 0, leg
    assert info["seconds"] >= PACKETS * 0.02, info


def test_missing_key_file_with_spooled_calls_is_an_error(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port = free_tcp_port()
    rtp = rtp_range()
    sidecar = start_sidecar(f"127.0.0.1:{port}", spool, rtp, tmp_path)
    try:
        call_start(sidecar, "e2e-nokey")
    finally:
        sidecar.stop()
    (spool / KEY_FILE).unlink()
    p = run_cli(
        "sidecar",
        "--server",
        f"127.0.0.1:{port}",
        "--rtp",
        rtp,
        "--listen",
        "127.0.0.1:0",
        "--spool",
        str(spool),
        ok=False,
        timeout=60,
    )
    assert p.returncode != 0
    assert "sidecar.key is missing but 1 spooled call" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not (spool / KEY_FILE).exists()  # never a new key


def test_a_spool_from_before_recording_ids_is_still_forwarded(tmp_path: Path) -> None:
    """A call spooled by a sidecar that sent no recording_id (its CallStart has "") is
    forwarded by today's sidecar as it was spooled, and the server seals it; a call
    started now carries a "sidecar:" recording_id."""
    root = tmp_path / "spool"
    start = pb.CallStart(call_id="old-1", legs=[pb.LegSpec(name="agent")])
    assert start.recording_id == ""
    now = _net.now_us()
    spool = Spool.create(
        root,
        spool_name("", "old-1"),
        start.SerializeToString(),
        [40000],
        now,
        key=load_sidecar_key(root),
    )
    spool.set_start_us(now)
    pkts = [
        struct.pack("!BBHII", 0x80, 0, 1000 + i, 160 * i, 0x1000) + _payload(0)
        for i in range(PACKETS)
    ]
    spool.append(
        0,
        b"".join(pkts),
        np.array([len(p) for p in pkts], np.int32),
        np.array([now + 20_000 * i for i in range(PACKETS)], np.int64),
    )
    spool.finish()
    spool.close()
    data = tmp_path / "data"
    server = start_server(data)
    sidecar = start_sidecar(server.address, root, rtp_range(), tmp_path)
    try:
        wait_sealed(sidecar, "old-1")
        ports = call_start(sidecar, "new-1")
        call_stop(sidecar, "new-1")
        wait_sealed(sidecar, "new-1")
        with Client(server.address) as c:
            old = json.loads(c.get_call("old-1", include_summary=True).summary_json)
            new = json.loads(c.get_call("new-1", include_summary=True).summary_json)
    finally:
        assert sidecar.stop() == 0
        server.stop()
    assert set(ports) == {"agent", "customer"}
    assert "recording_id" not in old or old["recording_id"] == ""
    assert new["recording_id"].startswith("sidecar:") and len(new["recording_id"]) == 40
    info = call_info(data, "old-1")
    assert info["state"] == "sealed" and abs(info["seconds"] - PACKETS / 50) <= 0.04, info

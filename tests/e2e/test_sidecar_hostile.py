"""The sidecar against a hostile network, all real processes (`callvault serve`,
`callvault sidecar`, `callvault call start/stop`) and real UDP senders on loopback:

- issue 9: one empty UDP datagram among a call's RTP made the server refuse the
  batch forever, so the call never sealed; the sidecar now refuses it (and every
  other datagram the server would refuse) and the call seals with all its audio;
- issue 9: a second sender (other port, other SSRC) to a leg's port put a 1 kHz tone
  into the victim's recording; the leg is latched to its first source now;
- an SBC failover: the leg's sender changes address after a silence, and the
  recording holds the audio of both.

The senders are paced Python sockets (the datagrams a PBX sends, G.711 at 20 ms),
because ffmpeg cannot be made to send an empty datagram or a second SSRC.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callvault.media import sample
from callvault.sidecar.latch import RELATCH_SILENCE_US
from tests.cli.test_cli_transcode import clicks
from tests.e2e.sidecar_procs import (
    call_info,
    call_start,
    call_stop,
    cli,
    rtp_range,
    start_sidecar,
    wait_sealed,
)
from tests.e2e.test_sidecar import _bursts, _exported, _offset
from tests.servers import Proc, run_cli, start_server
from tests.sidecar.rxkit import rtp, wait_for

pytestmark = pytest.mark.slow


def _packets(pcm: np.ndarray, ssrc: int, seed: int) -> list[tuple[float, bytes]]:
    """(send offset in seconds, packet): G.711 mu-law, 20 ms packets, no jitter."""
    pkts = sample.rtp_packets(pcm, sample.LegPlan(ssrc=ssrc, jitter_ms=0), t0=0.0, seed=seed)
    return [(at - pkts[0][0], p) for at, p in pkts]


def _send_paced(
    sock: socket.socket,
    port: int,
    packets: list[tuple[float, bytes]],
    t0: float,
    extra: dict[int, list[bytes]] | None = None,
) -> None:
    """Send each packet at ``t0`` + its offset (monotonic clock); ``extra[i]`` datagrams
    go right after packet i."""
    for i, (at, pkt) in enumerate(packets):
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendto(pkt, ("127.0.0.1", port))
        for x in (extra or {}).get(i, []):
            sock.sendto(x, ("127.0.0.1", port))


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def _run_call(
    tmp: Path,
    call_id: str,
    plan: dict[
        str, list[tuple[socket.socket, list[tuple[float, bytes]], float, dict[int, list[bytes]]]]
    ],
) -> tuple[Path, Proc, dict[str, Any]]:
    """Start server and sidecar, start the call, run the senders (per leg name: socket,
    packets, start offset in seconds, extra datagrams), stop the call and wait until it
    is sealed; returns (data dir, stopped sidecar, the call's row of `call ls --json`
    once sealed)."""
    data = tmp / "data"
    server = start_server(data)
    sidecar = start_sidecar(server.address, tmp / "spool", rtp_range(), tmp)
    try:
        ports = call_start(sidecar, call_id)
        t0 = time.monotonic() + 0.2
        threads = [
            threading.Thread(target=_send_paced, args=(sock, ports[name], pkts, t0 + start, extra))
            for name, senders in plan.items()
            for sock, pkts, start, extra in senders
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.3)
        call_stop(sidecar, call_id)
        wait_sealed(sidecar, call_id, timeout=60)
        ls = run_cli("call", "ls", "--sidecar", sidecar.address, "--json")
        (row,) = (c for c in json.loads(ls.stdout)["calls"] if c["call_id"] == call_id)
    finally:
        assert sidecar.stop() == 0
        server.stop()
    return data, sidecar, row


SECONDS = 4.0
AGENT = [0.5, 1.5, 2.5, 3.5]
CUSTOMER = [1.0, 2.0, 3.0]


def test_an_empty_datagram_is_refused_and_the_call_seals_with_all_its_audio(
    tmp_path: Path,
) -> None:
    agent = _packets(clicks(SECONDS, AGENT), 0x1001, 1)
    customer = _packets(clicks(SECONDS, CUSTOMER, hz=700.0), 0x2002, 2)
    a, c = _udp(), _udp()
    bad = {
        40: [b""],  # the datagram
        80: [rtp(1, 0x1001, first=0x8F, payload=b"\xff" * 8), rtp(2, 0x1001, first=0x40)],
    }
    data, sidecar, row = _run_call(
        tmp_path,
        "hostile-empty",
        {"agent": [(a, agent, 0.0, bad)], "customer": [(c, customer, 0.0, {})]},
    )
    a.close()
    c.close()
    assert "refusing packets that are not valid RTP" in sidecar.output()
    # `call ls --json` counts the three refused datagrams, and every packet kept
    assert (row["state"], row["invalid_packets"], row["foreign_packets"]) == ("sealed", 3, 0)
    assert row["packets"] == len(agent) + len(customer) + 3, row
    assert {n: leg["recorded_packets"] for n, leg in row["legs"].items()} == {
        "agent": len(agent),
        "customer": len(customer),
    }, row
    pcm, duration, info = _exported(tmp_path, data, "hostile-empty")
    oa = _offset(_bursts(pcm[:, 0]), AGENT)
    oc = _offset(_bursts(pcm[:, 1]), CUSTOMER)
    assert abs(duration - (max(oa, oc) + SECONDS)) <= 0.040, (duration, oa, oc)
    for leg in info["legs_detail"]:
        assert leg["lost"] == 0 and leg["gaps"] == [], leg
        assert not any(v for k, v in leg["rtp"].items() if k.startswith("malformed")), leg


def _tone_share(x: np.ndarray, hz: float, rate: int = 8000) -> float:
    """The share of the signal's energy within 50 Hz of ``hz``."""
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spec[np.abs(freqs - hz) <= 50].sum() / max(spec.sum(), 1e-9))


def test_a_second_sender_on_a_leg_port_is_not_recorded(tmp_path: Path) -> None:
    # The victim's agent leg: 400 Hz bursts in silence. The attacker: a continuous
    # 1 kHz tone from another port and SSRC, to the same leg port, the whole call.
    victim = _packets(clicks(SECONDS, AGENT, hz=400.0), 0x1001, 1)
    t = np.arange(int(SECONDS * 8000)) / 8000
    tone = (12000 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16)
    attacker = _packets(tone, 0x6666, 3)
    customer = _packets(clicks(SECONDS, CUSTOMER, hz=700.0), 0x2002, 2)
    v, x, c = _udp(), _udp(), _udp()
    data, sidecar, row = _run_call(
        tmp_path,
        "hostile-tone",
        {
            "agent": [(v, victim, 0.0, {}), (x, attacker, 0.005, {})],
            "customer": [(c, customer, 0.0, {})],
        },
    )
    for s in (v, x, c):
        s.close()
    pcm, _, info = _exported(tmp_path, data, "hostile-tone")
    assert _tone_share(pcm[:, 0], 1000.0) < 0.01
    assert _tone_share(pcm[:, 0], 400.0) > 0.5
    _offset(_bursts(pcm[:, 0]), AGENT)  # every burst where it was sent, nothing else loud
    assert "dropping packets from sources other than 127.0.0.1:" in sidecar.output()
    # `call ls --json`: every one of the attacker's packets counted foreign, none invalid
    assert (row["invalid_packets"], row["foreign_packets"]) == (0, len(attacker)), row
    assert row["legs"]["agent"]["recorded_packets"] == len(victim), row
    agent = next(leg for leg in info["legs_detail"] if leg["leg"] == "agent")
    assert agent["rtp"].get("ssrc_changes", 0) == 0, agent


def test_failover_to_a_new_sender_after_silence_is_recorded(tmp_path: Path) -> None:
    # The agent leg's first sender stops after 2 s; after a silence longer than the
    # re-latch silence, a second one (other port, other SSRC: an SBC failover) sends.
    gap = RELATCH_SILENCE_US / 1e6 + 0.5
    first = _packets(clicks(2.0, [0.5, 1.5], hz=400.0), 0x1001, 1)
    second = _packets(clicks(2.0, [0.5, 1.5], hz=400.0), 0x7007, 4)
    customer = _packets(clicks(4.0 + gap, [1.0, 3.0]), 0x2002, 2)
    a1, a2, c = _udp(), _udp(), _udp()
    data, sidecar, row = _run_call(
        tmp_path,
        "hostile-failover",
        {
            "agent": [(a1, first, 0.0, {}), (a2, second, 2.0 + gap, {})],
            "customer": [(c, customer, 0.0, {})],
        },
    )
    for s in (a1, a2, c):
        s.close()
    assert "source changed from 127.0.0.1:" in sidecar.output()
    # a legitimate failover drops nothing: both senders' packets are kept
    assert (row["invalid_packets"], row["foreign_packets"]) == (0, 0), row
    assert row["legs"]["agent"]["recorded_packets"] == len(first) + len(second), row
    pcm, _, info = _exported(tmp_path, data, "hostile-failover")
    sent = [0.5, 1.5, 2.0 + gap + 0.5, 2.0 + gap + 1.5]
    _offset(_bursts(pcm[:, 0]), sent)
    agent = next(leg for leg in info["legs_detail"] if leg["leg"] == "agent")
    assert agent["rtp"].get("ssrc_changes") == 1, agent
    assert call_info(data, "hostile-failover")["call_id"] == "hostile-failover"
    assert cli(data, "verify", "hostile-failover").returncode == 0


def test_a_sealed_call_id_on_a_fresh_sidecar_fails_alone(tmp_path: Path) -> None:
    """Issue 9's first report: restart a sidecar (fresh spool), `call start` an id the
    server has already sealed, send RTP: the receive thread died of EBADF and every
    later `call start` answered "the sidecar is shutting down". Now that call fails
    alone (or its start is refused) and the next call is recorded."""
    data = tmp_path / "data"
    server = start_server(data)
    pkts = _packets(clicks(2.0, [0.5, 1.5]), 0x1001, 1)
    s = _udp()
    try:
        first = start_sidecar(server.address, tmp_path / "spool1", rtp_range(), tmp_path)
        try:
            ports = call_start(first, "reused")
            _send_paced(s, ports["agent"], pkts, time.monotonic())
            call_stop(first, "reused")
            wait_sealed(first, "reused", timeout=60)
        finally:
            assert first.stop() == 0
        second = start_sidecar(server.address, tmp_path / "spool2", rtp_range(), tmp_path)
        try:
            p = run_cli(
                "call", "start", "--sidecar", second.address, "--call-id", "reused", ok=False
            )
            if p.returncode == 0:  # accepted: it meets the server's seal while receiving
                _send_paced(s, json.loads(p.stdout)["agent"], pkts, time.monotonic())
                wait_for(
                    lambda: "reused: receiving failed" in second.output(),
                    "the reused call's failure",
                )
            ports = call_start(second, "after")
            _send_paced(s, ports["agent"], pkts, time.monotonic())
            call_stop(second, "after")
            wait_sealed(second, "after", timeout=60)
        finally:
            assert second.stop() == 0
    finally:
        s.close()
        server.stop()
    after = call_info(data, "after")
    assert after["state"] == "sealed" and after["seconds"] >= 2.0, after

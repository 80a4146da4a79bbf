"""PCI end to end, all real processes: `callvault serve`, `callvault sidecar`,
`callvault call start|pause|resume|stop`, ffmpeg (or this process, for RFC 4733
events) sending the RTP.

* Pause / resume through ffmpeg RTP: the paused span is silence on both legs, sealed
  and shown as ``paused`` exactly where the pause and the resume happened (to the
  frame), not as loss; the call is as long as the audio sent.
* A call with in-band and RFC 4733 digits recorded live: `scan` (through the server)
  finds no tone; info shows that DTMF occurred, never the digits; with the policy
  ``[dtmf] keep_digits = true`` the digits are kept and marked.
"""

from __future__ import annotations

import json
import socket
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from callvault_client import Client

from callvault.media import sample, wav
from callvault.rtpdefs import PT_PCMA, PT_PCMU
from callvault.timeline import FRAME_US
from tests import pcicall
from tests.e2e.sidecar_procs import (
    call_start,
    cli,
    ffmpeg_sender,
    rtp_range,
    start_sidecar,
    wait_sealed,
)
from tests.servers import run_cli, start_server

pytestmark = pytest.mark.slow

SECONDS = 6.0


def silent(x: np.ndarray) -> bool:
    """Decoded Opus of digital silence (as tests/server/test_pci.py.silent)."""
    y = x.astype(np.float64)
    return bool(np.abs(y).max() <= 64 and np.sqrt(np.mean(y**2)) <= 4)


def loud(x: np.ndarray) -> bool:
    return bool(np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 500)


def sidecar_cli(sidecar: Any, verb: str, call_id: str) -> dict[str, Any]:
    p = run_cli("call", verb, "--sidecar", sidecar.address, "--call-id", call_id, timeout=60)
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def test_pause_resume_through_ffmpeg_rtp(tmp_path: Path) -> None:
    data = tmp_path / "vault"
    server = start_server(data)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        ports = call_start(sidecar, "p1")
        t = np.arange(int(SECONDS * 8000)) / 8000
        rng = np.random.default_rng(3)
        senders = []
        for i, name in enumerate(("agent", "customer")):
            # sound in every frame: a tone and noise, about -14 dBFS
            x = 4000 * np.sin(2 * np.pi * (440 + 110 * i) * t) + rng.normal(0, 1000, len(t))
            wav.write(tmp_path / f"{name}.wav", [x.astype(np.int16)])
            senders.append(ffmpeg_sender(tmp_path / f"{name}.wav", ports[name]))
        time.sleep(2.0)
        paused = sidecar_cli(sidecar, "pause", "p1")
        time.sleep(1.5)
        resumed = sidecar_cli(sidecar, "resume", "p1")
        assert resumed["seq"] > paused["seq"] and resumed["dropped_packets"] > 0
        for s in senders:
            assert s.wait(timeout=120) == 0
        time.sleep(0.5)
        p = run_cli("call", "stop", "--sidecar", sidecar.address, "--call-id", "p1", timeout=60)
        assert json.loads(p.stdout)["state"] in ("forwarding", "sealed")
        wait_sealed(sidecar, "p1")
        with Client(server.address) as c:
            info = c.get_call("p1", include_summary=True)
    finally:
        sidecar.stop()
        server.stop()
    # where the pause and the resume happened, to the frame (ingest.LiveCall._frame_at)
    a = (paused["paused"] - info.start_us) // FRAME_US
    b = -(-(resumed["resumed"] - info.start_us) // FRAME_US)
    assert [(s.start_frame, s.frames) for s in info.paused] == [(a, b - a)]
    # at least 2 s in, at least 1.5 s long (the CLI's own start-up adds to both), and
    # over before the senders' end: audio on both sides of it
    assert a >= 100 and b - a >= 75 and b + 30 <= info.frames, (a, b, info.frames)
    summary = json.loads(info.summary_json)
    assert summary["paused"] == [{"start_frame": a, "frames": b - a}]
    for leg in info.leg_summaries:
        # no loss, no gap: the pause is neither (its edges' discarded packets included)
        assert leg.lost == 0 and list(leg.gaps) == [], leg
    # the call is as long as the audio sent (ffmpeg: both legs start together)
    assert SECONDS - 0.04 <= info.frames * 0.02 <= SECONDS + 0.3, info.frames
    out = tmp_path / "p1.wav"
    r = cli(data, "export", "p1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    with wave.open(str(out)) as w:
        assert w.getnchannels() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    for ch in range(2):
        x = pcm[:, ch]
        # the frames were zeros (tests/server/test_pci.py); decoded, the codec's fade of
        # the audio before takes up to 2 frames, its onset of the audio after 10 ms
        assert silent(x[(a + 2) * 160 : b * 160 - 80]), ch
        assert loud(x[(a - 40) * 160 : (a - 20) * 160]), ch  # audio before the pause
        assert loud(x[(b + 20) * 160 : (b + 30) * 160]), ch  # and after the resume
    v = cli(data, "verify", "p1")
    assert v.returncode == 0 and "OK" in v.stdout


def _send_pcicall(ports: dict[str, int]) -> None:
    """The PCI call's two legs from this process, paced as a PBX sends them: the agent's
    in-band digits in its audio, the customer's RFC 4733 events instead of its audio."""
    agent, customer = pcicall.legs(pcicall.SECONDS)
    legs = [
        sample.rtp_packets(
            agent, sample.LegPlan(law=PT_PCMU, ssrc=0x11, jitter_ms=0), t0=0.0, seed=1
        ),
        sample.rtp_packets(
            customer,
            sample.LegPlan(law=PT_PCMA, ssrc=0x22, jitter_ms=0, dtmf=pcicall.RFC4733),
            t0=0.0,
            seed=2,
        ),
    ]
    sends = sorted(
        (at, ports[name], pkt)
        for name, pkts in zip(("agent", "customer"), legs, strict=True)
        for at, pkt in pkts
    )
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for at, port, pkt in sends:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            s.sendto(pkt, ("127.0.0.1", port))


@pytest.mark.parametrize("keep_digits", [False, True])
def test_live_dtmf_masked_and_digits_withheld(tmp_path: Path, keep_digits: bool) -> None:
    data = tmp_path / "vault"
    args: tuple[str, ...] = ()
    if keep_digits:
        conf = tmp_path / "serve.toml"
        conf.write_text("[dtmf]\nkeep_digits = true\n")
        args = ("--config", str(conf))
    server = start_server(data, args=args)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        ports = call_start(sidecar, "d1")
        _send_pcicall(ports)
        time.sleep(0.5)
        run_cli("call", "stop", "--sidecar", sidecar.address, "--call-id", "d1", timeout=60)
        wait_sealed(sidecar, "d1")
        # the assessor's check, through the server (Play, decoded here)
        p = run_cli("--server", server.address, "scan", "d1", "--json", ok=False)
        assert p.returncode == 0, p.stdout + p.stderr
        doc = json.loads(p.stdout)
        assert doc["clean"] and doc["hits"] == [] and doc["seconds"] >= pcicall.SECONDS - 0.1
        info = json.loads(run_cli("--server", server.address, "info", "d1", "--json").stdout)
        text = run_cli("--server", server.address, "info", "d1").stdout
    finally:
        sidecar.stop()
        server.stop()
    assert info["dtmf_events"] == len(pcicall.INBAND) + len(pcicall.RFC4733)
    assert info["digits_kept"] is keep_digits
    agent, customer = info["legs_detail"]
    assert [e["masked"] for e in agent["dtmf"]] == [True] * len(pcicall.INBAND)
    assert len(customer["telephone_events"]) == len(pcicall.RFC4733)
    if keep_digits:
        assert [e["digit"] for e in agent["dtmf"]] == [d for _, d, _, _ in pcicall.INBAND]
        assert [e["digit"] for e in customer["telephone_events"]] == [d for _, d in pcicall.RFC4733]
        assert agent["digits_kept"] and customer["digits_kept"]
    else:
        for e in agent["dtmf"] + customer["telephone_events"]:
            assert "digit" not in e and "start_ms" in e and "duration_ms" in e
        assert "digits not kept" in text
        for _, d, _, _ in pcicall.INBAND:
            assert f"{d} at " not in text
    # the policy's use is audited: the ingest stream it applied to, and each
    # disclosure of digits (info's GetCall with the summary)
    trail = [
        json.loads(x)
        for x in run_cli("--data", str(data), "audit", "--json").stdout.split("\n")
        if x.strip()
    ]
    details = [(d["method"].rsplit("/", 1)[-1], d.get("detail", "")) for d in trail]
    # the sidecar's stream names the call it recorded
    assert any(["default", "d1"] in d["calls"] for d in trail if d["method"].endswith("Calls"))
    kept = [m for m, t in details if "kept by the policy [dtmf] keep_digits" in t]
    shown = [m for m, t in details if "DTMF digits disclosed" in t]
    if keep_digits:
        assert "RecordCalls" in kept and set(kept) <= {"RecordCalls", "Record"}
        assert shown and set(shown) == {"GetCall"}
    else:
        assert kept == [] and shown == []

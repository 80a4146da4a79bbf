"""A G.722 leg is loud, not silent (issue 9, section 2).

Real processes: `callvault serve`, `callvault sidecar`, `callvault call start/stop`, and
ffmpeg sending one leg as G.722 (payload type 9, ``-c:a g722 -f rtp``) and the other as
PCMU. The sealed call reports the G.722 leg's frames as ``unsupported_codec`` gaps with
payload type 9 (not as clean silence), the server logs one WARNING for the call and
Admin.Stats counts it; `callvault import` of a capture whose leg is entirely G.722 exits
non-zero with the reason, locally and through ``--server``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.media import wav
from callvault.media.rtppack import PT_PCMU, build_packet
from callvault.media.sample import write_udp_capture
from tests.cli.test_cli_transcode import clicks
from tests.e2e.sidecar_procs import (
    call_info,
    call_start,
    cli,
    ffmpeg_sender,
    rtp_range,
    start_sidecar,
    wait_sealed,
)
from tests.servers import run_cli, start_server

pytestmark = pytest.mark.slow

SECONDS = 4.0


def g722_sender(wav_path: Path, port: int) -> subprocess.Popen[bytes]:
    """ffmpeg -re -i LEG.wav -c:a g722 -f rtp rtp://127.0.0.1:PORT (RTP payload type 9)."""
    return subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-re",
            "-i",
            str(wav_path),
            "-c:a",
            "g722",
            "-f",
            "rtp",
            f"rtp://127.0.0.1:{port}",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stats(address: str) -> pb.StatsReply:
    with grpc.insecure_channel(address) as ch:
        reply: pb.StatsReply = pbg.AdminStub(ch).Stats(pb.StatsRequest(), timeout=10)
        return reply


def test_g722_leg_through_the_sidecar_is_sealed_as_unsupported_codec(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        ports = call_start(sidecar, "g722-1")
        senders = []
        for name, sender in (("agent", g722_sender), ("customer", ffmpeg_sender)):
            path = tmp_path / f"{name}.wav"
            wav.write(path, [clicks(SECONDS, [1.0, 2.5]).astype(np.int16)])
            senders.append(sender(path, ports[name]))
        try:
            for s in senders:
                assert s.wait(timeout=120) == 0
        finally:
            for s in senders:
                s.kill()
        time.sleep(0.3)
        # `call stop` is loud: the agent leg had packets, none in a recorded codec.
        stop = run_cli(
            "call", "stop", "--sidecar", sidecar.address, "--call-id", "g722-1", ok=False
        )
        problem = (
            "leg agent: every packet was in a codec callvault does not record "
            "(payload type 9: G.722); nothing of this leg is recorded"
        )
        assert stop.returncode == 1, stop.stdout + stop.stderr
        assert stop.stderr.startswith(f"callvault: error: {problem}"), stop.stderr
        out = json.loads(stop.stdout)
        assert out["codec_problem"] == problem and out["state"] == "forwarding", out
        agent_rx, customer_rx = out["legs"]["agent"], out["legs"]["customer"]
        assert agent_rx["recorded_packets"] == 0 and list(agent_rx["unsupported_packets"]) == ["9"]
        assert agent_rx["unsupported_packets"]["9"] > 0, agent_rx
        assert customer_rx["recorded_packets"] > 0 and customer_rx["unsupported_packets"] == {}
        sealed = wait_sealed(sidecar, "g722-1")  # the call is sealed all the same
        assert sealed.codec_problem == problem
        ls = json.loads(run_cli("call", "ls", "--sidecar", sidecar.address, "--json").stdout)
        (row,) = ls["calls"]
        assert row["state"] == "sealed" and row["codec_problem"] == problem
        assert row["legs"] == out["legs"]
        table = run_cli("call", "ls", "--sidecar", sidecar.address).stdout
        assert f"agent:PT9x{agent_rx['unsupported_packets']['9']}" in table, table
        st = stats(server.address)
        assert st.unsupported_codec_calls == 1
        assert st.unsupported_codec_packets > 0
        stats_frames = st.unsupported_codec_frames
    finally:
        assert sidecar.stop() == 0
        server.stop()
    side_log = sidecar.output()
    side_warnings = [  # once per call at WARNING (and in the INFO line of the stop)
        line
        for line in side_log.splitlines()
        if "a codec callvault does not record" in line and " WARNING " in line
    ]
    assert len(side_warnings) == 1, side_log
    assert "g722-1 leg agent" in side_warnings[0] and "9: G.722" in side_warnings[0]
    log = server.output()
    warnings = [line for line in log.splitlines() if "unsupported codec" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], log
    assert "g722-1" in warnings[0] and "payload type 9" in warnings[0]
    legs = {leg["leg"]: leg for leg in call_info(data, "g722-1")["legs_detail"]}
    agent, customer = legs["agent"], legs["customer"]
    unsup = agent["unsupported_codec"]
    assert unsup["payload_types"] == [9] and unsup["packets"] > 0
    # Frames depend on ffmpeg's real-time pacing (a loaded machine delays packets
    # past the jitter window: a few frames of loss): the counts must agree with each
    # other exactly, the span only roughly.
    assert stats_frames == unsup["frames"]
    assert unsup["frames"] >= SECONDS * 50 * 0.8, unsup
    unsupported_gaps = [g for g in agent["gaps"] if g["reason"] == "unsupported_codec"]
    assert unsupported_gaps and all(g["payload_type"] == 9 for g in unsupported_gaps)
    assert all(g["reason"] in ("unsupported_codec", "lost") for g in agent["gaps"])
    assert sum(g["frames"] for g in unsupported_gaps) == unsup["frames"]
    assert agent["lost"] <= 0.05 * SECONDS * 50 and agent["level"]["peak"] == 0, agent
    # the PCMU leg is recorded as before
    assert customer["unsupported_codec"] == {"frames": 0, "packets": 0, "payload_types": []}
    assert customer["gaps"] == [] and customer["level"]["peak"] > 0


def g722_capture(path: Path) -> None:
    """A capture of one call: the agent leg entirely G.722, the customer leg PCMU."""
    grams = []
    for i in range(100):
        t = 1_700_000_000 + i / 50
        g722 = build_packet(9, 100 + i, 160 * i, 0xA, bytes(160))
        pcmu = build_packet(PT_PCMU, 500 + i, 160 * i, 0xB, bytes(range(1, 161)))
        grams.append((t, ("10.0.0.1", 4000), ("10.0.0.2", 5000), g722))
        grams.append((t + 0.001, ("10.0.0.2", 6000), ("10.0.0.1", 7000), pcmu))
    write_udp_capture(path, grams)


def test_import_of_an_entirely_unsupported_leg_is_refused(tmp_path: Path) -> None:
    cap = tmp_path / "g722.pcap"
    g722_capture(cap)
    local = cli(tmp_path / "data", "import", str(cap), "--call-id", "imp-g722")
    assert local.returncode != 0
    assert "unsupported codec" in local.stderr and "G722 (PT 9)" in local.stderr
    assert "PCMU" in local.stderr  # and what is recorded
    server = start_server(tmp_path / "served")
    try:
        remote = run_cli(
            "--server", server.address, "import", str(cap), "--call-id", "imp-g722", ok=False
        )
    finally:
        server.stop()
    assert remote.returncode != 0
    assert "unsupported codec" in remote.stderr and "G722 (PT 9)" in remote.stderr

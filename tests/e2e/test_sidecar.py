"""End to end through the sidecar, all real processes: `callvault serve`, `callvault sidecar`,
`callvault call start/stop`, and ffmpeg sending G.711 RTP for the legs exactly as the issue
says (``ffmpeg -re -i LEG.wav -c:a pcm_mulaw -f rtp rtp://127.0.0.1:PORT``).

Each leg is silence with 60 ms tone bursts at known times, so positions in the exported
recording can be measured (``_bursts``). A leg's audio starts
at an offset ``o`` in the recording (when its ffmpeg started relative to the call's first
sample); a burst sent at ``t`` must be found at ``o + t``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.media import wav
from tests.cli.test_cli_transcode import clicks, decode_ffmpeg, ffprobe
from tests.e2e.sidecar_procs import (
    call_info,
    call_start,
    call_stop,
    cli,
    ffmpeg_sender,
    free_tcp_port,
    list_calls,
    rtp_range,
    start_sidecar,
    wait_sealed,
)
from tests.servers import CLI, start_server

pytestmark = pytest.mark.slow


def _exported(tmp: Path, data: Path, call_id: str) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Export the sealed call (server stopped), check it verifies; (pcm, seconds, info)."""
    out = tmp / f"{call_id}.ogg"
    p = cli(data, "export", call_id, "-o", str(out))
    assert p.returncode == 0, p.stderr
    v = cli(data, "verify", call_id)
    assert v.returncode == 0 and "OK" in v.stdout, v.stdout + v.stderr
    probe = ffprobe(out)
    assert probe["streams"][0]["channels"] == 2
    return decode_ffmpeg(out), float(probe["format"]["duration"]), call_info(data, call_id)


def _offset(found: list[float], sent: list[float]) -> float:
    """The leg's offset in the recording, checking every burst sits at offset + its time
    within 20 ms (so the leg is neither stretched nor shifted partway)."""
    assert len(found) == len(sent), (found, sent)
    o = found[0] - sent[0]
    for f, s in zip(found, sent, strict=True):
        assert abs(f - (o + s)) <= 0.020, (found, sent)
    return o


def _bursts(x: np.ndarray, thresh: float = 2000.0, *, quiet_elsewhere: bool = True) -> list[float]:
    """Seconds at which a sent 60 ms burst starts: 5 ms level above ``thresh`` after a quiet
    spell and staying above it for at least 40 of the next 50 ms. With ``quiet_elsewhere``,
    nothing else in the leg is that loud either: no echo, repeat or stray frame of a burst
    anywhere (a burst's decay may last 40 ms past its 60 ms)."""
    x = x[: len(x) - len(x) % 40]
    loud = np.abs(x.astype(np.float64)).reshape(-1, 40).max(axis=1) > thresh
    found = [
        i
        for i in range(1, len(loud))
        if loud[i] and not loud[i - 1] and loud[i : i + 10].sum() >= 8
    ]
    if quiet_elsewhere:
        allowed = np.zeros(len(loud), dtype=bool)
        for i in found:
            allowed[max(i - 2, 0) : i + 20] = True
        stray = np.flatnonzero(loud & ~allowed)
        assert not len(stray), (
            f"loud audio outside the sent bursts at {stray * 40 / 8000} s "
            f"(bursts at {[i * 40 / 8000 for i in found]} s)"
        )
    return [float(i * 40 / 8000) for i in found]


def _rtp_stats(leg: dict[str, Any]) -> dict[str, Any]:
    return {
        "leg": leg["leg"],
        "lost": leg["lost"],
        "gaps": leg["gaps"],
        **{k: v for k, v in leg["rtp"].items() if v},
    }


def _send(
    tmp: Path, ports: dict[str, int], legs: dict[str, np.ndarray]
) -> list[subprocess.Popen[bytes]]:
    senders = []
    for name, pcm in legs.items():
        wav.write(tmp / f"{name}.wav", [pcm.astype(np.int16)])
        senders.append(ffmpeg_sender(tmp / f"{name}.wav", ports[name]))
    return senders


def _wait(senders: list[subprocess.Popen[bytes]]) -> None:
    try:
        for s in senders:
            assert s.wait(timeout=120) == 0
    finally:
        for s in senders:
            s.kill()


AGENT = [1.0, 2.5, 4.0]
CUSTOMER = [1.5, 3.0, 5.0]
SECONDS = 6.0


def test_two_ffmpeg_legs_recorded_through_the_sidecar(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        ports = call_start(
            sidecar, "e2e-1", "agent=alice", "direction=inbound", "tags=a,b", "queue=7"
        )
        assert set(ports) == {"agent", "customer"} and all(p % 2 == 0 for p in ports.values())
        _wait(
            _send(
                tmp_path,
                ports,
                {"agent": clicks(SECONDS, AGENT), "customer": clicks(SECONDS, CUSTOMER, hz=700.0)},
            )
        )
        time.sleep(0.3)
        stopped = call_stop(sidecar, "e2e-1")
        assert stopped["packets"] > 0 and stopped["batches"] > 0
        sealed = wait_sealed(sidecar, "e2e-1")
        assert sealed.batches == stopped["batches"]
        assert not (tmp_path / "spool" / "default+e2e-1").exists()  # deleted once sealed
    finally:
        assert sidecar.stop() == 0
        server.stop()
    pcm, duration, info = _exported(tmp_path, data, "e2e-1")
    oa = _offset(_bursts(pcm[:, 0]), AGENT)
    oc = _offset(_bursts(pcm[:, 1]), CUSTOMER)
    # frame 0 is the first sample of the earlier leg; both senders started together
    assert abs(min(oa, oc)) <= 0.020, (oa, oc)
    assert abs(oa - oc) < 1.0, (oa, oc)
    # the recording lasts from there to the end of the later leg
    assert abs(duration - (max(oa, oc) + SECONDS)) <= 0.040, (duration, oa, oc)
    assert info["agent"] == "alice" and info["direction"] == "inbound"
    assert info["tags"] == ["a", "b"]
    for leg in info["legs_detail"]:
        assert leg["lost"] == 0 and leg["gaps"] == [], _rtp_stats(leg)


def test_legs_of_one_sender_clock_are_aligned(tmp_path: Path) -> None:
    """Both legs from ONE ffmpeg process (two RTP outputs of one -re input): the legs'
    audio is simultaneous by construction, so a burst 0.5 s after the other leg's must be
    0.5 s after it in the recording, within 20 ms."""
    data = tmp_path / "data"
    server = start_server(data)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        ports = call_start(sidecar, "e2e-align")
        stereo = np.stack([clicks(SECONDS, AGENT), clicks(SECONDS, CUSTOMER, hz=700.0)], axis=1)
        import wave

        with wave.open(str(tmp_path / "both.wav"), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(stereo.astype("<i2").tobytes())
        sender = subprocess.Popen(
            [
                "ffmpeg",
                "-v",
                "error",
                "-re",
                "-i",
                str(tmp_path / "both.wav"),
                "-filter_complex",
                "[0:a]channelsplit=channel_layout=stereo[a][c]",
                "-map",
                "[a]",
                "-c:a",
                "pcm_mulaw",
                "-f",
                "rtp",
                f"rtp://127.0.0.1:{ports['agent']}",
                "-map",
                "[c]",
                "-c:a",
                "pcm_mulaw",
                "-f",
                "rtp",
                f"rtp://127.0.0.1:{ports['customer']}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait([sender])
        time.sleep(0.3)
        call_stop(sidecar, "e2e-align")
        wait_sealed(sidecar, "e2e-align")
    finally:
        sidecar.stop()
        server.stop()
    pcm, duration, _ = _exported(tmp_path, data, "e2e-align")
    oa = _offset(_bursts(pcm[:, 0]), AGENT)
    oc = _offset(_bursts(pcm[:, 1]), CUSTOMER)
    assert abs(oa - oc) <= 0.020, (oa, oc)
    assert abs(min(oa, oc)) <= 0.020, (oa, oc)
    assert abs(duration - (max(oa, oc) + SECONDS)) <= 0.040, (duration, oa, oc)


KILL_SECONDS = 10.0
KILL_AGENT = [1.0, 2.0, 5.0, 8.0, 9.0]
KILL_CUSTOMER = [1.5, 4.5, 8.5]


def test_server_sigkilled_mid_call_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        ports = call_start(sidecar, "e2e-srvkill")
        senders = _send(
            tmp_path,
            ports,
            {
                "agent": clicks(KILL_SECONDS, KILL_AGENT),
                "customer": clicks(KILL_SECONDS, KILL_CUSTOMER, hz=700.0),
            },
        )
        time.sleep(3.0)
        server.kill()  # SIGKILL while ffmpeg sends and the sidecar receives
        assert [c.connected for c in list_calls(sidecar)] in ([False], [True])
        time.sleep(2.0)
        server = start_server(data, port=server.port)
        _wait(senders)
        time.sleep(0.3)
        stopped = call_stop(sidecar, "e2e-srvkill")
        sealed = wait_sealed(sidecar, "e2e-srvkill")
        assert sealed.batches == stopped["batches"]
    finally:
        sidecar.stop()
        server.stop()
    assert "stream lost" in sidecar.output()  # it did see the server go
    pcm, duration, info = _exported(tmp_path, data, "e2e-srvkill")
    oa = _offset(_bursts(pcm[:, 0]), KILL_AGENT)
    oc = _offset(_bursts(pcm[:, 1]), KILL_CUSTOMER)
    assert abs(min(oa, oc)) <= 0.020
    assert abs(duration - (max(oa, oc) + KILL_SECONDS)) <= 0.040, (duration, oa, oc)
    for leg in info["legs_detail"]:
        assert leg["lost"] == 0 and leg["gaps"] == [], _rtp_stats(leg)


def test_sidecar_sigkilled_mid_call_keeps_its_spool(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    rtp = rtp_range()
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp, tmp_path)
    try:
        ports = call_start(sidecar, "e2e-sckill")
        t0 = time.time()
        senders = _send(
            tmp_path,
            ports,
            {
                "agent": clicks(KILL_SECONDS, KILL_AGENT),
                "customer": clicks(KILL_SECONDS, KILL_CUSTOMER, hz=700.0),
            },
        )
        time.sleep(3.0)
        killed_at = time.time()
        sidecar.kill()
        time.sleep(1.0)
        sidecar = start_sidecar(server.address, tmp_path / "spool", rtp, tmp_path)
        back_at = time.time()  # its ports are bound again before its control API serves
        (recovered,) = list_calls(sidecar)
        assert recovered.state == "receiving" and dict(recovered.ports) == ports
        _wait(senders)
        time.sleep(0.3)
        call_stop(sidecar, "e2e-sckill")
        wait_sealed(sidecar, "e2e-sckill")
        # The restarted sidecar resumed the call with the recording_id it drew at the
        # start and spooled (another one would be refused ALREADY_EXISTS by the server).
        with Client(server.address) as c:
            summary = json.loads(c.get_call("e2e-sckill", include_summary=True).summary_json)
        assert re.fullmatch(r"sidecar:[0-9a-f]{32}", summary["recording_id"]), summary
    finally:
        sidecar.stop()
        server.stop()
    pcm, duration, info = _exported(tmp_path, data, "e2e-sckill")
    downtime = back_at - killed_at
    # bursts before the kill (spooled) and after the restart are where they belong
    # (the gap the kill leaves is filled by concealment: a repeat of the frame before it)
    # A burst sent while the sidecar was down is lost with it; how long the restart
    # takes varies (a cold machine is slower), so bursts near the downtime are left out.
    kill_s, back_s = killed_at - t0, back_at - t0

    def outside(times: list[float], shift: float = 0.0) -> list[float]:
        return [t for t in times if not kill_s - 0.3 <= t - shift <= back_s + 0.5]

    offsets = []
    for ch, sent in ((0, KILL_AGENT), (1, KILL_CUSTOMER)):
        found = _bursts(pcm[:, ch], quiet_elsewhere=False)
        assert found and sent[0] < kill_s - 0.3, (found, kill_s)
        shift = found[0] - sent[0]  # the first burst is always before the kill
        kept = outside(sent)
        assert len(kept) >= len(sent) - 2, (kill_s, back_s)  # the restart was quick
        offsets.append(_offset(outside(found, shift), kept))
    oa, oc = offsets
    assert abs(duration - (max(oa, oc) + KILL_SECONDS)) <= 0.040, (duration, oa, oc)
    # the packets sent while it was dead are one gap per leg, as long as the downtime
    # (give or take one of ffmpeg's 182 ms packets and the socket queue lost with the
    # process), at the time of the kill, and nowhere else
    for leg in info["legs_detail"]:
        assert len(leg["gaps"]) == 1, leg["gaps"]
        first, count = leg["gaps"][0]["start_frame"], leg["gaps"][0]["frames"]
        assert abs(leg["lost"] / 50 - downtime) <= 0.45, (leg["lost"], downtime)
        assert count == leg["lost"]
        assert abs(first / 50 - kill_s) <= 0.5, (first, kill_s)


def test_call_recorded_while_server_down_lands_when_it_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_tcp_port()
    sidecar = start_sidecar(f"127.0.0.1:{port}", tmp_path / "spool", rtp_range(), tmp_path)
    server = None
    try:
        ports = call_start(sidecar, "e2e-offline")
        _wait(
            _send(
                tmp_path,
                ports,
                {"agent": clicks(4.0, [1.0, 3.0]), "customer": clicks(4.0, [2.0], hz=700.0)},
            )
        )
        time.sleep(0.3)
        stopped = call_stop(sidecar, "e2e-offline")
        (call,) = list_calls(sidecar)
        assert call.state == "forwarding" and not call.connected
        assert call.batches == stopped["batches"] > 0 and call.acked_seq == 0
        server = start_server(data, port=port)
        wait_sealed(sidecar, "e2e-offline")
    finally:
        sidecar.stop()
        if server is not None:
            server.stop()
    pcm, duration, info = _exported(tmp_path, data, "e2e-offline")
    oa = _offset(_bursts(pcm[:, 0]), [1.0, 3.0])
    oc = _offset(_bursts(pcm[:, 1]), [2.0])
    assert abs(duration - (max(oa, oc) + 4.0)) <= 0.040
    for leg in info["legs_detail"]:
        assert leg["lost"] == 0, leg


def test_control_api_refuses_bad_requests_clearly(tmp_path: Path) -> None:
    lo = int(rtp_range().rsplit(":", 1)[1].split("-")[0])
    # two even ports: one two-leg call fits, a second does not
    sidecar = start_sidecar(
        f"127.0.0.1:{free_tcp_port()}", tmp_path / "spool", f"127.0.0.1:{lo}-{lo + 3}", tmp_path
    )
    try:
        with grpc.insecure_channel(sidecar.address) as ch:
            stub = pbg.SidecarStub(ch)

            def refused(req: Any, method: str = "StartCall") -> grpc.RpcError:
                with pytest.raises(grpc.RpcError) as e:
                    getattr(stub, method)(req, timeout=10)
                return e.value

            e = refused(pb.StartCallRequest(call_id="bad id/1"))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "call_id" in (e.details() or "")
            e = refused(pb.StartCallRequest(call_id="c", legs=["a", "b", "c"]))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "legs" in (e.details() or "")
            e = refused(pb.StartCallRequest(call_id="c", legs=["a", "a"]))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            ok = stub.StartCall(pb.StartCallRequest(call_id="c1"), timeout=10)
            assert sorted(ok.ports.values()) == [lo + lo % 2, lo + lo % 2 + 2]
            e = refused(pb.StartCallRequest(call_id="c1"))
            assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "c1" in (e.details() or "")
            e = refused(pb.StartCallRequest(call_id="c2"))
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "no free" in (e.details() or "")
            e = refused(pb.StopCallRequest(call_id="nope"), "StopCall")
            assert e.code() == grpc.StatusCode.NOT_FOUND and "nope" in (e.details() or "")
        # the command line says it in words and exits 1
        p = subprocess.run(
            [*CLI, "call", "start", "--sidecar", sidecar.address, "--call-id", "bad id"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1 and "call_id" in p.stderr
        assert sidecar.alive()
    finally:
        assert sidecar.stop(signal.SIGTERM) == 0

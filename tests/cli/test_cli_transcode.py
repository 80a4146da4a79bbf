"""`callvault transcode` end to end: real files, the real CLI process, real decoders."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callvault import _g711
from callvault.media.sample import LegPlan, write_capture
from callvault.media.wav import read_mono
from tests.servers import CLI, run_cli


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def decode_ffmpeg(path: Path, channels: int = 2) -> np.ndarray:
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-c:a",
            "libopus",
            "-i",
            str(path),
            "-f",
            "s16le",
            "-ar",
            "8000",
            "-ac",
            str(channels),
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype="<i2").reshape(-1, channels)


def clicks(seconds: float, at: list[float], *, hz: float = 1000.0) -> np.ndarray:
    """Silence with 60 ms tone bursts at the given times: easy to locate after coding."""
    x = np.zeros(int(seconds * 8000))
    t = np.arange(480) / 8000
    for a in at:
        i = int(a * 8000)
        x[i : i + 480] = 8000 * np.sin(2 * np.pi * hz * t)
    return x.astype(np.int16)


def burst_onsets(x: np.ndarray, thresh: float = 2000.0) -> list[float]:
    """Seconds at which 5 ms energy first exceeds thresh after a quiet spell."""
    x = x[: len(x) - len(x) % 40]
    env = np.abs(x.astype(np.float64)).reshape(-1, 40).max(axis=1)
    on = np.flatnonzero((env[1:] > thresh) & (env[:-1] <= thresh)) + 1
    return [float(i * 40 / 8000) for i in on]


@pytest.fixture(scope="module")
def impaired_call(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """10 s, agent PCMU 20 ms, customer PCMA 30 ms + SSRC change; losses; two RFC 4733 digits."""
    tmp = tmp_path_factory.mktemp("call")
    agent = clicks(10.0, [1.0, 3.0, 5.0, 9.0])
    customer = clicks(10.0, [2.0, 4.0, 6.5, 8.5], hz=700.0)
    path = tmp / "call.pcap"
    write_capture(
        path,
        [
            (
                agent,
                LegPlan(
                    ssrc=1,
                    jitter_ms=6,
                    loss_bursts=((7.0, 3),),
                    dtmf=((6.0, "4"), (7.5, "2")),
                    src=("10.0.0.1", 4000),
                    dst=("10.0.0.2", 5000),
                ),
            ),
            (
                customer,
                LegPlan(
                    law=8,
                    ptime_ms=30,
                    ssrc=2,
                    jitter_ms=10,
                    ssrc_change_at=5.0,
                    start_offset_ms=2,
                    src=("10.0.0.2", 5002),
                    dst=("10.0.0.1", 4002),
                ),
            ),
        ],
    )
    return path, agent, customer


def test_capture_to_dual_track_ogg(
    impaired_call: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    cap, agent, customer = impaired_call
    out = tmp_path / "call.ogg"
    summary = json.loads(run_cli("transcode", str(cap), "-o", str(out), "--json").stdout)
    info = subprocess.run(["opusinfo", str(out)], capture_output=True, text=True)
    assert info.returncode == 0 and "WARNING" not in info.stdout + info.stderr
    probe = ffprobe(out)
    assert probe["streams"][0]["channels"] == 2
    assert abs(float(probe["format"]["duration"]) - 10.0) < 0.06
    assert summary["channels"] == ["agent", "customer"]
    pcm = decode_ffmpeg(out)
    # Every burst lands where it was sent, on the right channel, within one
    # frame plus the 10 ms network delay of the sample capture.
    for ch, sent in ((0, [1.0, 3.0, 5.0, 9.0]), (1, [2.0, 4.0, 6.5, 8.5])):
        got = burst_onsets(pcm[:, ch])
        assert len(got) == len(sent), (ch, got)
        for g, s in zip(got, sent, strict=True):
            assert abs(g - s) <= 0.030, (ch, g, s)


def test_json_summary_counts_what_happened(
    impaired_call: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    cap, _, _ = impaired_call
    s = json.loads(run_cli("transcode", str(cap), "-o", str(tmp_path / "c.ogg"), "--json").stdout)
    agent, customer = s["legs"]
    # 3 packets lost at 7.0 s: 60 ms, touching 3 or 4 frames (the leg's anchor
    # is not on the frame grid), placed within a frame of where they were sent
    [gap] = agent["gaps"]
    assert abs(gap["start_frame"] - 350) <= 2 and 3 <= gap["frames"] <= 4
    assert agent["lost"] == gap["frames"]
    assert [e["digit"] for e in agent["telephone_events"]] == ["4", "2"]
    # within a frame, plus the 10 ms network delay the sample capture adds
    assert abs(agent["telephone_events"][0]["start_ms"] - 6000) <= 30
    assert agent["telephone_events"][0]["duration_ms"] == 100
    assert customer["rtp"]["ssrc_changes"] == 1 and customer["lost"] == 0
    assert agent["frames"] == customer["frames"] == round(s["seconds"] * 50)
    assert agent["bytes"] > 0 and customer["bytes"] > 0


def test_capture_to_stereo_wav(
    impaired_call: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    cap, agent, _ = impaired_call
    out = tmp_path / "call.wav"
    run_cli("transcode", str(cap), "-o", str(out))
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    # G.711 is lossless on the way back for samples it can represent: the first
    # burst comes back bit-exact (after mu-law), shifted by the network delay.
    ref = _g711.decode(_g711.encode(agent, 0), 0)
    i = int(np.flatnonzero(pcm[:, 0])[0]) - 1  # the burst starts with sin(0) = 0
    j = int(1.0 * 8000)
    assert np.array_equal(pcm[i : i + 400, 0], ref[j : j + 400])


def test_wav_legs_in_resampled(tmp_path: Path) -> None:
    t = np.arange(16000 * 2) / 16000
    for name, hz in (("agent", 300), ("customer", 500)):
        with wave.open(str(tmp_path / f"{name}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((5000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes())
    out = tmp_path / "x.wav"
    s = json.loads(
        run_cli(
            "transcode",
            f"agent={tmp_path / 'agent.wav'}",
            f"customer={tmp_path / 'customer.wav'}",
            "-o",
            str(out),
            "--json",
        ).stdout
    )
    assert s["seconds"] == 2.0
    with wave.open(str(out)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    spec = np.abs(np.fft.rfft(pcm[:, 1].astype(float)))
    assert abs(np.argmax(spec) * 8000 / len(pcm) - 500) < 2


def test_legs_option_renames_streams(
    impaired_call: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    cap, _, _ = impaired_call
    s = json.loads(
        run_cli(
            "transcode",
            str(cap),
            "-o",
            str(tmp_path / "c.ogg"),
            "--legs",
            "customer,agent",
            "--json",
        ).stdout
    )
    assert s["channels"] == ["customer", "agent"]
    assert s["legs"][0]["lost"] >= 3 and s["legs"][1]["lost"] == 0


def test_mask_dtmf_silences_inband_tones(tmp_path: Path) -> None:
    t = np.arange(int(0.2 * 8000)) / 8000
    tone = 6000 * (np.sin(2 * np.pi * 770 * t) + np.sin(2 * np.pi * 1336 * t)) / 2  # digit 5
    x = np.zeros(3 * 8000)
    x[8000 : 8000 + len(t)] = tone
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(x.astype("<i2").tobytes())
    out = tmp_path / "m.wav"
    s = json.loads(
        run_cli(
            "transcode", f"agent={tmp_path / 'a.wav'}", "-o", str(out), "--mask-dtmf", "--json"
        ).stdout
    )
    assert [e["digit"] for e in s["legs"][0]["dtmf"]] == ["5"]
    masked = read_mono(out)
    assert np.abs(masked[8000 : 8000 + len(t)]).max() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/call.pcap"], "cannot read"),
        (["README.md"], "not a pcap or pcapng capture"),
    ],
)
def test_unreadable_input_is_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    p = run_cli("transcode", *args, "-o", str(tmp_path / "x.ogg"), ok=False)
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and message in p.stderr and "Traceback" not in p.stderr


def test_capture_without_rtp_is_an_error(tmp_path: Path) -> None:
    import dpkt

    path = tmp_path / "empty.pcap"
    with path.open("wb") as f:
        dpkt.pcap.Writer(f)
    p = run_cli("transcode", str(path), "-o", str(tmp_path / "x.ogg"), ok=False)
    assert p.returncode != 0 and "no RTP streams" in p.stderr


def test_unsupported_codec_is_an_error(tmp_path: Path) -> None:
    import dpkt

    from callvault.media.rtppack import build_packet
    from callvault.media.sample import _ipv4_udp

    eth = b"\x02" * 12 + b"\x08\x00"
    path = tmp_path / "g722.pcap"
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f)
        for i in range(10):
            w.writepkt(
                eth
                + _ipv4_udp(
                    ("10.0.0.1", 1), ("10.0.0.2", 2), build_packet(9, i, i * 160, 5, bytes(160))
                ),
                ts=1 + i / 50,
            )
    p = run_cli("transcode", str(path), "-o", str(tmp_path / "x.ogg"), ok=False)
    assert p.returncode != 0 and "G722 (PT 9)" in p.stderr


def test_bad_output_name_is_an_error(
    impaired_call: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    p = run_cli("transcode", str(impaired_call[0]), "-o", str(tmp_path / "x.mp3"), ok=False)
    assert p.returncode != 0 and ".ogg" in p.stderr


def test_demo_transcodes_and_stores_a_call(tmp_path: Path) -> None:
    """What `make run` runs: a sample call, transcoded and stored in a vault that verifies."""
    out = run_cli("demo", "--data", str(tmp_path)).stdout
    assert "wrote" in out and "verifies" in out
    probe = ffprobe(tmp_path / "sample.ogg")
    assert probe["streams"][0]["channels"] == 2
    assert abs(float(probe["format"]["duration"]) - 30.0) < 0.1
    p = subprocess.run(
        [*CLI, "--data", str(tmp_path / "vault"), "verify", "--all"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and "OK" in p.stdout

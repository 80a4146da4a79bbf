"""Workload transcode_10min_dual_leg: a whole call, capture in, dual-track Ogg Opus out.

    transcode_10min_dual_leg  a 10-minute two-leg call made once per session by
                          callvault.media.sample (dialogue with pauses and line noise;
                          agent PCMU 20 ms, customer PCMA 30 ms with an SSRC
                          change, jitter, loss bursts, two RFC 4733 digits),
                          written as one pcap, and the same two legs as 8 kHz
                          mono WAV. Reported as a real-time factor: call
                          seconds / wall seconds (median of 3 rounds).
      ours                callvault.cli.transcode([pcap], out.ogg, Settings()):
                          capture read, RTP parse, jitter buffers, G.711
                          decode, DTMF/VAD/levels, Opus encode (the product's
                          defaults, pipeline.Settings(): 12 kb/s per leg, its
                          complexity, DTX), 2-channel Ogg Opus written.
      peer ffmpeg         ffmpeg encoding the two WAV legs to a 2-channel Ogg
                          Opus with libopus: amerge, 24 kb/s (12 per channel),
                          VoIP, 20 ms, VBR, compression_level = our complexity,
                          mapping family 255 (two uncoupled mono streams, like
                          ours). It does less than ours (no capture, no RTP, no
                          G.711, no DSP) and its libopus wrapper has no DTX
                          switch. No target: both RTFs and the ratio are reported.

Checked: both outputs are 2-channel Opus as long as the call (ffprobe), and
ours reports the call's length for both legs.

Ours and ffmpeg run interleaved, round by round, in one loop
(conftest.Interleaved): ours, ffmpeg; ffmpeg, ours; ours, ffmpeg.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import CallFiles, Interleaved, Round, Side, Tag, need, sides

NAME = "transcode_10min_dual_leg"
ROUNDS = 3


def probe(path: Path) -> tuple[str, int, float]:
    exe = shutil.which("ffprobe")
    assert exe is not None, "ffprobe is needed (make sysdeps)"
    out = subprocess.run(
        [
            exe,
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,channels:format=duration",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info = json.loads(out)
    s = info["streams"][0]
    return s["codec_name"], int(s["channels"]), float(info["format"]["duration"])


def check_output(path: Path, seconds: float) -> None:
    codec, channels, duration = probe(path)
    assert (codec, channels) == ("opus", 2)
    assert abs(duration - seconds) < 0.5, f"{path.name}: {duration:.3f} s for a {seconds} s call"


@pytest.fixture(scope="module")
def settings() -> Any:
    return need("callvault.media.pipeline").Settings()


def ffmpeg_command(exe: str, call_files: CallFiles, settings: Any, out: Path) -> list[str]:
    return [
        exe,
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-i",
        str(call_files.wavs[0]),
        "-i",
        str(call_files.wavs[1]),
        "-filter_complex",
        "[0:a][1:a]amerge=inputs=2[a]",
        "-map",
        "[a]",
        "-c:a",
        "libopus",
        "-b:a",
        str(2 * settings.bitrate),
        "-application",
        "voip",
        "-frame_duration",
        "20",
        "-vbr",
        "on",
        "-compression_level",
        str(settings.complexity),
        "-mapping_family",
        "255",
        str(out),
    ]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transcode")


@pytest.fixture(scope="module")
def rounds(call_files: CallFiles, settings: Any, outputs: Path) -> Interleaved:
    """Ours and ffmpeg, round by round in one loop, ROUNDS rounds."""

    def ours() -> Round:
        cli = need("callvault.cli")
        args = ([str(call_files.capture)], str(outputs / "ours.ogg"), settings)
        return Round(cli.transcode, setup=lambda: args)

    def ffmpeg() -> Round:
        exe = shutil.which("ffmpeg")
        assert exe is not None, "ffmpeg is needed (make sysdeps)"
        cmd = ffmpeg_command(exe, call_files, settings, outputs / "ffmpeg.ogg")
        return Round(lambda: subprocess.run(cmd, check=True))

    return Interleaved({"ours": ours, "ffmpeg": ffmpeg}, rounds=ROUNDS)


@pytest.fixture
def side(benchmark: Any, workload: Tag, rounds: Interleaved, call_files: CallFiles) -> Side:
    return sides(benchmark, workload, rounds, NAME, call_seconds=call_files.seconds)


def test_transcode_ours(side: Side, call_files: CallFiles, outputs: Path) -> None:
    need("callvault.cli")
    summary = side(
        "ours",
        "ours",
        what=f"{call_files.seconds:g} s two-leg call, {call_files.packets:,} RTP packets "
        f"in one pcap, to dual-track Ogg Opus",
    )
    assert summary["channels"] == ["agent", "customer"]
    assert call_files.seconds <= summary["seconds"] < call_files.seconds + 0.5
    assert [leg["frames"] for leg in summary["legs"]] == [summary["legs"][0]["frames"]] * 2
    check_output(outputs / "ours.ogg", call_files.seconds)


def test_transcode_peer_ffmpeg(
    side: Side, call_files: CallFiles, settings: Any, outputs: Path
) -> None:
    exe = shutil.which("ffmpeg")
    assert exe is not None, "ffmpeg is needed (make sysdeps)"
    cmd = ffmpeg_command(exe, call_files, settings, outputs / "ffmpeg.ogg")
    shown = [Path(c).name if c in (exe, *map(str, call_files.wavs)) else c for c in cmd[:-1]]
    side(
        "peer",
        "ffmpeg",
        peer="ffmpeg -c:a libopus, 2 WAV legs -> 2-channel Ogg Opus (no DTX)",
        command=" ".join(shown + ["out.ogg"]),
    )
    check_output(outputs / "ffmpeg.ogg", call_files.seconds)

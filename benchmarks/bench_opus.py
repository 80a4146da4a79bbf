"""Workload opus_encode_8k_voip: Opus encoding of one leg of speech.

    opus_encode_8k_voip   10 s of one leg of sample.dialogue (speech, pauses,
                          line noise at -50 dBFS), 8 kHz mono, VoIP, 20 ms
                          frames, 12 kb/s VBR, the binding's default
                          complexity and DTX, one fresh encoder per round.
      ours                callvault._opus.Encoder(...).encode_frames(pcm):
                          all 500 frames in one call, GIL released.
      peer c-loop         a plain C loop over the same system libopus with the
                          same requests (benchmarks/c/opus_loop.c), called
                          once per round via ctypes.
                          Target: ours <= 1.05x the C loop's time.
      peer opuslib        opuslib.Encoder(SAMPLE_RATE, 1, APPLICATION_VOIP) with the
                          same bitrate, complexity, DTX, VBR and signal set,
                          encoding frame by frame as opuslib users do.
                          Target: ours >= 1.3x faster than opuslib.

All three must produce the same bytes (libopus is deterministic for the same
settings and input); the benchmark fails otherwise, so the race is fair.

The three sides run interleaved, round by round, in one loop
(conftest.Interleaved): each round encodes the 500 frames with ours, the C
loop and opuslib in turn.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.conftest import Interleaved, OpusLoop, Side, Tag, need, sides
from callvault.timeline import FRAME_SAMPLES, SAMPLE_RATE

# About 3 s per side (pytest-benchmark's default is 1 s), 9 s for the three
# sides' interleaved rounds: a longer window evens out the load on a shared machine.
pytestmark = pytest.mark.benchmark(max_time=3.0)

NAME = "opus_encode_8k_voip"
SECONDS = 10.0
FRAME = FRAME_SAMPLES  # 20 ms at 8 kHz
BITRATE = 12_000
SIGNAL_VOICE = 3001  # OPUS_SIGNAL_VOICE: what the binding sets in VoIP mode


@pytest.fixture(scope="module")
def pcm(dialogue_30s: tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]) -> npt.NDArray[np.int16]:
    frames = int(SECONDS * SAMPLE_RATE) // FRAME
    return np.ascontiguousarray(dialogue_30s[0][: frames * FRAME].reshape(frames, FRAME))


@pytest.fixture(scope="module")
def settings() -> dict[str, Any]:
    """The binding's defaults (complexity, DTX, VBR) as a fresh Encoder reports them."""
    enc = need("callvault._opus").Encoder(bitrate=BITRATE)
    return {"bitrate": enc.bitrate, "complexity": enc.complexity, "dtx": enc.dtx, "vbr": True}


def c_encode(
    loop: OpusLoop, pcm: npt.NDArray[np.int16], s: dict[str, Any]
) -> tuple[bytes, npt.NDArray[np.int32]]:
    n = len(pcm)
    out = np.empty(n * 4000, dtype=np.uint8)
    lengths = np.empty(n, dtype=np.int32)
    used = loop.encode_into(pcm, s, out, lengths)
    if used < 0:
        raise RuntimeError(f"libopus error {used} in the C loop")
    return out[:used].tobytes(), lengths


@pytest.fixture(scope="module")
def reference(
    opus_c_loop: OpusLoop, pcm: npt.NDArray[np.int16], settings: dict[str, Any]
) -> tuple[bytes, npt.NDArray[np.int32]]:
    data, lengths = c_encode(opus_c_loop, pcm, settings)
    assert len(lengths) == len(pcm) and int(lengths.sum()) == len(data)
    # DTX must have acted on the pauses (1-2 byte packets), or the settings differ.
    assert int((lengths <= 2).sum()) > 0
    return data, lengths


def ours_encode(pcm: npt.NDArray[np.int16]) -> Any:
    opus = need("callvault._opus")

    def run() -> tuple[bytes, npt.NDArray[np.int32]]:
        enc = opus.Encoder(bitrate=BITRATE)
        data, lengths = enc.encode_frames(pcm)
        return data, lengths

    return run


def opuslib_encode(pcm: npt.NDArray[np.int16], settings: dict[str, Any]) -> Any:
    import opuslib
    import opuslib.api.ctl
    import opuslib.api.encoder

    frames = [f.tobytes() for f in pcm]  # opuslib takes bytes per frame

    def run() -> list[bytes]:
        enc = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_VOIP)
        enc.bitrate = settings["bitrate"]
        enc.complexity = settings["complexity"]
        # opuslib's Encoder has no dtx property: its ctl API sets it.
        opuslib.api.encoder.encoder_ctl(
            enc.encoder_state, opuslib.api.ctl.set_dtx, int(settings["dtx"])
        )
        enc.vbr = int(settings["vbr"])
        enc.signal = SIGNAL_VOICE
        return [enc.encode(f, FRAME) for f in frames]

    return run


@pytest.fixture(scope="module")
def rounds(
    opus_c_loop: OpusLoop, pcm: npt.NDArray[np.int16], settings: dict[str, Any]
) -> Interleaved:
    """Ours, the C loop and opuslib, round by round in one loop."""
    return Interleaved(
        {
            "ours": lambda: ours_encode(pcm),
            "c_loop": lambda: lambda: c_encode(opus_c_loop, pcm, settings),
            "opuslib": lambda: opuslib_encode(pcm, settings),
        }
    )


@pytest.fixture
def side(benchmark: Any, workload: Tag, rounds: Interleaved, pcm: npt.NDArray[np.int16]) -> Side:
    return sides(benchmark, workload, rounds, NAME, units=len(pcm), unit="frame")


def check(
    encoded: tuple[bytes, npt.NDArray[np.int32]], reference: tuple[bytes, npt.NDArray[np.int32]]
) -> None:
    """The same packets as the C loop's reference encoding, byte for byte."""
    assert encoded[0] == reference[0]
    assert np.array_equal(encoded[1], reference[1])


def test_opus_encode_ours(
    side: Side, settings: dict[str, Any], reference: tuple[bytes, npt.NDArray[np.int32]]
) -> None:
    opus = need("callvault._opus")
    encoded = side(
        "ours",
        "ours",
        settings=settings,
        libopus=opus.version(),
        what=f"{SECONDS:g} s of speech, 8 kHz mono VoIP 20 ms, {BITRATE // 1000} kb/s",
    )
    check(encoded, reference)


def test_opus_encode_peer_c_loop(
    side: Side, reference: tuple[bytes, npt.NDArray[np.int32]]
) -> None:
    encoded = side(
        "peer",
        "c_loop",
        peer="plain C loop over libopus (ctypes, one call per round)",
        target="ours <= 1.05x C",
        max_ratio=1.05,
    )
    check(encoded, reference)


def test_opus_encode_peer_opuslib(
    side: Side, reference: tuple[bytes, npt.NDArray[np.int32]]
) -> None:
    packets = side(
        "peer",
        "opuslib",
        peer=f"opuslib {importlib.metadata.version('opuslib')} frame by frame",
        target="ours >= 1.3x faster",
        max_ratio=1 / 1.3,
    )
    assert b"".join(packets) == reference[0]
    assert [len(p) for p in packets] == reference[1].tolist()

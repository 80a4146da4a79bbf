"""callvault.media.packetize: WAV legs as plain real-time G.711 RTP."""

from __future__ import annotations

import numpy as np
import pytest

from callvault import _g711, _rtp
from callvault.media import sample
from callvault.media.packetize import packetize
from callvault.media.packets import PacketRun
from callvault.media.rtppack import PT_PCMA, PT_PCMU
from callvault.timeline import FRAME_SAMPLES, FRAME_US

START_US = 1_900_000_000_123_456


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    return sample.synthetic_speech(1.5, seed=4)[: 12_000 - 37]  # a partial last frame


def test_same_packets_as_the_simulator_without_impairments(pcm: np.ndarray) -> None:
    """What `callvault --server ... import LEG=FILE.wav` sent through sample.rtp_packets
    (jitter 0, 20 ms PCMU) before it had a plain path: the same bytes, the same arrivals
    (the simulator's float seconds round to within a microsecond)."""
    padded = np.concatenate([pcm, np.zeros((-len(pcm)) % FRAME_SAMPLES, dtype=np.int16)])
    plan = sample.LegPlan(law=PT_PCMU, ptime_ms=20, ssrc=0x5EED0001, jitter_ms=0.0)
    t0 = START_US / 1e6 + 0.020 - 0.010
    old = [(round(at * 1e6), p) for at, p in sample.rtp_packets(padded, plan, t0=t0, seed=1)]
    new = packetize(pcm, start_us=START_US, ssrc=0x5EED0001, seed=1)
    assert [p for _, p in new] == [p for _, p in old]
    assert max(abs(a - b) for (a, _), (b, _) in zip(new, old, strict=True)) <= 1
    assert [a for a, _ in new] == [START_US + (n + 1) * FRAME_US for n in range(len(new))]


@pytest.mark.parametrize("law", [PT_PCMU, PT_PCMA])
def test_jitter_buffer_puts_frame_n_on_frame_n(pcm: np.ndarray, law: int) -> None:
    pkts = packetize(pcm, start_us=START_US, ssrc=7, seed=3, law=law)
    assert len(pkts) == -(-len(pcm) // FRAME_SAMPLES)
    run = PacketRun.of([p for _, p in pkts])
    jb = _rtp.JitterBuffer(call_start_us=START_US, window_ms=60)
    frames = jb.push(run.data, run.offsets, run.lengths, np.array([a for a, _ in pkts]))
    tail = jb.flush()
    got = np.concatenate([frames.pcm.reshape(-1), tail.pcm.reshape(-1)])
    padded = np.concatenate([pcm, np.zeros(len(got) - len(pcm), dtype=np.int16)])
    assert len(got) == len(pkts) * FRAME_SAMPLES  # the partial frame zero-padded
    assert np.array_equal(got, _g711.decode(_g711.encode(padded, law), law))
    stats = jb.stats
    assert stats["lost_frames"] == 0 and stats["late"] == 0 and stats["audio_packets"] == len(pkts)


def test_rejects_other_codecs(pcm: np.ndarray) -> None:
    with pytest.raises(ValueError, match="PCMU"):
        packetize(pcm, start_us=START_US, ssrc=1, law=9)

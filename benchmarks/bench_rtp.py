"""Workload rtp_jitter_g711_20ms: RTP parse + jitter buffer, per packet.

    rtp_jitter_g711_20ms  one leg of 30 s of speech as G.711 mu-law RTP, 20 ms
                          per packet (1500 packets), sent by sample.rtp_packets
                          with 10 ms (s.d.) of one-way delay variation, so
                          packets arrive out of order; no loss. The packets are
                          in arrival order; one fresh buffer per round.
      ours                callvault._rtp.JitterBuffer: 30 batches of 50 packets
                          (1 s each, one buffer + offsets/lengths/arrival arrays)
                          pushed, then flush(). Ours does more than the peer:
                          it also decodes G.711 into PCM frames on the call
                          timeline and fills what is missing.
      peer aiortc         per packet, as aiortc's RTCRtpReceiver does for
                          audio: RtpPacket.parse(bytes), packet._data = payload,
                          JitterBuffer(capacity=16, prefetch=4).add(packet).
                          Target: ours <= 1/20 of aiortc's time per packet.
      peer jitter_ref     callvault.media.jitter_ref.JitterBuffer, the pure-Python
                          twin of ours, on the same batches (no target; it
                          shows what the Cython build buys).

Checked: ours and the twin return the same PCM, holding every packet's
decoded payload in order with no loss, late or duplicate counted; aiortc
returns the packets' payloads in timestamp order.

The three sides run interleaved, round by round, in one loop
(conftest.Interleaved): each round runs the whole stream through ours, the
twin and aiortc in turn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.conftest import Interleaved, Side, Tag, need, sides
from callvault.timeline import FRAME_MS, FRAME_SAMPLES, FRAME_US, FRAMES_PER_SECOND, SAMPLE_RATE

# About 3 s per side (pytest-benchmark's default is 1 s), 9 s for the three
# sides' interleaved rounds: a longer window evens out the load on a shared machine.
pytestmark = pytest.mark.benchmark(max_time=3.0)

NAME = "rtp_jitter_g711_20ms"
SECONDS = 30.0
BATCH = 50  # packets per push: 1 s of 20 ms packets
JITTER_MS = 10.0
T0 = 1_700_000_000.0  # send time of the first packet (seconds, as in a capture)
CALL_START_US = int(T0 * 1_000_000) - 100_000  # the call is answered 100 ms before media
SPP = FRAME_SAMPLES  # samples (and mu-law bytes) per 20 ms packet


class Stream:
    def __init__(self, arrivals: list[float], packets: list[bytes]) -> None:
        rtppack = need("callvault.media.rtppack")
        self.packets = packets
        self.arrival_us = np.array([round(a * 1_000_000) for a in arrivals], dtype=np.int64)
        self.batches: list[
            tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int64]]
        ] = []
        for lo in range(0, len(packets), BATCH):
            data, offsets, lengths = rtppack.pack_batch(packets[lo : lo + BATCH])
            self.batches.append((data, offsets, lengths, self.arrival_us[lo : lo + BATCH]))
        self.end_us = int(self.arrival_us.max()) + FRAME_US
        # Payloads in sending (sequence) order, and what they decode to.
        seqs = [int.from_bytes(p[2:4], "big") for p in packets]
        first = seqs[0]
        order = sorted(range(len(packets)), key=lambda i: (seqs[i] - first + 32768) % 65536)
        self.payloads = [packets[i][12:] for i in order]
        self.reordered = sum(1 for a, b in zip(order, order[1:], strict=False) if b < a)
        g711 = need("callvault._g711")
        self.expected_pcm = g711.decode(b"".join(self.payloads), g711.PCMU)


@pytest.fixture(scope="module")
def stream(dialogue_30s: tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]) -> Stream:
    sample = need("callvault.media.sample")
    pcm = dialogue_30s[0][: int(SECONDS * SAMPLE_RATE)]
    plan = sample.LegPlan(law=0, ptime_ms=FRAME_MS, ssrc=0x2468ACE0, jitter_ms=JITTER_MS)
    sent = sample.rtp_packets(pcm, plan, t0=T0, seed=3)
    s = Stream([a for a, _ in sent], [p for _, p in sent])
    assert len(s.packets) == int(SECONDS * FRAMES_PER_SECOND)
    assert s.reordered > 0, "the workload must have packets out of order"
    return s


def run_buffer(module: Any, s: Stream) -> tuple[list[npt.NDArray[np.int16]], dict[str, int]]:
    """The timed work: every batch pushed, the frames of each kept (as aiortc's
    side keeps its frames in a list); joining them for the check is not timed."""
    jb = module.JitterBuffer(call_start_us=CALL_START_US, window_ms=300)
    out = [jb.push(*b).pcm for b in s.batches]
    out.append(jb.flush(s.end_us).pcm)
    return out, jb.stats


def joined(frames: list[npt.NDArray[np.int16]]) -> npt.NDArray[np.int16]:
    return np.concatenate(frames).reshape(-1)


def check_timeline(pcm: npt.NDArray[np.int16], stats: dict[str, int], s: Stream) -> None:
    n = len(s.packets)
    assert stats["packets"] == n and stats["accepted"] == n
    assert stats["late"] == 0 and stats["duplicates"] == 0 and stats.get("late_partial", 0) == 0
    exp = s.expected_pcm
    assert len(exp) == n * SPP
    # The leg starts where its first packet lands on the call timeline (about
    # 110 ms in); find that sample, then every payload must follow in order.
    starts = [int(k) for k in np.flatnonzero(pcm[: 12 * SPP] == exp[0])]
    assert any(np.array_equal(pcm[k : k + len(exp)], exp) for k in starts), (
        "the frames do not hold the packets' audio in order"
    )
    # No more than the 100 ms lead-in, the delay to the first arrival and the tail.
    assert len(pcm) - len(exp) < 12 * SPP


@pytest.fixture(scope="module")
def twin_pcm(stream: Stream) -> npt.NDArray[np.int16]:
    frames, stats = run_buffer(need("callvault.media.jitter_ref"), stream)
    pcm = joined(frames)
    check_timeline(pcm, stats, stream)
    return pcm


def aiortc_run(stream: Stream) -> Any:
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtp import RtpPacket

    def run() -> list[Any]:
        # What RTCRtpReceiver does per audio packet (capacity=16, prefetch=4).
        jb = JitterBuffer(capacity=16, prefetch=4)
        frames = []
        for data in stream.packets:
            packet = RtpPacket.parse(data)
            packet._data = packet.payload  # type: ignore[attr-defined]  # as aiortc does
            _, frame = jb.add(packet)
            if frame is not None:
                frames.append(frame)
        return frames

    return run


@pytest.fixture(scope="module")
def rounds(stream: Stream) -> Interleaved:
    """Ours, the pure-Python twin and aiortc, round by round in one loop."""

    def buffer_of(module: str) -> Any:
        m = need(module)
        return lambda: run_buffer(m, stream)

    return Interleaved(
        {
            "ours": lambda: buffer_of("callvault._rtp"),
            "jitter_ref": lambda: buffer_of("callvault.media.jitter_ref"),
            "aiortc": lambda: aiortc_run(stream),
        }
    )


@pytest.fixture
def side(benchmark: Any, workload: Tag, rounds: Interleaved, stream: Stream) -> Side:
    return sides(benchmark, workload, rounds, NAME, units=len(stream.packets), unit="packet")


def test_rtp_jitter_ours(side: Side, stream: Stream, twin_pcm: npt.NDArray[np.int16]) -> None:
    need("callvault._rtp")
    frames, stats = side(
        "ours",
        "ours",
        what=f"{len(stream.packets)} G.711 packets, 20 ms, {JITTER_MS:g} ms jitter, "
        f"{stream.reordered} out of order, batches of {BATCH}",
    )
    pcm = joined(frames)
    check_timeline(pcm, stats, stream)
    assert np.array_equal(pcm, twin_pcm), "ours and its pure-Python twin disagree"


def test_rtp_jitter_peer_jitter_ref(side: Side, stream: Stream) -> None:
    need("callvault.media.jitter_ref")
    frames, stats = side(
        "peer", "jitter_ref", peer="callvault.media.jitter_ref (pure-Python twin), same batches"
    )
    check_timeline(joined(frames), stats, stream)


def test_rtp_jitter_peer_aiortc(side: Side, stream: Stream) -> None:
    import aiortc

    frames = side(
        "peer",
        "aiortc",
        peer=f"aiortc {aiortc.__version__} RtpPacket.parse + JitterBuffer.add per packet",
        target="ours <= 1/20 of aiortc",
        max_ratio=1 / 20,
    )
    n = len(stream.packets)
    assert n - 6 <= len(frames) <= n
    ts = [f.timestamp for f in frames]
    assert all((b - a) % 2**32 == SPP for a, b in zip(ts, ts[1:], strict=False))
    first = stream.payloads.index(frames[0].data)
    assert [f.data for f in frames] == stream.payloads[first : first + len(frames)]

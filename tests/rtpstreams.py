"""Synthetic RTP streams for the jitter buffer tests: a sender, a network, a runner.

A ``Sender`` keeps the RTP state of one source (SSRC, sequence number,
timestamp, payload type) and a real-time clock; its RTP clock may run fast
or slow (``clock_ppm``). Each method appends packets stamped with the real
time they leave the sender. ``network`` turns send times into arrival times
(base delay, jitter, loss, duplicates) and sorts by arrival. ``run`` feeds a
jitter buffer in batches and gathers everything it emits.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault import rtpdefs
from callvault.media.rtppack import PT_CN, PT_PCMU, build_packet, pack_batch, telephone_event

RATE = 8000
FRAME = 160
# ffmpeg reads a WAV file in blocks of 4096 bytes (2048 samples, 256 ms) and its RTP
# muxer cuts PCMU into payloads of at most 1460 bytes: pairs of 1460 + 588 (measured)
FFMPEG_BLOCK = 2048
FFMPEG_MAX_PAYLOAD = 1460


@dataclass
class Sent:
    data: bytes
    send_us: int
    label: str = "audio"


@dataclass
class Sender:
    ssrc: int = 0x1234
    seq: int = 1000
    ts: int = 50_000
    pt: int = PT_PCMU
    clock_ppm: float = 0.0
    t_us: float = 0.0  # real time of the next sample to capture
    out: list[Sent] = field(default_factory=list)

    def _advance(self, samples: int) -> None:
        self.t_us += samples * 1e6 / (RATE * (1.0 + self.clock_ppm * 1e-6))

    def _next(self) -> tuple[int, int]:
        seq, ts = self.seq, self.ts
        self.seq = (self.seq + 1) & 0xFFFF
        return seq, ts

    def audio(self, payload: bytes, *, marker: bool = False, **kw: Any) -> Sent:
        """One G.711 packet: its samples are captured, then it is sent."""
        seq, ts = self._next()
        self._advance(len(payload))
        self.ts = (self.ts + len(payload)) & 0xFFFFFFFF
        s = Sent(
            build_packet(self.pt, seq, ts, self.ssrc, payload, marker=marker, **kw),
            round(self.t_us),
        )
        self.out.append(s)
        return s

    def block(self, payload: bytes, *, max_payload: int = FFMPEG_MAX_PAYLOAD) -> None:
        """ffmpeg's RTP muxer under ``-re``: an input block is sent at once, cut into packets.

        ``-re`` paces the input, so a block leaves when its FIRST sample is due: every
        packet of the block but the first arrives "early" against the anchor's model."""
        t0 = round(self.t_us)
        for i in range(0, len(payload), max_payload):
            part = payload[i : i + max_payload]
            seq, ts = self._next()
            self._advance(len(part))
            self.ts = (self.ts + len(part)) & 0xFFFFFFFF
            self.out.append(Sent(build_packet(self.pt, seq, ts, self.ssrc, part), t0))

    def ffmpeg(self, payload: bytes, *, block: int = FFMPEG_BLOCK) -> None:
        """A whole recording sent like ``ffmpeg -re -i x.wav -c:a pcm_mulaw -f rtp``."""
        for i in range(0, len(payload), block):
            self.block(payload[i : i + block])

    def silence_gap(self, samples: int, *, comfort_noise: bool = False) -> None:
        """DTX: the timestamp moves on, no sequence number is spent (except a CN packet)."""
        if comfort_noise:
            seq, ts = self._next()
            self.out.append(
                Sent(build_packet(PT_CN, seq, self.ts, self.ssrc, b"\x40"), round(self.t_us), "cn")
            )
        self._advance(samples)
        self.ts = (self.ts + samples) & 0xFFFFFFFF

    def event(
        self, code: int, samples: int, *, pt: int = 101, step: int = 400, volume: int = 10
    ) -> None:
        """RFC 4733 event lasting ``samples``: updates every ``step``, three end packets."""
        start_ts = self.ts
        t0 = self.t_us
        dur = 0
        first = True
        while dur < samples:
            dur = min(dur + step, samples)
            seq, _ = self._next()
            end = dur == samples
            reps = 3 if end else 1
            for r in range(reps):
                s = seq if r == 0 else self._next()[0]
                send = t0 + dur * 1e6 / (RATE * (1.0 + self.clock_ppm * 1e-6)) + r * 20_000
                self.out.append(
                    Sent(
                        build_packet(
                            pt,
                            s,
                            start_ts,
                            self.ssrc,
                            telephone_event(code, end=end, volume=volume, duration=dur),
                            marker=first,
                        ),
                        round(send),
                        "event",
                    )
                )
                first = False
        self._advance(samples)
        self.ts = (self.ts + samples) & 0xFFFFFFFF


@dataclass
class Arrived:
    data: bytes
    arrival_us: int
    label: str


def network(
    sent: Sequence[Sent],
    rng: random.Random,
    *,
    base_us: int = 5_000,
    jitter_us: int = 0,
    loss: float = 0.0,
    dup: float = 0.0,
    drop: Sequence[int] = (),
    steady_first: bool = False,
    first_delay_us: int = 0,
) -> list[Arrived]:
    """Deliver packets: base delay + uniform jitter, independent loss, duplicates.

    ``steady_first``: the first packet gets no jitter, so the leg's anchor is exact.
    ``first_delay_us``: the first packet is held up this much more (a late anchor)."""
    dropped = set(drop)
    out: list[Arrived] = []
    for i, s in enumerate(sent):
        if i in dropped or (loss and rng.random() < loss):
            continue
        j = 0 if steady_first and i == 0 else rng.randint(0, jitter_us)
        if i == 0:
            j += first_delay_us
        out.append(Arrived(s.data, s.send_us + base_us + j, s.label))
        if dup and rng.random() < dup:
            out.append(
                Arrived(s.data, s.send_us + base_us + rng.randint(0, jitter_us * 2 + 1000), s.label)
            )
    out.sort(key=lambda a: a.arrival_us)
    return out


@dataclass
class Result:
    index: npt.NDArray[np.int64]
    pcm: npt.NDArray[np.int16]
    kind: npt.NDArray[np.uint8]
    stats: dict[str, int]
    gaps: list[tuple[int, int]]
    events: list[tuple[int, str, int, int, int]]
    unsupported: list[tuple[int, int, int]] = field(default_factory=list)
    unsupported_payload_types: list[int] = field(default_factory=list)


def run(
    jb: Any,
    packets: Sequence[Arrived],
    *,
    batch_sizes: Sequence[int] = (50,),
    end_us: int | None = None,
    flush: bool = True,
) -> Result:
    """Feed ``packets`` in batches (sizes cycle through ``batch_sizes``), flush, gather."""
    idx: list[npt.NDArray[np.int64]] = []
    pcm: list[npt.NDArray[np.int16]] = []
    kind: list[npt.NDArray[np.uint8]] = []

    def take(fr: Any) -> None:
        idx.append(fr.index)
        pcm.append(fr.pcm)
        kind.append(fr.kind)

    i = 0
    k = 0
    while i < len(packets):
        n = max(1, batch_sizes[k % len(batch_sizes)])
        k += 1
        chunk = packets[i : i + n]
        i += n
        data, offs, lens = pack_batch([p.data for p in chunk])
        take(jb.push(data, offs, lens, np.array([p.arrival_us for p in chunk], dtype=np.int64)))
    if flush:
        take(jb.flush(end_us))
    index = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
    return Result(
        index=index,
        pcm=np.concatenate(pcm) if pcm else np.zeros((0, FRAME), dtype=np.int16),
        kind=np.concatenate(kind) if kind else np.zeros(0, dtype=np.uint8),
        stats=jb.stats,
        gaps=jb.gaps,
        events=[(e.event, e.digit, e.start_ms, e.duration_ms, e.volume) for e in jb.events],
        unsupported=jb.unsupported,
        unsupported_payload_types=jb.unsupported_payload_types,
    )


DROP_KEYS = rtpdefs.DROP_KEYS


def check_accounting(stats: dict[str, int]) -> None:
    """Every packet is counted exactly once: accepted or one drop reason."""
    assert stats["accepted"] == (
        stats["audio_packets"]
        + stats["comfort_noise_packets"]
        + stats["telephone_event_packets"]
        + stats["unsupported_packets"]
    )
    assert stats["packets"] == stats["accepted"] + sum(stats[k] for k in DROP_KEYS), stats
    assert stats["malformed"] == sum(v for k, v in stats.items() if k.startswith("malformed_"))
    assert stats["frames"] == (
        stats["audio_frames"]
        + stats["lost_frames"]
        + stats["silence_frames"]
        + stats["unsupported_frames"]
    )


def check_frames(r: Result) -> None:
    """Frames start at 0, are consecutive, shaped (n, 160), kinds in range."""
    n = r.index.shape[0]
    assert np.array_equal(r.index, np.arange(n)), "frame indexes not consecutive from 0"
    assert r.pcm.shape == (n, FRAME) and r.pcm.dtype == np.int16
    assert r.kind.shape == (n,) and r.kind.dtype == np.uint8
    assert bool((r.kind <= 3).all())
    assert r.stats["frames"] == n


def random_scenario(rng: random.Random) -> tuple[list[Arrived], int]:
    """A realistic leg with random impairments; returns (packets in arrival order, end_us).

    One leg in four is a bursty early sender like ffmpeg's (see ``bursty_scenario``)."""
    if rng.random() < 0.25:
        return bursty_scenario(rng)
    ptime = rng.choice([80, 160, 160, 160, 240, 320, 480, 136, 1])
    s = Sender(
        ssrc=rng.getrandbits(32),
        seq=rng.choice([rng.randrange(65536), 65530]),
        ts=rng.choice([rng.getrandbits(32), 0xFFFFFFFF - 2000]),
        clock_ppm=rng.choice([0.0, 1000.0, -1000.0, 300.0]),
        t_us=rng.randrange(0, 200_000),
    )
    n = rng.randrange(100, 400) if ptime > 1 else rng.randrange(200, 600)
    extra: list[Sent] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.02:
            s.silence_gap(rng.randrange(160, 8000), comfort_noise=rng.random() < 0.5)
            s.audio(rng.randbytes(ptime), marker=True)
        elif r < 0.03:
            s.event(rng.randrange(0, 20), rng.randrange(400, 3000))
        elif r < 0.035:
            s.pt = 8 if s.pt == 0 else 0
            s.audio(rng.randbytes(ptime))
        elif r < 0.038:
            s.ssrc = rng.getrandbits(32)
            s.seq = rng.randrange(65536)
            s.ts = rng.getrandbits(32)
            s.audio(rng.randbytes(ptime))
        elif r < 0.040:
            s.ts = (s.ts + rng.choice([10, -10]) * RATE * 60) & 0xFFFFFFFF
            s.audio(rng.randbytes(ptime))
        elif r < 0.045:
            s.audio(
                rng.randbytes(ptime), padding=rng.randrange(1, 20), csrcs=[1, 2][: rng.randrange(3)]
            )
        elif r < 0.05:
            bad = bytearray(build_packet(0, 1, 2, 3, b"x"))
            bad[0] = rng.choice([0x40, 0xA0, 0x9F, 0x90])
            extra.append(Sent(bytes(bad[: rng.randrange(0, len(bad) + 1)]), round(s.t_us), "bad"))
            extra.append(
                Sent(build_packet(18, s.seq, s.ts, s.ssrc, b"g729"), round(s.t_us), "g729")
            )
            s.audio(rng.randbytes(ptime))
        elif r < 0.053:  # a run of G.722 (no decoder: unsupported codec frames)
            law, s.pt = s.pt, 9
            for _ in range(rng.randrange(1, 8)):
                s.audio(rng.randbytes(ptime))
            s.pt = law
        else:
            s.audio(rng.randbytes(ptime))
    sent = sorted(s.out + extra, key=lambda p: p.send_us)
    packets = network(
        sent,
        rng,
        base_us=rng.randrange(1000, 40_000),
        jitter_us=rng.choice([0, 5_000, 30_000, 120_000, 400_000]),
        loss=rng.choice([0.0, 0.01, 0.05, 0.2]),
        dup=rng.choice([0.0, 0.02, 0.1]),
        first_delay_us=rng.choice([0, 0, 0, 40_000, 150_000, 500_000]),
    )
    end_us = int(s.t_us) + rng.choice([0, 50_000, 1_000_000])
    return packets, end_us


def bursty_scenario(rng: random.Random) -> tuple[list[Arrived], int]:
    """A bursty early sender (ffmpeg's block pairs, or other block and payload sizes), with
    pauses, an SSRC change, a first packet held up, drift, jitter, loss and duplicates."""
    block, max_payload = rng.choice(
        [(FFMPEG_BLOCK, FFMPEG_MAX_PAYLOAD)] * 3 + [(1024, 400), (2400, 1000), (480, 160)]
    )
    s = Sender(
        ssrc=rng.getrandbits(32),
        seq=rng.randrange(65536),
        ts=rng.getrandbits(32),
        clock_ppm=rng.choice([0.0, 1000.0, -1000.0]),
        t_us=rng.choice([0, rng.randrange(0, 2_000_000)]),
    )
    for _ in range(rng.randrange(10, 60)):
        r = rng.random()
        if r < 0.05:
            s.silence_gap(rng.randrange(160, 16_000))
        elif r < 0.08:
            s.ssrc = rng.getrandbits(32)
            s.seq = rng.randrange(65536)
            s.ts = rng.getrandbits(32)
            s.t_us += rng.choice([-300_000, -50_000, 0, 100_000])
        s.block(rng.randbytes(block), max_payload=max_payload)
    sent = sorted(s.out, key=lambda p: p.send_us)
    packets = network(
        sent,
        rng,
        base_us=rng.randrange(0, 20_000),
        jitter_us=rng.choice([0, 0, 3_000, 30_000, 200_000]),
        loss=rng.choice([0.0, 0.0, 0.02]),
        dup=rng.choice([0.0, 0.05]),
        first_delay_us=rng.choice([0, 0, 40_000, 120_000, 400_000]),
    )
    end_us = int(s.t_us) + rng.choice([0, 300_000])
    return packets, end_us


__all__ = [
    "FFMPEG_BLOCK",
    "FFMPEG_MAX_PAYLOAD",
    "FRAME",
    "RATE",
    "Arrived",
    "Result",
    "Sender",
    "Sent",
    "bursty_scenario",
    "check_accounting",
    "check_frames",
    "network",
    "pack_batch",
    "random_scenario",
    "run",
]

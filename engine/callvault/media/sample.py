"""Sample calls made by callvault itself: speech, dialogues and RTP captures.

`make run` transcodes a capture written here, and tests and benchmarks use
the same generators. Speech comes from espeak-ng when it is installed (the
Makefile installs it); without it, a speech-like synthetic signal (voiced
harmonics through two formant resonances, syllable-rate envelope) stands in.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dpkt
import numpy as np
import numpy.typing as npt

from callvault.media import wav
from callvault.media.rtppack import (
    PT_PCMA,
    PT_PCMU,
    PT_TELEPHONE_EVENT,
    build_packet,
    telephone_event,
)
from callvault.timeline import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE

RATE = SAMPLE_RATE

SENTENCES = (
    "Thank you for calling, my name is Alex, how can I help you today?",
    "Hello, I am calling about the invoice I received last week.",
    "Of course. Could you give me your account number, please?",
    "Yes, it is four five seven, two two nine, one zero three.",
    "Thank you. I can see the invoice. The amount looks higher than usual.",
    "That is right, I was charged twice for the same month.",
    "I am sorry about that. I will refund the second payment today.",
    "Great, thank you very much for your help.",
)


def speech(
    text: str, *, voice: str = "en-us", speed: int = 160, pitch: int = 50, seed: int = 0
) -> npt.NDArray[np.int16]:
    """Spoken text as 8 kHz int16 (espeak-ng), or speech-like noise without it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return synthetic_speech(max(1.0, len(text) / 14.0), seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run(
            [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text],
            check=True,
            capture_output=True,
        )
        pcm = wav.read_mono(out)
    # espeak-ng speaks near full scale; telephone speech sits around -20 dBFS.
    return (pcm.astype(np.float64) * 0.5).astype(np.int16)


def synthetic_speech(seconds: float, *, seed: int = 0) -> npt.NDArray[np.int16]:
    """Voiced, syllable-modulated harmonics: a stand-in for speech without a TTS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    sig = sum(np.sin(k * phase) / k for k in range(1, 25))
    env = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    x = np.asarray(sig * env, dtype=np.float64)
    for fc, bw in ((700.0, 130.0), (1800.0, 200.0)):  # formant resonators
        r = np.exp(-np.pi * bw / RATE)
        a1, a2 = -2 * r * np.cos(2 * np.pi * fc / RATE), r * r
        y = np.zeros_like(x)
        for i in range(2, n):
            y[i] = x[i] - a1 * y[i - 1] - a2 * y[i - 2]
        x = x + 0.5 * y / (np.abs(y).max() + 1e-9) * np.abs(x).max()
    return (x / (np.abs(x).max() + 1e-9) * 8000).astype(np.int16)


def line_noise(n: int, dbfs: float, *, seed: int) -> npt.NDArray[np.float64]:
    """White noise at ``dbfs`` RMS: the hiss of a telephone line."""
    return np.random.default_rng(seed).normal(0, 32768 * 10 ** (dbfs / 20), n)


def dialogue(
    seconds: float,
    *,
    noise_dbfs: float = -50.0,
    seed: int = 1,
    sentences: tuple[str, ...] = SENTENCES,
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """Two legs taking turns (agent first), 0.4-1.2 s pauses, a noisy line on both."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    legs = [np.zeros(n), np.zeros(n)]
    voices = [("en-us", 150, 40), ("en-gb", 170, 70)]
    cache: dict[tuple[int, int], npt.NDArray[np.int16]] = {}
    pos, turn, k = int(0.5 * RATE), 0, 0
    while pos < n:
        key = (k % len(sentences), turn)
        if key not in cache:
            v, s, p = voices[turn]
            cache[key] = speech(sentences[key[0]], voice=v, speed=s, pitch=p, seed=k)
        utt = cache[key][: n - pos]
        legs[turn][pos : pos + len(utt)] += utt
        pos += len(utt) + int(rng.uniform(0.4, 1.2) * RATE)
        turn, k = 1 - turn, k + 1
    out = []
    for i, leg in enumerate(legs):
        leg += line_noise(n, noise_dbfs, seed=seed * 10 + i)
        out.append(np.clip(np.rint(leg), -32768, 32767).astype(np.int16))
    return out[0], out[1]


@dataclass(frozen=True)
class LegPlan:
    """How one leg is sent as RTP: the impairments a real network adds."""

    law: int = PT_PCMU
    ptime_ms: int = 20
    ssrc: int = 0x1234
    jitter_ms: float = 5.0  # standard deviation of the one-way delay variation
    loss_bursts: tuple[tuple[float, int], ...] = ()  # (at seconds, packets lost)
    ssrc_change_at: float | None = None  # seconds: new SSRC, seq and timestamp bases
    dtmf: tuple[tuple[float, str], ...] = ()  # (at seconds, digit) as RFC 4733 events
    start_offset_ms: float = 0.0  # first packet's delay after the call start
    reorder: float = 0.0  # share of packets held back 1.2-3 packet times (arrive out of order)
    src: tuple[str, int] = ("10.0.0.1", 40000)
    dst: tuple[str, int] = ("10.0.0.2", 50000)


EVENT_CODES = {
    **{str(d): d for d in range(10)},
    "*": 10,
    "#": 11,
    "A": 12,
    "B": 13,
    "C": 14,
    "D": 15,
}


def rtp_packets(
    pcm: npt.NDArray[np.int16], plan: LegPlan, *, t0: float, seed: int
) -> list[tuple[float, bytes]]:
    """(arrival time in seconds, RTP packet) for one leg, in arrival order.

    RFC 4733 digits replace the audio packets of their 100 ms (as PBXs do):
    five updates 20 ms apart, then the end packet sent three times."""
    from callvault import _g711

    rng = np.random.default_rng(seed)
    spp = plan.ptime_ms * RATE // 1000  # samples per packet
    payload = _g711.encode(np.ascontiguousarray(pcm), plan.law)
    lost: set[int] = set()
    for at, count in plan.loss_bursts:
        first = int(at * 1000 / plan.ptime_ms)
        lost.update(range(first, first + count))
    event_at = {int(at * RATE) // spp: d for at, d in plan.dtmf}
    change = -1 if plan.ssrc_change_at is None else int(plan.ssrc_change_at * RATE) // spp
    ssrc, seq, ts0 = plan.ssrc, int(rng.integers(0, 65536)), int(rng.integers(0, 2**32))
    base = 0  # sample index where the current SSRC's timestamps start at ts0
    event_until = -1  # sample index where the digit in progress ends
    out: list[tuple[float, bytes]] = []

    def send(at_s: float, pkt: bytes) -> None:
        delay = 0.010 + abs(rng.normal(0, plan.jitter_ms / 1000))
        if plan.reorder and rng.random() < plan.reorder:
            delay += rng.uniform(1.2, 3.0) * plan.ptime_ms / 1000
        out.append((at_s + delay, pkt))

    for i in range(len(payload) // spp):
        sample = i * spp
        if i == change:
            ssrc ^= 0x5A5A5A5A
            seq, ts0 = int(rng.integers(0, 65536)), int(rng.integers(0, 2**32))
            base = sample
        t_send = t0 + plan.start_offset_ms / 1000 + sample / RATE
        ts = (ts0 + sample - base) & 0xFFFFFFFF
        if i in event_at:
            code = EVENT_CODES[event_at[i]]
            for k in range(8):
                dur = min(k + 1, 5) * FRAME_SAMPLES
                body = telephone_event(code, end=k >= 4, volume=10, duration=dur)
                send(
                    t_send + min(k, 4) * (FRAME_MS / 1000) + max(0, k - 4) * 0.001,
                    build_packet(PT_TELEPHONE_EVENT, seq, ts, ssrc, body, marker=k == 0),
                )
                seq = (seq + 1) & 0xFFFF
            event_until = sample + 5 * FRAME_SAMPLES
        if sample < event_until:
            continue
        if i not in lost:
            send(
                t_send,
                build_packet(
                    plan.law, seq, ts, ssrc, payload[sample : sample + spp], marker=i in (0, change)
                ),
            )
        seq = (seq + 1) & 0xFFFF
    out.sort(key=lambda ap: ap[0])
    return out


def _ipv4_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0xB8,
        20 + len(udp),
        0,
        0x4000,
        64,
        17,
        0,
        bytes(map(int, src[0].split("."))),
        bytes(map(int, dst[0].split("."))),
    )
    words = struct.unpack("!10H", hdr)
    csum = sum(words)
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + udp


Datagram = tuple[float, tuple[str, int], tuple[str, int], bytes]  # (arrival s, src, dst, payload)


def write_udp_capture(path: str | Path, datagrams: list[Datagram], *, pcapng: bool = False) -> None:
    """Write UDP datagrams over Ethernet/IPv4 in the order given."""
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    with open(path, "wb") as f:
        writer = dpkt.pcapng.Writer(f) if pcapng else dpkt.pcap.Writer(f, nano=False)
        for arrival, src, dst, payload in datagrams:
            writer.writepkt(eth + _ipv4_udp(src, dst, payload), ts=arrival)


def write_capture(
    path: str | Path,
    legs: list[tuple[npt.NDArray[np.int16], LegPlan]],
    *,
    t0: float = 1_700_000_000.0,
    seed: int = 7,
    pcapng: bool = False,
) -> int:
    """Write the legs as RTP over Ethernet/IPv4/UDP; returns the packet count."""
    datagrams: list[Datagram] = []
    for n, (pcm, plan) in enumerate(legs):
        datagrams.extend(
            (a, plan.src, plan.dst, p) for a, p in rtp_packets(pcm, plan, t0=t0, seed=seed + n)
        )
    datagrams.sort(key=lambda x: x[0])
    write_udp_capture(path, datagrams, pcapng=pcapng)
    return len(datagrams)


def demo_legs(seconds: float = 30.0) -> list[tuple[npt.NDArray[np.int16], LegPlan]]:
    """The demo call's two legs (agent, customer) and how each is sent: agent PCMU
    20 ms, customer PCMA 30 ms with an SSRC change, jitter, two loss bursts and two
    RFC 4733 digits."""
    agent, customer = dialogue(seconds)
    return [
        (
            agent,
            LegPlan(
                law=PT_PCMU,
                ptime_ms=20,
                ssrc=0x1A2B3C4D,
                jitter_ms=8,
                loss_bursts=((7.0, 1), (12.5, 4)),
                dtmf=((20.0, "4"), (20.5, "2")),
                src=("10.0.0.1", 40000),
                dst=("10.0.0.2", 50000),
            ),
        ),
        (
            customer,
            LegPlan(
                law=PT_PCMA,
                ptime_ms=30,
                ssrc=0x5E6F7081,
                jitter_ms=12,
                loss_bursts=((15.0, 2),),
                ssrc_change_at=18.0,
                start_offset_ms=5,
                src=("10.0.0.2", 50002),
                dst=("10.0.0.1", 40002),
            ),
        ),
    ]


def demo_capture(path: str | Path, seconds: float = 30.0, *, pcapng: bool = False) -> int:
    """The call `make run` transcodes: a dialogue with the usual network troubles
    (demo_legs); returns the packet count."""
    return write_capture(path, demo_legs(seconds), pcapng=pcapng)

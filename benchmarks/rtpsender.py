"""RTP sender for benchmarks/bench_realpath.py: phones sending 20 ms PCMU over UDP.

    python -m benchmarks.rtpsender SPEC.json      (one process for every leg of a level)

SPEC (JSON): host, legs (a list of [call index, UDP port], two per call, in
call order), seconds (call length), audio (a file of two mu-law legs back to
back, ``leg_bytes`` each), seed.

Protocol on stdin/stdout: once every leg's packets are built and its socket is
connected the process prints ``ready``; it then reads one line from stdin, the
wall-clock instant (seconds since the epoch) at which it starts, sends every
leg's packets, and prints one JSON line of results (see ``run``).

What a leg sends: seconds x 50 RTP packets of 172 bytes (12-byte header, V=2,
PT 0, marker on the first packet, + 160 bytes of mu-law), from its own UDP
socket (its own source port, as a phone), with its own random SSRC, sequence
and timestamp origins. Packet k of leg j (of L legs) is due at
start + j/L x 20 ms + k x 20 ms: the legs are staggered evenly over the 20 ms
as independent phones are. Leg 0 of a call plays the dialogue's first leg,
leg 1 its second, from offset call x 3.3 s (wrapping around), so the calls
are not all in speech or all in a pause at once.

Measured here: packets sent per leg, how late each packet went out against its
due instant (monotonic clock), and the process's CPU time while sending.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
HEADER = 12
PACKET = HEADER + FRAME_BYTES
FRAME_S = 0.020
OFFSET_STEP = int(3.3 * 8000)  # bytes of audio between consecutive calls' starting points


def leg_packets(
    audio: npt.NDArray[np.uint8], offset: int, frames: int, rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    """``frames`` RTP packets (one row each) of ``audio`` from ``offset`` (wrapping),
    with random SSRC, sequence and timestamp origins."""
    ssrc = int(rng.integers(1, 2**32))
    seq0 = int(rng.integers(0, 2**16))
    ts0 = int(rng.integers(0, 2**32))
    k = np.arange(frames, dtype=np.uint64)
    seq = ((seq0 + k) & 0xFFFF).astype(">u2")
    ts = ((ts0 + k * FRAME_BYTES) & 0xFFFFFFFF).astype(">u4")
    out = np.empty((frames, PACKET), dtype=np.uint8)
    out[:, 0] = 0x80
    out[:, 1] = 0  # PT 0 (PCMU)
    out[0, 1] = 0x80  # marker: the first packet of a talkspurt
    out[:, 2:4] = seq.view(np.uint8).reshape(frames, 2)
    out[:, 4:8] = ts.view(np.uint8).reshape(frames, 4)
    out[:, 8:12] = np.frombuffer(ssrc.to_bytes(4, "big"), dtype=np.uint8)
    idx = (offset + np.arange(frames * FRAME_BYTES)) % len(audio)
    out[:, HEADER:] = audio[idx].reshape(frames, FRAME_BYTES)
    return out


def run(spec: dict[str, Any]) -> dict[str, Any]:
    seconds = float(spec["seconds"])
    frames = round(seconds / FRAME_S)
    raw = np.frombuffer(Path(spec["audio"]).read_bytes(), dtype=np.uint8)
    n = int(spec["leg_bytes"])
    sources = (raw[:n], raw[n : 2 * n])
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    legs: list[tuple[int, int]] = [(int(c), int(p)) for c, p in spec["legs"]]
    host = str(spec["host"])
    socks: list[socket.socket] = []
    packets: list[npt.NDArray[np.uint8]] = []
    seen: dict[int, int] = {}
    for call, port in legs:
        which = seen.get(call, 0)
        seen[call] = which + 1
        packets.append(leg_packets(sources[which % 2], call * OFFSET_STEP, frames, rng))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.connect((host, port))
        socks.append(s)
    print("ready", flush=True)
    start_wall = float(sys.stdin.readline())
    start = time.monotonic() + (start_wall - time.time())
    nlegs = len(legs)
    offsets = [j * FRAME_S / nlegs for j in range(nlegs)]
    lags = np.empty(frames * nlegs, dtype=np.float64)
    sent = [0] * nlegs
    errors = 0
    while time.monotonic() < start:
        time.sleep(max(0.0, min(0.05, start - time.monotonic())))
    cpu0 = time.process_time()
    i = 0
    for k in range(frames):
        base = start + k * FRAME_S
        for j in range(nlegs):
            due = base + offsets[j]
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
                now = time.monotonic()
            try:
                socks[j].send(packets[j][k].data)
                sent[j] += 1
            except OSError:
                errors += 1
            lags[i] = now - due
            i += 1
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - start
    for s in socks:
        s.close()
    return {
        "legs": nlegs,
        "frames_per_leg": frames,
        "sent": sent,
        "send_errors": errors,
        "lag_p50_s": float(np.percentile(lags, 50)),
        "lag_p99_s": float(np.percentile(lags, 99)),
        "lag_max_s": float(lags.max()),
        "cpu_s": cpu,
        "wall_s": wall,
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(run(spec)), flush=True)


if __name__ == "__main__":
    main()

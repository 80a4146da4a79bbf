"""Load generator for benchmarks/bench_server.py: real-time dual-track calls over gRPC.

    python -m benchmarks.loadgen SPEC.json      (one process; bench_server.py starts several)

SPEC (JSON): address, call_ids (this process's calls), index0 and total (this
process's first call's index among all calls, and how many calls all the
generators stream, for the staggering), seconds (call length), batch_ms
(packets per batch x 20 ms), audio (a file of two mu-law legs back to back,
``leg_bytes`` each).

Protocol on stdin/stdout: once its calls' packets are built and its channel is
connected the process prints ``ready``; it then reads one line from stdin, the
wall-clock instant (seconds since the epoch) at which every generator starts,
streams, ends every call, and prints one JSON line of results (see ``run``).

What a call sends: two legs ("agent", "customer") of 20 ms PCMU packets, each
leg its own SSRC, sequence and timestamp; packet k of a call "arrives" at
t0 + (k + 1) x 20 ms (when its last sample has been captured), where t0 is the
common start plus the call's stagger (call i of N starts i/N of a batch
interval later, as independent calls are not aligned). Every batch_ms, once
the wall clock reaches the arrival of a batch's last packet, both legs' batches
are handed to the SDK (`callvault_client.Recording.send`, which queues them on
the call's Ingest stream without blocking); the packets' arrival_us are those
scheduled instants, as a sidecar would stamp packets paced by the sender. Call
i plays the shared audio from offset i x 3.3 s (wrapping around), so the calls
are not all in speech or all in a pause at once.

Measured here: every batch's acknowledgement latency (the SDK's AckEvent:
first Ack covering its seq received - send() called, monotonic clock), how
late the generator was against the schedule (send instant - due instant, per
batch pair), the generator's CPU time while streaming, and each call's Sealed.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callvault_client import Client
from callvault_client.recording import AckEvent, Recording

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_US = 20_000
PT_PCMU = 0
OFFSET_STEP = 3.3 * 8000  # bytes of audio between consecutive calls' starting points


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, marker: bool) -> bytes:
    """A 12-byte RTP header (RFC 3550: V=2, no padding/extension/CSRC) + payload."""
    return (
        struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | PT_PCMU, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
        )
        + payload
    )


@dataclass
class Call:
    call_id: str
    stagger: float  # seconds after the common start
    legs: list[list[bytes]]  # per leg: its packets in order
    rec: Recording | None = None
    latencies: list[float] = field(default_factory=list)
    sent: int = 0

    def on_ack(self, ev: AckEvent) -> None:
        self.latencies.append(ev.latency)


def build_call(
    call_id: str, index: int, total: int, seconds: float, batch_s: float, audio: list[bytes]
) -> Call:
    frames = round(seconds * 50)
    legs: list[list[bytes]] = []
    for leg, pcm in enumerate(audio):
        off = int(index * OFFSET_STEP) // FRAME_BYTES * FRAME_BYTES % len(pcm)
        ring = pcm[off:] + pcm[:off]
        while len(ring) < frames * FRAME_BYTES:
            ring += ring
        ssrc = (0x10000000 + index * 2 + leg) & 0xFFFFFFFF
        seq0 = (index * 7919 + leg * 104729) & 0xFFFF
        ts0 = (index * 2654435761 + leg * 40503) & 0xFFFFFFFF
        legs.append(
            [
                rtp(
                    seq0 + k,
                    ts0 + k * FRAME_BYTES,
                    ssrc,
                    ring[k * FRAME_BYTES : (k + 1) * FRAME_BYTES],
                    k == 0,
                )
                for k in range(frames)
            ]
        )
    return Call(call_id, index / total * batch_s, legs)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run(spec: dict[str, Any]) -> dict[str, Any]:
    seconds = float(spec["seconds"])
    batch_ms = int(spec["batch_ms"])
    if batch_ms % 20:
        raise ValueError("batch_ms must be a multiple of 20 ms")
    per_batch = batch_ms // 20
    batch_s = batch_ms / 1000
    raw = Path(spec["audio"]).read_bytes()
    leg_bytes = int(spec["leg_bytes"])
    audio = [raw[:leg_bytes], raw[leg_bytes : 2 * leg_bytes]]
    calls = [
        build_call(cid, int(spec["index0"]) + i, int(spec["total"]), seconds, batch_s, audio)
        for i, cid in enumerate(spec["call_ids"])
    ]
    frames = len(calls[0].legs[0])
    nbatches = -(-frames // per_batch)
    client = Client(spec["address"], timeout=60.0)
    client.wait_ready(30.0)
    print("ready", flush=True)
    start = float(sys.stdin.readline())

    errors: list[str] = []
    lags: list[float] = []
    cpu0 = cpu_seconds()
    wall0 = time.time()
    # Start each call's stream shortly before its first batch is due.
    for c in calls:
        c.rec = client.record(
            c.call_id, ("agent", "customer"), on_ack=c.on_ack, reconnect_timeout=None
        )
    # The schedule: every batch interval, each call (in stagger order) sends both legs.
    order = sorted(calls, key=lambda c: c.stagger)
    mono_start = time.monotonic() + (start - time.time())
    for j in range(nbatches):
        lo, hi = j * per_batch, min((j + 1) * per_batch, frames)
        for c in order:
            due_mono = mono_start + c.stagger + hi * 0.020
            delay = due_mono - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            lags.append(time.monotonic() - due_mono)
            arrivals = [int((start + c.stagger + (k + 1) * 0.020) * 1e6) for k in range(lo, hi)]
            assert c.rec is not None
            for leg in (0, 1):
                pk = c.legs[leg][lo:hi]
                try:
                    c.rec.send(leg, b"".join(pk), [len(p) for p in pk], arrivals)
                    c.sent += 1
                except Exception as e:  # the stream failed: the level fails, keep pacing
                    errors.append(f"{c.call_id}: send: {type(e).__name__}: {e}")
    stream_end = time.time()
    cpu_stream = cpu_seconds() - cpu0

    sealed: dict[str, dict[str, int]] = {}
    lock = threading.Lock()

    def finish(c: Call) -> None:
        assert c.rec is not None
        try:
            s = c.rec.end(timeout=float(spec.get("seal_timeout", 60.0)))
            with lock:
                sealed[c.call_id] = {"frames": int(s.frames), "acked": c.rec.acks.seq + 1}
        except Exception as e:
            with lock:
                errors.append(f"{c.call_id}: end: {type(e).__name__}: {e}")
            c.rec.cancel()

    with ThreadPoolExecutor(max_workers=min(64, len(calls))) as pool:
        list(pool.map(finish, calls))
    done = time.time()
    client.close()
    return {
        "calls": len(calls),
        "frames_per_leg": frames,
        "batches_per_call": 2 * nbatches,
        "sent": sum(c.sent for c in calls),
        "latencies": [round(x, 5) for c in calls for x in c.latencies],
        "lags": [round(x, 5) for x in lags],
        "sealed": sealed,
        "errors": errors[:20],
        "error_count": len(errors),
        "stream_wall_s": stream_end - wall0,
        "cpu_stream_s": cpu_stream,
        "cpu_total_s": cpu_seconds(),
        "seal_wait_s": done - stream_end,
    }


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = run(spec)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real RTP peer: two ffmpeg processes send G.711 legs over loopback UDP; the
datagrams are captured with their arrival times into a pcap, which
`callvault transcode` turns into a dual-track Ogg Opus file.

ffmpeg's RTP muxer packs PCMU into ~1460-byte packets (182 ms) sent in bursts,
so this also exercises repacking of large packets and bursty arrival.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from callvault.media import wav
from callvault.media.sample import Datagram, write_udp_capture
from tests.cli.test_cli_transcode import burst_onsets, clicks, decode_ffmpeg, ffprobe

SECONDS = 6.0
AGENT_CLICKS = [1.0, 2.5, 4.0]
CUSTOMER_CLICKS = [1.5, 3.0, 5.0]


class Receiver(threading.Thread):
    """Collect datagrams on a loopback port with their arrival times."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.got: list[Datagram] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            self.got.append((time.time(), (addr[0], addr[1]), ("127.0.0.1", self.port), data))
        self.sock.close()


def test_two_ffmpeg_senders_recorded_aligned(tmp_path: Path) -> None:
    legs = {
        "agent": (clicks(SECONDS, AGENT_CLICKS), "pcm_mulaw"),
        "customer": (clicks(SECONDS, CUSTOMER_CLICKS, hz=700.0), "pcm_alaw"),
    }
    receivers, senders = [], []
    for name, (pcm, codec) in legs.items():
        wav.write(tmp_path / f"{name}.wav", [pcm.astype(np.int16)])
        r = Receiver()
        r.start()
        receivers.append(r)
        if name == "agent":
            agent_rx = r
        senders.append(
            subprocess.Popen(
                [
                    "ffmpeg",
                    "-v",
                    "error",
                    "-re",
                    "-i",
                    str(tmp_path / f"{name}.wav"),
                    "-c:a",
                    codec,
                    "-f",
                    "rtp",
                    f"rtp://127.0.0.1:{r.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for s in senders:
            assert s.wait(timeout=60) == 0
    finally:
        for s in senders:
            s.kill()
        time.sleep(0.3)
        for r in receivers:
            r.stop.set()
            r.join()
    datagrams = sorted(receivers[0].got + receivers[1].got, key=lambda d: d[0])
    assert receivers[0].got and receivers[1].got
    cap = tmp_path / "loopback.pcap"
    write_udp_capture(cap, datagrams)

    out = tmp_path / "call.ogg"
    p = subprocess.run(
        [sys.executable, "-m", "callvault.cli", "transcode", str(cap), "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["channels"] == ["agent", "customer"]  # stream order: first seen, first
    for leg in summary["legs"]:
        assert leg["lost"] == 0 and leg["malformed"] == 0

    probe = ffprobe(out)
    assert probe["streams"][0]["channels"] == 2
    # The first stream seen is channel 0 (agent), whichever ffmpeg started first.
    receivers.sort(key=lambda r: r.got[0][0])
    clicks_at = [AGENT_CLICKS if r is agent_rx else CUSTOMER_CLICKS for r in receivers]
    # When each leg's first sample was captured: ffmpeg sends blocks of audio
    # ahead of time, so take the earliest over its first 300 ms of packets of
    # (arrival - RTP time from the first sample to the packet's last sample).
    starts = []
    for r in receivers:
        ts0 = struct.unpack_from("!I", r.got[0][3], 4)[0]
        bounds = []
        for at, _, _, pkt in r.got:
            if at - r.got[0][0] > 0.3:
                break
            ts = struct.unpack_from("!I", pkt, 4)[0]
            bounds.append(at - (ts - ts0 + len(pkt) - 12) / 8000)
        starts.append(min(bounds))
    call_start = min(starts)
    # The recording lasts from the first sample of the earliest leg to the last
    # sample of the latest, within 40 ms.
    duration = float(probe["format"]["duration"])
    sent = max(s - call_start + SECONDS for s in starts)
    assert abs(duration - sent) <= 0.040, (duration, sent)

    pcm = decode_ffmpeg(out)
    for ch in range(2):
        got = burst_onsets(pcm[:, ch])
        assert len(got) == len(clicks_at[ch]), (ch, got)
        for g, at in zip(got, clicks_at[ch], strict=True):
            # each leg's audio sits where its own packets placed it, within 20 ms
            assert abs(g - (starts[ch] - call_start + at)) <= 0.020, (ch, g, at)

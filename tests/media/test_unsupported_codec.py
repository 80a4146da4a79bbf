"""Audio in a codec callvault does not record is loud in the sealed leg summary (issue 9, 2).

The leg pipeline's summary (docs/format.md 8.6): frames in an unsupported payload type
are gaps of their own reason with the payload type, counted in ``unsupported_codec``,
and not in ``lost``; a leg that was entirely unsupported has a reason sentence.
"""

from __future__ import annotations

import random

import numpy as np

from callvault.media.pipeline import LegPipeline, Settings, leg_unsupported_reason
from callvault.media.rtppack import PT_PCMU, build_packet, pack_batch
from tests.rtpstreams import FRAME, Sender, Sent, network


def send(s: Sender, pt: int, packets: int) -> None:
    s.pt = pt
    for _ in range(packets):
        s.audio(bytes(random.Random(len(s.out)).randrange(1, 0x3F) for _ in range(FRAME)))


def leg(sender: Sender, *, drop: tuple[int, ...] = ()) -> dict:
    pkts = network(sender.out, random.Random(1), base_us=0, steady_first=True, drop=drop)
    pipe = LegPipeline("agent", "test", Settings(), encode=False)
    data, offs, lens = pack_batch([p.data for p in pkts])
    pipe.push_rtp(data, offs, lens, np.array([p.arrival_us for p in pkts], dtype=np.int64))
    return pipe.finish().summary()


def test_g722_run_is_an_unsupported_codec_gap_not_silence_or_loss() -> None:
    s = Sender()
    send(s, PT_PCMU, 50)
    send(s, 9, 50)  # G.722: one byte per 8 kHz RTP tick
    send(s, PT_PCMU, 50)
    summary = leg(s, drop=(120,))  # and one PCMU packet lost after the G.722 run
    assert summary["frames"] == 150
    reasons = [(g["reason"], g["start_frame"]) for g in summary["gaps"]]
    assert reasons == [("unsupported_codec", 50), ("lost", 120)]
    g722 = summary["gaps"][0]
    assert g722["frames"] == 50 and g722["payload_type"] == 9
    assert summary["lost"] == sum(g["frames"] for g in summary["gaps"] if g["reason"] == "lost")
    assert 1 <= summary["lost"] <= 2
    assert summary["unsupported_codec"] == {"frames": 50, "packets": 50, "payload_types": [9]}
    assert summary["rtp"]["unsupported_frames"] == 50
    assert leg_unsupported_reason(summary) is None  # it had G.711 audio too


def test_leg_entirely_in_an_unsupported_codec_has_a_reason() -> None:
    s = Sender()
    send(s, 9, 100)
    summary = leg(s)
    assert summary["unsupported_codec"] == {"frames": 100, "packets": 100, "payload_types": [9]}
    assert summary["lost"] == 0 and summary["level"]["peak"] == 0
    reason = leg_unsupported_reason(summary)
    assert reason is not None
    assert "leg agent" in reason and "payload type 9" in reason and "G.711" in reason


def test_clean_g711_leg_has_no_unsupported_codec() -> None:
    s = Sender()
    send(s, PT_PCMU, 20)
    summary = leg(s)
    assert summary["gaps"] == [] and summary["lost"] == 0
    assert summary["unsupported_codec"] == {"frames": 0, "packets": 0, "payload_types": []}
    assert leg_unsupported_reason(summary) is None


def test_unsupported_packets_built_by_hand_are_counted() -> None:
    """A dynamic payload type (Opus RTP, 96) lasts a frame a packet on the timeline."""
    s = Sender()
    send(s, PT_PCMU, 10)
    for k in range(10):
        seq, ts = s._next()
        s._advance(FRAME)
        s.ts = (s.ts + FRAME) & 0xFFFFFFFF
        s.out.append(Sent(build_packet(96, seq, ts, s.ssrc, b"\x78" * (30 + k)), round(s.t_us)))
    summary = leg(s)
    assert summary["unsupported_codec"] == {"frames": 10, "packets": 10, "payload_types": [96]}

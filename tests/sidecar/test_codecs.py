"""Payload types per leg on the sidecar (issue 9, section 2): a real Receiver over real
UDP sockets and spools counts each leg's kept packets by payload type; a leg whose
packets were all in a codec callvault does not record says so, in a sentence, in
StopCallReply / SidecarCall (``codec_problem``), while a leg with recorded audio (or
only comfort noise and telephone events) has none."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from callvault.media.jitter_ref import DECODERS
from callvault.rtpdefs import PT_CN
from callvault.sidecar.call import RECORDED_PTS, payload_type_name, payload_types
from tests.sidecar.rxkit import new_call, receiver, rtp, sender, spooled, wait_for


def test_recorded_payload_types_are_the_jitter_buffers_decoders_and_comfort_noise() -> None:
    assert frozenset(DECODERS) <= RECORDED_PTS and PT_CN in RECORDED_PTS
    assert sorted(RECORDED_PTS) == [0, 8, 13]
    assert payload_type_name(9) == "9: G.722"
    assert payload_type_name(111) == "111: dynamic"
    assert payload_type_name(40) == "40: unassigned"


def test_payload_types_reads_each_packets_second_byte() -> None:
    pkts = [rtp(1, 1, pt=9), rtp(2, 1, pt=9, marker=1), rtp(3, 1, b"\x01\x02", pt=0)]
    counts = payload_types(b"".join(pkts), np.array([len(p) for p in pkts], np.int32))
    assert counts.shape == (128,) and counts[9] == 2 and counts[0] == 1 and counts.sum() == 3


def _send(call_port: int, packets: list[bytes]) -> None:
    s = sender()
    try:
        for p in packets:
            s.sendto(p, ("127.0.0.1", call_port))
            time.sleep(0.001)
    finally:
        s.close()


def test_a_leg_entirely_in_an_unsupported_codec_is_named(tmp_path: Path) -> None:
    call = new_call(tmp_path, "G", legs=2)
    g722 = [rtp(seq, 0xA, pt=9) for seq in range(40)]
    pcmu = [rtp(seq, 0xB) for seq in range(30)]
    with receiver() as rx:
        rx.add(call)
        _send(call.legs[0].port, g722)
        _send(call.legs[1].port, pcmu)
        wait_for(lambda: len(spooled(call, 0)) == 40, "the G.722 packets spooled")
        wait_for(lambda: len(spooled(call, 1)) == 30, "the PCMU packets spooled")
        rx.stop_call(call)
    g, p = call.describe().legs
    assert (g.name, g.recorded_packets, dict(g.unsupported_packets)) == ("leg0", 0, {9: 40})
    assert (p.name, p.recorded_packets, dict(p.unsupported_packets)) == ("leg1", 30, {})
    assert call.codec_problem() == (
        "leg leg0: every packet was in a codec callvault does not record "
        "(payload type 9: G.722); nothing of this leg is recorded"
    )
    assert call.describe().codec_problem == call.codec_problem()
    assert call.codec_warned


def test_recorded_audio_comfort_noise_or_events_make_no_codec_problem(tmp_path: Path) -> None:
    call = new_call(tmp_path, "M", legs=2)
    # leg 0: mostly G.729, some PCMU: partly recorded, the G.729 packets still counted
    mixed = [rtp(seq, 0xA, pt=18 if seq % 4 else 0) for seq in range(40)]
    # leg 1: comfort noise and telephone events (101) only: recorded payload types
    quiet = [rtp(0, 0xB, b"\x40", pt=PT_CN)] + [
        rtp(seq, 0xB, b"\x01\x0a\x00\xa0", pt=101) for seq in range(1, 20)
    ]
    with receiver() as rx:
        rx.add(call)
        _send(call.legs[0].port, mixed)
        _send(call.legs[1].port, quiet)
        wait_for(lambda: len(spooled(call, 0)) == 40, "leg 0 spooled")
        wait_for(lambda: len(spooled(call, 1)) == 20, "leg 1 spooled")
        rx.stop_call(call)
    a, b = call.describe().legs
    assert (a.recorded_packets, dict(a.unsupported_packets)) == (10, {18: 30})
    assert (b.recorded_packets, dict(b.unsupported_packets)) == (20, {})
    assert call.codec_problem() == "" and call.describe().codec_problem == ""
    assert call.codec_warned  # the G.729 packets were logged all the same


def test_a_leg_that_received_nothing_has_no_codec_problem(tmp_path: Path) -> None:
    call = new_call(tmp_path, "E", legs=1)
    with receiver() as rx:
        rx.add(call)
        rx.stop_call(call)
    (leg,) = call.describe().legs
    assert (leg.recorded_packets, dict(leg.unsupported_packets)) == (0, {})
    assert call.codec_problem() == "" and not call.codec_warned

"""RTP parse and the per-leg jitter buffer (callvault._rtp and its twin callvault.media.jitter_ref).

One named test per behaviour of the timeline model described in ext/_rtp.pyx.
Most tests run against both implementations (the ``impl`` fixture).
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from callvault import _g711, _rtp
from callvault.media import jitter_ref
from callvault.media.rtppack import PT_PCMA, PT_PCMU, build_packet, pack_batch, telephone_event
from tests.rtpstreams import (
    FRAME,
    Arrived,
    Result,
    Sender,
    Sent,
    check_accounting,
    check_frames,
    network,
    run,
)

AUDIO, LOST, SILENCE = _rtp.FRAME_AUDIO, _rtp.FRAME_LOST, _rtp.FRAME_SILENCE
UNSUPPORTED = _rtp.FRAME_UNSUPPORTED


@pytest.fixture(params=[_rtp, jitter_ref], ids=["cython", "reference"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def feed(
    impl: ModuleType,
    packets: list[Arrived],
    *,
    end_us: int | None = None,
    batch: int = 25,
    **opts: Any,
) -> Result:
    jb = impl.JitterBuffer(call_start_us=opts.pop("call_start_us", 0), **opts)
    r = run(jb, packets, batch_sizes=[batch], end_us=end_us)
    check_frames(r)
    check_accounting(r.stats)
    return r


def ramp_payload(k: int, n: int = FRAME) -> bytes:
    """Distinct mu-law bytes per packet so misplaced audio shows."""
    return bytes(((k * 7 + j) % 120) + 1 for j in range(n))


def talk(s: Sender, n: int, ptime: int = FRAME, start: int = 0) -> None:
    for k in range(start, start + n):
        s.audio(ramp_payload(k, ptime))


def deliver(s: Sender, **kw: Any) -> list[Arrived]:
    kw.setdefault("base_us", 0)
    kw.setdefault("steady_first", True)
    return network(s.out, random.Random(1), **kw)


def decoded(payloads: list[bytes], law: int = PT_PCMU) -> np.ndarray:
    return _g711.decode(b"".join(payloads), law)


def flat(r: Result) -> np.ndarray:
    return r.pcm.reshape(-1)


# -- RFC 3550 header -----------------------------------------------------------


def test_parse_header_fields_with_csrc_extension_and_padding(impl: ModuleType) -> None:
    p = build_packet(
        8,
        65535,
        0xFFFFFFFE,
        0xDEADBEEF,
        b"abcdef",
        marker=True,
        csrcs=[1, 2, 3],
        extension=(0xBEDE, b"12345678"),
        padding=5,
    )
    data, offs, lens = pack_batch([b"xx" + p[:0], p])
    out = impl.parse(data, offs, lens)
    assert out.valid.tolist() == [False, True]
    assert int(out.reason[1]) == 0
    assert int(out.reason[0]) == 1 + impl.MALFORMED_REASONS.index("too_short")
    assert bool(out.marker[1]) and int(out.pt[1]) == 8
    assert int(out.seq[1]) == 65535 and int(out.ts[1]) == 0xFFFFFFFE
    assert int(out.ssrc[1]) == 0xDEADBEEF
    off = int(out.payload_offset[1])
    assert data[off : off + int(out.payload_length[1])] == b"abcdef"


MALFORMED_CASES = {
    "too_short": build_packet(0, 1, 1, 1, b"x")[:11],
    "bad_version": bytes([0x40]) + build_packet(0, 1, 1, 1, b"xx")[1:],
    "bad_csrc": bytes([0x83]) + build_packet(0, 1, 1, 1, b"abcdefgh")[1:],
    "bad_extension": (lambda p: p[:14] + b"\x00\x09" + p[16:])(
        build_packet(0, 1, 1, 1, b"xy", extension=(1, b"abcd"))
    ),
    "bad_padding": build_packet(0, 1, 1, 1, b"abc", padding=2)[:-1] + b"\x09",
    "empty_payload": build_packet(0, 1, 1, 1, b""),
    "bad_event": build_packet(101, 1, 1, 1, b"\x01\x02"),
}


@pytest.mark.parametrize("reason", list(MALFORMED_CASES))
def test_malformed_packet_counted_by_reason_and_dropped(impl: ModuleType, reason: str) -> None:
    good = build_packet(0, 2, 160, 1, b"\x10" * 160)
    pkts = [Arrived(MALFORMED_CASES[reason], 10_000, "bad"), Arrived(good, 40_000, "audio")]
    r = feed(impl, pkts, end_us=60_000)
    assert r.stats["malformed"] == 1 and r.stats[f"malformed_{reason}"] == 1
    assert r.stats["audio_packets"] == 1
    if reason != "bad_event":
        parsed = impl.parse(*pack_batch([MALFORMED_CASES[reason]]))
        assert int(parsed.reason[0]) == 1 + impl.MALFORMED_REASONS.index(reason)
        assert not bool(parsed.valid[0])


def test_padding_zero_count_is_malformed(impl: ModuleType) -> None:
    p = build_packet(0, 1, 1, 1, b"abc", padding=1)[:-1] + b"\x00"
    out = impl.parse(*pack_batch([p]))
    assert int(out.reason[0]) == 1 + impl.MALFORMED_REASONS.index("bad_padding")


def test_input_mismatched_array_lengths_raise(impl: ModuleType) -> None:
    jb = impl.JitterBuffer(call_start_us=0)
    with pytest.raises(ValueError, match="arrival_us has 1 entries but offsets has 2"):
        jb.push(b"\x00" * 24, np.array([0, 12]), np.array([12, 12], dtype=np.int32), np.array([0]))
    with pytest.raises(ValueError, match="offsets has 2 entries but lengths has 1"):
        impl.parse(b"\x00" * 24, np.array([0, 12]), np.array([12], dtype=np.int32))


def test_input_packet_outside_buffer_raises(impl: ModuleType) -> None:
    jb = impl.JitterBuffer(call_start_us=0)
    with pytest.raises(ValueError, match="packet 1: offset 20 \\+ length 12 runs past the end"):
        jb.push(
            b"\x00" * 24, np.array([0, 20]), np.array([12, 12], dtype=np.int32), np.array([0, 0])
        )
    with pytest.raises(ValueError, match="negative offset"):
        impl.parse(b"\x00" * 24, np.array([-1]), np.array([12], dtype=np.int32))
    with pytest.raises(ValueError, match="must hold integers"):
        impl.parse(b"\x00" * 24, np.array([0.5]), np.array([12], dtype=np.int32))


def test_bad_options_raise(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="fill must be"):
        impl.JitterBuffer(call_start_us=0, fill="noise")
    with pytest.raises(ValueError, match="window_ms"):
        impl.JitterBuffer(call_start_us=0, window_ms=-1)
    with pytest.raises(ValueError, match="reserved"):
        impl.JitterBuffer(call_start_us=0, event_payload_types=(0,))


# -- wraps ----------------------------------------------------------------------


def _continuous(impl: ModuleType, seq: int, ts: int) -> None:
    s = Sender(seq=seq, ts=ts)
    talk(s, 60)
    r = feed(impl, deliver(s, jitter_us=30_000), end_us=round(s.t_us))
    assert r.stats["audio_packets"] == 60 and r.stats["lost_frames"] == 0
    assert r.gaps == [] and bool((r.kind == AUDIO).all())
    assert np.array_equal(flat(r), decoded([ramp_payload(k) for k in range(60)]))


def test_sequence_wrap(impl: ModuleType) -> None:
    _continuous(impl, seq=65500, ts=1_000_000)


def test_timestamp_wrap(impl: ModuleType) -> None:
    _continuous(impl, seq=100, ts=0xFFFFFFFF - 4000)


def test_sequence_and_timestamp_wrap_together(impl: ModuleType) -> None:
    _continuous(impl, seq=65530, ts=0xFFFFFFFF - 800)


# -- reordering, duplicates, late --------------------------------------------------


def test_reordering_within_window_restores_order(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 50)
    in_order = feed(impl, deliver(s), end_us=round(s.t_us))
    pkts = deliver(s)
    for i in range(2, 46, 5):  # swap neighbours and move some 3 places
        pkts[i], pkts[i + 3] = pkts[i + 3], pkts[i]
    r = feed(impl, pkts, end_us=round(s.t_us))
    assert r.stats["late"] == 0
    assert np.array_equal(r.pcm, in_order.pcm) and np.array_equal(r.kind, in_order.kind)


def test_window_ms_configurable(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 50)
    pkts = deliver(s)
    held = pkts.pop(10)  # arrives 200 ms late
    pkts.insert(20, Arrived(held.data, pkts[19].arrival_us, held.label))
    wide = feed(impl, pkts, window_ms=300, end_us=round(s.t_us))
    narrow = feed(impl, pkts, window_ms=100, end_us=round(s.t_us))
    assert wide.stats["late"] == 0 and wide.gaps == []
    assert narrow.stats["late"] == 1 and narrow.gaps == [(10, 1)]


def test_duplicate_same_sequence_dropped(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 20)
    pkts = deliver(s)
    pkts.insert(6, Arrived(pkts[4].data, pkts[5].arrival_us, "dup"))
    r = feed(impl, pkts, end_us=round(s.t_us))
    assert r.stats["duplicates"] == 1 and r.stats["audio_packets"] == 20
    assert np.array_equal(flat(r), decoded([ramp_payload(k) for k in range(20)]))


def test_same_samples_new_sequence_dropped_as_overlap(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 20)
    pkts = deliver(s)
    copy = bytearray(pkts[4].data)
    copy[2:4] = (40000).to_bytes(2, "big")  # another sequence number, same timestamp and samples
    copy[12:] = b"\x01" * 160
    pkts.insert(6, Arrived(bytes(copy), pkts[5].arrival_us, "dup"))
    r = feed(impl, pkts, end_us=round(s.t_us))
    assert r.stats["overlap"] == 1 and r.stats["duplicates"] == 0
    assert np.array_equal(flat(r), decoded([ramp_payload(k) for k in range(20)]))


def test_late_packet_counted_and_not_stored(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 40)
    pkts = deliver(s)
    late = pkts.pop(5)
    pkts.append(Arrived(late.data, pkts[-1].arrival_us + 1, "late"))
    r = feed(impl, pkts, end_us=round(s.t_us))
    assert r.stats["late"] == 1 and r.stats["audio_packets"] == 39
    assert r.gaps == [(5, 1)] and int(r.kind[5]) == LOST and not r.pcm[5].any()


def test_late_straddling_packet_keeps_unemitted_part(impl: ModuleType) -> None:
    # 60 ms packets, window 0: a reordered packet straddles the emitted boundary
    s = Sender()
    talk(s, 10, ptime=480)
    pkts = deliver(s)
    pkts[3], pkts[4] = pkts[4], pkts[3]  # packet 3 (frames 9-11) arrives after packet 4
    pkts[4] = Arrived(pkts[4].data, pkts[3].arrival_us, "late")
    jb = impl.JitterBuffer(call_start_us=0, window_ms=100)  # 800 samples: frames up to 12 final
    r = run(jb, pkts, end_us=round(s.t_us))
    check_accounting(r.stats)
    assert r.stats["late_partial"] == 1 and r.stats["late"] == 0
    # packet 4 made frames < 10 final: packet 3 (frames 9-11) loses frame 9, keeps 10 and 11
    assert r.kind[9:12].tolist() == [LOST, AUDIO, AUDIO] and r.gaps == [(9, 1)]
    assert np.array_equal(flat(r)[1600:1920], decoded([ramp_payload(3, 480)])[160:])
    assert r.stats["audio_packets"] == 10


# -- loss, fill, silence --------------------------------------------------------------


def test_single_loss_filled_with_silence(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 30)
    r = feed(impl, network(s.out, random.Random(1), base_us=0, drop=[7]), end_us=round(s.t_us))
    assert r.gaps == [(7, 1)] and r.stats["lost_frames"] == 1
    assert int(r.kind[7]) == LOST and not r.pcm[7].any()
    assert len(r.index) == 30


def test_single_loss_off_the_frame_grid_is_a_gap(impl: ModuleType) -> None:
    # The first packet (samples 0-159, sent at 20 ms) arrives at 25 ms and is
    # placed to end there: the leg sits 40 samples into the frame grid, so a
    # lost packet covers the end of one frame and the start of the next.
    s = Sender()
    talk(s, 30)
    r = feed(
        impl,
        network(s.out, random.Random(1), base_us=5_000, drop=[7]),
        end_us=round(s.t_us) + 5_000,
    )
    assert r.gaps == [(7, 2)], r.gaps
    assert r.stats["partial_frames"] == 2 and r.stats["lost_frames"] == 0
    assert r.kind[7:9].tolist() == [AUDIO, AUDIO]
    assert r.pcm[7, :40].any() and not r.pcm[7, 40:].any()
    assert not r.pcm[8, :40].any() and r.pcm[8, 40:].any()


def test_flush_to_call_end_is_silence_not_loss(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 30)
    r = feed(impl, network(s.out, random.Random(1), base_us=5_000), end_us=round(s.t_us) + 300_000)
    assert r.gaps == [] and r.stats["lost_frames"] == 0
    assert r.kind[-14:].tolist() == [SILENCE] * 14 and len(r.index) == 45


def test_burst_loss(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 40)
    r = feed(
        impl, network(s.out, random.Random(1), base_us=0, drop=range(10, 16)), end_us=round(s.t_us)
    )
    assert r.gaps == [(10, 6)] and r.kind[10:16].tolist() == [LOST] * 6


def test_long_gap_loss(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 400)  # 8 s; 5 s of it lost
    r = feed(
        impl, network(s.out, random.Random(1), base_us=0, drop=range(50, 300)), end_us=round(s.t_us)
    )
    assert r.gaps == [(50, 250)] and r.stats["lost_frames"] == 250
    assert r.stats["resets"] == 0 and len(r.index) == 400


def test_gaps_merge_contiguous_runs(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 40)
    r = feed(
        impl,
        network(s.out, random.Random(1), base_us=0, drop=[5, 6, 7, 20, 30, 31]),
        end_us=round(s.t_us),
    )
    assert r.gaps == [(5, 3), (20, 1), (30, 2)]


def test_conceal_fill_repeats_last_frame_with_decaying_gain(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 30)
    r = feed(
        impl,
        network(s.out, random.Random(1), base_us=0, drop=range(10, 16)),
        end_us=round(s.t_us),
        fill="conceal",
    )
    last = r.pcm[9].astype(np.int32)
    for k, g in enumerate((24576, 16384, 8192, 0, 0, 0)):
        assert np.array_equal(r.pcm[10 + k], ((last * g) >> 15).astype(np.int16))
    assert r.pcm[10].any() and r.kind[10:16].tolist() == [LOST] * 6


def test_dtx_gap_is_silence_not_loss(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 10)
    s.silence_gap(1600)  # 200 ms: timestamp jumps, sequence contiguous
    s.audio(ramp_payload(10), marker=True)
    talk(s, 10, start=11)
    r = feed(impl, deliver(s, jitter_us=10_000), end_us=round(s.t_us))
    assert r.gaps == [] and r.stats["lost_frames"] == 0
    assert r.kind[10:20].tolist() == [SILENCE] * 10
    assert r.stats["marker_packets"] == 1 and len(r.index) == 31


def test_comfort_noise_is_silence(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 10)
    s.silence_gap(3200, comfort_noise=True)
    talk(s, 10, start=10)
    r = feed(impl, deliver(s), end_us=round(s.t_us))
    assert r.stats["comfort_noise_packets"] == 1 and r.gaps == []
    assert r.kind[10:30].tolist() == [SILENCE] * 20


def test_loss_inside_talkspurt_after_dtx_still_loss(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 10)
    s.silence_gap(1600)
    talk(s, 10, start=10)
    r = feed(impl, network(s.out, random.Random(1), base_us=0, drop=[14]), end_us=round(s.t_us))
    assert r.gaps == [(24, 1)]


# -- anchoring -------------------------------------------------------------------------


def test_first_packet_anchored_at_arrival(impl: ModuleType) -> None:
    s = Sender(t_us=1_000_000)  # the leg starts 1 s into the call
    talk(s, 10)
    r = feed(impl, deliver(s, base_us=0), end_us=round(s.t_us))
    # the first packet ends at its arrival (1.02 s): it covers frame 50
    assert r.kind[:50].tolist() == [SILENCE] * 50 and int(r.kind[50]) == AUDIO
    assert r.stats["silence_frames"] == 50 and r.gaps == []
    assert np.array_equal(r.pcm[50], decoded([ramp_payload(0)]))


def test_call_start_offsets_the_timeline(impl: ModuleType) -> None:
    s = Sender(t_us=5_000_000)
    talk(s, 5)
    r = feed(impl, deliver(s), call_start_us=4_000_000, end_us=round(s.t_us))
    assert int(np.argmax(r.kind == AUDIO)) == 50


def test_ssrc_change_reanchors_and_continues(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 20)
    s.ssrc, s.seq, s.ts = 0xABCDEF, 7, 123_456_789  # re-INVITE: new source
    talk(s, 20, start=20)
    r = feed(impl, deliver(s, jitter_us=5_000), end_us=round(s.t_us))
    assert r.stats["ssrc_changes"] == 1 and r.stats["resets"] == 0
    # the new stream is anchored from its first packet's arrival (up to 5 ms of jitter)
    assert len(r.index) in (40, 41) and r.gaps == []
    assert np.array_equal(flat(r)[: 20 * FRAME], decoded([ramp_payload(k) for k in range(20)]))
    assert int((r.kind == AUDIO).sum()) >= 39


def test_straggler_of_previous_ssrc_dropped(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 20)
    s.ssrc, s.seq, s.ts = 0xABCDEF, 7, 99
    talk(s, 20, start=20)
    pkts = deliver(s)
    old = pkts.pop(19)
    pkts.insert(21, Arrived(old.data, pkts[20].arrival_us, "old"))
    r = feed(impl, pkts, end_us=round(s.t_us))
    assert r.stats["stale_ssrc"] == 1 and r.stats["ssrc_changes"] == 1


def test_timestamp_jump_resets_without_hours_of_filler(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 20)
    s.ts = (s.ts + 8000 * 3600 * 5) & 0xFFFFFFFF  # bogus: +5 hours
    talk(s, 20, start=20)
    r = feed(impl, deliver(s, jitter_us=5_000), end_us=round(s.t_us))
    assert r.stats["resets"] == 1 and len(r.index) in (40, 41) and r.gaps == []
    assert int((r.kind == AUDIO).sum()) >= 39


def test_single_bogus_timestamp_does_not_move_the_leg(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 40)
    pkts = deliver(s)
    bad = bytearray(pkts[20].data)
    bad[4:8] = (12345).to_bytes(4, "big")
    pkts[20] = Arrived(bytes(bad), pkts[20].arrival_us, "bogus")
    r = feed(impl, pkts, end_us=round(s.t_us))
    # a single wild timestamp is a timestamp jump: dropped, never confirmed, never a reset
    assert r.stats["resets"] == 0 and r.stats["timestamp_jump"] == 1 and len(r.index) == 40
    assert np.array_equal(
        r.pcm[30:], decoded([ramp_payload(k) for k in range(30, 40)]).reshape(10, FRAME)
    )


def test_sequence_jump_with_consistent_timestamp_keeps_timeline(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 20)
    s.seq = (s.seq + 20_000) & 0xFFFF
    talk(s, 20, start=20)
    r = feed(impl, deliver(s), end_us=round(s.t_us))
    assert r.stats["resets"] == 0 and bool((r.kind == AUDIO).all()) and len(r.index) == 40


def test_old_sequence_with_wild_timestamp_is_inconsistent(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 30)
    pkts = deliver(s)
    bad = bytearray(pkts[10].data)
    bad[4:8] = (1).to_bytes(4, "big")
    pkts.insert(15, Arrived(bytes(bad), pkts[14].arrival_us, "bogus"))
    r = feed(impl, pkts, end_us=round(s.t_us))
    assert r.stats["inconsistent"] == 1 and r.stats["resets"] == 0


# -- timeline bounds: a hostile network never stretches a call (issue 9, section 0) ---------------


def mixed_in(pkts: list[Arrived], bad: list[bytes], seed: int) -> list[Arrived]:
    """``bad`` packets arriving at random times over the span of ``pkts``."""
    rng = random.Random(seed)
    t0, t1 = pkts[0].arrival_us, pkts[-1].arrival_us
    extra = [Arrived(b, rng.randrange(t0 + 1, t1), "bad") for b in bad]
    return sorted(pkts + extra, key=lambda p: p.arrival_us)


def test_random_timestamp_events_do_not_stretch_the_call(impl: ModuleType) -> None:
    """The report: 2,000 RFC 4733 packets with random timestamps turned a 3 s call into
    2,800 s. They are dropped (never a new stream, never a span beyond the arrival)."""
    s = Sender()
    talk(s, 150)
    rng = random.Random(5)
    bad = [
        build_packet(
            101,
            rng.randrange(65536),
            rng.getrandbits(32),
            s.ssrc,
            telephone_event(rng.randrange(16), end=False, volume=10, duration=rng.randrange(65536)),
        )
        for _ in range(2000)
    ]
    r = feed(impl, mixed_in(deliver(s), bad, 5), batch=200)
    assert len(r.index) == 150
    assert r.stats["resets"] == 0 and r.stats["audio_packets"] == 150
    assert r.stats["event_span"] + r.stats["timestamp_jump"] + r.stats["inconsistent"] > 1900


@pytest.mark.parametrize("what", ["csrc15", "extension_past_end", "odd_sizes"])
def test_strange_packets_do_not_stretch_the_call(impl: ModuleType, what: str) -> None:
    s = Sender()
    talk(s, 100)
    rng = random.Random(6)
    bad = []
    for _ in range(500):
        ts, seq, body = (
            rng.getrandbits(32),
            rng.randrange(65536),
            rng.randbytes(rng.randrange(1, 900)),
        )
        ssrc = rng.choice([s.ssrc, rng.getrandbits(32)])
        if what == "csrc15":
            bad.append(build_packet(PT_PCMU, seq, ts, ssrc, body, csrcs=list(range(15))))
        elif what == "extension_past_end":
            p = bytearray(build_packet(PT_PCMU, seq, ts, ssrc, body, extension=(0xBEDE, b"")))
            p[14:16] = (0xFFFF).to_bytes(2, "big")
            bad.append(bytes(p))
        else:
            bad.append(build_packet(PT_PCMU, seq, ts, ssrc, body[: rng.randrange(0, 40) * 2 + 1]))
    r = feed(impl, mixed_in(deliver(s), bad, 6), batch=50)
    assert len(r.index) == 100 and r.stats["audio_packets"] == 100
    assert r.stats["resets"] == 0 and r.stats["ssrc_changes"] == 0
    assert np.array_equal(flat(r), decoded([ramp_payload(k) for k in range(100)]))


def test_single_packet_of_a_new_ssrc_is_not_confirmed(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 40)
    pkts = deliver(s)
    pkts.insert(
        20, Arrived(build_packet(PT_PCMU, 9, 99, 0xBAD, b"\x05" * 800), pkts[20].arrival_us, "x")
    )
    r = feed(impl, pkts)
    assert r.stats["unconfirmed_ssrc"] == 1 and r.stats["ssrc_changes"] == 0
    assert len(r.index) == 40
    assert np.array_equal(flat(r), decoded([ramp_payload(k) for k in range(40)]))


def test_event_ending_after_its_arrival_is_dropped(impl: ModuleType) -> None:
    """An event whose duration says 5 s when it is sent a moment after it started."""
    s = Sender()
    talk(s, 20)
    ev = telephone_event(5, end=False, volume=10, duration=40_000)
    pkt = build_packet(101, s.seq, s.ts, s.ssrc, ev)
    s.seq += 1
    talk(s, 20, start=20)
    pkts = deliver(s)
    pkts.insert(20, Arrived(pkt, pkts[20].arrival_us - 1, "event"))
    r = feed(impl, pkts)
    assert r.stats["event_span"] == 1 and r.events == [] and len(r.index) == 40


def test_audio_ahead_of_a_settled_stream_is_a_timestamp_jump(impl: ModuleType) -> None:
    """A packet of the stream claiming samples 250 ms after its arrival (within the 3 s reset
    tolerance) is dropped, so the call ends with its wall clock, not 250 ms later."""
    s = Sender()
    talk(s, 60)
    pkts = deliver(s)
    last = pkts[-1]
    ahead = build_packet(PT_PCMU, s.seq, s.ts + 2000, s.ssrc, ramp_payload(99))
    pkts.append(Arrived(ahead, last.arrival_us + 1, "ahead"))
    r = feed(impl, pkts)
    assert r.stats["timestamp_jump"] == 1 and len(r.index) == 60


def test_restart_of_the_same_ssrc_after_silence_anchors_at_once(impl: ModuleType) -> None:
    """A stream that went quiet (longer than the window) may restart with any timestamp: its
    first packet anchors, nothing is held."""
    s = Sender()
    talk(s, 20)
    s.silence_gap(8000)
    s.ts = (s.ts + 8000 * 3600) & 0xFFFFFFFF
    talk(s, 20, start=20)
    r = feed(impl, deliver(s), end_us=round(s.t_us))
    assert r.stats["resets"] == 1 and r.stats["timestamp_jump"] == 0
    assert len(r.index) == 90 and int((r.kind == AUDIO).sum()) >= 40


# -- packet sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ptime",
    [80, 160, 240, 320, 480, 136, 1, 8000],
    ids=["10ms", "20ms", "30ms", "40ms", "60ms", "17ms", "1sample", "1s"],
)
def test_repack_packet_duration_into_20ms_frames(impl: ModuleType, ptime: int) -> None:
    s = Sender()
    n = max(2, 4800 // ptime) if ptime > 1 else 400
    talk(s, n, ptime=ptime)
    r = feed(impl, deliver(s, jitter_us=3_000), end_us=round(s.t_us), batch=64)
    total = n * ptime
    assert len(r.index) == -(-total // FRAME)
    assert np.array_equal(flat(r)[:total], decoded([ramp_payload(k, ptime) for k in range(n)]))
    assert r.stats["lost_frames"] == 0 and r.stats["audio_packets"] == n


# -- payload types -------------------------------------------------------------------------


def test_payload_type_change_pcmu_pcma(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 10)
    s.pt = PT_PCMA
    talk(s, 10, start=10)
    s.pt = PT_PCMU
    talk(s, 10, start=20)
    r = feed(impl, deliver(s), end_us=round(s.t_us))
    assert r.stats["payload_type_changes"] == 2
    want = np.concatenate(
        [
            decoded([ramp_payload(k) for k in range(10)]),
            decoded([ramp_payload(k) for k in range(10, 20)], PT_PCMA),
            decoded([ramp_payload(k) for k in range(20, 30)]),
        ]
    )
    assert np.array_equal(flat(r), want)


@pytest.mark.parametrize("pt", [9, 18, 96])
def test_unsupported_payload_type_dropped(impl: ModuleType, pt: int) -> None:
    s = Sender()
    talk(s, 10)
    pkts = deliver(s)
    pkts.insert(
        3, Arrived(build_packet(pt, 5000, 0, s.ssrc, b"\x01" * 20), pkts[3].arrival_us, "other")
    )
    r = feed(impl, pkts, end_us=round(s.t_us))
    assert r.stats["unsupported_payload_type"] == 1 and r.stats["audio_packets"] == 10


@pytest.mark.parametrize("pt", [9, 18, 3, 96])
def test_unsupported_codec_frames_are_their_own_kind(impl: ModuleType, pt: int) -> None:
    """Audio in a payload type with no decoder is placed on the timeline as FRAME_UNSUPPORTED
    (zeros, in ``unsupported`` with its payload type), never as silence or loss."""
    s = Sender()
    talk(s, 10)
    s.pt = pt
    # 20 ms of the codec: G.722 1 byte a tick, G.729 10 bytes / 80 ticks, GSM 33 / 160
    size = {9: FRAME, 18: 20, 3: 33}.get(pt, 77)
    for _ in range(10):
        seq, ts = s._next()
        s._advance(FRAME)
        s.ts = (s.ts + FRAME) & 0xFFFFFFFF
        s.out.append(Sent(build_packet(pt, seq, ts, s.ssrc, b"\x55" * size), round(s.t_us)))
    s.pt = PT_PCMU
    talk(s, 10, start=20)
    r = feed(impl, deliver(s), end_us=round(s.t_us))
    assert r.kind.tolist() == [AUDIO] * 10 + [UNSUPPORTED] * 10 + [AUDIO] * 10
    assert not r.pcm[10:20].any() and r.gaps == []
    assert r.unsupported == [(10, 10, pt)] and r.unsupported_payload_types == [pt]
    st = r.stats
    assert st["unsupported_payload_type"] == 10 and st["unsupported_packets"] == 10
    assert st["unsupported_frames"] == 10 and st["silence_frames"] == 0 and st["lost_frames"] == 0


def test_audio_wins_over_unsupported_codec_in_a_frame(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 5)
    pkts = deliver(s)
    # the same span sent again as G.722 with new sequence numbers: audio stays audio
    dup = [
        Arrived(
            build_packet(9, 5000 + k, 50_000 + FRAME * k, s.ssrc, b"\x01" * FRAME),
            p.arrival_us + 1,
            "g722",
        )
        for k, p in enumerate(pkts)
    ]
    r = feed(impl, sorted(pkts + dup, key=lambda p: p.arrival_us))
    assert bool((r.kind == AUDIO).all()) and r.unsupported == []
    assert np.array_equal(flat(r), decoded([ramp_payload(k) for k in range(5)]))


# -- telephone events ------------------------------------------------------------------------


def test_telephone_event_digit_start_and_duration(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 10)  # 200 ms
    s.event(11, 1200, volume=12)  # '#', 150 ms
    talk(s, 10, start=10)
    r = feed(impl, deliver(s, jitter_us=20_000), end_us=round(s.t_us))
    assert r.events == [(11, "#", 200, 150, 12)]
    assert r.stats["telephone_event_packets"] == 3 + 2  # 2 updates (not final) + 3 end copies


def test_telephone_event_redundant_end_packets_count_once(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 5)
    s.event(5, 800)
    pkts = deliver(s)
    # the same end packet repeated with the same sequence number is a duplicate
    pkts.append(Arrived(pkts[-1].data, pkts[-1].arrival_us + 1000, "event"))
    r = feed(impl, pkts, end_us=round(s.t_us))
    assert len(r.events) == 1 and r.events[0][:2] == (5, "5")
    assert r.stats["duplicates"] == 1


def test_telephone_event_span_is_silence_not_audio(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 10)
    s.event(1, 1600)  # 200 ms, no audio meanwhile
    talk(s, 10, start=10)
    r = feed(impl, deliver(s), end_us=round(s.t_us))
    assert r.kind[10:20].tolist() == [SILENCE] * 10 and not r.pcm[10:20].any()
    assert r.gaps == []


def test_event_payload_types_configurable(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 5)
    s.event(3, 800, pt=110)
    r_default = feed(impl, deliver(s), end_us=round(s.t_us))
    r_110 = feed(impl, deliver(s), end_us=round(s.t_us), event_payload_types=(110,))
    assert r_default.events == [] and r_default.stats["unsupported_payload_type"] > 0
    assert [e[1] for e in r_110.events] == ["3"]


def test_event_digit_names() -> None:
    got = [jitter_ref._event_digit(e) for e in (0, 9, 10, 11, 12, 15, 16, 99)]
    assert got == ["0", "9", "*", "#", "A", "D", "16", "99"]


def test_event_packet_parses_as_rfc4733() -> None:
    assert telephone_event(11, end=True, volume=10, duration=800) == b"\x0b\x8a\x03\x20"


# -- drift ------------------------------------------------------------------------------------

SECOND_MARK = b"\x80" * FRAME  # loudest mu-law code: marks the first packet of each second
QUIET = b"\xff" * FRAME  # mu-law zero


def _drift_leg(
    ppm: float, seconds: int, rng: random.Random
) -> tuple[list[Arrived], int, list[float]]:
    """A leg whose first packet of each second is loud; returns the marks' capture times."""
    s = Sender(
        ssrc=rng.getrandbits(32), seq=rng.randrange(65536), ts=rng.getrandbits(32), clock_ppm=ppm
    )
    next_mark = 0
    marks: list[float] = []
    while s.t_us < seconds * 1_000_000:
        # the packet's first sample is captured at s.t_us
        if s.t_us >= next_mark * 1_000_000:
            marks.append(s.t_us)
            s.audio(SECOND_MARK)
            next_mark += 1
        else:
            s.audio(QUIET)
    # realistic jitter: 2 ms base, mostly under 10 ms, spikes up to 80 ms
    sent = s.out
    out = []
    for p in sent:
        j = rng.expovariate(1 / 4000) if rng.random() < 0.97 else rng.uniform(20_000, 80_000)
        out.append(Arrived(p.data, p.send_us + 2000 + int(j), "audio"))
    out.sort(key=lambda a: a.arrival_us)
    return out, seconds * 1_000_000, marks


def _mark_positions(r: Result, marks: list[float]) -> list[int]:
    """Where each mark landed minus where it was captured, in samples."""
    x = flat(r)
    loud = x > 30000
    out = []
    for t in marks[1:]:
        m = round(t * 8000 / 1e6)
        lo, hi = m - 4000, m + 4000
        w = np.flatnonzero(loud[lo:hi])
        assert w.size, f"mark captured at {t} us not found"
        out.append(lo + int(w[0]) - m)
    return out


def test_clock_drift_two_legs_stay_aligned_over_10_minutes() -> None:
    rng = random.Random(42)
    seconds = 600
    legs = []
    for ppm in (1000.0, -1000.0):
        pkts, end_us, captured = _drift_leg(ppm, seconds, rng)
        r = run(_rtp.JitterBuffer(call_start_us=0), pkts, batch_sizes=[50], end_us=end_us)
        check_frames(r)
        check_accounting(r.stats)
        assert r.stats["drift_adjustments"] >= 20
        assert abs(len(r.index) - seconds * 50) <= 1
        assert r.stats["lost_frames"] == 0
        # each second's mark lands within a frame of the time it was captured
        err = _mark_positions(r, captured)
        assert len(err) == seconds - 1
        assert max(abs(e) for e in err) <= FRAME, (min(err), max(err))
        legs.append(err)
    # the two legs agree with each other: no cumulative skew
    skew = [a - b for a, b in zip(legs[0], legs[1], strict=True)]
    assert max(abs(d) for d in skew) <= FRAME
    assert abs(sum(skew[-60:]) / 60) <= FRAME // 2


def test_drift_reference_twin_matches_on_one_minute() -> None:
    rng = random.Random(5)
    pkts, end_us, _ = _drift_leg(1000.0, 60, rng)
    a = run(_rtp.JitterBuffer(call_start_us=0), pkts, batch_sizes=[40], end_us=end_us)
    b = run(jitter_ref.JitterBuffer(call_start_us=0), pkts, batch_sizes=[40], end_us=end_us)
    assert a.stats == b.stats and np.array_equal(a.pcm, b.pcm) and a.stats["drift_adjustments"] > 0


def test_delayed_first_packet_is_corrected(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 300)
    pkts = deliver(s, base_us=2000)
    for i in range(3):  # the first three packets are held up 40 ms: the anchor is 40 ms late
        pkts[i] = Arrived(pkts[i].data, pkts[i].arrival_us + 40_000, "audio")
    pkts.sort(key=lambda a: a.arrival_us)
    r = feed(impl, pkts, end_us=round(s.t_us))
    # packet 3 arrives on time, 40 ms "early" for the late anchor: the anchor settles
    assert r.stats["anchor_adjustments"] == 1 and r.stats["drift_adjustments"] == 0
    assert r.stats["overlap"] == 0
    # after the correction all the audio sits where it was captured (+2 ms network delay)
    want = decoded([ramp_payload(k) for k in range(300)])
    x = flat(r)
    assert np.array_equal(x[16 : 300 * FRAME + 16], want)


def test_two_legs_with_different_packet_sizes_align(impl: ModuleType) -> None:
    marks = []
    for ptime in (160, 480):
        s = Sender()
        n = 24000 // ptime
        for k in range(n):
            pay = bytearray(b"\xff" * ptime)
            if k * ptime <= 12000 < (k + 1) * ptime:
                pay[12000 - k * ptime] = 0x80
            s.audio(bytes(pay))
        r = feed(impl, deliver(s, base_us=3000, jitter_us=4000), end_us=round(s.t_us))
        marks.append(int(np.argmax(flat(r) > 30000)))
    assert abs(marks[0] - 12000) <= FRAME and abs(marks[1] - 12000) <= FRAME


# -- output discipline --------------------------------------------------------------------------


def test_frames_never_go_backwards_or_repeat(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 200)
    pkts = network(
        s.out,
        random.Random(3),
        base_us=0,
        jitter_us=150_000,
        loss=0.05,
        dup=0.05,
        steady_first=True,
    )
    jb = impl.JitterBuffer(call_start_us=0)
    nxt = 0
    for i in range(0, len(pkts), 7):
        chunk = pkts[i : i + 7]
        fr = jb.push(
            *pack_batch([p.data for p in chunk]),
            np.array([p.arrival_us for p in chunk], dtype=np.int64),
        )
        assert np.array_equal(fr.index, np.arange(nxt, nxt + len(fr)))
        nxt += len(fr)
    fr = jb.flush(round(s.t_us))
    assert np.array_equal(fr.index, np.arange(nxt, nxt + len(fr)))
    assert nxt + len(fr) == 200


def test_flush_fills_to_the_end_of_the_call(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 10)
    r = feed(impl, deliver(s), end_us=1_000_000)
    assert len(r.index) == 50 and r.kind[10:].tolist() == [SILENCE] * 40
    r2 = feed(impl, deliver(s), end_us=1_010_000)  # a partial frame: the frame containing it
    assert len(r2.index) == 51


def test_flush_without_end_emits_what_is_held(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 10)
    r = feed(impl, deliver(s))
    assert len(r.index) == 10 and bool((r.kind == AUDIO).all())


def test_flush_of_a_leg_that_never_received_packets(impl: ModuleType) -> None:
    r = feed(impl, [], end_us=200_000)
    assert len(r.index) == 10 and r.stats["silence_frames"] == 10


def test_push_after_flush_raises(impl: ModuleType) -> None:
    jb = impl.JitterBuffer(call_start_us=0)
    jb.flush()
    with pytest.raises(RuntimeError, match="flushed"):
        jb.push(b"", np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
    with pytest.raises(RuntimeError, match="flushed"):
        jb.flush()


def test_empty_push_returns_empty_frames(impl: ModuleType) -> None:
    jb = impl.JitterBuffer(call_start_us=0)
    fr = jb.push(b"", np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
    assert len(fr) == 0 and fr.pcm.shape == (0, FRAME)


def test_stats_accounting_invariant_under_impairments(impl: ModuleType) -> None:
    s = Sender()
    talk(s, 300)
    pkts = network(
        s.out, random.Random(9), base_us=0, jitter_us=400_000, loss=0.1, dup=0.2, steady_first=True
    )
    pkts.insert(5, Arrived(b"\x00" * 5, pkts[5].arrival_us, "bad"))
    r = feed(impl, pkts, end_us=round(s.t_us))
    check_accounting(r.stats)
    assert r.stats["packets"] == len(pkts)
    assert r.stats["late"] > 0 and r.stats["duplicates"] > 0 and r.stats["malformed"] == 1
    assert r.stats["bytes"] == sum(len(p.data) for p in pkts)
    assert len(r.index) == 300


# -- anchor settling and backward drift (bursty / early senders) ----------------------------------


def mulaw_noise(n: int, seed: int) -> bytes:
    """Random mu-law bytes 0x01..0x3F: all decode to non-zero samples (0x7F, 0xFF are zero)."""
    return bytes(b & 0x3E | 0x01 for b in random.Random(seed).randbytes(n))


def audio_start(r: Result) -> int:
    nz = np.flatnonzero(flat(r))
    assert nz.size, "no audio in the output"
    return int(nz[0])


def assert_whole_once(r: Result, payload: bytes, at: int) -> None:
    """The output is silence, then every sample of ``payload`` in order once, then silence."""
    x = flat(r)
    want = decoded([payload])
    assert np.array_equal(x[at : at + len(want)], want), "sent audio not found whole and in order"
    assert not x[:at].any() and not x[at + len(want) :].any()


def test_bursty_early_sender_loses_nothing(impl: ModuleType) -> None:
    # ffmpeg -re ... -f rtp: 1460 + 588 samples sent together every 256 ms, for 6 s
    # (24 whole blocks: a partial last block would be sent before its audio ends)
    payload = mulaw_noise(24 * 2048, 1)
    s = Sender(t_us=1_000_000)  # starts 1 s into the call
    s.ffmpeg(payload)
    pkts = deliver(s, base_us=1000, jitter_us=2000, steady_first=False)
    r = feed(impl, pkts, end_us=pkts[-1].arrival_us)
    assert r.stats["overlap"] == 0 and r.stats["audio_packets"] == len(s.out) == 48
    assert r.stats["anchor_adjustments"] >= 1 and r.stats["drift_adjustments"] == 0
    assert r.stats["drift_dropped_samples"] == 0 and r.gaps == []
    at = audio_start(r)
    assert_whole_once(r, payload, at)
    # the second packet of the first pair ends at its arrival: the block starts 256 ms before
    assert abs(at - (8000 + 8 - 2048)) <= FRAME // 4, at
    # the leg ends at the last arrival, the end of the audio sent: not 73 ms later
    assert 0 <= len(flat(r)) - (at + len(payload)) < FRAME


def test_bursty_sender_at_the_call_start_keeps_its_anchor(impl: ModuleType) -> None:
    # the call starts at the first packet's first sample (as the pipeline starts it): the
    # stream cannot move before the call start, and its early packets still drop nothing
    payload = mulaw_noise(24 * 2048, 2)
    s = Sender()
    s.ffmpeg(payload)
    pkts = deliver(s, base_us=1000)
    start_us = pkts[0].arrival_us - 1460 * 125
    r = feed(impl, pkts, call_start_us=start_us, end_us=pkts[-1].arrival_us)
    assert r.stats["overlap"] == 0 and r.stats["anchor_adjustments"] == 0
    assert r.stats["drift_adjustments"] == 0 and r.stats["drift_dropped_samples"] == 0
    assert_whole_once(r, payload, 0)
    assert 0 <= len(flat(r)) - len(payload) < FRAME


def test_delayed_first_packet_settles_without_loss(impl: ModuleType) -> None:
    s = Sender(t_us=100_000)
    payloads = [mulaw_noise(480, k) for k in range(50)]  # 60 ms packets: nothing overtakes
    for p in payloads:
        s.audio(p)
    pkts = deliver(s, base_us=2000, first_delay_us=40_000)  # the anchor is 40 ms late
    assert pkts[0].data == s.out[0].data
    r = feed(impl, pkts, end_us=round(s.t_us) + 2000)
    assert r.stats["anchor_adjustments"] == 1 and r.stats["drift_adjustments"] == 0
    assert r.stats["overlap"] == 0 and r.gaps == []
    at = audio_start(r)
    assert_whole_once(r, b"".join(payloads), at)
    # captured at 100 ms = sample 800 (+16 samples of network delay)
    assert abs(at - 800) <= FRAME // 4, at


def test_settling_never_moves_a_stream_before_the_previous_streams_end(impl: ModuleType) -> None:
    s = Sender()
    first = mulaw_noise(3200, 3)  # 400 ms in 20 ms packets, on time
    for k in range(20):
        s.audio(first[k * FRAME : (k + 1) * FRAME])
    # a transfer: a bursty sender (new SSRC) whose first block starts 212.5 ms after
    # the old stream's end; its anchor (1460 samples ending at 612.5 ms) lands 240 samples
    # after that end, and its 588-sample packet asks to settle 588 samples earlier
    s.ssrc, s.seq, s.ts, s.t_us = 0xABCDEF, 7, 123_456, 612_500.0
    second = mulaw_noise(8192, 4)
    s.ffmpeg(second)
    r = feed(impl, deliver(s), end_us=pkt_end(s))
    assert r.stats["ssrc_changes"] == 1 and r.stats["overlap"] == 0
    assert r.stats["anchor_adjustments"] == 1  # 240 samples, not 588
    x = flat(r)
    assert np.array_equal(x[:3200], decoded([first]))
    assert np.array_equal(x[3200 : 3200 + 8192], decoded([second]))


def pkt_end(s: Sender) -> int:
    return max(p.send_us for p in s.out)


def _fast_talker(spurts: int, samples: int, *, dtx: bool) -> tuple[Sender, list[bytes]]:
    s = Sender(clock_ppm=1000.0, t_us=50_000)
    out = []
    for k in range(spurts):
        spurt = mulaw_noise(samples, 100 + k)
        out.append(spurt)
        for j in range(0, samples, FRAME):
            s.audio(spurt[j : j + FRAME], marker=dtx and j == 0 and k > 0)
        if dtx:
            s.silence_gap(1600)  # 200 ms of DTX after each talkspurt
    return s, out


def test_fast_sender_clock_drops_single_samples_not_packets(impl: ModuleType) -> None:
    s, spurts = _fast_talker(40, 8000, dtx=False)
    r = feed(impl, deliver(s, base_us=2000), end_us=round(s.t_us))
    assert r.stats["overlap"] == 0 and r.stats["drift_adjustments"] >= 4
    dropped = r.stats["drift_dropped_samples"]
    sent = decoded(spurts)
    # 0.1 % fast: about 8 samples a second are more than the call's real time holds
    assert 0.5 * 8 * 40 <= dropped <= 8 * 40
    x = flat(r)
    x = x[np.flatnonzero(x)[0] :]
    x = x[: np.flatnonzero(x)[-1] + 1]
    # the output is the sent audio with isolated one-sample deletions
    i = j = 0
    runs = []
    while i < len(x):
        k = j
        while x[i] != sent[j]:
            j += 1
        if j > k:
            runs.append(j - k)
        i += 1
        j += 1
    assert len(sent) - j == 0 and sum(runs) == dropped and max(runs) == 1


def test_fast_sender_clock_takes_drift_from_dtx_silence(impl: ModuleType) -> None:
    # talkspurts of 480 ms: a pause always comes within DRIFT_WAIT_MS of a drift step
    s, spurts = _fast_talker(80, 3840, dtx=True)
    r = feed(impl, deliver(s, base_us=2000), end_us=round(s.t_us))
    assert r.stats["overlap"] == 0 and r.stats["drift_adjustments"] >= 4
    assert r.stats["drift_dropped_samples"] == 0
    x = flat(r)
    # every talkspurt is whole, in order; only the silences between them got shorter
    at = 0
    for k, spurt in enumerate(spurts):
        want = decoded([spurt])
        found = np.flatnonzero(x[at:] != 0)
        start = at + int(found[0])
        assert np.array_equal(x[start : start + len(want)], want), k
        at = start + len(want)
    # and the leg kept to the call's real time
    assert abs(len(x) - round(s.t_us * 8 / 1000)) <= FRAME


def test_extension_does_not_load_its_twin() -> None:
    """ext is the lowest level: callvault._rtp takes its shared declarations from the base
    module callvault.rtpdefs, never from callvault.media.jitter_ref (or anything in media)."""
    import subprocess
    import sys

    code = (
        "import sys, callvault._rtp as r, callvault.rtpdefs as d\n"
        "assert r.Frames is d.Frames and r.STAT_KEYS is d.STAT_KEYS\n"
        "print(sorted(m for m in sys.modules if m.startswith('callvault.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = out.stdout.strip()
    assert "callvault.media" not in loaded and "callvault.rtpdefs" in loaded


def test_one_stat_is_the_stats_entry() -> None:
    """JitterBuffer.stat(key) (what ingest reads per batch) equals stats[key], in both
    implementations; an unknown key is a KeyError."""
    from callvault import _rtp, rtpdefs
    from callvault.media import jitter_ref
    from callvault.media.packets import PacketRun
    from callvault.media.rtppack import build_packet

    run = PacketRun.of(
        [build_packet(9 if i % 3 else 0, i, 160 * i, 7, bytes(160)) for i in range(9)]
    )
    arrival = np.array([1_700_000_000_000_000 + 20_000 * (i + 1) for i in range(9)], np.int64)
    for jb in (
        _rtp.JitterBuffer(call_start_us=1_700_000_000_000_000),
        jitter_ref.JitterBuffer(call_start_us=1_700_000_000_000_000),
    ):
        jb.push(run.data, run.offsets, run.lengths, arrival)
        stats = jb.stats
        assert stats["unsupported_payload_type"] == 6
        assert all(jb.stat(k) == stats[k] for k in rtpdefs.STAT_KEYS)
        with pytest.raises(KeyError):
            jb.stat("no such counter")

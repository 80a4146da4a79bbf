"""Fuzz RTP parse and the jitter buffer: random bytes and mutated valid packets.

Nothing crashes, every packet is counted exactly once (accepted or one drop
reason), outputs are well-formed, and the Cython module agrees with its
pure-Python twin. Early (bursty) senders of any block and packet size lose
nothing.
"""

from __future__ import annotations

import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callvault import _g711, _rtp
from callvault.media import jitter_ref
from callvault.media.rtppack import PT_PCMU, build_packet, pack_batch, telephone_event
from tests.rtpstreams import Arrived, Sender, check_accounting, check_frames, network, run

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_packet(draw: st.DrawFn) -> bytes:
    pt = draw(st.sampled_from([0, 8, 13, 101, 9, 18]))
    n = draw(st.integers(0, 400))
    words = st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4])
    ext = draw(st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), words)))
    return build_packet(
        pt,
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)),
        draw(st.sampled_from([1, 2, 0xFFFFFFFF])),
        bytes(n),
        marker=draw(st.booleans()),
        csrcs=draw(st.lists(st.integers(0, 5), max_size=3)),
        extension=ext,
        padding=draw(st.integers(0, 8)),
    )


@st.composite
def mutated_packet(draw: st.DrawFn) -> bytes:
    p = bytearray(draw(valid_packet()))
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["flip", "truncate", "csrc", "ext_len", "pad"]))
        if what == "flip" and p:
            i = draw(st.integers(0, len(p) - 1))
            p[i] ^= 1 << draw(st.integers(0, 7))
        elif what == "truncate":
            del p[draw(st.integers(0, len(p))) :]
        elif what == "csrc" and p:
            p[0] = (p[0] & 0xF0) | draw(st.integers(0, 15))  # lie about the CSRC count
        elif what == "ext_len" and len(p) >= 16:
            p[0] |= 0x10
            cc = p[0] & 0x0F
            at = 12 + 4 * cc + 2
            if at + 2 <= len(p):
                p[at : at + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif what == "pad" and p:
            p[0] |= 0x20
            p[-1] = draw(st.integers(0, 255))  # lie about the padding count
    return bytes(p)


packets = st.lists(st.one_of(st.binary(max_size=64), mutated_packet(), valid_packet()), max_size=40)


@FUZZ
@given(packets)
def test_parse_never_crashes_and_twins_agree(raw: list[bytes]) -> None:
    data, offs, lens = pack_batch(raw)
    a = _rtp.parse(data, offs, lens)
    b = jitter_ref.parse(data, offs, lens)
    for name in ("valid", "reason", "pt", "seq", "ts", "ssrc", "payload_offset", "payload_length"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.valid, a.reason == 0)
    ok = a.valid
    assert bool((a.payload_length[ok] > 0).all())
    assert bool((a.payload_offset[ok] + a.payload_length[ok] <= offs[ok] + lens[ok]).all())
    assert bool((a.reason <= len(_rtp.MALFORMED_REASONS)).all())


@FUZZ
@given(packets, st.lists(st.integers(0, 3_000_000), min_size=40, max_size=40), st.integers(1, 9))
def test_jitter_buffer_counts_every_packet_once(
    raw: list[bytes], times: list[int], batch: int
) -> None:
    arrivals = sorted(times[: len(raw)])
    pkts = [Arrived(p, t, "fuzz") for p, t in zip(raw, arrivals, strict=True)]
    results = []
    for mod in (_rtp, jitter_ref):
        r = run(
            mod.JitterBuffer(call_start_us=0, window_ms=100),
            pkts,
            batch_sizes=[batch],
            end_us=3_000_000,
        )
        check_frames(r)
        check_accounting(r.stats)
        assert r.stats["packets"] == len(raw)
        # never more than the call's wall-clock span (its last arrival or end) + the window
        assert len(r.index) <= (3_000_000 + 100_000) // 20_000 + 1
        results.append(r)
    a, b = results
    assert a.stats == b.stats and a.gaps == b.gaps and a.events == b.events
    assert np.array_equal(a.pcm, b.pcm) and np.array_equal(a.kind, b.kind)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(160, 2400),
    st.integers(80, 2400),
    st.integers(0, 100_000),
    st.integers(0, 20_000),
    st.integers(0, 2**32 - 1),
)
def test_early_block_sender_loses_nothing(
    block: int, max_payload: int, first_delay_us: int, base_us: int, seed: int
) -> None:
    """Blocks of up to the window sent at once (when their first sample is due), cut into
    packets of any size, the first packet held up by up to 100 ms: every sample is kept."""
    rng = np.random.default_rng(seed)
    # mu-law 0x01..0x3F: loud negative samples, never 0 (0x7F and 0xFF decode to
    # 0), so the first non-zero output sample is the first sample sent
    payload = bytes((rng.integers(0, 256, 24_000) & 0x3E | 0x01).astype(np.uint8))
    s = Sender(ssrc=seed, seq=seed & 0xFFFF, ts=seed, t_us=1_000_000)
    for i in range(0, len(payload), block):
        s.block(payload[i : i + block], max_payload=max_payload)
    pkts = network(s.out, random.Random(seed), base_us=base_us, first_delay_us=first_delay_us)
    want = _g711.decode(payload, PT_PCMU)
    results = []
    for mod in (_rtp, jitter_ref):
        r = run(mod.JitterBuffer(call_start_us=0), pkts, batch_sizes=[7])
        check_frames(r)
        check_accounting(r.stats)
        assert r.stats["overlap"] == 0 and r.stats["late"] == 0, r.stats
        assert r.stats["drift_dropped_samples"] == 0
        x = r.pcm.reshape(-1)
        at = int(np.flatnonzero(x)[0])
        assert np.array_equal(x[at : at + len(want)], want)
        assert not x[at + len(want) :].any()
        results.append(r)
    a, b = results
    assert a.stats == b.stats and np.array_equal(a.pcm, b.pcm)


# -- a hostile network: adversarial packets mixed into a real paced stream (issue 9, section 0) --


def adversarial_packet(rng: random.Random, ssrc: int, t_us: int, ts0: int, seq0: int) -> bytes:
    """One hostile packet arriving at ``t_us``: wild timestamps, strange SSRCs, events with any
    span, truncated or lying headers, odd sizes. ``ts0``/``seq0``: the real stream's timestamp
    and sequence number at t = 0, so some packets look like its own.

    Audio packets carry random timestamps, events random sequence numbers: a packet with the
    stream's SSRC, its next sequence numbers AND a plausible timestamp cannot be told from the
    stream by the server (that is the sidecar's source latching); some events and malformed
    packets have plausible timestamps."""
    kind = rng.randrange(10)
    n = rng.randrange(1, 1400)
    body = rng.randbytes(n)
    seq = rng.randrange(65536)
    near_ts = (ts0 + t_us * 8 // 1000 + rng.randrange(-24_000, 24_000)) & 0xFFFFFFFF
    if kind == 0:  # the stream's own SSRC, random timestamp and sequence number
        return build_packet(PT_PCMU, seq, rng.getrandbits(32), ssrc, body)
    if kind == 1:  # a random SSRC
        return build_packet(rng.choice([0, 8]), seq, rng.getrandbits(32), rng.getrandbits(32), body)
    if kind == 2:  # RFC 4733 events with random timestamps and spans, on the stream's SSRC
        ev = telephone_event(
            rng.randrange(16), end=rng.random() < 0.5, volume=10, duration=rng.randrange(65536)
        )
        ts = rng.choice([rng.getrandbits(32), near_ts])
        return build_packet(101, seq, ts, ssrc, ev)
    if kind == 3:  # truncated header
        return build_packet(PT_PCMU, seq, rng.getrandbits(32), ssrc, body)[: rng.randrange(12)]
    if kind == 4:  # CSRC-15, long enough to be valid
        ssrc4 = rng.choice([ssrc, rng.getrandbits(32)])
        return build_packet(PT_PCMU, seq, rng.getrandbits(32), ssrc4, body, csrcs=list(range(15)))
    if kind == 5:  # CSRC count 15 on a short packet: the list runs past the end
        p = bytearray(build_packet(PT_PCMU, seq, near_ts, ssrc, body[:40]))
        p[0] |= 0x0F
        return bytes(p)
    if kind == 6:  # extension length past the end
        p = bytearray(build_packet(PT_PCMU, seq, near_ts, ssrc, body, extension=(0xBEDE, b"")))
        p[14:16] = rng.randrange(400, 65536).to_bytes(2, "big")
        return bytes(p)
    if kind == 7:  # odd sizes on the stream's SSRC, sequence numbers near the stream's
        s = (seq0 + t_us // 20_000 + rng.randrange(-200, 200)) & 0xFFFF
        return build_packet(
            PT_PCMU, s, rng.getrandbits(32), ssrc, body[: rng.randrange(0, 40) * 2 + 1]
        )
    if kind == 8:  # bad version or padding
        p = bytearray(build_packet(PT_PCMU, seq, near_ts, ssrc, body))
        if rng.random() < 0.5:
            p[0] = (p[0] & 0x3F) | 0x40
        else:
            p[0] |= 0x20
            p[-1] = 0
        return bytes(p)
    return rng.randbytes(rng.randrange(0, 200))  # noise


NET_DELAY_US = 2_000  # the real stream's network delay (its first packet is not jittered)


def flood(seconds: int, hostile: int, seed: int) -> tuple[list[Arrived], bytes, int]:
    """A paced 20 ms PCMU stream of ``seconds`` with ``hostile`` packets mixed in at random
    times over its span; returns (packets in arrival order, the stream's payload, its start)."""
    rng = random.Random(seed)
    s = Sender(ssrc=0x5EED, seq=40_000, ts=7_777_777, t_us=1_000_000)
    payload = bytes(b & 0x3E | 0x01 for b in rng.randbytes(8000 * seconds))
    ts0, seq0 = s.ts, s.seq
    for i in range(0, len(payload), 160):
        s.audio(payload[i : i + 160])
    real = network(s.out, rng, base_us=NET_DELAY_US, jitter_us=8_000, steady_first=True)
    t0, t1 = real[0].arrival_us, real[-1].arrival_us
    bad = []
    for _ in range(hostile):
        t = rng.randrange(t0, t1)
        bad.append(Arrived(adversarial_packet(rng, s.ssrc, t - 1_000_000, ts0, seq0), t, "bad"))
    pkts = sorted(real + bad, key=lambda p: p.arrival_us)
    return pkts, payload, 1_000_000


def test_hostile_flood_keeps_the_true_duration_and_the_audio() -> None:
    """10^5 malformed and adversarial packets (random timestamps and SSRCs, events with random
    spans, truncated headers, CSRC-15, extension past end, odd sizes) mixed into a real paced
    14 s stream: the leg is 14 s within 2 frames, and the stream's audio is all there."""
    pkts, payload, start_us = flood(14, 100_000, seed=9)
    jb = _rtp.JitterBuffer(call_start_us=start_us, fill="conceal")
    r = run(jb, pkts, batch_sizes=[500])
    check_frames(r)
    check_accounting(r.stats)
    assert abs(len(r.index) - 14 * 50) <= 2, (len(r.index), r.stats)
    st = r.stats
    for key in (
        "timestamp_jump",
        "event_span",
        "unconfirmed_ssrc",
        "malformed_too_short",
        "malformed_bad_csrc",
        "malformed_bad_extension",
        "malformed_bad_version",
    ):
        assert st[key] > 0, (key, st)
    assert st["ssrc_changes"] == 0 and st["resets"] == 0
    # the real stream's packets all went in (none taken for a jump or another source), its
    # audio starts where it was sent, and every frame of the call holds audio
    assert st["audio_packets"] >= 698, st
    x = r.pcm.reshape(-1)
    want = _g711.decode(payload, PT_PCMU)
    late = NET_DELAY_US * 8 // 1000  # samples: the first packet is anchored at its arrival
    assert np.array_equal(x[late : late + 320], want[:320])
    assert int((r.kind == _rtp.FRAME_AUDIO).sum()) >= 14 * 50 - 2


def test_hostile_flood_twins_agree() -> None:
    pkts, _, start_us = flood(3, 5_000, seed=4)
    a = run(_rtp.JitterBuffer(call_start_us=start_us), pkts, batch_sizes=[7])
    b = run(jitter_ref.JitterBuffer(call_start_us=start_us), pkts, batch_sizes=[13])
    assert a.stats == b.stats and a.gaps == b.gaps and a.events == b.events
    assert np.array_equal(a.pcm, b.pcm) and np.array_equal(a.kind, b.kind)
    assert abs(len(a.index) - 3 * 50) <= 2

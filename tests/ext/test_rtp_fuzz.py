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
from callvault.media.rtppack import PT_PCMU, build_packet, pack_batch
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
        # never more than the call + the 3 s reset tolerance + what the packets themselves span
        # (an RFC 4733 duration spans up to 65535 samples, about 410 frames)
        assert len(r.index) <= 2 * 3_000_000 // 20_000 + 410 * len(raw) + 1
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

"""callvault.sidecar.latch.SourceLatch on batches with chosen sources and arrival stamps:
the re-latch rule (RELATCH_PACKETS consecutive packets, RELATCH_SILENCE_US of silence
from the latched source, a new SSRC from the same address needing no silence), the
held candidate packets (forwarded on a re-latch, dropped and counted otherwise) and
the hold bound."""

from __future__ import annotations

import numpy as np

from callvault.sidecar.latch import (
    DEFAULT_EVENT_PT,
    HOLD_PACKETS,
    RELATCH_PACKETS,
    RELATCH_SILENCE_US,
    SourceLatch,
    describe_source,
)
from tests.sidecar.rxkit import rtp

EVENTS = frozenset({DEFAULT_EVENT_PT})
T0 = 1_790_000_000_000_000


def src(last: int, port: int) -> bytes:
    return b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 0, last]) + port.to_bytes(2, "big")


A = src(1, 4000)
B = src(2, 5000)


def feed(
    latch: SourceLatch, items: list[tuple[bytes, int, int, int]]
) -> tuple[list[bytes], int, int, int]:
    """``items`` = (source, ssrc, seq, arrival_us) in one batch; returns (kept packets,
    invalid, foreign, relatches)."""
    pkts = [rtp(seq, ssrc) for _, ssrc, seq, _ in items]
    got = latch.filter(
        b"".join(pkts),
        np.array([len(p) for p in pkts], np.int32),
        np.array([a for *_, a in items], np.int64),
        b"".join(s for s, *_ in items),
        EVENTS,
    )
    kept: list[bytes] = []
    if got.chunk is not None:
        data, lengths, _ = got.chunk
        offs = np.concatenate([[0], np.cumsum(lengths)])
        kept = [data[offs[i] : offs[i + 1]] for i in range(len(lengths))]
    return kept, got.invalid, got.foreign, got.relatches


def test_first_valid_packet_latches_and_others_are_foreign() -> None:
    latch = SourceLatch()
    items = [(A, 1, 0, T0), (B, 2, 0, T0 + 1), (A, 1, 1, T0 + 20_000), (B, 2, 1, T0 + 20_001)]
    kept, invalid, foreign, relatches = feed(latch, items)
    assert kept == [rtp(0, 1), rtp(1, 1)]
    # B's first packet is dropped when A's next arrives; its second is held.
    assert (invalid, foreign, relatches) == (0, 1, 0)
    assert latch.drop_candidate() == 1
    assert describe_source(latch.source, latch.ssrc) == "10.0.0.1:4000 SSRC 0x00000001"


def test_a_competing_sender_never_latches_while_the_latched_one_talks() -> None:
    latch = SourceLatch()
    items: list[tuple[bytes, int, int, int]] = []
    for i in range(500):  # 10 s: A every 20 ms, B five packets between each
        items.append((A, 1, i, T0 + i * 20_000))
        items += [(B, 2, 5 * i + k, T0 + i * 20_000 + 1000 + k) for k in range(5)]
    kept, _, foreign, relatches = feed(latch, items)
    assert kept == [rtp(i, 1) for i in range(500)]
    assert relatches == 0
    assert foreign + latch.drop_candidate() == 2500


def test_failover_needs_silence_then_forwards_what_it_held() -> None:
    latch = SourceLatch()
    feed(latch, [(A, 1, i, T0 + i * 20_000) for i in range(10)])
    last_a = T0 + 9 * 20_000
    # B starts 400 ms after A's last packet, one packet per 20 ms: latched at the first
    # packet that arrives RELATCH_SILENCE_US after A's last one; all of B is kept.
    b_items = [(B, 2, 100 + i, last_a + 400_000 + i * 20_000) for i in range(60)]
    kept, _, foreign, relatches = feed(latch, b_items)
    assert kept == [rtp(100 + i, 2) for i in range(60)]
    assert (foreign, relatches) == (0, 1)
    switch = next(i for i, (*_, a) in enumerate(b_items) if a - last_a >= RELATCH_SILENCE_US)
    assert switch >= RELATCH_PACKETS
    # A coming back now is the foreign one.
    kept, _, foreign, relatches = feed(latch, [(A, 1, 10, b_items[-1][3] + 1)])
    assert kept == [] and relatches == 0


def test_a_candidate_interrupted_by_the_latched_source_is_dropped() -> None:
    latch = SourceLatch()
    feed(latch, [(A, 1, 0, T0)])
    later = T0 + 5 * RELATCH_SILENCE_US
    items = [(B, 2, i, later + i) for i in range(RELATCH_PACKETS - 1)] + [(A, 1, 1, later + 99)]
    kept, _, foreign, relatches = feed(latch, items)
    assert kept == [rtp(1, 1)]
    assert (foreign, relatches) == (RELATCH_PACKETS - 1, 0)


def test_consecutive_means_no_other_source_in_between() -> None:
    latch = SourceLatch()
    feed(latch, [(A, 1, 0, T0)])
    later = T0 + 5 * RELATCH_SILENCE_US
    c = src(3, 6000)
    items = []
    for i in range(20):  # B and C alternate: neither reaches RELATCH_PACKETS in a row
        items += [(B, 2, i, later + 2 * i), (c, 3, i, later + 2 * i + 1)]
    kept, _, foreign, relatches = feed(latch, items)
    assert kept == [] and relatches == 0
    assert foreign + latch.drop_candidate() == 40


def test_held_packets_are_bounded() -> None:
    latch = SourceLatch()
    feed(latch, [(A, 1, 0, T0)])
    # B floods 1 packet per ms: RELATCH_SILENCE_US / 1000 packets before it may latch.
    n = RELATCH_SILENCE_US // 1000 + 1
    items = [(B, 2, i, T0 + 1 + i * 1000) for i in range(n)]
    kept, _, foreign, relatches = feed(latch, items)
    assert relatches == 1
    assert kept == [rtp(i, 2) for i in range(n - HOLD_PACKETS, n)]
    assert foreign == n - HOLD_PACKETS


def test_a_new_ssrc_from_the_latched_address_needs_packets_not_silence() -> None:
    latch = SourceLatch()
    feed(latch, [(A, 1, i, T0 + i * 20_000) for i in range(5)])
    t = T0 + 5 * 20_000
    items = [(A, 9, 1000 + i, t + i * 20_000) for i in range(RELATCH_PACKETS + 2)]
    kept, _, foreign, relatches = feed(latch, items)
    assert kept == [rtp(1000 + i, 9) for i in range(RELATCH_PACKETS + 2)]
    assert (foreign, relatches) == (0, 1)
    assert latch.ssrc == 9


def test_invalid_packets_never_latch() -> None:
    latch = SourceLatch()
    pkts = [b"", rtp(0, 5, first=0x40), rtp(0, 6)]
    got = latch.filter(
        b"".join(pkts),
        np.array([len(p) for p in pkts], np.int32),
        np.array([T0, T0 + 1, T0 + 2], np.int64),
        B + B + A,
        EVENTS,
    )
    assert got.invalid == 2 and got.foreign == 0
    assert latch.source == A and latch.ssrc == 6


def test_invalid_packets_among_the_latched_sources_are_cut_out_of_the_batch() -> None:
    latch = SourceLatch()
    feed(latch, [(A, 1, 0, T0)])
    good = [rtp(i, 1) for i in range(1, 9)]
    pkts = good[:3] + [b"", rtp(50, 1, first=0x40)] + good[3:] + [rtp(51, 1)[:12]]
    got = latch.filter(
        b"".join(pkts),
        np.array([len(p) for p in pkts], np.int32),
        np.arange(T0 + 1, T0 + 1 + len(pkts), dtype=np.int64),
        A * len(pkts),
        EVENTS,
    )
    assert got.invalid == 3 and got.foreign == 0 and got.relatches == 0
    assert got.chunk is not None
    data, lengths, arrival = got.chunk
    assert data == b"".join(good) and lengths.tolist() == [len(p) for p in good]
    assert arrival.tolist() == [T0 + 1 + i for i in (0, 1, 2, 5, 6, 7, 8, 9)]


def test_fuzz_nothing_malformed_or_foreign_gets_through() -> None:
    """20,000 fuzzed datagrams from the latched address (random bytes, truncated and
    bit-flipped copies of real packets) mixed into a real stream in batches of up to
    256: every real packet is kept, and everything kept passes the server's batch
    check and RTP parse and carries the latched SSRC."""
    from callvault import _rtp
    from callvault.media.batch import LegBatch

    rng = np.random.default_rng(9)
    latch = SourceLatch()
    real = [rtp(i, 0x4242, bytes(rng.integers(0, 256, 160, dtype=np.uint8))) for i in range(2000)]
    stream: list[tuple[bytes, bool]] = []
    for p in real:
        stream.append((p, True))
        for _ in range(10):
            kind = rng.integers(0, 3)
            if kind == 0:
                x = bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8))
            elif kind == 1:
                x = p[: int(rng.integers(0, len(p)))]
            else:
                b = bytearray(p)
                for _ in range(int(rng.integers(1, 4))):
                    b[int(rng.integers(0, 12))] ^= 1 << int(rng.integers(0, 8))
                x = bytes(b)
                if x == p:  # two flips of one bit: not fuzz
                    continue
            stream.append((x, False))
    kept: list[bytes] = []
    invalid = i = 0
    while i < len(stream):
        n = int(rng.integers(1, 257))
        part = stream[i : i + n]
        i += n
        pkts = [x for x, _ in part]
        lens = np.array([len(x) for x in pkts], np.int32)
        got = latch.filter(
            b"".join(pkts),
            lens,
            np.full(len(pkts), T0 + i, np.int64),
            A * len(pkts),
            EVENTS,
        )
        if got.chunk is not None:
            data, lengths, arrival = got.chunk
            batch = LegBatch.checked(0, 0, data, lengths.tolist(), arrival.tolist(), 1)
            parsed = _rtp.parse(batch.run.data, batch.run.offsets, batch.run.lengths)
            assert parsed.valid.all()
            assert (parsed.ssrc == 0x4242).all()
            kept.extend(batch.run)
        assert got.relatches == 0
        invalid += got.invalid
    real_set = set(real)
    assert [p for p in kept if p in real_set] == real
    # At least every datagram with no room for a payload was counted invalid.
    assert invalid >= sum(1 for x, _ in stream if len(x) <= 12) > 0


def test_the_c_check_is_the_parse_and_the_rules_it_replaced() -> None:
    """check_packets runs one C pass (_rtp.check_datagrams); on fuzzed datagrams it
    decides exactly as the vectorised rule it replaced: _rtp.parse's valid, the batch's
    length bounds, RTCP refused, events needing MIN_EVENT_PAYLOAD bytes."""
    from callvault import _rtp
    from callvault.media.batch import MAX_PACKET_BYTES
    from callvault.sidecar.latch import MIN_EVENT_PAYLOAD, check_packets

    rng = np.random.default_rng(11)
    pkts: list[bytes] = []
    for i in range(5000):
        p = bytearray(rtp(i, 0x4242, bytes(rng.integers(0, 256, 160, dtype=np.uint8))))
        kind = i % 5
        if kind == 1:
            p = p[: int(rng.integers(0, len(p)))]
        elif kind == 2:
            for _ in range(int(rng.integers(1, 4))):
                p[int(rng.integers(0, 12))] ^= 1 << int(rng.integers(0, 8))
        elif kind == 3:  # events (PT 101, short or not) and RTCP-looking packets
            p[1] = int(rng.choice([101, 101 | 0x80, 200, 201]))
            p = p[: 12 + int(rng.integers(0, 8))]
        elif kind == 4:
            p = bytearray(rng.integers(0, 256, int(rng.integers(0, 30)), dtype=np.uint8))
        pkts.append(bytes(p))
    lens = np.array([len(p) for p in pkts], np.int32)
    data = b"".join(pkts)
    ok, ssrc = check_packets(data, lens, EVENTS)
    offsets = np.concatenate([[0], np.cumsum(lens[:-1], dtype=np.int64)])
    parsed = _rtp.parse(data, offsets, lens)
    second = parsed.pt | (parsed.marker.view(np.uint8) << 7)
    rtcp = (second >= 192) & (second <= 223)
    event = np.isin(parsed.pt, list(EVENTS)) & ~rtcp
    want = (
        parsed.valid
        & (lens >= 1)
        & (lens <= MAX_PACKET_BYTES)
        & ~rtcp
        & (~event | (parsed.payload_length >= MIN_EVENT_PAYLOAD))
    )
    assert ok.tolist() == want.tolist()
    assert ssrc.tolist() == parsed.ssrc.tolist()
    assert 0 < int(ok.sum()) < len(pkts)


def test_counting_one_packet_is_counting_a_batch_of_one() -> None:
    """The real-time case (one packet per read) skips the arrays; same counts."""
    from callvault.sidecar.call import Leg

    fast, slow = Leg("a", 0, 0), Leg("a", 0, 0)
    pkts = [rtp(i, 1, b"\x00" * 160) for i in range(3)]
    g722 = bytearray(pkts[2])
    g722[1] = 9
    pkts[2] = bytes(g722)
    got_fast = [fast.count_payload_types(p, np.array([len(p)], np.int32)) for p in pkts]
    lens = np.array([len(p) for p in pkts], np.int32)
    got_slow = slow.count_payload_types(b"".join(pkts), lens)  # one batch of three
    assert got_fast == [[], [], [9]] and got_slow == [9]
    assert fast.pt_packets.tolist() == slow.pt_packets.tolist()
    assert fast.recorded_packets() == 2 and fast.unsupported() == {9: 1}


def test_one_check_with_a_table_per_datagram_is_each_tables_own_check() -> None:
    """check_datagrams with ``rows`` (the receiver's tick: legs with different
    telephone-event types in one call) decides each datagram as a call with its own
    table would; a row outside the tables is refused."""
    import pytest

    from callvault import _rtp
    from callvault.media.batch import MAX_PACKET_BYTES
    from callvault.sidecar.latch import MIN_EVENT_PAYLOAD, second_byte_rules

    rng = np.random.default_rng(13)
    kinds = [frozenset({101}), frozenset({96, 97}), frozenset()]
    rules = np.concatenate([second_byte_rules(k) for k in kinds])
    pkts = []
    for i in range(3000):
        p = bytearray(rtp(i, 7, bytes(int(rng.integers(1, 9)))))
        p[1] = int(rng.choice([0, 8, 96, 97, 101, 101 | 0x80, 200]))
        pkts.append(bytes(p))
    lens = np.array([len(p) for p in pkts], np.int32)
    data = b"".join(pkts)
    rows = rng.integers(0, len(kinds), len(pkts)).astype(np.int32)
    ok, ssrc, pt = _rtp.check_datagrams(
        data, lens, rules, MIN_EVENT_PAYLOAD, MAX_PACKET_BYTES, rows
    )
    for r, k in enumerate(kinds):
        alone, _, _ = _rtp.check_datagrams(
            data, lens, second_byte_rules(k), MIN_EVENT_PAYLOAD, MAX_PACKET_BYTES
        )
        assert ok[rows == r].tolist() == alone[rows == r].tolist()
    assert 0 < int(ok.sum()) < len(pkts) and (ssrc == 7).all()
    with pytest.raises(ValueError):
        _rtp.check_datagrams(
            data, lens, rules, 4, MAX_PACKET_BYTES, np.full(len(pkts), 3, np.int32)
        )
    with pytest.raises(ValueError):
        _rtp.check_datagrams(data, lens, rules, 4, MAX_PACKET_BYTES, rows[:-1])
    with pytest.raises(ValueError):
        _rtp.check_datagrams(data, lens, rules, 4, MAX_PACKET_BYTES)  # 3 tables, no rows

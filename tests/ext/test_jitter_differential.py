"""The Cython jitter buffer and its pure-Python twin give identical results.

Random realistic scenarios (jitter, reordering, loss, duplicates, wraps, SSRC
changes, payload type changes, events, drift, malformed packets, late first
packets, bursty early senders like ffmpeg's) go through
callvault._rtp.JitterBuffer and callvault.media.jitter_ref.JitterBuffer; frames,
stats, gaps and events must match exactly, and cutting the same stream into
batches differently must not change the result.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from callvault import _rtp
from callvault.media import jitter_ref
from callvault.media.rtppack import pack_batch
from tests.rtpstreams import (
    Result,
    bursty_scenario,
    check_accounting,
    check_frames,
    random_scenario,
    run,
)


def assert_same(a: Result, b: Result) -> None:
    assert a.stats == b.stats
    assert a.gaps == b.gaps
    assert a.events == b.events
    assert a.unsupported == b.unsupported
    assert a.unsupported_payload_types == b.unsupported_payload_types
    assert np.array_equal(a.index, b.index)
    assert np.array_equal(a.kind, b.kind)
    assert np.array_equal(a.pcm, b.pcm)


@pytest.mark.parametrize("seed", range(80))
def test_cython_matches_reference_on_random_scenarios(seed: int) -> None:
    rng = random.Random(seed)
    packets, end_us = random_scenario(rng)
    window_ms = rng.choice([0, 60, 300, 1000])
    fill = rng.choice(["silence", "conceal"])
    c = run(
        _rtp.JitterBuffer(call_start_us=0, window_ms=window_ms, fill=fill),
        packets,
        batch_sizes=[rng.randrange(1, 80)],
        end_us=end_us,
    )
    p = run(
        jitter_ref.JitterBuffer(call_start_us=0, window_ms=window_ms, fill=fill),
        packets,
        batch_sizes=[rng.randrange(1, 80)],
        end_us=end_us,
    )
    check_frames(c)
    check_accounting(c.stats)
    assert_same(c, p)


@pytest.mark.parametrize("seed", range(40))
def test_cython_matches_reference_on_bursty_early_senders(seed: int) -> None:
    """ffmpeg-like block senders (packets of a block sent together), late first packets."""
    rng = random.Random(5000 + seed)
    packets, end_us = bursty_scenario(rng)
    window_ms = rng.choice([0, 60, 300, 300, 1000])
    c = run(
        _rtp.JitterBuffer(call_start_us=0, window_ms=window_ms),
        packets,
        batch_sizes=[rng.randrange(1, 40)],
        end_us=end_us,
    )
    p = run(
        jitter_ref.JitterBuffer(call_start_us=0, window_ms=window_ms),
        packets,
        batch_sizes=[rng.randrange(1, 40)],
        end_us=end_us,
    )
    check_frames(c)
    check_accounting(c.stats)
    assert_same(c, p)


@pytest.mark.parametrize("seed", range(12))
def test_batching_does_not_change_the_result(seed: int) -> None:
    rng = random.Random(1000 + seed)
    packets, end_us = random_scenario(rng)
    results = [
        run(_rtp.JitterBuffer(call_start_us=0), packets, batch_sizes=sizes, end_us=end_us)
        for sizes in ([1], [len(packets) + 1], [3, 17, 1, 64], [rng.randrange(1, 40)])
    ]
    ref = run(jitter_ref.JitterBuffer(call_start_us=0), packets, batch_sizes=[7, 2], end_us=end_us)
    for r in results:
        assert_same(r, results[0])
    assert_same(ref, results[0])


def test_reference_and_cython_parse_agree() -> None:
    rng = random.Random(7)
    packets, _ = random_scenario(rng)
    malformed = [
        b"",
        b"\x80" * 11,
        b"\x40" + bytes(20),
        b"\x8f" + bytes(20),
        b"\x90" + bytes(14),
        b"\xa0" + bytes(12),
        b"\x80" + bytes(11),
    ]
    raw = [p.data for p in packets] + malformed
    data, offs, lens = pack_batch(raw)
    a = _rtp.parse(data, offs, lens)
    b = jitter_ref.parse(data, offs, lens)
    for name in (
        "valid",
        "reason",
        "marker",
        "pt",
        "seq",
        "ts",
        "ssrc",
        "payload_offset",
        "payload_length",
    ):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert set(a.reason[-7:].tolist()) == {1, 2, 3, 4, 5, 6}

"""callvault.media.batch: the wire's RTP batch (LegBatch) and the call-start bound."""

from __future__ import annotations

import numpy as np
import pytest

from callvault.errors import InputError
from callvault.media.batch import (
    MAX_PACKET_BYTES,
    MAX_START_LEAD_US,
    SMALL_BATCH,
    LegBatch,
    first_sample_bound,
)
from callvault.media.packets import PacketRun
from callvault.media.rtppack import PT_CN, PT_PCMU, build_packet

T0 = 1_700_000_000_000_000


def _leg(n: int, *, ts0: int = 1000, first_pt: int = PT_PCMU) -> tuple[PacketRun, np.ndarray]:
    pkts = [
        build_packet(first_pt if i == 0 else PT_PCMU, i, ts0 + 160 * i, 0xAB, bytes(160))
        for i in range(n)
    ]
    return PacketRun.of(pkts), np.array([T0 + 20_000 * (i + 1) for i in range(n)])


def test_first_sample_bound_is_earliest_arrival_minus_rtp_time() -> None:
    run, arrival = _leg(5)
    assert first_sample_bound(run.data, run.lengths, arrival) == T0
    arrival[3] -= 7_000  # one packet that came early moves the bound
    assert first_sample_bound(run.data, run.lengths, arrival) == T0 - 7_000
    # timestamps wrapping past 2**32 change nothing
    run, arrival = _leg(5, ts0=2**32 - 300)
    assert first_sample_bound(run.data, run.lengths, arrival) == T0


@pytest.mark.parametrize("ahead", [480_000, 8_000_000, 2**31 - 1, 2**32 - 160 * 7])
def test_a_forged_timestamp_never_moves_the_start_back(ahead: int) -> None:
    """Issue 9 (re-test): one packet of the stream's SSRC whose timestamp ran N samples
    ahead moved the call start back N/8000 s (480,000: a 62 s call of 2 s of audio;
    random 32-bit timestamps: a call that never sealed)."""
    run, arrival = _leg(5)
    forged = build_packet(PT_PCMU, 99, (1000 + 160 * 2 + ahead) % 2**32, 0xAB, bytes(160))
    pkts = [run[i] for i in range(5)]
    pkts.insert(3, forged)
    forged_run = PacketRun.of(pkts)
    arrivals = np.insert(arrival, 3, arrival[2])
    assert first_sample_bound(forged_run.data, forged_run.lengths, arrivals) == T0


def test_a_bursting_sender_still_sets_the_start() -> None:
    """ffmpeg's RTP muxer sends its first 0.5 s at once: those packets count."""
    run, arrival = _leg(50)
    arrival[:] = T0 + 20_000  # all 50 packets (1 s of audio) arrive with the first
    assert first_sample_bound(run.data, run.lengths, arrival) == T0 + 20_000 - 1_000_000
    assert MAX_START_LEAD_US >= 1_000_000


def test_first_sample_bound_without_audio() -> None:
    cn = PacketRun.of([build_packet(PT_CN, 1, 0, 1, b"\x40")])
    assert first_sample_bound(cn.data, cn.lengths, np.array([T0])) is None
    assert first_sample_bound(b"", np.zeros(0, np.int32), np.zeros(0, np.int64)) is None


def test_checked_batch_and_its_run() -> None:
    run, arrival = _leg(3)
    b = LegBatch.checked(4, 1, run.data, run.lengths.tolist(), arrival.tolist(), legs=2)
    assert (b.seq, b.leg) == (4, 1) and b.lengths.dtype == np.int32
    assert b.run == run and b.run.offsets.tolist() == [0, 172, 344]
    assert b.first_sample_us() == T0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"leg": 2}, "leg 2 does not exist"),
        ({"lengths": []}, "no packets"),
        ({"arrival_us": [T0]}, "one per packet"),
        ({"lengths": [172, 172, 171]}, "add up to 515 bytes"),
        ({"lengths": [0, 344, 172]}, "packet lengths must be 1 to"),
        ({"arrival_us": [0, 1, 2]}, "microseconds since the epoch"),
    ],
)
def test_checked_refuses_inconsistent_batches(change: dict[str, object], message: str) -> None:
    run, arrival = _leg(3)
    args: dict[str, object] = {
        "seq": 9,
        "leg": 0,
        "packets": run.data,
        "lengths": run.lengths.tolist(),
        "arrival_us": arrival.tolist(),
        "legs": 2,
    }
    args.update(change)
    with pytest.raises(InputError, match=message):
        LegBatch.checked(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("packets", [3, SMALL_BATCH, SMALL_BATCH + 1, 500])
@pytest.mark.parametrize("bad", [None, "sum", "length", "arrival"])
def test_checked_small_and_large_batches_alike(packets: int, bad: str | None) -> None:
    """Batches up to SMALL_BATCH packets are checked with builtins, larger ones with
    numpy: the same batch, the same refusals."""
    run, arrival = _leg(packets)
    lengths, arrivals, data = run.lengths.tolist(), arrival.tolist(), run.data
    if bad == "sum":
        data = data[:-1]
    elif bad == "length":
        lengths[-1] = MAX_PACKET_BYTES + 1
    elif bad == "arrival":
        arrivals[packets // 2] = -5
    if bad is None:
        b = LegBatch.checked(1, 0, data, lengths, arrivals, legs=1)
        assert b.run == run and b.arrival_us.tolist() == arrival.tolist()
        assert b.lengths.dtype == np.int32 and b.arrival_us.dtype == np.int64
    else:
        message = {"sum": "add up to", "length": "must be 1 to", "arrival": "since the epoch"}
        with pytest.raises(InputError, match=message[bad]):
            LegBatch.checked(1, 0, data, lengths, arrivals, legs=1)

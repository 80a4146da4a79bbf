"""A leg's batch of RTP packets as Ingest carries it, and when its first sample was captured.

``LegBatch`` is the wire's ``RtpBatch`` (docs/format.md section 2) once checked:
the server's ingest, the sidecar's spool and forwarder, and the pcap reader's
callers share it; ``first_sample_bound`` is the call-start rule of
docs/format.md section 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from callvault import _rtp
from callvault.errors import InputError
from callvault.media.packets import PacketRun
from callvault.rtpdefs import PT_PCMA, PT_PCMU
from callvault.timeline import SAMPLE_RATE

# Payload types the recorder decodes (G.711, RFC 3551); their RTP clock is the
# timeline's sample rate.
AUDIO_PTS = (PT_PCMU, PT_PCMA)


# How far ahead of real time a sender may send its audio (bursts: ffmpeg's RTP muxer
# sends its first 0.5 s at once by default) for a packet to count in the call-start
# rule. A packet whose timestamp runs further ahead than that is not believed (the
# jitter buffer drops it too: ``timestamp_jump``), so one forged timestamp cannot
# move a call's start back by hours and fill them with silence.
MAX_START_LEAD_US = 2_000_000
# How long before its first audio a call may start when the client names the start
# (CallStart.start_us): the leading silence is filled frame by frame.
MAX_LEADING_SILENCE_US = 3_600_000_000


def first_sample_bound(
    packets: bytes, lengths: npt.NDArray[np.int32], arrival_us: npt.NDArray[np.int64]
) -> int | None:
    """The earliest bound on when the first audio sample of these packets (one leg,
    back to back) was captured; None if none of them is G.711 audio.

    A G.711 packet leaves its sender once its last sample is in, so each audio
    packet of the first packet's SSRC bounds the capture time of that first
    sample: its arrival minus the RTP time from the first packet's start to its
    own end. The earliest bound wins (senders that burst, like ffmpeg's RTP
    muxer, send audio ahead of its time), over the packets whose audio runs at
    most ``MAX_START_LEAD_US`` further ahead of the first packet's than their
    arrival does (the first packet always counts): the start is never earlier
    than the first packet's own bound minus that lead."""
    if not len(lengths):
        return None
    run = PacketRun(packets, lengths)
    parsed = _rtp.parse(run.data, run.offsets, run.lengths)
    audio = np.flatnonzero(parsed.valid & np.isin(parsed.pt, AUDIO_PTS))
    if not len(audio):
        return None
    first = audio[0]
    audio = audio[parsed.ssrc[audio] == parsed.ssrc[first]]
    ts = parsed.ts[audio].astype(np.int64)
    span = (
        (ts - int(parsed.ts[first]) + 2**31) % 2**32
        - 2**31
        + parsed.payload_length[audio].astype(np.int64)
    )  # samples, wrap-safe
    bounds = arrival_us[audio] - span * 1_000_000 // SAMPLE_RATE
    # ahead of the first packet's bound by more than the lead: not believed
    plausible = bounds >= bounds[0] - MAX_START_LEAD_US
    return int(np.min(bounds[plausible]))


MAX_PACKETS_PER_BATCH = 20_000
MAX_PACKET_BYTES = 65_535
# LegBatch.checked checks batches of up to this many packets with builtins (a batch
# every 20-100 ms per leg: a few microseconds where numpy's reductions cost about 15)
SMALL_BATCH = 64


@dataclass(frozen=True)
class LegBatch:
    """One leg's RTP packets as Ingest's RtpBatch carries them (docs/format.md section
    2): ``packets`` back to back, the ``lengths`` and ``arrival_us`` of each."""

    seq: int
    leg: int
    packets: bytes
    lengths: npt.NDArray[np.int32]
    arrival_us: npt.NDArray[np.int64]

    @classmethod
    def checked(
        cls,
        seq: int,
        leg: int,
        packets: bytes,
        lengths: Sequence[int],
        arrival_us: Sequence[int],
        legs: int,
    ) -> LegBatch:
        """A batch from the wire, refused with a clear message when inconsistent."""
        if leg >= legs:
            raise InputError(f"batch {seq}: leg {leg} does not exist (the call has {legs})")
        if not lengths:
            raise InputError(f"batch {seq}: no packets (an empty batch is not sent)")
        if len(lengths) > MAX_PACKETS_PER_BATCH:
            raise InputError(
                f"batch {seq}: {len(lengths)} packets; at most {MAX_PACKETS_PER_BATCH} per batch"
            )
        if len(arrival_us) != len(lengths):
            raise InputError(
                f"batch {seq}: {len(lengths)} lengths but {len(arrival_us)} "
                "arrival times (one per packet)"
            )
        if len(lengths) <= SMALL_BATCH:  # the real-time case: no numpy reductions
            low, high, total = min(lengths), max(lengths), sum(lengths)
            first = min(arrival_us)
        else:
            lens = np.asarray(lengths, dtype=np.int64)
            low, high, total = int(lens.min()), int(lens.max()), int(lens.sum())
            first = int(np.min(np.asarray(arrival_us, dtype=np.int64)))
        if low <= 0 or high > MAX_PACKET_BYTES:
            raise InputError(f"batch {seq}: packet lengths must be 1 to {MAX_PACKET_BYTES}")
        if total != len(packets):
            raise InputError(
                f"batch {seq}: lengths add up to {total} bytes but packets holds {len(packets)}"
            )
        if first <= 0:
            raise InputError(f"batch {seq}: arrival_us must be microseconds since the epoch")
        n = len(lengths)  # fromiter: a protobuf container is no buffer numpy can take
        return cls(
            seq,
            leg,
            packets,
            np.fromiter(lengths, dtype=np.int32, count=n),
            np.fromiter(arrival_us, dtype=np.int64, count=n),
        )

    @cached_property
    def run(self) -> PacketRun:
        """``packets`` and ``lengths`` as a PacketRun (``run.offsets`` for the jitter buffer)."""
        return PacketRun(self.packets, self.lengths)

    def first_sample_us(self) -> int:
        """When the batch's first audio sample was captured (first_sample_bound);
        its first arrival if it holds no G.711 audio."""
        bound = first_sample_bound(self.packets, self.lengths, self.arrival_us)
        return int(self.arrival_us.min()) if bound is None else bound

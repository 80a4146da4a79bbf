"""Read a call's RTP streams from a pcap or pcapng capture.

The compiled reader ``callvault._pcap`` (ext/_pcap.pyx) walks the whole file
in one pass in C, file framing, link, IP and UDP headers and the RTP check,
and files each RTP packet under its flow: no Python object is made per frame
or per packet (a 10-minute call has tens of thousands). This module turns its
arrays into ``RtpFlow`` objects, one per flow, and names the errors.

A *flow* is one UDP 5-tuple direction (src ip:port -> dst ip:port). Each flow
that carries RTP is one leg candidate; a leg keeps its identity when its SSRC
changes on the same flow (re-INVITE, transfer): the jitter buffer sees the
SSRC change and continues the leg's timeline. Flows are ordered by their
first RTP packet; the first is the agent leg, the second the customer leg
unless the caller maps them otherwise (``--legs``).
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from callvault import _pcap
from callvault.errors import InputError
from callvault.media.batch import AUDIO_PTS, first_sample_bound
from callvault.media.packets import PacketRun
from callvault.media.rtppack import PT_CN, Batch
from callvault.rtpdefs import RECORDED_CODECS

__all__ = [
    "Capture",
    "RtpFlow",
    "check_audio",
    "describe_payload_types",
    "read_capture",
]

# Link types (tcpdump.org/linktypes.html) the reader (ext/_pcap.pyx) understands.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6
LINKTYPE_LINUX_SLL = 113  # Linux "any" device, cooked v1
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276  # cooked v2

# Why frames were skipped (Capture.skipped's keys), in the reader's order.
SKIP_REASONS: tuple[str, ...] = _pcap.SKIP_REASONS

# A flow must show this many RTP-looking datagrams to count as a stream, so a
# stray UDP packet (DNS, SIP OPTIONS) is not taken for a leg.
MIN_RTP_PACKETS = 3

# RFC 3551 names of static payload types, for the error message.
KNOWN_PT_NAMES = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 13: "CN", 18: "G729"}

# RFC 4733 2.3: a telephone-event payload is one 4-byte event (event code, E/R/volume,
# duration). A dynamic payload type is taken for events only when at least this share
# of its packets carry exactly such a payload; otherwise it is a codec callvault does
# not record (Opus, G.722 on a dynamic type...). The share, not "all", so that a few
# damaged packets do not turn a leg's DTMF into an unsupported codec.
# (The reader marks each packet of a dynamic type whose payload, after CSRCs and
# the header extension and before padding, is exactly EVENT_PAYLOAD_BYTES.)
EVENT_PAYLOAD_BYTES = 4
EVENT_SHARE = 0.9

FlowKey = tuple[str, int, str, int]


def _counts(values: npt.NDArray[np.uint8]) -> dict[int, int]:
    keys, counts = np.unique(values, return_counts=True)
    return dict(zip(keys.tolist(), counts.tolist(), strict=True))


@dataclass
class RtpFlow:
    """One direction of UDP carrying RTP, in capture order."""

    key: FlowKey
    packets: PacketRun  # the RTP packets back to back (headers included)
    arrival_us: npt.NDArray[np.int64]  # each packet's capture timestamp, microseconds
    payload_types: dict[int, int] = field(default_factory=dict)  # packets per payload type
    ssrcs: list[int] = field(default_factory=list)  # each SSRC in turn (a change appends)
    # per dynamic payload type (96-127): packets whose payload is one RFC 4733 event
    event_like: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        key: FlowKey,
        packets: PacketRun,
        arrival_us: npt.NDArray[np.int64],
        pt: npt.NDArray[np.uint8],
        ssrc: npt.NDArray[np.uint32],
        event_like: npt.NDArray[np.bool_],
    ) -> RtpFlow:
        """A flow from the reader's per-packet arrays (payload type, SSRC, event-like)."""
        changes = np.flatnonzero(ssrc[1:] != ssrc[:-1]) + 1
        return cls(
            key,
            packets,
            arrival_us,
            payload_types=_counts(pt),
            ssrcs=ssrc[np.concatenate(([0], changes))].tolist() if len(ssrc) else [],
            event_like=_counts(pt[event_like]),
        )

    @property
    def label(self) -> str:
        src, sport, dst, dport = self.key
        return f"{src}:{sport} -> {dst}:{dport}"

    @property
    def first_us(self) -> int:
        return int(self.arrival_us[0])

    def first_sample_us(self, window_us: int = 300_000) -> int:
        """When the flow's first audio sample was captured: first_sample_bound over
        the packets arriving within ``window_us`` of the first one."""
        n = bisect.bisect_right(self.arrival_us, self.first_us + window_us)
        run = self.packets[:n]
        bound = first_sample_bound(run.data, run.lengths, self.arrival_us[:n])
        return self.first_us if bound is None else min(bound, self.first_us)

    def event_payload_types(self) -> tuple[int, ...]:
        """Dynamic PTs used for RFC 4733 events, known without SDP by their payloads:
        at least EVENT_SHARE of the type's packets hold one 4-byte event (RFC 4733
        2.3). Any other dynamic type is a codec callvault does not record."""
        return tuple(
            sorted(
                pt
                for pt, n in self.payload_types.items()
                if 96 <= pt <= 127 and self.event_like.get(pt, 0) >= EVENT_SHARE * n
            )
        )

    def audio_packets(self) -> int:
        return sum(n for pt, n in self.payload_types.items() if pt in AUDIO_PTS)

    def batch(self) -> tuple[Batch, npt.NDArray[np.int64]]:
        """The whole flow as one jitter-buffer batch plus arrival times."""
        run = self.packets
        return (run.data, run.offsets, run.lengths), self.arrival_us


@dataclass
class Capture:
    path: Path
    flows: list[RtpFlow]  # RTP flows, ordered by first packet
    datagrams: int  # UDP datagrams seen
    skipped: dict[str, int]  # frames not usable, by reason (SKIP_REASONS)


def _address(version: int, raw: bytes) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def _flow_key(key: bytes) -> FlowKey:
    """The reader's 40-byte flow key as (src ip, src port, dst ip, dst port)."""
    return (
        _address(key[0], key[1:17]),
        int.from_bytes(key[33:35], "big"),
        _address(key[0], key[17:33]),
        int.from_bytes(key[35:37], "big"),
    )


def _scan(path: Path) -> _pcap.ScanResult:
    """The reader's result for the file. The file is read whole (not mapped: a file
    cut while it is mapped would kill the process with SIGBUS)."""
    try:
        with path.open("rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    try:
        return _pcap.scan(data, MIN_RTP_PACKETS)
    except ValueError as e:
        raise InputError(f"{path} is not a pcap or pcapng capture ({e})") from e
    except _pcap.UnsupportedLinkType as e:
        raise InputError(
            f"unsupported capture link type {e.args[0]} (supported: Ethernet, "
            "Linux cooked v1/v2, raw IP, BSD loopback)"
        ) from e


def read_capture(path: str | Path) -> Capture:
    """Every RTP flow in the capture, ordered by first packet."""
    path = Path(path)
    _fmt, data, lengths, arrival, pt, ssrc, event, bounds, keys, skipped, datagrams = _scan(path)
    ends = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ends[1:])
    flows: list[RtpFlow] = []
    for i, key in enumerate(keys):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        run = PacketRun(data[ends[lo] : ends[hi]], lengths[lo:hi])
        flows.append(
            RtpFlow.of(_flow_key(key), run, arrival[lo:hi], pt[lo:hi], ssrc[lo:hi], event[lo:hi])
        )
    flows.sort(key=lambda f: f.first_us)  # stable: the first seen first among equals
    return Capture(path, flows, datagrams, skipped)


def describe_payload_types(pts: dict[int, int]) -> str:
    return ", ".join(
        f"{KNOWN_PT_NAMES.get(pt, 'dynamic' if pt >= 96 else '?')} (PT {pt})" for pt in sorted(pts)
    )


def check_audio(flow: RtpFlow) -> None:
    """Raise InputError when a flow carries no audio callvault can decode: its
    payload types are codecs callvault does not record (a dynamic type counts as a
    codec unless its packets look like RFC 4733 events: ``event_payload_types``)."""
    if flow.audio_packets():
        return
    events = flow.event_payload_types()
    others = {pt: n for pt, n in flow.payload_types.items() if pt != PT_CN and pt not in events}
    if others:
        raise InputError(
            f"unsupported codec on {flow.label}: {describe_payload_types(others)}; "
            f"callvault records {RECORDED_CODECS}"
        )

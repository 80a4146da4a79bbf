"""Read a call's RTP streams from a pcap or pcapng capture.

dpkt reads the capture file formats; the link, IP and UDP headers are parsed
here with ``struct`` (one small function per layer), because a 10-minute call
has tens of thousands of packets and dpkt's object decoding is the slow part.

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
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import numpy as np
import numpy.typing as npt

from callvault.errors import InputError
from callvault.media.batch import AUDIO_PTS, first_sample_bound
from callvault.media.packets import PacketRun
from callvault.media.rtppack import PT_CN, Batch, pack_batch
from callvault.rtpdefs import RECORDED_CODECS

__all__ = [
    "Capture",
    "RtpFlow",
    "check_audio",
    "describe_payload_types",
    "read_capture",
]

# Link types (tcpdump.org/linktypes.html) this reader understands.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6
LINKTYPE_LINUX_SLL = 113  # Linux "any" device, cooked v1
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276  # cooked v2

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)  # 802.1Q / 802.1ad tags, skipped
IPPROTO_UDP = 17

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
EVENT_PAYLOAD_BYTES = 4
EVENT_SHARE = 0.9

FlowKey = tuple[str, int, str, int]


@dataclass
class RtpFlow:
    """One direction of UDP carrying RTP, in capture order."""

    key: FlowKey
    packets: list[bytes] = field(default_factory=list)
    arrival_us: list[int] = field(default_factory=list)
    payload_types: dict[int, int] = field(default_factory=dict)
    ssrcs: list[int] = field(default_factory=list)
    # per dynamic payload type (96-127): packets whose payload is one RFC 4733 event
    event_like: dict[int, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        src, sport, dst, dport = self.key
        return f"{src}:{sport} -> {dst}:{dport}"

    @property
    def first_us(self) -> int:
        return self.arrival_us[0]

    def first_sample_us(self, window_us: int = 300_000) -> int:
        """When the flow's first audio sample was captured: first_sample_bound over
        the packets arriving within ``window_us`` of the first one."""
        n = bisect.bisect_right(self.arrival_us, self.arrival_us[0] + window_us)
        run = PacketRun.of(self.packets[:n])
        bound = first_sample_bound(
            run.data, run.lengths, np.asarray(self.arrival_us[:n], dtype=np.int64)
        )
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
        return pack_batch(self.packets), np.asarray(self.arrival_us, dtype=np.int64)


@dataclass
class Capture:
    path: Path
    flows: list[RtpFlow]  # RTP flows, ordered by first packet
    datagrams: int  # UDP datagrams seen
    skipped: dict[str, int]  # frames not usable, by reason


def _strip_link(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """Return (ethertype, network-layer bytes) or None for a frame to skip."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        (etype,) = struct.unpack_from("!H", frame, 12)
        off = 14
        while etype in ETHERTYPE_VLAN and len(frame) >= off + 4:
            (etype,) = struct.unpack_from("!H", frame, off + 2)
            off += 4
        return etype, frame[off:]
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        return struct.unpack_from("!H", frame, 14)[0], frame[16:]
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        return struct.unpack_from("!H", frame, 0)[0], frame[20:]
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            return None
        return (ETHERTYPE_IPV4 if frame[0] >> 4 == 4 else ETHERTYPE_IPV6), frame
    if linktype == LINKTYPE_NULL:
        if len(frame) < 4:
            return None
        family = struct.unpack_from("<I", frame, 0)[0]
        if family > 0xFFFF:  # written on a big-endian host
            family = struct.unpack_from(">I", frame, 0)[0]
        # AF_INET is 2 everywhere; AF_INET6 is 10, 24, 28 or 30 depending on the OS.
        return (ETHERTYPE_IPV4 if family == 2 else ETHERTYPE_IPV6), frame[4:]
    raise InputError(
        f"unsupported capture link type {linktype} (supported: Ethernet, "
        "Linux cooked v1/v2, raw IP, BSD loopback)"
    )


def _udp(etype: int, packet: bytes) -> tuple[FlowKey, bytes] | str:
    """Return (flow key, UDP payload) or a reason string for skipping."""
    if etype == ETHERTYPE_IPV4:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return "bad_ip"
        ihl = (packet[0] & 0x0F) * 4
        total, frag, proto = struct.unpack_from("!H2xH1xB", packet, 2)
        if proto != IPPROTO_UDP:
            return "not_udp"
        if frag & 0x3FFF:  # more-fragments flag or a non-zero offset
            return "ip_fragment"
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        udp = packet[ihl : min(total, len(packet))]
    elif etype == ETHERTYPE_IPV6:
        if len(packet) < 40:
            return "bad_ip"
        if packet[6] != IPPROTO_UDP:  # extension headers before UDP are not followed
            return "not_udp"
        src = str(ipaddress.IPv6Address(packet[8:24]))
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        udp = packet[40:]
    else:
        return "not_ip"
    if len(udp) < 8:
        return "bad_udp"
    sport, dport, ulen = struct.unpack_from("!HHH", udp, 0)
    if ulen < 8 or ulen > len(udp):
        return "truncated_udp"
    return (src, sport, dst, dport), udp[8:ulen]


def _rtp_payload_bytes(packet: bytes) -> int | None:
    """The length of an RTP packet's payload (after CSRCs, the header extension and
    before padding), or None when the header does not fit in the packet."""
    size = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 4 bytes, then its length in words
        if len(packet) < size + 4:
            return None
        size += 4 + 4 * struct.unpack_from("!H", packet, size + 2)[0]
    end = len(packet)
    if packet[0] & 0x20:  # padding: its count is the last byte
        end -= packet[-1]
    return end - size if end >= size else None


def _looks_like_rtp(payload: bytes) -> bool:
    # RTP version 2, and not RTCP (packet types 192..223 sit where RTP has M+PT).
    return len(payload) >= 12 and payload[0] >> 6 == 2 and not 192 <= payload[1] <= 223


def _frames(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(link type, timestamp in microseconds, frame) for each captured frame."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    with f:
        try:
            reader = dpkt.pcap.UniversalReader(f)
        except (ValueError, dpkt.dpkt.Error) as e:
            raise InputError(f"{path} is not a pcap or pcapng capture ({e})") from e
        linktype = reader.datalink()
        try:
            for ts, frame in reader:
                yield linktype, round(float(ts) * 1_000_000), bytes(frame)
        except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, struct.error):
            # A capture cut short (the recorder was killed) keeps what came before.
            return


def read_capture(path: str | Path) -> Capture:
    """Every RTP flow in the capture, ordered by first packet."""
    path = Path(path)
    flows: dict[FlowKey, RtpFlow] = {}
    skipped: dict[str, int] = {}
    datagrams = 0
    for linktype, ts_us, frame in _frames(path):
        link = _strip_link(linktype, frame)
        if link is None:
            skipped["bad_link"] = skipped.get("bad_link", 0) + 1
            continue
        res = _udp(*link)
        if isinstance(res, str):
            skipped[res] = skipped.get(res, 0) + 1
            continue
        datagrams += 1
        key, payload = res
        if not _looks_like_rtp(payload):
            skipped["not_rtp"] = skipped.get("not_rtp", 0) + 1
            continue
        flow = flows.get(key)
        if flow is None:
            flow = flows[key] = RtpFlow(key)
        flow.packets.append(payload)
        flow.arrival_us.append(ts_us)
        pt = payload[1] & 0x7F
        flow.payload_types[pt] = flow.payload_types.get(pt, 0) + 1
        if pt >= 96 and _rtp_payload_bytes(payload) == EVENT_PAYLOAD_BYTES:
            flow.event_like[pt] = flow.event_like.get(pt, 0) + 1
        ssrc = struct.unpack_from("!I", payload, 8)[0]
        if not flow.ssrcs or flow.ssrcs[-1] != ssrc:
            flow.ssrcs.append(ssrc)
    rtp = [f for f in flows.values() if len(f.packets) >= MIN_RTP_PACKETS]
    rtp.sort(key=lambda f: f.first_us)
    return Capture(path, rtp, datagrams, skipped)


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

"""The former capture reader (dpkt framing, ``struct`` headers, a Python object per
packet): the pure-Python twin that tests/media/test_pcap_reader.py checks the
compiled reader (ext/_pcap.pyx via callvault.media.capture) against.

Kept as it was when callvault.media.capture used it, minus what the comparison
does not need. It reads the first pcapng interface's link type and timestamp
resolution for every packet, and dpkt hands timestamps over as float seconds
(exact to the microsecond for capture times before 2038); the compiled reader
follows each packet's own interface and computes timestamps in integers.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from callvault.errors import InputError
from callvault.media.capture import (
    EVENT_PAYLOAD_BYTES,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    MIN_RTP_PACKETS,
    FlowKey,
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)
IPPROTO_UDP = 17


@dataclass
class RefFlow:
    key: FlowKey
    packets: list[bytes] = field(default_factory=list)
    arrival_us: list[int] = field(default_factory=list)
    payload_types: dict[int, int] = field(default_factory=dict)
    ssrcs: list[int] = field(default_factory=list)
    event_like: dict[int, int] = field(default_factory=dict)

    @property
    def first_us(self) -> int:
        return self.arrival_us[0]


@dataclass
class RefCapture:
    flows: list[RefFlow]
    datagrams: int
    skipped: dict[str, int]


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


def read_capture(path: str | Path) -> RefCapture:
    """Every RTP flow in the capture, ordered by first packet (the former reader)."""
    path = Path(path)
    flows: dict[FlowKey, RefFlow] = {}
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
            flow = flows[key] = RefFlow(key)
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
    return RefCapture(rtp, datagrams, skipped)

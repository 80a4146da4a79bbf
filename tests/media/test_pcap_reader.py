"""The compiled capture reader (ext/_pcap.pyx through callvault.media.capture).

It reads what the former reader (dpkt framing, a Python object per packet; kept
as tests/media/capture_ref.py) read, the same flows, packets, times, skip counts,
on every link type, on captures cut at every byte and on mutated captures; and
what that reader did not: nanosecond and modified pcap headers, big-endian
files, pcapng interfaces with their own link type, timestamp resolution and
offset, obsolete packet blocks, several sections.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callvault.errors import InputError
from callvault.media import capture
from callvault.media.rtppack import build_packet, telephone_event
from callvault.media.sample import LegPlan, _ipv4_udp, demo_legs, write_capture
from tests.media import capture_ref

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
T0 = 1_700_000_000

Frame = tuple[int, bytes]  # (capture time in microseconds, frame)


def pcap_bytes(
    frames: list[Frame],
    linktype: int = capture.LINKTYPE_ETHERNET,
    *,
    big: bool = False,
    nano: bool = False,
    modified: bool = False,
) -> bytes:
    """A classic pcap file: little- or big-endian, micro- or nanosecond, or the
    modified format (24-byte record headers)."""
    e = ">" if big else "<"
    magic = 0xA1B2CD34 if modified else 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for t_us, frame in frames:
        frac = (t_us % 1_000_000) * (1000 if nano else 1)
        out.append(struct.pack(e + "IIII", t_us // 1_000_000, frac, len(frame), len(frame)))
        if modified:
            out.append(struct.pack(e + "IHBB", 1, 0x0800, 0, 0))
        out.append(frame)
    return b"".join(out)


def block(e: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e: str) -> bytes:
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(e: str, linktype: int, *, tsresol: int | None = None, tsoffset: int = 0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(e + "HHB3x", 9, 1, tsresol)
    if tsoffset:
        opts += struct.pack(e + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, 65535) + opts)


def epb(e: str, iface: int, units: int, frame: bytes, *, obsolete: bool = False) -> bytes:
    """An enhanced packet block (or an obsolete packet block: 16-bit interface id)."""
    head = struct.pack(e + "HH", iface, 0) if obsolete else struct.pack(e + "I", iface)
    stamp = struct.pack(e + "IIII", units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
    return block(e, 2 if obsolete else 6, head + stamp + frame)


def rtp(i: int, ssrc: int = 7, pt: int = 0, size: int = 160) -> bytes:
    return build_packet(pt, i, i * 160, ssrc, bytes([i % 256]) * size)


def udp_frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    return ETH + _ipv4_udp(src, dst, payload)


def ipv6_udp(payload: bytes, sport: int = 7000, dport: int = 8000) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    src, dst = b"\xfd" + bytes(14) + b"\x01", b"\xfd" + bytes(14) + b"\x02"
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, src, dst) + udp


def mixed_frames() -> list[Frame]:
    """Two legs (PCMU with telephone events, PCMA with an SSRC change), RTCP, SIP,
    TCP, an IPv4 fragment, ARP, short frames and a bad UDP length, interleaved."""
    frames: list[Frame] = []
    a, b = ("10.0.0.1", 4000), ("10.0.0.2", 5000)
    for i in range(12):
        t = T0 * 1_000_000 + i * 20_000
        frames.append((t, udp_frame(a, b, rtp(i))))
        frames.append((t + 3_000, udp_frame(b, a, rtp(i, ssrc=9 if i < 6 else 10, pt=8))))
        if i % 4 == 1:
            event = telephone_event(5, end=False, volume=10, duration=160 * i)
            frames.append((t + 5, udp_frame(a, b, build_packet(101, 100 + i, 0, 7, event))))
    rtcp = struct.pack("!BBHI", 0x80, 200, 6, 7) + bytes(20)
    sip = b"OPTIONS sip:pbx SIP/2.0\r\n\r\n"
    tcp = bytearray(udp_frame(a, b, rtp(0)))
    tcp[14 + 9] = 6
    frag = bytearray(udp_frame(a, b, rtp(1)))
    frag[14 + 6 : 14 + 8] = struct.pack("!H", 0x2000)
    badlen = bytearray(udp_frame(a, b, rtp(2)))
    badlen[14 + 24 : 14 + 26] = struct.pack("!H", 4000)
    arp = ETH[:12] + b"\x08\x06" + bytes(28)
    extra = [
        udp_frame(a, ("10.0.0.2", 5001), rtcp),
        udp_frame(("10.0.0.1", 5060), ("10.0.0.2", 5060), sip),
        bytes(tcp),
        bytes(frag),
        bytes(badlen),
        arp,
        ETH[:10],
        ETH + b"\x45",
    ]
    for k, frame in enumerate(extra):
        frames.insert(3 * k + 1, (T0 * 1_000_000 + 7_000 + k, frame))
    return frames


def read_both(path: Path, *, tolerance_us: int = 0) -> capture.Capture | None:
    """Both readers on ``path``: the same flows, packets, times and counts, or both
    an InputError (then None)."""
    try:
        want = capture_ref.read_capture(path)
    except InputError:
        with pytest.raises(InputError):
            capture.read_capture(path)
        return None
    got = capture.read_capture(path)
    assert got.datagrams == want.datagrams
    assert got.skipped == want.skipped
    assert [f.key for f in got.flows] == [f.key for f in want.flows]
    for g, w in zip(got.flows, want.flows, strict=True):
        assert list(g.packets) == w.packets
        assert np.abs(g.arrival_us - np.asarray(w.arrival_us, dtype=np.int64)).max() <= (
            tolerance_us
        )
        assert (g.payload_types, g.ssrcs, g.event_like) == (
            w.payload_types,
            w.ssrcs,
            w.event_like,
        )
    return got


# -- the same as the former reader -------------------------------------------------------


@pytest.mark.parametrize("pcapng", [False, True], ids=["pcap", "pcapng"])
def test_the_demo_call_reads_as_before(tmp_path: Path, pcapng: bool) -> None:
    path = tmp_path / "call.cap"
    write_capture(path, demo_legs(20.0), pcapng=pcapng)
    got = read_both(path)
    assert got is not None and len(got.flows) == 2
    assert [len(f.packets) for f in got.flows] == [sum(f.payload_types.values()) for f in got.flows]
    assert len(got.flows[1].ssrcs) == 2  # the customer's SSRC change
    run = got.flows[0].packets
    (data, offsets, lengths), arrival = got.flows[0].batch()
    assert data == run.data and np.array_equal(offsets, run.offsets)
    assert len(lengths) == len(arrival) == len(run)


def _sll2(payload: bytes) -> bytes:
    return struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, bytes(8)) + payload


LINKS = {
    "ethernet": (capture.LINKTYPE_ETHERNET, lambda ip: ETH + ip),
    "vlan_qinq": (
        capture.LINKTYPE_ETHERNET,
        lambda ip: ETH[:12] + b"\x88\xa8\x00\x0a\x81\x00\x00\x64\x08\x00" + ip,
    ),
    "sll": (
        capture.LINKTYPE_LINUX_SLL,
        lambda ip: struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + ip,
    ),
    "sll2": (capture.LINKTYPE_LINUX_SLL2, _sll2),
    "null_le": (capture.LINKTYPE_NULL, lambda ip: struct.pack("<I", 2) + ip),
    "null_be": (capture.LINKTYPE_NULL, lambda ip: struct.pack(">I", 2) + ip),
    "raw": (capture.LINKTYPE_RAW, lambda ip: ip),
    "ipv4": (capture.LINKTYPE_IPV4, lambda ip: ip),
}


@pytest.mark.parametrize("link", sorted(LINKS))
def test_every_link_type_reads_as_before(tmp_path: Path, link: str) -> None:
    linktype, wrap = LINKS[link]
    frames = []
    for i in range(6):
        ip = _ipv4_udp(("10.1.1.1", 1000), ("10.1.1.2", 2000), rtp(i))
        frames.append((T0 * 1_000_000 + i * 20_000, wrap(ip)))
        frames.append((T0 * 1_000_000 + i * 20_000 + 1, wrap(b"\x45")))  # a bad IP header
        frames.append((T0 * 1_000_000 + i * 20_000 + 2, wrap(b"")))
    path = tmp_path / "link.pcap"
    path.write_bytes(pcap_bytes(frames, linktype))
    got = read_both(path)
    assert got is not None and [len(f.packets) for f in got.flows] == [6]


def test_ipv6_reads_as_before(tmp_path: Path) -> None:
    frames = [(T0 * 1_000_000 + i * 20_000, ipv6_udp(rtp(i))) for i in range(5)]
    frames.append((T0 * 1_000_000 + 1, ipv6_udp(rtp(0))[:30]))  # short IPv6 header
    path = tmp_path / "v6.pcap"
    path.write_bytes(pcap_bytes(frames, capture.LINKTYPE_IPV6))
    got = read_both(path)
    assert got is not None and got.flows[0].key == ("fd00::1", 7000, "fd00::2", 8000)


def test_noise_beside_the_legs_is_counted_as_before(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pcap"
    path.write_bytes(pcap_bytes(mixed_frames()))
    got = read_both(path)
    assert got is not None
    assert got.skipped == {
        "not_rtp": 2,
        "not_udp": 1,
        "ip_fragment": 1,
        "truncated_udp": 1,
        "not_ip": 1,
        "bad_link": 1,
        "bad_ip": 1,
    }
    assert [f.key[1] for f in got.flows] == [4000, 5000]
    assert got.flows[0].payload_types == {0: 12, 101: 3}
    assert got.flows[0].event_like == {101: 3}
    assert got.flows[1].ssrcs == [9, 10]


def test_a_capture_cut_at_any_byte_reads_as_before(tmp_path: Path) -> None:
    data = pcap_bytes(mixed_frames())
    path = tmp_path / "cut.pcap"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        read_both(path)


def test_a_pcapng_cut_at_any_byte_after_its_interface_reads_as_before(tmp_path: Path) -> None:
    path = tmp_path / "call.pcapng"
    plan = LegPlan(ssrc=0x11, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000), jitter_ms=5)
    write_capture(path, [(np.zeros(1600, np.int16), plan)], pcapng=True)
    data = path.read_bytes()
    shb_len = struct.unpack_from("<I", data, 4)[0]
    first_epb = shb_len + struct.unpack_from("<I", data, shb_len + 4)[0]  # after the IDB
    cut_path = tmp_path / "cut.pcapng"
    for cut in range(first_epb, len(data) + 1):
        cut_path.write_bytes(data[:cut])
        read_both(cut_path)


MUTATIONS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MUTATIONS
@given(st.lists(st.tuples(st.integers(24, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_a_mutated_capture_reads_as_before(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]]
) -> None:
    """Bytes overwritten anywhere after the file header (record headers, lengths,
    addresses, RTP headers): both readers agree, or both refuse. A mutated seconds
    field may put a time past 2038, where the former reader's float seconds are
    only good to a microsecond."""
    data = bytearray(pcap_bytes(mixed_frames()))
    for pos, value in edits:
        data[24 + pos % (len(data) - 24)] = value
    path = tmp_path_factory.mktemp("mut") / "m.pcap"
    path.write_bytes(bytes(data))
    read_both(path, tolerance_us=1)


@MUTATIONS
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_after_a_header_never_crash(
    tmp_path_factory: pytest.TempPathFactory, tail: bytes, ng: bool
) -> None:
    head = shb("<") + idb("<", 1) if ng else pcap_bytes([])
    path = tmp_path_factory.mktemp("rnd") / "r.cap"
    path.write_bytes(head + tail)
    if ng:
        cap = capture.read_capture(path)
        assert all(len(f.packets) >= capture.MIN_RTP_PACKETS for f in cap.flows)
    else:
        read_both(path, tolerance_us=1)


# -- beyond the former reader -------------------------------------------------------------


def leg_frames(n: int = 5, t0_us: int = T0 * 1_000_000) -> list[Frame]:
    return [
        (t0_us + i * 20_000 + 7, udp_frame(("10.0.0.1", 4000), ("10.0.0.2", 5000), rtp(i)))
        for i in range(n)
    ]


def _only_flow(path: Path) -> capture.RtpFlow:
    cap = capture.read_capture(path)
    assert len(cap.flows) == 1
    return cap.flows[0]


@pytest.mark.parametrize(
    "form", [{"big": True}, {"modified": True}, {"big": True, "modified": True}, {"nano": True}]
)
def test_pcap_forms_read_alike(tmp_path: Path, form: dict[str, bool]) -> None:
    plain, other = tmp_path / "plain.pcap", tmp_path / "other.pcap"
    plain.write_bytes(pcap_bytes(leg_frames()))
    other.write_bytes(pcap_bytes(leg_frames(), **form))
    a, b = _only_flow(plain), _only_flow(other)
    assert a.key == b.key and a.packets == b.packets
    assert np.array_equal(a.arrival_us, b.arrival_us)


def test_nanosecond_times_round_to_the_nearest_microsecond(tmp_path: Path) -> None:
    frame = leg_frames(1)[0][1]
    recs = [(T0, ns) for ns in (1_499, 1_500, 999_999_999, 0)]
    data = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)]
    for sec, ns in recs:
        data.append(struct.pack("<IIII", sec, ns, len(frame), len(frame)) + frame)
    path = tmp_path / "ns.pcap"
    path.write_bytes(b"".join(data))
    got = _only_flow(path).arrival_us - T0 * 1_000_000
    assert got.tolist() == [1, 2, 1_000_000, 0]


def test_fcs_bits_of_the_link_type_are_not_a_link_type(tmp_path: Path) -> None:
    frames = [(t, f + b"\xde\xad\xbe\xef") for t, f in leg_frames()]  # 4-byte FCS after each
    path = tmp_path / "fcs.pcap"
    path.write_bytes(pcap_bytes(frames, capture.LINKTYPE_ETHERNET | 1 << 27 | 2 << 28))
    assert len(_only_flow(path).packets) == 5


@pytest.mark.parametrize("e", ["<", ">"], ids=["le", "be"])
def test_pcapng_interfaces_keep_their_own_link_type_and_clock(tmp_path: Path, e: str) -> None:
    """Interface 0: Ethernet, microseconds. Interface 1: raw IP, nanoseconds, 100 s
    offset. Interface 2: Linux cooked, 2^-10 s. Packets in an obsolete packet block too."""
    base = T0 * 1_000_000
    ip = lambda i: _ipv4_udp(("10.0.0.7", 7000 + i), ("10.0.0.8", 8000), rtp(i))  # noqa: E731
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800)
    blocks = [
        shb(e),
        idb(e, 1),
        idb(e, 101, tsresol=9, tsoffset=100),
        idb(e, 113, tsresol=0x80 | 10),
    ]
    for i in range(3):
        f0 = leg_frames(3)[i]
        blocks.append(epb(e, 0, f0[0], f0[1]))
        blocks.append(epb(e, 1, (base + i) * 1000 + 500, ip(0)))
        blocks.append(epb(e, 2, (T0 + i) * 1024 + 512, sll + ip(1)))
        blocks.append(
            epb(
                e,
                0,
                base + 5 + i,
                udp_frame(("10.0.0.9", 1), ("10.0.0.8", 2), rtp(i)),
                obsolete=True,
            )
        )
    blocks.append(epb(e, 3, base, leg_frames(1)[0][1]))  # no interface 3: counted
    path = tmp_path / "ifaces.pcapng"
    path.write_bytes(b"".join(blocks))
    cap = capture.read_capture(path)
    by_port = {f.key[1]: f for f in cap.flows}
    assert sorted(by_port) == [1, 4000, 7000, 7001]
    assert (by_port[4000].arrival_us - base).tolist() == [7, 20_007, 40_007]
    assert (by_port[7000].arrival_us - base).tolist() == [100_000_001, 100_000_002, 100_000_003]
    assert (by_port[7001].arrival_us - base).tolist() == [500_000, 1_500_000, 2_500_000]
    assert (by_port[1].arrival_us - base).tolist() == [5, 6, 7]
    assert cap.skipped == {"unknown_interface": 1}


def test_pcapng_sections_each_have_their_byte_order_and_interfaces(tmp_path: Path) -> None:
    frames = leg_frames(6)
    first = shb("<") + idb("<", 1) + b"".join(epb("<", 0, t, f) for t, f in frames[:3])
    second = shb(">") + idb(">", 1) + b"".join(epb(">", 0, t, f) for t, f in frames[3:])
    path = tmp_path / "sections.pcapng"
    path.write_bytes(first + second)
    flow = _only_flow(path)
    assert len(flow.packets) == 6 and flow.arrival_us.tolist() == [t for t, _ in frames]


def test_many_flows_each_get_their_packets_in_order(tmp_path: Path) -> None:
    n = 3000  # past the flow table's first sizes
    frames = [
        (
            T0 * 1_000_000 + k * n + i,
            udp_frame(
                (f"10.0.{i // 250}.{i % 250}", 10_000 + i),
                ("10.9.9.9", 5000),
                rtp(k, ssrc=i, size=20),
            ),
        )
        for k in range(3)
        for i in range(n)
    ]
    path = tmp_path / "many.pcap"
    path.write_bytes(pcap_bytes(frames))
    cap = read_both(path)
    assert cap is not None and len(cap.flows) == n
    for i, f in enumerate(cap.flows):
        assert f.key[1] == 10_000 + i and f.ssrcs == [i]
        assert [int.from_bytes(p[2:4], "big") for p in f.packets] == [0, 1, 2]


@pytest.mark.parametrize("ng", [False, True], ids=["pcap", "pcapng"])
def test_an_unsupported_link_type_is_named(tmp_path: Path, ng: bool) -> None:
    frame = leg_frames(1)[0][1]
    path = tmp_path / "wifi.cap"
    if ng:
        path.write_bytes(shb("<") + idb("<", 105) + epb("<", 0, 1, frame))
    else:
        path.write_bytes(pcap_bytes([(1, frame)], 105))
    with pytest.raises(InputError, match="unsupported capture link type 105"):
        capture.read_capture(path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xd4\xc3\xb2",
        b"\xd4\xc3\xb2\xa1" + bytes(10),
        b"\x0a\x0d\x0d\x0a" + bytes(30),
        b"GIF89a" + bytes(40),
    ],
    ids=["empty", "3_bytes", "pcap_header_cut", "pcapng_bad_byte_order", "gif"],
)
def test_what_is_not_a_capture_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(data)
    with pytest.raises(InputError, match="is not a pcap or pcapng capture"):
        capture.read_capture(path)


def test_a_capture_of_no_frames_has_no_flows(tmp_path: Path) -> None:
    for data in (pcap_bytes([]), shb("<"), shb("<") + idb("<", 1)):
        path = tmp_path / "none.cap"
        path.write_bytes(data)
        cap = capture.read_capture(path)
        assert cap.flows == [] and cap.datagrams == 0 and cap.skipped == {}

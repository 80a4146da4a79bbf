"""callvault.media.capture: pcap/pcapng reading, flows, legs, clear errors."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest

from callvault.errors import InputError
from callvault.media import capture, pipeline
from callvault.media.rtppack import build_packet
from callvault.media.sample import LegPlan, _ipv4_udp, write_capture

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def _two_legs(tmp_path: Path, *, pcapng: bool = False, **agent_kw: object) -> Path:
    path = tmp_path / ("call.pcapng" if pcapng else "call.pcap")
    write_capture(
        path,
        [
            (
                _tone(2.0),
                LegPlan(ssrc=0x11, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000), **agent_kw),  # type: ignore[arg-type]
            ),
            (
                _tone(2.0),
                LegPlan(
                    law=8,
                    ssrc=0x22,
                    start_offset_ms=3,
                    src=("10.0.0.2", 5002),
                    dst=("10.0.0.1", 4002),
                ),
            ),
        ],
        pcapng=pcapng,
    )
    return path


def _write_frames(path: Path, frames: list[tuple[float, bytes]], linktype: int) -> None:
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=linktype)
        for ts, frame in frames:
            w.writepkt(frame, ts=ts)


def _rtp(i: int, ssrc: int = 7, pt: int = 0) -> bytes:
    return build_packet(pt, i, i * 160, ssrc, bytes(160))


def test_pcap_and_pcapng_give_the_same_flows(tmp_path: Path) -> None:
    a = capture.read_capture(_two_legs(tmp_path))
    b = capture.read_capture(_two_legs(tmp_path, pcapng=True))
    assert [f.key for f in a.flows] == [f.key for f in b.flows]
    for fa, fb in zip(a.flows, b.flows, strict=True):
        assert fa.packets == fb.packets
        # dpkt's writers store a float time apiece (pcap: ts % 1, pcapng: ts rounded):
        # the files' microseconds may differ by one
        assert np.abs(np.subtract(fa.arrival_us, fb.arrival_us)).max() <= 1


def test_first_flow_seen_is_first(tmp_path: Path) -> None:
    cap = capture.read_capture(_two_legs(tmp_path))
    assert [f.key[1] for f in cap.flows] == [4000, 5002]
    assert len(cap.flows[0].packets) == 100 and len(cap.flows[1].packets) == 100
    assert cap.flows[0].payload_types == {0: 100} and cap.flows[1].payload_types == {8: 100}


def test_ssrc_change_stays_on_the_same_flow(tmp_path: Path) -> None:
    cap = capture.read_capture(_two_legs(tmp_path, ssrc_change_at=1.0))
    assert len(cap.flows) == 2
    assert len(cap.flows[0].ssrcs) == 2 and cap.flows[0].ssrcs[0] == 0x11


def test_arrival_times_are_microseconds(tmp_path: Path) -> None:
    cap = capture.read_capture(_two_legs(tmp_path))
    arr = np.asarray(cap.flows[0].arrival_us)
    assert np.all(np.diff(arr) >= 0)
    # 100 packets of 20 ms with small jitter: about 1.98 s from first to last
    assert 1_900_000 < arr[-1] - arr[0] < 2_100_000


def test_linux_cooked_capture(tmp_path: Path) -> None:
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800)
    frames = [
        (1.0 + i * 0.02, sll + _ipv4_udp(("10.1.1.1", 1), ("10.1.1.2", 2), _rtp(i)))
        for i in range(5)
    ]
    path = tmp_path / "sll.pcap"
    _write_frames(path, frames, capture.LINKTYPE_LINUX_SLL)
    cap = capture.read_capture(path)
    assert len(cap.flows) == 1 and len(cap.flows[0].packets) == 5


def test_vlan_tagged_ethernet(tmp_path: Path) -> None:
    eth = ETH[:12] + b"\x81\x00\x00\x64\x08\x00"
    frames = [
        (1.0 + i * 0.02, eth + _ipv4_udp(("10.1.1.1", 1), ("10.1.1.2", 2), _rtp(i)))
        for i in range(4)
    ]
    path = tmp_path / "vlan.pcap"
    _write_frames(path, frames, capture.LINKTYPE_ETHERNET)
    assert len(capture.read_capture(path).flows[0].packets) == 4


def test_ipv6_udp(tmp_path: Path) -> None:
    def v6(payload: bytes) -> bytes:
        udp = struct.pack("!HHHH", 7000, 8000, 8 + len(payload), 0) + payload
        return (
            struct.pack(
                "!IHBB16s16s",
                6 << 28,
                len(udp),
                17,
                64,
                b"\xfd" + bytes(14) + b"\x01",
                b"\xfd" + bytes(14) + b"\x02",
            )
            + udp
        )

    path = tmp_path / "v6.pcap"
    _write_frames(path, [(1.0 + i * 0.02, v6(_rtp(i))) for i in range(4)], capture.LINKTYPE_RAW)
    cap = capture.read_capture(path)
    assert cap.flows[0].key == ("fd00::1", 7000, "fd00::2", 8000)


def test_rtcp_and_sip_are_not_legs(tmp_path: Path) -> None:
    rtcp = struct.pack("!BBHI", 0x80, 200, 6, 7) + bytes(20)  # a sender report
    sip = b"OPTIONS sip:pbx SIP/2.0\r\n\r\n"
    frames = []
    for i in range(5):
        frames.append(
            (1.0 + i * 0.1, ETH + _ipv4_udp(("10.0.0.1", 4001), ("10.0.0.2", 5001), rtcp))
        )
        frames.append((1.0 + i * 0.1, ETH + _ipv4_udp(("10.0.0.1", 5060), ("10.0.0.2", 5060), sip)))
    path = tmp_path / "noise.pcap"
    _write_frames(path, frames, capture.LINKTYPE_ETHERNET)
    cap = capture.read_capture(path)
    assert cap.flows == [] and cap.skipped["not_rtp"] == 10


def test_ip_fragments_are_counted_not_parsed(tmp_path: Path) -> None:
    pkt = bytearray(ETH + _ipv4_udp(("10.0.0.1", 1), ("10.0.0.2", 2), _rtp(0)))
    pkt[14 + 6 : 14 + 8] = struct.pack("!H", 0x2000)  # more fragments
    path = tmp_path / "frag.pcap"
    _write_frames(path, [(1.0, bytes(pkt))], capture.LINKTYPE_ETHERNET)
    assert capture.read_capture(path).skipped == {"ip_fragment": 1}


def test_truncated_capture_keeps_what_came_before(tmp_path: Path) -> None:
    path = _two_legs(tmp_path)
    whole = capture.read_capture(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    part = capture.read_capture(cut)
    n_whole = sum(len(f.packets) for f in whole.flows)
    n_part = sum(len(f.packets) for f in part.flows)
    assert 0.4 * n_whole < n_part < 0.6 * n_whole


def test_not_a_capture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"this is not a capture at all")
    with pytest.raises(InputError, match="not a pcap or pcapng capture"):
        capture.read_capture(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        capture.read_capture(tmp_path / "nope.pcap")


def test_unsupported_codec_is_named(tmp_path: Path) -> None:
    frames = [
        (1.0 + i * 0.02, ETH + _ipv4_udp(("10.0.0.1", 1), ("10.0.0.2", 2), _rtp(i, pt=18)))
        for i in range(5)
    ]
    path = tmp_path / "g729.pcap"
    _write_frames(path, frames, capture.LINKTYPE_ETHERNET)
    flow = capture.read_capture(path).flows[0]
    with pytest.raises(InputError, match=r"unsupported codec .*G729 \(PT 18\)"):
        capture.check_audio(flow)


# -- dynamic payload types: RFC 4733 events only when they look like events ---------------


def _opus_like(path: Path, *, with_pcmu: bool = False) -> Path:
    """A leg whose dynamic PT 111 carries Opus-like payloads (sizes 1 to 120 bytes,
    a few of them 4 bytes, timestamps 20 ms apart at 48 kHz), optionally between
    PCMU packets on the same flow."""
    rng = np.random.default_rng(5)
    frames = []
    for i in range(100):
        if with_pcmu and i % 2 == 0:
            pkt = build_packet(0, i, i * 160, 9, bytes(160))
        else:
            n = 4 if i % 25 == 0 else int(rng.integers(1, 121))  # DTX-sized ones too
            pkt = build_packet(111, i, i * 960, 9, rng.bytes(n))
        frames.append(
            (1.0 + i * 0.02, ETH + _ipv4_udp(("10.0.0.1", 4000), ("10.0.0.2", 5000), pkt))
        )
    _write_frames(path, frames, capture.LINKTYPE_ETHERNET)
    return path


def test_a_dynamic_type_with_codec_payloads_is_an_unsupported_codec(tmp_path: Path) -> None:
    path = _opus_like(tmp_path / "opus.pcap")
    flow = capture.read_capture(path).flows[0]
    assert flow.payload_types == {111: 100}
    assert flow.event_payload_types() == ()  # not taken for telephone events
    with pytest.raises(InputError, match=r"unsupported codec on .*dynamic \(PT 111\)"):
        capture.check_audio(flow)
    # the import of the capture fails with that reason (never silence)
    with pytest.raises(InputError, match=r"unsupported codec .*PT 111.*callvault records"):
        pipeline.parse_inputs([str(path)])


def test_codec_packets_on_a_dynamic_type_beside_audio_are_counted_unsupported(
    tmp_path: Path,
) -> None:
    path = _opus_like(tmp_path / "mixed.pcap", with_pcmu=True)
    legs = pipeline.parse_inputs([str(path)])
    assert legs[0].flow is not None and legs[0].flow.event_payload_types() == ()
    s = pipeline.run_call(legs, pipeline.Settings(), encode=False).legs[0].summary()
    assert s["unsupported_codec"]["packets"] == 50
    assert s["unsupported_codec"]["payload_types"] == [111]
    assert s["telephone_events"] == []  # codec bytes are never read as events


def test_real_events_on_pt_101_still_record_their_dtmf(tmp_path: Path) -> None:
    path = tmp_path / "dtmf.pcap"
    write_capture(path, [(_tone(3.0), LegPlan(dtmf=((1.0, "4"), (2.0, "2"))))])
    flow = capture.read_capture(path).flows[0]
    assert flow.event_payload_types() == (101,)
    capture.check_audio(flow)
    legs = pipeline.parse_inputs([str(path)])
    s = pipeline.run_call(legs, pipeline.Settings(), encode=False).legs[0].summary()
    assert [e["digit"] for e in s["telephone_events"]] == ["4", "2"]
    assert s["unsupported_codec"]["packets"] == 0


def test_an_events_only_flow_is_not_an_unsupported_codec(tmp_path: Path) -> None:
    body = struct.pack("!BBH", 5, 10, 160)  # RFC 4733 2.3: event 5, volume 10
    frames = [
        (
            1.0 + i * 0.02,
            ETH + _ipv4_udp(("10.0.0.1", 1), ("10.0.0.2", 2), build_packet(101, i, 800, 7, body)),
        )
        for i in range(5)
    ]
    path = tmp_path / "events.pcap"
    _write_frames(path, frames, capture.LINKTYPE_ETHERNET)
    flow = capture.read_capture(path).flows[0]
    assert flow.event_payload_types() == (101,)
    capture.check_audio(flow)  # no audio, but nothing unsupported either

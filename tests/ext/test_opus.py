"""callvault._opus: codec, packet framing, multistream packing, Ogg CRC, silence policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from callvault import _opus
from callvault.errors import CodecError
from tests import audio

LOOKAHEAD_8K = 52  # libopus' 6.5 ms delay at 8 kHz (312 samples at 48 kHz)


def split(data: bytes, lengths: np.ndarray) -> list[bytes]:
    off = np.concatenate([[0], np.cumsum(lengths)])
    return [data[off[i] : off[i + 1]] for i in range(len(lengths))]


def join(packets: list[bytes]) -> tuple[bytes, np.ndarray]:
    return b"".join(packets), np.array([len(p) for p in packets], dtype=np.int32)


@pytest.fixture(scope="module")
def clean_speech() -> np.ndarray:
    return np.concatenate([audio.speech(s) for s in audio.SENTENCES])  # ~52 s


@pytest.fixture(scope="module")
def legs() -> tuple[np.ndarray, np.ndarray]:
    a, b = audio.dialogue(20)
    return audio.noisy_line(a, -48, seed=1), audio.noisy_line(b, -48, seed=2)


def encode(x: np.ndarray, **kw: object) -> tuple[bytes, np.ndarray]:
    enc = _opus.Encoder(**kw)  # type: ignore[arg-type]
    return enc.encode_frames(audio.frames(np.concatenate([x, np.zeros(160, np.int16)])))


def decode_8k(data: bytes, lengths: np.ndarray, n: int) -> np.ndarray:
    return _opus.Decoder().decode_frames(data, lengths).reshape(-1)[LOOKAHEAD_8K : LOOKAHEAD_8K + n]


# -- encoder ------------------------------------------------------------------


def test_encoder_defaults_and_properties() -> None:
    e = _opus.Encoder()
    assert (e.sample_rate, e.channels, e.frame_size) == (8000, 1, 160)
    assert e.lookahead == 312  # at 48 kHz: the Ogg pre-skip
    assert e.bitrate == 12000
    assert e.complexity == 8
    assert e.dtx is True
    e.bitrate = 16000
    e.complexity = 3
    e.dtx = False
    assert (e.bitrate, e.complexity, e.dtx) == (16000, 3, False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sample_rate": 44100}, "sample_rate"),
        ({"channels": 3}, "channels"),
        ({"application": "music"}, "application"),
        ({"frame_ms": 25}, "frame_ms"),
        ({"bitrate": 100}, "bitrate"),
        ({"complexity": 11}, "complexity"),
        ({"packet_loss_perc": 101}, "packet_loss_perc"),
    ],
)
def test_encoder_rejects_invalid_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _opus.Encoder(**kwargs)  # type: ignore[arg-type]


def test_libopus_error_on_setter_is_codec_error() -> None:
    e = _opus.Encoder()
    with pytest.raises(CodecError) as info:
        e.complexity = 42  # libopus: OPUS_BAD_ARG
    assert info.value.code == -1
    assert "invalid argument" in str(info.value)


def test_invalid_packet_is_codec_error() -> None:
    with pytest.raises(CodecError) as info:
        _opus.Decoder().decode(b"\x03\x00")  # code 3 with zero frames
    assert info.value.function == "opus_decode"
    assert info.value.code == -4  # OPUS_INVALID_PACKET


def test_encode_rejects_wrong_frame_shape() -> None:
    e = _opus.Encoder()
    with pytest.raises(ValueError, match="160"):
        e.encode(np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="160"):
        e.encode_frames(np.zeros((3, 100), np.int16))


def test_encode_frames_equals_frame_by_frame(clean_speech: np.ndarray) -> None:
    f = audio.frames(clean_speech[: 8000 * 3])
    data, lengths = _opus.Encoder().encode_frames(f)
    e = _opus.Encoder()
    assert split(data, lengths) == [e.encode(row) for row in f]


def test_max_bytes_caps_every_packet(clean_speech: np.ndarray) -> None:
    f = audio.frames(clean_speech[: 8000 * 3])
    _, lengths = _opus.Encoder(dtx=False).encode_frames(f, max_bytes=16)
    assert lengths.max() <= 16
    assert lengths.min() > 2


def test_decode_none_conceals_one_frame() -> None:
    d = _opus.Decoder()
    d.decode(_opus.Encoder().encode(np.zeros(160, np.int16)))
    assert d.decode(None).shape == (160,)


def test_reset_restarts_the_encoder(clean_speech: np.ndarray) -> None:
    f = audio.frames(clean_speech[:1600])
    e = _opus.Encoder()
    first = e.encode_frames(f)
    e.reset()
    again = e.encode_frames(f)
    assert again[0] == first[0] and np.array_equal(again[1], first[1])


def test_clean_speech_pesq_at_12kbps(clean_speech: np.ndarray) -> None:
    # Measured 3.97 (complexity 8, libopus 1.3.1); 3.8 leaves room for espeak-ng/libopus builds.
    data, lengths = encode(clean_speech, dtx=False)
    score = audio.pesq_nb(clean_speech, decode_8k(data, lengths, len(clean_speech)))
    assert score >= 3.8


@pytest.mark.parametrize("bitrate", [12000, 16000])
def test_encoder_honours_bitrate(clean_speech: np.ndarray, bitrate: int) -> None:
    # Over the frames that carry signal: espeak-ng's pauses between sentences are
    # digital silence, which VBR codes in a few bytes whatever the target.
    _, lengths = encode(clean_speech, dtx=False, bitrate=bitrate)
    fr = audio.frames(np.concatenate([clean_speech, np.zeros(160, np.int16)]))
    live = np.abs(fr).max(axis=1) > 0
    rate = lengths[live].sum() * 8 / (live.sum() * 0.020)
    assert abs(rate - bitrate) / bitrate <= 0.15, rate


# -- self-delimiting framing and multistream packing ----------------------------


def _frames_same_config(n: int, vbr: bool) -> list[bytes]:
    """n SILK NB 20 ms frames (TOC stripped) from real speech, sizes equal if not vbr."""
    x = audio.speech("Packing frames into one packet.")
    data, lengths = _opus.Encoder(vbr=vbr, dtx=False).encode_frames(audio.frames(x)[5 : 5 + n])
    return [p[1:] for p in split(data, lengths)]


def _len_bytes(n: int) -> bytes:
    return bytes([n]) if n < 252 else bytes([252 + (n & 3), (n - 252 - (n & 3)) >> 2])


def _framed_every_code() -> dict[str, tuple[bytes, list[bytes], int]]:
    """Hand-framed Opus packets (RFC 6716 3.2) of codes 0, 1, 2 and 3 (CBR, VBR, padded),
    each with the frames and the padding bytes it was made of."""
    cbr = _frames_same_config(3, vbr=False)
    assert len({len(f) for f in cbr}) == 1
    vbr = _frames_same_config(3, vbr=True)
    toc = 0x08  # config 1: SILK NB 20 ms, mono
    return {
        "code0": (bytes([toc]) + vbr[0], vbr[:1], 0),
        "code1": (bytes([toc | 1]) + cbr[0] + cbr[1], cbr[:2], 0),
        "code2": (bytes([toc | 2]) + _len_bytes(len(vbr[0])) + vbr[0] + vbr[1], vbr[:2], 0),
        "code3_cbr": (bytes([toc | 3, 3]) + b"".join(cbr), cbr, 0),
        "code3_vbr": (
            bytes([toc | 3, 0x80 | 3])
            + _len_bytes(len(vbr[0]))
            + _len_bytes(len(vbr[1]))
            + b"".join(vbr),
            vbr,
            0,
        ),
        "code3_vbr_padded": (
            bytes([toc | 3, 0xC0 | 3, 255, 10])
            + _len_bytes(len(vbr[0]))
            + _len_bytes(len(vbr[1]))
            + b"".join(vbr)
            + bytes(264),
            vbr,
            264,
        ),
        "code3_cbr_padded": (
            bytes([toc | 3, 0x40 | 2, 3]) + cbr[0] + cbr[1] + bytes(3),
            cbr[:2],
            3,
        ),
    }


def _packets_for_every_code() -> dict[str, bytes]:
    return {k: v[0] for k, v in _framed_every_code().items()}


PACKET_CASES = list(_packets_for_every_code()) if audio.have("espeak-ng") else []


@pytest.mark.parametrize("case", PACKET_CASES)
def test_self_delimited_roundtrip_every_code(case: str) -> None:
    pkt = _packets_for_every_code()[case]
    other = _opus.Encoder().encode(np.zeros(160, np.int16))
    assert _opus.Decoder().decode(pkt).shape[0] == _opus.packet_samples(pkt, 8000)
    packed = _opus.self_delimited(pkt) + other
    assert _opus.unpack_multistream(packed, 2) == [pkt, other]


@pytest.mark.parametrize("case", PACKET_CASES)
def test_multistream_decode_of_packed_equals_mono_decodes_every_code(case: str) -> None:
    pkt = _packets_for_every_code()[case]
    other = _opus.Encoder(dtx=False).encode(np.zeros(160, np.int16))
    if _opus.packet_samples(other) != _opus.packet_samples(pkt):
        other = pkt  # multi-frame packet: pair it with itself (same duration)
    data, lengths = _opus.pack_multistream(pkt, [len(pkt)], other, [len(other)])
    n = _opus.packet_samples(pkt, 8000)
    ms = _opus.MultistreamDecoder(8000, 2, 2, 0, [0, 1]).decode(data, n)
    a = _opus.Decoder().decode(pkt, n)
    b = _opus.Decoder().decode(other, n)
    assert np.array_equal(ms[:, 0], a)
    assert np.array_equal(ms[:, 1], b)


@pytest.mark.parametrize("case", PACKET_CASES)
def test_parse_packet_both_modes_give_the_same_frames_every_code(case: str) -> None:
    pkt, frames, padding = _framed_every_code()[case]
    assert _opus.parse_packet(pkt) == (frames, padding, len(pkt))
    sd = _opus.self_delimited(pkt)
    other = _opus.Encoder().encode(np.zeros(160, np.int16))
    # Self-delimited: the same frames and padding, the packet's own span, the next stream unread.
    assert _opus.parse_packet(sd + other, self_delimited=True) == (frames, padding, len(sd))
    assert _opus.parse_packet(sd, self_delimited=True) == (frames, padding, len(sd))


def test_parse_packet_modes_agree_on_arbitrary_bytes() -> None:
    # Random packets, each code, with and without VBR/padding flags: plain framing is
    # valid exactly when self_delimited() accepts it, and then both modes read it alike.
    rng = np.random.default_rng(5)
    valid = 0
    for _ in range(3000):
        n = int(rng.choice([1, 2, 3, 5, 9, 40, 300, 1400]))
        b = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if n > 1 and rng.random() < 0.5:
            b[0] |= 3
            b[1] = (b[1] & 0xC0) | int(rng.integers(1, 4))
        pkt = bytes(b)
        try:
            plain = _opus.parse_packet(pkt)
        except CodecError:
            with pytest.raises(CodecError):
                _opus.self_delimited(pkt)
            continue
        valid += 1
        sd = _opus.self_delimited(pkt)
        assert plain[2] == len(pkt)
        assert _opus.parse_packet(sd + pkt, self_delimited=True) == (plain[0], plain[1], len(sd))
        assert _opus.unpack_multistream(sd + pkt, 2) == [pkt, pkt]
        with pytest.raises(CodecError):  # one byte short: a truncated stream
            _opus.parse_packet(sd[:-1], self_delimited=True)
    assert valid > 300


@pytest.mark.parametrize(
    "pkt",
    [b"", b"\x03", b"\x03\x00", b"\x03\x41", b"\x03\xc1\xff", b"\x02\xfc", b"\x02\x05\x00"],
)
def test_parse_packet_invalid_in_both_modes(pkt: bytes) -> None:
    with pytest.raises(CodecError, match="not a valid Opus packet") as plain:
        _opus.parse_packet(pkt)
    with pytest.raises(CodecError, match="not a valid self-delimited Opus packet") as sd:
        _opus.parse_packet(pkt, self_delimited=True)
    assert plain.value.code == sd.value.code == -4  # OPUS_INVALID_PACKET


def test_self_delimited_two_byte_length() -> None:
    # A 48 kHz CELT frame at 256 kb/s is ~640 bytes: its length needs 2 bytes (>= 252).
    e = _opus.Encoder(sample_rate=48000, bitrate=256000, application="audio", dtx=False)
    rng = np.random.default_rng(1)
    pkt = e.encode((rng.standard_normal(960) * 8000).astype(np.int16))
    assert len(pkt) - 1 >= 252
    sd = _opus.self_delimited(pkt)
    assert len(sd) == len(pkt) + 2
    assert _opus.unpack_multistream(sd + pkt, 2) == [pkt, pkt]


def test_pack_multistream_bit_exact_on_dialogue(legs: tuple[np.ndarray, np.ndarray]) -> None:
    da, la = encode(legs[0])
    db, lb = encode(legs[1])
    assert (la == 1).any() and (lb == 1).any()  # DTX packets are in the mix
    data, lengths = _opus.pack_multistream(da, la, db, lb)
    assert len(data) == len(da) + len(db) + int(np.sum(la <= 252)) + 2 * int(np.sum(la > 252))
    pa, pb = split(da, la), split(db, lb)
    for i, p in enumerate(split(data, lengths)):
        assert _opus.unpack_multistream(p, 2) == [pa[i], pb[i]]
    ms = _opus.MultistreamDecoder(8000, 2, 2, 0, [0, 1]).decode_frames(data, lengths)
    assert np.array_equal(ms[:, :, 0], _opus.Decoder().decode_frames(da, la))
    assert np.array_equal(ms[:, :, 1], _opus.Decoder().decode_frames(db, lb))


def test_pack_multistream_rejects_mismatch() -> None:
    p = _opus.Encoder().encode(np.zeros(160, np.int16))
    with pytest.raises(ValueError, match="packets"):
        _opus.pack_multistream(p, [len(p)], p + p, [len(p), len(p)])
    with pytest.raises(ValueError, match="empty"):
        _opus.pack_multistream(p, [len(p)], b"", [0])
    with pytest.raises(ValueError, match="lengths add up"):
        _opus.pack_multistream(p, [len(p) + 1], p, [len(p)])
    p40 = _opus.Encoder(frame_ms=40).encode(np.zeros(320, np.int16))
    with pytest.raises(ValueError, match="durations"):
        _opus.pack_multistream(p, [len(p)], p40, [len(p40)])


def test_unpack_rejects_truncated_stream() -> None:
    p = _opus.Encoder(dtx=False).encode(np.zeros(160, np.int16))
    with pytest.raises(CodecError):
        _opus.unpack_multistream(_opus.self_delimited(p)[:-2], 2)


# -- Ogg CRC ------------------------------------------------------------------


def _crc_reference(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


@pytest.mark.parametrize("data", [b"", b"OggS", bytes(range(256)) * 3])
def test_ogg_crc_matches_bitwise_definition(data: bytes) -> None:
    assert _opus.ogg_crc(data) == _crc_reference(data)
    assert _opus.ogg_crc(data[5:], _opus.ogg_crc(data[:5])) == _crc_reference(data)


# -- the silence policy (docs/opus-silence.md, table 1) --------------------------


def silence_table(seconds: float = 60.0) -> list[dict[str, Any]]:
    """Bytes and PESQ-NB per leg for each silence option. Printed by the test below."""
    a, b = audio.dialogue(seconds)
    rows: list[dict[str, Any]] = []
    line_a, line_b = audio.noisy_line(a, -48, seed=1), audio.noisy_line(b, -48, seed=2)
    for name, x in (("A", line_a), ("B", line_b)):
        vad = audio.energy_vad(x)
        f = audio.frames(np.concatenate([x, np.zeros(160, np.int16)]))
        gate = np.ones(len(f), bool)
        gate[: len(vad)] = vad
        options: dict[str, tuple[bytes, np.ndarray]] = {}
        options["a: every frame, DTX off"] = _opus.Encoder(dtx=False).encode_frames(f)
        options["b: libopus DTX"] = _opus.Encoder(dtx=True).encode_frames(f)
        pk = split(*_opus.Encoder(dtx=True).encode_frames(f))
        options["c1: VAD -> TOC-only (PLC/CNG)"] = join(
            [p if gate[i] else p[:1] for i, p in enumerate(pk)]
        )
        options["c2: VAD -> 8 kb/s in silence+DTX"] = _encode_vad_bitrate(f, gate, 8000, True)
        options["c3: VAD -> 7 kb/s in silence"] = _encode_vad_bitrate(f, gate, 7000, False)
        options["c4: VAD -> max 16 B in silence"] = _opus.Encoder(dtx=False).encode_frames(
            f, max_bytes=np.where(gate, 4000, 16)
        )
        base = None
        for label, (d, lens) in options.items():
            q = audio.pesq_nb(x, decode_8k(d, lens, len(x)))
            base = base or (len(d), q)
            rows.append(
                {
                    "leg": name,
                    "option": label,
                    "bytes": len(d),
                    "saved": 1 - len(d) / base[0],
                    "pesq": q,
                    "lost": base[1] - q,
                    "toc_only": int(np.sum(lens <= 2)),
                }
            )
    return rows


def _encode_vad_bitrate(
    f: np.ndarray, gate: np.ndarray, low: int, dtx: bool
) -> tuple[bytes, np.ndarray]:
    e = _opus.Encoder(dtx=dtx)
    out: list[tuple[bytes, np.ndarray]] = []
    i = 0
    while i < len(f):
        j = i
        while j < len(f) and gate[j] == gate[i]:
            j += 1
        e.bitrate = 12000 if gate[i] else low
        out.append(e.encode_frames(f[i:j]))
        i = j
    return b"".join(d for d, _ in out), np.concatenate([n for _, n in out])


@pytest.mark.slow
def test_silence_policy_meets_target() -> None:
    rows = silence_table()
    for r in rows:
        print(
            f"{r['leg']} {r['option']:32s} bytes {r['bytes']:6d} saved {100 * r['saved']:5.1f}% "
            f"PESQ {r['pesq']:.3f} lost {r['lost']:+.3f} TOC-only {r['toc_only']}"
        )
    chosen = [r for r in rows if str(r["option"]).startswith("c2")]
    for r in chosen:  # target: >= 25 % saved, <= 0.2 PESQ-NB lost, per leg
        assert float(r["saved"]) >= 0.25 and float(r["lost"]) <= 0.2, r
    dtx = [r for r in rows if str(r["option"]).startswith("b")]
    assert all(float(r["saved"]) < 0.25 for r in dtx)  # DTX alone misses the target

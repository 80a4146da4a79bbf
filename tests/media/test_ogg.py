"""callvault.media.ogg: Ogg Opus files checked with real opusinfo, opusdec and ffmpeg."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest

from callvault import _opus
from callvault.errors import FormatError, InputError
from callvault.media import ogg
from callvault.media.packets import PacketRun
from tests import audio

SECONDS = 20
# An odd length (not a whole number of 20 ms frames) exercises end trimming.
N8K = SECONDS * 8000 + 37
DURATION_48K = N8K * 6


@pytest.fixture(scope="module")
def legs() -> tuple[np.ndarray, np.ndarray]:
    a, b = audio.dialogue(SECONDS)
    return (audio.noisy_line(a, -48, seed=1)[:N8K], audio.noisy_line(b, -48, seed=2)[:N8K])


def encode_leg(x: np.ndarray, **kw: object) -> tuple[bytes, np.ndarray, int]:
    """Encode with one extra frame so the encoder's lookahead is flushed."""
    enc = _opus.Encoder(**kw)  # type: ignore[arg-type]
    data, lengths = enc.encode_frames(audio.frames(np.concatenate([x, np.zeros(160, np.int16)])))
    return data, lengths, enc.lookahead


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, legs: tuple[np.ndarray, np.ndarray]) -> dict:
    d = tmp_path_factory.mktemp("ogg")
    da, la, pre = encode_leg(legs[0])
    db, lb, _ = encode_leg(legs[1])
    mono = d / "mono.opus"
    with ogg.OggOpusWriter(mono, channels=1, pre_skip=pre, comments={"CALL_ID": "c-1"}) as w:
        w.write_packets(da, la)
        w.close(DURATION_48K)
    dual = d / "dual.opus"
    data, lengths = _opus.pack_multistream(da, la, db, lb)
    with ogg.OggOpusWriter(dual, channels=2, pre_skip=pre, serial=0x1234) as w:
        w.write_packets(data, lengths)
        w.close(DURATION_48K)
    return {"mono": (mono, 1, da, la), "dual": (dual, 2, data, lengths), "pre": pre}


KINDS = ["mono", "dual"]


@pytest.mark.parametrize("kind", KINDS)
def test_opusinfo_reports_no_warning(files: dict, kind: str) -> None:
    path, channels, *_ = files[kind]
    res = subprocess.run(["opusinfo", str(path)], capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    bad = [ln for ln in out.splitlines() if "warning" in ln.lower() or "error" in ln.lower()]
    assert not bad, out
    assert f"Channels: {channels}" in out
    assert "Playback length: 0m:20.004s" in out  # 160037 samples at 8 kHz
    if channels == 2:
        assert "Streams: 2, Coupled: 0" in out and "Map: [0, 1]" in out


@pytest.mark.parametrize("kind", KINDS)
def test_opusdec_decodes_exact_duration(files: dict, kind: str) -> None:
    path, channels, *_ = files[kind]
    pcm = audio.decode_opusdec(path, channels, rate=48000)
    assert pcm.shape == (DURATION_48K, channels)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("libopus", [False, True], ids=["ffmpeg-native", "ffmpeg-libopus"])
def test_ffmpeg_decodes_exact_duration(files: dict, kind: str, libopus: bool) -> None:
    path, channels, *_ = files[kind]
    pcm = audio.decode_ffmpeg(path, channels, rate=48000, libopus=libopus)
    assert pcm.shape == (DURATION_48K, channels)


def test_reader_parses_headers(files: dict) -> None:
    r = ogg.OggOpusReader(files["dual"][0])
    assert (r.channels, r.pre_skip, r.input_sample_rate, r.mapping_family) == (2, 312, 8000, 1)
    assert (r.head.stream_count, r.head.coupled_count, r.head.mapping) == (2, 0, (0, 1))
    assert r.duration_48k == DURATION_48K
    m = ogg.OggOpusReader(files["mono"][0])
    assert (m.channels, m.mapping_family, m.vendor) == (1, 0, "callvault")
    assert m.comments == {"CALL_ID": "c-1"}


@pytest.mark.parametrize("kind", KINDS)
def test_reader_roundtrips_writer_packets(files: dict, kind: str) -> None:
    path, _, data, lengths = files[kind]
    r = ogg.OggOpusReader(path)
    got, got_lengths = r.packets_data()
    assert got == data and np.array_equal(got_lengths, lengths)
    packets = list(r)
    assert packets[0].time == pytest.approx(-312 / 48000)
    assert packets[10].granule == 11 * 960 and packets[10].time == pytest.approx(0.2 - 312 / 48000)


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, 7.3, 19.99])
def test_reader_seek_lands_on_page_containing_time(files: dict, t: float) -> None:
    r = ogg.OggOpusReader(files["mono"][0])
    start = r.seek(t)
    first = next(iter(r))
    assert first.time == pytest.approx(start)
    assert start <= t < start + 1.0 + 0.02  # pages hold at most 1 s
    # the sample at t is decoded by a packet on this page, i.e. at or after `first`
    assert first.granule - first.samples_48k <= r.pre_skip + round(t * 48000)


def test_read_pcm_matches_opusdec(files: dict) -> None:
    r = ogg.OggOpusReader(files["dual"][0])
    ours = r.read_pcm(sample_rate=48000)
    ref = audio.decode_opusdec(files["dual"][0], 2, rate=48000)
    assert ours.shape == ref.shape == (DURATION_48K, 2)
    # opusdec runs with --no-dither (tests/audio.py): libopus' float output
    # rounded to int16 is libopus' int16 output, sample for sample, give or take 1
    err = np.abs(ours.astype(np.int32) - ref.astype(np.int32))
    assert int(err.max()) <= 1, int(err.max())


@pytest.mark.parametrize("start, end", [(2.0, 4.0), (7.25, 9.5), (11.0, 13.0)])
def test_read_pcm_range_matches_full_decode(files: dict, start: float, end: float) -> None:
    """After the 80 ms preroll, speech is bit-exact; DTX frames differ only as comfort noise.

    libopus' comfort noise draws on decoder history (its random generator), so a
    decoder started at a seek point renders DTX frames as different noise of the
    same level; frames from real packets converge to the same samples.
    """
    r = ogg.OggOpusReader(files["mono"][0])
    full = r.read_pcm()
    assert full.shape == (N8K, 1)
    part = r.read_pcm(start, end)
    n = round((end - start) * 8000)
    assert part.shape == (n, 1)
    ref = full[round(start * 8000) : round(start * 8000) + n, 0].astype(float)
    err = part[:, 0].astype(float) - ref
    k = n // 160 * 160
    frame_err = np.sqrt(np.mean(err[:k].reshape(-1, 160) ** 2, axis=1))
    frame_ref = np.sqrt(np.mean(ref[:k].reshape(-1, 160) ** 2, axis=1))
    assert (frame_err[frame_ref > 300] < 0.05 * frame_ref[frame_ref > 300] + 10).all()
    assert frame_err.max() < 150  # at most comfort-noise level (line noise is ~ -48 dBFS)
    assert (frame_err[5:] == 0).mean() > 0.5


def _corrupt(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x40
    return bytes(b)


def test_corrupt_crc_raises_format_error(files: dict) -> None:
    raw = Path(files["mono"][0]).read_bytes()
    with pytest.raises(FormatError, match="CRC mismatch"):
        ogg.OggOpusReader(io.BytesIO(_corrupt(raw, len(raw) // 2)))


def test_truncated_file_raises_format_error(files: dict) -> None:
    raw = Path(files["mono"][0]).read_bytes()
    with pytest.raises(FormatError, match="truncated"):
        ogg.OggOpusReader(io.BytesIO(raw[: len(raw) - 100]))


def test_not_ogg_raises_format_error() -> None:
    with pytest.raises(FormatError, match="capture pattern"):
        ogg.OggOpusReader(io.BytesIO(b"RIFF" + bytes(100)))


def test_writer_rejects_trim_beyond_written(tmp_path: Path) -> None:
    p = _opus.Encoder().encode(np.zeros(160, np.int16))
    w = ogg.OggOpusWriter(tmp_path / "x.opus", channels=1, pre_skip=312)
    w.write_packet(p)
    with pytest.raises(ValueError, match="exceeds"):
        w.close(960)


def test_large_comment_header_spans_pages(tmp_path: Path) -> None:
    path = tmp_path / "tags.opus"
    e = _opus.Encoder()
    with ogg.OggOpusWriter(
        path, channels=1, pre_skip=e.lookahead, comments={"NOTE": "x" * 70000}
    ) as w:
        for _ in range(60):
            w.write_packet(e.encode(np.zeros(160, np.int16)))
    res = subprocess.run(["opusinfo", str(path)], capture_output=True, text=True)
    assert "warning" not in (res.stdout + res.stderr).lower()
    r = ogg.OggOpusReader(path)
    assert r.comments["NOTE"] == "x" * 70000 and len(r) == 60


# -- DTX packets and ffmpeg's native decoder (docs/opus-silence.md, part 2) -------


@pytest.fixture(scope="module")
def dtx_legs() -> tuple[np.ndarray, np.ndarray]:
    a, b = audio.dialogue(30)
    return audio.noisy_line(a, -48, seed=3), audio.noisy_line(b, -48, seed=4)


def _toc_gated(x: np.ndarray) -> tuple[bytes, np.ndarray, int]:
    """libopus DTX plus VAD-silent frames sent as TOC-only packets: many DTX packets."""
    data, lengths, pre = encode_leg(x)
    gate = audio.energy_vad(x)
    off = np.concatenate([[0], np.cumsum(lengths)])
    pk = [data[off[i] : off[i + 1]] for i in range(len(lengths))]
    pk = [p[:1] if i < len(gate) and not gate[i] else p for i, p in enumerate(pk)]
    return b"".join(pk), np.array([len(p) for p in pk], np.int32), pre


def _per_leg_pesq(path: Path, legs: tuple[np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    out = {}
    for name, pcm in (
        ("opusdec", audio.decode_opusdec(path, 2)),
        ("ffmpeg", audio.decode_ffmpeg(path, 2)),
    ):
        y = audio.resample_48k_to_8k(pcm)
        out[name] = [audio.pesq_nb(legs[c], y[:, c]) for c in (0, 1)]
    return out


def _write_dual(
    path: Path, a: tuple[bytes, np.ndarray], b: tuple[bytes, np.ndarray], pre: int, n: int
) -> None:
    data, lengths = _opus.pack_multistream(*a, *b)
    with ogg.OggOpusWriter(path, channels=2, pre_skip=pre) as w:
        w.write_packets(data, lengths)
        w.close(n * 6)


@pytest.mark.slow
def test_ffmpeg_native_misdecodes_toc_only_dtx_packets(
    tmp_path: Path, dtx_legs: tuple[np.ndarray, np.ndarray]
) -> None:
    """Pins the problem dtx_safe solves: raw DTX packets decode differently in ffmpeg."""
    da, la, pre = _toc_gated(dtx_legs[0])
    db, lb, _ = _toc_gated(dtx_legs[1])
    path = tmp_path / "raw.opus"
    _write_dual(path, (da, la), (db, lb), pre, len(dtx_legs[0]))
    s = _per_leg_pesq(path, dtx_legs)
    print("raw DTX", s)
    assert s["opusdec"][0] - s["ffmpeg"][0] > 0.3  # first (self-delimited) stream
    assert s["opusdec"][1] - s["ffmpeg"][1] > 0.1  # last stream


@pytest.mark.slow
def test_dtx_safe_decoders_agree_per_leg(
    tmp_path: Path, dtx_legs: tuple[np.ndarray, np.ndarray]
) -> None:
    da, la, pre = _toc_gated(dtx_legs[0])
    db, lb, _ = _toc_gated(dtx_legs[1])
    sa, sb = ogg.dtx_safe(da, la), ogg.dtx_safe(db, lb)
    path = tmp_path / "safe.opus"
    _write_dual(path, sa, sb, pre, len(dtx_legs[0]))
    s = _per_leg_pesq(path, dtx_legs)
    print("dtx_safe", s)
    for c in (0, 1):
        assert abs(s["opusdec"][c] - s["ffmpeg"][c]) <= 0.1
    # still saving bytes against encoding every frame
    full = sum(len(encode_leg(x, dtx=False)[0]) for x in dtx_legs)
    assert len(sa[0]) + len(sb[0]) < 0.85 * full


def test_dtx_safe_replaces_only_dtx_packets(legs: tuple[np.ndarray, np.ndarray]) -> None:
    data, lengths, _ = encode_leg(legs[0])
    safe, safe_lengths = ogg.dtx_safe(data, lengths)
    assert len(safe_lengths) == len(lengths)
    dtx = lengths <= 2
    assert dtx.any() and (safe_lengths[dtx] > 2).all() and (safe_lengths[dtx] <= 15).all()
    off = np.concatenate([[0], np.cumsum(lengths)])
    soff = np.concatenate([[0], np.cumsum(safe_lengths)])
    for i in np.flatnonzero(~dtx):
        assert safe[soff[i] : soff[i + 1]] == data[off[i] : off[i + 1]]
    # comfort noise packets stay SILK narrowband 20 ms like the rest (no CELT switch)
    assert {safe[o] >> 3 for o in soff[:-1]} == {data[0] >> 3}


def test_replace_dtx_codes_the_given_frames(legs: tuple[np.ndarray, np.ndarray]) -> None:
    """The one DTX replacer: each TOC-only packet becomes the side encoder's packet of
    the same frame; dtx_safe is it over the frames libopus decodes."""
    data, lengths, _ = encode_leg(legs[0])
    run = PacketRun(data, lengths)
    pcm = _opus.Decoder().decode_frames(data, lengths, 160)
    side = _opus.Encoder(bitrate=ogg.COMFORT_NOISE_BITRATE, dtx=False)
    out = ogg.replace_dtx(run, pcm, side, ogg.COMFORT_NOISE_BYTES)
    assert out == PacketRun(*ogg.dtx_safe(data, lengths))
    dtx = np.flatnonzero(lengths <= ogg.DTX_MAX_BYTES)
    fresh = _opus.Encoder(bitrate=ogg.COMFORT_NOISE_BITRATE, dtx=False)
    assert out[int(dtx[0])] == fresh.encode(pcm[dtx[0]], max_bytes=ogg.COMFORT_NOISE_BYTES)
    no_dtx = run[: int(dtx[0])]
    assert ogg.replace_dtx(no_dtx, pcm[: len(no_dtx)], side, 15) is no_dtx


def test_write_call_is_the_dual_track_layout(
    files: dict, legs: tuple[np.ndarray, np.ndarray]
) -> None:
    """write_call makes what the writer makes from pack_multistream (docs/format.md 5, 6)."""
    _, _, da, la = files["mono"]
    _, _, data, lengths = files["dual"]
    db, lb, _ = encode_leg(legs[1])
    frames = DURATION_48K // 960
    out = io.BytesIO()
    ogg.write_call(
        out,
        [PacketRun(da, la), (db, lb)],
        pre_skip=files["pre"],
        frames=frames,
        comments=ogg.channel_comments(["agent", "customer"]),
    )
    r = ogg.OggOpusReader(io.BytesIO(out.getvalue()))
    assert (r.channels, r.mapping_family, r.pre_skip) == (2, 1, files["pre"])
    assert r.comments == {"CALLVAULT_CHANNEL_0": "agent", "CALLVAULT_CHANNEL_1": "customer"}
    got = r.packets_data()
    assert got[0] == data and np.array_equal(got[1], lengths)
    assert r.duration_48k == frames * 960
    mono = io.BytesIO()
    ogg.write_call(mono, [(da, la)], pre_skip=files["pre"], frames=frames)
    assert ogg.OggOpusReader(io.BytesIO(mono.getvalue())).channels == 1
    with pytest.raises(InputError, match="3 legs"):
        ogg.write_call(io.BytesIO(), [(da, la)] * 3, pre_skip=0, frames=frames)

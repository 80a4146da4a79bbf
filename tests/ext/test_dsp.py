"""callvault._dsp: in-band DTMF (Q.24 limits, masking), voice activity, levels.

Speech comes from the real espeak-ng, resampled to 8 kHz by the real sox.
Tone levels are in dBm0 per tone: 0 dBm0 = sine of amplitude
32768 * 10**(-3.14/20) (a full-scale sine is +3.14 dBm0, G.711).
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from callvault import _dsp

FS = 8000
FRAME = 160
BLOCK = 80
KEYS = "123A456B789C*0#D"
ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)
A0 = 32768 * 10 ** (-3.14 / 20)  # amplitude of a 0 dBm0 sine

Signal = npt.NDArray[np.float64]
Frames = npt.NDArray[np.int16]


# --------------------------------------------------------------------- helpers
def silence(ms: float) -> Signal:
    return np.zeros(round(ms * FS / 1000))


def dtmf(
    digit: str,
    ms: float,
    dbm0: float = -10.0,
    *,
    dev_low: float = 0.0,
    dev_high: float = 0.0,
    twist_db: float = 0.0,
) -> Signal:
    """A DTMF tone: each tone at ``dbm0`` (the high one ``twist_db`` louder),
    frequencies off by ``dev_low`` / ``dev_high`` (fractions)."""
    i = KEYS.index(digit)
    t = np.arange(round(ms * FS / 1000)) / FS
    low = A0 * 10 ** (dbm0 / 20)
    high = low * 10 ** (twist_db / 20)
    return low * np.sin(2 * np.pi * ROWS[i // 4] * (1 + dev_low) * t) + high * np.sin(
        2 * np.pi * COLS[i % 4] * (1 + dev_high) * t + 0.7
    )


def to_frames(x: Signal) -> Frames:
    """Round, clip, zero-pad to whole frames."""
    x = np.concatenate([x, np.zeros((-len(x)) % FRAME)])
    return np.clip(np.round(x), -32768, 32767).astype(np.int16).reshape(-1, FRAME)


def detect(
    frames: Frames, *, mask: bool = False, batch: int = 50, first_index: int = 0
) -> tuple[Frames, list[_dsp.DtmfEvent], list[int]]:
    """Run a detector over frames in batches; return (all output frames incl.
    flush, events, rows returned by each process call)."""
    det = _dsp.DtmfDetector(mask=mask)
    outs: list[Frames] = []
    events: list[_dsp.DtmfEvent] = []
    rows: list[int] = []
    for i in range(0, len(frames), batch):
        out, ev = det.process(np.ascontiguousarray(frames[i : i + batch]), first_index + i)
        outs.append(out)
        rows.append(len(out))
        events += ev
    out, ev = det.flush()
    outs.append(out)
    events += ev
    return np.concatenate(outs), events, rows


def events_of(x: Signal, **kw: bool | int) -> list[_dsp.DtmfEvent]:
    return detect(to_frames(x), **kw)[1]  # type: ignore[arg-type]


def one_tone(tone: Signal, lead_samples: int = 400) -> list[_dsp.DtmfEvent]:
    return events_of(np.concatenate([np.zeros(lead_samples), tone, silence(100)]))


def level_dbfs(x: npt.NDArray[np.generic]) -> float:
    power = float(np.mean(np.asarray(x, np.float64) ** 2))
    return 10 * math.log10(power / 32768**2) if power > 0 else -math.inf


def white_noise(dbfs: float, n: int, seed: int) -> Signal:
    x = np.random.default_rng(seed).normal(0.0, 1.0, n)
    return x * (32768 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2)))


def pink_noise(dbfs: float, n: int, seed: int) -> Signal:
    """White noise shaped to 1/f power (-3 dB/octave) from 20 Hz up, in the
    frequency domain. (Without the 20 Hz limit, 1/f down to 0.1 Hz is a slow
    DC wander that swings frame levels by 13 dB; no audio line carries it.)"""
    spec = np.fft.rfft(np.random.default_rng(seed).normal(0.0, 1.0, n))
    f = np.fft.rfftfreq(n, 1 / FS)
    gain = np.zeros_like(f)
    gain[f >= 20] = 1 / np.sqrt(f[f >= 20])
    x = np.fft.irfft(spec * gain, n)
    return x * (32768 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2)))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Signal]:
    """Several seconds of speech per voice: espeak-ng -> wav -> sox -> 8 kHz s16."""
    d: Path = tmp_path_factory.mktemp("speech")
    text = (
        "Thank you for calling. Please tell me your account number and the reason for "
        "your call today. I can help you with billing, payments and technical support. "
        "One moment while I check the details for you."
    )
    out = {}
    for voice in ("en", "en-us+f3", "de", "fr"):
        wav = d / f"{voice}.wav"
        raw = d / f"{voice}.raw"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
        subprocess.run(
            [
                "sox",
                "-D",  # no dither: the same speech every run
                str(wav),
                "-r",
                "8000",
                "-b",
                "16",
                "-c",
                "1",
                "-e",
                "signed-integer",
                "-t",
                "raw",
                str(raw),
            ],
            check=True,
        )
        out[voice] = np.frombuffer(raw.read_bytes(), dtype="<i2").astype(np.float64)
    return out


# ------------------------------------------------------------------------ DTMF
@pytest.mark.parametrize("digit", KEYS)
def test_all_16_digits_detected_with_start_and_end(digit: str) -> None:
    lead = 437  # not on a block or frame boundary
    events = one_tone(dtmf(digit, 100), lead_samples=lead)
    assert [e.digit for e in events] == [digit]
    assert abs(events[0].start_sample - lead) <= BLOCK
    assert abs(events[0].end_sample - (lead + 800)) <= BLOCK
    assert isinstance(events[0].start_sample, int)


def test_digit_sequence_40ms_tone_40ms_pause_gives_every_digit_once() -> None:
    sequence = KEYS + "1122#0"  # repeated digits need the pause to count twice
    parts = [np.zeros(211)]
    starts = []
    pos = 211
    for d in sequence:
        starts.append(pos)
        parts += [dtmf(d, 40), silence(40)]
        pos += 640
    events = events_of(np.concatenate([*parts, silence(100)]))
    assert [e.digit for e in events] == list(sequence)
    for e, s in zip(events, starts, strict=True):
        assert abs(e.start_sample - s) <= BLOCK
        assert abs(e.end_sample - (s + 320)) <= BLOCK


@pytest.mark.parametrize("offset", range(0, BLOCK, 4))
def test_tone_20ms_rejected(offset: int) -> None:
    assert one_tone(dtmf("5", 20), lead_samples=400 + offset) == []


@pytest.mark.parametrize("offset", range(0, BLOCK, 4))
def test_tone_23ms_rejected_q24_non_operate(offset: int) -> None:
    assert one_tone(dtmf("9", 23), lead_samples=400 + offset) == []


@pytest.mark.parametrize("offset", range(0, BLOCK, 4))
def test_tone_40ms_accepted_q24_operate(offset: int) -> None:
    assert [e.digit for e in one_tone(dtmf("0", 40), lead_samples=400 + offset)] == ["0"]


@pytest.mark.parametrize("offset", range(0, BLOCK, 4))
def test_tone_45ms_accepted(offset: int) -> None:
    assert [e.digit for e in one_tone(dtmf("#", 45), lead_samples=400 + offset)] == ["#"]


@pytest.mark.parametrize("dev", [0.01, -0.01, 0.015, -0.015])
@pytest.mark.parametrize("which", ["both", "low", "high"])
def test_frequency_offset_1_percent_accepted(dev: float, which: str) -> None:
    """1.0 % (asked) and 1.5 % (Q.24 operate limit), every digit."""
    lo = dev if which in ("both", "low") else 0.0
    hi = dev if which in ("both", "high") else 0.0
    for d in KEYS:
        assert [e.digit for e in one_tone(dtmf(d, 60, dev_low=lo, dev_high=hi))] == [d], d


@pytest.mark.parametrize("dev", [0.04, -0.04, 0.035, -0.035])
@pytest.mark.parametrize("which", ["both", "low", "high"])
def test_frequency_offset_4_percent_rejected(dev: float, which: str) -> None:
    """4 % (asked) and 3.5 % (Q.24 non-operate limit), every digit."""
    lo = dev if which in ("both", "low") else 0.0
    hi = dev if which in ("both", "high") else 0.0
    for d in KEYS:
        assert one_tone(dtmf(d, 60, dev_low=lo, dev_high=hi)) == [], d


@pytest.mark.parametrize("twist_db", [7.0, 4.0, 0.0, -3.0])
def test_twist_inside_limits_accepted(twist_db: float) -> None:
    """Normal twist (high group louder) up to 8 dB, reverse up to 4 dB."""
    for d in KEYS:
        assert [e.digit for e in one_tone(dtmf(d, 60, -14, twist_db=twist_db))] == [d], d


@pytest.mark.parametrize("twist_db", [9.0, 12.0, -5.0, -8.0])
def test_twist_outside_limits_rejected(twist_db: float) -> None:
    for d in KEYS:
        assert one_tone(dtmf(d, 60, -14, twist_db=twist_db)) == [], d


@pytest.mark.parametrize("dbm0", [-40.0, -45.0, -60.0])
def test_tone_below_minimum_level_rejected(dbm0: float) -> None:
    """The minimum is -35 dBm0 per tone."""
    for d in KEYS:
        assert one_tone(dtmf(d, 60, dbm0)) == [], d


@pytest.mark.parametrize("dbm0", [-30.0, -20.0, 0.0])
def test_tone_above_minimum_level_accepted(dbm0: float) -> None:
    for d in KEYS:
        assert [e.digit for e in one_tone(dtmf(d, 60, dbm0))] == [d], d


@pytest.mark.parametrize("snr_db", [15.0, 10.0])
def test_dtmf_in_white_noise_detected(snr_db: float) -> None:
    """White noise over the whole band, SNR against the DTMF signal's power."""
    rng = np.random.default_rng(7)
    parts = [silence(60)]
    for d in KEYS:
        parts += [dtmf(d, 60, -10), silence(60)]
    x = np.concatenate(parts)
    signal_power = np.mean(dtmf("5", 60, -10) ** 2)
    x = x + rng.normal(0.0, math.sqrt(signal_power / 10 ** (snr_db / 10)), len(x))
    assert [e.digit for e in events_of(x)] == list(KEYS)


def test_interruption_10ms_is_bridged_q24() -> None:
    x = np.concatenate([silence(50), dtmf("7", 60), silence(10), dtmf("7", 60), silence(100)])
    events = events_of(x)
    assert [e.digit for e in events] == ["7"]
    assert abs(events[0].end_sample - events[0].start_sample - 1040) <= 2 * BLOCK


def test_talk_off_speech_gives_no_digits(speech: dict[str, Signal]) -> None:
    total = 0.0
    for voice, x in speech.items():
        for gain in (0.5, 1.0, 2.5):
            assert events_of(np.clip(x * gain, -32768, 32767)) == [], (voice, gain)
        total += len(x) / FS
    assert total > 15.0  # several seconds of real speech per voice


def test_speech_then_digits_detected(speech: dict[str, Signal]) -> None:
    """The talk-off guard does not hide digits typed during a call."""
    x = np.concatenate(
        [speech["en"][:16000], dtmf("4", 60), silence(60), dtmf("2", 60), speech["en"][16000:24000]]
    )
    assert [e.digit for e in events_of(x)] == ["4", "2"]


def _masking_input() -> tuple[Frames, list[tuple[int, int]]]:
    """Background noise at -40 dBFS with two digits; returns the tone spans."""
    parts = [white_noise(-40, 3213, 3)]
    spans: list[tuple[int, int]] = []
    pos = 3213
    for d, ms in (("1", 80), ("9", 200)):
        tone = dtmf(d, ms, -8)
        gap = white_noise(-40, 2000, 4 + len(spans))
        spans.append((pos, pos + len(tone)))
        parts += [tone + white_noise(-40, len(tone), 9), gap]
        pos += len(tone) + len(gap)
    return to_frames(np.concatenate(parts)), spans


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_batching_independent(batch: int) -> None:
    frames, _ = _masking_input()
    ref_out, ref_events, _ = detect(frames, mask=True, batch=len(frames))
    out, events, _ = detect(frames, mask=True, batch=batch)
    assert events == ref_events and len(events) == 2
    np.testing.assert_array_equal(out, ref_out)
    _, plain_events, _ = detect(frames, mask=False, batch=batch)
    assert plain_events == ref_events


def test_masking_zeros_tone_span_and_keeps_audio_around() -> None:
    frames, spans = _masking_input()
    out, events, _ = detect(frames, mask=True, batch=13, first_index=1000)
    assert out.shape == frames.shape
    base = 1000 * FRAME
    flat_in, flat_out = frames.reshape(-1), out.reshape(-1)
    masked = np.zeros(len(flat_in), dtype=bool)
    assert [e.digit for e in events] == ["1", "9"]
    for e, (a, b) in zip(events, spans, strict=True):
        assert not np.any(flat_out[a:b]), "tone samples left in the output"
        lo, hi = e.start_sample - base - BLOCK, e.end_sample - base + BLOCK
        assert lo >= a - 2 * BLOCK and hi <= b + 2 * BLOCK
        masked[lo:hi] = True
    np.testing.assert_array_equal(flat_out[~masked], flat_in[~masked])
    assert np.all(flat_out[masked] == 0)


def test_masking_delay_frames_honoured_and_flush_returns_rest() -> None:
    frames, _ = _masking_input()
    det = _dsp.DtmfDetector(mask=True)
    assert det.mask and det.delay_frames == 2
    out1, _ = det.process(frames[:1].copy(), 0)
    assert out1.shape == (0, FRAME)
    out2, _ = det.process(frames[1:5].copy(), 1)
    assert out2.shape == (3, FRAME)
    np.testing.assert_array_equal(out2, frames[:3])  # noise only: untouched, 2 frames late
    rest, _ = det.process(frames[5:].copy(), 5)
    tail, _ = det.flush()
    assert len(rest) == len(frames) - 5 and tail.shape == (2, FRAME)
    np.testing.assert_array_equal(tail, frames[-2:])


def test_no_mask_no_delay_returns_input_unchanged() -> None:
    frames, _ = _masking_input()
    det = _dsp.DtmfDetector()
    assert not det.mask and det.delay_frames == 0
    out, _ = det.process(frames, 0)
    assert out is frames
    tail, events = det.flush()
    assert tail.shape == (0, FRAME) and events == []


def test_flush_reports_digit_still_sounding() -> None:
    frames = to_frames(np.concatenate([silence(40), dtmf("B", 200)]))
    det = _dsp.DtmfDetector(mask=True)
    out, events = det.process(frames, 0)
    assert events == []
    tail, events = det.flush()
    assert [e.digit for e in events] == ["B"]
    assert abs(events[0].start_sample - 320) <= BLOCK
    assert abs(events[0].end_sample - len(frames) * FRAME) <= BLOCK
    everything = np.concatenate([out, tail]).reshape(-1)
    assert not np.any(everything[320:])


def test_detector_reusable_after_flush() -> None:
    frames = to_frames(np.concatenate([silence(40), dtmf("3", 80), silence(60)]))
    det = _dsp.DtmfDetector()
    first = det.process(frames, 0)[1] + det.flush()[1]
    again = det.process(frames, 500)[1] + det.flush()[1]
    assert [e.digit for e in first] == ["3"]
    assert [(e.start_sample - 500 * FRAME, e.end_sample - 500 * FRAME) for e in again] == [
        (e.start_sample, e.end_sample) for e in first
    ]


def test_non_contiguous_first_index_raises() -> None:
    det = _dsp.DtmfDetector()
    det.process(np.zeros((3, FRAME), np.int16), 10)
    with pytest.raises(ValueError, match="contiguous"):
        det.process(np.zeros((3, FRAME), np.int16), 14)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 80), np.int16),
        np.zeros(FRAME, np.int16),
        np.zeros((3, FRAME), np.int32),
        np.zeros((3, 2 * FRAME), np.int16)[:, ::2],
    ],
    ids=["short-rows", "one-dim", "int32", "non-contiguous"],
)
def test_bad_frame_layout_raises_value_error(bad: npt.NDArray[np.generic]) -> None:
    with pytest.raises(ValueError):
        _dsp.DtmfDetector().process(bad, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _dsp.Vad().process(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _dsp.levels(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- VAD
def test_vad_speech_marked_voice(speech: dict[str, Signal]) -> None:
    for voice, x in speech.items():
        frames = to_frames(np.concatenate([silence(500), x, silence(500)]))
        flags = _dsp.Vad().process(frames)
        loud = np.array([level_dbfs(f) > -40 for f in frames])  # the words themselves
        assert loud.sum() > 100
        assert np.all(flags[loud] == 1), voice
        assert np.all(flags[:25] == 0)  # leading digital silence


def test_vad_speech_15db_over_noise_marked_voice(speech: dict[str, Signal]) -> None:
    x = speech["en"]
    noise_db = level_dbfs(x) - 15  # speech about 15 dB above the line noise
    sig = np.concatenate([white_noise(noise_db, 16000, 1), x + white_noise(noise_db, len(x), 2)])
    flags = _dsp.Vad().process(to_frames(sig))
    words = np.array([level_dbfs(f) > noise_db + 15 for f in to_frames(x)])
    assert np.mean(flags[100:][words]) > 0.97
    assert np.all(flags[50:100] == 0)  # the noise-only second after settling


def test_vad_silence_marked_non_voice() -> None:
    assert not np.any(_dsp.Vad().process(np.zeros((200, FRAME), np.int16)))


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_vad_noisy_line_minus_45_dbfs_non_voice_after_settling(kind: str) -> None:
    make = white_noise if kind == "white" else pink_noise
    noise = make(-45, 10 * FS, 5)
    assert abs(level_dbfs(noise) + 45) < 0.1
    # the line starts noisy: non-voice at once
    assert not np.any(_dsp.Vad().process(to_frames(noise)))
    # silence, then the noise appears: non-voice once the floor window
    # (1 s) and the hangover (200 ms) have passed
    flags = _dsp.Vad().process(to_frames(np.concatenate([silence(1000), noise])))
    settled = 50 + 50 + 10
    assert not np.any(flags[settled:])


def test_vad_hangover_keeps_voice_for_hangover_ms() -> None:
    loud = white_noise(-20, 400 * 8, 6)  # 400 ms of loud sound, then silence
    frames = to_frames(np.concatenate([silence(200), loud, silence(1000)]))
    for hangover_ms in (200, 100, 0):
        vad = _dsp.Vad(hangover_ms=hangover_ms)
        assert vad.hangover_frames == hangover_ms // 20
        flags = vad.process(frames)
        last_loud = 10 + 20 - 1
        assert np.all(flags[10 : last_loud + 1] == 1)
        assert np.all(flags[last_loud + 1 : last_loud + 1 + hangover_ms // 20] == 1)
        assert np.all(flags[last_loud + 1 + hangover_ms // 20 :] == 0)


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_vad_batching_independent(batch: int, speech: dict[str, Signal]) -> None:
    x = speech["de"]
    frames = to_frames(np.concatenate([white_noise(-45, 8000, 8), x + white_noise(-45, len(x), 9)]))
    whole = _dsp.Vad().process(frames)
    vad = _dsp.Vad()
    parts = np.concatenate(
        [vad.process(frames[i : i + batch]) for i in range(0, len(frames), batch)]
    )
    np.testing.assert_array_equal(parts, whole)
    assert 0 < whole.sum() < len(whole)


def test_vad_bad_parameters_raise() -> None:
    with pytest.raises(ValueError):
        _dsp.Vad(threshold_db=0.0)
    with pytest.raises(ValueError):
        _dsp.Vad(hangover_ms=-1)
    with pytest.raises(ValueError):
        _dsp.Vad(floor_window_ms=10)


# ---------------------------------------------------------------------- levels
@pytest.mark.parametrize("amplitude", [10000.0, 1000.0, 32767.0])
def test_levels_sine_gives_expected_rms_dbfs_and_peak(amplitude: float) -> None:
    n = np.arange(50 * FRAME)
    frames = np.round(amplitude * np.cos(2 * np.pi * 1000 * n / FS)).astype(np.int16)
    rms_db, peak, clipped = _dsp.levels(frames.reshape(-1, FRAME))
    assert abs(rms_db - 20 * math.log10(amplitude / math.sqrt(2) / 32768)) < 0.1
    assert peak == round(amplitude)
    # 1 kHz at 8 kHz: 8 samples a cycle, two of them on the peaks (+-32767)
    assert clipped == (2 * 50 * FRAME // 8 if amplitude >= 32767 else 0)


def test_levels_clipped_signal_counts_clipped_samples() -> None:
    n = np.arange(20 * FRAME)
    x = np.clip(np.round(50000 * np.sin(2 * np.pi * 440 * n / FS)), -32768, 32767)
    frames = x.astype(np.int16).reshape(-1, FRAME)
    _, peak, clipped = _dsp.levels(frames)
    assert peak == 32768
    assert clipped == int(np.count_nonzero(np.abs(x) >= 32767)) > 1000


def test_levels_clip_definition_edges() -> None:
    frame = np.zeros((1, FRAME), np.int16)
    frame[0, :6] = [32767, -32768, -32767, 32766, -32766, 100]
    rms_db, peak, clipped = _dsp.levels(frame)
    assert (peak, clipped) == (32768, 3)
    assert math.isfinite(rms_db)


def test_levels_silence_and_empty_are_minus_inf() -> None:
    assert _dsp.levels(np.zeros((4, FRAME), np.int16)) == (-math.inf, 0, 0)
    assert _dsp.levels(np.zeros((0, FRAME), np.int16)) == (-math.inf, 0, 0)


def test_frame_levels_per_frame() -> None:
    n = np.arange(FRAME)
    frames = np.stack(
        [np.zeros(FRAME), 1000 * np.cos(2 * np.pi * 1000 * n / FS), np.full(FRAME, -32768.0)]
    ).astype(np.int16)
    rms, peak = _dsp.frame_levels(frames)
    assert rms.dtype == np.float32 and peak.dtype == np.int32
    assert rms[0] == -np.inf
    assert abs(rms[1] - 20 * math.log10(1000 / math.sqrt(2) / 32768)) < 0.1
    assert rms[2] == 0.0
    assert peak.tolist() == [0, 1000, 32768]


def test_masking_digit_at_stream_start_and_end() -> None:
    """The guard before the first sample and after the last is clamped."""
    frames = to_frames(np.concatenate([dtmf("6", 100, -6), silence(100), dtmf("8", 100, -6)]))
    out, events, _ = detect(frames, mask=True, batch=3)
    assert [e.digit for e in events] == ["6", "8"]
    assert events[0].start_sample <= BLOCK
    flat = out.reshape(-1)
    assert out.shape == frames.shape
    assert not np.any(flat[:800]) and not np.any(flat[1600:2400])


def test_negative_first_index_raises() -> None:
    with pytest.raises(ValueError, match="negative"):
        _dsp.DtmfDetector().process(np.zeros((1, FRAME), np.int16), -1)

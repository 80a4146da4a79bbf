"""callvault.media.scan: the assessor's DTMF check finds tone pairs the live detector
(ext/_dsp.pyx) lets pass, through Opus too, and does not take speech for tones."""

from __future__ import annotations

import numpy as np

from callvault import _opus
from callvault.media import scan
from callvault.media.pipeline import LegPipeline, Settings
from tests import audio, pcicall

# (at s, digit, ms, dBm0 low tone, dBm0 high tone): the first two pass the live
# detector's limits; the others are quieter (-40 dBm0; it needs -35) or twisted
# (low group 10 dB louder; it allows 4)
TONES = (
    (0.5, "1", 100, -10.0, -10.0),
    (1.5, "5", 60, -20.0, -20.0),
    (2.5, "9", 70, -40.0, -40.0),
    (3.5, "#", 80, -10.0, -20.0),
)


def _leg() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5 * 8000) * 30
    for at, d, ms, lo, hi in TONES:
        s = int(at * 8000)
        t = pcicall.tone(d, ms, lo, hi)
        x[s : s + len(t)] += t
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def _opus_roundtrip(pcm: np.ndarray, mask: bool) -> tuple[np.ndarray, list[str]]:
    p = LegPipeline("a", "x", Settings(mask_dtmf=mask))
    p.push_pcm(pcm)
    r = p.finish()
    data, lengths = r.packets_all()
    skip = _opus.Encoder().lookahead // 6  # the pre-skip at 8 kHz
    return _opus.Decoder().decode_frames(data, lengths).reshape(-1)[skip:], [
        e["digit"] for e in r.dtmf
    ]


def test_scan_finds_every_tone_pair_with_its_frequencies_and_level() -> None:
    for pcm in (_leg(), _opus_roundtrip(_leg(), mask=False)[0]):
        hits = scan.scan_leg("agent", pcm)
        assert len(hits) == len(TONES), hits
        for h, (at, d, ms, lo, hi) in zip(hits, TONES, strict=True):
            assert (h.low_hz, h.high_hz) == pcicall.pair(d)
            assert abs(h.start_s - at) <= 0.02 and abs(h.duration_ms - ms) <= 25  # a block
            assert abs(h.low_dbm0 - lo) <= 2 and abs(h.high_dbm0 - hi) <= 2


def test_scan_is_more_sensitive_than_live_masking() -> None:
    """Masking removes what the live detector finds; the scan still reports the
    quiet and the short pairs it let pass (what an assessor's check is for)."""
    masked, digits = _opus_roundtrip(_leg(), mask=True)
    assert digits == ["1", "5"]
    found = [(h.low_hz, h.high_hz) for h in scan.scan_leg("agent", masked)]
    assert found == [pcicall.pair("9"), pcicall.pair("#")]


def test_scan_does_not_take_speech_for_tones() -> None:
    texts = (
        "Hello, thank you for calling, how can I help you today",
        "I would like to pay my bill with a credit card please",
        "One two three four five six seven eight nine zero, hash, star",
    )
    for text in texts:
        for voice in ("en-us", "en+f3", "en+m3", "en-gb"):
            assert scan.scan_leg("s", audio.speech(text, voice=voice)) == [], (text, voice)

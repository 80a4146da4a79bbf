"""callvault.timeline: the constants agree with the parts that embody them."""

from __future__ import annotations

import numpy as np

from callvault import _opus, timeline
from callvault.media import ogg, pipeline, wav


def test_frame_arithmetic() -> None:
    t = timeline
    assert (t.SAMPLE_RATE, t.FRAME_SAMPLES, t.FRAME_US) == (8000, 160, 20_000)
    assert t.FRAME_SAMPLES * t.FRAMES_PER_SECOND == t.SAMPLE_RATE
    assert t.FRAME_SAMPLES_48K == 960 and t.FRAMES_PER_RECORD == 50
    assert t.frames_us(3) == 60_000 and t.frames_seconds(75) == 1.5
    assert t.samples_ms(8 * 33 + 7) == 33 and t.samples_ms(-1) == -1


def test_pre_skip_is_the_encoders_lookahead() -> None:
    """The stored stream's pre-skip (docs/format.md 4) is what the encoder reports."""
    enc = _opus.Encoder(sample_rate=timeline.SAMPLE_RATE)
    assert enc.lookahead == timeline.OPUS_PRE_SKIP_48K
    assert pipeline.LegPipeline("a", "a", pipeline.Settings()).pre_skip == enc.lookahead
    assert timeline.OPUS_DELAY_SAMPLES == 52


def test_one_frame_is_one_opus_packet_of_960_granules() -> None:
    enc = _opus.Encoder(sample_rate=timeline.SAMPLE_RATE)
    data, lengths = enc.encode_frames(np.zeros((3, timeline.FRAME_SAMPLES), dtype=np.int16))
    assert len(lengths) == 3
    first = data[: lengths[0]]
    assert _opus.packet_samples(first, ogg.RATE) == timeline.FRAME_SAMPLES_48K
    assert wav.RATE == timeline.SAMPLE_RATE and pipeline.FRAME == timeline.FRAME_SAMPLES

"""Per-leg DSP on 20 ms frames (ext/_dsp.pyx; its docstring states the
algorithms, their parameters and the ITU-T Q.24 limits they follow).

Frames are C-contiguous int16 arrays of shape (n, 160): 20 ms at 8 kHz.
Anything else raises ValueError. State lives in C between calls; results
never depend on how a stream is cut into batches.
"""

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FRAME_SAMPLES: int  # 160
BLOCK_SAMPLES: int  # 80: the DTMF analysis sub-block (10 ms)
SAMPLE_RATE: int  # 8000
DTMF_FREQUENCIES: tuple[float, ...]  # 697, 770, 852, 941, 1209, 1336, 1477, 1633 Hz

class DtmfEvent(NamedTuple):
    """One in-band DTMF digit ('0'-'9', '*', '#', 'A'-'D') sounding over
    samples [start_sample, end_sample) of the call timeline (8 kHz; sample =
    frame index * 160 + offset). start/end are within one sub-block (80
    samples) of the tone's real edges."""

    digit: str
    start_sample: int
    end_sample: int

class DtmfDetector:
    """In-band DTMF detection (Goertzel, Q.24 limits) with optional masking.

    Contract:
    - ``process(pcm, first_index)``: ``pcm`` holds frames ``first_index``,
      ``first_index + 1``, ...; successive calls must be contiguous (the next
      ``first_index`` is the previous one + n), else ValueError. Returns
      ``(frames, events)``; ``events`` are the digits that ENDED during this
      batch (a digit still sounding is reported by a later call or by
      ``flush``).
    - mask=False: ``frames`` is ``pcm`` itself, unchanged; ``delay_frames``
      is 0.
    - mask=True: every detected digit's samples, from ``start_sample - 80``
      to ``end_sample + 80`` (one guard sub-block either side, for tone edges),
      are zeros in the output, including its start before detection was
      confirmed. To do that the detector holds back ``delay_frames`` (= 2)
      frames: the output of a call is the input delayed by that many frames
      (its first row is frame ``first_index - delay_frames`` once the stream
      is running, and a call returns ``max(0, held + n - 2)`` rows).
      Other samples are returned bit-exactly.
    - ``flush()``: end of stream. Returns the held-back frames (0..2 rows;
      always 0 rows without masking) and the digit still sounding, if any,
      as an event ending at its last detected sub-block. The detector is
      then reset: the next ``process`` starts a new stream at any index.
    """

    def __init__(self, mask: bool = False) -> None: ...
    @property
    def mask(self) -> bool: ...
    @property
    def delay_frames(self) -> int:
        """Frames held back by ``process``: 2 with masking, else 0."""
    def process(
        self, pcm: npt.NDArray[np.int16], first_index: int
    ) -> tuple[npt.NDArray[np.int16], list[DtmfEvent]]: ...
    def flush(self) -> tuple[npt.NDArray[np.int16], list[DtmfEvent]]: ...

class Vad:
    """Energy voice-activity detector: a frame is voice when its level is
    ``threshold_db`` above the noise floor (minimum frame level over the last
    ``floor_window_ms``) and above ``min_level_dbfs``; voice is held for
    ``hangover_ms`` after the last such frame. A stationary noisy line is
    non-voice within about ``floor_window_ms`` + ``hangover_ms`` of its start
    (at once if the stream starts with it)."""

    def __init__(
        self,
        threshold_db: float = 9.0,
        hangover_ms: int = 200,
        floor_window_ms: int = 1000,
        min_level_dbfs: float = -55.0,
    ) -> None: ...
    @property
    def hangover_frames(self) -> int:
        """hangover_ms in frames, rounded up."""
    @property
    def noise_floor_dbfs(self) -> float:
        """The current floor estimate; -inf before any frame or on digital silence."""
    def process(self, pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
        """One flag per frame, 1 = voice."""

def levels(pcm: npt.NDArray[np.int16]) -> tuple[float, int, int]:
    """(RMS over the batch in dBFS, peak |x|, clipped samples).

    dBFS is 20 log10(rms / 32768) (full-scale sine = -3.01 dBFS); digital
    silence and an empty batch give -inf. peak is |x| as a Python int (32768
    for -32768). A sample is clipped when |x| >= 32767 (32767, -32767, -32768).
    """

def frame_levels(
    pcm: npt.NDArray[np.int16],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """Per frame: RMS dBFS (float32, -inf for a silent frame) and peak |x|
    (int32, since |-32768| does not fit int16)."""

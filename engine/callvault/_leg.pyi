"""Stub of the compiled callvault._leg (ext/_leg.pyx): one leg's whole audio path
(jitter buffer, DTMF, VAD, levels, Opus, DTX replacement), one call per batch, the
GIL released over the audio work."""

from typing import Any

import numpy as np
import numpy.typing as npt

from callvault._dsp import DtmfDetector, DtmfEvent, Vad
from callvault._opus import Encoder
from callvault._rtp import JitterBuffer

class LegCore:
    jb: JitterBuffer
    dtmf: DtmfDetector
    vad: Vad
    next_index: int
    frames: int
    voice_frames: int
    clipped: int
    opus_bytes: int
    peak: int
    sumsq: float
    def __init__(
        self,
        jb: JitterBuffer,
        dtmf: DtmfDetector,
        vad: Vad,
        encoder: Encoder | None = None,
        noise: Encoder | None = None,
        *,
        bitrate: int = 12000,
        silence_bitrate: int = 0,
        dtx_bytes: int = 0,
        dtx_max: int = 2,
        keep_pcm: bool = False,
        g711_law: int | None = None,
    ) -> None: ...
    def push_rtp(
        self, data: bytes | bytearray | memoryview, offsets: Any, lengths: Any, arrival_us: Any
    ) -> int: ...
    def push_batch(
        self, data: bytes | bytearray | memoryview, lengths: Any, arrival_us: Any
    ) -> int: ...
    def push_frames(self, pcm: npt.NDArray[np.int16], first_index: int) -> int: ...
    def set_g711_law(self, g711_law: int) -> None: ...
    def set_mute(self, spans: Any) -> None: ...
    def finish(self) -> int: ...
    @property
    def packets(self) -> int: ...
    def take_packets(self, n: int = -1) -> tuple[bytes, npt.NDArray[np.int32]]: ...
    def take_pcm(self) -> npt.NDArray[np.int16]: ...
    def take_events(self) -> list[DtmfEvent]: ...

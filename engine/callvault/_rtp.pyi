"""Stub of the compiled callvault._rtp (ext/_rtp.pyx): RTP parse and the per-leg jitter buffer."""

from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.rtpdefs import Frames as Frames
from callvault.rtpdefs import ParsedPackets as ParsedPackets
from callvault.rtpdefs import TelephoneEvent as TelephoneEvent

FRAME_AUDIO: int
FRAME_LOST: int
FRAME_SILENCE: int
FRAME_UNSUPPORTED: int
MALFORMED_REASONS: tuple[str, ...]
STAT_KEYS: tuple[str, ...]

def parse(data: bytes | bytearray | memoryview, offsets: Any, lengths: Any) -> ParsedPackets: ...
def check_datagrams(
    data: bytes | bytearray | memoryview,
    lengths: npt.NDArray[np.int32],
    rules: npt.NDArray[np.uint8],
    min_event_payload: int,
    max_length: int,
    rows: npt.NDArray[np.int32] | None = None,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint32], npt.NDArray[np.uint8]]: ...

class JitterBuffer:
    def __init__(
        self,
        *,
        call_start_us: int,
        window_ms: int = 300,
        fill: str = "silence",
        event_payload_types: tuple[int, ...] = (101,),
        clock_rate: int = 8000,
    ) -> None: ...
    def push(
        self, data: bytes | bytearray | memoryview, offsets: Any, lengths: Any, arrival_us: Any
    ) -> Frames: ...
    def flush(self, end_us: int | None = None) -> Frames: ...
    @property
    def stats(self) -> dict[str, int]: ...
    def stat(self, key: str) -> int: ...
    @property
    def gaps(self) -> list[tuple[int, int]]: ...
    @property
    def unsupported(self) -> list[tuple[int, int, int]]: ...
    @property
    def unsupported_payload_types(self) -> list[int]: ...
    @property
    def events(self) -> list[TelephoneEvent]: ...

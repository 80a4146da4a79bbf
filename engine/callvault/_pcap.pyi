"""Stub of the compiled callvault._pcap (ext/_pcap.pyx): pcap/pcapng capture reader."""

import numpy as np
import numpy.typing as npt

SKIP_REASONS: tuple[str, ...]

class UnsupportedLinkType(Exception): ...

# (format, data, lengths, arrival_us, pt, ssrc, event_like, bounds, keys, skipped, datagrams)
ScanResult = tuple[
    str,
    bytes,
    npt.NDArray[np.int32],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint8],
    npt.NDArray[np.uint32],
    npt.NDArray[np.bool_],
    npt.NDArray[np.int64],
    list[bytes],
    dict[str, int],
    int,
]

def scan(buf: bytes | bytearray | memoryview, min_packets: int = 1) -> ScanResult: ...

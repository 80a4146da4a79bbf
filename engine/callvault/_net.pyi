"""Stub of the compiled callvault._net (ext/_net.pyx): batch UDP receive and send."""

import numpy as np
import numpy.typing as npt

SOURCE_SIZE: int  # bytes per datagram in recv_batch_from's sources (address 16 + port 2)

def now_us() -> int: ...
def enable_timestamps(fd: int) -> None: ...
def recv_batch(
    fd: int, max_packets: int = 256, max_size: int = 2048
) -> tuple[bytes, npt.NDArray[np.int32], npt.NDArray[np.int64], int]: ...
def recv_batch_from(
    fd: int, max_packets: int = 256, max_size: int = 2048
) -> tuple[bytes, npt.NDArray[np.int32], npt.NDArray[np.int64], int, bytes]: ...
def send_batch(
    fd: int, packets: bytes | bytearray | memoryview, lengths: npt.NDArray[np.int32]
) -> int: ...

class MultiRecv:
    """Drain many UDP sockets in one call (recvmmsg each, buffers kept between calls)."""

    def __init__(self, slots: int = 256, max_size: int = 65535) -> None: ...
    def recv(
        self,
        fds: npt.NDArray[np.int32],
        latched: npt.NDArray[np.uint8],
        latched_source: bytes | bytearray,
        latched_ssrc: npt.NDArray[np.uint32],
        max_rounds: int = 0,
    ) -> tuple[
        bytes,
        npt.NDArray[np.int32],
        npt.NDArray[np.int64],
        bytes,
        npt.NDArray[np.int32],
        npt.NDArray[np.int32],
        npt.NDArray[np.int32],
        npt.NDArray[np.bool_],
    ]: ...

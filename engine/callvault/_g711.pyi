import numpy as np
import numpy.typing as npt

PCMU: int
PCMA: int

def decode(data: bytes | bytearray | memoryview, law: int) -> npt.NDArray[np.int16]: ...
def encode(pcm: npt.NDArray[np.int16], law: int) -> bytes: ...

"""Workloads g711_decode_ulaw_1s and g711_decode_ulaw_60s: G.711 mu-law to PCM16.

    g711_decode_ulaw_1s   8,000 mu-law bytes (1 s of one leg) of sample.dialogue
                          speech, encoded by callvault._g711.encode.
    g711_decode_ulaw_60s  480,000 bytes (60 s: the same 30 s twice).
      ours                callvault._g711.decode(data, PCMU): one call, GIL
                          released, int16 array out.
      peer numpy          table[np.frombuffer(data, np.uint8)] with the
                          256-entry table made by callvault.media.g711_ref (the
                          pure-Python reference written from the G.711 tables).
                          No target: the ratio is reported.

Checked: both return the same samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.conftest import Tag, need

# Each side runs for about 2 s (pytest-benchmark's default is 1 s): the sides
# run one after the other on a shared machine, and a longer window evens out
# the load drifting under them.
pytestmark = pytest.mark.benchmark(max_time=2.0)

SIZES = {"g711_decode_ulaw_1s": 1, "g711_decode_ulaw_60s": 60}


@pytest.fixture(scope="module")
def ulaw_30s(dialogue_30s: tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]) -> bytes:
    g711 = need("callvault._g711")
    data: bytes = g711.encode(np.ascontiguousarray(dialogue_30s[0]), g711.PCMU)
    return data


def payload(ulaw_30s: bytes, seconds: int) -> bytes:
    n = seconds * 8000
    return (ulaw_30s * (-(-n // len(ulaw_30s))))[:n]


@pytest.fixture(scope="module")
def table() -> npt.NDArray[np.int16]:
    ref = need("callvault.media.g711_ref")
    t: npt.NDArray[np.int16] = ref.decode(bytes(range(256)), ref.PCMU)
    return t


@pytest.mark.parametrize("name", list(SIZES))
def test_g711_decode_ours(
    benchmark: Any, workload: Tag, ulaw_30s: bytes, table: npt.NDArray[np.int16], name: str
) -> None:
    g711 = need("callvault._g711")
    data = payload(ulaw_30s, SIZES[name])
    workload(
        benchmark,
        name,
        "ours",
        units=len(data),
        unit="byte",
        what=f"{len(data):,} mu-law bytes of speech",
    )
    out = benchmark(g711.decode, data, g711.PCMU)
    assert out.dtype == np.int16
    assert np.array_equal(out, table[np.frombuffer(data, np.uint8)])


@pytest.mark.parametrize("name", list(SIZES))
def test_g711_decode_peer_numpy(
    benchmark: Any, workload: Tag, ulaw_30s: bytes, table: npt.NDArray[np.int16], name: str
) -> None:
    g711 = need("callvault._g711")
    data = payload(ulaw_30s, SIZES[name])
    workload(
        benchmark,
        name,
        "peer",
        units=len(data),
        unit="byte",
        peer="numpy table[np.frombuffer(data, np.uint8)]",
    )

    def run() -> npt.NDArray[np.int16]:
        return table[np.frombuffer(data, np.uint8)]

    out = benchmark(run)
    assert np.array_equal(out, g711.decode(data, g711.PCMU))

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

Ours and the peer run interleaved, round by round, in one loop per workload
(conftest.Interleaved).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.conftest import Interleaved, Side, Tag, need, sides

# About 2 s per side (pytest-benchmark's default is 1 s), 4 s for the two
# sides' interleaved rounds: a longer window evens out the load on a shared machine.
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


@pytest.fixture(scope="module")
def rounds(ulaw_30s: bytes, table: npt.NDArray[np.int16]) -> dict[str, Interleaved]:
    """Per workload: ours and numpy, round by round in one loop."""

    def ours(data: bytes) -> Any:
        g711 = need("callvault._g711")
        return lambda: g711.decode(data, g711.PCMU)

    def numpy_table(data: bytes) -> Any:
        def run() -> npt.NDArray[np.int16]:
            return table[np.frombuffer(data, np.uint8)]

        return run

    out: dict[str, Interleaved] = {}
    for name, seconds in SIZES.items():
        data = payload(ulaw_30s, seconds)
        out[name] = Interleaved({"ours": partial(ours, data), "numpy": partial(numpy_table, data)})
    return out


@pytest.fixture
def data(ulaw_30s: bytes, name: str) -> bytes:
    """The workload ``name``'s mu-law bytes."""
    return payload(ulaw_30s, SIZES[name])


@pytest.fixture
def side(
    benchmark: Any, workload: Tag, rounds: dict[str, Interleaved], data: bytes, name: str
) -> Side:
    return sides(benchmark, workload, rounds[name], name, units=len(data), unit="byte")


@pytest.mark.parametrize("name", list(SIZES))
def test_g711_decode_ours(side: Side, data: bytes, table: npt.NDArray[np.int16]) -> None:
    need("callvault._g711")
    out = side("ours", "ours", what=f"{len(data):,} mu-law bytes of speech")
    assert out.dtype == np.int16
    assert np.array_equal(out, table[np.frombuffer(data, np.uint8)])


@pytest.mark.parametrize("name", list(SIZES))
def test_g711_decode_peer_numpy(side: Side, data: bytes) -> None:
    g711 = need("callvault._g711")
    out = side("peer", "numpy", peer="numpy table[np.frombuffer(data, np.uint8)]")
    assert np.array_equal(out, g711.decode(data, g711.PCMU))

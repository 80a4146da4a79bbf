"""Workload compact_30s: compaction of a raw (G.711, peak mode) call to Opus.

    compact_30s           A sealed raw call of the 30 s dialogue (both legs, the agent
                          PCMU, the customer PCMA; 3000 frames of 160 bytes),
                          compacted in a real vault (docs/format.md 8.10).
      ours                vault.compact.compact_call with the encode in this process
                          (one core used): read and decrypt the G.711 records,
                          decode, the pipeline's VAD, per-run bitrate, DTX packet
                          replacement and Opus at the product's settings
                          (media.pipeline.Settings), encrypt, chain and append the
                          Opus records, the TRANSCODE record, its index batch and
                          log leaf. A fresh raw call per round (setup, untimed).
      peer c-loop         the plain C loop over libopus (benchmarks/c/opus_loop.c,
                          conftest.OpusLoop) encoding the same two legs' PCM at
                          the same bitrate, complexity and DTX: the Opus work alone.
                          Target (issue 10, section 3): ours >= 0.85 x the C
                          loop's throughput per core used, i.e. ours <= 1.18 x
                          its time.

The sides run interleaved, round by round (conftest.Interleaved); extra_info also
holds each side's CPU seconds per round (time.process_time, this process only:
both sides run in it), less noisy than wall time on a shared machine.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.conftest import Interleaved, OpusLoop, Round, Side, Tag, need, sides
from callvault.timeline import FRAME_SAMPLES

pytestmark = pytest.mark.benchmark(max_time=3.0)
NAME = "compact_30s"
ROUNDS = 7


def _raw_call(vault: Any, call_id: str, legs: tuple[bytes, bytes]) -> None:
    rec = need("callvault.store.records")
    w = vault.open_call(call_id, legs=["agent", "customer"])
    frames = len(legs[0]) // 160
    for g, (data, codec) in enumerate(zip(legs, (rec.CODEC_PCMU, rec.CODEC_PCMA), strict=True)):
        w.append_leg(g, np.full(frames, 160, dtype=np.int32), data, codec=codec)
    w.seal(frames=frames, end_us=w.entry.start_us + frames * 20_000)


@dataclass
class State:
    rounds: Interleaved
    cpu: dict[str, list[float]]
    vault: Any
    frames: int


@pytest.fixture(scope="module")
def state(
    opus_c_loop: OpusLoop,
    dialogue_30s: tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]],
) -> Iterator[State]:
    """Ours (compact_call) and the C loop, round by round in one loop."""
    g711 = need("callvault._g711")
    compact = need("callvault.vault.compact")
    pipeline = need("callvault.media.pipeline")
    vault_mod = need("callvault.vault")
    frames = min(len(x) for x in dialogue_30s) // FRAME_SAMPLES
    pcm = [np.ascontiguousarray(x[: frames * FRAME_SAMPLES]) for x in dialogue_30s]
    legs = (g711.encode(pcm[0], g711.PCMU), g711.encode(pcm[1], g711.PCMA))
    decoded = [
        g711.decode(legs[0], g711.PCMU).reshape(frames, FRAME_SAMPLES),
        g711.decode(legs[1], g711.PCMA).reshape(frames, FRAME_SAMPLES),
    ]
    s = pipeline.Settings()
    c_settings = {"bitrate": s.bitrate, "complexity": s.complexity, "dtx": s.dtx, "vbr": True}
    tmp = Path(tempfile.mkdtemp(prefix="bench-compact-"))
    vault = vault_mod.Vault.open(tmp / "data")
    cpu: dict[str, list[float]] = {"ours": [], "c_loop": []}
    n = [0]

    def ours_setup() -> tuple[Any, ...]:
        n[0] += 1
        cid = f"raw-{n[0]}"
        _raw_call(vault, cid, legs)
        return (cid,)

    def ours(cid: str) -> Any:
        t = time.process_time()
        r = compact.compact_call(vault, cid, settings=s, encode=compact.encode_g711_legs)
        cpu["ours"].append(time.process_time() - t)
        return r

    out = np.empty(frames * 4000, dtype=np.uint8)
    lengths = np.empty(frames, dtype=np.int32)

    def c_loop() -> int:
        t = time.process_time()
        used = 0
        for leg in decoded:
            used += opus_c_loop.encode_into(leg, c_settings, out, lengths)
        cpu["c_loop"].append(time.process_time() - t)
        return used

    rounds = Interleaved(
        {"ours": lambda: Round(ours, setup=ours_setup), "c_loop": lambda: c_loop},
        rounds=ROUNDS,
        warmup_rounds=1,
    )
    try:
        yield State(rounds, cpu, vault, frames)
    finally:
        vault.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def side(benchmark: Any, workload: Tag, state: State) -> Side:
    return sides(
        benchmark,
        workload,
        state.rounds,
        NAME,
        units=2 * state.frames / 50,
        unit="leg-second",
        call_seconds=state.frames / 50,
    )


def test_compact_ours(side: Side, state: State) -> None:
    r = side(
        "ours",
        "ours",
        what="compact_call of a 30 s two-leg raw call (G.711 PCMU + PCMA), encode in "
        "this process: one core used",
    )
    assert r.frames == state.frames and r.opus_records > 0
    assert state.vault.verify_call(r.call_id) == []


def test_compact_peer_c_loop(side: Side, state: State, benchmark: Any) -> None:
    used = side(
        "peer",
        "c_loop",
        peer="plain C loop over libopus (benchmarks/c/opus_loop.c), the same two legs",
        target="ours >= 0.85 x the C loop's throughput per core used",
        max_ratio=1 / 0.85,
    )
    assert used > 0
    med = {k: float(np.median(v)) for k, v in state.cpu.items() if v}
    if len(med) == 2:
        ratio = med["c_loop"] / med["ours"]
        benchmark.extra_info.update({"cpu_s_median": med, "throughput_vs_c_loop_cpu": ratio})
        print(
            f"\n  compaction: ours {med['ours'] * 1000:.0f} ms CPU, the C loop "
            f"{med['c_loop'] * 1000:.0f} ms CPU per 30 s two-leg call: "
            f"{ratio:.2f} x the C loop's throughput per core used"
        )

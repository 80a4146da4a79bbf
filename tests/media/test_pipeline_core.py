"""The leg pipeline's C core (callvault._leg.LegCore: one call per batch, the GIL
released) against the same chain run one Python call a step (LegPipeline with
core=False): the same Opus packets byte for byte, the same leg summary, the same
PCM, for RTP with loss, reordering, an SSRC change, RFC 4733 and in-band DTMF
digits, WAV input, and every setting that changes the chain."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from callvault import _g711
from callvault.media import pipeline, sample
from callvault.media.packets import PacketRun
from callvault.media.pipeline import CallResult, LegInput, LegPipeline, Settings
from callvault.media.rtppack import build_packet

FS = 8000
ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = "123A456B789C*0#D"


def tones(digits: str, ms: float = 100.0, dbm0: float = -12.0) -> npt.NDArray[np.float64]:
    """In-band DTMF digits, each ``ms`` long, ``ms`` apart."""
    a = 32768 * 10 ** ((-3.14 + dbm0) / 20)
    t = np.arange(round(ms * FS / 1000)) / FS
    out = []
    for d in digits:
        i = KEYS.index(d)
        out.append(a * (np.sin(2 * np.pi * ROWS[i // 4] * t) + np.sin(2 * np.pi * COLS[i % 4] * t)))
        out.append(np.zeros(len(t)))
    return np.concatenate(out)


def legs_with_digits(seconds: float) -> list[npt.NDArray[np.int16]]:
    """The sample dialogue with in-band digits laid over each leg's pauses."""
    out = []
    for i, leg in enumerate(sample.dialogue(seconds)):
        x = leg.astype(np.float64)
        d = tones("1234*#" if i == 0 else "90AD")
        at = int(FS * (1.5 + 2.0 * i))
        x[at : at + len(d)] += d
        out.append(np.clip(np.round(x), -32768, 32767).astype(np.int16))
    return out


def rtp_leg(pcm: npt.NDArray[np.int16], leg: int, seed: int) -> tuple[bytes, Any, Any, Any]:
    """One leg as 20 ms PCMU packets with 2 % loss, some reordering, an SSRC change
    half way and jittered arrival times: (data, offsets, lengths, arrival_us)."""
    rng = np.random.default_rng(seed)
    ulaw = _g711.encode(np.ascontiguousarray(pcm), _g711.PCMU)
    n = len(ulaw) // 160
    pkts: list[tuple[int, bytes]] = []
    for i in range(n):
        if rng.random() < 0.02:
            continue
        ssrc, seq0 = (0x1000 + leg, 100) if i < n // 2 else (0x2000 + leg, 5000)
        p = build_packet(0, seq0 + i, 160 * i + 7, ssrc, ulaw[160 * i : 160 * i + 160])
        at = 1_000_000 + (i + 1) * 20_000 + int(rng.integers(0, 15_000))
        pkts.append((at, p))
    pkts.sort(key=lambda x: x[0])
    data = b"".join(p for _, p in pkts)
    lengths = np.array([len(p) for _, p in pkts], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
    arrival = np.array([a for a, _ in pkts], dtype=np.int64)
    return data, offsets, lengths, arrival


@pytest.fixture(scope="module")
def legs() -> list[npt.NDArray[np.int16]]:
    return legs_with_digits(12.0)


@pytest.fixture(scope="module")
def rtp(legs: list[npt.NDArray[np.int16]]) -> list[tuple[bytes, Any, Any, Any]]:
    return [rtp_leg(x, i, 7 + i) for i, x in enumerate(legs)]


def run_rtp(
    rtp: list[tuple[bytes, Any, Any, Any]],
    settings: Settings,
    *,
    core: bool,
    batch: int,
    encode: bool = True,
    keep_pcm: bool = False,
) -> list[pipeline.LegResult]:
    pipes = []
    for i, (data, offsets, lengths, arrival) in enumerate(rtp):
        p = LegPipeline(
            f"leg{i}",
            "test",
            settings,
            call_start_us=1_000_000,
            encode=encode,
            keep_pcm=keep_pcm,
            core=core,
        )
        for lo in range(0, len(lengths), batch):
            sl = slice(lo, lo + batch)
            p.push_rtp(data, offsets[sl], lengths[sl], arrival[sl])
        pipes.append(p)
    total = max(p.drain() for p in pipes)
    return [p.finish(total_frames=total) for p in pipes]


def same(a: list[pipeline.LegResult], b: list[pipeline.LegResult]) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert ra.opus_run() == rb.opus_run()
        assert json.dumps(ra.summary(), sort_keys=True) == json.dumps(rb.summary(), sort_keys=True)
        assert ra.sumsq == rb.sumsq
        assert np.array_equal(ra.pcm_all(), rb.pcm_all())


SETTINGS = {
    "default": Settings(),
    "mask_dtmf": Settings(mask_dtmf=True),
    "no_silence_rate": Settings(silence_bitrate=None),
    "dtx_kept": Settings(dtx_packet_bytes=0),
    "no_dtx": Settings(dtx=False),
    "silence_fill_complexity_5": Settings(fill="silence", complexity=5),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_core_matches_step_path_on_rtp(name: str, rtp: list[tuple[bytes, Any, Any, Any]]) -> None:
    s = SETTINGS[name]
    core = run_rtp(rtp, s, core=True, batch=5, keep_pcm=True)
    step = run_rtp(rtp, s, core=False, batch=5, keep_pcm=True)
    same(core, step)
    # the chain did what it is there for: digits, DTX replacements, silent frames
    assert sum(len(r.dtmf) for r in core) == 10
    assert core[0].rtp["ssrc_changes"] == 1 and core[0].gaps
    lengths = core[0].opus_run().lengths
    if name == "dtx_kept":
        assert (lengths <= 2).any()
    elif s.dtx:
        assert not (lengths <= 2).any() and (lengths <= s.dtx_packet_bytes).sum() > 20


@pytest.mark.parametrize("batch", [1, 3, 50, 10_000])
def test_core_packets_do_not_depend_on_batching(
    batch: int, rtp: list[tuple[bytes, Any, Any, Any]]
) -> None:
    ref = run_rtp(rtp, Settings(mask_dtmf=True), core=True, batch=7)
    got = run_rtp(rtp, Settings(mask_dtmf=True), core=True, batch=batch)
    for a, b in zip(ref, got, strict=True):
        assert a.opus_run() == b.opus_run()
        assert a.dtmf == b.dtmf and a.frames == b.frames and a.voice_frames == b.voice_frames


def test_core_without_encoder_keeps_pcm(rtp: list[tuple[bytes, Any, Any, Any]]) -> None:
    core = run_rtp(rtp, Settings(mask_dtmf=True), core=True, batch=4, encode=False, keep_pcm=True)
    step = run_rtp(rtp, Settings(mask_dtmf=True), core=False, batch=4, encode=False, keep_pcm=True)
    same(core, step)
    assert all(not r.packets and r.pcm_all().size == r.frames * 160 for r in core)


@pytest.mark.parametrize("law", [_g711.PCMU, _g711.PCMA])
def test_core_stores_g711_frames(law: int, rtp: list[tuple[bytes, Any, Any, Any]]) -> None:
    """The non-Opus store (g711_law): one 160-byte G.711 packet per frame, what the
    frames decode from, byte for byte as the step path stores them."""
    results = []
    for core in (True, False):
        p = LegPipeline(
            "leg0",
            "test",
            Settings(mask_dtmf=True),
            call_start_us=1_000_000,
            keep_pcm=True,
            core=core,
            g711_law=law,
        )
        data, offsets, lengths, arrival = rtp[0]
        for lo in range(0, len(lengths), 3):
            p.push_rtp(data, offsets[lo : lo + 3], lengths[lo : lo + 3], arrival[lo : lo + 3])
        p.finish(total_frames=p.drain())
        results.append(p.result)
    same(results[:1], results[1:])
    r = results[0]
    run = r.opus_run()
    assert len(run) == r.frames and set(run.lengths.tolist()) == {160}
    assert r.opus_bytes == 160 * r.frames and len(r.dtmf) == 6
    pcm = r.pcm_all()
    assert np.array_equal(_g711.encode(pcm, law), run.data)
    # G.711 of G.711-decoded audio: decoding gives the frames back within a step
    assert np.abs(_g711.decode(run.data, law).astype(np.int32) - pcm).max() <= 1024


def test_core_matches_step_path_on_wav_legs(
    legs: list[npt.NDArray[np.int16]], tmp_path: Path
) -> None:
    inputs = [LegInput(f"leg{i}", "wav", pcm=x[: len(x) - 77]) for i, x in enumerate(legs)]
    results: list[CallResult] = []
    for core in (True, False):
        pipes = [LegPipeline(i.name, i.source, Settings(mask_dtmf=True), core=core) for i in inputs]
        for p, i in zip(pipes, inputs, strict=True):
            assert i.pcm is not None
            p.push_pcm(i.pcm)
        total = max(p.drain() for p in pipes)
        results.append(CallResult([p.finish(total_frames=total) for p in pipes], 0, total))
    same(results[0].legs, results[1].legs)


def test_core_takes_packets_a_record_at_a_time(rtp: list[tuple[bytes, Any, Any, Any]]) -> None:
    """What LiveCall does: packets taken in pieces while the leg runs, the rest after
    finish: the same packets as one take at the end."""
    data, offsets, lengths, arrival = rtp[0]
    whole = run_rtp(rtp[:1], Settings(), core=True, batch=5)[0].opus_run()
    p = LegPipeline("leg0", "test", Settings(), call_start_us=1_000_000)
    parts = []
    for lo in range(0, len(lengths), 5):
        p.push_batch(
            data[offsets[lo] : offsets[lo] + lengths[lo : lo + 5].sum()],
            lengths[lo : lo + 5],
            arrival[lo : lo + 5],
        )
        while p.packets_ready >= 50:
            parts.append(p.take_packets(50))
    p.finish(total_frames=p.drain())
    parts.append(p.take_packets())
    assert p.packets_ready == 0 and not p.result.packets
    assert PacketRun.concat(parts) == whole
    assert [len(r) for r in parts[:-1]] == [50] * (len(parts) - 1)


def test_core_refuses_a_bad_batch_and_keeps_going(rtp: list[tuple[bytes, Any, Any, Any]]) -> None:
    data, offsets, lengths, arrival = rtp[0]
    p = LegPipeline("leg0", "test", Settings(), call_start_us=1_000_000)
    p.push_rtp(data, offsets[:10], lengths[:10], arrival[:10])
    bad = lengths[10:20].copy()
    bad[3] = len(data)
    with pytest.raises(ValueError, match="runs past the end"):
        p.push_rtp(data, offsets[10:20], bad, arrival[10:20])
    p.push_rtp(data, offsets[10:], lengths[10:], arrival[10:])
    ref = LegPipeline("leg0", "test", Settings(), call_start_us=1_000_000, core=False)
    ref.push_rtp(data, offsets, lengths, arrival)
    assert p.finish().opus_run() == ref.finish().opus_run()


def test_cores_on_two_threads_match_one_thread(rtp: list[tuple[bytes, Any, Any, Any]]) -> None:
    """The server runs different calls' batches on different threads, the audio work
    without the GIL: legs pushed from two threads at once give the packets of one thread."""
    ref = run_rtp(rtp, Settings(mask_dtmf=True), core=True, batch=1)
    got: dict[int, list[pipeline.LegResult]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            got[i] = run_rtp(rtp, Settings(mask_dtmf=True), core=True, batch=1)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        same(got[i], ref)

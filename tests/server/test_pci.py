"""PCI at the server's Ingest (server/ingest.py) without gRPC: real Vault, real pipelines
and libopus. Pause/Resume take seqs of the batch sequence; the paused span is silence
on both legs, sealed as ``paused`` (never loss), the call's length unchanged; a replay
after a restart gives the same records; the [dtmf] policy section."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callvault import _opus
from callvault.errors import InputError
from callvault.media import sample
from callvault.server.ingest import (
    Batch,
    CallSpec,
    Control,
    End,
    Ingestor,
    RecordStream,
    Request,
    Sealed,
    dtmf_settings,
)
from callvault.timeline import FRAME_US
from callvault.vault import Vault
from tests.rtpfeed import capture_feed

PAUSE_S, RESUME_S = 2.0, 3.5


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[Batch]]:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=6.0)
    f = capture_feed(path)
    return f.start_us, [
        Batch(b.seq, b.leg, b.packets, list(b.lengths), list(b.arrival_us)) for b in f.batches
    ]


@contextmanager
def server(data: Path) -> Iterator[tuple[Vault, Ingestor]]:
    vault = Vault.open(data)
    ingestor = Ingestor(vault, workers=2)
    try:
        yield vault, ingestor
    finally:
        ingestor.workers.shutdown()
        vault.close()


def paused_requests(
    call_id: str, start_us: int, batches: list[Batch], spans: list[tuple[float, float]]
) -> list[Request]:
    """CallStart, the batches with a Pause / Resume put where a sidecar puts them
    (before the first batch with a packet that arrived at or after the instant), seqs
    renumbered, CallEnd."""
    marks = sorted(
        [(start_us + int(a * 1e6), True) for a, _ in spans]
        + [(start_us + int(b * 1e6), False) for _, b in spans]
    )
    out: list[Request] = [CallSpec(call_id, "", ("agent", "customer"), start_us=start_us)]
    seq = 0
    for b in batches:
        while marks and max(b.arrival_us) >= marks[0][0]:
            at, pause = marks.pop(0)
            out.append(Control(seq, pause, at))
            seq += 1
        out.append(Batch(seq, b.leg, b.packets, b.lengths, b.arrival_us))
        seq += 1
    for at, pause in marks:
        out.append(Control(seq, pause, at))
        seq += 1
    out.append(End(seq))
    return out


def silent(x: np.ndarray) -> bool:
    """Decoded Opus of digital silence (the encoder codes paused frames with DTX off:
    ext/_leg.pyx): within a few LSB of zero, past the codec's fade of what came before
    (the span's first 2 frames) and its onset of what comes after (the last 10 ms, its
    lookahead)."""
    y = x.astype(np.float64)
    return bool(np.abs(y).max() <= 64 and np.sqrt(np.mean(y**2)) <= 4)


def record(data: Path, reqs: list[Request]) -> tuple[dict[str, Any], list[np.ndarray], int]:
    """Run the requests; (summary, decoded PCM per leg, frames)."""
    with server(data) as (vault, ingestor):
        replies = list(RecordStream(ingestor).run(iter(reqs), lambda r: r))
        assert isinstance(replies[-1], Sealed), replies[-1]
        call_id = reqs[0].call_id  # type: ignore[union-attr]
        assert vault.verify_call(call_id) == []
        summary = vault.summary(call_id)
        pcm = []
        skip = _opus.Encoder().lookahead // 6  # the pre-skip (48 kHz units) at 8 kHz
        for data_, lengths in vault.read_packets(call_id):
            pcm.append(_opus.Decoder().decode_frames(data_, lengths).reshape(-1)[skip:])
        return summary, pcm, replies[-1].frames


def test_pause_is_silence_on_both_legs_marked_and_not_loss(
    batches: tuple[int, list[Batch]], tmp_path: Path
) -> None:
    start_us, bs = batches
    ref, ref_pcm, ref_frames = record(tmp_path / "a", paused_requests("ref", start_us, bs, []))
    got, pcm, frames = record(
        tmp_path / "b", paused_requests("p", start_us, bs, [(PAUSE_S, RESUME_S)])
    )
    assert frames == ref_frames  # the call's length is unchanged
    a, b = int(PAUSE_S * 1e6) // FRAME_US, -(-int(RESUME_S * 1e6) // FRAME_US)
    assert got["paused"] == [{"start_frame": a, "frames": b - a}]
    assert "paused" not in ref
    for leg, ref_leg, x, rx in zip(got["legs"], ref["legs"], pcm, ref_pcm, strict=True):
        assert leg["frames"] == ref_leg["frames"] == frames
        span = x[(a + 2) * 160 : b * 160 - 80]
        assert np.abs(span.astype(np.int32)).max() <= 64, leg["leg"]  # silence (Opus of 0s)
        assert np.abs(rx[a * 160 : b * 160].astype(np.int32)).max() > 300  # it had sound
        # no gap inside or near the span; the rest of the loss as without the pause
        for g in leg["gaps"]:
            assert g["start_frame"] + g["frames"] <= a - 15 or g["start_frame"] >= b + 15, g
        far = [
            g
            for g in ref_leg["gaps"]
            if g["start_frame"] + g["frames"] <= a - 15 or g["start_frame"] >= b + 15
        ]
        assert leg["gaps"] == far
        # and the audio outside the span (beyond the jitter window) is unchanged
        n = (a - 20) * 160
        assert np.array_equal(x[:n], rx[:n])


def test_pause_till_the_end_and_two_pauses(
    batches: tuple[int, list[Batch]], tmp_path: Path
) -> None:
    start_us, bs = batches
    reqs = paused_requests("two", start_us, bs, [(1.0, 1.5), (2.5, 3.0)])
    got, pcm, frames = record(tmp_path / "v", reqs)
    assert got["paused"] == [{"start_frame": 50, "frames": 25}, {"start_frame": 125, "frames": 25}]
    for x in pcm:
        for a, n in ((50, 25), (125, 25)):
            assert silent(x[(a + 2) * 160 : (a + n) * 160 - 80])
    # a pause never resumed lasts to the end of the call (CallEnd.end_us: the sidecar
    # gives its stop instant when paused, no audio comes after the pause)
    reqs = paused_requests("end", start_us, bs, [(4.0, 99.0)])
    reqs = [r for r in reqs if not (isinstance(r, Control) and not r.pause)]
    reqs[-1] = End(len(reqs) - 2, start_us + 6_000_000)
    got, pcm, frames = record(tmp_path / "w", reqs)
    assert frames == 300
    assert got["paused"] == [{"start_frame": 200, "frames": 100}]
    for x in pcm:
        assert silent(x[202 * 160 :])


def test_pause_refusals_and_resend(batches: tuple[int, list[Batch]], tmp_path: Path) -> None:
    start_us, bs = batches
    with server(tmp_path / "v") as (_vault, ingestor):
        s = RecordStream(ingestor)
        s.handle(CallSpec("r", "", ("agent", "customer"), start_us=start_us))
        s.handle(Batch(0, bs[0].leg, bs[0].packets, bs[0].lengths, bs[0].arrival_us))
        with pytest.raises(InputError, match="not paused"):
            s.handle(Control(1, False, start_us + 100_000))
        s.handle(Control(1, True, start_us + 100_000))
        s.handle(Control(1, True, start_us + 100_000))  # a resend: skipped
        with pytest.raises(InputError, match="paused already"):
            s.handle(Control(2, True, start_us + 200_000))
        with pytest.raises(InputError, match="is next"):
            s.handle(Control(5, False, start_us + 200_000))


def test_replay_after_restart_gives_the_same_call(
    batches: tuple[int, list[Batch]], tmp_path: Path
) -> None:
    """The server stops halfway (records flushed); a new server resumes the call from
    the vault, the client resends from seq 0 (pauses included): the sealed call is the
    one recorded in one go."""
    start_us, bs = batches
    reqs = paused_requests("rs", start_us, bs, [(PAUSE_S, RESUME_S)])
    whole, whole_pcm, _ = record(tmp_path / "one", reqs)
    data = tmp_path / "two"
    half = len(reqs) // 2
    with server(data) as (_vault, ingestor):
        s = RecordStream(ingestor)
        for r in reqs[:half]:
            s.handle(r)
        ingestor.shutdown()
    got, pcm, _ = record(data, reqs)
    assert got["paused"] == whole["paused"]
    for x, y in zip(pcm, whole_pcm, strict=True):
        assert np.array_equal(x, y)


def test_dtmf_policy_section() -> None:
    assert dtmf_settings(None) == {"mask_dtmf": True, "keep_digits": False}
    assert dtmf_settings({"mask": False, "keep_digits": True}) == {
        "mask_dtmf": False,
        "keep_digits": True,
    }
    with pytest.raises(InputError, match="unknown key"):
        dtmf_settings({"masks": True})
    with pytest.raises(InputError, match="true or false"):
        dtmf_settings({"mask": "yes"})


@pytest.mark.parametrize("mask", [False, True])
def test_paused_frames_are_zeros_on_both_paths(mask: bool) -> None:
    """LegPipeline.set_paused: the frames reach the DSP (and the encoder) as zeros, the
    C core and the step path alike (packets byte for byte the same)."""
    from callvault.media.pipeline import LegPipeline, Settings

    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(160 * 200) * 3000).astype(np.int16)
    out = []
    for core in (True, False):
        p = LegPipeline("a", "x", Settings(mask_dtmf=mask), keep_pcm=True, core=core)
        p.set_paused([(50, 80), (120, None)])
        p.push_pcm(pcm[: 160 * 100])
        p.set_paused([(50, 80), (120, 150)])
        p.push_pcm(pcm[160 * 100 :])
        r = p.finish()
        x = r.pcm_all().reshape(-1, 160)
        assert not x[50:80].any() and not x[120:150].any()
        assert x[:50].all(axis=1).any() and x[80:120].any() and x[150:].any()
        assert r.paused == [(50, 30), (120, 30)]
        out.append((x, r.packets_all()))
    assert np.array_equal(out[0][0], out[1][0])
    assert out[0][1][0] == out[1][1][0]


def test_call_info_pci_fields_old_and_new_summaries() -> None:
    """CallInfo 35-37 from a sealed summary: a summary from before digits were withheld
    (no digits_kept) kept its digits and still reads so."""
    from callvault_client._pb import callvault_pb2 as pb

    from callvault.server.callinfo import leg_summary, pci_fields

    old = {"legs": [{"leg": "a", "telephone_events": [{"digit": "4", "start_ms": 20}]}]}
    info = pb.CallInfo()
    pci_fields(info, old)
    assert info.digits_kept and info.dtmf_events == 1 and not info.paused
    assert leg_summary(old["legs"][0]).telephone_events[0].digit == "4"
    legs: list[dict[str, Any]] = [
        {"leg": "a", "digits_kept": False, "dtmf": [{"start_ms": 20, "masked": True}]},
        {"leg": "b", "digits_kept": False, "telephone_events": [{"start_ms": 90}]},
    ]
    info = pb.CallInfo()
    pci_fields(info, {"legs": legs, "paused": [{"start_frame": 100, "frames": 75}]})
    assert not info.digits_kept and info.dtmf_events == 2
    assert [(p.start_frame, p.frames) for p in info.paused] == [(100, 75)]
    assert leg_summary(legs[0]).dtmf[0].digit == ""

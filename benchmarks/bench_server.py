"""Workloads of the gRPC server (`callvault serve`), each against a peer in the same run.

    server_realtime_calls   The largest number N of concurrent dual-track calls
                            streamed in real time into ONE server process with
                            no frame lost and acknowledgement latency p99 < 1 s.
      ours                  Levels of N calls (ramp 8, 16, 32, ... doubling until
                            a level fails, then bisection), each on a fresh
                            server (`callvault serve`, tests/servers.py) and data
                            directory. Each call: 2 legs of 20 ms PCMU RTP,
                            CALL_SECONDS long, paced by the wall clock, batched
                            every BATCH_MS per leg (5 packets), sent through the
                            SDK (callvault_client Recording.send; one channel per
                            generator process) by GENERATORS processes of
                            benchmarks/loadgen.py (separate from the server;
                            how they pace and stagger: its docstring). A level
                            passes when every call is sealed, every leg of every
                            call has exactly CALL_SECONDS x 50 frames and
                            `lost` == 0 in the sealed summary (GetCall
                            include_summary: legs[].frames, legs[].lost, which
                            counts every frame touched by a gap), every batch
                            was acknowledged, and the p99 over all batches of
                            (first Ack covering the batch's seq received -
                            Recording.send called) is below 1 s. Server CPU
                            (utime + stime from /proc/PID/stat) over the
                            streaming window, in cores, and the generators' CPU
                            are recorded at each level. One round (the whole
                            search): the figures are in extra_info, its time
                            means nothing.
      ceiling               The Opus-only ceiling, measured in the same run:
                            the plain C loop over libopus (benchmarks/c/
                            opus_loop.c, the settings the server's pipeline
                            encodes with: 8 kHz mono, 20 ms, 12 kb/s VBR,
                            complexity 8, DTX, VoIP) encoding 10 s of one leg,
                            median of rounds. ceiling = cores / (2 legs x
                            encode seconds per second of audio): the dual-track
                            calls that encoding alone would keep real time on
                            all of this machine's cores (os.cpu_count()),
                            nothing else running. The report prints N / ceiling.

    play_opus_10min         Archive.Play of a sealed 10-minute dual-track call
                            (the session's capture imported once with
                            Vault.import_call before the server starts), OPUS,
                            50 frames per chunk, every chunk received and
                            parsed into a PlayChunk by a plain grpcio client.
      ours                  `callvault serve` on that data directory.
      peer bare-grpcio      benchmarks/bare_stream.py in its own process: a
                            grpcio server with one generic server-streaming
                            method (bytes in, bytes out, no servicer logic)
                            that yields the very bytes of ours' chunks
                            (serialized PlayChunk messages, recorded once), so
                            every message has the same size; streamed by the
                            same client function.
                            Ratio: ours' median time / the bare stream's.
                            Both run interleaved, round by round, in one loop
                            (conftest.Interleaved), one warm-up round each first.

The machine's 2 cores are shared by the server, the load generators and the
pytest process: the capacity found is that of the whole set on this machine,
and extra_info says which side ran out (the server's CPU near the cores left
to it, or the generators late against their schedule).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.conftest import CallFiles, Interleaved, OpusLoop, Side, Tag, need, sides
from callvault.timeline import FRAME_SAMPLES, FRAME_US, SAMPLE_RATE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CAPACITY = "server_realtime_calls"
PLAY = "play_opus_10min"

CALL_SECONDS = 20.0
BATCH_MS = 100  # per leg: 5 packets of 20 ms per batch (the sidecar batches every 20 ms)
CALLS_PER_GENERATOR = 24
MAX_GENERATORS = 4
P99_LIMIT_S = 1.0
FIRST_LEVEL = 8
MAX_LEVEL = 512
MAX_LEVELS = 8  # ramp + bisection steps, to keep the search within a few minutes
SEARCH_BUDGET_S = 330.0  # no new level once the search has run this long

OPUS_SECONDS = 10.0
OPUS_FRAME = FRAME_SAMPLES
OPUS_ROUNDS = 15


def tag(benchmark: Any, name: str, side: str, **info: Any) -> None:
    """Like conftest's `workload` fixture, for the sides only this file has
    ("capacity", "ceiling"): report.py prints them in their own section."""
    benchmark.group = name
    benchmark.extra_info.update({"workload": name, "side": side, **info})


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


TICK = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU together (/proc/stat: idle and iowait are
    not busy)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if xs else math.inf


# -- the Opus-only ceiling ---------------------------------------------------------------
@pytest.fixture(scope="module")
def leg_pcm(
    dialogue_30s: tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]],
) -> npt.NDArray[np.int16]:
    frames = int(OPUS_SECONDS * SAMPLE_RATE) // OPUS_FRAME
    return np.ascontiguousarray(dialogue_30s[0][: frames * OPUS_FRAME].reshape(frames, OPUS_FRAME))


def opus_settings() -> dict[str, Any]:
    """What the server's pipeline encodes voice with (callvault.media.pipeline.Settings)."""
    s = need("callvault.media.pipeline").Settings()
    return {
        "bitrate": int(s.bitrate),
        "complexity": int(s.complexity),
        "dtx": bool(s.dtx),
        "vbr": True,
    }


def test_server_opus_ceiling(
    benchmark: Any, opus_c_loop: OpusLoop, leg_pcm: npt.NDArray[np.int16]
) -> None:
    s = opus_settings()
    n = len(leg_pcm)
    out = np.empty(n * 4000, dtype=np.uint8)
    lengths = np.empty(n, dtype=np.int32)
    cores = os.cpu_count() or 1
    tag(
        benchmark,
        CAPACITY,
        "ceiling",
        audio_seconds=OPUS_SECONDS,
        cores=cores,
        settings=s,
        what=f"plain C loop over libopus, {OPUS_SECONDS:g} s of one leg per round, "
        f"8 kHz mono VoIP 20 ms, {s['bitrate'] // 1000} kb/s, complexity "
        f"{s['complexity']}, DTX {'on' if s['dtx'] else 'off'}",
    )

    def run() -> int:
        return opus_c_loop.encode_into(leg_pcm, s, out, lengths)

    used = benchmark.pedantic(run, rounds=OPUS_ROUNDS, iterations=1, warmup_rounds=1)
    assert used > 0 and int(lengths.sum()) == used
    # The same settings as the server: the packets must decode to the leg's length.
    opus = need("callvault._opus")
    pcm = opus.Decoder(sample_rate=SAMPLE_RATE).decode_frames(out[:used].tobytes(), lengths)
    assert pcm.size == n * OPUS_FRAME


# -- the capacity search ------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_file(
    tmp_path_factory: pytest.TempPathFactory,
    dialogue_30s: tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]],
) -> tuple[Path, int]:
    """Both legs of the 30 s dialogue as mu-law, back to back (what loadgen.py sends)."""
    g711 = need("callvault._g711")
    legs = [g711.encode(np.ascontiguousarray(x), g711.PCMU) for x in dialogue_30s]
    assert len(legs[0]) == len(legs[1])
    path = tmp_path_factory.mktemp("load") / "legs.ulaw"
    path.write_bytes(legs[0] + legs[1])
    return path, len(legs[0])


def record_levels(benchmark: Any, levels: list[Level], first_level: int) -> None:
    """A capacity search's levels into extra_info (figures per level, the largest N
    that passed, the first N above it that failed). A search that never passed its
    first level found nothing to report: it fails loudly."""
    passed = [lv.calls for lv in levels if lv.passed]
    failed = [lv.calls for lv in levels if not lv.passed]
    best = max(passed, default=0)
    benchmark.extra_info.update(
        {
            "levels": [{"passed": lv.passed, "reasons": lv.reasons, **lv.figures} for lv in levels],
            "max_calls": best,
            "first_failing_calls": min((n for n in failed if n > best), default=None),
        }
    )
    assert best >= first_level, f"no level passed: {[lv.reasons for lv in levels]}"


def generators_for(calls: int) -> int:
    return max(1, min(MAX_GENERATORS, -(-calls // CALLS_PER_GENERATOR)))


@dataclass
class Level:
    calls: int
    passed: bool
    reasons: list[str]
    figures: dict[str, Any]


def run_level(calls: int, workdir: Path, audio: tuple[Path, int]) -> Level:
    """One level: a fresh server, ``calls`` calls streamed in real time, then checked."""
    from callvault_client import Client

    from tests.servers import start_server

    d = workdir / f"level-{calls}"
    d.mkdir(parents=True)
    server = start_server(d / "data", log_dir=d)
    gens: list[subprocess.Popen[str]] = []
    try:
        ngen = generators_for(calls)
        ids = [f"load-{calls}-{i:04d}" for i in range(calls)]
        per = -(-calls // ngen)
        for g in range(ngen):
            mine = ids[g * per : (g + 1) * per]
            if not mine:
                continue
            spec = {
                "address": server.address,
                "call_ids": mine,
                "index0": g * per,
                "total": calls,
                "seconds": CALL_SECONDS,
                "batch_ms": BATCH_MS,
                "audio": str(audio[0]),
                "leg_bytes": audio[1],
                "seal_timeout": 90.0,
            }
            sp = d / f"gen-{g}.json"
            sp.write_text(json.dumps(spec))
            with open(d / f"gen-{g}.log", "w") as log:
                gens.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.loadgen", str(sp)],
                        cwd=ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                    )
                )
        for p in gens:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise AssertionError(f"load generator not ready: {line!r}")
        start = time.time() + 1.0
        for p in gens:
            assert p.stdin is not None
            p.stdin.write(f"{start!r}\n")
            p.stdin.flush()
        time.sleep(max(0.0, start - time.time()))
        t0, c0, m0 = time.monotonic(), cpu_ticks(server.proc.pid), machine_ticks()
        time.sleep(CALL_SECONDS + BATCH_MS / 1000)
        t1, c1, m1 = time.monotonic(), cpu_ticks(server.proc.pid), machine_ticks()
        results = []
        for p in gens:
            out, _ = p.communicate(timeout=300)
            if p.returncode:
                raise AssertionError(f"load generator exited with {p.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        t2, c2 = time.monotonic(), cpu_ticks(server.proc.pid)

        lat = [x for r in results for x in r["latencies"]]
        lags = [x for r in results for x in r["lags"]]
        sealed = {k: v for r in results for k, v in r["sealed"].items()}
        expected = results[0]["frames_per_leg"]
        batches = sum(r["batches_per_call"] * r["calls"] for r in results)
        reasons: list[str] = []
        errors = [e for r in results for e in r["errors"]]
        if errors:
            reasons.append(
                f"{sum(r['error_count'] for r in results)} stream errors, e.g. {errors[0]}"
            )
        if len(sealed) != calls:
            reasons.append(f"{calls - len(sealed)} of {calls} calls not sealed")
        if len(lat) != batches:
            reasons.append(f"{batches - len(lat)} of {batches} batches never acknowledged")
        bad_frames, lost = 0, 0
        with Client(server.address, timeout=30.0) as client:
            for cid in sealed:
                info = client.get_call(cid, include_summary=True)
                legs = json.loads(info.summary_json)["legs"]
                bad_frames += sum(1 for leg in legs if leg["frames"] != expected)
                lost += sum(int(leg["lost"]) for leg in legs)
        if bad_frames:
            reasons.append(f"{bad_frames} legs without exactly {expected} frames")
        if lost:
            reasons.append(f"{lost} frames lost")
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        if not p99 < P99_LIMIT_S:
            reasons.append(f"ack p99 {p99:.3g} s >= {P99_LIMIT_S:g} s")
        stream_wall = max(r["stream_wall_s"] for r in results)
        figures = {
            "calls": calls,
            "generators": len(gens),
            "batches": batches,
            "acked": len(lat),
            "sealed": len(sealed),
            "frames_per_leg": expected,
            "bad_legs": bad_frames,
            "lost_frames": lost,
            "ack_p50_s": p50,
            "ack_p99_s": p99,
            "ack_max_s": max(lat, default=math.inf),
            "gen_lag_p99_s": percentile(lags, 99),
            "gen_lag_max_s": max(lags, default=0.0),
            "server_cpu_cores": (c1 - c0) / TICK / (t1 - t0),
            "server_cpu_s_total": (c2 - c0) / TICK,
            "gen_cpu_cores": sum(r["cpu_stream_s"] for r in results) / stream_wall,
            # every process on the machine (server, generators, other jobs), same window
            "machine_busy_cores": (m1[0] - m0[0]) / TICK / (t1 - t0),
            "machine_cores": (os.cpu_count() or 1),
            "seal_wait_s": max(r["seal_wait_s"] for r in results),
            "level_wall_s": t2 - t0,
        }
        return Level(calls, not reasons, reasons, figures)
    finally:
        for p in gens:
            if p.poll() is None:
                p.kill()
                p.wait()
        server.stop()


def ramp_and_bisect(
    passes: Callable[[int], bool],
    *,
    first: int,
    max_level: int,
    step: Callable[[int], int],
    budget_left: Callable[[], bool],
) -> None:
    """The capacity search of every real-time benchmark: run levels doubling from
    ``first`` until one fails (or ``max_level``), then bisect between the last pass
    and the first failure until they are ``step(last pass)`` calls apart, while
    ``budget_left()``."""
    good, bad = 0, None
    n = first
    while n <= max_level and budget_left():
        if passes(n):
            good, n = n, n * 2
        else:
            bad = n
            break
    while bad is not None and bad - good > step(good) and budget_left():
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid


def search(workdir: Path, audio: tuple[Path, int]) -> list[Level]:
    """Double from FIRST_LEVEL until a level fails, then bisect between the last pass
    and the first failure to a step of 1/8 of the pass (at least 2 calls)."""
    levels: list[Level] = []
    began = time.monotonic()

    def level(n: int) -> Level:
        lv = run_level(n, workdir, audio)
        levels.append(lv)
        f = lv.figures
        print(
            f"\n  level {n}: {'pass' if lv.passed else 'FAIL'}  p99 {f['ack_p99_s']:.3f} s"
            f"  server {f['server_cpu_cores']:.2f} cores  generators "
            f"{f['gen_cpu_cores']:.2f} cores  machine {f['machine_busy_cores']:.2f} cores busy"
            f"  lag p99 {f['gen_lag_p99_s']:.3f} s"
            + ("" if lv.passed else f"  ({'; '.join(lv.reasons)})"),
            flush=True,
        )
        return lv

    ramp_and_bisect(
        lambda n: level(n).passed,
        first=FIRST_LEVEL,
        max_level=MAX_LEVEL,
        step=lambda good: max(2, good // 8),
        budget_left=lambda: len(levels) < MAX_LEVELS and time.monotonic() - began < SEARCH_BUDGET_S,
    )
    return levels


def test_server_realtime_calls(
    benchmark: Any, tmp_path: Path, audio_file: tuple[Path, int]
) -> None:
    need("callvault.server.app")
    tag(
        benchmark,
        CAPACITY,
        "capacity",
        call_seconds=CALL_SECONDS,
        batch_ms=BATCH_MS,
        p99_limit_s=P99_LIMIT_S,
        cores=os.cpu_count() or 1,
        playback=PLAY,
        what=f"concurrent dual-track calls of {CALL_SECONDS:g} s, 20 ms PCMU, batches of "
        f"{BATCH_MS} ms per leg, paced by the wall clock, through the SDK from "
        "separate generator processes into one `callvault serve`",
    )
    levels: list[Level] = benchmark.pedantic(
        search, args=(tmp_path, audio_file), rounds=1, iterations=1
    )
    record_levels(benchmark, levels, FIRST_LEVEL)


# -- playback vs a bare grpcio stream -----------------------------------------------------
PLAY_CALL = "play-10min"
PLAY_METHOD = "/callvault.v1.Archive/Play"
PLAY_ROUNDS = 15


@dataclass(frozen=True)
class PlaySetup:
    ours: str  # address of `callvault serve`
    peer: str  # address of benchmarks/bare_stream.py
    request: bytes  # the serialized PlayRequest
    leg_frames: int  # frames x legs a whole Play carries (the encoder flush frame too)
    messages: int
    nbytes: int  # serialized bytes of every chunk


def drain(channel: grpc.Channel, method: str, request: bytes) -> tuple[int, int, int]:
    """The client of both sides: every chunk parsed into a PlayChunk; returns (chunks,
    frames x legs, Opus payload bytes)."""
    pb = need("callvault_client._pb.callvault_pb2")
    call: Any = channel.unary_stream(
        method, request_serializer=None, response_deserializer=pb.PlayChunk.FromString
    )
    chunks = frames = payload = 0
    for chunk in call(request):
        chunks += 1
        frames += chunk.frames * len(chunk.legs)
        payload += sum(len(leg.data) for leg in chunk.legs)
    return chunks, frames, payload


@pytest.fixture(scope="module")
def play_setup(
    tmp_path_factory: pytest.TempPathFactory, call_files: CallFiles
) -> Iterator[PlaySetup]:
    """The 10-minute call imported into a vault, a server on it, the bare peer serving
    ours' chunks byte for byte."""
    from tests.servers import start_server, wait_port_file

    pb = need("callvault_client._pb.callvault_pb2")
    vault_mod = need("callvault.vault")
    d = tmp_path_factory.mktemp("play")
    vault = vault_mod.Vault.open(d / "data")
    try:
        entry, _seal = vault.import_call(PLAY_CALL, [str(call_files.capture)])
    finally:
        vault.close()
    server = start_server(d / "data", log_dir=d)
    bare: subprocess.Popen[bytes] | None = None
    try:
        request = pb.PlayRequest(
            call=pb.CallRef(call_id=PLAY_CALL), format=pb.OPUS, frames_per_chunk=50
        ).SerializeToString()
        with grpc.insecure_channel(server.address) as ch:
            raw: list[bytes] = list(
                ch.unary_stream(PLAY_METHOD, request_serializer=None, response_deserializer=None)(
                    request
                )
            )
        chunks = [pb.PlayChunk.FromString(m) for m in raw]
        frames = (entry.end_us - entry.start_us) // FRAME_US
        assert sum(c.frames for c in chunks) == frames + 1  # + the encoder flush frame
        assert {len(c.legs) for c in chunks} == {2}
        bare_stream = need("benchmarks.bare_stream")
        messages = d / "chunks.bin"
        bare_stream.write_messages(messages, raw)
        port_file = d / "bare.port"
        with open(d / "bare.log", "wb") as log:
            bare = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bare_stream", str(messages), str(port_file)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        port = wait_port_file(port_file, bare, d / "bare.log")
        yield PlaySetup(
            server.address,
            f"127.0.0.1:{port}",
            request,
            2 * (frames + 1),
            len(raw),
            sum(len(m) for m in raw),
        )
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(30)
        server.stop()


@pytest.fixture(scope="module")
def play_rounds(play_setup: PlaySetup) -> Iterator[Interleaved]:
    """Ours and the bare stream, round by round in one loop, PLAY_ROUNDS rounds."""
    s = play_setup
    with grpc.insecure_channel(s.ours) as ours, grpc.insecure_channel(s.peer) as bare:
        yield Interleaved(
            {
                "ours": lambda: lambda: drain(ours, PLAY_METHOD, s.request),
                "bare_grpcio": lambda: lambda: drain(bare, "/bench.Bare/Stream", b""),
            },
            rounds=PLAY_ROUNDS,
            warmup_rounds=1,
        )


@pytest.fixture
def play_side(
    benchmark: Any, workload: Tag, play_setup: PlaySetup, play_rounds: Interleaved
) -> Side:
    s = play_setup
    return sides(
        benchmark,
        workload,
        play_rounds,
        PLAY,
        rates={"leg-frames": s.leg_frames, "MB": s.nbytes / 1e6},
    )


def test_play_ours(play_side: Side, play_setup: PlaySetup) -> None:
    s = play_setup
    got = play_side(
        "ours",
        "ours",
        messages=s.messages,
        what=f"Archive.Play of a sealed 600 s dual-track call, OPUS, 50 frames per chunk: "
        f"{s.messages} messages, {s.nbytes / 1e6:.3g} MB, every one parsed by a "
        "plain grpcio client",
    )
    assert got[0] == s.messages and got[1] == s.leg_frames


def test_play_peer_bare_grpcio(play_side: Side, play_setup: PlaySetup) -> None:
    s = play_setup
    got = play_side(
        "peer",
        "bare_grpcio",
        peer=f"bare grpcio {grpc.__version__} server-streaming method (own process, "
        "generic handler, bytes out) yielding ours' serialized chunks",
        target="-",
    )
    assert got[0] == s.messages and got[1] == s.leg_frames

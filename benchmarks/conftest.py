"""Fixtures shared by the benchmarks: sample audio, a 10-minute capture, the C peer.

Benchmark files are named bench_*.py (LevelDB's db_bench style) and collected
by the hook below when pytest is pointed at benchmarks/ (`make bench`).
Every benchmark tags itself with `workload(benchmark, name, side, ...)`;
benchmarks/report.py pairs each "ours" with its peers of the same workload
from the JSON of the same run and writes benchmarks/RESULTS.md.

The sides of a paired workload are timed in one loop, round by round
(`Interleaved`): every round runs ours and each peer once, so load that drifts
over seconds on the shared machine lands on all sides alike; each side's test
then files its rounds with its own benchmark fixture (so the JSON has one entry
per side, as before) and checks what its side returned.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pytest_benchmark.timers import compute_timer_precision

HERE = Path(__file__).resolve().parent
CALL_SECONDS = 600.0  # workload transcode_10min_dual_leg: a 10-minute call


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect benchmarks/bench_*.py (pytest's default pattern is test_*.py).

    A file named on the command line is collected by pytest itself already."""
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--call-seconds",
        type=float,
        default=CALL_SECONDS,
        help="length of the transcode workload's call (600 s; shorter only to "
        "try the harness: RESULTS.md states the length measured)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Mark the figures of a benchmark whose checks failed: the report leaves them out.

    pytest-benchmark writes a failed test's timings to the JSON all the same."""
    report = yield
    bench = getattr(item, "funcargs", {}).get("benchmark")
    if report.failed and bench is not None:
        bench.extra_info["failed"] = True
    return report


def need(module: str) -> ModuleType:
    """Import a module under test, failing (not skipping) with a clear message.

    A benchmark of a module that does not build must not look like a pass."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} does not import ({e}); run `make build` first", pytrace=False)


Tag = Callable[..., None]


@pytest.fixture
def workload() -> Tag:
    """Tag a benchmark: its workload, its side ("ours" or "peer") and facts for the report.

    Keys the report reads: units + unit (work per round, for a per-unit median),
    rates (work per round by unit name, e.g. {"records": 3840, "MB": 3.7}, for
    medians as throughputs), call_seconds (for a real-time factor), peer (what the
    peer is), target (text) and max_ratio (the target as ours/peer median time, on
    the peer's side).

    Side "sizes" is for figures that are not timings (bytes on disk): the report
    prints its extra_info["sizes"] rows in a table of their own and never its time."""

    def tag(benchmark: Any, name: str, side: str, **info: Any) -> None:
        if side not in ("ours", "peer", "sizes"):
            raise ValueError(f"side must be 'ours', 'peer' or 'sizes', not {side!r}")
        benchmark.group = name
        benchmark.extra_info.update({"workload": name, "side": side, **info})

    return tag


@dataclass
class Round:
    """What one side of a workload runs in a round: ``run(*setup())`` is timed;
    ``setup`` (fresh state per round) and ``teardown(*args)`` are not."""

    run: Callable[..., Any]
    setup: Callable[[], tuple[Any, ...]] | None = None
    teardown: Callable[..., None] | None = None


@dataclass
class _Timed:
    work: Round
    iterations: int = 1
    durations: list[float] = field(default_factory=list)
    result: Any = None


class Interleaved:
    """The sides of one workload (ours and its peers) timed round by round in one loop.

    ``sides`` maps a side's name to a function that prepares it (imports,
    untimed) and returns its ``Round`` (or just the callable to time). Round r
    runs every side once, in an order rotated by one each round (A B C, B C A,
    C A B, ...), so no side always runs first or right after the same
    neighbour. ``take(side, benchmark)`` runs the loop the first time any side
    is taken (with that benchmark fixture's knobs: timer, max_time, min_rounds,
    min_time, disable_gc, --benchmark-disable), then files the side's
    per-round times in ``benchmark`` and returns what the side's last round
    returned, for the test to check.

    Rounds: ``rounds`` if given (long workloads, like pedantic rounds; then
    ``warmup_rounds`` untimed rounds of every side come first), else as many as
    fit in max_time x number of sides (the time the sides got when they ran
    one after the other), at least min_rounds. Without a ``setup``, a side
    whose round is shorter than the timer resolution allows is repeated
    ``iterations`` times per round, calibrated as pytest-benchmark does.

    A side that fails to prepare or raises in a round is dropped from the loop;
    its test raises that error, the other sides go on.
    """

    def __init__(
        self,
        sides: dict[str, Callable[[], Round | Callable[[], Any]]],
        *,
        rounds: int | None = None,
        warmup_rounds: int = 0,
    ) -> None:
        self.sides = sides
        self.fixed_rounds = rounds
        self.warmup_rounds = warmup_rounds
        self.timed: dict[str, _Timed] = {}
        self.errors: dict[str, BaseException] = {}
        self.rounds = 0
        self.ran = False

    @staticmethod
    def round(
        run: Callable[..., Any],
        setup: Callable[[], tuple[Any, ...]] | None = None,
        teardown: Callable[..., None] | None = None,
    ) -> Round:
        """A ``Round``, for bench files that get this class from the ``interleaved`` fixture."""
        return Round(run, setup, teardown)

    def take(self, side: str, benchmark: Any) -> Any:
        if side not in self.sides:
            raise KeyError(f"no side {side!r} in this workload: {sorted(self.sides)}")
        if not self.ran:
            self.ran = True
            self._run(benchmark)
        if side in self.errors:
            raise self.errors[side]
        t = self.timed[side]
        if getattr(benchmark, "_mode", None):
            raise RuntimeError("this benchmark fixture was used already")
        benchmark._mode = "interleaved rounds (benchmarks/conftest.py Interleaved)"
        if not benchmark.disabled:
            _file_rounds(benchmark, t.iterations, t.durations)
            benchmark.extra_info["interleaved"] = {
                "sides": list(self.sides),
                "rounds": self.rounds,
                "iterations": t.iterations,
            }
        return t.result

    def _prepare(self) -> None:
        for name, make in self.sides.items():
            try:
                made = make()
            except _SIDE_ERRORS as e:
                self.errors[name] = e
                continue
            self.timed[name] = _Timed(made if isinstance(made, Round) else Round(made))

    def _once(self, name: str, t: _Timed, timer: Callable[[], float], loops: int) -> float:
        w = t.work
        args = w.setup() if w.setup is not None else ()
        start = timer()
        for _ in range(loops - 1):
            w.run(*args)
        result = w.run(*args)
        took = timer() - start
        if w.teardown is not None:
            w.teardown(*args)
        t.result = result
        return took

    def _round(self, order: list[str], timer: Callable[[], float], record: bool) -> None:
        for name in order:
            t = self.timed.get(name)
            if t is None:
                continue
            try:
                took = self._once(name, t, timer, t.iterations)
            except _SIDE_ERRORS as e:
                self.errors[name] = e
                del self.timed[name]
                continue
            if record:
                t.durations.append(took)

    def _calibrate(self, timer: Callable[[], float], min_time: float) -> float:
        """Iterations per round for each side (pytest-benchmark's rule: a round is at
        least ``min_time``); returns the estimated time of one round of all sides."""
        total = 0.0
        for name in list(self.timed):
            t = self.timed[name]
            loops = 1
            try:
                while True:
                    took = self._once(name, t, timer, loops)
                    if took >= min_time or t.work.setup is not None or loops >= 10**7:
                        break
                    loops = loops * 10 if took <= 0 else math.ceil(min_time * loops / took)
            except _SIDE_ERRORS as e:
                self.errors[name] = e
                del self.timed[name]
                continue
            t.iterations = loops
            total += took
        return total

    def _run(self, benchmark: Any) -> None:
        self._prepare()
        names = list(self.sides)
        if benchmark.disabled:  # --benchmark-disable: each side once, for its checks
            self._round(names, time.perf_counter, record=False)
            self.rounds = 1
            return
        knobs = _knobs(benchmark)
        timer = knobs["timer"]
        gc_was_on = gc.isenabled()
        if knobs["disable_gc"]:
            gc.disable()
        try:
            if self.fixed_rounds is not None:
                rounds = self.fixed_rounds
                for r in range(self.warmup_rounds):
                    self._round(_rotated(names, r), timer, record=False)
            else:
                min_time = max(knobs["min_time"], compute_timer_precision(timer) * 10)
                per_round = self._calibrate(timer, min_time)
                budget = knobs["max_time"] * len(names)
                rounds = math.ceil(budget / per_round) if per_round > 0 else knobs["min_rounds"]
                rounds = max(rounds, knobs["min_rounds"])
            for r in range(rounds):
                self._round(_rotated(names, r), timer, record=True)
            self.rounds = rounds
        finally:
            if gc_was_on:
                gc.enable()


# What a side may raise and the loop goes on without it: errors, and pytest.fail()
# (need() of a module that does not import), which is not an Exception.
_SIDE_ERRORS = (Exception, pytest.fail.Exception)


def _rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


def _knobs(benchmark: Any) -> dict[str, Any]:
    """The benchmark fixture's settings (its markers and --benchmark-* options applied).

    pytest-benchmark keeps them in private attributes; read here only."""
    try:
        return {
            "timer": benchmark._timer,
            "max_time": float(benchmark._max_time),
            "min_time": float(benchmark._min_time),
            "min_rounds": int(benchmark._min_rounds),
            "disable_gc": bool(benchmark._disable_gc),
        }
    except AttributeError as e:  # a pytest-benchmark whose fixture changed shape
        pytest.fail(f"Interleaved cannot read pytest-benchmark's settings: {e}", pytrace=False)


def _file_rounds(benchmark: Any, iterations: int, durations: list[float]) -> None:
    """File rounds timed elsewhere as this benchmark's own, as its `benchmark(...)` call
    would have (pytest-benchmark has no public call for it: the one it uses inside)."""
    stats = benchmark._make_stats(iterations)
    for d in durations:
        stats.update(d)


# side(role, key, **facts) -> what the rounds of side ``key`` made (see sides)
Side = Callable[..., Any]


def sides(benchmark: Any, tag: Tag, rounds: Interleaved, name: str, **common: Any) -> Side:
    """A workload's test, one per side: ``side(role, key, **facts)`` tags this test as
    ``role`` ("ours" or "peer") of workload ``name`` with the facts every side shares
    (``common``) and its own (``facts``), then runs the rounds and returns what the
    side ``key`` of ``rounds`` made."""

    def side(role: str, key: str, **facts: Any) -> Any:
        tag(benchmark, name, role, **common, **facts)
        return rounds.take(key, benchmark)

    return side


@pytest.fixture(scope="session")
def interleaved() -> type[Interleaved]:
    """The ``Interleaved`` class, as a fixture (for a bench file that does not import it)."""
    return Interleaved


@pytest.fixture(scope="session")
def dialogue_30s() -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """30 s of a two-leg call (speech with pauses, line noise) from callvault.media.sample."""
    sample = need("callvault.media.sample")
    legs: tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]] = sample.dialogue(30.0)
    return legs


@dataclass(frozen=True)
class CallFiles:
    seconds: float
    capture: Path  # both legs as RTP in one pcap
    wavs: tuple[Path, Path]  # the same two legs as 8 kHz mono WAV (for the ffmpeg peer)
    packets: int


@pytest.fixture(scope="session")
def call_files(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> CallFiles:
    """A dual-leg call, made once per session: capture plus the two legs as WAV.

    The legs are sent as `make run`'s demo call sends them (sample.demo_legs)."""
    sample = need("callvault.media.sample")
    wav = need("callvault.media.wav")
    seconds = float(pytestconfig.getoption("--call-seconds"))
    d = tmp_path_factory.mktemp("call")
    legs = sample.demo_legs(seconds)
    capture = d / "call.pcap"
    packets = sample.write_capture(capture, legs)
    wavs = (d / "agent.wav", d / "customer.wav")
    for path, (pcm, _plan) in zip(wavs, legs, strict=True):
        wav.write(path, [pcm])
    return CallFiles(seconds, capture, wavs, packets)


@dataclass(frozen=True)
class OpusLoop:
    """benchmarks/c/opus_loop.c over the system libopus (the Opus benchmarks' peer):
    encodes 20 ms frames of 8 kHz mono PCM in a plain C loop."""

    fn: Callable[..., int]  # cv_bench_encode, through ctypes
    frame: int  # samples per frame
    rate: int  # samples per second

    def encode_into(
        self,
        pcm: npt.NDArray[np.int16],
        s: dict[str, Any],
        out: npt.NDArray[np.uint8],
        lengths: npt.NDArray[np.int32],
    ) -> int:
        """Encode ``pcm`` (frames x ``frame`` samples) with the settings ``s`` (bitrate,
        complexity, dtx, vbr) into ``out``, each frame's length into ``lengths``;
        returns the bytes used (negative: a libopus error)."""
        used: int = self.fn(
            pcm.ctypes.data,
            len(pcm),
            self.frame,
            self.rate,
            s["bitrate"],
            s["complexity"],
            int(s["dtx"]),
            int(s["vbr"]),
            out.ctypes.data,
            len(out),
            lengths.ctypes.data,
        )
        return used


def build_c_peer(directory: Path, source: str, *libs: str) -> ctypes.CDLL:
    """benchmarks/c/``source`` compiled against the system libopus (gcc -O2, shared, plus
    ``libs``) into ``directory`` and loaded; a missing compiler or a build error fails
    the benchmark with the reason."""
    gcc, pkg = shutil.which("gcc"), shutil.which("pkg-config")
    if gcc is None or pkg is None:
        pytest.fail("gcc and pkg-config are needed for the C peer (make sysdeps)", pytrace=False)
    flags = subprocess.run(
        [pkg, "--cflags", "--libs", "opus"], check=True, capture_output=True, text=True
    ).stdout.split()
    out = directory / f"libcv_{Path(source).stem}.so"
    cc = subprocess.run(
        [gcc, "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "c" / source), *flags, *libs],
        capture_output=True,
        text=True,
    )
    if cc.returncode:
        pytest.fail(f"cannot build benchmarks/c/{source}:\n{cc.stderr}", pytrace=False)
    return ctypes.CDLL(str(out))


@pytest.fixture(scope="session")
def opus_c_loop(tmp_path_factory: pytest.TempPathFactory) -> OpusLoop:
    """benchmarks/c/opus_loop.c compiled against the system libopus, as a ctypes function."""
    lib = build_c_peer(tmp_path_factory.mktemp("c"), "opus_loop.c")
    fn = lib.cv_bench_encode
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    fn.restype = ctypes.c_int
    timeline = need("callvault.timeline")
    return OpusLoop(fn, timeline.FRAME_SAMPLES, timeline.SAMPLE_RATE)

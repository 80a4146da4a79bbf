"""Fixtures shared by the benchmarks: sample audio, a 10-minute capture, the C peer.

Benchmark files are named bench_*.py (LevelDB's db_bench style) and collected
by the hook below when pytest is pointed at benchmarks/ (`make bench`).
Every benchmark tags itself with `workload(benchmark, name, side, ...)`;
benchmarks/report.py pairs each "ours" with its peers of the same workload
from the JSON of the same run and writes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import importlib
import shutil
import subprocess
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

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

    The legs are sent as `make run`'s demo call sends them (sample.demo_capture):
    agent PCMU 20 ms, customer PCMA 30 ms with an SSRC change, jitter, two loss
    bursts and two RFC 4733 digits."""
    sample = need("callvault.media.sample")
    wav = need("callvault.media.wav")
    rtppack = need("callvault.media.rtppack")
    seconds = float(pytestconfig.getoption("--call-seconds"))
    d = tmp_path_factory.mktemp("call")
    agent, customer = sample.dialogue(seconds)
    plans = [
        sample.LegPlan(
            law=rtppack.PT_PCMU,
            ptime_ms=20,
            ssrc=0x1A2B3C4D,
            jitter_ms=8,
            loss_bursts=((7.0, 1), (12.5, 4)),
            dtmf=((20.0, "4"), (20.5, "2")),
            src=("10.0.0.1", 40000),
            dst=("10.0.0.2", 50000),
        ),
        sample.LegPlan(
            law=rtppack.PT_PCMA,
            ptime_ms=30,
            ssrc=0x5E6F7081,
            jitter_ms=12,
            loss_bursts=((15.0, 2),),
            ssrc_change_at=18.0,
            start_offset_ms=5,
            src=("10.0.0.2", 50002),
            dst=("10.0.0.1", 40002),
        ),
    ]
    capture = d / "call.pcap"
    packets = sample.write_capture(capture, [(agent, plans[0]), (customer, plans[1])])
    wavs = (d / "agent.wav", d / "customer.wav")
    wav.write(wavs[0], [agent])
    wav.write(wavs[1], [customer])
    return CallFiles(seconds, capture, wavs, packets)


OpusLoop = Callable[..., int]


@pytest.fixture(scope="session")
def opus_c_loop(tmp_path_factory: pytest.TempPathFactory) -> OpusLoop:
    """benchmarks/c/opus_loop.c compiled against the system libopus, as a ctypes function."""
    gcc, pkg = shutil.which("gcc"), shutil.which("pkg-config")
    if gcc is None or pkg is None:
        pytest.fail("gcc and pkg-config are needed for the C peer (make sysdeps)", pytrace=False)
    flags = subprocess.run(
        [pkg, "--cflags", "--libs", "opus"], check=True, capture_output=True, text=True
    ).stdout.split()
    out = tmp_path_factory.mktemp("c") / "libcv_opus_loop.so"
    cc = subprocess.run(
        [gcc, "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "c" / "opus_loop.c"), *flags],
        capture_output=True,
        text=True,
    )
    if cc.returncode:
        pytest.fail(f"cannot build benchmarks/c/opus_loop.c:\n{cc.stderr}", pytrace=False)
    lib = ctypes.CDLL(str(out))
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
    loop: OpusLoop = fn
    return loop

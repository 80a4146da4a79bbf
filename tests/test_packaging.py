"""The wheels install alone: `pip wheel . ./clients/python` in a fresh venv with
nothing from the repository on its path gives a `callvault` that serves, and a
`callvault --server ADDR ls` that answers (README "Installing from wheels")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from callvault.media import sample
from callvault.vault import Vault
from tests.servers import Proc, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put the repository on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheels")
    wheels = tmp / "wheels"
    # the engine's wheel compiles ext/ (Cython, libopus); both built in one command,
    # as README says, so that pip finds callvault-client beside callvault
    p = subprocess.run(
        [str(VENV_BIN / "pip"), "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(ROOT), str(ROOT / "clients" / "python"), "-w", str(wheels)],
        capture_output=True, text=True, timeout=900, cwd=tmp, env=_clean_env(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    built = sorted(w.name.split("-")[0] for w in wheels.glob("*.whl"))
    assert built == ["callvault", "callvault_client"]
    venv = tmp / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=300)
    p = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *map(str, wheels.glob("*.whl"))],
        capture_output=True, text=True, timeout=900, cwd=tmp, env=_clean_env(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return venv


@pytest.fixture(scope="module")
def served(wheel_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("wheel-server")
    sample.demo_capture(tmp / "call.pcap", seconds=2.0)
    with Vault.open(tmp / "data") as v:
        v.import_call("w1", [str(tmp / "call.pcap")], agent="ann")
    s = start_server(
        tmp / "data",
        cli=(str(wheel_venv / "bin" / "callvault"),),
        env={"PYTHONPATH": ""},
    )
    yield s
    assert s.stop() == 0


def test_installed_package_is_not_the_repository(wheel_venv: Path, tmp_path: Path) -> None:
    p = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c",
         "import callvault, callvault._opus, callvault.server.app, callvault.sidecar, "
         "callvault.cli, callvault_client._pb, json; "
         "print(json.dumps([callvault.__file__, callvault._opus.__file__]))"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_clean_env(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    init, opus = json.loads(p.stdout)
    assert "site-packages" in init and not init.startswith(str(ROOT))
    assert opus.endswith(".so") and "site-packages" in opus


def test_wheel_serves_and_answers_ls(wheel_venv: Path, served: Proc, tmp_path: Path) -> None:
    p = subprocess.run(
        [str(wheel_venv / "bin" / "callvault"), "--server", served.address, "ls", "--json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_clean_env(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    calls = json.loads(p.stdout)
    assert [c["call_id"] for c in calls] == ["w1"]


def test_build_tools_and_scipy_are_not_runtime_dependencies(
    wheel_venv: Path, tmp_path: Path
) -> None:
    """grpcio-tools only generates the stubs at build time, and scipy gave way to soxr
    for the WAV resampler: installing the wheels pulls in neither, and a 44.1 kHz
    WAV is still read as 8 kHz."""
    script = (
        "import importlib.util, json, wave, numpy as np\n"
        "from callvault.media import wav\n"
        "with wave.open('in.wav', 'wb') as w:\n"
        "    w.setnchannels(1); w.setsampwidth(2); w.setframerate(44100)\n"
        "    t = np.arange(44100) / 44100\n"
        "    w.writeframes((8000 * np.sin(2 * np.pi * 440 * t)).astype('<i2').tobytes())\n"
        "pcm = wav.read_mono('in.wav')\n"
        "peak = int(np.argmax(np.abs(np.fft.rfft(pcm.astype(float)))))\n"
        "print(json.dumps({'n': len(pcm), 'peak_hz': peak * 8000 / len(pcm),\n"
        "    'found': [m for m in ('grpc_tools', 'scipy') if importlib.util.find_spec(m)]}))\n"
    )
    p = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", script],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_clean_env(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["found"] == []
    assert out["n"] == 8000 and abs(out["peak_hz"] - 440) < 2

"""The SDK installs alone: a wheel of clients/python in a fresh venv (grpcio and
protobuf pulled by pip, no numpy, no Cython, no callvault) talks to a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from callvault.media import sample
from callvault.media.ogg import OggOpusReader
from callvault.vault import Vault
from tests.servers import Proc, start_server

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH: the fresh venv must use what it installed,
    not the repository's sources a developer's PYTHONPATH points at."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


SCRIPT = r"""
import json, struct, sys
from datetime import datetime, timezone
from callvault_client import Client, errors, pb

address, out = sys.argv[1], sys.argv[2]
with Client(address) as c:
    stats = c.stats()
    calls = [i.call_id for i in c.search(agent="ann")]
    size = c.export("c1", out)
    try:
        c.get_call("missing")
        not_found = False
    except errors.NotFound:
        not_found = True
    # one second of mu-law silence per leg, 20 ms packets arriving on time
    rec = c.record("fresh-1", ("agent", "customer"), start_us=1_800_000_000_000_000)
    for leg in (0, 1):
        pkts = [struct.pack("!BBHII", 0x80, 0, i, 160 * i, 0x100 + leg) + b"\xff" * 160
                for i in range(50)]
        rec.send(leg, b"".join(pkts), [len(p) for p in pkts],
                 [1_800_000_000_000_000 + 20_000 * (i + 1) for i in range(50)])
    sealed = rec.end(timeout=120)
    verified = [r.ok for r in c.verify(["fresh-1"])]
    since = datetime(2020, 1, 1, tzinfo=timezone.utc)
    newest = [(i.call_id, pb.CallState.Name(i.call_state))
              for i in c.search_all(since=since, order="newest", page_size=1)]
print(json.dumps({"calls": stats.calls, "ann": calls, "size": size, "not_found": not_found,
                  "frames": sealed.frames, "verified": verified, "newest": newest,
                  "modules": sorted(m for m in ("numpy", "Cython", "callvault")
                                    if m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the callvault-client wheel (and what pip pulls for it)."""
    tmp = tmp_path_factory.mktemp("sdk-install")
    wheels = tmp / "wheels"
    subprocess.run(
        [
            str(VENV_BIN / "pip"),
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT / "clients" / "python"),
            "-w",
            str(wheels),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("callvault_client-*.whl")
    venv = tmp / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=300)
    p = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
    )
    assert p.returncode == 0, p.stderr
    return venv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("sdk-install-server")
    sample.demo_capture(tmp / "call.pcap", seconds=3.0)
    with Vault.open(tmp / "data") as v:
        v.import_call("c1", [str(tmp / "call.pcap")], agent="ann")
    s = start_server(tmp / "data")
    yield s
    s.stop()


def test_fresh_venv_has_only_grpcio_and_protobuf(fresh_venv: Path) -> None:
    p = subprocess.run(
        [
            str(fresh_venv / "bin" / "python"),
            "-c",
            "import importlib.util as u, json; print(json.dumps([n for n in "
            "('numpy', 'Cython', 'callvault', 'grpc', 'google.protobuf', "
            "'callvault_client') if u.find_spec(n)]))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_clean_env(),
    )
    assert json.loads(p.stdout) == ["grpc", "google.protobuf", "callvault_client"]


def test_fresh_venv_client_against_real_server(
    fresh_venv: Path, server: Proc, tmp_path: Path
) -> None:
    out = tmp_path / "c1.ogg"
    p = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", SCRIPT, server.address, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["calls"] == 1 and r["ann"] == ["c1"] and r["not_found"]
    assert r["size"] == out.stat().st_size and r["modules"] == []
    assert r["frames"] == 50 and r["verified"] == [True]
    # pages of one call, newest first: fresh-1 (2027) before c1 (the demo capture's date)
    assert r["newest"] == [["fresh-1", "CALL_STATE_SEALED"], ["c1", "CALL_STATE_SEALED"]]
    ogg = OggOpusReader(out)
    assert ogg.channels == 2 and 2.9 < ogg.duration < 3.1

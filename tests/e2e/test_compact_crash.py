"""Compaction cut by SIGKILL at each of its steps, in a real child process: the call is
then either raw or compacted, never neither, never a half; it verifies, exports the
same audio, and a later compaction completes it (docs/format.md 8.10)."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callvault.media import ogg
from callvault.media.pipeline import Settings
from callvault.vault import Vault
from callvault.vault.compact import compact_call
from tests.rtpfeed import write_two_law_capture

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_law_capture(tmp_path_factory.mktemp("cap") / "call.pcap", 4.0)


def _child(data: Path, call_id: str, step: str, n: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.e2e.compact_child", str(data), call_id, step, str(n)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=os.environ.copy(),
    )


def _packets(path: Path) -> tuple[bytes, list[int]]:
    data, lengths = ogg.OggOpusReader(io.BytesIO(path.read_bytes())).packets_data()
    return bytes(data), list(lengths)


@pytest.mark.parametrize(
    ("step", "n", "compacted"),
    [
        ("encoded", 1, False),
        ("opus-record", 1, False),
        ("opus-record", 5, False),
        ("opus-written", 1, False),
        ("transcode-written", 1, True),
    ],
)
def test_sigkill_at_each_step(
    tmp_path: Path, capture: Path, step: str, n: int, compacted: bool
) -> None:
    data = tmp_path / "data"
    v = Vault.open(data)
    v.import_call("r", [str(capture)], settings=Settings(store_codec="g711"))
    before = v.get_call("r")
    v.export("r", tmp_path / "before.ogg")
    v.export("r", tmp_path / "before.wav")
    v.close()
    p = _child(data, "r", step, n)
    assert p.returncode == -signal.SIGKILL, p.stderr
    v = Vault.open(data)  # recovery runs
    e = v.get_call("r")
    assert e.storage == ("compacted" if compacted else "raw")
    assert v.verify_call("r") == []
    assert (e.seal, e.records, e.chain_head) == (before.seal, before.records, before.chain_head)
    v.export("r", tmp_path / "after.ogg")
    assert _packets(tmp_path / "after.ogg") == _packets(tmp_path / "before.ogg")
    if not compacted:
        v.export("r", tmp_path / "after.wav")
        assert (tmp_path / "after.wav").read_bytes() == (tmp_path / "before.wav").read_bytes()
        compact_call(v, "r")  # a later compaction completes it
    e = v.get_call("r")
    assert e.storage == "compacted" and v.verify_call("r") == []
    first = min(i for i, _ in v.index.records("default", "r"))
    assert first >= before.records  # no raw record referenced any more
    v.export("r", tmp_path / "final.ogg")
    assert _packets(tmp_path / "final.ogg") == _packets(tmp_path / "before.ogg")
    entry = v.get_call("r")
    v.close()
    v = Vault.open(data, rebuild_index=True)  # reindex arrives at the same index
    assert v.get_call("r") == entry
    v.close()


def test_sigkill_at_random_times_during_cli_compact(tmp_path: Path, capture: Path) -> None:
    """`callvault compact` over several calls, killed at random moments, then run
    again until it finishes: every call ends compacted and verified."""
    data = tmp_path / "data"
    v = Vault.open(data)
    for i in range(4):
        v.import_call(f"r{i}", [str(capture)], settings=Settings(store_codec="g711"))
    v.close()
    rng = random.Random(7)
    argv = [sys.executable, "-m", "callvault.cli", "--data", str(data), "compact", "--workers", "1"]
    for _ in range(4):
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        v = Vault.open(data)
        for i in range(4):
            assert v.get_call(f"r{i}").storage in ("raw", "compacted")
            assert v.verify_call(f"r{i}") == []
        v.close()
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    v = Vault.open(data)
    assert all(v.get_call(f"r{i}").storage == "compacted" for i in range(4))
    assert all(v.verify_call(f"r{i}") == [] for i in range(4))
    v.close()

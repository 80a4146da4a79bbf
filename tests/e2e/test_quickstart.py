"""The README's first minute: `make run`'s demo, the server, scripts/first-call.sh."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

from tests.servers import CLI, run_cli, start_server

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_first_call_script_records_lists_exports_and_verifies(tmp_path: Path) -> None:
    demo = subprocess.run(
        [*CLI, "demo", "--data", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert demo.returncode == 0, demo.stderr
    assert "scripts/first-call.sh" in demo.stdout
    srv = start_server(tmp_path / "vault")
    try:
        env = {
            **os.environ,
            "SERVER": srv.address,
            "SIDECAR": f"127.0.0.1:{free_port()}",
            "DATA": str(tmp_path),
            "CALL": "first",
            "RTP": "127.0.0.1:41000-41099",
            "PATH": f"{Path(CLI[0]).parent}:{os.environ['PATH']}",
            "CV": str(Path(CLI[0]).parent / "callvault"),  # this interpreter's entry point
        }
        p = subprocess.run(
            [str(ROOT / "scripts" / "first-call.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        assert "OK: 1 call(s) verified" in p.stdout
        assert "stream|channels=2" in p.stdout
        assert (tmp_path / "first.ogg").stat().st_size > 10_000
        # the script's ffplay line names the file it wrote (no glob, the same every run)
        assert f"ffplay -nodisp -autoexit {tmp_path}/first.ogg" in p.stdout
        # ffmpeg sent 20 ms packets as a PBX does: one packet per 20 ms frame, PCMU
        info = json.loads(run_cli("--server", srv.address, "info", "first", "--json").stdout)
        for leg in info["legs_detail"]:
            rtp = leg["rtp"]
            assert rtp["audio_packets"] > 900, rtp  # about 20 s
            assert rtp["audio_frames"] == rtp["audio_packets"], rtp
    finally:
        srv.stop()


def test_readme_quickstart_matches_the_script() -> None:
    """The README's first minute says what scripts/first-call.sh does: 20 ms PCMU
    packets from ffmpeg, and an ffplay line that names one file (run twice, a glob
    would match several)."""
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## A first recording") : readme.index("## Over the network")]
    script = (ROOT / "scripts" / "first-call.sh").read_text()
    rtp_out = "-af asetnsamples=160 -c:a pcm_mulaw -payload_type 0 -pkt_size 172 -f rtp"
    assert rtp_out in quick and rtp_out in script
    ffmpeg_lines = [x for x in quick.splitlines() if x.startswith("ffmpeg ")]
    assert len(ffmpeg_lines) == 2 and all("$RTP_OUT" in x for x in ffmpeg_lines)
    (play,) = [x for x in quick.splitlines() if x.startswith("ffplay ")]
    target = re.search(r"ffplay -nodisp -autoexit (\S+)", play)
    assert target is not None and "*" not in target[1]
    assert target[1] == ".data/first.ogg" and '-o "$DATA/first.ogg"' in script

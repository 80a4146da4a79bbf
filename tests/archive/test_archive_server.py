"""The archive on a real server (`callvault serve --config` with [archive]) against a
real SeaweedFS: Lifecycle.ArchiveRun through the CLI, Admin.Stats 80-84, CallInfo
55-58, and Play/Export of an evicted call fetched from the bucket; a bad [archive]
section stops the server at start with the reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from callvault_client import Client

from callvault.media import sample
from callvault.vault import Vault
from tests.servers import CLI, run_cli, start_server


def _config(path: Path, settings: dict[str, Any], **top: Any) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()] + ["[archive]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_server_archive_run_stats_and_reads(
    tmp_path: Path, archive_settings: dict[str, Any]
) -> None:
    data = tmp_path / "data"
    sample.demo_capture(tmp_path / "call.pcap", seconds=2.0)
    with Vault.open(data) as v:
        for call_id in ("s0", "s1"):
            v.import_call(call_id, [str(tmp_path / "call.pcap")])
        before = v.read_packets("s0")
    cfg = _config(tmp_path / "serve.toml", {**archive_settings, "interval_s": 0})
    srv = start_server(data, args=("--config", str(cfg)))
    try:
        with Client(srv.address) as c:
            st = c.stats()
            assert st.archive_due_calls == 2 and st.archived_calls == 0
            out = run_cli("--server", srv.address, "archive", "run", "--json").stdout
            report = json.loads(out)
            assert len(report["archived"]) == 2 and len(report["evicted"]) == 2, report
            info = c.get_call("s0")
            assert info.evicted and info.archive_object.startswith(
                "s3://" + archive_settings["bucket"]
            )
            assert info.archive_lock_mode == "NONE" and info.archive_version
            # Play and Export of an evicted call: fetched from the bucket, verified
            played = run_cli(
                "--server", srv.address, "export", "s0", "-o", str(tmp_path / "s0.ogg")
            )
            assert played.returncode == 0 and (tmp_path / "s0.ogg").stat().st_size > 1000
            run_cli("--server", srv.address, "verify", "s0", "s1")
            pcm = tmp_path / "s1.wav"
            run_cli("--server", srv.address, "play", "s1", "-o", str(pcm))
            assert pcm.stat().st_size > 8000 * 2 * 2  # > 1 s of 16-bit stereo at 8 kHz (WAV)
            st = c.stats()
            assert (st.archived_calls, st.evicted_calls, st.archive_due_calls) == (2, 2, 0)
            assert st.archive_bytes > 0 and st.archive_error == ""
    finally:
        srv.stop()
    with Vault.open(data) as v:  # the server's runs left the calls evicted and archived
        from callvault.lifecycle import archive as arch

        arch.Archive.from_settings(v, archive_settings).attach()
        got = v.read_packets("s0")
        assert [g[0] for g in got] == [b[0] for b in before]


def test_a_bad_archive_section_stops_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("--data", str(data), "init")
    cfg = _config(tmp_path / "bad.toml", {"bucket": "abc", "after": "later"})
    p = subprocess.run(
        [*CLI, "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0 and "[archive] after" in p.stderr


def test_archive_run_without_an_archive_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("--data", str(data), "init")
    srv = start_server(data)
    try:
        p = run_cli("--server", srv.address, "archive", "run", ok=False)
        assert p.returncode != 0 and "no archive" in p.stderr
    finally:
        srv.stop()

"""The archive through the real `callvault` command line, against a real SeaweedFS:
SIGKILL in the middle of `archive run` (after the PUT, before the lifecycle record;
after the record, before the eviction) loses no call and leaves none evicted but
unarchived; then play/export/verify of evicted calls and `reindex --from-archive`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from callvault.media import sample
from callvault.media.ogg import OggOpusReader
from callvault.vault import Vault
from tests.servers import CLI, run_cli

CALLS = ("c0", "c1", "c2")


def _config(path: Path, settings: dict[str, Any]) -> Path:
    lines = ["[archive]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _killed(data: Path, config: Path, step: str) -> None:
    env = {**os.environ, "CALLVAULT_TENANT_CRASH": step}
    p = subprocess.run(
        [*CLI, "--data", str(data), "archive", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == -9, (p.returncode, p.stderr)


def _state(data: Path, settings: dict[str, Any]) -> dict[str, tuple[bool, bool]]:
    """Per call: (archived, local); every call verifies from wherever its audio is."""
    with Vault.open(data) as v:
        from callvault.lifecycle import archive as arch

        arch.Archive.from_settings(v, settings).attach()
        out = {}
        for c in CALLS:
            e = v.get_call(c)
            assert e.state == "sealed"
            assert v.verify_call(c) == [], c
            out[c] = (e.archive is not None, e.local)
    return out


def test_sigkill_during_archive_run_then_reads_and_rebuild(
    tmp_path: Path, archive_settings: dict[str, Any]
) -> None:
    data = tmp_path / "data"
    sample.demo_capture(tmp_path / "call.pcap", seconds=2.0)
    with Vault.open(data) as v:
        for c in CALLS:
            v.import_call(c, [str(tmp_path / "call.pcap")], customer_number="+15550001")
        before = {c: v.read_packets(c) for c in CALLS}
    config = _config(tmp_path / "callvault.toml", archive_settings)

    # killed after the first object is in S3, before its lifecycle record
    _killed(data, config, "archive-put")
    assert _state(data, archive_settings) == {c: (False, True) for c in CALLS}
    # killed after the first call's record, before any eviction
    _killed(data, config, "archive-recorded")
    st = _state(data, archive_settings)
    assert sum(a for a, _ in st.values()) == 1 and all(local for _, local in st.values())
    # a whole run: every call archived and evicted; the earlier orphan version stays
    p = run_cli("--data", str(data), "archive", "run", "--config", str(config), "--json")
    report = json.loads(p.stdout)
    assert len(report["archived"]) == 2 and len(report["evicted"]) == 3, report
    assert _state(data, archive_settings) == {c: (True, False) for c in CALLS}
    assert not any(
        not local and not archived for archived, local in _state(data, archive_settings).values()
    )

    # the local verbs read evicted calls from the archive once it is configured
    ls = run_cli("--data", str(data), "verify", "c0", ok=False)
    assert ls.returncode != 0 and "in the archive" in ls.stdout + ls.stderr
    run_cli("--data", str(data), "archive", "configure", "--config", str(config))
    run_cli("--data", str(data), "verify", "--all")
    run_cli("--data", str(data), "export", "c1", "-o", str(tmp_path / "c1.ogg"))
    assert 1.9 < OggOpusReader(tmp_path / "c1.ogg").duration < 2.2
    st_out = run_cli("--data", str(data), "archive", "status", "--json").stdout
    status = json.loads(st_out)
    assert status["archived_calls"] == 3 and status["evicted_calls"] == 3
    rows = [
        json.loads(x)
        for x in run_cli("--data", str(data), "archive", "ls", "--json").stdout.splitlines()
    ]
    assert sorted(r["call_id"] for r in rows) == list(CALLS)
    assert all(
        r["evicted"] and r["mode"] == "NONE" and r["object"].startswith("s3://") for r in rows
    )
    assert "evicted" in run_cli("--data", str(data), "archive", "ls").stdout

    # the catalog rebuilt from the bucket into an empty directory
    key = tmp_path / "kek"
    shutil.copy(data / "keys" / "kek", key)
    new = tmp_path / "rebuilt"
    r = run_cli(
        "--data", str(new), "--key-file", str(key), "reindex", "--from-archive", str(config)
    )
    assert "3 call(s)" in r.stdout
    run_cli("--data", str(new), "--key-file", str(key), "verify", "--all")
    with Vault.open(new, key_file=key) as v:
        from callvault.lifecycle import archive as arch

        arch.attach_stored(v)
        for c in CALLS:
            got_packets = v.read_packets(c)
            for leg, (data_b, lens) in enumerate(before[c]):
                assert got_packets[leg][0] == data_b
                assert list(got_packets[leg][1]) == list(lens)
    # without the key file the bucket is of no use
    other = tmp_path / "other"
    bad = run_cli("--data", str(other), "reindex", "--from-archive", str(config), ok=False)
    assert bad.returncode != 0 and "--key-file" in bad.stderr


@pytest.mark.parametrize("bad", ['after = "soon"', 'colour = "red"'])
def test_a_bad_archive_section_is_refused(tmp_path: Path, bad: str) -> None:
    data = tmp_path / "data"
    run_cli("--data", str(data), "init")
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[archive]\nbucket = "abc"\n{bad}\n')
    p = run_cli("--data", str(data), "archive", "configure", "--config", str(cfg), ok=False)
    assert p.returncode != 0 and "[archive]" in p.stderr
    assert not (data / "archive.toml").exists()


@pytest.mark.skipif(shutil.which("faketime") is None, reason="Debian's faketime not installed")
def test_a_clock_far_from_the_s3_servers_is_told_and_changes_nothing(
    tmp_path: Path, archive_settings: dict[str, Any]
) -> None:
    """`faketime` 31 days ahead (past `after`): the calls are due, but S3 refuses
    requests signed with a clock that far off; the run says why and every call stays
    local, not archived."""
    data = tmp_path / "data"
    sample.demo_capture(tmp_path / "call.pcap", seconds=1.0)
    with Vault.open(data) as v:
        v.import_call("c0", [str(tmp_path / "call.pcap")])
        # the sample's capture times are in the past: `after` set a day past its age
        age_days = (v.clock() - v.get_call("c0").end_us) // (86400 * 10**6)
    config = _config(tmp_path / "a.toml", {**archive_settings, "after": f"{age_days + 1}d"})
    now = run_cli("--data", str(data), "archive", "run", "--config", str(config), "--json")
    assert json.loads(now.stdout)["archived"] == []  # not due yet
    p = subprocess.run(
        [
            "faketime",
            "-f",
            "+31d",
            *CLI,
            "--data",
            str(data),
            "archive",
            "run",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 1 and "clock" in p.stderr, p.stderr
    with Vault.open(data) as v:
        e = v.get_call("c0")
        assert e.local and e.archive is None and v.verify_call("c0") == []

"""The command line as people expect it from git, ffmpeg and sox (issue 9, section 3):
each behaviour through the real `callvault` binary, on a real vault and a real server."""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from callvault.cli import build_parser
from callvault.cli.common import leg_lines, offset_seconds, when_us
from callvault.media.ogg import OggOpusReader, identity_comments
from tests.servers import CLI, Proc, run_cli, start_server

SAMPLE_START_US = 1_699_999_999_985_636  # `callvault sample`'s first captured sample


def cv(data: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("--data", str(data), *args, ok=ok)


def cv_bytes(
    *args: str, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """`callvault ARGS` with binary stdout (or stdout on the descriptor given)."""
    return subprocess.run([*CLI, *args], stdout=stdout, stderr=subprocess.PIPE, timeout=300)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cap = tmp_path_factory.mktemp("cap") / "call.pcap"
    run_cli("sample", "-o", str(cap), "--seconds", "4")
    return cap


@pytest.fixture(scope="module")
def vault_dir(tmp_path_factory: pytest.TempPathFactory, capture: Path) -> Path:
    data = tmp_path_factory.mktemp("vault") / "data"
    cv(
        data,
        "import",
        "--call-id",
        "c1",
        "--meta",
        "agent=alice",
        "--meta",
        "tags=vip,billing",
        "--meta",
        "queue=7",
        "--meta",
        "customer_number=+15551234567",
        str(capture),
    )
    return data


# -- 1. only init, import and serve make a vault --------------------------------------


@pytest.mark.parametrize(
    "verb",
    [["ls"], ["info", "c1"], ["export", "c1", "-o", "x.ogg"], ["verify", "--all"], ["stats"]],
)
def test_other_verbs_never_create_a_vault(tmp_path: Path, verb: list[str]) -> None:
    typo = tmp_path / "typo"
    p = cv(typo, *verb, ok=False)
    assert p.returncode == 1 and f"no vault at {typo}" in p.stderr, p.stderr
    assert not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    p = cv(empty, *verb, ok=False)
    assert p.returncode == 1 and f"no vault at {empty}" in p.stderr, p.stderr
    assert list(empty.iterdir()) == []


def test_init_makes_an_empty_vault_once(tmp_path: Path) -> None:
    data = tmp_path / "new"
    assert "initialised an empty vault" in cv(data, "init").stdout
    assert cv(data, "ls").stdout == ""
    assert "already" in cv(data, "init").stdout
    assert "calls: 0" in cv(data, "stats").stdout


# -- 3. output hygiene ------------------------------------------------------------------


@pytest.mark.parametrize("verb", [["info", "c1"], ["ls", "--json"], ["export", "c1", "-o", "-"]])
def test_a_closed_pipe_ends_quietly(vault_dir: Path, verb: list[str]) -> None:
    """`callvault info c1 | head`: the reader has gone; no traceback, exit as git's."""
    proc = subprocess.Popen(
        [*CLI, "--data", str(vault_dir), *verb], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the process writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert err == ""


def test_export_into_a_missing_folder_names_the_folder(vault_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "nope" / "c1.ogg"
    p = cv(vault_dir, "export", "c1", "-o", str(out), ok=False)
    assert p.returncode == 1
    assert p.stderr == f"callvault: error: cannot write {out}: folder {out.parent} does not exist\n"
    p = run_cli("transcode", "x.pcap", "-o", str(out), ok=False)
    assert "x.pcap" in p.stderr or f"folder {out.parent} does not exist" in p.stderr
    p = cv(vault_dir, "play", "c1", "-o", str(out.with_suffix(".wav")), ok=False)
    assert f"folder {out.parent} does not exist" in p.stderr
    p = run_cli("sample", "-o", str(out.with_suffix(".pcap")), ok=False)
    assert p.returncode == 1 and f"folder {out.parent} does not exist" in p.stderr
    p = cv(vault_dir, "bundle", "c1", "-o", str(out.with_suffix(".bundle")), ok=False)
    assert p.returncode == 1 and f"folder {out.parent} does not exist" in p.stderr


def test_a_missing_tls_file_is_our_sentence(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    p = run_cli("--server", "127.0.0.1:1", "--tls-ca", str(ca), "ls", ok=False)
    assert p.returncode == 1
    assert p.stderr == f"callvault: error: cannot use {ca}: No such file or directory\n"


def test_inputs_that_are_not_captures_say_so_first(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    p = run_cli("transcode", str(text), "-o", str(tmp_path / "o.ogg"), ok=False)
    assert p.returncode == 1
    assert p.stderr.startswith(f"callvault: error: {text} is not a pcap or pcapng capture")
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    p = run_cli("transcode", str(wav), "-o", str(tmp_path / "o.ogg"), ok=False)
    assert p.returncode == 1 and f"LEG=FILE.wav (e.g. agent={wav})" in p.stderr
    p = run_cli("--data", str(tmp_path / "v"), "import", "--call-id", "w", str(wav), ok=False)
    assert p.returncode == 1 and "LEG=FILE.wav" in p.stderr


# -- 4. times ---------------------------------------------------------------------------


def test_offsets_and_times_parse() -> None:
    assert offset_seconds("75.5") == 75.5
    assert offset_seconds("1:15.5") == 75.5
    assert offset_seconds("00:01:15.500") == 75.5
    assert offset_seconds("2:00:00") == 7200
    for bad in ("1:75", "-3", "abc", "1:2:3:4", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            offset_seconds(bad)
    now = 1_800_000_000.0
    assert when_us("1h", now=now) == int((now - 3600) * 1e6)
    assert when_us("7d", now=now) == int((now - 7 * 86400) * 1e6)
    assert when_us("90m", now=now) == int((now - 5400) * 1e6)
    assert when_us("2026-11-29T10:00:00Z") == when_us("2026-11-29T11:00:00+01:00")
    assert when_us("2026-11-29") == when_us("1795910400")
    for bad in ("yesterday", "1y", "99999999999999999999", "10:00"):
        with pytest.raises(argparse.ArgumentTypeError):
            when_us(bad)


def test_time_options_through_the_binary(vault_dir: Path, tmp_path: Path) -> None:
    def ls(*args: str) -> list[str]:
        return [c["call_id"] for c in json.loads(cv(vault_dir, "ls", "--json", *args).stdout)]

    assert ls("--since", "1h") == []  # the sample call happened in 2023
    assert ls("--since", "100000d") == ["c1"]
    assert ls("--since", "2023-11-14", "--until", "2023-11-14T23:00:00Z") == ["c1"]
    assert ls("--until", "2023-11-14T22:00:00Z") == []
    p = cv(vault_dir, "ls", "--since", "yesterday", ok=False)
    assert p.returncode == 2 and "ISO 8601" in p.stderr and "7d" in p.stderr
    a, b = tmp_path / "a.ogg", tmp_path / "b.ogg"
    cv(vault_dir, "export", "c1", "-o", str(a), "--from", "0:01.5", "--to", "00:00:03.000")
    cv(vault_dir, "export", "c1", "-o", str(b), "--from", "1.5", "--to", "3")
    assert OggOpusReader(a).duration == OggOpusReader(b).duration == pytest.approx(1.5)
    p = cv(vault_dir, "export", "c1", "-o", str(a), "--from", "0:61", ok=False)
    assert p.returncode == 2 and "0 to 59" in p.stderr
    help_text = run_cli("ls", "--help").stdout + run_cli("export", "--help").stdout
    assert "ISO 8601" in help_text and "[hh:]mm:ss" in help_text


# -- 5. stdout and identity ---------------------------------------------------------------


def _identity(path: Path) -> dict[str, str]:
    c = OggOpusReader(path).comments
    return {k: v for k, v in c.items() if not k.startswith("CALLVAULT_CHANNEL")}


def test_export_to_stdout_and_identity(vault_dir: Path, tmp_path: Path) -> None:
    p = cv_bytes("--data", str(vault_dir), "export", "c1", "-o", "-")
    assert p.returncode == 0 and p.stdout[:4] == b"OggS", p.stderr
    ogg = tmp_path / "out.ogg"
    ogg.write_bytes(p.stdout)
    expected = dict(x.split("=", 1) for x in identity_comments("c1", "default", SAMPLE_START_US))
    assert _identity(ogg) == expected
    assert expected["CALLVAULT_CALL_ID"] == "c1" and expected["DATE"].startswith("2023-11-14T")
    assert "alice" not in ogg.read_bytes().decode("latin-1")  # no metadata beyond identity
    p = cv_bytes("--data", str(vault_dir), "export", "c1", "-o", "-", "--format", "wav")
    assert p.returncode == 0 and p.stdout[:4] == b"RIFF" and p.stdout[8:12] == b"WAVE"
    cv(vault_dir, "export", "c1", "-o", str(tmp_path / "f.ogg"))
    assert _identity(tmp_path / "f.ogg") == expected
    assert "+1555" not in (tmp_path / "f.ogg").read_bytes().decode("latin-1")
    cv(vault_dir, "export", "c1", "-o", str(tmp_path / "m.ogg"), "--with-metadata")
    assert _identity(tmp_path / "m.ogg") == {
        **expected,
        "CALLVAULT_AGENT": "alice",
        "CALLVAULT_TAGS": "vip,billing",
        "CALLVAULT_EXTRA_QUEUE": "7",
    }
    cv(vault_dir, "export", "c1", "-o", str(tmp_path / "n.ogg"), "--with-customer-number")
    assert _identity(tmp_path / "n.ogg") == {
        **expected,
        "CALLVAULT_CUSTOMER_NUMBER": "+15551234567",
    }


@pytest.mark.parametrize("verb", [["play", "c1"], ["export", "c1", "-o", "-"]])
def test_binary_never_goes_to_a_terminal(vault_dir: Path, verb: list[str]) -> None:
    master, slave = pty.openpty()
    try:
        p = cv_bytes("--data", str(vault_dir), *verb, stdout=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 1 and b"stdout is a terminal" in p.stderr


# -- 6. help and stats -------------------------------------------------------------------


def _parsers(
    p: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _parsers(sp, f"{path} {name}")


def test_every_option_has_help_and_every_verb_a_description() -> None:
    missing = []
    for path, p in _parsers(build_parser(), "callvault"):
        if not p.description:
            missing.append(f"{path}: no description")
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for choice in a._choices_actions:
                    if not choice.help:
                        missing.append(f"{path} {choice.dest}: no help line")
            elif not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(a.option_strings) or a.dest}: no help")
    assert missing == []
    assert "init" in run_cli("--help").stdout and "stats" in run_cli("--help").stdout


def test_stats_local(vault_dir: Path) -> None:
    doc = json.loads(cv(vault_dir, "stats", "--json").stdout)
    assert doc["calls"] == 1 and doc["log_size"] == 1 and doc["stored_bytes"] > 0
    assert "calls: 1" in cv(vault_dir, "stats").stdout


# -- 7, 8. metadata and info ---------------------------------------------------------------


def test_meta_extra_and_info_printing(vault_dir: Path) -> None:
    doc = json.loads(cv(vault_dir, "info", "c1", "--json").stdout)
    assert doc["extra"] == {"queue": "7"} and doc["tags"] == ["vip", "billing"]
    (call,) = json.loads(cv(vault_dir, "ls", "--json").stdout)
    assert call["extra"] == {"queue": "7"} and call["agent"] == "alice"
    text = cv(vault_dir, "info", "c1").stdout
    assert "tags: vip, billing\n" in text and "extra: queue=7\n" in text
    assert "legs: agent, customer\n" in text
    assert "direction" not in text and "skill_group" not in text  # empty: not printed
    assert "customer_number: +15551234567\n" in text


def test_info_prints_dtmf_events_with_times(tmp_path: Path) -> None:
    cap = tmp_path / "call.pcap"
    run_cli("sample", "-o", str(cap))  # 30 s with two RFC 4733 digits
    data = tmp_path / "v"
    cv(data, "import", "--call-id", "d1", "--keep-digits", str(cap))  # digits: PCI opt-in
    legs = json.loads(cv(data, "info", "d1", "--json").stdout)["legs_detail"]
    events = [e for leg in legs for e in leg["telephone_events"]]
    assert len(events) >= 2
    text = cv(data, "info", "d1").stdout
    for e in events:
        assert f"{e['digit']} at " in text
    assert "DTMF " + "".join(e["digit"] for e in events) not in text  # not run together


def test_leg_lines_name_gap_reasons_and_unsupported_codecs() -> None:
    leg = {
        "leg": "customer",
        "frames": 500,
        "lost": 10,
        "gaps": [
            {"start_frame": 50, "frames": 10, "reason": "lost"},
            {"start_frame": 100, "frames": 150, "reason": "unsupported_codec", "payload_type": 9},
        ],
        "unsupported_codec": {"frames": 150, "packets": 150, "payload_types": [9]},
        "telephone_events": [{"digit": "5", "start_ms": 61_250, "duration_ms": 120}],
        "dtmf": [{"digit": "1", "start_ms": 3_000, "duration_ms": 80}],
        "rtp": {"timestamp_jump": 3, "event_span": 0, "malformed": 2},
    }
    lines = leg_lines(leg)
    assert lines[0] == "  customer: 500 frames, lost 10"
    assert any("UNSUPPORTED CODEC: 150 frames" in x and "payload type 9" in x for x in lines)
    assert "    gap 0:01.000-0:01.200 (10 frames): lost" in lines
    assert "    gap 0:02.000-0:05.000 (150 frames): UNSUPPORTED CODEC (payload type 9)" in lines
    assert "    packets dropped: 3 timestamp jumps, 2 malformed" in lines
    assert lines[-1] == "    DTMF 1 at 0:03.000 (80 ms), 5 at 1:01.250 (120 ms)"
    quiet = leg_lines({"leg": "agent", "frames": 5, "lost": 0, "gaps": [], "rtp": {}})
    assert quiet == ["  agent: 5 frames, lost 0"]


# -- 2. and the same through a server ------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, capture: Path) -> Iterator[Proc]:
    data = tmp_path_factory.mktemp("srv") / "data"
    cv(data, "import", "--call-id", "s1", "--meta", "queue=9", str(capture))
    srv = start_server(data)
    try:
        yield srv
    finally:
        srv.stop()


def test_local_verbs_name_the_running_server(server: Proc) -> None:
    assert server.data is not None
    # the verbs that only read open the vault read-only beside the server
    assert "s1" in cv(server.data, "ls").stdout
    assert "s1" in cv(server.data, "info", "s1").stdout
    for verb in (["stats"], ["erase", "s1", "--reason", "test"]):
        p = cv(server.data, *verb, ok=False)
        assert p.returncode == 1
        assert (
            f"the vault at {server.data} is in use by a running server (pid {server.proc.pid}); "
            f"use --server {server.address}" in p.stderr
        ), p.stderr
    assert "s1" in run_cli("--server", server.address, "ls").stdout


def test_remote_export_stdout_identity_and_folders(server: Proc, tmp_path: Path) -> None:
    p = cv_bytes("--server", server.address, "export", "s1", "-o", "-")
    assert p.returncode == 0 and p.stdout[:4] == b"OggS", p.stderr
    (tmp_path / "s1.ogg").write_bytes(p.stdout)
    assert _identity(tmp_path / "s1.ogg") == dict(
        x.split("=", 1) for x in identity_comments("s1", "default", SAMPLE_START_US)
    )
    m = tmp_path / "m.ogg"
    run_cli("--server", server.address, "export", "s1", "-o", str(m), "--with-metadata")
    assert _identity(m)["CALLVAULT_EXTRA_QUEUE"] == "9"
    assert "CALLVAULT_CUSTOMER_NUMBER" not in _identity(m)
    out = tmp_path / "missing" / "s1.ogg"
    q = run_cli("--server", server.address, "export", "s1", "-o", str(out), ok=False)
    assert q.returncode == 1
    assert q.stderr == f"callvault: error: cannot write {out}: folder {out.parent} does not exist\n"


@pytest.mark.parametrize("verb", [["play", "s1"], ["export", "s1", "-o", "-"], ["ls"]])
def test_a_closed_pipe_ends_quietly_remote(server: Proc, verb: list[str]) -> None:
    proc = subprocess.Popen(
        [*CLI, "--server", server.address, *verb], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141
    assert err == ""


def test_remote_stats_and_meta(server: Proc) -> None:
    doc = json.loads(run_cli("--server", server.address, "stats", "--json").stdout)
    assert doc["calls"] >= 1 and "uptime_s" in doc and "rpcs" in doc
    calls = json.loads(run_cli("--server", server.address, "ls", "--json").stdout)
    assert {c["call_id"]: c["extra"] for c in calls}["s1"] == {"queue": "9"}
    info = json.loads(run_cli("--server", server.address, "info", "s1", "--json").stdout)
    assert info["extra"] == {"queue": "9"}


def test_remote_import_takes_the_same_meta(server: Proc, capture: Path) -> None:
    run_cli(
        "--server",
        server.address,
        "import",
        "--call-id",
        "s2",
        "--meta",
        "agent=bo",
        "--meta",
        "tags=a,b",
        "--meta",
        "queue=3",
        str(capture),
    )
    info = json.loads(run_cli("--server", server.address, "info", "s2", "--json").stdout)
    assert info["extra"] == {"queue": "3"} and info["tags"] == ["a", "b"] and info["agent"] == "bo"

"""The four-eyes verbs and the access options of the command line against a real
server: `export-request`, `export-approve`, `export-requests`, `export/bundle
--approval`, `--reason`, and `--tenant` left to the identity on a server.

The command runs in this process (callvault.cli.main) with `--token`: the identity's
real token from tests/server/access_fixtures.py (the one source of credentials)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from callvault.cli.main import main
from callvault.media import sample
from callvault.media.ogg import OggOpusReader
from tests.server.access_fixtures import AccessServer, populate, serve, token_for

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessServer]:
    tmp = tmp_path_factory.mktemp("cli-access")
    capture = tmp / "call.pcap"
    sample.demo_capture(capture, seconds=3.0)
    populate(tmp / "vault", capture)
    yield from serve(tmp / "vault")


@pytest.fixture
def run(world: AccessServer, capsys: pytest.CaptureFixture[str]) -> Run:
    """run(name, role, *args) -> (exit status, stdout, stderr) of `callvault --server
    ADDR --token TOKEN ARGS...` as that identity of tenant t1."""

    def as_(name: str, role: str, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        token = token_for(name, role, "t1")
        rc = main(["--server", world.address, "--token", token, *args])
        out, err = capsys.readouterr()
        return rc, out, err

    return as_


def test_four_eyes_from_the_command_line(run: Run, tmp_path: Path) -> None:
    rc, out, err = run("ann", "legal", "export-request", "own", "--reason", "subpoena 114")
    assert rc == 0, err
    rid = out.strip()
    assert rid.startswith("xr-") and f"export-approve {rid}" in err
    rc, _, err = run("ann", "legal", "export-approve", rid)
    assert rc == 1 and "four eyes" in err
    rc, out, err = run("bob", "legal", "export-approve", rid)
    assert rc == 0 and f"approved {rid}" in out and "by ann" in out, err
    rc, out, _ = run("carol", "auditor", "export-requests", "--json")
    [row] = [r for r in json.loads(out) if r["id"] == rid]
    assert (row["state"], row["requested_by"], row["approved_by"]) == ("approved", "ann", "bob")
    assert (row["tenant"], row["call_id"], row["reason"]) == ("t1", "own", "subpoena 114")
    ogg = tmp_path / "own.ogg"
    rc, _, err = run("ann", "legal", "export", "own", "-o", str(ogg))
    assert rc == 1 and "four-eyes" in err and "--approval" in err and not ogg.exists()
    rc, _, err = run("ann", "legal", "export", "own", "-o", str(ogg), "--approval", rid)
    assert rc == 0, err
    assert OggOpusReader(ogg).channels == 2
    rc, _, err = run("ann", "legal", "bundle", "own", "-o", str(tmp_path / "b"), "--approval", rid)
    assert rc == 1 and "used already" in err and not (tmp_path / "b").exists()
    rc, out, _ = run("carol", "auditor", "export-requests")
    assert any(line.startswith(rid) and " used " in line for line in out.splitlines())


def test_an_admin_gives_a_reason_for_audio(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "own.wav"
    rc, _, err = run("root-1", "admin", "play", "own", "-o", str(out))
    assert rc == 1 and "give --reason" in err and not out.exists()
    rc, _, err = run("root-1", "admin", "play", "own", "-o", str(out), "--reason", "complaint 7")
    assert rc == 0 and out.stat().st_size > 44, err


def test_a_server_scopes_the_tenant_by_the_identity(run: Run) -> None:
    rc, out, err = run("qa-1", "qa", "ls", "--json")
    assert rc == 0, err
    assert sorted(c["call_id"] for c in json.loads(out)) == ["live", "other", "own", "victim"]
    rc, out, _ = run("qa-1", "qa", "--tenant", "t2", "ls", "--json")
    assert rc == 0 and json.loads(out) == []
    rc, _, err = run("qa-1", "qa", "--tenant", "t2", "info", "foreign")
    assert rc == 1 and "no call foreign in tenant t2" in err


def test_the_verbs_need_a_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--data", str(tmp_path), "export-requests"]) == 1
    assert "give --server" in capsys.readouterr().err

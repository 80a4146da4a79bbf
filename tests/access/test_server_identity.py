"""Identities on a real server (`callvault serve` child processes, the real CLI and
SDK): open mode and the first token, token verbs local and remote, refusals of
malformed, unknown, expired and revoked tokens, tenant-bound token admins,
--insecure-listen, mTLS with mapped, unmapped and wrong-CA certificates, and no
token text in the server's log."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from callvault_client import Client, errors

from tests.access.certs import Issued, issue, make_ca
from tests.servers import CLI, Proc, run_cli, spawn, start_server


def token_create(data: Path, *args: str) -> str:
    p = run_cli("--data", str(data), "token", "create", *args)
    token = p.stdout.strip()
    assert token.startswith("cvt_") and "\n" not in token
    assert token not in p.stderr and "shown only this once" in p.stderr
    return token


def cli_ls(
    address: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--server", address, *args, "ls", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    proc = start_server(tmp_path / "data")
    yield proc
    proc.stop()


def test_open_mode_until_the_first_token_then_tokens_only(server: Proc, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "OPEN MODE" in server.output() and "token create" in server.output()
    assert cli_ls(server.address).returncode == 0  # open mode: loopback is admin
    root = token_create(data, "--name", "root", "--role", "admin", "--platform")
    # the running server sees the new token at once: open mode is over
    p = cli_ls(server.address)
    assert p.returncode == 1 and "no credentials" in p.stderr
    assert cli_ls(server.address, "--token", root).returncode == 0
    tf = tmp_path / "root.token"
    tf.write_text(root + "\n")
    assert cli_ls(server.address, "--token-file", str(tf)).returncode == 0
    assert cli_ls(server.address, env={"CALLVAULT_TOKEN": root}).returncode == 0
    with Client(server.address, token=root) as c:
        assert c.stats().calls == 0
    with Client(server.address, token="") as c, pytest.raises(errors.Unauthenticated):
        c.stats()


def test_remote_token_verbs_and_refusals(server: Proc, tmp_path: Path) -> None:
    data = tmp_path / "data"
    root = token_create(data, "--name", "root", "--role", "admin", "--platform")
    base = ["--server", server.address, "--token", root, "token"]
    made = run_cli(*base, "create", "--name", "ann", "--role", "admin", "--tenant", "t1")
    ann = made.stdout.strip()
    short = run_cli(
        *base, "create", "--name", "brief", "--role", "admin", "--tenant", "t1", "--expires", "1s"
    ).stdout.strip()
    rows = json.loads(run_cli(*base, "ls", "--json").stdout)
    assert [(r["name"], r["role"], r["tenant"], r["state"]) for r in rows] == [
        ("root", "admin", None, "active"),
        ("ann", "admin", "t1", "active"),
        ("brief", "admin", "t1", "active"),
    ]
    # a tenant's admin makes tokens of its own tenant only, and sees only those
    with (
        Client(server.address, token=ann) as c,
        pytest.raises(errors.PermissionDenied, match="may not make tokens of tenant t2"),
    ):
        c.create_token("x", "qa", tenant="t2")
        with pytest.raises(errors.PermissionDenied, match="platform tokens"):
            c.create_token("x", "qa", platform=True)
        assert c.create_token("carl", "qa", tenant="t1").info.tenant == "t1"
        assert sorted(t.name for t in c.list_tokens()) == ["ann", "brief", "carl"]
        with pytest.raises(errors.NotFound):
            c.revoke_token("root")
    # expired (says when), revoked (at once), malformed, unknown
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        p = cli_ls(server.address, "--token", short)
        if p.returncode == 1:  # a role's refusal would be an error of the test
            break
        time.sleep(0.2)
    assert "(brief) expired at " in p.stderr, p.stderr
    run_cli(*base, "revoke", "ann")
    p = cli_ls(server.address, "--token", ann)
    assert p.returncode == 1 and "(ann) was revoked at" in p.stderr
    p = cli_ls(server.address, "--token", "cvt_nope")
    assert p.returncode == 1 and "malformed token" in p.stderr
    fake = "cvt_0123456789abcdef_" + "x" * 43
    p = cli_ls(server.address, "--token", fake)
    assert p.returncode == 1 and "unknown token (id 0123456789abcdef)" in p.stderr
    # no token text in the server's log: valid, expired, revoked and unknown ones
    log = server.output()
    assert "UNAUTHENTICATED" in log
    for t in (root, ann, short, fake):
        assert t.split("_", 2)[2] not in log


def test_local_token_verbs_while_the_server_runs(server: Proc, tmp_path: Path) -> None:
    data = tmp_path / "data"
    token_create(data, "--name", "root", "--role", "admin", "--platform")
    p = run_cli("--data", str(data), "token", "create", "--name", "x", "--role", "qa", ok=False)
    assert p.returncode == 1 and "--tenant NAME" in p.stderr and "--platform" in p.stderr
    ls = json.loads(run_cli("--data", str(data), "token", "ls", "--json").stdout)
    assert [r["name"] for r in ls] == ["root"] and "hash" not in ls[0]
    out = run_cli("--data", str(data), "token", "revoke", "root").stdout
    assert out.startswith(f"revoked {ls[0]['id']} (root)")
    table = run_cli("--data", str(data), "token", "ls").stdout
    assert "revoked" in table.splitlines()[1]
    # every token revoked: still not open
    assert cli_ls(server.address).returncode == 1


def test_non_loopback_listen_needs_tls_or_insecure_listen(tmp_path: Path) -> None:
    p = run_cli(
        "serve", "--data", str(tmp_path / "d"), "--listen", "0.0.0.0:0", ok=False, timeout=60
    )
    assert p.returncode == 1
    assert "--tls-cert and --tls-key" in p.stderr and "--insecure-listen" in p.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was made
    proc = spawn(
        "insecure",
        ["serve", "--data", str(tmp_path / "d"), "--listen", "0.0.0.0:0", "--insecure-listen"],
        tmp_path,
    )
    try:
        with Client(proc.address, retries=20, backoff=(0.05, 0.5)) as c:
            assert c.stats().calls == 0  # open mode, and this caller is on loopback
    finally:
        proc.stop()


def tls_server(tmp_path: Path, *extra: str) -> tuple[Proc, Issued]:
    """A server with mTLS: its CA (returned) signs the server and client certificates."""
    ca = make_ca(tmp_path, "ca")
    srv = issue(tmp_path, ca, "server", "callvault", server=True)
    argv = [
        "serve",
        "--data",
        str(tmp_path / "data"),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(srv.cert),
        "--tls-key",
        str(srv.key),
        "--tls-client-ca",
        str(ca.cert),
        *extra,
    ]
    return spawn("mtls", argv, tmp_path), ca


def test_mtls_maps_certificates_to_identities(tmp_path: Path) -> None:
    ids = tmp_path / "identities.toml"
    ids.write_text(
        '[[certificate]]\ncn = "ops-console"\nname = "ops"\nrole = "admin"\nplatform = true\n'
        '\n[[certificate]]\nuri = "spiffe://acme/pbx1"\nname = "pbx1"\nrole = "admin"\n'
        'tenant = "t1"\n'
    )
    proc, ca = tls_server(tmp_path, "--identities", str(ids))
    try:
        ops = issue(tmp_path, ca, "ops", "ops-console")
        pbx = issue(tmp_path, ca, "pbx1", "whatever", uris=("spiffe://acme/pbx1",))
        nobody = issue(tmp_path, ca, "nobody", "intruder", dns=("intruder.example",))
        with Client(
            proc.address,
            tls_cert=ops.cert,
            tls_key=ops.key,
            retries=30,
            backoff=(0.05, 0.5),
            tls_ca=ca.cert,
        ) as c:
            assert c.stats().calls == 0
            made = c.create_token("viaops", "qa", tenant="t1")
        with (
            Client(proc.address, tls_cert=pbx.cert, tls_key=pbx.key, tls_ca=ca.cert) as c,
            pytest.raises(errors.PermissionDenied, match="tenant t1"),
        ):
            c.create_token("x", "qa", tenant="t2")
        with (
            Client(proc.address, tls_cert=nobody.cert, tls_key=nobody.key, tls_ca=ca.cert) as c,
            pytest.raises(errors.Unauthenticated, match="CN=intruder, DNS:intruder.example"),
        ):
            c.stats()
        # a token wins over the certificate; a bad one is not rescued by it
        with (
            Client(
                proc.address, tls_cert=ops.cert, tls_key=ops.key, token="cvt_x", tls_ca=ca.cert
            ) as c,
            pytest.raises(errors.Unauthenticated, match="malformed"),
        ):
            c.stats()
        # the CLI with the client certificate
        p = subprocess.run(
            [
                *CLI,
                "--server",
                proc.address,
                "--tls-ca",
                str(ca.cert),
                "--tls-cert",
                str(ops.cert),
                "--tls-key",
                str(ops.key),
                "token",
                "ls",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        assert [r["name"] for r in json.loads(p.stdout)] == ["viaops"]
        # no certificate, or one of another CA (same CN): the handshake fails
        (tmp_path / "other").mkdir()
        stranger_ca = make_ca(tmp_path / "other", "ca")
        stranger = issue(tmp_path / "other", stranger_ca, "stranger", "ops-console")
        for cert, key in ((None, None), (stranger.cert, stranger.key)):
            with (
                Client(
                    proc.address, retries=0, timeout=5, tls_ca=ca.cert, tls_cert=cert, tls_key=key
                ) as c,
                pytest.raises((errors.Unavailable, errors.DeadlineExceeded)),
            ):
                c.stats()
        assert made.token.split("_", 2)[2] not in proc.output()
        assert "OPEN MODE" not in proc.output()
    finally:
        proc.stop()


def test_identities_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "ids.toml"
    bad.write_text('[[certificate]]\ncn = "x"\ndns = "y"\nname = "a"\nrole = "qa"\ntenant = "t"\n')
    ca = make_ca(tmp_path)
    srv = issue(tmp_path, ca, "server", "callvault", server=True)
    p = run_cli(
        "serve",
        "--data",
        str(tmp_path / "d"),
        "--tls-cert",
        str(srv.cert),
        "--tls-key",
        str(srv.key),
        "--tls-client-ca",
        str(ca.cert),
        "--identities",
        str(bad),
        ok=False,
        timeout=60,
    )
    assert p.returncode == 1 and "certificate #1: give exactly one of cn, dns, uri" in p.stderr
    p = run_cli(
        "serve", "--data", str(tmp_path / "d"), "--identities", str(bad), ok=False, timeout=60
    )
    assert p.returncode == 1 and "--tls-client-ca" in p.stderr


def _non_loopback_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), if any."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ip.startswith("127.") else ip


def test_open_mode_refuses_callers_off_loopback(tmp_path: Path) -> None:
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    proc = spawn(
        "insecure",
        ["serve", "--data", str(tmp_path / "d"), "--listen", "0.0.0.0:0", "--insecure-listen"],
        tmp_path,
    )
    try:
        with (
            Client(f"{ip}:{proc.port}", retries=20, backoff=(0.05, 0.5)) as c,
            pytest.raises(errors.Unauthenticated, match="answers only callers on loopback"),
        ):
            c.stats()
        with Client(proc.address) as c:  # the same server over loopback: admin
            assert c.stats().calls == 0
    finally:
        proc.stop()


def test_a_token_that_cannot_be_sent_is_refused_before_connecting(tmp_path: Path) -> None:
    tf = tmp_path / "t"
    tf.write_text("")
    for args, why in (
        (("--token", "cvt_a b"), "--token: a token is one word"),
        (("--token-file", str(tf)), "is empty"),
        (("--token-file", str(tmp_path / "missing")), "No such file"),
    ):
        p = run_cli("--server", "127.0.0.1:1", *args, "ls", ok=False, timeout=60)
        assert p.returncode == 1 and why in p.stderr and "Traceback" not in p.stderr
        assert "cvt_a b" not in p.stderr

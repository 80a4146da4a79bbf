"""The audit trail through real servers, the SDK and the CLI (docs/access.md "Audit
trail"), callers with real tokens: one entry per RPC of every kind, tenant-scoped
reading, the head in the Merkle log with an inclusion proof against a signed
checkpoint, a torn tail after SIGKILL, tampering caught by `audit verify`, anomaly
rules in the policy."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Generator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from callvault_client import Client
from callvault_client.errors import CallvaultClientError

from callvault.access import audit
from callvault.access.authn import CredentialAuthenticator
from callvault.integrity import checkpoint, merkle
from callvault.server import interceptors
from callvault.server.app import Server
from callvault.vault import Vault
from tests.server.access_fixtures import STORE, token_for
from tests.servers import run_cli, start_server


def token(who: str) -> str:
    """The real token of "name/role/tenant" (tenant empty: platform), minted once in
    the access tests' token store (tests/server/access_fixtures.py)."""
    name, role, tenant = who.split("/")
    return token_for(name, role, tenant or None)


def auth_md(who: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token(who)}")


def authenticator() -> CredentialAuthenticator:
    """The server's real authenticator over the access tests' token store."""
    return CredentialAuthenticator(STORE)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    # the roles lane's table gives auditors "audit"; here only that cell is needed
    monkeypatch.setitem(interceptors.ROLE_PERMISSIONS, "auditor", frozenset({"audit"}))
    vault = Vault.open(tmp_path / "data")
    s = Server(vault, "127.0.0.1:0", auth=authenticator())
    s.start()
    yield s
    s.stop()


def client(s: Server, who: str | None, reason: str = "") -> Client:
    md = [auth_md(who)] if who else []
    if reason:
        md.append(("callvault-reason", reason))
    return Client(f"127.0.0.1:{s.port}", metadata=md, retries=0)


def wait_count(s: Server, n: int) -> None:
    deadline = time.monotonic() + 30
    while s.audit.count < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.audit.count == n


def test_every_rpc_makes_exactly_one_entry_with_its_fields(server: Server) -> None:
    made = 0
    admin = client(server, "root/admin/", reason="INC-7")
    with admin:
        admin.stats()  # unary, allowed
        with pytest.raises(CallvaultClientError):
            admin.get_call("nope")  # unary, NOT_FOUND
        assert list(admin.search()) == []  # server stream, allowed
        assert [r.ok for r in admin.verify(all=True)]  # server stream
        made += 4
    for who in ("ann/recorder/t1", "bob/recorder/t2"):  # denied: a recorder only records
        with client(server, who) as c, pytest.raises(CallvaultClientError):
            c.stats()
        made += 1
    with client(server, None) as c, pytest.raises(CallvaultClientError):
        c.stats()  # no credentials
    made += 1
    # a malformed request: bytes that are no GetCallRequest
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        raw: grpc.UnaryUnaryMultiCallable = ch.unary_unary("/callvault.v1.Archive/GetCall")
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff\xff", metadata=(auth_md("root/admin/"),), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        made += 1
    # a stream the client leaves: Audit's entries (a KiB each) fill the flow-control
    # window while the client reads one, then it cancels
    with client(server, "bulk/admin/", reason="x" * 1024) as c:
        for _ in range(150):
            c.stats()
        made += 150
    wait_count(server, made)
    opts = [("grpc.http2.bdp_probe", 0)]
    with Client(f"127.0.0.1:{server.port}", metadata=[auth_md("root/admin/")], options=opts) as c:
        stream = cast(Generator[Any, None, None], c.audit())  # the SDK's streams are generators
        assert next(stream).seq == 1
        time.sleep(0.5)  # the server blocks sending, its window full
        stream.close()  # the SDK cancels the RPC
        made += 1
    wait_count(server, made)
    server.audit.flush()
    docs = [e.doc for e in audit.read_entries(server.vault.path / "audit")]
    assert len(docs) == made
    got = [(d["identity"]["name"], d["method"].rsplit("/", 1)[1], d["outcome"]) for d in docs]
    assert got == [
        ("root", "Stats", "OK"),
        ("root", "GetCall", "NOT_FOUND"),
        ("root", "Search", "OK"),
        ("root", "Verify", "OK"),
        ("ann", "Stats", "PERMISSION_DENIED"),
        ("bob", "Stats", "PERMISSION_DENIED"),
        ("(unauthenticated)", "Stats", "UNAUTHENTICATED"),
        ("root", "GetCall", "INVALID_ARGUMENT"),
        *[("bulk", "Stats", "OK")] * 150,
        ("root", "Audit", "CANCELLED"),
    ]
    assert all(d["peer"].startswith("ipv4:127.0.0.1:") for d in docs)
    assert [d["reason"] for d in docs[:4]] == ["INC-7"] * 4 and docs[4]["reason"] == ""
    assert docs[4]["identity"] == {
        "name": "ann",
        "role": "recorder",
        "tenant": "t1",
        "via": f"token:{token('ann/recorder/t1').split('_')[1]}",
    }
    assert "may not" in docs[4]["detail"] and "not a valid protobuf" in docs[7]["detail"]
    assert docs[1]["calls"] == [["default", "nope"]] and docs[0]["calls"] == []
    assert [d["seq"] for d in docs] == list(range(1, made + 1))
    with client(server, "root/admin/") as c:
        s = c.stats()
        assert (s.audit_entries, s.audit_alerts, s.audit_error) == (made, 0, "")


def test_a_tenant_auditor_sees_only_its_tenant(server: Server) -> None:
    for who in ("ann/recorder/t1", "bob/recorder/t2", "cid/recorder/t1"):
        with client(server, who) as c, pytest.raises(CallvaultClientError):
            c.stats()
    with client(server, "aud/auditor/t1") as c:
        mine = list(c.audit())
        assert [e.identity for e in mine] == ["ann", "cid"]
        assert all(e.identity_tenant == "t1" for e in mine)
        assert [e.identity for e in c.audit(identity="bob")] == []
        assert [e.identity for e in c.audit(identity="cid")] == ["cid"]
    with client(server, "root/admin/") as c:
        every = list(c.audit())
        # the platform admin sees all, the auditor's own Audit RPC included
        assert [e.identity for e in every] == ["ann", "bob", "cid", "aud", "aud", "aud"]
        assert [e.seq for e in c.audit(after_seq=2, limit=2)] == [3, 4]
        assert len(every[0].hash) == 32
    with client(server, "ann/recorder/t1") as c, pytest.raises(CallvaultClientError) as e:
        list(c.audit())
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED


def outside_now() -> str:
    """Working hours that exclude the present (two hours from now, one hour long)."""
    start = datetime.now(UTC) + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_trail_through_kill_restart_proofs_tamper_and_alerts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[audit.anomaly]]\nname = "x"\nmethod = "play"\nmax_calls = 0\nper = "1h"\n')
    p = run_cli(
        "serve",
        "--data",
        str(data),
        "--listen",
        "127.0.0.1:0",
        "--config",
        str(bad),
        ok=False,
        timeout=120,
    )
    assert p.returncode == 1 and "rule 'x'" in p.stderr and "at least 1" in p.stderr
    cfg = tmp_path / "policy.toml"
    cfg.write_text(
        f'[[audit.anomaly]]\nname = "night-stats"\nmethod = "stats"\n'
        f'outside = "{outside_now()}"\ntimezone = "UTC"\n'
    )
    srv = start_server(data, args=("--config", str(cfg)))
    try:
        with Client(srv.address) as c:
            for _ in range(3):
                c.stats()  # each one outside working hours: an alert
            with pytest.raises(CallvaultClientError):
                c.get_call("nope")
            cp = c.get_checkpoint()  # the trail's head goes into the log first
            s = c.stats()
            assert (s.audit_entries, s.audit_alerts) == (8, 3)  # 3+3 alerts+2
            # the audit leaf is in the log the signed checkpoint covers
            signed = checkpoint.verify(cp.note, cp.verifier_key)
            leaves, problem = audit.read_leaves(data / "audit")
            assert problem == "" and len(leaves) == 1 and leaves[0].count == 7
            leaf = leaves[0]
            proof = c.get_inclusion_proof(leaf_index=leaf.log_index, tree_size=signed.size)
            merkle.verify_inclusion(
                leaf.log_index,
                signed.size,
                merkle.leaf_hash(leaf.leaf_data()),
                list(proof.path),
                signed.root,
            )
        alerts = run_cli("--server", srv.address, "audit", "--kind", "alert").stdout.splitlines()
        assert len(alerts) == 4 and all("ALERT  night-stats" in a for a in alerts)
        assert srv.output().count("WARNING audit alert night-stats") == 4
        # SIGKILL: nothing written is lost (the entries are in the page cache) ...
        srv.kill()
        # 3 stats + 3 alerts, GetCall, GetCheckpoint, stats + alert, the proof, the CLI's
        assert len(list(audit.read_entries(data / "audit"))) == 12
        # ... and a frame a crash cut in the middle is cut on the next open
        with open(data / "audit" / "trail", "ab") as f:
            f.write(b"\x00\x00\x02\x00" + b"\x17" * 40)
        srv = start_server(data, args=("--config", str(cfg)))
        assert "cut a torn tail of 44 byte(s)" in srv.output()
        with Client(srv.address) as c:
            assert c.stats().audit_entries == 12
        assert srv.stop() == 0  # the shutdown commits the head: a second audit leaf
        ok = run_cli("--data", str(data), "audit", "verify")
        assert "audit trail OK: 14 entries, 2 audit leaves checked" in ok.stdout
        js = run_cli("--data", str(data), "audit", "--json", "--call", "nope").stdout
        on_nope = [json.loads(x) for x in js.splitlines()]  # the GetCall noted its call
        assert [(d["seq"], d["outcome"], d["calls"]) for d in on_nope] == [
            (7, "NOT_FOUND", [["default", "nope"]])
        ]
        js = run_cli("--data", str(data), "audit", "--json", "--kind", "rpc").stdout
        assert len(js.splitlines()) == 9
    finally:
        if srv.alive():
            srv.stop(signal.SIGKILL)
    # one byte of entry 7 (the GetCall) changed on disk: verify names it
    entries = list(audit.read_entries(data / "audit"))
    assert entries[6].doc["method"].endswith("GetCall")
    raw = bytearray((data / "audit" / "trail").read_bytes())
    at = raw.index(b"GetCall", entries[6].offset)
    raw[at] = ord("X")
    (data / "audit" / "trail").write_bytes(bytes(raw))
    bad_run = run_cli("--data", str(data), "audit", "verify", ok=False)
    assert bad_run.returncode == 1
    assert "PROBLEM audit entry 7" in bad_run.stdout and "first bad entry: 7" in bad_run.stdout


def test_audio_played_and_exported_is_in_the_trail(tmp_path: Path) -> None:
    from callvault.media import sample

    capture = tmp_path / "call.pcap"
    sample.demo_capture(capture, seconds=3.0)
    with Vault.open(tmp_path / "data") as v:
        v.import_call("c1", [str(capture)], tenant="t1")
    s = Server(Vault.open(tmp_path / "data"), "127.0.0.1:0", auth=authenticator())
    s.start()
    try:
        with client(s, "root/admin/", reason="QA-1") as c:
            frames = c.get_call("c1", tenant="t1").frames
            chunks = list(c.play("c1", tenant="t1", format="pcm"))
            size = sum(len(ch.data) for ch in c.export_chunks("c1", tenant="t1"))
        wait_count(s, 3)
    finally:
        s.stop()
    info, play, export = (e.doc for e in audit.read_entries(tmp_path / "data" / "audit"))
    assert [d["calls"] for d in (info, play, export)] == [[["t1", "c1"]]] * 3
    assert (info["audio_seconds"], info["audio_bytes"]) == (0.0, 0)
    assert len(chunks) > 0 and play["audio_seconds"] == pytest.approx(frames * 0.02)
    assert play["audio_bytes"] == frames * 160 * 2 * 2  # PCM16, two legs
    assert export["audio_seconds"] == pytest.approx(frames * 0.02, abs=0.02)
    assert export["audio_bytes"] == size and export["reason"] == "QA-1"

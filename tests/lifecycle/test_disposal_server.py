"""Lifecycle.PlanDisposal and Lifecycle.Dispose on a real server (loopback, real
tokens), the vault's clock injected: approval by a second admin, tenant scoping,
the sweeper on a schedule, a disposal a crash left receipted finished at start,
Admin.Stats 70-73, CallInfo 60-61."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.access.authn import CredentialAuthenticator
from callvault.lifecycle import disposal
from callvault.server.app import Server
from callvault.server.servicers import Config
from callvault.vault import Vault

from ..server.access_fixtures import STORE, metadata_of, token_for
from .disposal_helpers import DAY_US, SEGMENT_BYTES, child_env, record, retention

T0 = 1_900_000_000_000_000
NOW = T0 + 30 * DAY_US


def make(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        v.clock = lambda: T0
        record(v, {"a": retention(T0 + DAY_US), "k": retention(T0 + 400 * DAY_US)}, tenant="t1")
        record(v, {"b": retention(T0 + 2 * DAY_US)}, tenant="t2")


def serve(data: Path, **settings: object) -> Server:
    v = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    v.clock = lambda: NOW
    server = Server(
        v,
        "127.0.0.1:0",
        Config(reclaim_interval_s=0, **settings),
        auth=CredentialAuthenticator(STORE),
    )
    server.start()
    return server


@pytest.fixture
def data(tmp_path: Path) -> Path:
    make(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def approval_server(data: Path) -> Iterator[tuple[Server, pbg.LifecycleStub, pbg.AdminStub]]:
    server = serve(data, disposal={"approval": True, "interval_s": 0})
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, pbg.LifecycleStub(ch), pbg.AdminStub(ch)
    finally:
        ch.close()
        server.stop()


ALICE = metadata_of("alice-dispose", "admin", None)
BOB = metadata_of("bob-dispose", "admin", None)
LEGAL = metadata_of("lena-dispose", "legal", None)
T2_ADMIN = metadata_of("tina-dispose", "admin", "t2")


def ids(report_json: str) -> list[str]:
    return [c["call_id"] for c in json.loads(report_json)["report"]["calls"]]


def test_approval_by_a_second_admin(
    approval_server: tuple[Server, pbg.LifecycleStub, pbg.AdminStub],
) -> None:
    server, lc, admin = approval_server
    plan = lc.PlanDisposal(pb.DisposeRequest(), metadata=LEGAL)
    assert plan.status == "planned" and ids(plan.report_json) == ["a", "b"]
    key = server.vault.signer.verifier_key()
    assert disposal.verify_report(plan.report_json, key)["by"]["name"] == "lena-dispose"
    # a tenant admin sees its own tenant's calls only
    mine = lc.PlanDisposal(pb.DisposeRequest(), metadata=T2_ADMIN)
    assert ids(mine.report_json) == ["b"]
    with pytest.raises(grpc.RpcError) as err:
        lc.PlanDisposal(pb.DisposeRequest(tenant="t1"), metadata=T2_ADMIN)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:  # legal may plan, not dispose
        lc.Dispose(pb.DisposeRequest(), metadata=LEGAL)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    pending = lc.Dispose(pb.DisposeRequest(), metadata=ALICE)
    assert pending.status == "pending" and pending.disposed == 0
    rid = json.loads(pending.report_json)["report"]["id"]
    stats = admin.Stats(pb.StatsRequest(), metadata=ALICE)
    assert stats.disposal_pending_reports == 1 and stats.disposed_calls == 0
    got = lc.PlanDisposal(pb.DisposeRequest(list_reports=True), metadata=LEGAL)
    assert [json.loads(t)["status"] for t in got.reports_json] == ["pending"]
    # a tenant admin cannot approve a report of every tenant
    with pytest.raises(grpc.RpcError) as err:
        lc.Dispose(pb.DisposeRequest(report_id=rid), metadata=T2_ADMIN)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        lc.Dispose(pb.DisposeRequest(report_id=rid), metadata=ALICE)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "another identity" in (err.value.details() or "")
    done = lc.Dispose(pb.DisposeRequest(report_id=rid), metadata=BOB)
    assert done.status == "applied" and done.disposed == 2 and done.skipped == 0
    assert done.reclaimed_bytes > 0
    stats = admin.Stats(pb.StatsRequest(), metadata=ALICE)
    assert stats.disposed_calls == 2 and stats.disposal_pending_reports == 0
    assert stats.last_disposal_us == NOW and stats.disposal_error == ""
    arch = pbg.ArchiveStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    info = arch.GetCall(
        pb.GetCallRequest(call=pb.CallRef(tenant="t1", call_id="a")), metadata=ALICE
    )
    assert info.state == "erased" and info.disposal_report == rid and info.disposed_us == NOW
    kept = arch.GetCall(
        pb.GetCallRequest(call=pb.CallRef(tenant="t1", call_id="k")), metadata=ALICE
    )
    assert kept.state == "sealed" and kept.disposal_report == ""


def test_the_sweeper_disposes_on_schedule(data: Path) -> None:
    server = serve(data, disposal={"interval_s": 0.2})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # counted once the run (and reclaim) ends
            if server.disposer.stats()["disposed_calls"] == 2:
                break
            time.sleep(0.1)
        assert server.vault.get_call("a", tenant="t1").state == "erased"
        assert server.vault.get_call("b", tenant="t2").state == "erased"
        assert server.vault.get_call("k", tenant="t1").state == "sealed"
        assert server.disposer.stats()["disposed_calls"] == 2
    finally:
        server.stop()


def test_a_receipted_call_is_finished_at_start(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:  # as a crash leaves it
        v.clock = lambda: NOW
        d = {"report": "dr-" + "1" * 32, "rule": "r", "until_us": T0 + DAY_US}
        v.change("a", tenant="t1", op="dispose", changes={"disposal": {**d, "disposed_us": NOW}})
        assert v.get_call("a", tenant="t1").state == "sealed"
    server = serve(data, disposal={"interval_s": 0})  # the sweeper never runs, but finishes
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.vault.get_call("a", tenant="t1").state == "erased":
                break
            time.sleep(0.1)
        e = server.vault.get_call("a", tenant="t1")
        assert e.state == "erased" and "dr-1111" in e.erase_reason
        assert server.vault.get_call("b", tenant="t2").state == "sealed"  # not swept
    finally:
        server.stop()


def test_a_bad_disposal_section_stops_the_server(data: Path) -> None:
    with pytest.raises(Exception, match=r"\[disposal\] approval must be true or false"):
        serve(data, disposal={"approval": "yes"})


def test_the_cli_over_the_server(
    approval_server: tuple[Server, pbg.LifecycleStub, pbg.AdminStub],
) -> None:
    """`callvault --server ADDR --token T dispose ...`: pending, approve by another."""
    server, _, _ = approval_server
    addr = f"127.0.0.1:{server.port}"

    def cli(token: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "callvault.cli", "--server", addr, "--token", token, *args]
        p = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=120)
        assert not ok or p.returncode == 0, p.stdout + p.stderr
        return p

    alice = token_for("alice-dispose", "admin", None)
    bob = token_for("bob-dispose", "admin", None)
    dry = json.loads(cli(alice, "dispose", "--dry-run", "--json").stdout)
    assert dry["status"] == "planned" and [c["call_id"] for c in dry["report"]["calls"]] == [
        "a",
        "b",
    ]
    out = cli(alice, "dispose").stdout
    assert "pending approval" in out
    rid = out.split()[1]
    same = cli(alice, "dispose", "approve", rid, ok=False)
    assert same.returncode == 1 and "another identity must approve it" in same.stderr
    done = cli(bob, "dispose", "approve", rid).stdout
    assert "disposed 2 call(s), skipped 0" in done and "reclaimed" in done
    assert f"{rid}  applied" in cli(bob, "dispose", "reports").stdout

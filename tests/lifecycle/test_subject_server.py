"""Lifecycle.EraseSubject through a real server on loopback (docs/policy.md "Erasure
by data subject"): admins only, a tenant's admin acts on its own tenant only, every
tenant is a platform identity's; the report, Admin.Stats and the audit trail; the
`callvault --server` CLI; the value never stored in clear anywhere in DATA.

The identities come from a fixed table keyed by a metadata value (an Authenticator
as access.identity defines it), as in tests/server/test_erase_tenant.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.access.identity import Identity, Unauthenticated
from callvault.server.app import Server
from callvault.vault import Vault
from tests.lifecycle.test_subject import NUMBER, OTHER, files_containing, record
from tests.servers import run_cli

pytestmark = pytest.mark.timeout(300)

IDENTITIES = {
    "root": Identity("root", "admin", None, "test"),
    "t1-admin": Identity("t1-admin", "admin", "t1", "test"),
    "t2-qa": Identity("t2-qa", "qa", "t2", "test"),
}


class TableAuthenticator:
    """The identity named by the metadata ``x-identity`` (default: root)."""

    def identify(self, context: grpc.ServicerContext) -> Identity:
        md = dict(context.invocation_metadata())
        name = str(md.get("x-identity", "root"))
        if name not in IDENTITIES:
            raise Unauthenticated(f"no identity {name}")
        return IDENTITIES[name]


def erase_subject(address: str, who: str, **kw: Any) -> dict[str, Any]:
    with grpc.insecure_channel(address) as ch:
        req = pb.EraseSubjectRequest(key="customer_number", value=NUMBER, reason="req 7", **kw)
        reply = pbg.LifecycleStub(ch).EraseSubject(req, metadata=[("x-identity", who)], timeout=60)
    out: dict[str, Any] = json.loads(reply.report_json)
    return out


def denied(address: str, who: str, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        erase_subject(address, who, **kw)
    e = err.value
    assert isinstance(e, grpc.RpcError)
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
    return e


def ids(rows: object) -> list[tuple[str, str]]:
    assert isinstance(rows, list)
    return sorted((r["tenant"], r["call_id"]) for r in rows)


def test_erase_subject_rpc(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Vault.open(data) as v:
        record(v, "a", tenant="t1")
        record(v, "b", tenant="t1", number=OTHER)
        record(v, "c", tenant="t2")
        record(v, "d", tenant="t2")
        v.change("d", tenant="t2", op="hold", changes={"holds": {"CASE-3": {"placed_us": 1}}})
        record(v, "e", tenant="t3")
    vault = Vault.open(data)
    server = Server(vault, "127.0.0.1:0", auth=TableAuthenticator())
    server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        # a role without the permission; another tenant; every tenant: refused
        denied(address, "t2-qa")
        e = denied(address, "t1-admin", tenant="t2")
        assert "tenant t1" in str(e.details())
        e = denied(address, "t1-admin", all_tenants=True)
        assert "every tenant" in str(e.details())
        assert vault.get_call("c", tenant="t2").state == "sealed"
        # a tenant's admin: its own tenant (dry run first: nothing changes)
        rep = erase_subject(address, "t1-admin", dry_run=True)
        assert ids(rep["erased"]) == [("t1", "a")] and rep["dry_run"] is True
        assert vault.get_call("a", tenant="t1").state == "sealed"
        rep = erase_subject(address, "t1-admin")
        assert ids(rep["erased"]) == [("t1", "a")] and rep["tenants"] == ["t1"]
        assert vault.get_call("a", tenant="t1").state == "erased"
        assert vault.get_call("b", tenant="t1").state == "sealed"
        # a platform identity, every tenant: t2's free call erased, its held one deferred
        rep = erase_subject(address, "root", all_tenants=True)
        assert ids(rep["erased"]) == [("t2", "c"), ("t3", "e")]
        assert ids(rep["already_erased"]) == [("t1", "a")]
        assert ids(rep["deferred"]) == [("t2", "d")]
        assert isinstance(rep["deferred"], list)
        assert rep["deferred"][0]["holds"] == ["CASE-3"]
        assert vault.get_call("d", tenant="t2").pending_erase is not None
        assert NUMBER not in json.dumps(rep)
        with grpc.insecure_channel(address) as ch:
            stub = pbg.LifecycleStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.EraseSubject(
                    pb.EraseSubjectRequest(key="customer_number", value="", reason="r"),
                    timeout=30,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with Client(address) as c:
            st = c.stats()
            assert st.subject_erased_calls == 3 and st.subject_deferred_calls == 1
            rep2 = c.erase_subject("customer_number", OTHER, "req 8", tenant="t1")
            assert ids(rep2["erased"]) == [("t1", "b")]
        # the CLI through the server (the identity: root, tenant default: none there)
        p = run_cli(
            "--server",
            address,
            "erase-subject",
            "--meta",
            f"customer_number={NUMBER}",
            "--reason",
            "req 9",
            "--all-tenants",
            "--json",
        )
        rep3 = json.loads(p.stdout)
        assert ids(rep3["already_erased"]) == [("t1", "a"), ("t2", "c"), ("t3", "e")]
        assert ids(rep3["deferred"]) == [("t2", "d")]
        assert rep3["deferred"][0]["pending_erase"] is True
        p = run_cli(
            "--server", address, "erase-subject", "--meta", "customer_number=+1", "--reason", "r"
        )
        assert "no call of this subject in tenant(s) default" in p.stdout
    finally:
        server.stop()  # closes the vault
    # nowhere in DATA (segments, index, log, keys, the audit trail) in clear
    assert files_containing(data, NUMBER.encode()) == []
    assert files_containing(data, NUMBER[1:].encode()) == []
    audit = b"".join(p.read_bytes() for p in (data / "audit").rglob("*") if p.is_file())
    assert b"erase-subject customer_number (HMAC" in audit

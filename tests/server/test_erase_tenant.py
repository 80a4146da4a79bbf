"""Admin.EraseTenant through a real server on loopback (docs/format.md 8.6): only a
platform identity may erase a tenant; the tenant's calls become unreadable with a
clear error, another tenant's play, export and verify are unaffected, Ingest
refuses a new call of the erased tenant, and the tombstone's leaf has an inclusion
proof.

The identities come from a fixed table keyed by a metadata value (an Authenticator
as access.identity defines it): the tokens and certificates of the identity lane
authenticate the same way, through the same interceptor."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg
from callvault_client.errors import FailedPrecondition

from callvault.access.identity import Identity, Unauthenticated
from callvault.integrity import merkle
from callvault.integrity.leaves import tenant_erase_leaf
from callvault.media import sample
from callvault.server.app import Server
from callvault.vault import Vault
from tests.vault.test_tenant_keys import SEGMENT_BYTES, audio, record, tenant_dir

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


def erase_as(address: str, who: str, tenant: str) -> grpc.RpcError:
    with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as err:
        pbg.AdminStub(ch).EraseTenant(
            pb.EraseTenantRequest(tenant=tenant, reason="r"),
            metadata=[("x-identity", who)],
            timeout=30,
        )
    e = err.value
    assert isinstance(e, grpc.RpcError)
    return e


def test_erase_tenant_rpc(tmp_path: Path) -> None:
    data = tmp_path / "data"
    capture = tmp_path / "call.pcap"
    agent, customer = sample.dialogue(2.0)
    sample.write_capture(
        capture,
        [
            (agent, sample.LegPlan(ssrc=1, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000))),
            (customer, sample.LegPlan(ssrc=2, src=("10.0.0.2", 5002), dst=("10.0.0.1", 4002))),
        ],
    )
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        v.import_call("a", [str(capture)], tenant="t1")  # real Opus: exports
        record(v, "t1", ["b"])
        v.import_call("c", [str(capture)], tenant="t2")
        sound = audio(v, "t2")
    vault = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    server = Server(vault, "127.0.0.1:0", auth=TableAuthenticator())
    server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        # a tenant-scoped admin, and a role without the "tenants" permission: refused
        e = erase_as(address, "t1-admin", "t1")
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "a platform identity" in str(e.details())
        e = erase_as(address, "t2-qa", "t1")
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        assert vault.get_call("a", tenant="t1").state == "sealed"
        assert tenant_dir(data, "t1").exists()
        with Client(address, metadata=[("callvault-reason", "tenant erase test")]) as c:
            assert len(list(c.play("a", tenant="t1"))) > 0
            assert c.export("a", tmp_path / "before.ogg", tenant="t1") > 1000
            reply = c.erase_tenant("t1", "contract ended")
            assert reply.calls == 2 and reply.time_us > 0
            with pytest.raises(FailedPrecondition, match="already erased"):
                c.erase_tenant("t1", "again")
            for call_id in ("a", "b"):
                info = c.get_call(call_id, tenant="t1")
                assert info.call_state == pb.CALL_STATE_ERASED
                assert info.erase_reason == "tenant erased: contract ended"
                with pytest.raises(FailedPrecondition, match="erased"):
                    list(c.play(call_id, tenant="t1"))
                with pytest.raises(FailedPrecondition, match="erased"):
                    c.export(call_id, tmp_path / f"{call_id}.ogg", tenant="t1")
            # verify says erased (what stays verifies), as for an erased call
            assert all(r.ok for r in c.verify(call_ids=["a", "b"], tenant="t1"))
            # the other tenant: play, export and verify as before
            assert c.export("c", tmp_path / "c.ogg", tenant="t2") > 1000
            assert len(list(c.play("c", tenant="t2"))) > 0
            assert all(r.ok for r in c.verify(all=True))
            # the tombstone's leaf is proven in the log
            proof = c.get_inclusion_proof(leaf_index=reply.log_index)
            leaf = merkle.leaf_hash(tenant_erase_leaf("t1", "contract ended", reply.time_us))
            assert proof.leaf_hash == leaf
            merkle.verify_inclusion(
                reply.log_index, proof.tree_size, leaf, list(proof.path), proof.root_hash
            )
            # a new call of the erased tenant is refused with the reason
            with pytest.raises(FailedPrecondition, match="tenant t1 was erased"):
                c.record("z", tenant="t1").end(timeout=30)
    finally:
        server.stop()  # closes the vault
    assert not tenant_dir(data, "t1").exists()
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert audio(v, "t2") == sound and v.verify_all() == []

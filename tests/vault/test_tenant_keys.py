"""Per-tenant key-encryption keys (docs/format.md 8.6) on a real vault: each tenant's
KEK wraps its calls' keys, vaults from before per-tenant KEKs still read, master and
tenant rotation, erasing a tenant (tombstone, proof, reads, refusal, reclaim), and
SIGKILL at each step of a tenant erase or rotation."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callvault.integrity import merkle
from callvault.integrity.leaves import tenant_erase_leaf
from callvault.store import crypto
from callvault.store import records as rec
from callvault.store.segment import SegmentReader
from callvault.vault import Vault, VaultError
from callvault.vault.keys import V2_ONLY, TenantErased

SEGMENT_BYTES = 32 << 10  # small: a call spans several segments
PER_RECORD = 10
ROOT = Path(__file__).resolve().parents[2]


def packets(call_id: str, leg: int, first: int, n: int) -> tuple[np.ndarray, bytes]:
    lengths = np.empty(n, dtype=np.int32)
    parts = []
    for i in range(n):
        d = hashlib.sha256(f"{call_id}/{leg}/{first + i}".encode()).digest()
        k = 20 + d[0] % 40
        parts.append((d * 3)[:k])
        lengths[i] = k
    return lengths, b"".join(parts)


def record(v: Vault, tenant: str, call_ids: list[str], frames: int = 200) -> None:
    """Record and seal the calls of ``tenant`` at once (records interleaved)."""
    writers = [
        v.open_call(c, tenant=tenant, customer_number=f"+1555{i:07d}", agent="ann")
        for i, c in enumerate(call_ids)
    ]
    futures = []
    for first in range(0, frames, PER_RECORD):
        for c, w in zip(call_ids, writers, strict=True):
            for leg in (0, 1):
                futures.append(w.append(leg, first, *packets(c, leg, first, PER_RECORD)))
    for f in futures:
        f.result()
    for w in writers:
        w.seal(summary={"legs": []}, frames=frames)


def audio(v: Vault, tenant: str) -> dict[str, Any]:
    return {
        e.call_id: [(d, n.tolist()) for d, n in v.read_packets(e.call_id, tenant=tenant)]
        for e in v.list_calls(tenant=tenant)
        if e.state != "erased"
    }


def entries(v: Vault, tenant: str) -> dict[str, Any]:
    out = {}
    for e in v.list_calls(tenant=tenant):
        d = dataclasses.asdict(e)
        d.pop("manifest_ref")  # a reclaim may move the SEAL record
        out[e.call_id] = d
    return out


def key_files(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (data / "keys" / "calls").glob("*/*.key")}


def tenant_files(data: Path) -> dict[str, bytes]:
    root = data / "keys" / "tenants"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.glob("*/*.kek")}


def tenant_dir(data: Path, tenant: str) -> Path:
    return data / "keys" / "tenants" / hashlib.sha256(tenant.encode()).hexdigest()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    with Vault.open(d, segment_bytes=SEGMENT_BYTES) as v:
        record(v, "t1", ["a", "b"])
        record(v, "t2", ["c"])
    return d


def test_each_tenant_has_its_own_kek_wrapping_its_call_keys(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        for tenant, calls in (("t1", ["a", "b"]), ("t2", ["c"])):
            kek_file = tenant_dir(data, tenant) / "00000001.kek"
            assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
            # the tenant's KEK is wrapped under the master key file's active KEK
            raw = kek_file.read_bytes()
            assert crypto.wrapped_kek_id(raw) == v.keys.active
            kek = v.keys.unwrap(raw)
            for c in calls:
                for p in (v.call_keys.path(tenant, c), v.call_keys.number_path(tenant, c)):
                    wrapped = p.read_bytes()
                    assert crypto.wrapped_header(wrapped) == (2, 1)
                    key = crypto.unwrap_tenant(kek, wrapped)
                    with pytest.raises(crypto.CryptoError):
                        v.keys.unwrap(wrapped)  # not a key under the master KEK
                assert crypto.unwrap_tenant(kek, v.call_keys.path(tenant, c).read_bytes()) == (
                    v.call_keys.get(tenant, c).key
                )
                assert key == v.call_keys.get_number(tenant, c).key
        # one tenant's KEK opens none of the other's keys
        kek1 = v.keys.unwrap((tenant_dir(data, "t1") / "00000001.kek").read_bytes())
        with pytest.raises(crypto.CryptoError):
            crypto.unwrap_tenant(kek1, v.call_keys.path("t2", "c").read_bytes())
        assert v.customer_number("b", tenant="t1") == "+15550000001"
        assert len(audio(v, "t1")) == 2 and v.verify_all() == []
        assert (data / "keys" / "tenants" / V2_ONLY).exists()


def make_old_format(data: Path) -> None:
    """Turn the vault into one written before per-tenant KEKs: every call key file
    wrapped under the key file's KEK (version 1), no DATA/keys/tenants."""
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        for tenant in v.index.tenants():
            for c in v.index.call_ids(tenant):
                v.call_keys.path(tenant, c).write_bytes(v.keys.wrap(v.call_keys.get(tenant, c)))
                v.call_keys.number_path(tenant, c).write_bytes(
                    v.keys.wrap(v.call_keys.get_number(tenant, c))
                )
    shutil.rmtree(data / "keys" / "tenants")


def test_an_old_format_vault_reads_rotates_and_migrates(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        sound = {t: audio(v, t) for t in ("t1", "t2")}
    make_old_format(data)
    assert all(crypto.wrapped_header(raw)[0] == 1 for raw in key_files(data).values())
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert {t: audio(v, t) for t in ("t1", "t2")} == sound and v.verify_all() == []
        assert v.customer_number("c", tenant="t2") == "+15550000000"
        record(v, "t1", ["new"])  # a new call of an old vault: under t1's new KEK
        assert crypto.wrapped_header(v.call_keys.path("t1", "new").read_bytes()) == (2, 1)
        # master rotation: the 6 old call key files (3 calls, with numbers) and t1's KEK
        assert v.rotate_key() == (2, 6 + 1)
        assert [k.state.name for k in v.keys.versions()] == ["RETIRED", "ACTIVE"]
        assert not (data / "keys" / "tenants" / V2_ONLY).exists()
        assert {t: audio(v, t) for t in ("t1", "t2")} == {**sound, "t1": audio(v, "t1")}
        # a tenant rotation moves the tenant's old keys under its KEK
        assert v.rotate_tenant_key("t2") == (1, 2)
        assert v.rotate_tenant_key("t1") == (2, 6)
        assert all(crypto.wrapped_header(raw)[0] == 2 for raw in key_files(data).values())
        # no version 1 key left: this rotation re-wraps the tenants' KEKs only
        assert v.rotate_key() == (3, 2)
        assert (data / "keys" / "tenants" / V2_ONLY).exists()
        assert audio(v, "t2") == sound["t2"] and v.verify_all() == []


def test_master_rotation_rewraps_only_the_tenant_keks(data: Path) -> None:
    calls, tenants = key_files(data), tenant_files(data)
    segments = {p.name: p.read_bytes() for p in (data / "segments").iterdir()}
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        sound = audio(v, "t1")
        assert v.rotate_key() == (2, 2)  # t1's and t2's KEKs
        assert [k.state.name for k in v.keys.versions()] == ["RETIRED", "ACTIVE"]
        assert audio(v, "t1") == sound and v.verify_all() == []
    assert key_files(data) == calls  # no call key touched
    after = tenant_files(data)
    assert after.keys() == tenants.keys()
    assert all(after[k] != tenants[k] and crypto.wrapped_kek_id(after[k]) == 2 for k in after)
    assert {p.name: p.read_bytes() for p in (data / "segments").iterdir()} == segments


def test_tenant_rotation_rewraps_that_tenants_call_keys(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        sound = {t: audio(v, t) for t in ("t1", "t2")}
        t2_key = v.call_keys.path("t2", "c").read_bytes()
        old_kek = v.keys.unwrap((tenant_dir(data, "t1") / "00000001.kek").read_bytes())
        assert v.rotate_tenant_key("t1") == (2, 4)  # a and b, data and number keys
        assert sorted(p.name for p in tenant_dir(data, "t1").iterdir()) == ["00000002.kek"]
        for c in ("a", "b"):
            wrapped = v.call_keys.path("t1", c).read_bytes()
            assert crypto.wrapped_header(wrapped) == (2, 2)
            with pytest.raises(crypto.CryptoError):
                crypto.unwrap_tenant(old_kek, wrapped)
        assert v.call_keys.path("t2", "c").read_bytes() == t2_key
        assert {t: audio(v, t) for t in ("t1", "t2")} == sound and v.verify_all() == []
        record(v, "t1", ["d"])
        assert crypto.wrapped_header(v.call_keys.path("t1", "d").read_bytes()) == (2, 2)
    with Vault.open(data, read_only=True) as v:  # another process reads it as well
        assert audio(v, "t1")["a"] == sound["t1"]["a"]


def test_erasing_a_tenant(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, "t1", ["big"], frames=1200)  # segments of t1's audio alone
        record(v, "t2", ["e"])
        v.erase("a", tenant="t1", reason="one call first")
        sound, t2 = audio(v, "t2"), entries(v, "t2")
        doc = v.erase_tenant("t1", reason="contract ended")
        size = sum(p.stat().st_size for p in (data / "segments").glob("*.seg"))
        assert doc["calls"] == 2 and doc["keys_destroyed"] and doc["reason"] == "contract ended"
        assert not tenant_dir(data, "t1").exists()
        assert not any(
            v.call_keys.path("t1", c).exists() or v.call_keys.number_path("t1", c).exists()
            for c in ("a", "b", "big")
        )
        for c in ("b", "big"):
            e = v.get_call(c, tenant="t1")
            assert e.state == "erased" and e.erase_reason == "tenant erased: contract ended"
            assert e.erase_log_index == doc["log_index"]
            with pytest.raises(TenantErased, match="tenant t1 was erased"):
                v.read_packets(c, tenant="t1")
            with pytest.raises(TenantErased, match="tenant t1 was erased"):
                v.summary(c, tenant="t1")
            assert v.verify_call(c, tenant="t1") == []  # erased: what stays verifies
        # the call erased before keeps its own erasure
        assert v.get_call("a", tenant="t1").erase_reason == "one call first"
        with pytest.raises(TenantErased, match="tenant t1 was erased: it takes no new calls"):
            v.open_call("z", tenant="t1")
        with pytest.raises(TenantErased, match="already erased"):
            v.erase_tenant("t1", reason="again")
        with pytest.raises(TenantErased):
            v.rotate_tenant_key("t1")
        assert audio(v, "t2") == sound and entries(v, "t2") == t2 and v.verify_all() == []
        # the tombstone: a TENANT_ERASE record and a kind 6 leaf, proven in the log
        size_now, leaf, path, root = v.inclusion_proof(doc["log_index"])
        assert leaf == merkle.leaf_hash(tenant_erase_leaf("t1", "contract ended", doc["time_us"]))
        merkle.verify_inclusion(doc["log_index"], size_now, leaf, path, root)
        tombs = [
            rec.parse(t, body)
            for _, t, body in SegmentReader(data / "segments").scan()
            if t == rec.TENANT_ERASE
        ]
        assert [(b.tenant, b.reason, b.time_us) for b in tombs] == [
            ("t1", "contract ended", doc["time_us"])
        ]
        # the space of t1's audio is reclaimed
        dead = v.reclaimable_bytes()
        assert dead > 0
        r = v.reclaim()
        assert r.bytes_freed > dead * 0.6
        after = sum(p.stat().st_size for p in (data / "segments").glob("*.seg"))
        assert after == size - r.bytes_freed
        assert audio(v, "t2") == sound and v.verify_all() == []
        t1 = entries(v, "t1")
    for kwargs in ({}, {"rebuild_index": True}):  # the same after reopen and reindex
        with Vault.open(data, segment_bytes=SEGMENT_BYTES, **kwargs) as v:  # type: ignore[arg-type]
            assert v.report.replays == [] and v.report.damage == []
            assert entries(v, "t1") == t1 and audio(v, "t2") == sound
            assert v.tenant_erasure("t1") == {k: doc[k] for k in doc if k != "calls"}
            with pytest.raises(TenantErased):
                v.open_call("z", tenant="t1")
            assert v.verify_all() == []


def test_a_tenant_erase_is_refused_while_its_call_is_recorded(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        w = v.open_call("live", tenant="t1")
        with pytest.raises(VaultError, match="being recorded"):
            v.erase_tenant("t1", reason="r")
        w.append(0, 0, *packets("live", 0, 0, PER_RECORD)).result()
        w.release()  # left open (a recorder gone): erased with its tenant
        doc = v.erase_tenant("t1", reason="r")
        assert doc["calls"] == 3 and v.get_call("live", tenant="t1").state == "erased"
        assert v.verify_call("live", tenant="t1") == []
        with pytest.raises(TenantErased):
            v.resume_call("live", tenant="t1")
        with pytest.raises(Exception, match="tenant"):
            v.erase_tenant("t 2", reason="r")  # not a tenant name


CHILD = """
import sys
from callvault.vault import Vault
v = Vault.open(sys.argv[1], segment_bytes=int(sys.argv[2]))
if sys.argv[3] == "erase":
    v.erase_tenant("t1", reason="killed midway")
elif sys.argv[3] == "master":
    v.rotate_key()
else:
    v.rotate_tenant_key("t1")
print("DONE", flush=True)
v.close()
"""


def run_child(data: Path, what: str, step: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CALLVAULT_TENANT_CRASH=step)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "engine"), str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(SEGMENT_BYTES), what],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "step", ["tenant-erase-durable", "tenant-erase-indexed", "tenant-erase-kek-destroyed"]
)
def test_a_tenant_erase_killed_at_each_step_is_finished_on_open(data: Path, step: str) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        sound = audio(v, "t2")
    p = run_child(data, "erase", step)
    assert p.returncode == -9, p.stdout + p.stderr  # SIGKILLed at the step
    twin = data.parent / "twin"
    shutil.copytree(data, twin)
    for d, kwargs in ((data, {}), (twin, {"rebuild_index": True})):
        with Vault.open(d, segment_bytes=SEGMENT_BYTES, **kwargs) as v:  # type: ignore[arg-type]
            assert v.report.replays == [] and v.report.damage == []
            doc = v.tenant_erasure("t1")
            assert doc is not None and doc["keys_destroyed"]
            assert doc["reason"] == "killed midway"
            assert not tenant_dir(d, "t1").exists()
            for c in ("a", "b"):
                assert v.get_call(c, tenant="t1").state == "erased"
                assert not v.call_keys.path("t1", c).exists()
                with pytest.raises(TenantErased):
                    v.read_packets(c, tenant="t1")
            with pytest.raises(TenantErased):
                v.open_call("z", tenant="t1")
            assert audio(v, "t2") == sound and v.verify_all() == []
            assert v.log_size() == 4  # three seals and the tenant's erasure, once


@pytest.mark.parametrize(
    "step", ["tenant-rotate-generation", "tenant-rotate-rewrapped", "tenant-rotate-all-rewrapped"]
)
def test_a_tenant_rotation_killed_midway_loses_no_key(data: Path, step: str) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        sound = {t: audio(v, t) for t in ("t1", "t2")}
    p = run_child(data, "rotate", step)
    assert p.returncode == -9, p.stdout + p.stderr
    # key files under generation 2 and under 1 (none, some or all): both kept
    assert sorted(p.name for p in tenant_dir(data, "t1").iterdir()) == [
        "00000001.kek",
        "00000002.kek",
    ]
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert {t: audio(v, t) for t in ("t1", "t2")} == sound and v.verify_all() == []
        assert v.customer_number("a", tenant="t1") == "+15550000000"
        assert v.rotate_tenant_key("t1") == (3, 4)  # run again: finished
        assert sorted(p.name for p in tenant_dir(data, "t1").iterdir()) == ["00000003.kek"]
        assert {t: audio(v, t) for t in ("t1", "t2")} == sound and v.verify_all() == []


@pytest.mark.parametrize("step", ["master-rotate-call-rewrapped", "master-rotate-tenant-rewrapped"])
def test_a_master_rotation_of_an_old_vault_killed_midway_loses_no_key(
    data: Path, step: str
) -> None:
    make_old_format(data)  # version 1 call keys to re-wrap ...
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        record(v, "t2", ["new"])  # ... and t2's KEK
        sound = {t: audio(v, t) for t in ("t1", "t2")}
    p = run_child(data, "master", step)
    assert p.returncode == -9, p.stdout + p.stderr
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert [k.state.name for k in v.keys.versions()] == ["PREVIOUS", "ACTIVE"]
        assert {t: audio(v, t) for t in ("t1", "t2")} == sound and v.verify_all() == []
        assert v.rotate_key() == (3, 1 + 6)  # run again: t2's KEK and the 6 old files
        assert [k.state.name for k in v.keys.versions()] == ["RETIRED", "RETIRED", "ACTIVE"]
        assert {t: audio(v, t) for t in ("t1", "t2")} == sound and v.verify_all() == []
        assert v.customer_number("new", tenant="t2") == "+15550000000"

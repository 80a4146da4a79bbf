"""Erasure and the archive (real SeaweedFS, tests/s3server.py): an erased call never
comes back from the bucket. Its erasure marker goes up at once (docs/format.md
8.17), a rebuilt catalog restores it ERASED with no key; the next run deletes its
object's versions, GOVERNANCE bypassed (the vault allowed the erasure). The same
for a tenant's erasure. And a catalog rebuilt from the bucket equals the original
(the OPEN record travels as stored: extra, recording_id, decision, subject HMACs)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from callvault.lifecycle import archive as arch
from callvault.media import sample
from callvault.vault import Vault, VaultError
from callvault.vault.keys import TenantErased

DAY_US = 86400 * 1_000_000
PLACES = {"open_ref", "manifest_ref", "transcode_ref", "lifecycle_refs"}


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(p, seconds=1.0)
    return p


def _retain(v: Vault, call_id: str, mode: str, tenant: str = "default") -> None:
    v.change(
        call_id,
        tenant=tenant,
        op="retention",
        changes={
            "retention": {"until_us": v.clock() + 180 * DAY_US, "rule": "r", "mode": mode}
            | {"set_us": 0}
        },
    )


def _rebuild(
    tmp_path: Path, data: Path, settings: dict[str, Any], name: str
) -> tuple[Path, Path, dict[str, Any]]:
    kf = tmp_path / "kek"
    shutil.copy(data / "keys" / "kek", kf)
    new = tmp_path / name
    return new, kf, arch.rebuild_catalog(new, kf, arch.Settings.from_dict(settings))


def _versions(s3: Any, bucket: str, key: str) -> list[str]:
    got = s3.client().list_object_versions(Bucket=bucket, Prefix=key)
    return [v["VersionId"] for v in got.get("Versions", []) if v["Key"] == key]


def _key_files(d: Path) -> list[Path]:
    return sorted((d / "keys" / "calls").rglob("*.key"))


def test_an_erased_call_is_restored_erased_and_its_governance_object_deleted(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    """The reviewer's scenario: default-mode retention (locked GOVERNANCE), archived
    and evicted, erased. Before any run the marker is in the bucket: a rebuild gives
    the call erased, no key file, no export, no customer number. The next run deletes
    the object's versions in spite of the GOVERNANCE lock; the marker stays."""
    data = tmp_path / "data"
    v = Vault.open(data)
    try:
        v.import_call("c0", [str(capture)], customer_number="+15551230000")
        v.import_call("c1", [str(capture)], customer_number="+15551239999")
        _retain(v, "c0", "default")
        a = arch.Archive.from_settings(v, archive_settings).attach()
        assert a.run()["errors"] == []
        arc = v.get_call("c0").archive
        assert arc is not None and arc["mode"] == "GOVERNANCE"
        assert v.retained(v.get_call("c0")) is None
        v.erase("c0", reason="GDPR request")
        bucket, key = archive_settings["bucket"], str(arc["key"])
        assert _versions(s3, bucket, key)  # no run yet: the object is still there
        e0 = v.get_call("c0")
        mk = arch.erased_call_key("", "default", "c0", e0.seal)
        body = s3.client().get_object(Bucket=bucket, Key=mk)["Body"].read()
        m = arch.parse_marker(body, mk)
        assert (m["erased_us"], m["log_index"]) == (e0.erased_us, e0.erase_log_index)
        assert b"GDPR" not in body  # the reason only as its hash
    finally:
        v.close()
    new, kf, done = _rebuild(tmp_path, data, archive_settings, "rebuilt")
    assert (done["calls"], done["erased"]) == (2, 1)
    with Vault.open(new, key_file=kf) as r:
        arch.Archive.from_settings(r, archive_settings).attach()
        e = r.get_call("c0")
        assert e.state == "erased" and e.erased_us == e0.erased_us
        with pytest.raises(VaultError):
            r.export("c0", tmp_path / "out.ogg")
        with pytest.raises(VaultError):
            r.customer_number("c0")
        assert r.customer_number("c1") == "+15551239999"  # the other call whole
        assert len(_key_files(new)) == len(_key_files(data)) == 2  # c1's key and number key
        assert r.verify_call("c0") == [] and r.verify_call("c1") == []
    v = Vault.open(data)
    try:
        a = arch.Archive.from_settings(v, archive_settings).attach()
        rep = a.run()
        assert rep["errors"] == [] and [d["call_id"] for d in rep["deleted"]] == ["c0"]
        assert "kept" not in rep["deleted"][0]["result"]
        assert _versions(s3, bucket, key) == []  # GOVERNANCE bypassed
        assert s3.client().head_object(Bucket=bucket, Key=mk)  # the marker stays
    finally:
        v.close()
    new2, kf, done = _rebuild(tmp_path, data, archive_settings, "rebuilt2")
    with Vault.open(new2, key_file=kf) as r:
        assert [e.call_id for e in r.list_calls()] == ["c1"]  # c0 gone for good


def test_a_governance_override_erasure_deletes_the_locked_object(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    with Vault.open(tmp_path / "data") as v:
        v.import_call("c0", [str(capture)])
        _retain(v, "c0", "governance")
        a = arch.Archive.from_settings(v, archive_settings).attach()
        a.run()
        key = str((v.get_call("c0").archive or {})["key"])
        with pytest.raises(VaultError, match="governance"):
            v.erase("c0", reason="asked")
        v.erase("c0", reason="asked", override_governance=True)
        r = a.run()
        assert r["errors"] == [] and len(r["deleted"]) == 1
        assert _versions(s3, archive_settings["bucket"], key) == []


def test_a_marker_that_did_not_go_up_is_written_by_the_next_run(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    """Erased while no archive was attached (or the bucket unreachable): the next
    run (a new process) finds the erased archived call without a marker and writes
    it before deleting the object."""
    data = tmp_path / "data"
    with Vault.open(data) as v:
        v.import_call("c0", [str(capture)])
        arch.Archive.from_settings(v, archive_settings).attach().run()
    with Vault.open(data) as v:
        v.erase("c0", reason="asked")  # no archive attached: no marker
        mk = arch.erased_call_key("", "default", "c0", v.get_call("c0").seal)
        c = s3.client()
        assert "Contents" not in c.list_objects_v2(Bucket=archive_settings["bucket"], Prefix=mk)
        r = arch.Archive.from_settings(v, archive_settings).attach().run()
        assert r["errors"] == []
        assert c.head_object(Bucket=archive_settings["bucket"], Key=mk)


def test_a_tenant_erasure_is_restored_erased_without_its_kek(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    data = tmp_path / "data"
    with Vault.open(data) as v:
        for t in ("acme", "zeta"):
            v.import_call("c0", [str(capture)], tenant=t, customer_number="+15550001111")
        # the object kept by an S3 legal hold set in the bucket (outside callvault):
        # the rebuild must still not bring the tenant back
        a = arch.Archive.from_settings(v, archive_settings).attach()
        a.run()
        arc = v.get_call("c0", tenant="acme").archive or {}
        s3.client().put_object_legal_hold(
            Bucket=arc["bucket"],
            Key=arc["key"],
            VersionId=arc["version_id"],
            LegalHold={"Status": "ON"},
        )
        v.erase_tenant("acme", reason="contract ended")
        rep = a.run()
        assert "kept" in rep["deleted"][0]["result"]
        tdir = v.call_keys.tenants.dir("acme")
        v_zeta_dir = v.call_keys.tenants.dir("zeta")
    new, kf, done = _rebuild(tmp_path, data, archive_settings, "rebuilt")
    assert done["erased"] == 1 and done["erased_tenants"] == 1
    with Vault.open(new, key_file=kf) as r:
        assert r.tenant_erasure("acme") is not None
        assert r.get_call("c0", tenant="acme").state == "erased"
        assert r.get_call("c0", tenant="zeta").state == "sealed"
        assert r.customer_number("c0", tenant="zeta") == "+15550001111"
        tnew = new / tdir.relative_to(data)  # the erased tenant's KEK never written back
        assert not tnew.exists() or not any(tnew.iterdir())
        assert (new / v_zeta_dir.relative_to(data)).exists()
        with pytest.raises(TenantErased):
            r.import_call("c1", [str(capture)], tenant="acme")
        with pytest.raises(VaultError):
            r.export("c0", tmp_path / "x.ogg", tenant="acme")
    s3.client().put_object_legal_hold(
        Bucket=arc["bucket"],
        Key=arc["key"],
        VersionId=arc["version_id"],
        LegalHold={"Status": "OFF"},
    )


def _fields(e: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(e).items() if k not in PLACES}


def test_a_rebuilt_catalog_equals_the_original(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any]
) -> None:
    """Every field of every entry that is not a record's place: extra,
    recording_id, decision and the subject HMACs come from the OPEN record as
    stored (format 2), checked against the seal."""
    data = tmp_path / "data"
    with Vault.open(data) as v:
        v.subject_keys = ("customer_number", "account")
        v.import_call(
            "c0",
            [str(capture)],
            customer_number="+15551230000",
            extra={"account": "A-17", "crm": {"case": 5}},
            recording_id="rec-0",
            decision={"recorded": True, "rule": "all", "reason": "default"},
            tags=["sales"],
        )
        v.import_call("c1", [str(capture)], agent="bob", direction="inbound")
        assert v.get_call("c0").subjects.keys() == {"customer_number", "account"}
        arch.Archive.from_settings(v, archive_settings).attach().run()
        before = {c: _fields(v.get_call(c)) for c in ("c0", "c1")}
    new, kf, done = _rebuild(tmp_path, data, archive_settings, "rebuilt")
    assert done["calls"] == 2
    with Vault.open(new, key_file=kf) as r:
        arch.Archive.from_settings(r, archive_settings).attach()
        for c in ("c0", "c1"):
            assert _fields(r.get_call(c)) == before[c], c
            assert r.verify_call(c) == []


def test_an_object_whose_open_record_differs_from_its_seal_is_refused() -> None:
    from callvault.store import records as rec

    man = (
        b'{"version":2,"tenant":"t","call_id":"c","start_us":5,"end_us":9,"direction":"",'
        b'"agent":"ann","skill_group":"","tags":[],"legs":["a"],"customer_number_sealed":""}'
    )
    seal = rec.seal_body(
        "t", "c", head=b"\0" * 32, count=0, manifest=man, seal=b"\0" * 32, end_us=9
    )
    for agent, ok in (("ann", True), ("eve", False)):
        meta = {"agent": agent, "legs": ["a"]}
        data = arch.build_object(
            {"tenant": "t", "call_id": "c", "seal": "00"},
            [(rec.OPEN, rec.open_body("t", "c", 5, meta)), (rec.SEAL, seal)],
            b"k",
            None,
            {},
        )
        obj = arch.parse_object(data)
        if ok:
            arch.check_open(obj, "x")
        else:
            with pytest.raises(arch.ArchiveError, match="agent"):
                arch.check_open(obj, "x")
    # an object of format 1 (OPEN rebuilt from the manifest) is still read
    v1 = arch.build_object({"tenant": "t", "call_id": "c"}, [], b"k", None, {}, version=1)
    assert arch.parse_object(v1).version == 1


def _sealing_version_1(v: Vault) -> None:
    """Seal the vault's next calls with a version-1 manifest, as callvault did before
    version 2 (docs/format.md 8.5: no extra, recording_id, decision, retention)."""
    import json

    orig = v._manifest

    def v1(*args: Any, **kw: Any) -> bytes:
        m = json.loads(orig(*args, **kw))
        for k in ("extra", "recording_id", "decision", "retention"):
            m.pop(k, None)
        m["version"] = 1
        return json.dumps(m, sort_keys=True, separators=(",", ":")).encode()

    v._manifest = v1  # type: ignore[method-assign]


def test_a_manifest_version_1_call_rebuilds_with_what_its_seal_does_not_cover(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any]
) -> None:
    """A call sealed with a version-1 manifest: its extra, recording_id and decision
    are only in its OPEN record, and the rebuilt entry has them (format 2 carries
    the OPEN record as stored), equal to the original in every field."""
    data = tmp_path / "data"
    with Vault.open(data) as v:
        _sealing_version_1(v)
        v.import_call(
            "old",
            [str(capture)],
            customer_number="+15551230000",
            extra={"account": "A-9"},
            recording_id="rec-9",
            decision={"recorded": True, "rule": "all", "reason": "default"},
        )
        m = v.manifest("old")
        assert m["version"] == 1 and "extra" not in m and "recording_id" not in m
        assert v.verify_call("old") == []
        arch.Archive.from_settings(v, archive_settings).attach().run()
        before = _fields(v.get_call("old"))
    assert before["extra"] == {"account": "A-9"} and before["recording_id"] == "rec-9"
    new, kf, done = _rebuild(tmp_path, data, archive_settings, "rebuilt")
    assert done["calls"] == 1
    with Vault.open(new, key_file=kf) as r:
        arch.Archive.from_settings(r, archive_settings).attach()
        assert _fields(r.get_call("old")) == before
        assert r.verify_call("old") == []

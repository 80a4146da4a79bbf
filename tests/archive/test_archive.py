"""The archive tier against a real S3 engine (SeaweedFS, tests/s3server.py): calls
archived with Object Lock, evicted, then played, exported, verified and bundled from
the archive; what S3 refuses of locked and held objects; the catalog rebuilt from the
bucket."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from callvault.integrity.bundle import verify_bundle
from callvault.lifecycle import archive as arch
from callvault.media import ogg, sample
from callvault.vault import Vault, VaultError
from callvault.vault.bundle import write_bundle

DAY_US = 86400 * 1_000_000


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(p, seconds=2.0)
    return p


def _vault(d: Path, capture: Path, n: int = 3) -> Vault:
    v = Vault.open(d)
    for i in range(n):
        v.import_call(f"c{i}", [str(capture)], agent="ann", customer_number="+15551230000")
    return v


def _retain(v: Vault, call_id: str, mode: str, until_us: int) -> None:
    v.change(
        call_id,
        op="retention",
        changes={"retention": {"until_us": until_us, "rule": "test", "mode": mode, "set_us": 0}},
    )


def _arc(v: Vault, call_id: str) -> dict[str, Any]:
    """The call's ``archive`` field (it must be archived)."""
    a = v.get_call(call_id).archive
    assert a is not None
    return a


def _export_bytes(v: Vault, call_id: str, out: Path) -> bytes:
    """The call exported as Ogg Opus (a real file, read back), then its packets
    (the Ogg serial number differs between exports; the audio must not)."""
    v.export(call_id, out)
    data, lens = ogg.OggOpusReader(out).packets_data()
    wire = v.read_packets(call_id)
    return data + lens.tobytes() + b"".join(data + lens.tobytes() for data, lens in wire)


def test_object_format_round_trip_and_damage() -> None:
    data = arch.build_object({"tenant": "t", "call_id": "c"}, [(2, b"abc")], b"K", None, {1: b"W"})
    obj = arch.parse_object(data)
    assert obj.records == [(2, b"abc")] and obj.call_key == b"K" and obj.keks == {1: b"W"}
    assert obj.sha256 == hashlib.sha256(data).hexdigest()
    for pos in (3, 20, len(data) - 40, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 1
        with pytest.raises(arch.ArchiveError):
            arch.parse_object(bytes(bad))
    with pytest.raises(arch.ArchiveError, match="truncated|trailer"):
        arch.parse_object(data[:-10])


def test_bad_settings_are_refused_naming_the_key() -> None:
    with pytest.raises(Exception, match="bucket"):
        arch.Settings.from_dict({})
    with pytest.raises(Exception, match="after"):
        arch.Settings.from_dict({"bucket": "abc", "after": "soon"})
    with pytest.raises(Exception, match="unknown"):
        arch.Settings.from_dict({"bucket": "abc", "colour": "red"})
    with pytest.raises(Exception, match="modes"):
        arch.Settings.from_dict({"bucket": "abc", "modes": {"compliance": "GOVERNANCE"}})
    assert arch.Settings.from_dict({"bucket": "abc", "after": "30d"}).after_us == 30 * DAY_US


def test_archive_evict_then_read_from_the_archive(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    v = _vault(tmp_path / "data", capture)
    try:
        now = v.clock()
        _retain(v, "c0", "compliance", now + 2 * DAY_US)
        _retain(v, "c1", "governance", now + 2 * DAY_US)
        before = {c: _export_bytes(v, c, tmp_path / f"{c}-before.ogg") for c in ("c0", "c1", "c2")}
        a = arch.Archive.from_settings(v, archive_settings).attach()
        assert [e.call_id for e in a.due(now)] == ["c0", "c1", "c2"]
        report = a.run()
        assert report["errors"] == []
        assert sorted(x["call_id"] for x in report["archived"]) == ["c0", "c1", "c2"]
        assert sorted(x["call_id"] for x in report["evicted"]) == ["c0", "c1", "c2"]
        modes = {x["call_id"]: x["mode"] for x in report["archived"]}
        assert modes == {"c0": "COMPLIANCE", "c1": "GOVERNANCE", "c2": "NONE"}
        for c in ("c0", "c1", "c2"):
            e = v.get_call(c)
            assert e.local is False and e.archive is not None
            assert list(v.index.records("default", c)) == []  # nothing local to read
            assert v.verify_call(c) == []
            assert _export_bytes(v, c, tmp_path / f"{c}-after.ogg") == before[c]
        b = write_bundle(v, "c0", tmp_path / "bundle")
        r = verify_bundle(b, public_key=v.signer.verifier_key())
        assert r.ok, r.failures
        st = a.status()
        assert st["archived_calls"] == 3 and st["evicted_calls"] == 3 and st["due_calls"] == 0
        assert a.due(v.clock()) == [] and a.run()["archived"] == []  # nothing twice
        # the object in S3 is locked as the call's retention says
        c = s3.client()
        a0 = _arc(v, "c0")
        h = c.head_object(Bucket=a0["bucket"], Key=a0["key"])
        assert h["ObjectLockMode"] == "COMPLIANCE"
        assert int(h["ObjectLockRetainUntilDate"].timestamp()) == (now + 2 * DAY_US) // 10**6
    finally:
        v.close()


def test_without_archive_settings_an_evicted_call_says_where_it_is(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any]
) -> None:
    v = _vault(tmp_path / "data", capture, n=1)
    arch.Archive.from_settings(v, archive_settings).run()
    v.close()
    v = Vault.open(tmp_path / "data")
    try:
        with pytest.raises(VaultError, match="in the archive"):
            v.export("c0", tmp_path / "x.ogg")
        arch.Archive.from_settings(v, archive_settings).attach()
        v.export("c0", tmp_path / "x.ogg")
        assert v.verify_call("c0") == []
    finally:
        v.close()


def test_a_changed_object_is_refused_on_read(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    v = _vault(tmp_path / "data", capture, n=1)
    try:
        a = arch.Archive.from_settings(v, {**archive_settings, "cache_objects": 0}).attach()
        a.run()
        e = v.get_call("c0")
        ea = _arc(v, "c0")
        e.archive = ea
        c = s3.client()
        body = c.get_object(Bucket=ea["bucket"], Key=ea["key"])["Body"].read()
        # an attacker's version of the key: the call still names its own version
        c.put_object(Bucket=ea["bucket"], Key=ea["key"], Body=body[:-1] + b"x")
        assert v.verify_call("c0") == []
        # a forged version id in the index cannot help: the SHA-256 is chained
        listed = c.list_object_versions(Bucket=ea["bucket"], Prefix=ea["key"])["Versions"]
        forged = [
            x["VersionId"]
            for x in listed
            if x["Key"] == ea["key"] and x["VersionId"] != ea["version_id"]
        ]
        assert len(forged) == 1
        ea["version_id"] = forged[0]
        with pytest.raises(arch.ArchiveError, match="SHA-256"):
            a.fetch(e)
    finally:
        v.close()


def _denied(f: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as ex:
        f()
    assert ex.value.response["Error"]["Code"] == "AccessDenied"


def test_locked_and_held_objects_cannot_be_deleted_through_s3(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    v = _vault(tmp_path / "data", capture, n=3)
    try:
        now = v.clock()
        _retain(v, "c0", "compliance", now + DAY_US)
        _retain(v, "c1", "governance", now + DAY_US)
        v.change(
            "c2",
            op="hold",
            changes={"holds": {"CASE-1": {"placed_us": now, "by": None, "reason": "x"}}},
        )
        a = arch.Archive.from_settings(v, archive_settings).attach()
        assert a.run(evict=False)["errors"] == []
        c = s3.client()
        obj = {x: _arc(v, x) for x in ("c0", "c1", "c2")}
        for x in ("c0", "c1", "c2"):
            o = obj[x]
            _denied(
                lambda o=o: c.delete_object(
                    Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"]
                )
            )
        # COMPLIANCE: not even with the governance bypass, and not shortened
        o = obj["c0"]
        _denied(
            lambda: c.delete_object(
                Bucket=o["bucket"],
                Key=o["key"],
                VersionId=o["version_id"],
                BypassGovernanceRetention=True,
            )
        )
        assert "locked (COMPLIANCE) until" in a.delete_call(v.get_call("c0"))
        assert "locked (GOVERNANCE) until" in a.delete_call(v.get_call("c1"))
        # legal hold: not with the bypass either
        o = obj["c2"]
        _denied(
            lambda: c.delete_object(
                Bucket=o["bucket"],
                Key=o["key"],
                VersionId=o["version_id"],
                BypassGovernanceRetention=True,
            )
        )
        assert (
            c.get_object_legal_hold(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])[
                "LegalHold"
            ]["Status"]
            == "ON"
        )
        assert "under legal hold" in a.delete_call(v.get_call("c2"))
        # the release is mirrored onto the object (vault.after_change): deletion allowed
        v.change("c2", op="release", changes={"holds": {}})
        assert (
            c.get_object_legal_hold(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])[
                "LegalHold"
            ]["Status"]
            == "OFF"
        )
        # the object and its later lifecycle records (archive, release): 3 versions
        assert a.delete_call(v.get_call("c2")) == "deleted 3 object version(s)"
        with pytest.raises(botocore.exceptions.ClientError):
            c.head_object(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])
        # a hold placed after archiving reaches the object too
        v.change(
            "c1",
            op="hold",
            changes={"holds": {"CASE-2": {"placed_us": now, "by": None, "reason": "y"}}},
        )
        o = obj["c1"]
        assert (
            c.get_object_legal_hold(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])[
                "LegalHold"
            ]["Status"]
            == "ON"
        )
        # governance with the bypass (an admin's override) once the hold is gone
        v.change("c1", op="release", changes={"holds": {}})
        assert (
            a.delete_call(v.get_call("c1"), bypass_governance=True)
            == "deleted 4 object version(s)"  # object; archive, hold, release records
        )
        # a retention extension is mirrored: the lock moves later, never earlier
        _retain(v, "c0", "compliance", now + 3 * DAY_US)
        o = obj["c0"]
        r = c.get_object_retention(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])
        assert int(r["Retention"]["RetainUntilDate"].timestamp()) == (now + 3 * DAY_US) // 10**6
    finally:
        v.close()


def test_reindex_from_archive_rebuilds_an_empty_data_dir(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any]
) -> None:
    data = tmp_path / "data"
    v = _vault(data, capture, n=2)
    _retain(v, "c1", "governance", v.clock() + DAY_US)
    exports = {c: _export_bytes(v, c, tmp_path / f"{c}.ogg") for c in ("c0", "c1")}
    seals = {c: v.get_call(c).seal for c in ("c0", "c1")}
    arch.Archive.from_settings(v, archive_settings).attach().run()
    heads = {c: (v.get_call(c).lifecycle_count, v.get_call(c).lifecycle_head) for c in ("c0", "c1")}
    old_size = v.log.synced_size
    root = v.log.root(old_size)
    v.close()
    key_file = tmp_path / "kek"
    shutil.copy(data / "keys" / "kek", key_file)
    shutil.rmtree(data)
    new = tmp_path / "rebuilt"
    s = arch.Settings.from_dict(archive_settings)
    done = arch.rebuild_catalog(new, key_file, s)
    assert done["calls"] == 2
    with pytest.raises(arch.ArchiveError, match="empty"):
        arch.rebuild_catalog(new, key_file, s)
    v = Vault.open(new, key_file=key_file)
    try:
        arch.Archive(v, s).attach()
        for c in ("c0", "c1"):
            e = v.get_call(c)
            assert e.seal == seals[c] and e.local is False and e.archive is not None
            # the whole lifecycle chain: the object's records, then <key>.lc/<seq>
            assert (e.lifecycle_count, e.lifecycle_head) == heads[c]
            assert v.verify_call(c) == []
            assert _export_bytes(v, c, tmp_path / f"{c}-rebuilt.ogg") == exports[c]
        assert (v.get_call("c1").retention or {}).get("mode") == "governance"
        # the restored log holds the original one: same root at its old size
        assert v.log.root(old_size) == root
        for c in ("c0", "c1"):  # the seal's leaf is the one of the original log
            assert v.get_call(c).log_index < old_size
        assert v.customer_number("c0") == "+15551230000"
    finally:
        v.close()


def test_peak_mode_calls_archive_once_compacted_and_rebuild(
    tmp_path: Path, archive_settings: dict[str, Any]
) -> None:
    """A raw (G.711) call is not due until compacted; a compacted call's object holds
    its Opus records and TRANSCODE record, and rebuilds; lifecycle records written
    before archiving travel in the object (the chain continues after a rebuild)."""
    from callvault.media.pipeline import Settings
    from callvault.vault.compact import compact_call
    from tests.rtpfeed import write_two_law_capture

    cap = write_two_law_capture(tmp_path / "two.pcap", 2.0)
    data = tmp_path / "data"
    v = Vault.open(data)
    v.import_call("r", [str(cap)], settings=Settings(store_codec="g711"))
    a = arch.Archive.from_settings(v, archive_settings).attach()
    assert a.due(v.clock()) == []  # raw: the compactor goes first
    compact_call(v, "r")
    v.change("r", op="tag", changes={"tags": ["complaint"]}, reason="customer called back")
    _retain(v, "r", "governance", v.clock() + DAY_US)
    before = _export_bytes(v, "r", tmp_path / "r.ogg")
    report = a.run()
    assert report["errors"] == [] and [x["call_id"] for x in report["evicted"]] == ["r"]
    assert v.verify_call("r") == []
    assert _export_bytes(v, "r", tmp_path / "r2.ogg") == before
    head = v.get_call("r").lifecycle_head
    v.close()
    key_file = tmp_path / "kek"
    shutil.copy(data / "keys" / "kek", key_file)
    s = arch.Settings.from_dict(archive_settings)
    assert arch.rebuild_catalog(tmp_path / "new", key_file, s)["calls"] == 1
    with Vault.open(tmp_path / "new", key_file=key_file) as v:
        arch.Archive(v, s).attach()
        e = v.get_call("r")
        assert e.storage == "compacted" and e.tags == ["complaint"] and not e.local
        # tag and retention (in the object), archive and evict (uploaded after): the
        # same chain as before
        assert e.lifecycle_count == 4 and head == e.lifecycle_head
        assert v.verify_call("r") == []
        assert _export_bytes(v, "r", tmp_path / "r3.ogg") == before


def _hold_then_extend(v: Vault, now: int) -> None:
    v.change(
        "c0",
        op="hold",
        changes={"holds": {"CASE-9": {"placed_us": now, "by": None, "reason": "x"}}},
    )
    _retain(v, "c0", "compliance", now + 5 * DAY_US)


def test_changes_after_archiving_are_in_the_bucket_and_rebuilt(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any]
) -> None:
    """A hold placed and a retention extended after a call was archived and evicted:
    their LIFECYCLE records are uploaded (<key>.lc/<seq>), so the rebuilt call has
    the same lifecycle chain, its hold by name, its retention."""
    data = tmp_path / "data"
    v = _vault(data, capture, n=1)
    arch.Archive.from_settings(v, archive_settings).attach().run()
    now = v.clock()
    _hold_then_extend(v, now)
    before = v.get_call("c0")
    v.close()
    key_file = tmp_path / "kek"
    shutil.copy(data / "keys" / "kek", key_file)
    arch.rebuild_catalog(tmp_path / "new", key_file, arch.Settings.from_dict(archive_settings))
    with Vault.open(tmp_path / "new", key_file=key_file) as v:
        e = v.get_call("c0")
        assert (e.lifecycle_count, e.lifecycle_head) == (4, before.lifecycle_head)
        assert e.holds == before.holds and e.retention == before.retention
        with pytest.raises(VaultError, match="legal hold"):
            v.erase("c0", reason="try")


def test_protection_only_on_the_lock_survives_a_rebuild(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    """The hold's record never reached the bucket (its upload lost): the chain stops
    before it, and the rebuilt call takes the hold and the retention from the
    object's lock (mirrored), so it is never less protected."""
    data = tmp_path / "data"
    v = _vault(data, capture, n=1)
    arch.Archive.from_settings(v, archive_settings).attach().run()
    now = v.clock()
    _hold_then_extend(v, now)
    a = _arc(v, "c0")
    v.close()
    s3.client().delete_object(  # record 3 (the hold) was written unlocked: lose it
        Bucket=a["bucket"], Key=arch.record_key(a["key"], 3)
    )
    c = s3.client()
    for ver in c.list_object_versions(Bucket=a["bucket"], Prefix=arch.record_key(a["key"], 3))[
        "Versions"
    ]:
        c.delete_object(Bucket=a["bucket"], Key=ver["Key"], VersionId=ver["VersionId"])
    key_file = tmp_path / "kek"
    shutil.copy(data / "keys" / "kek", key_file)
    arch.rebuild_catalog(tmp_path / "new", key_file, arch.Settings.from_dict(archive_settings))
    with Vault.open(tmp_path / "new", key_file=key_file) as v:
        e = v.get_call("c0")
        assert e.lifecycle_count == 3  # archive, evict, then the restore record
        assert list(e.holds) == ["archive-legal-hold"]
        assert e.retention is not None and e.retention["mode"] == "compliance"
        assert e.retention["until_us"] // 10**6 == (now + 5 * DAY_US) // 10**6
        with pytest.raises(VaultError, match="legal hold"):
            v.erase("c0", reason="try")


def test_an_erased_calls_object_is_deleted_by_the_next_run(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    v = _vault(tmp_path / "data", capture, n=2)
    try:
        _retain(v, "c1", "compliance", v.clock() + DAY_US)
        a = arch.Archive.from_settings(v, archive_settings).attach()
        a.run()
        keys = {c: _arc(v, c)["key"] for c in ("c0", "c1")}
        v.erase("c0", reason="customer asked")
        # c1 under compliance retention: the vault refuses, nothing to delete
        with pytest.raises(VaultError, match="compliance"):
            v.erase("c1", reason="customer asked")
        r = a.run()
        assert r["errors"] == [] and [d["call_id"] for d in r["deleted"]] == ["c0"]
        c = s3.client()
        left = c.list_object_versions(Bucket=archive_settings["bucket"], Prefix=keys["c0"])
        assert not left.get("Versions")
        assert _arc(v, "c0").get("deleted_us")
        assert a.run()["deleted"] == []  # done once
        assert v.verify_call("c0") == []  # the erasure and its lifecycle records verify
    finally:
        v.close()


def test_due_follows_the_vault_clock(tmp_path: Path, capture: Path) -> None:
    """`after` is measured on the vault's clock (tests move it; no S3 needed to
    decide what is due)."""
    v = _vault(tmp_path / "data", capture, n=2)
    try:
        a = arch.Archive.from_settings(v, {"bucket": "not-contacted", "after": "30d"})
        sealed = max(e.end_us for e in v.list_calls())
        assert a.due(sealed + 29 * DAY_US) == []
        assert [e.call_id for e in a.due(sealed + 30 * DAY_US)] == ["c0", "c1"]
        v.clock = lambda: sealed + 31 * DAY_US
        assert len(a.due(v.clock())) == 2 and a.status()["due_calls"] == 2
        # a retention end the clock has passed gives no lock date
        _retain(v, "c0", "compliance", sealed + 30 * DAY_US)
        assert a.lock_of(v.get_call("c0"), v.clock()) == ("NONE", 0)
        _retain(v, "c0", "compliance", sealed + 40 * DAY_US)
        assert a.lock_of(v.get_call("c0"), v.clock()) == ("COMPLIANCE", sealed + 40 * DAY_US)
    finally:
        v.close()


def test_a_hold_that_failed_to_reach_the_object_is_mirrored_by_a_later_process(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    """The hold is placed while no archive is attached (as when the mirror failed, or
    another process changed it): the first run of the next archive puts the legal
    hold on the object."""
    data = tmp_path / "data"
    v = _vault(data, capture, n=1)
    arch.Archive.from_settings(v, archive_settings).run()
    v.close()
    with Vault.open(data) as v:  # no archive attached: nothing mirrored
        now = v.clock()
        v.change(
            "c0", op="hold", changes={"holds": {"C": {"placed_us": now, "by": None, "reason": "r"}}}
        )
        o = _arc(v, "c0")
    c = s3.client()
    try:  # never set: SeaweedFS answers NoSuchObjectLegalHold
        st = c.get_object_legal_hold(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])
        assert st["LegalHold"]["Status"] == "OFF"
    except botocore.exceptions.ClientError as ex:
        assert ex.response["Error"]["Code"] == "NoSuchObjectLegalHold"
    assert "Contents" not in c.list_objects_v2(
        Bucket=o["bucket"], Prefix=arch.record_key(o["key"], 3)
    )  # the hold's record was not uploaded either
    with Vault.open(data) as v:
        assert arch.Archive.from_settings(v, archive_settings).attach().run()["errors"] == []
    # the first run of the next archive found it missing and uploaded it
    got = c.get_object(Bucket=o["bucket"], Key=arch.record_key(o["key"], 3))["Body"].read()
    lc = arch.parse_object(got)
    assert lc.meta["seq"] == 3 and lc.meta["kind"] == "lifecycle"
    assert b'"op":"hold"' in lc.records[0][1]
    status = c.get_object_legal_hold(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])
    assert status["LegalHold"]["Status"] == "ON"
    # a retention end set after archiving an unlocked object: the lock follows
    with Vault.open(data) as v:
        a = arch.Archive.from_settings(v, archive_settings).attach()
        _retain(v, "c0", "compliance", v.clock() + DAY_US)
        assert a.mirror_pending == set()
        until = v.clock() + DAY_US
    r = c.get_object_retention(Bucket=o["bucket"], Key=o["key"], VersionId=o["version_id"])
    assert r["Retention"]["Mode"] == "COMPLIANCE"
    assert abs(r["Retention"]["RetainUntilDate"].timestamp() - until / 1e6) < 5


def test_attaching_a_second_archive_replaces_the_first(tmp_path: Path, capture: Path) -> None:
    v = _vault(tmp_path / "data", capture, n=1)
    try:
        n_change, n_record = len(v.after_change), len(v.after_record)
        first = arch.Archive.from_settings(v, {"bucket": "one-bucket"}).attach()
        second = arch.Archive.from_settings(v, {"bucket": "two-bucket"}).attach()
        assert len(v.after_change) == n_change + 1 and len(v.after_record) == n_record + 1
        assert v.after_change[-1] == second.mirror and first.mirror not in v.after_change
        assert v.fetch_archived == second.audio_bodies
        assert arch.attached(v) is second
    finally:
        v.close()


def test_the_merkle_log_goes_up_in_parts_and_full_parts_once(
    tmp_path: Path,
    capture: Path,
    archive_settings: dict[str, Any],
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arch, "LOG_PART_BYTES", 256)
    data = tmp_path / "data"
    v = _vault(data, capture, n=2)
    arch.Archive.from_settings(v, {**archive_settings, "evict": False}).run()
    v.import_call("c9", [str(capture)])  # more leaves
    arch.Archive.from_settings(v, archive_settings).run()  # a new process's archive
    size = v.log.synced_size
    root = v.log.root(size)
    v.close()
    c = s3.client()
    versions = c.list_object_versions(Bucket=archive_settings["bucket"], Prefix="log/tree.")
    per_key: dict[str, int] = {}
    for ver in versions["Versions"]:
        per_key[ver["Key"]] = per_key.get(ver["Key"], 0) + 1
    assert len(per_key) >= 2
    first = sorted(per_key)[0]
    assert per_key[first] == 1  # a full part is never uploaded again
    key_file = tmp_path / "kek"
    shutil.copy(data / "keys" / "kek", key_file)
    arch.rebuild_catalog(tmp_path / "new", key_file, arch.Settings.from_dict(archive_settings))
    with Vault.open(tmp_path / "new", key_file=key_file) as v:
        assert v.log.size >= size and v.log.root(size) == root


def test_a_held_call_is_archived_but_never_evicted(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any]
) -> None:
    v = _vault(tmp_path / "data", capture, n=2)
    try:
        hold = {"CASE-3": {"placed_us": v.clock(), "by": None, "reason": "court order"}}
        v.change("c0", op="hold", changes={"holds": hold})
        a = arch.Archive.from_settings(v, archive_settings).attach()
        r = a.run()
        assert sorted(x["call_id"] for x in r["archived"]) == ["c0", "c1"]
        assert [x["call_id"] for x in r["evicted"]] == ["c1"]
        e = v.get_call("c0")
        assert e.local and e.archive is not None and e.archive["legal_hold"]
        with pytest.raises(arch.ArchiveError, match="legal hold CASE-3"):
            a.evict(e)
        v.change("c0", op="release", changes={"holds": {}})
        assert [x["call_id"] for x in a.run()["evicted"]] == ["c0"]
    finally:
        v.close()


def test_evicted_audio_is_space_a_reclaim_frees(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any]
) -> None:
    """Eviction makes the audio records dead (docs/format.md 8.14); a reclaim frees
    them; the calls still play and verify, from the archive."""
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=16 << 10) as v:
        for i in range(4):
            v.import_call(f"c{i}", [str(capture)])
        before = {c: _export_bytes(v, c, tmp_path / f"{c}.ogg") for c in ("c0", "c3")}
        audio = sum(r.length for c in range(4) for _, r in v.index.records("default", f"c{c}"))
        dead_before = v.reclaimable_bytes()
        a = arch.Archive.from_settings(v, archive_settings).attach()
        assert len(a.run()["evicted"]) == 4
        assert v.reclaimable_bytes() - dead_before >= audio > 0  # every audio record
        done = v.reclaim(threshold=0.01)
        assert done.bytes_freed >= audio // 2  # closed segments' share (one stays open)
        for c in ("c0", "c3"):
            assert v.verify_call(c) == []
            assert _export_bytes(v, c, tmp_path / f"{c}-after.ogg") == before[c]

"""Disposal of archived calls against a real S3 engine (SeaweedFS): the call's key is
shredded whatever the object's lock says; its object versions are deleted when the
lock allows, and a version the lock keeps is reported with the date, then deleted by
an archive run once the lock has passed (issue 12: "Disposal of an archived call
deletes its object versions when the lock allows and shreds its key either way")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from callvault.lifecycle import archive as arch
from callvault.lifecycle import disposal
from callvault.media import sample
from callvault.vault import Vault, VaultError

DAY_US = 86400 * 1_000_000


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(p, seconds=1.0)
    return p


def _versions(s3: Any, bucket: str, key: str) -> list[str]:
    got = s3.client().list_object_versions(Bucket=bucket, Prefix=key)
    return [v["VersionId"] for v in got.get("Versions", []) if v["Key"] == key]


def test_disposing_of_archived_calls_shreds_the_key_and_deletes_what_the_lock_allows(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any], s3: Any
) -> None:
    v = Vault.open(tmp_path / "data")
    try:
        for c in ("short", "long", "kept"):
            v.import_call(c, [str(capture)], agent="ann")
        now = v.clock()
        # S3 locks run on the S3 server's (real) clock: "short"'s lock passes in 3 s,
        # "long"'s in a day; "kept" is retained by the vault past the disposal below
        for c, mode, until in (
            ("short", "governance", now + 3_000_000),
            ("long", "compliance", now + DAY_US),
            ("kept", "compliance", now + 30 * DAY_US),
        ):
            v.change(
                c,
                op="retention",
                changes={"retention": {"until_us": until, "rule": c, "mode": mode, "set_us": now}},
            )
        a = arch.Archive.from_settings(v, archive_settings).attach()
        report = a.run()
        assert report["errors"] == []
        objects = {c: dict(v.get_call(c).archive or {}) for c in ("short", "long", "kept")}
        assert all(o.get("key") for o in objects.values())
        assert objects["long"]["mode"] == "COMPLIANCE" and objects["short"]["mode"] == "GOVERNANCE"
        assert not any(v.get_call(c).local for c in objects)  # evicted: only in the bucket
        bucket = archive_settings["bucket"]

        time.sleep(3.5)  # "short"'s object lock has passed on the S3 server's clock
        v.clock = lambda: now + 2 * DAY_US  # the vault's: both retention ends passed
        planned = disposal.plan(v)
        assert sorted(i["call_id"] for i in planned.body["calls"]) == ["long", "short"]
        assert all(i["archived"] for i in planned.body["calls"])
        done = disposal.apply(v, planned, archive=disposal_archive(v))
        outcome = {r["call_id"]: r for r in done["calls"]}
        assert {c: r["outcome"] for c, r in outcome.items()} == {
            "short": "disposed",
            "long": "disposed",
        }
        # the key is shredded either way: both erased, neither readable, no key file
        for c in ("short", "long"):
            e = v.get_call(c)
            assert e.state == "erased" and e.disposal is not None
            assert not v.call_keys.path(e.tenant, c).exists()
            with pytest.raises(VaultError):
                v.export(c, tmp_path / f"{c}.ogg")
        # the lock allowed "short"'s versions to go; "long"'s COMPLIANCE lock keeps its
        # version, and the report says until when
        assert outcome["short"]["archive"].startswith("deleted ")
        assert "kept" not in outcome["short"]["archive"]
        assert _versions(s3, bucket, objects["short"]["key"]) == []
        assert "kept 1" in outcome["long"]["archive"]
        assert _versions(s3, bucket, objects["long"]["key"]) == [objects["long"]["version_id"]]
        # the call the vault still retains is untouched, in the bucket and readable
        assert v.get_call("kept").state == "sealed"
        assert _versions(s3, bucket, objects["kept"]["key"]) == [objects["kept"]["version_id"]]
        assert v.verify_call("kept") == []
        v.export("kept", tmp_path / "kept.ogg")
        # the disposed calls' tombstones, receipts and lifecycle chains verify
        assert v.verify_call("short") == [] and v.verify_call("long") == []
    finally:
        v.close()


def disposal_archive(v: Vault) -> Any:
    """The archive attached to the vault: what `callvault dispose` and the server's
    sweeper pass to disposal (server.lc_disposal.archive_of)."""
    from callvault.server.lc_disposal import archive_of

    got = archive_of(v, None)
    assert got is not None
    return got

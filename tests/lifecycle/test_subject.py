"""Erasure by data subject (docs/policy.md "Erasure by data subject", docs/format.md
8.16) on a real vault: the keyed subject index (the number never in clear in the
index, the records or the report), erase-subject erasing and deferring with reasons,
dry runs that change nothing, the index surviving reindex, the backfill of calls
recorded before the index, tenants, the CLI (local and through a real server)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callvault.lifecycle import subject
from callvault.vault import Vault, VaultError

ROOT = Path(__file__).resolve().parents[2]
NUMBER = "+15551234567"
OTHER = "+15559876543"
DAY = 86_400 * 1_000_000


def record(
    v: Vault,
    call_id: str,
    *,
    number: str = NUMBER,
    tenant: str = "default",
    extra: dict[str, Any] | None = None,
    seal: bool = True,
) -> None:
    w = v.open_call(call_id, tenant=tenant, customer_number=number, agent="ann", extra=extra)
    for first in range(0, 40, 10):
        lengths = np.full(10, 30, dtype=np.int32)
        data = hashlib.sha256(f"{call_id}/{first}".encode()).digest() * 10
        for leg in (0, 1):
            w.append(leg, first, lengths, data[:300])
    if seal:
        w.seal(summary={"legs": []}, frames=40)
    else:
        for f in list(w._pending):
            f.result()


def retention(until_us: int, mode: str, rule: str = "r1") -> dict[str, Any]:
    return {"until_us": until_us, "rule": rule, "mode": mode, "set_us": 0}


def files_containing(root: Path, needle: bytes) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and needle in p.read_bytes():
                out.append(p)
    return out


@pytest.fixture
def vault(tmp_path: Path):
    v = Vault.open(tmp_path / "data", segment_bytes=64 << 10)
    yield v
    v.close()


def test_the_index_finds_a_subject_without_the_number_in_clear(
    vault: Vault, tmp_path: Path
) -> None:
    record(vault, "c1")
    record(vault, "c2", number=OTHER)
    record(vault, "c3")
    mac, calls = subject.find(vault, "default", "customer_number", NUMBER)
    assert calls == ["c1", "c3"]
    assert len(bytes.fromhex(mac)) == 32
    assert subject.find(vault, "default", "customer_number", OTHER)[1] == ["c2"]
    assert subject.find(vault, "default", "customer_number", "+1000")[1] == []
    assert vault.get_call("c1").subjects == {"customer_number": mac}
    vault.index.sync()
    vault._writer.flush()
    # neither the segments, the index, the log nor the keys hold the number in clear
    assert files_containing(tmp_path / "data", NUMBER.encode()) == []
    assert files_containing(tmp_path / "data", NUMBER[1:].encode()) == []


def test_erase_subject_erases_free_calls_and_defers_held_and_retained(
    vault: Vault, tmp_path: Path
) -> None:
    for c in ("free", "held", "compliance", "governance", "expired"):
        record(vault, c)
    record(vault, "other", number=OTHER)
    now = vault.clock()
    vault.change("held", op="hold", changes={"holds": {"CASE-17": {"placed_us": now}}})
    vault.change(
        "compliance", op="retention", changes={"retention": retention(now + DAY, "compliance")}
    )
    vault.change(
        "governance",
        op="retention",
        changes={"retention": retention(now + DAY, "governance", "r2")},
    )
    vault.change(
        "expired", op="retention", changes={"retention": retention(now - DAY, "compliance")}
    )
    rep = subject.erase_subject(
        vault, name="customer_number", value=NUMBER, reason="GDPR art. 17 request 42"
    )
    assert sorted(e["call_id"] for e in rep["erased"]) == ["expired", "free"]
    assert all(e["log_index"] >= 0 for e in rep["erased"])
    deferred = {d["call_id"]: d for d in rep["deferred"]}
    assert sorted(deferred) == ["compliance", "governance", "held"]
    assert deferred["held"]["holds"] == ["CASE-17"]
    assert "legal hold CASE-17" in deferred["held"]["why"]
    assert deferred["compliance"]["mode"] == "compliance"
    assert deferred["compliance"]["rule"] == "r1"
    assert deferred["compliance"]["until_us"] == now + DAY
    assert "compliance retention until" in deferred["compliance"]["why"]
    assert deferred["governance"]["mode"] == "governance"
    assert all(d["pending_erase"] for d in deferred.values())
    assert rep["not_found"] is False
    assert NUMBER not in json.dumps(rep) and NUMBER[1:] not in json.dumps(rep)
    assert vault.get_call("free").state == "erased"
    assert vault.get_call("other").state == "sealed"
    for c in deferred:
        e = vault.get_call(c)
        assert e.state == "sealed"
        assert e.pending_erase is not None
        assert e.pending_erase["subject"] == {
            "key": "customer_number",
            "hmac": rep["subject"]["hmac"]["default"],
        }
        assert "GDPR art. 17 request 42" in e.pending_erase["reason"]
    # a second run: the erased are reported as such, the deferred not recorded twice
    again = subject.erase_subject(vault, name="customer_number", value=NUMBER, reason="again")
    assert sorted(e["call_id"] for e in again["already_erased"]) == ["expired", "free"]
    assert again["erased"] == []
    assert vault.get_call("held").lifecycle_count == 2  # the hold, the deferral
    with pytest.raises(VaultError):
        vault.export("free", tmp_path / "free.ogg")


def test_dry_run_changes_nothing(vault: Vault, tmp_path: Path) -> None:
    record(vault, "a")
    record(vault, "b")
    now = vault.clock()
    vault.change("b", op="hold", changes={"holds": {"X": {"placed_us": now}}})
    before = {e.call_id: e for e in vault.list_calls()}
    vault._writer.flush()
    sizes = sorted(p.stat().st_size for p in (tmp_path / "data" / "segments").iterdir())
    rep = subject.erase_subject(
        vault, name="customer_number", value=NUMBER, reason="r", dry_run=True
    )
    assert [e["call_id"] for e in rep["erased"]] == ["a"]
    assert rep["erased"][0]["log_index"] == -1
    assert [d["call_id"] for d in rep["deferred"]] == ["b"]
    assert rep["deferred"][0]["pending_erase"] is False
    after = {e.call_id: e for e in vault.list_calls()}
    assert after == before
    vault._writer.flush()
    assert sorted(p.stat().st_size for p in (tmp_path / "data" / "segments").iterdir()) == sizes


def test_not_found_and_bad_requests(vault: Vault) -> None:
    record(vault, "a")
    rep = subject.erase_subject(vault, name="customer_number", value=OTHER, reason="r")
    assert rep["not_found"] is True
    # a tenant nobody uses: nothing found, no subject key made for it
    rep = subject.erase_subject(
        vault, name="customer_number", value=NUMBER, reason="r", tenant="nobody"
    )
    assert rep["not_found"] is True and rep["tenants"] == ["nobody"]
    assert not vault.call_keys.tenants.subject_path("nobody").exists()
    assert vault.get_call("a").state == "sealed"
    with pytest.raises(subject.SubjectError, match="subject key"):
        subject.erase_subject(vault, name="", value="7", reason="r")
    # an extra key the [subject] keys do not name: looked for in every call
    assert subject.erase_subject(vault, name="account_id", value="7", reason="r")["not_found"]
    with pytest.raises(subject.SubjectError, match="empty"):
        subject.erase_subject(vault, name="customer_number", value="", reason="r")
    with pytest.raises(Exception, match="reason"):
        subject.erase_subject(vault, name="customer_number", value=NUMBER, reason=" ")


def test_reindex_keeps_the_subject_index(tmp_path: Path) -> None:
    vault = Vault.open(tmp_path / "data")
    record(vault, "a")
    record(vault, "b", number=OTHER)
    vault.close()
    v = Vault.open(vault.path, rebuild_index=True)
    try:
        assert subject.find(v, "default", "customer_number", NUMBER)[1] == ["a"]
        v.reindex()
        assert subject.find(v, "default", "customer_number", OTHER)[1] == ["b"]
    finally:
        v.close()


def test_backfill_of_calls_recorded_before_the_index(vault: Vault) -> None:
    # calls recorded before the subject index: no subject key, no HMAC (as an older build)
    vault.subject_keys = ()
    record(vault, "old1")
    record(vault, "old2", number=OTHER)
    record(vault, "open", seal=False)
    vault.subject_keys = ("customer_number",)
    assert vault.get_call("old1").subjects == {}
    assert subject.find(vault, "default", "customer_number", NUMBER)[1] == []
    # a dry run finds them without writing anything
    rep = subject.erase_subject(
        vault, name="customer_number", value=NUMBER, reason="r", dry_run=True
    )
    assert [e["call_id"] for e in rep["erased"]] == ["old1"]
    assert rep["unindexed_open"] == [{"tenant": "default", "call_id": "open"}]
    assert vault.get_call("old1").subjects == {}
    assert vault.get_call("old1").lifecycle_count == 0
    # the backfill stores HMACs in LIFECYCLE records: a reindex keeps them
    done = subject.backfill(vault, "default")
    assert done["indexed"] == 2 and done["open"] == ["open"]
    assert vault.get_call("old1").lifecycle_count == 1
    vault.reindex()
    assert subject.find(vault, "default", "customer_number", NUMBER)[1] == ["old1"]
    assert subject.find(vault, "default", "customer_number", OTHER)[1] == ["old2"]


def test_extra_keys_and_tenants(vault: Vault) -> None:
    vault.subject_keys = ("customer_number", "account_id")
    record(vault, "a", extra={"account_id": "AC-9"}, number="")
    record(vault, "b", tenant="acme", extra={"account_id": 9}, number=NUMBER)
    record(vault, "c", tenant="zeta", number=NUMBER)
    assert subject.find(vault, "default", "account_id", "AC-9")[1] == ["a"]
    assert subject.find(vault, "acme", "account_id", "9")[1] == ["b"]
    # the tenants' keys differ: the same number has another HMAC in each
    ma, _ = subject.find(vault, "acme", "customer_number", NUMBER)
    mz, _ = subject.find(vault, "zeta", "customer_number", NUMBER)
    assert ma and mz and ma != mz
    # one tenant by default; every tenant when asked (None)
    rep = subject.erase_subject(
        vault, name="customer_number", value=NUMBER, reason="r", tenant="acme"
    )
    assert [(e["tenant"], e["call_id"]) for e in rep["erased"]] == [("acme", "b")]
    assert vault.get_call("c", tenant="zeta").state == "sealed"
    rep = subject.erase_subject(
        vault, name="customer_number", value=NUMBER, reason="r", tenant=None
    )
    assert [(e["tenant"], e["call_id"]) for e in rep["erased"]] == [("zeta", "c")]
    assert [(e["tenant"], e["call_id"]) for e in rep["already_erased"]] == [("acme", "b")]


def test_an_erased_tenant_loses_its_subject_key(vault: Vault) -> None:
    record(vault, "a", tenant="acme")
    keyfile = vault.call_keys.tenants.subject_path("acme")
    assert keyfile.exists()
    vault.erase_tenant("acme", reason="contract ended")
    assert not keyfile.exists()
    rep = subject.erase_subject(
        vault, name="customer_number", value=NUMBER, reason="r", tenant=None
    )
    assert rep["not_found"] is True and "acme" not in rep["tenants"]


def test_master_rotation_rewraps_the_subject_key(tmp_path: Path) -> None:
    vault = Vault.open(tmp_path / "data")
    record(vault, "a")
    mac, _ = subject.find(vault, "default", "customer_number", NUMBER)
    vault.rotate_key()
    vault.close()
    v = Vault.open(vault.path)
    try:
        assert subject.find(v, "default", "customer_number", NUMBER) == (mac, ["a"])
    finally:
        v.close()


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    e = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "engine"), str(ROOT / "clients" / "python")]),
    }
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "callvault.cli", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=120,
        input=stdin,
    )


def test_cli_local(tmp_path: Path) -> None:
    data = tmp_path / "data"
    v = Vault.open(data)
    record(v, "a")
    record(v, "b")
    v.change("b", op="hold", changes={"holds": {"CASE-1": {"placed_us": v.clock()}}})
    v.close()
    meta = f"customer_number={NUMBER}"
    r = cli(
        "--data",
        str(data),
        "erase-subject",
        "--meta",
        meta,
        "--reason",
        "req 1",
        "--dry-run",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["dry_run"] and [e["call_id"] for e in rep["erased"]] == ["a"]
    r = cli("--data", str(data), "erase-subject", "--meta", meta, "--reason", "req 1")
    assert r.returncode == 0, r.stderr
    assert "erased 1 call" in r.stdout and "deferred 1" in r.stdout
    assert "CASE-1" in r.stdout
    assert NUMBER not in r.stdout + r.stderr
    r = cli("--data", str(data), "erase-subject", "--meta", "customer_number", "--reason", "x")
    assert r.returncode != 0 and "KEY=VALUE" in r.stderr
    # the value from stdin (out of ps): the erased call is reported as such
    r = cli(
        "--data",
        str(data),
        "erase-subject",
        "--meta",
        "customer_number",
        "--value-from",
        "-",
        "--reason",
        "req 2",
        "--json",
        stdin=NUMBER + "\n",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [e["call_id"] for e in rep["already_erased"]] == ["a"]
    assert [d["call_id"] for d in rep["deferred"]] == ["b"]


def test_cli_subject_reindex(tmp_path: Path) -> None:
    data = tmp_path / "data"
    v = Vault.open(data)
    v.subject_keys = ()  # as recorded by a version before the subject index
    record(v, "old", tenant="t1")
    record(v, "old2", tenant="t2")
    v.close()
    r = cli("--data", str(data), "subject", "reindex", "--all-tenants")
    assert r.returncode == 0, r.stderr
    assert "subject index: 2 call(s) indexed" in r.stdout
    r = cli("--data", str(data), "subject", "reindex", "--all-tenants")
    assert "subject index: 0 call(s) indexed" in r.stdout  # nothing left to do
    with Vault.open(data) as v:
        assert subject.find(v, "t1", "customer_number", NUMBER)[1] == ["old"]
        assert v.get_call("old", tenant="t1").lifecycle_count == 1


def test_an_extra_key_not_configured_is_found_by_looking(vault: Vault) -> None:
    record(vault, "x", extra={"account_id": "Z-1"})
    record(vault, "y", extra={"account_id": "Z-2"})
    assert "account_id" not in vault.get_call("x").subjects  # not a [subject] key
    dry = subject.erase_subject(vault, name="account_id", value="Z-1", reason="r", dry_run=True)
    assert [e["call_id"] for e in dry["erased"]] == ["x"]
    assert vault.get_call("x").lifecycle_count == 0
    rep = subject.erase_subject(vault, name="account_id", value="Z-1", reason="r")
    assert [e["call_id"] for e in rep["erased"]] == ["x"]
    assert vault.get_call("y").state == "sealed"
    # y's HMAC is stored now (a lifecycle record), beside its customer number's
    assert set(vault.get_call("y").subjects) == {"customer_number", "account_id"}
    assert subject.find(vault, "default", "account_id", "Z-2")[1] == ["y"]


def test_subject_settings() -> None:
    assert subject.parse_settings(None) == ("customer_number",)
    assert subject.parse_settings({"keys": ["account_id", "customer_number", "account_id"]}) == (
        "customer_number",
        "account_id",
    )
    for bad, what in (
        ({"keys": "account_id"}, "list of non-empty strings"),
        ({"keys": [""]}, "list of non-empty strings"),
        ({"keys": ["a\x00b"]}, "NUL"),
        ({"key": ["a"]}, "unknown setting"),
    ):
        with pytest.raises(subject.SubjectError, match=what):
            subject.parse_settings(bad)

"""Tags after sealing (issue 12 section 2; docs/policy.md "Tags"): `callvault tag`,
Lifecycle.Tag and callvault.lifecycle.tags.retag. Each change is one LIFECYCLE
record (who, why, what was added and removed), a no-op writes nothing, the bounds
of callvault.ids hold, another tenant's call is NOT_FOUND like a missing one, the
audit entry names the call, and the retention end is recomputed by the policy:
compliance never shortened, governance only by an admin with a reason.

The policy module (callvault.lifecycle.policy) is the policy lane's; until it is
merged, ``StandIn`` below implements the two functions this code uses (``stored``
and ``Policy.retention_for``) with three fixed rules, in this test file only."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from callvault_client import Client
from callvault_client.errors import InvalidArgument, NotFound, PermissionDenied

from callvault.access.context import Rpc
from callvault.errors import InputError
from callvault.lifecycle import tags as tagsmod
from callvault.lifecycle.tags import bound_retention, parse_words, retag
from callvault.server.interceptors import IdentityInterceptor
from callvault.store import records as rec
from callvault.store.segment import SegmentReader
from callvault.vault import Vault, VaultError
from tests.server.access_fixtures import MakeIdentity, metadata_of, serve
from tests.server.access_fixtures import identities as identities  # the fixture

DAY = 86_400 * 10**6
YEAR = 365 * DAY
SEALED_AT = 1_800_000_000_000_000
ROOT = {"name": "root", "role": "admin", "tenant": None, "via": "test"}
QA = {"name": "q", "role": "qa", "tenant": "t1", "via": "test"}


class StandInPolicy:
    """callvault.lifecycle.policy's interface (the policy lane's), three rules: tag
    vip 7 years compliance, tag complaint 2 years governance, tag legal10 10 years
    governance; otherwise 180 days (mode default). First match wins."""

    RULES = (
        ("vip", 7 * YEAR, "compliance"),
        ("legal10", 10 * YEAR, "governance"),
        ("complaint", 2 * YEAR, "governance"),
    )

    def retention_for(
        self, entry: Any, *, tags: list[str] | None = None, now_us: int
    ) -> dict[str, Any] | None:
        tags = entry.tags if tags is None else tags
        for tag, keep, mode in self.RULES:
            if tag in tags:
                return {
                    "until_us": entry.end_us + keep,
                    "rule": f"tag-{tag}",
                    "mode": mode,
                    "set_us": now_us,
                }
        return {
            "until_us": entry.end_us + 180 * DAY,
            "rule": "default",
            "mode": "default",
            "set_us": now_us,
        }


POLICY = StandInPolicy()


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The stand-in as the module callvault.lifecycle.policy (its stored policy)."""
    mod = types.ModuleType(tagsmod.POLICY_MODULE)
    mod.stored = lambda vault: POLICY  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, tagsmod.POLICY_MODULE, mod)
    return mod


def seal(v: Vault, call_id: str, tenant: str = "t1", tags: tuple[str, ...] = ()) -> None:
    w = v.open_call(call_id, tenant=tenant, agent="ann", tags=tags, start_us=SEALED_AT - 10**6)
    w.append(0, 0, np.full(3, 7, dtype=np.int32), bytes(21)).result()
    w.seal(frames=3, end_us=SEALED_AT, summary={})


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    with Vault.open(tmp_path / "data") as v:
        v.clock = lambda: SEALED_AT + DAY
        v.retention_at_seal = lambda e, end: POLICY.retention_for(e, now_us=end)
        seal(v, "c1", tags=("training",))
        yield v


def lifecycle_docs(v: Vault, call_id: str) -> list[dict[str, Any]]:
    e = v.get_call(call_id, tenant="t1")
    out = []
    for seg, off, length in e.lifecycle_refs:
        from callvault.store.segment import RecordRef

        rtype, raw = v._reader.read(RecordRef(seg, off, length))
        out.append(json.loads(rec.parse(rtype, raw).doc))
    return out


# -- the library --------------------------------------------------------------------


def test_add_and_remove_write_one_record_each_and_a_noop_writes_none(vault: Vault) -> None:
    r = retag(
        vault,
        "c1",
        tenant="t1",
        add=["complaint"],
        remove=["training"],
        by=QA,
        reason="customer complained",
        policy=None,
    )
    assert r.written and r.added == ["complaint"] and r.removed == ["training"]
    assert r.entry.tags == ["complaint"] and r.entry.lifecycle_count == 1
    [doc] = lifecycle_docs(vault, "c1")
    assert doc["op"] == "tag" and doc["by"] == QA and doc["reason"] == "customer complained"
    assert doc["set"] == {"tags": ["complaint"]}
    assert doc["detail"] == {"added": ["complaint"], "removed": ["training"]}
    # adding what is there, removing what is not: nothing written, and it says so
    again = retag(vault, "c1", tenant="t1", add=["complaint"], remove=["nope"], by=QA, policy=None)
    assert not again.written and again.entry.lifecycle_count == 1
    assert "nothing to change" in again.sentence() and "no record written" in again.sentence()
    assert vault.verify_call("c1", tenant="t1") == []


@pytest.mark.parametrize(
    ("add", "remove", "message"),
    [
        (["x" * 65], [], "at most 64"),
        (["a\x00b"], [], "without NUL"),
        ([""], [], "non-empty"),
        (["x"], ["x"], "both added and removed"),
        ([], [], "no tag to add or remove"),
        ([f"t{i}" for i in range(33)], [], "at most 32"),
    ],
)
def test_bounds(vault: Vault, add: list[str], remove: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        retag(vault, "c1", tenant="t1", add=add, remove=remove, policy=None)
    assert vault.get_call("c1", tenant="t1").lifecycle_count == 0


def test_the_tag_count_bound_counts_the_tags_already_there(vault: Vault) -> None:
    retag(vault, "c1", tenant="t1", add=[f"t{i}" for i in range(31)], policy=None)
    with pytest.raises(InputError, match="would have 34 tags: at most 32"):
        retag(vault, "c1", tenant="t1", add=["y", "z"], policy=None)


def test_parse_words() -> None:
    assert parse_words(["+complaint", "-training", "+vip"]) == (["complaint", "vip"], ["training"])
    with pytest.raises(InputError, match="write \\+TAG"):
        parse_words(["complaint"])
    with pytest.raises(InputError):
        parse_words(["+"])


def test_open_and_erased_calls_are_refused(vault: Vault) -> None:
    vault.open_call("live", tenant="t1")
    with pytest.raises(VaultError, match="still being recorded"):
        retag(vault, "live", tenant="t1", add=["x"], policy=None)
    seal(vault, "gone")
    vault.erase("gone", tenant="t1", reason="test")
    with pytest.raises(VaultError, match="is erased"):
        retag(vault, "gone", tenant="t1", add=["x"], policy=None)


def test_a_concurrent_change_is_retried_once(vault: Vault) -> None:
    class Racing(StandInPolicy):
        raced = 0

        def retention_for(self, entry: Any, **kw: Any) -> dict[str, Any] | None:
            if not self.raced:  # another change lands between the read and the write
                self.raced += 1
                vault.change("c1", tenant="t1", op="tag", changes={"tags": ["training", "b"]})
            return super().retention_for(entry, **kw)

    r = retag(vault, "c1", tenant="t1", add=["complaint"], by=ROOT, policy=Racing())
    assert r.entry.tags == ["training", "b", "complaint"] and r.entry.lifecycle_count == 2


def test_reindex_gives_the_same_entry(vault: Vault, stand_in: types.ModuleType) -> None:
    retag(vault, "c1", tenant="t1", add=["complaint"], by=ROOT, reason="r")
    retag(vault, "c1", tenant="t1", add=["vip"], remove=["training"], by=ROOT, reason="r")
    before = vault.get_call("c1", tenant="t1")
    vault.reindex()
    assert vault.get_call("c1", tenant="t1") == before
    assert vault.verify_all() == []
    assert list(vault.index.search("t1", tag="vip")) == [before]
    assert list(vault.index.search("t1", tag="training")) == []


# -- retention recomputed ---------------------------------------------------------


def test_a_complaint_tag_extends_retention_by_policy(
    vault: Vault, stand_in: types.ModuleType
) -> None:
    assert vault.get_call("c1", tenant="t1").retention["rule"] == "default"  # type: ignore[index]
    r = retag(vault, "c1", tenant="t1", add=["complaint"], by=QA)  # the stored policy
    ret = r.entry.retention
    assert ret is not None
    assert (ret["until_us"], ret["rule"], ret["mode"]) == (
        SEALED_AT + 2 * YEAR,
        "tag-complaint",
        "governance",
    )
    assert "Retention extended to" in r.sentence()
    [doc] = lifecycle_docs(vault, "c1")
    assert doc["set"]["retention"] == ret


def test_compliance_is_never_shortened(vault: Vault) -> None:
    r = retag(vault, "c1", tenant="t1", add=["vip"], by=ROOT, reason="r", policy=POLICY)
    seven = r.entry.retention
    assert seven is not None and seven["mode"] == "compliance"
    # removing vip: the policy says 180 days; nobody shortens compliance, not root
    r = retag(vault, "c1", tenant="t1", remove=["vip"], by=ROOT, reason="because", policy=POLICY)
    assert r.written and r.entry.tags == ["training"] and r.entry.retention == seven
    assert "never shortened" in r.sentence()
    assert "retention" not in lifecycle_docs(vault, "c1")[-1]["set"]
    # a later end from another rule extends it, and the mode stays compliance
    r = retag(vault, "c1", tenant="t1", add=["legal10"], by=QA, policy=POLICY)
    ret = r.entry.retention
    assert ret is not None
    assert (ret["until_us"], ret["mode"], ret["rule"]) == (
        SEALED_AT + 10 * YEAR,
        "compliance",
        "tag-legal10",
    )
    # erase is refused until then, for everyone
    with pytest.raises(VaultError, match="compliance retention"):
        vault.erase("c1", tenant="t1", reason="x", override_governance=True)
    # once the compliance end is past, the policy's end applies again
    vault.clock = lambda: SEALED_AT + 11 * YEAR
    r = retag(vault, "c1", tenant="t1", remove=["legal10"], by=QA, policy=POLICY)
    assert r.entry.retention is not None and r.entry.retention["rule"] == "default"
    assert vault.verify_call("c1", tenant="t1") == []


def test_governance_is_shortened_only_by_an_admin_with_a_reason(vault: Vault) -> None:
    retag(vault, "c1", tenant="t1", add=["complaint"], by=QA, policy=POLICY)
    two = vault.get_call("c1", tenant="t1").retention
    for who, reason in ((QA, "resolved"), (ROOT, ""), (None, "resolved")):
        r = retag(
            vault, "c1", tenant="t1", remove=["complaint"], by=who, reason=reason, policy=POLICY
        )
        assert r.entry.retention == two and "only by an admin giving a reason" in r.sentence()
        retag(vault, "c1", tenant="t1", add=["complaint"], by=QA, policy=POLICY)
    r = retag(
        vault,
        "c1",
        tenant="t1",
        remove=["complaint"],
        by=ROOT,
        reason="complaint resolved",
        policy=POLICY,
    )
    ret = r.entry.retention
    assert ret is not None and (ret["rule"], ret["until_us"]) == ("default", SEALED_AT + 180 * DAY)
    assert "by an admin with a reason" in r.sentence()


def test_bound_retention_rules() -> None:
    now = 100
    comp = {"until_us": 1000, "rule": "a", "mode": "compliance", "set_us": 1}
    gov = {"until_us": 1000, "rule": "g", "mode": "governance", "set_us": 1}
    short = {"until_us": 500, "rule": "b", "mode": "default", "set_us": 2}
    long = {"until_us": 2000, "rule": "c", "mode": "governance", "set_us": 2}
    assert bound_retention(comp, short, now_us=now, may_shorten_governance=True)[0] == comp
    out, _ = bound_retention(comp, long, now_us=now, may_shorten_governance=False)
    assert out == dict(long, mode="compliance")
    assert bound_retention(gov, short, now_us=now, may_shorten_governance=False)[0] == gov
    assert bound_retention(gov, short, now_us=now, may_shorten_governance=True)[0] == short
    # a later end in a mode that would no longer protect it: later, still governance
    later_default = {"until_us": 3000, "rule": "d", "mode": "default", "set_us": 2}
    out, said = bound_retention(gov, later_default, now_us=now, may_shorten_governance=False)
    assert out == dict(later_default, mode="governance") and "stays governance" in said[0]
    out, _ = bound_retention(gov, later_default, now_us=now, may_shorten_governance=True)
    assert out == later_default
    # past ends bind nothing; no proposal keeps what there is
    assert bound_retention(comp, short, now_us=5000, may_shorten_governance=False)[0] == short
    assert bound_retention(comp, None, now_us=now, may_shorten_governance=False) == (comp, [])
    assert bound_retention(None, short, now_us=now, may_shorten_governance=False)[0] == short


def test_without_a_policy_the_retention_stays(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No policy module in this build, or none applied: tags change, retention stays."""
    before = vault.get_call("c1", tenant="t1").retention
    monkeypatch.setitem(sys.modules, tagsmod.POLICY_MODULE, None)  # not importable
    assert tagsmod.stored_policy(vault) is None
    r = retag(vault, "c1", tenant="t1", add=["vip"], by=ROOT, reason="r")
    assert r.written and r.entry.retention == before
    mod = types.ModuleType(tagsmod.POLICY_MODULE)
    mod.stored = lambda vault: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, tagsmod.POLICY_MODULE, mod)  # none applied
    r = retag(vault, "c1", tenant="t1", remove=["training"], by=ROOT, reason="r")
    assert r.written and r.entry.retention == before


# -- the server and the command line ------------------------------------------------


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Rpc, str]]:
    seen: list[tuple[Rpc, str]] = []
    original = IdentityInterceptor._finish

    def finish(self: IdentityInterceptor, rpc: Rpc, outcome: str) -> None:
        seen.append((rpc, outcome))
        original(self, rpc, outcome)

    monkeypatch.setattr(IdentityInterceptor, "_finish", finish)
    return seen


def test_tag_through_a_server(
    tmp_path: Path,
    identities: MakeIdentity,
    finished: list[tuple[Rpc, str]],
    stand_in: types.ModuleType,
) -> None:
    data = tmp_path / "data"
    with Vault.open(data) as v:
        v.retention_at_seal = lambda e, end: POLICY.retention_for(e, now_us=end)
        seal(v, "c1", tags=("training",))
        seal(v, "c9", tenant="t2")
    with contextlib.contextmanager(serve)(data) as world:
        qa = identities("qa-1", "qa", "t1") + [("callvault-reason", "qa review")]
        with Client(world.address, metadata=qa) as c:
            info = c.tag("c1", add=["complaint"], remove=["training"])
            assert list(info.tags) == ["complaint"] and info.lifecycle.changes == 1
            assert info.retention.rule == "tag-complaint"
            assert info.retention.mode == "governance"
            assert "added complaint; removed training" in info.lifecycle.note
            again = c.tag("c1", add=["complaint"])
            assert again.lifecycle.changes == 1 and "no record written" in again.lifecycle.note
            got = c.get_call("c1")
            assert got.retention.until_us == info.retention.until_us
            assert got.lifecycle.manifest_version == 2 and list(got.holds) == []
            # bounds: INVALID_ARGUMENT, nothing written
            with pytest.raises(InvalidArgument, match="at most 64"):
                c.tag("c1", add=["x" * 65])
            # another tenant's call: NOT_FOUND, the message of a missing one
            with pytest.raises(NotFound) as other:
                c.tag("c9", tenant="t2", add=["x"])
            with pytest.raises(NotFound) as missing:
                c.tag("nope", add=["x"])  # its own tenant's, not there
            assert other.value.message == "no call c9 in tenant t2"
            assert missing.value.message == "no call nope in tenant t1"
        # an agent may not tag
        agent = identities("ag-1", "agent", "t1")
        with Client(world.address, metadata=agent) as c, pytest.raises(PermissionDenied):
            c.tag("c1", add=["x"])
        # the audit trail's entries name the call
        tags_rpcs = [(r, o) for r, o in finished if r.method.endswith("/Tag")]
        assert [r.calls for r, _ in tags_rpcs[:2]] == [[("t1", "c1")], [("t1", "c1")]]
        assert tags_rpcs[0][1] == "OK"
        v = world.server.vault
        e = v.get_call("c1", tenant="t1")
        assert e.lifecycle_count == 1 and v.verify_call("c1", tenant="t1") == []
        doc = lifecycle_docs(v, "c1")[0]
        assert doc["by"]["name"] == "qa-1" and doc["by"]["role"] == "qa"
        assert doc["by"]["tenant"] == "t1" and doc["by"]["via"].startswith("token:")
        assert doc["reason"] == "qa review"
        # the command line against the server
        token = metadata_of("sup-1", "supervisor", "t1")[0][1].split(" ", 1)[1]
        out = cli(
            [
                "--server",
                world.address,
                "--token",
                token,
                "tag",
                "c1",
                "+vip",
                "-complaint",
                "--reason",
                "vip customer",
            ]
        )
        assert "added vip; removed complaint" in out
        info_out = cli(["--server", world.address, "--token", token, "info", "c1", "--json"])
        shown = json.loads(info_out)
        assert shown["tags"] == ["vip"] and shown["lifecycle_changes"] == 2
        assert shown["retention"]["mode"] in ("compliance", "governance")


def cli(argv: list[str], data: Path | None = None) -> str:
    args = [sys.executable, "-m", "callvault.cli"]
    if data is not None:
        args += ["--data", str(data)]
    p = subprocess.run(args + argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_tag_on_a_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Vault.open(data) as v:
        seal(v, "c1", tenant="t1", tags=("training",))
    out = cli(["--tenant", "t1", "tag", "c1", "+complaint", "-training", "--reason", "why"], data)
    assert "added complaint; removed training (lifecycle record 1)" in out
    out = cli(["--tenant", "t1", "tag", "c1", "+complaint"], data)
    assert "nothing to change" in out
    shown = json.loads(cli(["--tenant", "t1", "ls", "--json"], data))
    assert shown[0]["tags"] == ["complaint"] and shown[0]["lifecycle_changes"] == 1
    assert shown[0]["holds"] == []
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "callvault.cli",
            "--data",
            str(data),
            "--tenant",
            "t1",
            "tag",
            "c1",
            "complaint",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "write +TAG" in p.stderr
    with Vault.open(data) as v:
        assert v.verify_all() == []
        e = v.get_call("c1", tenant="t1")
        assert e.lifecycle_count == 1
    with SegmentReader(data / "segments") as r:
        docs = [json.loads(rec.parse(t, b).doc) for _, t, b in r.scan() if t == rec.LIFECYCLE]
    assert docs[0]["by"]["via"] == "local" and docs[0]["reason"] == "why"

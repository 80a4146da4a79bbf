"""The audit trail on real files (access/audit.py, docs/format.md 8.12): chain, framing,
torn tails, tampering, the Merkle leaf in a real vault's log, anomaly rules on an
injected clock, tenant views."""

from __future__ import annotations

import json
import struct
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from crc32c import crc32c

from callvault.access import audit
from callvault.access.anomaly import parse_rules
from callvault.access.context import Rpc
from callvault.access.identity import Identity
from callvault.errors import InputError
from callvault.integrity import merkle
from callvault.server.interceptors import PERMISSIONS
from callvault.vault import Vault

METHODS = list(PERMISSIONS)
PLAY = "/callvault.v1.Archive/Play"
EXPORT = "/callvault.v1.Archive/Export"
ANN = Identity("ann", "qa", "t1", "token:a1")


class Clock:
    def __init__(self, us: int) -> None:
        self.us = us

    def __call__(self) -> int:
        self.us += 1
        return self.us


def rpc(method: str = PLAY, ident: Identity = ANN, calls: tuple[str, ...] = ("c1",)) -> Rpc:
    r = Rpc(ident, method, "ipv4:127.0.0.1:5555", reason="ticket 7")
    r.calls = [("t1", c) for c in calls]
    r.audio_seconds, r.audio_bytes = 12.3456, 4000
    return r


def fill(trail: audit.AuditTrail, n: int) -> None:
    for i in range(n):
        trail.sink(rpc(calls=(f"c{i}",)), "OK")


def rewrite(directory: Path, change: Any, *, rechain: bool) -> None:
    """Rewrite the trail's frames with ``change(doc)`` applied; ``rechain``: recompute
    every link and checksum after it (and the marker), as a careful forger would;
    else fix only the changed frame's checksum (its stored link stays)."""
    path = directory / audit.TRAIL_FILE
    entries = list(audit.read_entries(directory))
    out = bytearray(path.read_bytes()[: audit.HEADER_SIZE])
    h = audit.GENESIS
    for e in entries:
        doc = change(dict(e.doc))
        body = audit.canonical(doc)
        h = audit.link(h, body) if rechain else e.hash
        out += audit.frame(body, h)
    path.write_bytes(bytes(out))
    if rechain:
        marker = struct.pack(">4sHHQQ32s", b"CVAS", 1, 0, len(entries), len(out), h)
        (directory / audit.SYNCED_FILE).write_bytes(marker + struct.pack(">I", crc32c(marker)))


def test_entries_hold_every_field_and_survive_reopening(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000_000_000)
    trail = audit.AuditTrail(tmp_path, clock=clock)
    trail.sink(rpc(), "OK")
    trail.sink(rpc(EXPORT, Identity("(unauthenticated)", "", None, "none"), ()), "UNAUTHENTICATED")
    head = trail.head
    trail.close()
    got = list(audit.read_entries(tmp_path))
    assert [e.seq for e in got] == [1, 2]
    d = got[0].doc
    assert d["identity"] == {"name": "ann", "role": "qa", "tenant": "t1", "via": "token:a1"}
    assert (d["method"], d["outcome"], d["calls"]) == (PLAY, "OK", [["t1", "c1"]])
    assert (d["audio_seconds"], d["audio_bytes"]) == (12.346, 4000)
    assert (d["peer"], d["reason"], d["time_us"]) == (
        "ipv4:127.0.0.1:5555",
        "ticket 7",
        clock.us - 1,
    )
    assert got[1].doc["identity"]["tenant"] is None and got[1].doc["outcome"] == "UNAUTHENTICATED"
    again = audit.AuditTrail(tmp_path, clock=clock)
    assert (again.count, again.head) == (2, head)
    again.sink(rpc(), "OK")
    again.close()
    r = audit.verify(tmp_path)
    assert (r.entries, r.problems) == (3, [])
    # the chain is the documented one: h_n = SHA-256(tag || h_{n-1} || canonical entry)
    h = audit.GENESIS
    for e in audit.read_entries(tmp_path):
        h = audit.link(h, json.dumps(e.doc, sort_keys=True, separators=(",", ":")).encode())
        assert h == e.hash


def test_torn_tail_is_cut_on_open_and_the_rest_verifies(tmp_path: Path) -> None:
    trail = audit.AuditTrail(tmp_path, sync="always")
    fill(trail, 5)
    trail.close()
    size = (tmp_path / "trail").stat().st_size
    # a crash in the middle of writing entry 6 (after the marker of 1..5) and a frame
    # whose link is wrong (garbage that happens to be framed)
    extra = audit.frame(audit.canonical({"seq": 6, "kind": "rpc"}), bytes(32))
    with open(tmp_path / "trail", "ab") as f:
        f.write(extra + b"\x00\x00\x01")
    trail = audit.AuditTrail(tmp_path)
    assert trail.count == 5 and trail.truncated == len(extra) + 3
    assert (tmp_path / "trail").stat().st_size == size
    fill(trail, 1)
    trail.close()
    assert audit.verify(tmp_path).problems == []
    assert [e.seq for e in audit.read_entries(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_edited_bytes_are_named(tmp_path: Path) -> None:
    trail = audit.AuditTrail(tmp_path)
    fill(trail, 6)
    trail.close()
    entries = list(audit.read_entries(tmp_path))
    clean = (tmp_path / "trail").read_bytes()
    raw = bytearray(clean)
    at = entries[3].offset + raw[entries[3].offset :].index(b'"ann"') + 1
    raw[at] = ord("b")  # "bnn": the bytes of entry 4 changed on disk
    (tmp_path / "trail").write_bytes(bytes(raw))
    r = audit.verify(tmp_path)
    assert r.first_bad == 4
    assert "audit entry 4" in str(r.problems[0]) and "checksum" in str(r.problems[0])
    # the checksum fixed too: the link names it
    (tmp_path / "trail").write_bytes(clean)
    rewrite(tmp_path, lambda d: dict(d, outcome="OK!") if d["seq"] == 4 else d, rechain=False)
    r = audit.verify(tmp_path)
    assert r.first_bad == 4 and "hash link is wrong" in str(r.problems[0])


def test_the_head_is_a_merkle_leaf_and_a_rechained_trail_is_caught(tmp_path: Path) -> None:
    vault = Vault.open(tmp_path / "v")
    try:
        d = tmp_path / "v" / "audit"
        trail = audit.AuditTrail(d, log_size=vault.log_size())
        vault.before_checkpoint.append(lambda: trail.commit_leaf(vault.append_leaf))
        fill(trail, 5)
        vault.checkpoint()
        assert trail.commit_leaf(vault.append_leaf) is None  # did not grow: no new leaf
        fill(trail, 5)
        vault.checkpoint()
        trail.close()
        first, second = trail.leaves
        assert (first.count, second.count) == (5, 10)
        assert vault.log.leaf_hash(second.log_index) == merkle.leaf_hash(second.leaf_data())
        assert audit.verify(d, vault.log).problems == []
        # entry 8 altered and every link after it recomputed: the frames and links all
        # check, but the head at 10 is not the one the log holds
        rewrite(
            d,
            lambda x: dict(x, identity=dict(x["identity"], name="eve")) if x["seq"] == 8 else x,
            rechain=True,
        )
        r = audit.verify(d, vault.log)
        assert len(r.problems) == 1 and r.first_bad == 6
        assert "entries 1..10" in str(r.problems[0]) and "6..10" in str(r.problems[0])
        # a trail cut short (entries removed, marker too) is caught by the leaf
        path = d / audit.TRAIL_FILE
        path.write_bytes(path.read_bytes()[: list(audit.read_entries(d))[7].offset])
        (d / audit.SYNCED_FILE).unlink()
        r = audit.verify(d, vault.log)
        assert any("only 7 entries" in str(p) for p in r.problems)
    finally:
        vault.close()


def test_a_leaf_record_whose_leaf_never_landed_is_cut(tmp_path: Path) -> None:
    vault = Vault.open(tmp_path / "v")
    try:
        d = tmp_path / "v" / "audit"
        trail = audit.AuditTrail(d, log_size=vault.log_size())
        fill(trail, 2)

        def failing(data: bytes, before: Any) -> int:
            before(vault.log_size())  # the record is written, then the log fails
            raise OSError("disk on fire")

        assert trail.commit_leaf(failing) is None and "disk on fire" in trail.error
        assert audit.read_leaves(d) == ([], "")  # its record is cut at once
        trail.close()
        # a kill between the record and the leaf leaves a record the log does not reach
        raw = struct.pack(">QQ32sQ", vault.log_size(), 2, trail.head, 5)
        (d / audit.LEAVES_FILE).write_bytes(raw + struct.pack(">I", crc32c(raw)))
        assert len(audit.verify(d, vault.log).problems) == 1  # "not in the Merkle log"
        trail = audit.AuditTrail(d, log_size=vault.log_size())
        assert trail.leaves == [] and audit.read_leaves(d) == ([], "")
        assert trail.commit_leaf(vault.append_leaf) is not None
        trail.close()
        assert audit.verify(d, vault.log).problems == []
    finally:
        vault.close()


def berlin(hour: int, minute: int = 0) -> int:
    t = datetime(2026, 12, 7, hour, minute, tzinfo=ZoneInfo("Europe/Berlin"))
    return int(t.timestamp() * 1_000_000)


def test_anomaly_rules_fire_on_the_injected_clock(tmp_path: Path) -> None:
    rules = parse_rules(
        [
            {"name": "bulk-listen", "method": "play", "max_calls": 3, "per": "1h"},
            {
                "name": "after-hours-export",
                "method": ["export", "getbundle"],
                "outside": "08:00-19:00",
                "timezone": "Europe/Berlin",
            },
        ],
        METHODS,
    )
    clock = Clock(berlin(10))
    trail = audit.AuditTrail(tmp_path, clock=clock, observer=rules)
    for c in ("a", "b", "a", "c"):  # three distinct calls: not more than 3
        trail.sink(rpc(calls=(c,)), "OK")
    trail.sink(rpc(calls=("x",)), "PERMISSION_DENIED")  # not played: not counted
    assert trail.alerts == 0
    trail.sink(rpc(calls=("d",)), "CANCELLED")  # a 4th distinct call within the hour
    assert trail.alerts == 1
    trail.sink(rpc(calls=("e",)), "OK")  # fired already in this window
    assert trail.alerts == 1
    trail.sink(rpc(EXPORT, calls=("a",)), "OK")  # 10:00 in Berlin: working hours
    assert trail.alerts == 1
    clock.us = berlin(19, 30)
    trail.sink(rpc(EXPORT, calls=("a",)), "OK")
    assert trail.alerts == 2
    clock.us = berlin(21)  # an hour and more later: the window emptied, 3 calls again
    for c in ("p", "q", "r"):
        trail.sink(rpc(calls=(c,)), "OK")
    assert trail.alerts == 2
    trail.close()
    alerts = [e.doc for e in audit.read_entries(tmp_path) if e.doc["kind"] == "alert"]
    assert [(a["rule"], a["cause"]) for a in alerts] == [
        ("bulk-listen", 6),
        ("after-hours-export", 10),
    ]
    assert "ann touched 4 distinct calls" in alerts[0]["detail"]
    assert "19:30" in alerts[1]["detail"] and alerts[1]["identity"]["name"] == "ann"
    assert audit.verify(tmp_path).problems == []


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ({"method": "play", "max_calls": 3, "per": "1h"}, "needs a name"),
        ({"name": "r", "method": "plya", "max_calls": 3, "per": "1h"}, "'plya' is not a callvault"),
        ({"name": "r", "method": "play", "max_calls": 0, "per": "1h"}, "at least 1"),
        ({"name": "r", "method": "play", "max_calls": 3, "per": "1x"}, "'1x' is not a span"),
        ({"name": "r", "method": "play", "max_calls": 3}, "needs per"),
        ({"name": "r", "method": "play"}, "either max_calls and per, or outside"),
        ({"name": "r", "method": "export", "outside": "8-19"}, "not working hours"),
        (
            {"name": "r", "method": "export", "outside": "08:00-19:00", "timezone": "Mars/Base"},
            "'Mars/Base' is not known",
        ),
        ({"name": "r", "method": "play", "max_calls": 3, "per": "1h", "color": 1}, "unknown key"),
    ],
)
def test_bad_rules_are_refused_with_the_rule_and_why(rule: dict[str, Any], why: str) -> None:
    with pytest.raises(InputError) as e:
        parse_rules([rule], METHODS)
    assert why in str(e.value)
    if "name" in rule:
        assert "rule 'r'" in str(e.value)


def test_filters_and_tenant_views(tmp_path: Path) -> None:
    trail = audit.AuditTrail(tmp_path, clock=Clock(1_000))
    trail.sink(rpc(calls=("c1",)), "OK")
    platform = Identity("root", "admin", None, "open")
    mixed = rpc(ident=platform, calls=())
    mixed.calls = [("t1", "c1"), ("t2", "c9")]
    trail.sink(mixed, "OK")
    trail.sink(rpc(ident=platform, calls=()), "OK")
    trail.close()
    entries = list(audit.read_entries(tmp_path))
    on_c1 = audit.Filter(call_id="c1", tenant="t1")
    assert [e.seq for e in entries if on_c1.matches(e)] == [1, 2]
    assert [e.seq for e in entries if audit.Filter(identity="root").matches(e)] == [2, 3]
    assert [e.seq for e in entries if audit.Filter(since_us=1_002).matches(e)] == [2, 3]
    views = [audit.tenant_view(e.doc, "t1") for e in entries]
    assert views[2] is None  # a platform identity's entry that touched no call of t1
    assert views[1] is not None and views[1]["calls"] == [["t1", "c1"]]  # t2's call left out
    assert audit.tenant_view(entries[1].doc, "t3") is None
    with pytest.raises(InputError):
        audit.Filter(kind="other")


def test_a_tenant_sees_its_identities_and_platform_access_to_its_calls_only() -> None:
    """Another tenant's identity naming this tenant's call (it got NOT_FOUND) is not
    shown to this tenant: its name, address and reason are the other tenant's."""
    from callvault.access.audit import tenant_view

    def entry(tenant: str | None, calls: list[list[str]]) -> dict[str, object]:
        ident = {"name": "x", "role": "qa", "tenant": tenant, "via": "token:1"}
        return {"kind": "rpc", "identity": ident, "calls": calls, "peer": "ipv4:10.0.0.9:1"}

    mine = entry("t1", [["t1", "a"]])
    probe = entry("t2", [["t1", "a"]])
    platform = entry(None, [["t1", "a"], ["t2", "b"]])
    assert tenant_view(mine, "t1") == mine
    assert tenant_view(probe, "t1") is None
    assert tenant_view(platform, "t1") == dict(platform, calls=[["t1", "a"]])
    assert tenant_view(platform, "t3") is None
    assert tenant_view(probe, None) == probe


def test_verify_accounts_for_every_log_leaf(tmp_path: Path) -> None:
    """Every leaf of the Merkle log is a call's (seal, erasure, transcoding), a decision's, a tenant
    erasure's or an audit leaf record: `audit verify` is OK on such a vault, and names
    the leaves left unaccounted when the audit leaf records are removed (what one would
    do to hide a rewritten trail)."""
    from callvault_client import Client

    from callvault.media import sample
    from callvault.media.pipeline import Settings
    from callvault.server.app import Server
    from callvault.vault.compact import compact_call
    from tests.servers import run_cli

    data = tmp_path / "data"
    capture = tmp_path / "call.pcap"
    sample.demo_capture(capture, seconds=1.0)
    with Vault.open(data) as v:
        for call_id in ("a", "b"):
            v.import_call(call_id, [str(capture)])
        v.erase("b", reason="test")
        v.import_call("c", [str(capture)], tenant="t9")
        v.erase_tenant("t9", reason="test")
        v.record_decision("d", {"recorded": False, "rule": "consent"}, tenant="t1")
        # peak mode: a raw call compacted (a seal leaf, then a transcoding leaf)
        v.import_call("r", [str(capture)], settings=Settings(store_codec="g711"))
        compact_call(v, "r")
    server = Server(Vault.open(data), "127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{server.port}") as c:
            c.get_call("a")
            c.get_checkpoint()  # an audit leaf
            c.get_call("a")
    finally:
        server.stop()  # another audit leaf
    ok = run_cli("--data", str(data), "audit", "verify")
    assert "audit trail OK" in ok.stdout and "2 audit leaves checked" in ok.stdout, ok.stdout
    (data / "audit" / "leaves").unlink()
    bad = run_cli("--data", str(data), "audit", "verify", ok=False)
    assert bad.returncode == 1
    assert bad.stdout.count("nor an audit leaf record") == 2, bad.stdout


def test_an_entry_lists_at_most_max_calls() -> None:
    """A sidecar's stream starts calls for days: its entry names the first MAX_CALLS
    and says there were more, once."""
    from callvault.access import context as rpcctx

    rpc = Rpc(Identity("sidecar", "recorder", "t1", "token:1"), "/x", "ipv4:127.0.0.1:1")
    rpcctx.begin(rpc)
    try:
        for i in range(rpcctx.MAX_CALLS + 5):
            rpcctx.note_call("t1", f"c{i}")
            rpcctx.note_call("t1", f"c{i}")  # twice: listed once
    finally:
        rpcctx.end()
    assert len(rpc.calls) == rpcctx.MAX_CALLS and rpc.calls[0] == ("t1", "c0")
    assert (
        rpc.detail == f"more than {rpcctx.MAX_CALLS} calls: the first {rpcctx.MAX_CALLS} are listed"
    )

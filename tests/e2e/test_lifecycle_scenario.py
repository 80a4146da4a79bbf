"""Issue 12's acceptance scenario, end to end with real processes: the `callvault`
command line as child processes, a real `callvault serve` with real tokens, time
moved with Debian's `faketime` (the wall clock only: FAKETIME_DONT_FAKE_MONOTONIC=1).

1. a data dir and a retention policy (default 180d, vip 7y compliance, complaint 2y
   governance) applied with `policy apply`;
2. 20 one-second calls imported (the four tagged vip at recording by `callvault
   import`, most others by the library in the test's process); through a server
   over gRPC with tokens: +complaint on some, vip removed from one (its compliance
   end must not shorten), a hold kept on one ordinary call, another placed and
   released under dual control (the requester's own approval refused);
3. the server stopped, time moved past each horizon: +181 d the ordinary calls go
   except the held one (report signed, verified offline, tampered copy refused;
   receipts proven against a signed checkpoint; keys gone, space reclaimed);
   +733 d (through a server under faketime) the complaint calls go; +2560 d the vip
   calls go, the one whose vip tag was removed included; the held call stays;
4. a clock that went back (the real clock after +7y) is refused;
5. (step 7) `reindex` rebuilds the same calls from the records, `verify --all` and
   `audit verify` pass, the audit trail names who did each hold step.

The steps are the module's tests, in order; each needs the ones before it.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from callvault_client import Client

from callvault.integrity import chain, checkpoint, merkle
from callvault.integrity.leaves import lifecycle_leaf
from callvault.lifecycle import policy
from callvault.media import sample
from callvault.store import records
from callvault.store.segment import RecordRef, SegmentReader
from callvault.vault import Vault

from ..lifecycle.disposal_helpers import child_env
from ..servers import Proc, start_server

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime")

DAY_US = 86_400 * 1_000_000
POLICY = """\
[retention]
default = "180d"

[[retention.rule]]
name = "vip"
match = { tag = "vip" }
keep = "7y"
mode = "compliance"

[[retention.rule]]
name = "complaint"
match = { tag = "complaint" }
keep = "2y"
mode = "governance"
"""
CALLS = [f"c{i:02d}" for i in range(1, 21)]
VIP = CALLS[0:4]  # tagged vip at recording
UNVIP = CALLS[3]  # ... and vip removed after sealing: its compliance end stays
COMPLAINT = CALLS[4:7]  # +complaint after sealing
ORDINARY = CALLS[7:]  # the default's 180 days
HELD = CALLS[7]  # a hold placed by L1 and kept
RELEASED = CALLS[8]  # a hold placed and released (L1 requests, L2 approves)
# the horizons (calendar: 2y may hold a 29 February, 7y two of them)
SHIFT_180D = "+181d"
SHIFT_2Y = "+733d"
SHIFT_7Y = "+2560d"
# the server writes small segments: the imports' segment closes, so the disposal's
# reclaim can give its space back; one second of Opus is a small part of a call's
# records (OPEN, SEAL, manifest), hence the low threshold of the reclaim after a
# disposal (the same file is `dispose --config`'s)
SERVER_CONFIG = """\
reclaim_interval_s = 0
segment_bytes = 32768

[disposal]
interval_s = 0
reclaim_threshold = 0.1
"""


@dataclass
class Scenario:
    root: Path
    data: Path
    tokens: dict[str, str] = field(default_factory=dict)
    seals: dict[str, str] = field(default_factory=dict)
    retention: dict[str, dict[str, Any]] = field(default_factory=dict)
    public_key: str = ""
    disposed: list[str] = field(default_factory=list)
    steps: int = 0  # the steps passed so far


@pytest.fixture(autouse=True)
def in_order(request: pytest.FixtureRequest) -> None:
    """Step N (test_N_...) runs on what the steps before it left: they must have
    passed (each test ends by counting itself in ``sc.steps``)."""
    sc: Scenario = request.getfixturevalue("sc")
    n = int(request.node.name.split("_")[1])
    assert sc.steps == n - 1, f"step {sc.steps + 1} did not pass: step {n} cannot run"


def cv(
    sc: Scenario,
    *args: str,
    shift: str = "",
    ok: bool = True,
    local: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`callvault [--data DATA] ARGS` as a child process, under `faketime -f SHIFT`
    when given; with ``ok`` it must exit 0."""
    cmd = [sys.executable, "-m", "callvault.cli", *(("--data", str(sc.data)) if local else ())]
    cmd += args
    if shift:
        cmd = ["faketime", "-f", shift, *cmd]
    e = child_env(FAKETIME_DONT_FAKE_MONOTONIC="1", **(env or {}))
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=120)
    if ok:
        assert p.returncode == 0, f"{' '.join(args)}: exit {p.returncode}\n{p.stdout}{p.stderr}"
    return p


def remote(
    sc: Scenario, server: Proc, who: str, *args: str, shift: str = "", ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """`callvault --server ADDR --token TOKEN-OF-WHO ARGS` (gRPC with a real token)."""
    srv = ("--server", server.address, "--token", sc.tokens[who])
    return cv(sc, *srv, *args, shift=shift, ok=ok, local=False)


def listing(sc: Scenario, shift: str = "") -> dict[str, dict[str, Any]]:
    """`ls --json` by call id."""
    return {c["call_id"]: c for c in json.loads(cv(sc, "ls", "--json", shift=shift).stdout)}


def report_calls(text: str) -> list[str]:
    return sorted(c["call_id"] for c in json.loads(text)["report"]["calls"])


def faked_server(sc: Scenario, shift: str) -> Proc:
    """A real `callvault serve` with libfaketime preloaded (the `faketime` wrapper
    would take the SIGTERM that stops it and leave the server running)."""
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert libs, "faketime is installed but no /usr/lib/*/faketime/libfaketime.so.1"
    cfg = sc.root / "serve.toml"
    fake = {"LD_PRELOAD": libs[0], "FAKETIME": shift, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return start_server(sc.data, args=("--config", str(cfg)), env=fake, log_dir=sc.root)


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("scenario")
    yield Scenario(root=root, data=root / "data")


# -- 1. the policy, the calls -------------------------------------------------------


def test_1_policy_applied_and_calls_recorded(sc: Scenario) -> None:
    (sc.root / "policy.toml").write_text(POLICY)
    cv(sc, "init")
    out = cv(sc, "policy", "apply", str(sc.root / "policy.toml")).stdout
    assert "vip: tag = vip -> keep 7y, compliance" in out, out
    assert "complaint: tag = complaint -> keep 2y, governance" in out, out
    assert "default: every other call -> keep 180d, default" in out, out
    capture = sc.root / "call.pcap"
    sample.demo_capture(capture, seconds=1.0)
    # the capture's packets carry a time of 2023: each call starts a minute ago instead
    start_s = int(time.time()) - 60
    # the vip calls (and one other) through `callvault import`, tagged at recording;
    # the others through the same library call in this process (the time of 15
    # more processes saved), sealed under the stored policy as the CLI does
    by_cli = [*VIP, CALLS[-1]]
    for call in by_cli:
        i = CALLS.index(call)
        meta = ["--meta", f"start={start_s + i}"]
        if call in VIP:
            meta += ["--meta", "tags=vip"]
        out = cv(sc, "import", "--call-id", call, *meta, str(capture)).stdout
        assert f"{call} sealed" in out, out
    with Vault.open(sc.data) as v:
        assert policy.attach(v) is not None
        for i, call in enumerate(CALLS):
            if call not in by_cli:
                v.import_call(call, [str(capture)], start_us=(start_s + i) * 1_000_000)
    calls = listing(sc)
    assert sorted(calls) == CALLS
    for call, c in calls.items():
        r = c["retention"]
        end_us = c["start_us"] + round(c["seconds"] * 1e6)
        if call in VIP:
            assert (r["rule"], r["mode"]) == ("vip", "compliance"), (call, r)
            # 7 calendar years from its end: 2555 days + the 29 Februaries between
            assert 7 * 365 * DAY_US <= r["until_us"] - end_us <= (7 * 365 + 2) * DAY_US, r
        else:
            assert (r["rule"], r["mode"]) == ("default", "default"), (call, r)
            assert abs(r["until_us"] - end_us - 180 * DAY_US) < 1_000_000, (call, r)
        sc.retention[call] = r
    # tokens of the identities the server will see (tenant "default", the calls')
    for name, role in (("sup", "supervisor"), ("L1", "legal"), ("L2", "legal")):
        tok = cv(sc, "token", "create", "--name", name, "--role", role, "--tenant", "default")
        sc.tokens[name] = tok.stdout.strip().splitlines()[-1]
    tok = cv(sc, "token", "create", "--name", "root", "--role", "admin", "--platform")
    sc.tokens["root"] = tok.stdout.strip().splitlines()[-1]
    assert all(t.startswith("cvt_") for t in sc.tokens.values()), sc.tokens
    sc.steps = 1


# -- 2. changes through a server ----------------------------------------------------


def test_2_tags_and_holds_over_grpc(sc: Scenario) -> None:
    (sc.root / "serve.toml").write_text(SERVER_CONFIG)
    server = start_server(sc.data, args=("--config", str(sc.root / "serve.toml")), log_dir=sc.root)
    try:
        with Client(server.address, token=sc.tokens["sup"]) as client:
            for call in COMPLAINT:
                info = client.tag(call, add=["complaint"], reason="customer complaint 4711")
                assert list(info.tags) == ["complaint"], info
                r = info.retention
                assert (r.rule, r.mode) == ("complaint", "governance"), (call, r)
                old = sc.retention[call]["until_us"]
                # 2 calendar years from the call's end, instead of 180 days
                assert 730 * DAY_US <= r.until_us - old + 180 * DAY_US <= 731 * DAY_US, r
            info = client.tag(UNVIP, remove=["vip"], reason="no longer a vip customer")
            assert list(info.tags) == [], info
            r = info.retention
            kept = sc.retention[UNVIP]
            assert (r.until_us, r.rule, r.mode) == (kept["until_us"], "vip", "compliance"), (
                "the compliance end must not shorten when the vip tag is removed",
                r,
                info.lifecycle.note,
            )
            assert "never shortened" in info.lifecycle.note, info.lifecycle.note
        # L1 places a hold on two ordinary calls
        for call, case in ((HELD, "CASE-17"), (RELEASED, "CASE-18")):
            place = ("hold", "place", call, "--name", case, "--reason", f"subpoena {case}")
            out = remote(sc, server, "L1", *place).stdout
            assert call in out, out
        # a release of CASE-18: requested by L1, L1's own approval refused, L2 approves
        release = ("hold", "release", RELEASED, "--name", "CASE-18", "--reason", "settled")
        remote(sc, server, "L1", *release)
        approve = ("hold", "approve-release", RELEASED, "--name", "CASE-18")
        own = remote(sc, server, "L1", *approve, ok=False)
        assert own.returncode != 0, own.stdout + own.stderr
        assert "requested by L1: another identity approves it (dual control)" in own.stderr, (
            own.stderr
        )
        remote(sc, server, "L2", *approve)
        holds = json.loads(remote(sc, server, "L2", "hold", "ls", "--json").stdout)["holds"]
        named = [(h["name"], [c["call_id"] for c in h["calls"]]) for h in holds]
        assert named == [("CASE-17", [HELD])], holds
    finally:
        assert server.stop() == 0, server.output()
    calls = listing(sc)
    assert calls[HELD]["holds"] == ["CASE-17"], calls[HELD]
    assert calls[RELEASED]["holds"] == [], calls[RELEASED]
    for call in COMPLAINT:
        sc.retention[call] = calls[call]["retention"]
    sc.steps = 2


# -- 3. time moves on ---------------------------------------------------------------


def dispose_step(
    sc: Scenario, shift: str, due: list[str], server: Proc | None = None
) -> dict[str, Any]:
    """At ``shift``: the dry run lists exactly ``due`` and changes nothing; then the
    disposal applies it (on --data DATA, or through ``server`` as a platform admin)."""

    def run(*args: str) -> str:
        if server is None:
            return cv(sc, *args, shift=shift).stdout
        return remote(sc, server, "root", *args, shift=shift).stdout

    plan = run("dispose", "--dry-run", "--json")
    assert report_calls(plan) == sorted(due), plan
    assert json.loads(plan)["status"] == "planned"
    if server is None:
        before = listing(sc, shift=shift)
        assert all(before[c]["state"] == "sealed" for c in due), "a dry run changes nothing"
    cfg = ("--config", str(sc.root / "serve.toml")) if server is None else ()
    out = json.loads(run("dispose", *cfg, "--json"))
    assert out["status"] == "applied", out
    assert report_calls(json.dumps(out)) == sorted(due), out
    res = out["results"]
    assert res["disposed"] == len(due) and res["skipped"] == 0, res
    sc.disposed = sorted({*sc.disposed, *due})
    return out


def check_disposed(sc: Scenario, shift: str, due: list[str], report_id: str) -> None:
    """Exactly the calls disposed so far are gone (key file shredded, export refused
    with a clear message); the others are kept, and every call verifies."""
    after = listing(sc, shift=shift)
    gone = sorted(c for c, e in after.items() if e["state"] == "erased")
    assert gone == sc.disposed, f"disposed {gone}, expected {sc.disposed}"
    with Vault.open(sc.data, read_only=True) as v:
        for call in CALLS:
            key = v.call_keys.path("default", call)
            assert key.exists() == (call not in sc.disposed), (call, key)
            if call in due:
                assert v.get_call(call).disposal["report"] == report_id  # type: ignore[index]
    for call in sorted({due[0], due[-1]}):  # the keys of all are checked above
        exp = cv(sc, "export", call, "-o", str(sc.root / f"{call}.ogg"), shift=shift, ok=False)
        assert exp.returncode == 1, (call, exp.stdout, exp.stderr)
        assert f"call {call}: its key was destroyed (erased)" in exp.stderr, (call, exp.stderr)
    kept = [c for c in CALLS if c not in sc.disposed]
    assert HELD in kept and after[HELD]["holds"] == ["CASE-17"], after[HELD]
    verified = cv(sc, "verify", *kept, shift=shift).stdout
    assert f"OK: {len(kept)} call(s) verified" in verified, verified
    # the tombstones verify too: seal, receipt and erasure in the log
    verified = cv(sc, "verify", *due, shift=shift).stdout
    assert f"OK: {len(due)} call(s) verified" in verified, verified


def test_3_after_180_days_the_ordinary_calls_go_but_the_held_one(sc: Scenario) -> None:
    key = cv(sc, "checkpoint", "--public-key").stderr.strip().splitlines()[-1]
    sc.public_key = key
    (sc.root / "log.pub").write_text(key + "\n")
    stored = json.loads(cv(sc, "stats", "--json", shift=SHIFT_180D).stdout)
    due = [c for c in ORDINARY if c != HELD]
    assert RELEASED in due
    out = dispose_step(sc, SHIFT_180D, due)
    check_disposed(sc, SHIFT_180D, due, out["report"]["id"])
    # space: the reclaim after the batch gave the disposed calls' audio back
    reclaim = out["results"]["reclaim"]
    assert reclaim.get("bytes_freed", 0) > 0, reclaim
    now = json.loads(cv(sc, "stats", "--json", shift=SHIFT_180D).stdout)
    assert now["stored_bytes"] < stored["stored_bytes"], (stored, now)
    assert now["reclaimed_bytes"] >= reclaim["bytes_freed"], now
    # the report (kept in the data dir) verifies offline with the log's public key
    rid = out["report"]["id"]
    kept = sc.data / "lifecycle" / "reports" / f"{rid}.json"
    ok = cv(sc, "dispose", "verify-report", str(kept), "--public-key", key, local=False)
    assert f"verifies: {len(due)} call(s)" in ok.stdout, ok.stdout
    ok = cv(
        sc,
        "dispose",
        "verify-report",
        str(kept),
        "--public-key",
        str(sc.root / "log.pub"),
        local=False,
    )
    assert "verifies" in ok.stdout, ok.stdout
    # a tampered copy does not: a call left out, a date moved
    for n, tamper in enumerate(("drop", "date")):
        doc = json.loads(kept.read_text())
        if tamper == "drop":
            doc["report"]["calls"].pop()
        else:
            doc["report"]["calls"][0]["until_us"] += DAY_US
        bad = sc.root / f"tampered-{n}.json"
        bad.write_text(json.dumps(doc))
        p = cv(sc, "dispose", "verify-report", str(bad), "--public-key", key, ok=False, local=False)
        assert p.returncode == 1 and "does not verify" in p.stderr, (tamper, p.stdout, p.stderr)
    # each receipt (the call's dispose LIFECYCLE leaf) is in the log that a signed
    # checkpoint commits to
    note = cv(sc, "checkpoint", shift=SHIFT_180D).stdout
    signed = checkpoint.verify(note, key)
    receipts = {r["call_id"]: r for r in out["results"]["calls"]}
    assert sorted(receipts) == sorted(due)
    reader = SegmentReader(sc.data / "segments")
    with Vault.open(sc.data, read_only=True) as v:
        for call in due:
            e = v.get_call(call)
            idx = receipts[call]["receipt_leaf"]
            # the receipt is the call's last LIFECYCLE record: read it, chain it
            assert e.lifecycle_leaves[-1] == idx, (call, idx, e.lifecycle_leaves)
            rtype, raw = reader.read(RecordRef(*e.lifecycle_refs[-1]))
            body = records.parse(rtype, raw)
            assert rtype == records.LIFECYCLE and body.call_id == call
            doc = json.loads(body.doc)
            assert doc["op"] == "dispose" and doc["set"]["disposal"]["report"] == rid, doc
            # the released call's chain: hold, release-request, release, then the receipt
            assert doc["seq"] == (4 if call == RELEASED else 1), (call, doc)
            link = chain.lifecycle_link(bytes.fromhex(doc["prev"]), doc["seq"], raw)
            assert link.hex() == e.lifecycle_head, call
            leaf = merkle.leaf_hash(lifecycle_leaf("default", call, link, body.time_us))
            size, leaf_hash, path, root = v.inclusion_proof(idx, signed.size)
            assert (size, leaf_hash, root) == (signed.size, leaf, signed.root), call
            merkle.verify_inclusion(idx, signed.size, leaf, path, signed.root)
    reader.close()
    sc.steps = 3


def test_4_after_2_years_the_complaint_calls_go(sc: Scenario) -> None:
    """Through a real server whose clock is 733 days on (libfaketime)."""
    server = faked_server(sc, SHIFT_2Y)
    try:
        out = dispose_step(sc, SHIFT_2Y, COMPLAINT, server=server)
        st = json.loads(remote(sc, server, "root", "stats", "--json", shift=SHIFT_2Y).stdout)
        assert st["held_calls"] == 1, st
    finally:
        assert server.stop() == 0, server.output()
    check_disposed(sc, SHIFT_2Y, COMPLAINT, out["report"]["id"])
    calls = listing(sc, shift=SHIFT_2Y)
    for call in VIP:
        assert calls[call]["state"] == "sealed", calls[call]
    sc.steps = 4


def test_5_after_7_years_the_vip_calls_go_the_untagged_one_too(sc: Scenario) -> None:
    before = listing(sc, shift=SHIFT_7Y)
    assert before[UNVIP]["tags"] == [] and before[UNVIP]["retention"]["rule"] == "vip"
    out = dispose_step(sc, SHIFT_7Y, VIP)
    check_disposed(sc, SHIFT_7Y, VIP, out["report"]["id"])
    assert sc.disposed == sorted(c for c in CALLS if c != HELD)
    # the held call is all that is left, still held, past every horizon
    assert "nothing is due" in cv(sc, "dispose", shift=SHIFT_7Y).stdout
    reports = cv(sc, "dispose", "reports", shift=SHIFT_7Y).stdout
    for n in (len(ORDINARY) - 1, len(COMPLAINT), len(VIP)):
        assert f"{n} disposed" in reports, reports
    sc.steps = 5


def test_6_a_clock_that_went_back_is_refused(sc: Scenario) -> None:
    for args in (("dispose",), ("dispose", "--dry-run")):
        back = cv(sc, *args, ok=False)  # the real clock: 7 years before the last run
        assert back.returncode == 1, back.stdout + back.stderr
        assert "earlier than" in back.stderr, back.stderr
        assert "the vault recorded: refusing to dispose" in back.stderr, back.stderr
    assert listing(sc, shift=SHIFT_7Y)[HELD]["state"] == "sealed"
    # the held call's audio is all there
    cv(sc, "export", HELD, "-o", str(sc.root / "held.wav"), shift=SHIFT_7Y)
    assert (sc.root / "held.wav").stat().st_size > 8000 * 2 * 2 * 0.9
    sc.steps = 6


def test_7_the_index_rebuilt_from_the_records_is_the_same(sc: Scenario) -> None:
    """Every lifecycle change is a record: `reindex` replays them to the same calls
    (tags, retentions, holds, disposals), everything verifies, the audit trail of
    the server's requests holds who did what, and the clock check still refuses."""
    before = cv(sc, "ls", "--json", shift=SHIFT_7Y).stdout
    cv(sc, "reindex", shift=SHIFT_7Y)
    assert cv(sc, "ls", "--json", shift=SHIFT_7Y).stdout == before
    out = cv(sc, "verify", "--all", shift=SHIFT_7Y).stdout
    assert "OK: every call and segment verified" in out, out
    cv(sc, "audit", "verify", shift=SHIFT_7Y)
    trail = cv(sc, "audit", "--call", RELEASED, "--json", shift=SHIFT_7Y).stdout
    seen = [
        (e["identity"]["name"], e["method"].rsplit("/", 1)[1], e["outcome"])
        for e in map(json.loads, trail.splitlines())
    ]
    assert seen == [
        ("L1", "PlaceHold", "OK"),
        ("L1", "RequestRelease", "OK"),
        ("L1", "ApproveRelease", "PERMISSION_DENIED"),
        ("L2", "ApproveRelease", "OK"),
    ], seen
    back = cv(sc, "dispose", "--dry-run", ok=False)
    assert back.returncode == 1 and "refusing to dispose" in back.stderr, back.stderr
    sc.steps = 7

"""Disposal with receipts (issue 12; docs/policy.md "Disposal", docs/format.md 8.15).

``plan`` finds the calls due now (sealed, past their retention end, nothing keeping
them: ``Vault.retained``; and calls whose deferred erasure, ``pending_erase``, may now
be carried out) and writes a **disposition report**: canonical JSON signed with the
vault's log key (Ed25519, the checkpoint signer), kept in DATA/lifecycle/reports/.
``apply`` disposes of a report's calls: for each, still due? then the **receipt** (a
LIFECYCLE record ``op`` "dispose" setting ``disposal``: its Merkle leaf, kind 7),
then the crypto-shredding erasure (key destroyed, audio dead), then the archive's
object versions (when the call is archived and an archive is configured); after the
batch a reclaim gives the space back. ``verify_report`` checks a report offline
with the log's public key.

Crash safety: a call is either untouched (a crash before its receipt), or has its
receipt but is not erased (a crash between them: ``finish`` erases it, run at the
start of every apply and by the server at start), or is disposed. Never half.

Time: every decision reads the vault's clock; ``check_clock`` refuses a clock
earlier than the latest time the vault recorded (``Vault.latest_us``), less
``CLOCK_TOLERANCE_US``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from callvault.durable import write_atomic
from callvault.errors import CallvaultError, InputError
from callvault.integrity import checkpoint
from callvault.lifecycle import holds
from callvault.store.index import CallEntry
from callvault.vault import Vault, VaultError
from callvault.vault.lifecycle import canonical, utc

REPORT_TYPE = "callvault-disposition-report"
VERSION = 1
# A clock this much earlier than the latest time recorded is still accepted: the
# vault's clock at a group commit and the clock read by a plan a moment later may
# come from two clocks of one host (a slewing NTP, another process's CLI) and
# differ by milliseconds; one second is far below any retention's grain.
CLOCK_TOLERANCE_US = 1_000_000
REPORTS = Path("lifecycle") / "reports"
_ID_RE = re.compile(r"dr-[0-9a-f]{32}")

# Test hook: the SIGKILL crash tests stop an apply at a named step
# (tests/lifecycle/test_disposal_crash.py): CALLVAULT_DISPOSE_CRASH=<step>[:<n>]
# kills the process at the n-th time (default first) it reaches the step.
_CRASH_AT = os.environ.get("CALLVAULT_DISPOSE_CRASH", "")
_crash_seen: dict[str, int] = {}
# one disposal at a time in a process (the sweeper, an RPC, a crash's finish): a
# call is receipted and erased by one of them only
_LOCK = threading.RLock()
_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(fn: _F) -> _F:
    @functools.wraps(fn)
    def run(*args: Any, **kw: Any) -> Any:
        with _LOCK:
            return fn(*args, **kw)

    return cast(_F, run)


def _crash_point(step: str) -> None:
    if not _CRASH_AT:
        return
    name, _, nth = _CRASH_AT.partition(":")
    if name != step:
        return
    _crash_seen[step] = _crash_seen.get(step, 0) + 1
    if _crash_seen[step] == int(nth or 1):
        os.kill(os.getpid(), 9)


class DisposalError(VaultError):
    """Disposal refused (FAILED_PRECONDITION): a clock that went back, a report
    that is not pending, an approval by the identity that planned it."""


class ClockWentBack(DisposalError):
    pass


class ReportInvalid(CallvaultError):
    """A disposition report that does not verify (tampered, another key, malformed)."""


@dataclass
class Report:
    """A signed disposition report: ``body`` (what the signature covers), the
    signature line (C2SP signed-note format, by the log key), and the state kept
    beside it: ``status`` ("planned": a dry run; "pending": waiting for approval;
    "approved", "applied"), ``results`` of an apply, ``approved_by``, and for a
    report nobody planned (the sweeper's) ``first_approval``: the first of the two
    identities that must approve it."""

    body: dict[str, Any]
    signature: str
    status: str = "planned"
    results: dict[str, Any] | None = None
    approved_by: dict[str, Any] | None = None
    first_approval: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def calls(self) -> list[dict[str, Any]]:
        return list(self.body["calls"])

    def doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"report": self.body, "signature": self.signature}
        d["status"] = self.status
        if self.results is not None:
            d["results"] = self.results
        if self.approved_by is not None:
            d["approved_by"] = self.approved_by
        if self.first_approval is not None:
            d["first_approval"] = self.first_approval
        return d

    def to_json(self, *, indent: int | None = None) -> str:
        if indent is None:
            return canonical(self.doc()).decode()
        return json.dumps(self.doc(), sort_keys=True, indent=indent)

    @classmethod
    def from_doc(cls, doc: Any) -> Report:
        if not isinstance(doc, dict) or not isinstance(doc.get("report"), dict):
            raise ReportInvalid("not a disposition report (no 'report' object)")
        sig = doc.get("signature")
        if not isinstance(sig, str):
            raise ReportInvalid("the report has no signature")
        return cls(
            body=doc["report"],
            signature=sig,
            status=str(doc.get("status", "planned")),
            results=doc.get("results"),
            approved_by=doc.get("approved_by"),
            first_approval=doc.get("first_approval"),
        )


# -- the clock ---------------------------------------------------------------------------
def check_clock(vault: Vault, now_us: int | None = None) -> dict[str, int]:
    """The clock check of a plan or apply: {now_us, latest_us, tolerance_us}; raises
    ClockWentBack when the clock reads earlier than the latest time the vault
    recorded (less the tolerance)."""
    now = vault.clock() if now_us is None else now_us
    latest = vault.latest_us()
    if now < latest - CLOCK_TOLERANCE_US:
        raise ClockWentBack(
            f"the clock reads {utc(now)}, earlier than {utc(latest)} the vault recorded: "
            "refusing to dispose (a clock that went back would dispose of calls before "
            "their retention ends; fix the clock)"
        )
    return {"now_us": now, "latest_us": latest, "tolerance_us": CLOCK_TOLERANCE_US}


# -- what is due ---------------------------------------------------------------------------
def _entries(vault: Vault, tenant: str | None) -> list[CallEntry]:
    tenants = [tenant] if tenant is not None else vault.index.tenants()
    out: list[CallEntry] = []
    for t in tenants:
        out.extend(vault.index.search(t))
    return out


def why_not_due(vault: Vault, e: CallEntry, now_us: int) -> str | None:
    """None if the call is due for disposal at ``now_us``, else why not."""
    if e.state != "sealed":
        return f"call {e.call_id} is {e.state}"
    kept = vault.retained(e, now=now_us)
    if kept is not None:
        return kept
    if e.pending_erase:
        return None  # an erasure deferred by a hold or retention that has ended
    r = e.retention
    if not r:
        return f"call {e.call_id} has no retention end: it is kept until a policy sets one"
    until = int(r.get("until_us", 0))
    if until > now_us:
        return f"call {e.call_id} is kept until {utc(until)} (rule {r.get('rule', '?')})"
    return None


def _item(e: CallEntry) -> dict[str, Any]:
    r = e.retention or {}
    item: dict[str, Any] = {
        "tenant": e.tenant,
        "call_id": e.call_id,
        "seal": e.seal,
        "rule": str(r.get("rule", "")),
        "mode": str(r.get("mode", "")),
        "until_us": int(r.get("until_us", 0)),
        "archived": bool(e.archive),
        "why": "pending-erase" if e.pending_erase else "retention",
    }
    return item


def due(vault: Vault, now_us: int, *, tenant: str | None = None) -> list[CallEntry]:
    """The calls due for disposal at ``now_us`` (all tenants, or one)."""
    return [e for e in _entries(vault, tenant) if why_not_due(vault, e, now_us) is None]


# -- signing ---------------------------------------------------------------------------
def _text(body: dict[str, Any]) -> bytes:
    """What the signature covers: the body's canonical JSON and a newline (a signed
    note's text, docs/format.md 8.8)."""
    return canonical(body) + b"\n"


def _report_id(body: dict[str, Any]) -> str:
    rest = {k: v for k, v in body.items() if k != "id"}
    return "dr-" + hashlib.sha256(canonical(rest)).hexdigest()[:32]


def sign(vault: Vault, body: dict[str, Any]) -> str:
    note = checkpoint.sign_note(_text(body), [vault.signer])
    return note[len(_text(body)) + 1 :].decode().rstrip("\n")


def verify_report(text: str | bytes, public_key: str) -> dict[str, Any]:
    """The body of a disposition report (the JSON of a report file) once its
    signature by ``public_key`` (the log's verifier key, ``<name>+<id>+<key>``)
    verifies and its id matches its body; ReportInvalid otherwise. Needs no vault."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ReportInvalid(f"not JSON: {e}") from e
    report = Report.from_doc(doc)
    try:
        verifier = checkpoint.parse_verifier_key(public_key)
    except checkpoint.CheckpointError as e:
        raise ReportInvalid(f"the public key: {e}") from e
    body = report.body
    if body.get("type") != REPORT_TYPE or body.get("v") != VERSION:
        raise ReportInvalid(f"not a version {VERSION} {REPORT_TYPE}")
    note = _text(body) + b"\n" + report.signature.encode() + b"\n"
    try:
        checkpoint.open_note(note, [verifier])
    except checkpoint.CheckpointError as e:
        raise ReportInvalid(f"the signature does not verify: {e}") from e
    if body.get("id") != _report_id(body):
        raise ReportInvalid(f"the report's id {body.get('id')} does not match its body")
    if not isinstance(body.get("calls"), list):
        raise ReportInvalid("the report has no list of calls")
    return body


# -- reports on disk -------------------------------------------------------------------
def reports_dir(vault: Vault) -> Path:
    return vault.path / REPORTS


def save(vault: Vault, report: Report) -> Path:
    d = reports_dir(vault)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{report.id}.json"
    write_atomic(path, report.to_json(indent=1).encode() + b"\n", 0o644)
    return path


def load(vault: Vault, report_id: str) -> Report:
    if not _ID_RE.fullmatch(report_id):
        raise InputError(f"{report_id!r} is not a disposition report id (dr-<32 hex>)")
    path = reports_dir(vault) / f"{report_id}.json"
    if not path.exists():
        raise InputError(f"no disposition report {report_id}")
    report = Report.from_doc(json.loads(path.read_text()))
    # a report kept here is checked like any other: the vault's own key signed it
    verify_report(canonical(report.doc()), vault.signer.verifier_key())
    return report


def reports(vault: Vault) -> list[Report]:
    """Every kept report, oldest first."""
    d = reports_dir(vault)
    out = []
    for p in sorted(d.glob("dr-*.json")) if d.is_dir() else []:
        try:
            out.append(Report.from_doc(json.loads(p.read_text())))
        except (ValueError, ReportInvalid):
            continue  # `dispose verify-report` names what is wrong with it
    out.sort(key=lambda r: (int(r.body.get("created_us", 0)), r.id))
    return out


# -- plan --------------------------------------------------------------------------------
def plan(
    vault: Vault,
    now_us: int | None = None,
    *,
    tenant: str | None = None,
    by: dict[str, Any] | None = None,
) -> Report:
    """The disposition report of the calls due now (nothing changes; not saved)."""
    clock = check_clock(vault, now_us)
    now = clock["now_us"]
    calls = sorted(
        (_item(e) for e in due(vault, now, tenant=tenant)),
        key=lambda c: (c["tenant"], c["call_id"]),
    )
    size = vault.log_size()
    body: dict[str, Any] = {
        "type": REPORT_TYPE,
        "v": VERSION,
        "origin": vault.origin,
        "key": vault.signer.verifier_key(),
        "created_us": now,
        "clock": clock,
        "tenant": tenant,
        "by": by,
        "calls": calls,
        "log_size": size,
        "log_root": vault.consistency_proof(size, size)[3].hex() if size else "",
    }
    body["id"] = _report_id(body)
    return Report(body=body, signature=sign(vault, body))


# -- apply -------------------------------------------------------------------------------
def _erase_reason(report_id: str, item: dict[str, Any], e: CallEntry) -> str:
    if item.get("why") == "pending-erase" or (e.pending_erase and not item.get("until_us")):
        pending = e.pending_erase or {}
        said = str(pending.get("reason", "")) or "erasure requested"
        return f"disposed by report {report_id}: deferred erasure carried out ({said})"[:1024]
    return (
        f"disposed by report {report_id}: retention ended {utc(int(item['until_us']))} "
        f"(rule {item.get('rule') or '?'})"
    )


def _archive_delete(archive: Any, e: CallEntry) -> str:
    if not e.archive:
        return ""
    if archive is None:
        return "archived: no archive configured here, its object versions were left"
    try:
        return str(archive.delete_call(e))
    except Exception as err:  # the key is shredded either way; say what the archive did
        return f"archive deletion failed: {err}"


def _cancel(vault: Vault, e: CallEntry, why: str, by: dict[str, Any] | None) -> None:
    """A receipt whose erasure may no longer happen (a hold placed meanwhile): the
    disposal is withdrawn by a record of its own, so the call is kept, whole."""
    vault.change(
        e.call_id,
        tenant=e.tenant,
        op="dispose-withdrawn",
        changes={"disposal": None},
        by=by,
        reason=why[:1024],
        expect_seq=e.lifecycle_count,
    )


def _shred(
    vault: Vault, e: CallEntry, reason: str, archive: Any, by: dict[str, Any] | None
) -> dict[str, Any]:
    """Erase a call that has its receipt; withdrawn instead if it is kept now (a
    hold placed since the receipt: the erasure refuses it, for every caller). A
    deferred erasure is carried out by ``holds.carry_out_pending``, as a hold's
    release does, and said the same way (``erased``, ``erase_log_index``)."""
    pending = e.pending_erase
    if pending:
        kept = holds.carry_out_pending(vault, e, reason=reason)
    else:
        kept = holds.erase_unless_kept(vault, e, reason)
    if kept is not None:
        e = vault.get_call(e.call_id, tenant=e.tenant)
        _cancel(vault, e, f"not disposed: {kept}", by)
        return {"outcome": "withdrawn", "why": kept}
    _crash_point("erased")
    gone = vault.get_call(e.call_id, tenant=e.tenant)
    out: dict[str, Any] = {
        "outcome": "disposed",
        "erased": True,
        "erase_log_index": gone.erase_log_index,
    }
    if pending:
        out["pending_erase"] = {
            "requested_us": int(pending.get("requested_us", 0)),
            "by": pending.get("by"),
            "reason": str(pending.get("reason", "")),
        }
    what = _archive_delete(archive, e)
    if what:
        out["archive"] = what
    return out


@_locked
def finish(vault: Vault, *, archive: Any = None) -> list[dict[str, Any]]:
    """Calls with a receipt but not erased (a crash between the two): erase them
    (or withdraw the receipt if a hold keeps the call now). Run by every apply and
    by the server at start."""
    done = []
    for e in _entries(vault, None):
        if e.state != "sealed" or not e.disposal:
            continue
        d = e.disposal
        item = {"until_us": int(d.get("until_us", 0)), "rule": d.get("rule", "")}
        if d.get("why"):
            item["why"] = d["why"]
        reason = _erase_reason(str(d.get("report", "?")), item, e)
        out = _shred(vault, e, reason, archive, None)
        done.append({"tenant": e.tenant, "call_id": e.call_id, **out})
    return done


@_locked
def apply(
    vault: Vault,
    report: Report,
    *,
    by: dict[str, Any] | None = None,
    archive: Any = None,
    reclaim_threshold: float | None = 0.5,
) -> dict[str, Any]:
    """Dispose of the report's calls that are still due (a hold placed since, a
    retention extended, a call erased otherwise: skipped, and said why); then
    reclaim (``reclaim_threshold`` None: not). Returns the results, also kept in
    the report (status "applied", saved)."""
    clock = check_clock(vault)
    now = clock["now_us"]
    finished = finish(vault, archive=archive)
    results: list[dict[str, Any]] = []
    for item in report.calls:
        tenant, call_id = str(item["tenant"]), str(item["call_id"])
        res: dict[str, Any] = {"tenant": tenant, "call_id": call_id}
        results.append(res)
        try:
            e = vault.get_call(call_id, tenant=tenant)
        except CallvaultError as err:
            res.update(outcome="skipped", why=str(err))
            continue
        done = next((f for f in finished if (f["tenant"], f["call_id"]) == (tenant, call_id)), None)
        if done is not None:
            res.update({k: v for k, v in done.items() if k not in res})
            continue
        if e.state == "erased":
            mine = (e.disposal or {}).get("report") == report.id
            res.update(
                outcome="disposed" if mine else "skipped",
                why="" if mine else f"call {call_id} was erased otherwise",
            )
            continue
        if e.seal != item.get("seal"):
            res.update(outcome="skipped", why=f"call {call_id} is not the call planned")
            continue
        why = why_not_due(vault, e, now)
        if why is not None:
            res.update(outcome="skipped", why=why)
            continue
        disposal = {
            "report": report.id,
            "rule": str(item.get("rule", "")),
            "until_us": int(item.get("until_us", 0)),
            "disposed_us": now,
            "why": str(item.get("why", "retention")),
        }
        reason = _erase_reason(report.id, item, e)
        try:
            e = vault.change(
                call_id,
                tenant=tenant,
                op="dispose",
                changes={"disposal": disposal},
                by=by,
                reason=reason,
                expect_seq=e.lifecycle_count,
            )
        except VaultError as err:  # changed meanwhile: left for the next run
            res.update(outcome="skipped", why=str(err))
            continue
        _crash_point("receipt")
        res["receipt_leaf"] = e.lifecycle_leaves[-1]
        res.update(_shred(vault, e, reason, archive, by))
    out: dict[str, Any] = {
        "applied_us": now,
        "by": by,
        "clock": clock,
        "calls": results,
        "disposed": sum(r.get("outcome") == "disposed" for r in results),
        "skipped": sum(r.get("outcome") != "disposed" for r in results),
    }
    if finished:
        out["finished"] = finished
    if reclaim_threshold is not None:
        try:
            r = vault.reclaim(threshold=reclaim_threshold)
            out["reclaim"] = {
                "bytes_freed": r.bytes_freed,
                "segments_removed": r.segments_removed,
                "segments_rewritten": r.segments_rewritten,
                "reclaimable_bytes": r.reclaimable_bytes,
            }
        except CallvaultError as err:  # the calls are disposed; the space waits
            out["reclaim"] = {"error": str(err)}
    report.status = "applied"
    report.results = out
    save(vault, report)
    return out


@_locked
def approve(
    vault: Vault,
    report_id: str,
    *,
    by: dict[str, Any] | None,
    archive: Any = None,
    reclaim_threshold: float | None = 0.5,
) -> Report:
    """Apply a pending report (approval on) by an identity other than its planner
    (name and tenant compared). Dual control needs two people: a report nobody
    planned (the sweeper's, ``by`` None) takes two approvals by different identities;
    the first is recorded (``first_approval``, the report stays pending) and the
    second applies it."""
    report = load(vault, report_id)
    if report.status != "pending":
        raise DisposalError(f"disposition report {report_id} is {report.status}, not pending")
    if by is None:
        raise DisposalError("approving a disposition report needs an identity")

    def person(who: Any) -> tuple[Any, Any] | None:
        return (who.get("name"), who.get("tenant")) if isinstance(who, dict) else None

    first = report.body.get("by") or report.first_approval
    if first is not None and person(first) == person(by):
        raise DisposalError(
            f"disposition report {report_id} was planned or approved by "
            f"{first.get('name')}: another identity must approve it (dual control)"
        )
    if report.body.get("by") is None and report.first_approval is None:
        report.first_approval = by  # the sweeper planned it: a second person applies it
        save(vault, report)
        return report
    report.approved_by = by
    report.status = "approved"
    save(vault, report)
    apply(vault, report, by=by, archive=archive, reclaim_threshold=reclaim_threshold)
    return report


@dataclass
class Settings:
    """The ``[disposal]`` section (docs/server.md)."""

    approval: bool = False
    interval_s: float = 3600.0
    reclaim_threshold: float = 0.5

    @classmethod
    def parse(cls, section: Any) -> Settings:
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise InputError("[disposal] must be a table")
        unknown = sorted(set(section) - {"approval", "interval_s", "reclaim_threshold"})
        if unknown:
            raise InputError(f"[disposal]: unknown setting(s) {', '.join(unknown)}")
        s = cls()
        if "approval" in section:
            if not isinstance(section["approval"], bool):
                raise InputError("[disposal] approval must be true or false")
            s.approval = section["approval"]
        for name in ("interval_s", "reclaim_threshold"):
            if name in section:
                v = section[name]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise InputError(f"[disposal] {name} must be a number")
                setattr(s, name, float(v))
        if s.interval_s < 0:
            raise InputError("[disposal] interval_s must be >= 0 (0: the sweeper never runs)")
        if not 0 < s.reclaim_threshold <= 1:
            raise InputError("[disposal] reclaim_threshold must be in (0, 1]")
        return s


def pending(vault: Vault) -> list[Report]:
    return [r for r in reports(vault) if r.status == "pending"]


@_locked
def run(
    vault: Vault,
    settings: Settings,
    *,
    by: dict[str, Any] | None = None,
    tenant: str | None = None,
    archive: Any = None,
) -> Report | None:
    """One dispose (the sweeper's, or `callvault dispose`): plan; with approval on,
    keep it pending (unless a pending report names the same calls already); else
    apply it. None when nothing is due (calls a crash left with a receipt are
    finished first either way)."""
    check_clock(vault)
    finish(vault, archive=archive)
    report = plan(vault, tenant=tenant, by=by)
    if not report.calls:
        return None
    if settings.approval:
        same = [(c["tenant"], c["call_id"]) for c in report.calls]
        for p in pending(vault):
            if [(c["tenant"], c["call_id"]) for c in p.calls] == same:
                return p
        report.status = "pending"
        save(vault, report)
        return report
    apply(vault, report, by=by, archive=archive, reclaim_threshold=settings.reclaim_threshold)
    return report

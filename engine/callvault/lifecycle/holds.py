"""Legal holds with dual control, and the erasures they defer (docs/policy.md "Legal
holds").

A hold is named (a case number: 1 to 64 letters, digits, ``.``, ``_``, ``-``,
``:``) and placed on calls one by one; each change is a LIFECYCLE record of the
call (``vault.change``: durable, chained after the seal, a leaf of the Merkle log):

- ``place``: op "hold", ``holds[name] = {placed_us, by, reason}``. Placing a hold the
  call already has changes nothing (reported).
- ``request_release``: op "release-request", ``holds[name]["release"] =
  {requested_us, by, reason}``. One identity asks ...
- ``approve_release``: op "release", ``holds[name]`` removed ... and ANOTHER approves
  (dual control). Two identities are the same when their name and tenant are (the
  role and the way they authenticated do not make another person). The identity
  that placed the hold may approve a release somebody else requested; the one that
  requested it may not.

A held call is never erased: ``erase_or_defer`` records the erasure asked for as
``pending_erase`` (op "erase-deferred") and says so; once its last hold is
released, ``approve_release`` carries it out in the same call when
``vault.retained`` lets it (else it stays pending: ``carry_out_pending`` is what a
sweeper calls when the retention ends).

Which calls hold what (``holds_of``, ``counts``) is a scan of the call entries of
the index (every tenant's, or one's): the holds live in the entries, which
``reindex`` rebuilds from the LIFECYCLE records, so there is no second index to
keep in step.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from callvault.errors import InputError
from callvault.store.index import CallEntry
from callvault.vault import Vault, VaultError
from callvault.vault.lifecycle import Retained, utc

NAME_RULE = "1 to 64 characters: letters, digits, '.', '_', '-', ':'"
_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_REASON_BYTES = 1024


class DualControl(VaultError):
    """The identity approving a release is the one that requested it (or there is
    no release to approve): the server answers PERMISSION_DENIED."""


class HoldError(VaultError):
    """A hold cannot be changed on this call now (an erased call, a hold it does not
    have, a release not requested): FAILED_PRECONDITION."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"hold name {name!r} is not valid: {NAME_RULE}")
    return name


def check_reason(reason: str, *, required: bool = True) -> str:
    if required and not reason.strip():
        raise InputError("a reason is required (kept in the call's lifecycle record)")
    if len(reason.encode()) > MAX_REASON_BYTES or "\x00" in reason:
        raise InputError(f"a reason is at most {MAX_REASON_BYTES} bytes, without NUL")
    return reason


def identity(name: str, role: str = "", tenant: str | None = None, via: str = "") -> dict[str, Any]:
    """The ``by`` of a lifecycle record: who (access.Identity's fields)."""
    return {"name": name, "role": role, "tenant": tenant, "via": via}


def same_person(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two ``by`` identities are the same for dual control: name and tenant."""
    if not a or not b:
        return False
    return (a.get("name"), a.get("tenant")) == (b.get("name"), b.get("tenant"))


def _who(by: Mapping[str, Any] | None) -> str:
    return str((by or {}).get("name") or "?")


@dataclass
class Outcome:
    """What a hold request did to one call."""

    tenant: str
    call_id: str
    changed: bool
    note: str
    entry: CallEntry
    log_index: int = -1  # the LIFECYCLE record's leaf (changed only)
    link: str = ""  # hex: the lifecycle head after it (the leaf's value)
    erased: bool = False  # approve: a deferred erasure was carried out
    erase_pending: str = ""  # approve: why a deferred erasure still waits

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tenant": self.tenant,
            "call_id": self.call_id,
            "changed": self.changed,
            "note": self.note,
            "log_index": self.log_index,
        }
        if self.erased:
            out["erased"] = True
            out["erase_log_index"] = self.entry.erase_log_index
        if self.erase_pending:
            out["erase_pending"] = self.erase_pending
        return out


def _changed(e: CallEntry, note: str) -> Outcome:
    """An Outcome for the LIFECYCLE record just written (``e`` the entry after it)."""
    leaf = e.lifecycle_leaves[-1] if e.lifecycle_leaves else -1
    return Outcome(e.tenant, e.call_id, True, note, e, log_index=leaf, link=e.lifecycle_head)


def _as_is(e: CallEntry, note: str) -> Outcome:
    """An Outcome for a call the request leaves as it is (nothing written)."""
    return Outcome(e.tenant, e.call_id, False, note, e)


def stamp(
    vault: Vault, by: Mapping[str, Any] | None, reason: str, at: str = "requested_us"
) -> dict[str, Any]:
    """When (``at``: the vault's clock), who and why: a hold placed, a release or an
    erasure requested, as the call entry keeps them."""
    return {at: vault.clock(), "by": dict(by) if by else None, "reason": reason}


def _sealed(vault: Vault, call_id: str, tenant: str, what: str) -> CallEntry:
    e = vault.get_call(call_id, tenant=tenant)
    if e.state == "erased":
        raise HoldError(f"call {call_id} is erased: there is nothing left to {what}")
    if e.state != "sealed":
        raise HoldError(f"call {call_id} is still being recorded: {what} it once it is sealed")
    return e


def _change(
    vault: Vault,
    e: CallEntry,
    *,
    op: str,
    changes: dict[str, Any],
    by: Mapping[str, Any] | None,
    reason: str,
    detail: dict[str, Any],
) -> CallEntry:
    """vault.change computed from the entry read: a concurrent change of the call
    meanwhile is refused (VaultError, nothing written) rather than overwritten."""
    return vault.change(
        e.call_id,
        tenant=e.tenant,
        op=op,
        changes=changes,
        by=dict(by) if by else None,
        reason=reason,
        detail=detail,
        expect_seq=e.lifecycle_count,
    )


def place(
    vault: Vault,
    call_id: str,
    *,
    tenant: str = "default",
    name: str,
    reason: str,
    by: Mapping[str, Any] | None,
) -> Outcome:
    """Place hold ``name`` on the call (a no-op, reported, when it has it already)."""
    check_name(name)
    check_reason(reason)
    e = _sealed(vault, call_id, tenant, "hold")
    if name in e.holds:
        h = e.holds[name]
        return _as_is(
            e,
            f"already under hold {name} (placed {utc(int(h.get('placed_us', 0)))} by "
            f"{_who(h.get('by'))}): nothing changed",
        )
    holds = {k: dict(v) for k, v in e.holds.items()}
    holds[name] = stamp(vault, by, reason, "placed_us")
    after = _change(
        vault, e, op="hold", changes={"holds": holds}, by=by, reason=reason, detail={"hold": name}
    )
    return _changed(after, f"hold {name} placed")


def request_release(
    vault: Vault,
    call_id: str,
    *,
    tenant: str = "default",
    name: str,
    reason: str,
    by: Mapping[str, Any] | None,
) -> Outcome:
    """Ask for hold ``name`` to be released; another identity approves it."""
    check_name(name)
    check_reason(reason)
    e = _sealed(vault, call_id, tenant, "release")
    if name not in e.holds:
        raise HoldError(f"call {call_id} is not under hold {name}")
    pending = e.holds[name].get("release")
    if pending:
        return _as_is(
            e,
            f"release of hold {name} already requested by {_who(pending.get('by'))} "
            f"({utc(int(pending.get('requested_us', 0)))}): it awaits another identity's "
            "approval",
        )
    holds = {k: dict(v) for k, v in e.holds.items()}
    holds[name]["release"] = stamp(vault, by, reason)
    after = _change(
        vault,
        e,
        op="release-request",
        changes={"holds": holds},
        by=by,
        reason=reason,
        detail={"hold": name},
    )
    return _changed(after, f"release of hold {name} requested: another identity approves it")


def approve_release(
    vault: Vault,
    call_id: str,
    *,
    tenant: str = "default",
    name: str,
    by: Mapping[str, Any] | None,
    reason: str = "",
) -> Outcome:
    """Approve the requested release of hold ``name``: the hold is removed. By an
    identity other than the requester (DualControl otherwise). When no hold is left
    and the call has a deferred erasure that nothing else keeps back, it is carried
    out now."""
    check_name(name)
    check_reason(reason, required=False)
    e = _sealed(vault, call_id, tenant, "release")
    if name not in e.holds:
        raise HoldError(f"call {call_id} is not under hold {name}")
    pending = e.holds[name].get("release")
    if not pending:
        raise DualControl(
            f"no release of hold {name} on call {call_id} was requested: one identity "
            "requests it (hold release), another approves it"
        )
    if by is None or same_person(by, pending.get("by")):
        raise DualControl(
            f"the release of hold {name} on call {call_id} was requested by "
            f"{_who(pending.get('by'))}: another identity approves it (dual control)"
        )
    holds = {k: dict(v) for k, v in e.holds.items() if k != name}
    detail = {
        "hold": name,
        "requested_by": pending.get("by"),
        "request_reason": pending.get("reason"),
    }
    after = _change(
        vault,
        e,
        op="release",
        changes={"holds": holds},
        by=by,
        reason=reason or str(pending.get("reason") or ""),
        detail=detail,
    )
    out = _changed(after, f"hold {name} released")
    if after.pending_erase and not after.holds:
        why = carry_out_pending(vault, after)
        if why is None:
            out.entry = vault.get_call(call_id, tenant=tenant)
            out.erased = True
            out.note += "; the deferred erasure was carried out"
        else:
            out.erase_pending = why
            out.note += f"; the deferred erasure still waits: {why}"
    elif after.pending_erase:
        out.erase_pending = (
            f"still under hold {', '.join(sorted(after.holds))}: the deferred erasure waits"
        )
    return out


# -- deferred erasure ----------------------------------------------------------------


@dataclass
class EraseResult:
    erased: bool
    message: str
    entry: CallEntry
    log_index: int = -1  # the ERASE leaf, or the deferral's LIFECYCLE leaf (-1: none new)
    holds: list[str] = field(default_factory=list)


def erase_or_defer(
    vault: Vault,
    call_id: str,
    *,
    tenant: str = "default",
    reason: str,
    by: Mapping[str, Any] | None,
    override_governance: bool = False,
) -> EraseResult:
    """Erase the call, or, if a legal hold keeps it, record the erasure as pending
    (op "erase-deferred", ``pending_erase``) and say so. A refusal for retention
    alone (no hold) is raised as before (Retained): nothing is recorded."""
    try:
        vault.erase(call_id, reason=reason, tenant=tenant, override_governance=override_governance)
    except Retained as refused:
        if not refused.holds:
            raise
        return defer_erase(vault, call_id, tenant=tenant, reason=reason, by=by)
    e = vault.get_call(call_id, tenant=tenant)
    return EraseResult(
        True,
        f"{call_id} erased: its key is destroyed, a tombstone and a log leaf remain",
        e,
        log_index=e.erase_log_index,
    )


def defer_erase(
    vault: Vault,
    call_id: str,
    *,
    tenant: str = "default",
    reason: str,
    by: Mapping[str, Any] | None,
) -> EraseResult:
    """Record an erasure of a held call as pending (nothing is erased now)."""
    e = _sealed(vault, call_id, tenant, "erase")
    names = sorted(e.holds)
    if not names:
        raise HoldError(f"call {call_id} is under no legal hold: erase it")
    held = f"held by {', '.join(names)}"
    if e.pending_erase:
        p = e.pending_erase
        return EraseResult(
            False,
            f"deferred: {held}; an erasure was already requested by {_who(p.get('by'))} "
            f"({utc(int(p.get('requested_us', 0)))}) and is carried out when the last hold "
            "is released",
            e,
            holds=names,
        )
    pending = stamp(vault, by, reason)
    after = _change(
        vault,
        e,
        op="erase-deferred",
        changes={"pending_erase": pending},
        by=by,
        reason=reason,
        detail={"holds": names},
    )
    return EraseResult(
        False,
        f"deferred: {held}; the erasure is recorded and carried out when the last hold "
        "is released (and no retention keeps the call)",
        after,
        log_index=after.lifecycle_leaves[-1] if after.lifecycle_leaves else -1,
        holds=names,
    )


def erase_unless_kept(
    vault: Vault, e: CallEntry, reason: str, *, override_governance: bool = False
) -> str | None:
    """Erase the call unless something keeps it now: None when it is erased (or
    already was), else the sentence why not (``vault.retained``; a hold placed
    meanwhile: the erasure's own refusal). The one way a deferred erasure
    (``carry_out_pending``), a disposal and an erasure by data subject carry out an
    erasure that may be kept back."""
    e = vault.get_call(e.call_id, tenant=e.tenant)
    if e.state == "erased":
        return None
    why = vault.retained(e, override_governance=override_governance)
    if why is not None:
        return why
    try:
        vault.erase(
            e.call_id, reason=reason, tenant=e.tenant, override_governance=override_governance
        )
    except Retained as kept:  # a hold placed meanwhile: it waits for that one
        return str(kept)
    return None


def carry_out_pending(
    vault: Vault, e: CallEntry, *, reason: str | None = None, override_governance: bool = False
) -> str | None:
    """Carry out the call's deferred erasure if nothing keeps the call now: None when
    it was erased (or is already), else the sentence why it still waits. For the
    release that removes the last hold, and for the disposal sweeper once a
    retention ends (``reason``: the tombstone's; default the deferred erasure's
    own)."""
    e = vault.get_call(e.call_id, tenant=e.tenant)
    if e.state == "erased":
        return None
    if not e.pending_erase:
        raise HoldError(f"call {e.call_id} has no deferred erasure")
    if reason is None:
        reason = str(e.pending_erase.get("reason") or "deferred erasure")
    return erase_unless_kept(vault, e, reason, override_governance=override_governance)


# -- listing -------------------------------------------------------------------------


def _entries(vault: Vault, tenant: str | None) -> Iterator[CallEntry]:
    tenants = [tenant] if tenant is not None else vault.index.tenants()
    for t in tenants:
        yield from vault.index.search(t)


def holds_of(vault: Vault, *, tenant: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The holds and their calls (``tenant`` None: every tenant's), as ``hold ls
    --json`` and ListHolds give them (docs/policy.md "Legal holds")."""
    if name is not None:
        check_name(name)
    by_name: dict[str, list[dict[str, Any]]] = {}
    pending_erasures: list[dict[str, Any]] = []
    for e in _entries(vault, tenant):
        if e.state == "sealed" and e.pending_erase:
            p = e.pending_erase
            pending_erasures.append(
                {
                    "tenant": e.tenant,
                    "call_id": e.call_id,
                    "requested_us": p.get("requested_us"),
                    "by": p.get("by"),
                    "reason": p.get("reason"),
                    "held_by": sorted(e.holds),
                }
            )
        for hold, h in e.holds.items():
            if name is not None and hold != name:
                continue
            rel = h.get("release")
            by_name.setdefault(hold, []).append(
                {
                    "tenant": e.tenant,
                    "call_id": e.call_id,
                    "placed_us": h.get("placed_us"),
                    "placed": utc(int(h.get("placed_us") or 0)),
                    "by": h.get("by"),
                    "reason": h.get("reason"),
                    "release": rel,
                    "pending_erase": bool(e.pending_erase),
                }
            )
    holds: list[dict[str, Any]] = [
        {
            "name": n,
            "calls": sorted(calls, key=lambda c: (c["tenant"], c["call_id"])),
            "pending_releases": sum(1 for c in calls if c["release"]),
        }
        for n, calls in sorted(by_name.items())
    ]
    if name is not None:
        pending_erasures = [p for p in pending_erasures if name in p["held_by"]]
    calls = {(c["tenant"], c["call_id"]) for h in holds for c in h["calls"]}
    return {
        "holds": holds,
        "pending_erasures": pending_erasures,
        "held_calls": len(calls),
        "holds_placed": sum(len(h["calls"]) for h in holds),
        "pending_releases": sum(h["pending_releases"] for h in holds),
    }


class Counts(TypedDict):
    held_calls: int
    holds: int
    pending_releases: int


def counts(vault: Vault, *, tenant: str | None = None) -> Counts:
    """StatsReply 87-89: held calls, holds placed, releases awaiting approval."""
    held = placed = pending = 0
    for e in _entries(vault, tenant):
        if e.holds:
            held += 1
            placed += len(e.holds)
            pending += sum(1 for h in e.holds.values() if h.get("release"))
    return {"held_calls": held, "holds": placed, "pending_releases": pending}

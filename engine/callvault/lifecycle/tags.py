"""Tags of a sealed call, changed after sealing (issue 12 section 2; docs/policy.md
"Tags"), and the retention end they imply.

Each change is one LIFECYCLE record (docs/format.md 8.14) setting the whole new tag
list and, when the policy in force gives the call another retention end with its
new tags, the new retention. What the policy proposes is bounded here:

- a **compliance** end still in the future is never shortened: the new end is the
  later of the two, and the mode stays compliance (an extension by another rule
  takes that rule's name);
- a **governance** end still in the future is shortened (or its mode lowered to
  default) only by an admin who gave a reason (`callvault tag --reason`); for
  anyone else it is kept (a later end still applies, in governance mode);
- otherwise (no retention yet, a default-mode end, an end already past) the
  policy's retention replaces the old one.

No policy applied (``callvault.lifecycle.policy.stored`` gives None, or the policy
has no rule for the call): the retention is left as it is.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from callvault.errors import InputError
from callvault.ids import MAX_TAGS, check_call_meta
from callvault.lifecycle.policy import combine
from callvault.store.index import CallEntry
from callvault.vault import Vault, VaultError
from callvault.vault.lifecycle import utc

POLICY_MODULE = "callvault.lifecycle.policy"  # the policy lane's (docs/policy.md)


@dataclass
class TagResult:
    """What a tag change did: the call entry after it, the tags it really added and
    removed (a tag already there, or absent, is not), whether a record was written,
    and what happened to the retention end (sentences; empty: unchanged)."""

    entry: CallEntry
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    written: bool = False
    retention: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        """One line for a person: what changed, or that nothing did."""
        e = self.entry
        if not self.written:
            return (
                f"call {e.call_id}: nothing to change (tags {', '.join(e.tags) or '(none)'}); "
                "no record written"
            )
        parts = []
        if self.added:
            parts.append("added " + ", ".join(self.added))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        out = f"call {e.call_id}: {'; '.join(parts)} (lifecycle record {e.lifecycle_count})"
        return " ".join([out, *self.retention])


def parse_words(words: list[str]) -> tuple[list[str], list[str]]:
    """``+tag`` to add, ``-tag`` to remove (the command line's form): (add, remove)."""
    add: list[str] = []
    remove: list[str] = []
    for w in words:
        if len(w) < 2 or w[0] not in "+-":
            raise InputError(f"{w!r}: write +TAG to add a tag or -TAG to remove one")
        (add if w[0] == "+" else remove).append(w[1:])
    return add, remove


def _check(add: list[str], remove: list[str]) -> None:
    check_call_meta(tags=add)
    check_call_meta(tags=remove)
    both = sorted(set(add) & set(remove))
    if both:
        raise InputError(f"tag {both[0]!r} is both added and removed: say one")
    if not add and not remove:
        raise InputError("no tag to add or remove: give +TAG or -TAG")


def stored_policy(vault: Vault) -> Any | None:
    """The policy applied to this vault (``callvault.lifecycle.policy.stored``), or
    None: none applied, or this build has no policy module."""
    try:
        mod = importlib.import_module(POLICY_MODULE)
    except ModuleNotFoundError as e:
        if e.name != POLICY_MODULE:
            raise
        return None
    return mod.stored(vault)


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two retentions alike but for when they were computed."""
    if a is None or b is None:
        return a is b
    strip = ("set_us",)
    return {k: v for k, v in a.items() if k not in strip} == {
        k: v for k, v in b.items() if k not in strip
    }


def bound_retention(
    old: dict[str, Any] | None,
    proposed: dict[str, Any] | None,
    *,
    now_us: int,
    may_shorten_governance: bool,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The retention a tag change leaves (``callvault.lifecycle.policy.combine``, the
    one place of the rules this module's docstring lists) and what to say of it."""
    if proposed is None:
        return old, []
    new = dict(proposed)
    new.setdefault("set_us", now_us)
    out, what = combine(old, new, now_us=now_us, shorten_governance=may_shorten_governance)
    if old is None:
        return out, [f"Retention now until {utc(int(out['until_us']))} (rule {out.get('rule')})."]
    if what == "unchanged":
        return old, []
    old_until, new_until = int(old.get("until_us", 0)), int(out["until_us"])
    mode, rule = old.get("mode", "default"), old.get("rule", "?")
    live = old_until > now_us
    if what == "kept-compliance":
        if int(new["until_us"]) == old_until:
            return old, []
        return old, [
            f"Retention kept until {utc(old_until)}: a compliance end (rule {rule}) is "
            "never shortened."
        ]
    if what == "kept-governance":
        return old, [
            f"Retention kept until {utc(old_until)}: a governance end (rule {rule}) is "
            "shortened only by an admin giving a reason."
        ]
    if live and mode == "compliance" and new_until > old_until:
        return out, [
            f"Retention extended to {utc(new_until)} (rule {out.get('rule')}; stays compliance)."
        ]
    if live and mode == "governance":
        if out.get("mode") != new.get("mode"):
            return out, [
                f"Retention extended to {utc(new_until)} (rule {out.get('rule')}; stays "
                "governance: only an admin giving a reason lowers it)."
            ]
        if new_until < old_until or out.get("mode") not in ("compliance", "governance"):
            return out, [
                f"Retention changed from {utc(old_until)} ({mode}) to {utc(new_until)} "
                f"(rule {out.get('rule')}, {out.get('mode')}; by an admin with a reason)."
            ]
    verb = "extended" if new_until > old_until else "set"
    return out, [f"Retention {verb} to {utc(new_until)} (rule {out.get('rule')})."]


_UNSET: Any = object()


def retag(
    vault: Vault,
    call_id: str,
    *,
    tenant: str = "default",
    add: list[str] | None = None,
    remove: list[str] | None = None,
    by: dict[str, Any] | None = None,
    reason: str = "",
    policy: Any = _UNSET,
) -> TagResult:
    """Add and remove tags of a sealed call: one LIFECYCLE record (op "tag") setting
    the new tag list and, if the policy's retention for the new tags differs (within
    the module's bounds), the new retention; nothing written when nothing changes.
    ``by`` is who (an Identity's fields; role "admin" and a ``reason`` may shorten a
    governance end). ``policy``: the Policy to recompute with (default: the vault's
    stored policy). A concurrent change to the call is retried once."""
    add = list(dict.fromkeys(add or []))
    remove = list(dict.fromkeys(remove or []))
    _check(add, remove)
    if policy is _UNSET:
        policy = stored_policy(vault)
    for attempt in range(2):
        e = vault.get_call(call_id, tenant=tenant)
        if e.state == "erased":
            raise VaultError(f"call {call_id} is erased: its tags no longer change")
        if e.state != "sealed":
            raise VaultError(f"call {call_id} is still being recorded: tag it once sealed")
        added = [t for t in add if t not in e.tags]
        removed = [t for t in remove if t in e.tags]
        if not added and not removed:
            return TagResult(e)
        tags = [t for t in e.tags if t not in removed] + added
        if len(tags) > MAX_TAGS:
            raise InputError(f"call {call_id} would have {len(tags)} tags: at most {MAX_TAGS}")
        now = vault.clock()
        changes: dict[str, Any] = {"tags": tags}
        said: list[str] = []
        if policy is not None:
            proposed = policy.retention_for(e, tags=tags, now_us=now)
            admin = by is not None and by.get("role") == "admin" and bool(reason.strip())
            retention, said = bound_retention(
                e.retention, proposed, now_us=now, may_shorten_governance=admin
            )
            if retention is not e.retention and not _same(retention, e.retention):
                changes["retention"] = retention
        detail: dict[str, Any] = {"added": added, "removed": removed}
        if said:
            detail["retention"] = " ".join(said)
        try:
            after = vault.change(
                call_id,
                tenant=tenant,
                op="tag",
                changes=changes,
                by=by,
                reason=reason,
                detail=detail,
                expect_seq=e.lifecycle_count,
            )
        except VaultError:
            again = vault.get_call(call_id, tenant=tenant)
            if attempt == 0 and again.lifecycle_count != e.lifecycle_count:
                continue  # changed meanwhile: computed again from what it is now
            raise
        return TagResult(after, added, removed, True, said)
    raise AssertionError("unreachable")  # pragma: no cover

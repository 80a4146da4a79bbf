"""Changes to sealed calls: the LIFECYCLE records (docs/format.md 8.14).

A sealed call's audio and manifest never change. What may change afterwards (its tags,
its retention end, its legal holds, where its audio is kept, its disposal) is written
as a LIFECYCLE record: one change, chained after the seal (``chain.lifecycle_link``),
each a leaf of the Merkle log (kind 7). The index applies a record's ``set`` to the
call entry (``apply``); ``verify`` replays them from the seal.

Also the one check that says whether a call may be erased now (``Lifecycle.retained``):
a legal hold or a compliance retention end in the future refuses it, for every caller.

Policy (which retention, who may hold, when to dispose) lives above, in
callvault.lifecycle; this module only stores and applies what it decided.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from callvault.integrity import chain as chainmod
from callvault.store import records as rec
from callvault.store.index import LIFECYCLE_FIELDS, CallEntry
from callvault.store.segment import StoreError
from callvault.vault.common import VaultError, now_us

DOC_VERSION = 1
# what may still change for an erased call: where its archive object is (its deletion)
AFTER_ERASURE = frozenset({"archive"})
MODES = ("compliance", "governance", "default")


class Retained(VaultError):
    """The call may not be erased or disposed now: a legal hold, or a retention end
    in the future (compliance: for nobody; governance: unless overridden). ``until_us``
    is the retention end (0 for a hold), ``holds`` the holds' names."""

    def __init__(self, message: str, *, until_us: int = 0, holds: list[str] | None = None):
        super().__init__(message)
        self.until_us = until_us
        self.holds = holds or []


def utc(us: int) -> str:
    """A time for messages: 2026-12-06T05:00:00Z."""
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_set(changes: dict[str, Any]) -> None:
    unknown = sorted(set(changes) - LIFECYCLE_FIELDS)
    if unknown:
        raise ValueError(f"a lifecycle record cannot set {', '.join(unknown)}")
    if not changes:
        raise ValueError("a lifecycle record sets at least one field")


def apply(e: CallEntry, doc: dict[str, Any]) -> bool:
    """Apply a LIFECYCLE document's ``set`` to the entry; True when it lets go of the
    call's local audio (``local`` turned False: the caller drops its records)."""
    changes = doc.get("set")
    if not isinstance(changes, dict):
        raise ValueError("a lifecycle document without a 'set' object")
    check_set(changes)
    drop = bool(e.local) and changes.get("local") is False
    for name, value in changes.items():
        if name == "tags":
            value = list(value)
        elif name == "holds":
            value = dict(value)
        setattr(e, name, value)
    return drop


class Lifecycle:
    """The Vault's part for lifecycle records (mixed into Vault)."""

    # the Vault's
    _writer: Any
    _lifecycle_lock: threading.RLock
    _lock: threading.RLock

    def _roll_back_unacknowledged(self) -> bool:
        raise NotImplementedError  # Vault's

    def get_call(self, call_id: str, *, tenant: str = "default") -> CallEntry:
        raise NotImplementedError  # Vault's

    def _writable(self) -> None:
        raise NotImplementedError  # Vault's

    # the vault's clock (unix µs): tests and `faketime` move it; every lifecycle
    # decision (retention ends, disposal, holds) reads it, never time.time() directly
    clock = staticmethod(now_us)
    # called (entry after, the document) after each change is durable; set per Vault
    after_change: list[Callable[[CallEntry, dict[str, Any]], object]]
    # called (entry after, the LIFECYCLE record's body as stored) after each change is
    # durable, before after_change: the archive uploads the records of archived calls
    after_record: list[Callable[[CallEntry, bytes], object]]

    def change(
        self,
        call_id: str,
        *,
        tenant: str = "default",
        op: str,
        changes: dict[str, Any],
        by: dict[str, Any] | None = None,
        reason: str = "",
        detail: dict[str, Any] | None = None,
        expect_seq: int | None = None,
    ) -> CallEntry:
        """Write one LIFECYCLE record for a sealed (or erased) call: ``op`` names the
        change ("tag", "retention", "hold", "release-request", "release", "archive",
        "evict", "dispose", ...), ``changes`` the entry fields it sets (LIFECYCLE_FIELDS:
        whole values, e.g. the full tag list), ``by`` who (an Identity's name, role,
        tenant, via), ``reason`` why, ``detail`` anything else worth keeping. Durable,
        indexed and its leaf in the Merkle log when this returns; returns the entry.
        ``expect_seq``: refuse (VaultError) unless the call has exactly that many
        lifecycle records (a caller that computed ``changes`` from an entry it read
        passes its ``lifecycle_count`` so a concurrent change is not overwritten)."""
        self._writable()
        check_set(changes)
        if not op or len(op) > 64:
            raise ValueError("a lifecycle op is 1 to 64 characters")
        if len(reason.encode()) > 1024:
            raise ValueError("a reason is at most 1024 bytes")
        with self._lifecycle_lock:
            e = self.get_call(call_id, tenant=tenant)
            if e.state == "open":
                raise VaultError(f"call {call_id} is still being recorded: seal it first")
            if e.state == "erased" and set(changes) - AFTER_ERASURE:
                # checked under the lock: an erasure that won the race leaves nothing to
                # hold, tag or retain (only the archive's bookkeeping of its object)
                raise VaultError(
                    f"call {call_id} is erased: its {', '.join(sorted(changes))} cannot "
                    "change any more"
                )
            if expect_seq is not None and e.lifecycle_count != expect_seq:
                raise VaultError(
                    f"call {call_id} changed meanwhile (lifecycle record "
                    f"{e.lifecycle_count}, expected {expect_seq}): read it again"
                )
            seq = e.lifecycle_count + 1
            prev = e.lifecycle_head or e.seal
            doc: dict[str, Any] = {
                "v": DOC_VERSION,
                "seq": seq,
                "prev": prev,
                "op": op,
                "by": by,
                "reason": reason,
                "set": changes,
            }
            if detail:
                doc["detail"] = detail
            body = rec.lifecycle_body(tenant, call_id, time_us=self.clock(), doc=canonical(doc))
            try:
                self._writer.append(rec.LIFECYCLE, body).result()
            except StoreError as err:
                # as an erasure: a change reported as failed must not be applied by a
                # later recovery, so the unacknowledged records are cut
                with self._lock:
                    undone = self._roll_back_unacknowledged()
                if undone:
                    raise VaultError(
                        f"{op} of call {call_id} failed, nothing was applied: {err}"
                    ) from err
                raise VaultError(
                    f"{op} of call {call_id} failed and its record could not be removed: "
                    f"the next open of the vault may apply it ({err})"
                ) from err
            e = self.get_call(call_id, tenant=tenant)
        for record_hook in self.after_record:
            record_hook(e, body)
        for hook in self.after_change:  # e.g. the archive mirrors holds and retention
            hook(e, doc)
        return e

    def retained(
        self, e: CallEntry, *, override_governance: bool = False, now: int | None = None
    ) -> str | None:
        """Why the call may not be erased or disposed now (None: it may): a legal hold;
        a compliance retention end in the future (nobody may); a governance one unless
        ``override_governance`` (an admin with a reason)."""
        if e.holds:
            names = sorted(e.holds)
            return (
                f"call {e.call_id} is under legal hold {', '.join(names)}: nothing erases "
                "or disposes of it until every hold is released"
            )
        r = e.retention
        t = self.clock() if now is None else now
        if r and int(r.get("until_us", 0)) > t:
            mode, rule = r.get("mode", "default"), r.get("rule", "?")
            when = utc(int(r["until_us"]))
            if mode == "compliance":
                return (
                    f"call {e.call_id} is under compliance retention until {when} "
                    f"(rule {rule}): nobody may erase or dispose of it before then"
                )
            if mode == "governance" and not override_governance:
                return (
                    f"call {e.call_id} is under governance retention until {when} "
                    f"(rule {rule}): an admin may erase it before then only with an "
                    "override and a reason"
                )
        return None

    def check_erasable(self, e: CallEntry, *, override_governance: bool = False) -> None:
        """Raise Retained naming the hold or the rule and date, if the call may not be
        erased now."""
        why = self.retained(e, override_governance=override_governance)
        if why is not None:
            until = int((e.retention or {}).get("until_us", 0)) if not e.holds else 0
            raise Retained(why, until_us=until, holds=sorted(e.holds))


def link_of(e: CallEntry, body: bytes, seq: int) -> str:
    """The call's lifecycle head after a record of ``body`` with number ``seq``."""
    prev = bytes.fromhex(e.lifecycle_head or e.seal)
    return chainmod.lifecycle_link(prev, seq, body).hex()

"""Erasure by data subject (docs/policy.md "Erasure by data subject"; the subject
index: docs/format.md 8.16).

A call's subject values (its customer number, and the ``extra`` keys the server's
``[subject] keys`` names) are kept in the subject index only as HMAC-SHA256 under the
tenant's subject key (vault/keys.py ``TenantKeks.subject_key``), so the index finds
a subject's calls without holding the number in clear. New calls get their HMACs in
their OPEN record (``Vault.open_call``); calls recorded before get them from
``backfill``, which decrypts their customer numbers and stores the HMACs in a
LIFECYCLE record (op "subject-index"), so a ``reindex`` keeps them too.

``erase_subject`` finds a subject's calls, erases those nothing keeps
(``Vault.erase``), and defers the others with why (``Vault.retained``: a legal hold,
a retention end), recording ``pending_erase`` on them (op "erase-deferred") so the
disposal sweeper erases them once free. Its report names the subject by key name and
HMAC, never by value.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from callvault.errors import InputError
from callvault.ids import MAX_REASON_BYTES, check_erase_reason, check_text
from callvault.lifecycle.holds import erase_unless_kept, stamp
from callvault.store.index import CallEntry
from callvault.vault import Vault, VaultError
from callvault.vault.keys import subject_mac, subject_values
from callvault.vault.lifecycle import utc

# index: ["customer_number"] once a backfill found no call of the tenant left without
# its HMAC (every call opened since has it); a cache: after a reindex the next backfill
# looks again. Extra keys are looked for in every call each time (their values are in
# the index's entries, no decryption).
COMPLETE = b"meta/subject-complete/"
OP_INDEX = "subject-index"
OP_DEFERRED = "erase-deferred"
MAX_VALUE_BYTES = 1024
DEFAULT_KEYS = ("customer_number",)


PREFIX = "erase-subject: "  # before the reason, in each erasure and deferral


class SubjectError(InputError):
    """A bad [subject] setting or request."""


def parse_settings(section: dict[str, Any] | None) -> tuple[str, ...]:
    """``[subject]``: ``keys`` = the ``extra`` keys indexed besides customer_number
    (customer_number always is). Raises SubjectError naming what is wrong."""
    section = dict(section or {})
    keys = section.pop("keys", list(DEFAULT_KEYS))
    if section:
        raise SubjectError(f"[subject]: unknown setting(s) {', '.join(sorted(section))}")
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise SubjectError("[subject] keys must be a list of non-empty strings")
    for k in keys:
        if "\x00" in k or len(k.encode()) > 64:
            raise SubjectError(f"[subject] keys: {k!r} is over 64 bytes or holds a NUL")
    out = ["customer_number", *(k for k in keys if k != "customer_number")]
    return tuple(dict.fromkeys(out))


def check_request(name: str, value: str) -> None:
    """The subject key: customer_number or an ``extra`` key; the value non-empty. The
    messages never repeat the value."""
    if not name or "\x00" in name or len(name.encode()) > 64:
        raise SubjectError("the subject key is customer_number or an extra key (1 to 64 bytes)")
    if not value:
        raise SubjectError(f"the value of {name} is empty")
    if len(value.encode()) > MAX_VALUE_BYTES or "\x00" in value:
        raise SubjectError(f"the value of {name} is over {MAX_VALUE_BYTES} bytes or has a NUL")


def parse_meta(text: str) -> tuple[str, str]:
    """``--meta KEY=VALUE`` -> (key, value)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SubjectError("--meta takes KEY=VALUE, e.g. customer_number=+15551234567")
    return name.strip(), value.strip()


def _complete(vault: Vault, tenant: str) -> set[str]:
    raw = vault.index.get_meta(COMPLETE + tenant.encode())
    return set(json.loads(raw)) if raw else set()


def _values_of(vault: Vault, e: CallEntry, names: Iterable[str]) -> dict[str, str]:
    """The subject values of a sealed call (its customer number decrypted)."""
    names = list(names)
    number = ""
    if "customer_number" in names and e.customer_number_sealed:
        number = vault.customer_number(e.call_id, tenant=e.tenant)
    return subject_values(names, number, e.extra)


def backfill(
    vault: Vault,
    tenant: str,
    *,
    names: Sequence[str] | None = None,
    write: bool = True,
    by: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Index the calls of ``tenant`` that lack HMACs for ``names`` (default: every
    subject key of the vault): sealed calls recorded before the subject index, or
    before a key was added to [subject] keys. ``write``: store them (one LIFECYCLE
    record per call, op "subject-index", holding HMACs only); else only compute them
    (a dry run): the return's ``macs`` maps call id -> {name: hex} either way.
    Returns {"indexed": n, "open": [ids left: still being recorded], "macs": ...}."""
    names = list(names or vault.subject_keys)
    # only customer_number is indexed by every writer (an extra key only where the
    # [subject] keys name it): only it is remembered as complete
    done = _complete(vault, tenant) & {"customer_number"}
    key = vault.call_keys.tenants.subject_key(tenant)
    # a tenant without a subject key yet: a dry run's is a throwaway one; a real run
    # makes the tenant's when a call needs it (a tenant name nobody uses gets none)
    out: dict[str, Any] = {"indexed": 0, "open": [], "macs": {}, "key": key}
    if out["key"] is None:
        out["key"] = secrets.token_bytes(32)
    if set(names) <= done:
        return out
    calls = vault.index.call_ids(tenant)
    for call_id in calls:
        e = vault.index.get_call(tenant, call_id)
        if e is None or e.state == "erased":
            continue  # nothing of it left to erase
        missing = [n for n in names if n not in e.subjects]
        if not missing:
            continue
        if e.state == "open":
            if subject_values(missing, "x" if e.customer_number_sealed else "", e.extra):
                out["open"].append(call_id)
            continue
        values = _values_of(vault, e, missing)
        if not values:
            continue
        if key is None:
            key = vault.call_keys.tenants.subject_key(tenant, create=write) or out["key"]
            out["key"] = key
        macs = {n: subject_mac(key, n, v).hex() for n, v in values.items()}
        out["macs"][call_id] = macs
        if write:
            for attempt in range(3):  # another change in between: read it again
                try:
                    vault.change(
                        call_id,
                        tenant=tenant,
                        op=OP_INDEX,
                        changes={"subjects": {**e.subjects, **macs}},
                        by=by,
                        reason="subject index of a call recorded before it",
                        expect_seq=e.lifecycle_count,
                    )
                    break
                except VaultError:
                    e = vault.get_call(call_id, tenant=tenant)
                    if set(macs) <= set(e.subjects):
                        break  # indexed meanwhile
                    if attempt == 2:
                        raise
            out["indexed"] += 1
    if write and calls and not out["open"] and "customer_number" in names and not done:
        b = vault.index.batch()
        b.put_meta(COMPLETE + tenant.encode(), json.dumps(["customer_number"]).encode())
        with vault._log_lock:  # the committer writes its batches under it
            vault.index.write(b)
    return out


def find(vault: Vault, tenant: str, name: str, value: str) -> tuple[str, list[str]]:
    """(HMAC hex, the ids of the tenant's calls indexed under it). A tenant without a
    subject key has none: ("", [])."""
    key = vault.call_keys.tenants.subject_key(tenant)
    if key is None:
        return "", []
    mac = subject_mac(key, name, value)
    return mac.hex(), vault.index.subject_calls(tenant, name, mac)


def _deferral(vault: Vault, e: CallEntry, why: str) -> dict[str, Any]:
    d: dict[str, Any] = {"tenant": e.tenant, "call_id": e.call_id, "why": why}
    if e.holds:
        d["holds"] = sorted(e.holds)
    elif e.retention:
        until = int(e.retention.get("until_us", 0))
        d.update(
            until_us=until,
            until=utc(until),
            rule=e.retention.get("rule", ""),
            mode=e.retention.get("mode", ""),
        )
    return d


def tenants_of(vault: Vault, tenant: str | None) -> list[str]:
    """The tenants a request searches: one, or (None) every tenant with calls that is
    not erased."""
    if tenant is not None:
        return [tenant]
    erased = set(vault.index.tenant_erasures())
    return [t for t in vault.index.tenants() if t not in erased]


def erase_subject(
    vault: Vault,
    *,
    name: str,
    value: str,
    reason: str,
    tenant: str | None = "default",
    dry_run: bool = False,
    by: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Erase every call of the subject ``name`` = ``value`` in ``tenant`` (None: every
    tenant): see the module's description. Returns the report (JSON-able): the
    subject's key name and HMAC per tenant, ``erased`` (call, tenant, erase leaf),
    ``deferred`` (call, why, until/rule or holds, whether ``pending_erase`` was
    recorded), ``already_erased``, ``being_recorded``, ``not_found``. Never the value."""
    check_request(name, value)
    check_erase_reason(reason)
    check_text(reason, "reason", MAX_REASON_BYTES - len(PREFIX))
    now = vault.clock()
    report: dict[str, Any] = {
        "subject": {"key": name, "hmac": {}},
        "reason": reason,
        "dry_run": dry_run,
        "time_us": now,
        "tenants": [],
        "erased": [],
        "deferred": [],
        "already_erased": [],
        "being_recorded": [],
        "unindexed_open": [],
        "failed": [],
    }
    for t in tenants_of(vault, tenant):
        if vault.index.tenant_erasure(t) is not None:
            continue  # every call of it is erased already
        report["tenants"].append(t)
        filled = backfill(vault, t, names=[name], write=not dry_run, by=by)
        report["unindexed_open"] += [{"tenant": t, "call_id": c} for c in filled["open"]]
        mac, calls = find(vault, t, name, value)
        if dry_run:  # the calls a backfill would index, matched in memory
            want = subject_mac(filled["key"], name, value).hex()
            calls += [c for c, m in filled["macs"].items() if m.get(name) == want]
        if mac:
            report["subject"]["hmac"][t] = mac
        for call_id in sorted(set(calls)):
            _erase_one(vault, report, t, call_id, name, mac, reason, dry_run, by)
    report["not_found"] = not any(
        report[k] for k in ("erased", "deferred", "already_erased", "being_recorded", "failed")
    )
    return report


def _erase_one(
    vault: Vault,
    report: dict[str, Any],
    tenant: str,
    call_id: str,
    name: str,
    mac: str,
    reason: str,
    dry_run: bool,
    by: dict[str, Any] | None,
) -> None:
    e = vault.get_call(call_id, tenant=tenant)
    if e.state == "erased":
        report["already_erased"].append(
            {"tenant": tenant, "call_id": call_id, "log_index": e.erase_log_index}
        )
        return
    if e.state == "open":
        report["being_recorded"].append(
            {
                "tenant": tenant,
                "call_id": call_id,
                "why": f"call {call_id} is still being recorded: run erase-subject again "
                "once it is sealed",
            }
        )
        return
    why = vault.retained(e)
    if why is None and not dry_run:
        try:
            why = erase_unless_kept(vault, e, PREFIX + reason)  # a hold placed meanwhile
        except VaultError as err:  # said, and the others are still tried
            report["failed"].append({"tenant": tenant, "call_id": call_id, "error": str(err)})
            return
        e = vault.get_call(call_id, tenant=tenant)
        if why is None:
            report["erased"].append(
                {"tenant": tenant, "call_id": call_id, "log_index": e.erase_log_index}
            )
            return
    if why is None:  # dry run
        report["erased"].append({"tenant": tenant, "call_id": call_id, "log_index": -1})
        return
    d = _deferral(vault, e, why)
    d["pending_erase"] = e.pending_erase is not None
    if not dry_run and e.pending_erase is None:
        try:
            vault.change(
                call_id,
                tenant=tenant,
                op=OP_DEFERRED,
                changes={
                    "pending_erase": {
                        **stamp(vault, by, PREFIX + reason),
                        "subject": {"key": name, "hmac": mac},
                    }
                },
                by=by,
                reason=PREFIX + reason,
                detail={"why": why},
                expect_seq=e.lifecycle_count,
            )
            d["pending_erase"] = True
        except VaultError as err:  # changed meanwhile: reported, the next run retries
            d["pending_erase_error"] = str(err)
    report["deferred"].append(d)

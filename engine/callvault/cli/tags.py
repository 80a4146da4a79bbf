"""`callvault tag CALL +TAG -TAG [--reason R]`: change a sealed call's tags (issue 12
section 2; docs/policy.md "Tags"). On the vault in --data DIR or on a server
(Lifecycle.Tag). Also what `info` and `ls --json` show of a call's lifecycle
(retention end, holds, changes since the seal), from a CallEntry or a CallInfo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from callvault import ids
from callvault.cli.common import iso, local_identity
from callvault.errors import CallvaultError

VerbMaker = Callable[..., argparse.ArgumentParser]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: VerbMaker) -> None:
    """The `tag` verb (``verb`` is cli.main's verb maker)."""
    t = verb(
        sub,
        "tag",
        "add (+TAG) and remove (-TAG) tags of a sealed call",
        "Change a sealed call's tags: `callvault tag CALL +complaint -training --reason "
        "TEXT`. One lifecycle record (who, when, why; a leaf of the Merkle log), the "
        "call's retention end recomputed by the policy: extended, never shortened under "
        "compliance, shortened under governance only by an admin giving a reason "
        '(docs/policy.md "Tags"). A change that changes nothing writes nothing. '
        "Options go before CALL or after the tags.",
    )
    t.add_argument("--reason", default=None, help="why (kept in the lifecycle record)")
    t.add_argument(
        "--json", action="store_true", help="print the call's tags and retention as JSON"
    )
    t.add_argument("call_id", metavar="CALL", help="the call")
    t.add_argument(
        "changes", nargs=argparse.REMAINDER, metavar="+TAG|-TAG", help="tags to add or remove"
    )
    t.set_defaults(func=cmd_tag)


def _split(args: argparse.Namespace) -> list[str]:
    """The +TAG/-TAG words, with --reason R and --json taken out of them (they may
    follow the tags: argparse cannot tell -TAG from an option)."""
    words: list[str] = []
    rest = list(args.changes)
    while rest:
        w = rest.pop(0)
        if w == "--json":
            args.json = True
        elif w == "--reason":
            if not rest:
                raise CallvaultError("--reason needs a value")
            args.reason = rest.pop(0)
        elif w.startswith("--reason="):
            args.reason = w.split("=", 1)[1]
        elif w == "--":
            words.extend(rest)
            break
        else:
            words.append(w)
    return words


def cmd_tag(args: argparse.Namespace) -> int:
    from callvault.lifecycle.tags import parse_words

    add, remove = parse_words(_split(args))
    ids.check_call_id(args.call_id, "call id")
    reason = args.reason or ""
    ids.check_text(reason, "reason", ids.MAX_REASON_BYTES)
    if getattr(args, "server", None):
        from callvault.cli import remote

        with remote.connect(args) as b:
            info = b.client.tag(
                args.call_id, add=add, remove=remove, reason=reason, tenant=args.tenant
            )
        note, doc = info.lifecycle.note, lifecycle_doc(info)
        doc = {"call_id": info.call_id, "tags": list(info.tags), **doc}
    else:
        from callvault.cli import local
        from callvault.lifecycle.tags import retag

        with local.connect(args) as lb:
            r = retag(
                lb.vault,
                args.call_id,
                tenant=args.tenant,
                add=add,
                remove=remove,
                by=local_identity(),
                reason=reason,
            )
        note = r.sentence()
        doc = {"call_id": r.entry.call_id, "tags": list(r.entry.tags), **lifecycle_doc(r.entry)}
    if args.json:
        json.dump({**doc, "note": note}, sys.stdout, indent=2)
        print()
    else:
        print(note)
    return 0


def lifecycle_doc(e: Any) -> dict[str, Any]:
    """What `info` and `ls --json` show of a call's lifecycle, from a CallEntry (the
    local index) or a CallInfo (a server's): ``retention`` (``until``, ``until_us``,
    ``rule``, ``mode``; None: no retention policy applied), ``holds`` (their names)
    and ``lifecycle_changes`` (the LIFECYCLE records since the seal)."""
    if hasattr(e, "lifecycle_count"):  # a CallEntry
        r = e.retention
        holds = sorted(e.holds)
        changes = e.lifecycle_count
    else:  # a CallInfo
        r = None
        if e.HasField("retention"):
            x = e.retention
            r = {"until_us": x.until_us, "rule": x.rule, "mode": x.mode}
        holds = sorted(h.name for h in e.holds)
        changes = e.lifecycle.changes
    retention = None
    if r:
        until = int(r.get("until_us", 0))
        retention = {
            "until": iso(until),
            "until_us": until,
            "rule": r.get("rule", ""),
            "mode": r.get("mode", ""),
        }
    return {"retention": retention, "holds": holds, "lifecycle_changes": changes}


NOT_SEALED_V1 = "extra, recording_id and decision not sealed (manifest version 1)"


def coverage_notes(b: Any, call_ids: list[str], *, tenant: str) -> list[str]:
    """What `verify CALL...` adds of calls sealed by a manifest of version 1, which
    does not cover every metadata field (docs/format.md 8.14): a note each (not a
    problem). ``b`` is the verb's backend (a LocalBackend's vault, or a
    RemoteBackend's client: GetCall's lifecycle.manifest_version)."""
    from callvault_client.errors import CallvaultClientError

    notes: list[str] = []
    for call_id in call_ids:
        try:
            if hasattr(b, "vault"):
                version = b.vault.manifest(call_id, tenant=tenant).get("version", 1)
            else:
                version = b.client.get_call(call_id, tenant=tenant).lifecycle.manifest_version
        except (CallvaultError, CallvaultClientError):  # verify names what is wrong
            continue
        if version == 1:
            notes.append(f"call {call_id}: {NOT_SEALED_V1}")
    return notes

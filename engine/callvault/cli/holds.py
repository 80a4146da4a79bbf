"""`callvault hold place|release|approve-release|ls`: legal holds with dual control
(docs/policy.md "Legal holds"; callvault.lifecycle.holds).

On a server (``--server``) each action is the caller's identity (its token): a
release requested by one identity is approved by another. On a local vault
(``--data DIR``) the identity is the operating-system user (``local:USER``): the
approval needs another OS user. That is a record of who acted, not a control: whoever
can open DIR holds its keys and could write anything, so dual control that binds is
the server's, with two identities.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from callvault import ids
from callvault.cli.common import local_identity
from callvault.errors import CallvaultError
from callvault.lifecycle.holds import NAME_RULE
from callvault.vault.lifecycle import utc

VerbMaker = Callable[..., argparse.ArgumentParser]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: VerbMaker) -> None:
    """The `hold` verb and its actions (``verb`` is cli.main's verb maker)."""
    h = verb(
        sub,
        "hold",
        "legal holds: place, release (two identities), list",
        "A held call is never erased, disposed of or evicted; an erasure asked for "
        "meanwhile is deferred and carried out at the last release. A release is "
        "requested by one identity and approved by another (docs/policy.md "
        "'Legal holds'). On a server, or on --data DIR as the OS user.",
    )
    hsub = h.add_subparsers(dest="hold_command", required=True, metavar="ACTION")

    def calls_and_name(p: argparse.ArgumentParser, reason: bool) -> None:
        p.add_argument("call_ids", nargs="+", metavar="CALL_ID", help="the calls")
        p.add_argument("--name", required=True, help=f"the hold's name ({NAME_RULE})")
        p.add_argument(
            "--reason",
            required=reason,
            default="",
            help="why (kept in each call's lifecycle record)",
        )
        p.add_argument("--json", action="store_true", help="what happened to each call, as JSON")

    p = verb(hsub, "place", "place a named hold on calls")
    calls_and_name(p, True)
    p.set_defaults(func=cmd_hold)
    p = verb(
        hsub,
        "release",
        "request the release of a hold (another identity approves it)",
    )
    calls_and_name(p, True)
    p.set_defaults(func=cmd_hold)
    p = verb(
        hsub,
        "approve-release",
        "approve a requested release (not by its requester); a deferred erasure runs",
        "Approve the release of a hold that another identity requested: the hold is "
        "removed; a call left with no hold whose erasure was deferred is erased now, "
        "unless its retention still keeps it.",
    )
    calls_and_name(p, False)
    p.set_defaults(func=cmd_hold)
    p = verb(hsub, "ls", "the holds, their calls, pending releases and erasures")
    p.add_argument("--name", help="only this hold")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_hold_ls)


def _ids(args: argparse.Namespace) -> None:
    for c in args.call_ids:
        ids.check_call_id(c, "call id")
    if args.tenant:
        ids.check_call_id(args.tenant, "tenant")


def cmd_hold(args: argparse.Namespace) -> int:
    from callvault.lifecycle import holds

    holds.check_name(args.name)
    _ids(args)
    action = args.hold_command
    out: list[dict[str, Any]] = []
    if getattr(args, "server", None):
        from callvault.cli import remote

        with remote.connect(args) as b:
            c, ids_, t = b.client, args.call_ids, args.tenant or ""
            if action == "place":
                reply = c.place_hold(ids_, args.name, args.reason, tenant=t, timeout=None)
            elif action == "release":
                reply = c.request_release(ids_, args.name, args.reason, tenant=t, timeout=None)
            else:
                reply = c.approve_release(
                    ids_, args.name, reason=args.reason, tenant=t, timeout=None
                )
        for ho in reply.outcomes:
            doc: dict[str, Any] = {
                "tenant": ho.call.tenant,
                "call_id": ho.call.call_id,
                "changed": ho.changed,
                "note": ho.note,
                "log_index": ho.log_index,
            }
            if ho.erased:
                doc["erased"] = True
                doc["erase_log_index"] = ho.erase_log_index
            if ho.erase_pending:
                doc["erase_pending"] = ho.erase_pending
            out.append(doc)
    else:
        from callvault.cli import local

        by = local_identity()
        tenant = args.tenant or "default"
        holds.check_reason(args.reason, required=action != "approve-release")
        with local.connect(args) as lb:
            for c in args.call_ids:
                if action == "place":
                    o = holds.place(
                        lb.vault, c, tenant=tenant, name=args.name, reason=args.reason, by=by
                    )
                elif action == "release":
                    o = holds.request_release(
                        lb.vault, c, tenant=tenant, name=args.name, reason=args.reason, by=by
                    )
                else:
                    try:
                        o = holds.approve_release(
                            lb.vault, c, tenant=tenant, name=args.name, by=by, reason=args.reason
                        )
                    except holds.DualControl as e:
                        raise CallvaultError(
                            f"{e}; on a local vault the identity is the OS user "
                            f"({by['name']}): approve as another user, or on a server"
                        ) from e
                out.append(o.doc())
    if args.json:
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        for d in out:
            print(f"{d['call_id']}: {d['note']}")
    return 0


def cmd_hold_ls(args: argparse.Namespace) -> int:
    from callvault.lifecycle import holds

    if args.name:
        holds.check_name(args.name)
    if args.tenant:
        ids.check_call_id(args.tenant, "tenant")
    if getattr(args, "server", None):
        from callvault.cli import remote

        with remote.connect(args) as b:
            doc = b.client.list_holds(name=args.name or "", tenant=args.tenant or "")
    else:
        from callvault.cli import local

        with local.connect(args) as lb:
            doc = holds.holds_of(lb.vault, tenant=args.tenant or None, name=args.name or None)
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    if not doc["holds"]:
        print("no holds")
    for h in doc["holds"]:
        pend = f", {h['pending_releases']} release(s) requested" if h["pending_releases"] else ""
        print(f"{h['name']}: {len(h['calls'])} call(s){pend}")
        for c in h["calls"]:
            line = (
                f"  {c['tenant']}/{c['call_id']}  placed {c['placed']} by "
                f"{(c['by'] or {}).get('name', '?')}: {c['reason']}"
            )
            rel = c.get("release")
            if rel:
                line += (
                    f"  [release requested {utc(int(rel.get('requested_us') or 0))} by "
                    f"{(rel.get('by') or {}).get('name', '?')}: {rel.get('reason', '')}]"
                )
            if c.get("pending_erase"):
                line += "  [erasure deferred]"
            print(line)
    for p in doc.get("pending_erasures", []):
        print(
            f"erasure deferred: {p['tenant']}/{p['call_id']} requested "
            f"{utc(int(p.get('requested_us') or 0))} by {(p.get('by') or {}).get('name', '?')}"
            f": {p['reason']} (held by {', '.join(p['held_by']) or 'no hold: retention'})"
        )
    return 0

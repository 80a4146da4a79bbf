"""`callvault audit`: read and verify the audit trail (docs/access.md "Audit trail").

    callvault --data DIR audit [--call ID] [--identity N] [--since T] [--json]
    callvault --server ADDR audit ...          (Admin.Audit: the caller's view)
    callvault --data DIR audit verify [--json]

With --data the trail's files are read directly (a server may be running on the
directory: reading never takes the vault's lock); ``verify`` checks every frame and
link and each audit leaf against the vault's Merkle log (docs/format.md 8.12).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from callvault.cli.common import WHEN_HELP, iso, when_us
from callvault.errors import CallvaultError


def add_parser(sub: Any, verb: Any) -> None:
    """The `audit` verb (``verb`` is main's helper that makes one)."""
    v = verb(
        sub,
        "audit",
        "the audit trail: who did what to which call (verify: check its chain)",
        "The audit trail's entries, oldest first: one per RPC a server answered "
        "(allowed or denied) and one per anomaly alert. `audit verify` checks every "
        "entry's framing and hash link and that each audit leaf in the Merkle log "
        "matches the trail (--data DIR only).",
    )
    v.add_argument(
        "action", nargs="?", choices=("verify",), help="verify: check the trail (--data)"
    )
    v.add_argument("--call", metavar="ID", help="entries touching this call (of --tenant)")
    v.add_argument("--identity", metavar="NAME", help="entries of this identity")
    v.add_argument("--since", metavar="WHEN", type=when_us, help=f"entries at or after {WHEN_HELP}")
    v.add_argument("--until", metavar="WHEN", type=when_us, help="entries before WHEN")
    v.add_argument("--kind", choices=("rpc", "alert"), help="only RPCs, or only alerts")
    v.add_argument("--json", action="store_true", help="one JSON object per entry (per line)")
    v.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return _verify(args)
    if args.server and args.data:
        raise CallvaultError("give --data DIR or --server ADDR, not both")
    tenant = args.tenant if args.call else ""
    for doc in _entries(args, tenant):
        if args.json:
            print(json.dumps(doc, sort_keys=True))
        else:
            print(line(doc))
    return 0


def _entries(args: argparse.Namespace, tenant: str) -> Iterator[dict[str, Any]]:
    from callvault.access import audit
    from callvault.errors import InputError

    try:
        want = audit.Filter(
            call_id=args.call or "",
            tenant=tenant,
            identity=args.identity or "",
            since_us=args.since or 0,
            until_us=args.until or 0,
            kind=args.kind or "",
        )
    except InputError as err:
        raise CallvaultError(str(err)) from None
    if args.server:
        from callvault.cli import remote

        with remote.connect(args) as b:
            for e in b.client.audit(
                call_id=want.call_id,
                tenant=want.tenant,
                identity=want.identity,
                since=want.since_us,
                until=want.until_us or None,
                kind=want.kind,
            ):
                yield wire_doc(e)
        return
    directory = _audit_dir(args)
    for entry in audit.read_entries(directory):
        if want.matches(entry):
            yield dict(entry.doc, hash=entry.hash.hex())


def _audit_dir(args: argparse.Namespace) -> Path:
    if not args.data:
        raise CallvaultError("audit needs --data DIR (the vault's directory) or --server ADDR")
    directory = Path(args.data) / "audit"
    if not (directory / "trail").exists():
        raise CallvaultError(
            f"{args.data} has no audit trail ({directory}/trail): a server writes it"
        )
    return directory


def _verify(args: argparse.Namespace) -> int:
    from callvault.access import audit
    from callvault.integrity.log import MerkleLog
    from callvault.store.index import Index

    if args.server:
        raise CallvaultError(
            "audit verify reads the trail's files: run it with --data DIR on the "
            "server's machine (a running server may stay up)"
        )
    directory = _audit_dir(args)
    log_dir = Path(args.data) / "log"
    if (log_dir / "tree").exists():
        index_dir = Path(args.data) / "index"

        def claimed() -> set[int]:
            # a read-only index sees the index as it is when opened: opened per ask
            if not (index_dir / "CURRENT").exists():
                return set()
            idx = Index(index_dir, read_only=True)
            try:
                return idx.log_leaves()
            finally:
                idx.close()

        with MerkleLog.open(log_dir, read_only=True) as lg:
            result = audit.verify(directory, lg, claimed)
    else:
        result = audit.verify(directory, None)
    if args.json:
        json.dump(
            {
                "ok": not result.problems,
                "entries": result.entries,
                "leaves": result.leaves,
                "head": result.head.hex(),
                "first_bad_entry": result.first_bad or None,
                "problems": [str(p) for p in result.problems],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        for p in result.problems:
            print(f"PROBLEM {p}")
        state = "FAILED" if result.problems else "OK"
        print(
            f"audit trail {state}: {result.entries} entries, {result.leaves} audit "
            f"leaves checked, head {result.head.hex()}"
            + (f"; first bad entry: {result.first_bad}" if result.first_bad else "")
        )
    return 1 if result.problems else 0


def wire_doc(e: Any) -> dict[str, Any]:
    """An Admin.Audit AuditEntry as the stored entry's fields (docs/format.md 8.12)."""
    doc: dict[str, Any] = {
        "seq": e.seq,
        "time_us": e.time_us,
        "kind": e.kind,
        "identity": {
            "name": e.identity,
            "role": e.role,
            "tenant": e.identity_tenant or None,
            "via": e.via,
        },
        "method": e.method,
        "calls": [[c.tenant, c.call_id] for c in e.calls],
        "outcome": e.outcome,
        "peer": e.peer,
        "detail": e.detail,
        "hash": e.hash.hex(),
    }
    if e.kind == "alert":
        doc.update(rule=e.rule, cause=e.cause)
    else:
        doc.update(
            audio_seconds=e.audio_seconds,
            audio_bytes=e.audio_bytes,
            reason=e.reason,
            started_us=e.started_us,
        )
    return doc


def line(doc: dict[str, Any]) -> str:
    """One entry on one line: seq, time, who, what, outcome, calls, audio, peer, why."""
    ident = doc.get("identity") or {}
    who = f"{ident.get('name')}({ident.get('role') or '-'}"
    who += f"@{ident['tenant']})" if ident.get("tenant") else ")"
    method = str(doc.get("method", "")).rsplit("/", 1)[-1]
    calls = ",".join(f"{t}/{c}" for t, c in doc.get("calls", [])) or "-"
    parts = [f"{doc['seq']:>6}", iso(int(doc["time_us"])), who]
    if doc.get("kind") == "alert":
        parts += ["ALERT", str(doc.get("rule")), calls, str(doc.get("detail", ""))]
        return "  ".join(parts)
    parts += [method, str(doc.get("outcome")), calls]
    if doc.get("audio_seconds") or doc.get("audio_bytes"):
        parts.append(f"audio {doc.get('audio_seconds', 0):.1f}s/{doc.get('audio_bytes', 0)}B")
    parts.append(str(doc.get("peer", "")))
    if doc.get("reason"):
        parts.append(f"reason: {doc['reason']}")
    if doc.get("detail"):
        parts.append(f"({doc['detail']})")
    return "  ".join(parts)

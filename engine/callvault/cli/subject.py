"""`callvault erase-subject` and `callvault subject reindex`: erasure by data subject
(docs/policy.md "Erasure by data subject"; the keyed subject index: docs/format.md
8.16). On --data DIR or a server (Lifecycle.EraseSubject, admins only). The value is
never printed: the report names the subject by its key and HMAC."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callvault.errors import CallvaultError

VerbMaker = Callable[..., argparse.ArgumentParser]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: VerbMaker) -> None:
    """The `erase-subject` and `subject` verbs (``verb`` is cli.main's verb maker)."""
    e = verb(
        sub,
        "erase-subject",
        "erase every call of a data subject (held or retained ones deferred, with why)",
        "Find every call of the subject (customer_number=VALUE, or an extra key) through "
        "the keyed subject index (HMACs: the value is not stored in clear), erase those "
        "nothing keeps, and defer the others (a legal hold, a retention end), marking "
        "them pending_erase so they are erased once free. Prints the report (--json: "
        "JSON); never the value. On --data DIR, or a server (admins only).",
    )
    e.add_argument(
        "--meta",
        required=True,
        metavar="KEY=VALUE",
        help="the subject, e.g. customer_number=+15551234567 (KEY alone with --value-from)",
    )
    e.add_argument(
        "--value-from",
        metavar="FILE",
        help="read the value from FILE ('-': stdin; keeps it out of ps and shell history)",
    )
    e.add_argument("--reason", required=True, help="why (kept with each erasure)")
    e.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    e.add_argument(
        "--all-tenants",
        action="store_true",
        help="search every tenant (each has its own subject key; a platform identity's)",
    )
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_erase_subject)
    s = verb(
        sub,
        "subject",
        "the keyed subject index",
        "The subject index keeps HMACs of each call's customer number (and [subject] "
        "keys of extra) under a per-tenant key (docs/format.md 8.16).",
    )
    ssub = s.add_subparsers(dest="subject_command", required=True, metavar="ACTION")
    r = verb(
        ssub,
        "reindex",
        "index the calls recorded before the subject index",
        "Decrypt the customer numbers of the sealed calls that have no HMAC yet (recorded "
        "before the subject index) and store their HMACs in a lifecycle record each (a "
        "reindex keeps them). erase-subject does this by itself. On --data DIR.",
    )
    r.add_argument("--all-tenants", action="store_true", help="every tenant (default: --tenant)")
    r.set_defaults(func=cmd_subject_reindex)


def _subject(args: argparse.Namespace) -> tuple[str, str]:
    from callvault.lifecycle.subject import parse_meta

    if args.value_from:
        if "=" in args.meta:
            raise CallvaultError("with --value-from, --meta names the key only")
        src = args.value_from
        text = sys.stdin.read() if src == "-" else Path(src).read_text()
        return args.meta.strip(), text.strip()
    return parse_meta(args.meta)


def cmd_erase_subject(args: argparse.Namespace) -> int:
    name, value = _subject(args)
    if args.all_tenants and args.tenant not in ("", "default", None):
        raise CallvaultError("give --tenant or --all-tenants, not both")
    if getattr(args, "server", None):
        from callvault.cli import remote

        with remote.connect(args) as b:
            rep = b.client.erase_subject(
                name,
                value,
                args.reason,
                dry_run=args.dry_run,
                tenant="" if args.all_tenants else args.tenant,
                all_tenants=args.all_tenants,
                timeout=None,
            )
    else:
        from callvault.cli import local
        from callvault.lifecycle import subject

        with local.connect(args) as lb:
            rep = subject.erase_subject(
                lb.vault,
                name=name,
                value=value,
                reason=args.reason,
                tenant=None if args.all_tenants else args.tenant,
                dry_run=args.dry_run,
                by={"name": "local", "role": "admin", "tenant": None, "via": "cli --data"},
            )
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True))
    else:
        print_report(rep)
    return 1 if rep.get("failed") else 0


def print_report(rep: dict[str, Any]) -> None:
    """The report for a person: counts, then each call with why."""
    dry = " (dry run: nothing changed)" if rep["dry_run"] else ""
    would = "would erase" if rep["dry_run"] else "erased"
    macs = ", ".join(f"{t}: {m[:16]}..." for t, m in sorted(rep["subject"]["hmac"].items()))
    print(f"subject {rep['subject']['key']} (HMAC {macs or 'none: no call indexed'}){dry}")
    if rep["not_found"]:
        print(f"no call of this subject in tenant(s) {', '.join(rep['tenants']) or 'none'}")
    print(f"{would} {len(rep['erased'])} call(s), deferred {len(rep['deferred'])}")
    for e in rep["erased"]:
        leaf = f" (erase leaf {e['log_index']})" if e["log_index"] >= 0 else ""
        print(f"  {would} {e['tenant']}/{e['call_id']}{leaf}")
    for d in rep["deferred"]:
        mark = "; pending erasure recorded" if d.get("pending_erase") else ""
        print(f"  deferred {d['tenant']}/{d['call_id']}: {d['why']}{mark}")
    for e in rep["already_erased"]:
        print(f"  already erased {e['tenant']}/{e['call_id']} (erase leaf {e['log_index']})")
    for e in rep.get("failed", []):
        print(f"  FAILED {e['tenant']}/{e['call_id']}: {e['error']} (run erase-subject again)")
    for e in rep["being_recorded"] + rep["unindexed_open"]:
        print(f"  being recorded {e['tenant']}/{e['call_id']}: run erase-subject again once sealed")


def cmd_subject_reindex(args: argparse.Namespace) -> int:
    if getattr(args, "server", None):
        raise CallvaultError(
            "subject reindex runs on --data DIR (a server's erase-subject does it by itself)"
        )
    from callvault.cli import local
    from callvault.lifecycle import subject

    with local.connect(args) as lb:
        total, left = 0, []
        for t in subject.tenants_of(lb.vault, None if args.all_tenants else args.tenant):
            done = subject.backfill(
                lb.vault,
                t,
                by={"name": "local", "role": "admin", "tenant": None, "via": "cli --data"},
            )
            total += done["indexed"]
            left += [f"{t}/{c}" for c in done["open"]]
    print(f"subject index: {total} call(s) indexed")
    if left:
        print(f"{len(left)} call(s) still being recorded, not indexed: {', '.join(left[:10])}")
    return 0

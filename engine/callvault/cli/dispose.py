"""`callvault dispose [--dry-run] [--json]`, `dispose approve ID`, `dispose reports`,
`dispose verify-report FILE --public-key KEY` (docs/policy.md "Disposal").

On --data DIR (the vault's own process: its identity is the operating-system user)
or --server ADDR (Lifecycle.PlanDisposal for a dry run and the reports,
Lifecycle.Dispose to dispose or approve). verify-report needs neither: only the
report file and the log's public key."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callvault.cli.common import local_identity
from callvault.errors import CallvaultError
from callvault.lifecycle import disposal
from callvault.vault.lifecycle import utc

VerbMaker = Callable[..., argparse.ArgumentParser]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: VerbMaker) -> None:
    """The `dispose` verb and its actions (``verb`` is cli.main's verb maker)."""
    d = verb(
        sub,
        "dispose",
        "dispose of the calls past their retention end, with a signed report",
        "Find the calls past their retention end that nothing keeps (no legal hold, no "
        "compliance or governance end in the future) and write a disposition report "
        "signed with the log key. Without --dry-run: crypto-shred each (a receipt in "
        "the Merkle log, then the key destroyed), then reclaim the space; or, with "
        "[disposal] approval = true, keep the report pending until another admin "
        "approves it (`dispose approve ID`). Refused when the clock reads earlier than "
        "the latest time the vault recorded. On --data DIR or --server ADDR.",
    )
    d.add_argument("--dry-run", action="store_true", help="only the report: nothing changes")
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    d.add_argument(
        "--config",
        metavar="FILE",
        help="with --data: the server's settings file, for [disposal] (approval, "
        "reclaim_threshold) and [archive]",
    )
    d.set_defaults(func=cmd_dispose, dispose_command=None)
    dsub = d.add_subparsers(dest="dispose_command", metavar="ACTION")
    a = verb(dsub, "approve", "approve and apply a pending report (another admin)")
    a.add_argument("report_id", metavar="ID", help="the report's id (dr-...)")
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.add_argument("--config", metavar="FILE", help="as for dispose")
    a.set_defaults(func=cmd_approve)
    r = verb(dsub, "reports", "list the kept disposition reports, oldest first")
    r.add_argument("--json", action="store_true", help="print them as JSON, one a line")
    r.set_defaults(func=cmd_reports)
    v = verb(
        dsub,
        "verify-report",
        "check a disposition report's signature offline",
        "Check a disposition report file (as `dispose --json` prints it, or "
        "DATA/lifecycle/reports/ID.json) against the log's public key you trust "
        "(`callvault checkpoint --public-key` prints it). Needs no vault.",
    )
    v.add_argument("file", metavar="FILE", help="the report ('-': stdin)")
    v.add_argument(
        "--public-key",
        required=True,
        metavar="KEY",
        help="the log's verifier key: a file holding it, or the key itself",
    )
    v.set_defaults(func=cmd_verify_report)


def _settings(args: argparse.Namespace) -> tuple[disposal.Settings, Any]:
    path = getattr(args, "config", None)
    if not path:
        return disposal.Settings(), None
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise CallvaultError(f"--config {path}: {e}") from e
    return disposal.Settings.parse(doc.get("disposal")), doc.get("archive")


def _remote(args: argparse.Namespace, method: str, **fields: Any) -> Any:
    from callvault.cli import remote

    with remote.connect(args) as b:
        return getattr(b.client, method)(**fields)


def _print_report(report: disposal.Report, as_json: bool) -> None:
    if as_json:
        print(report.to_json(indent=1))
        return
    body = report.body
    print(
        f"report {report.id} ({report.status}), {len(report.calls)} call(s) due at "
        f"{utc(int(body['created_us']))}, log size {body['log_size']}"
    )
    for c in report.calls:
        until = utc(int(c["until_us"])) if c.get("until_us") else "-"
        why = "deferred erasure" if c.get("why") == "pending-erase" else f"rule {c['rule']}"
        print(f"  {c['tenant']}/{c['call_id']}  {why}  {c['mode'] or '-'}  until {until}")
    res = report.results
    if res:
        print(f"disposed {res.get('disposed', 0)} call(s), skipped {res.get('skipped', 0)}")
        for r in res.get("calls", []):
            if r.get("outcome") != "disposed":
                print(f"  {r['tenant']}/{r['call_id']}: {r.get('outcome')}: {r.get('why', '')}")
            elif r.get("archive"):
                print(f"  {r['tenant']}/{r['call_id']}: archive: {r['archive']}")
        rec = res.get("reclaim") or {}
        if "error" in rec:
            print(f"reclaim failed (the calls are disposed; the space waits): {rec['error']}")
        elif rec:
            print(f"reclaimed {rec.get('bytes_freed', 0)} bytes")
    if report.status == "pending" and report.first_approval is not None:
        who = report.first_approval.get("name", "?")
        print(
            f"approved by {who}; the sweeper planned it, so a second admin applies it: "
            f"`callvault dispose approve {report.id}`"
        )
    elif report.status == "pending":
        print(f"pending approval: another admin runs `callvault dispose approve {report.id}`")


def _from_reply(reply: Any) -> disposal.Report | None:
    if not reply.report_json:
        return None
    return disposal.Report.from_doc(json.loads(reply.report_json))


def cmd_dispose(args: argparse.Namespace) -> int:
    if getattr(args, "server", None):
        method = "plan_disposal" if args.dry_run else "dispose"
        report = _from_reply(_remote(args, method))
    else:
        from callvault.cli import local
        from callvault.server.lc_disposal import archive_of

        settings, archive_section = _settings(args)
        with local.connect(args) as lb:
            v = lb.vault
            if args.dry_run:
                report = disposal.plan(v, by=local_identity())
            else:
                archive = archive_of(v, archive_section)
                report = disposal.run(v, settings, by=local_identity(), archive=archive)
    if report is None:
        if args.json:
            print("{}")
        else:
            print("nothing is due for disposal")
        return 0
    _print_report(report, args.json)
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    if getattr(args, "server", None):
        report = _from_reply(_remote(args, "dispose", report_id=args.report_id))
        assert report is not None
    else:
        from callvault.cli import local
        from callvault.server.lc_disposal import archive_of

        settings, archive_section = _settings(args)
        with local.connect(args) as lb:
            report = disposal.approve(
                lb.vault,
                args.report_id,
                by=local_identity(),
                archive=archive_of(lb.vault, archive_section),
                reclaim_threshold=settings.reclaim_threshold,
            )
    _print_report(report, args.json)
    return 0


def cmd_reports(args: argparse.Namespace) -> int:
    if getattr(args, "server", None):
        kept = [disposal.Report.from_doc(d) for d in _remote(args, "list_disposal_reports")]
    else:
        from callvault.cli import local

        with local.connect(args) as lb:
            kept = disposal.reports(lb.vault)
    for r in kept:
        if args.json:
            print(r.to_json())
            continue
        res = r.results or {}
        done = f", {res.get('disposed', 0)} disposed" if r.status == "applied" else ""
        print(f"{r.id}  {r.status}  {utc(int(r.body['created_us']))}  {len(r.calls)} call(s){done}")
    return 0


def cmd_verify_report(args: argparse.Namespace) -> int:
    key = args.public_key
    try:
        if Path(key).is_file():
            key = Path(key).read_text().strip()
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as e:
        raise CallvaultError(f"cannot read {e.filename}: {e.strerror}") from e
    try:
        body = disposal.verify_report(text, key)
    except disposal.ReportInvalid as e:
        raise CallvaultError(f"the disposition report does not verify: {e}") from e
    print(
        f"report {body['id']} verifies: {len(body['calls'])} call(s), created "
        f"{utc(int(body['created_us']))}, signed by {key.split('+')[0]} at log size "
        f"{body['log_size']}"
    )
    return 0

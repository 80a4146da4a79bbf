"""`callvault archive configure|run|status` and `callvault reindex --from-archive`:
the S3 Object Lock archive tier (callvault.lifecycle.archive; docs/policy.md
"Archive").

Settings are the ``[archive]`` section of a config file (the server's `serve --config`
TOML, or a file holding only that section). ``archive configure --config FILE`` keeps
the section as DATA/archive.toml (0600), so the local verbs (``archive run``, and
play/export/verify/bundle of an evicted call) find the archive without a flag."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callvault.errors import CallvaultError

VerbMaker = Callable[..., argparse.ArgumentParser]


def _section(path: str) -> dict[str, Any]:
    """The [archive] section of FILE (TOML, or JSON when it ends in .json)."""
    p = Path(path)
    try:
        text = p.read_text()
        doc = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as e:
        raise CallvaultError(f"{p}: {e}") from None
    section = doc.get("archive")
    if not isinstance(section, dict):
        raise CallvaultError(f'{p} has no [archive] section (docs/policy.md "Archive")')
    return section


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: VerbMaker) -> None:
    a = verb(
        sub,
        "archive",
        "move sealed calls to S3 with Object Lock; evict their local audio",
        'The archive tier (docs/policy.md "Archive"): each sealed call older than '
        "[archive] after becomes one self-describing object in the bucket, locked "
        "(COMPLIANCE until a compliance retention end, GOVERNANCE otherwise, a legal "
        "hold for a held call), read back and checked, then its local audio is let go "
        "of. Play, export, verify and bundle fetch it from the bucket.",
    )
    asub = a.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    c = verb(
        asub,
        "configure",
        "keep the [archive] settings with the vault (DATA/archive.toml)",
        "Check the [archive] section of FILE and keep it as DATA/archive.toml (0600): "
        "`archive run` and the reads of evicted calls on --data DIR use it.",
    )
    c.add_argument("--config", required=True, metavar="FILE", help="a file with [archive]")
    c.set_defaults(func=cmd_configure)
    r = verb(
        asub,
        "run",
        "archive the calls due now (and evict the archived ones)",
        "Archive every call due (sealed at least [archive] after ago, not archived), "
        "evict the archived ones (unless --no-evict or evict = false) and upload the "
        "Merkle log. On --data DIR (settings: --config FILE, else DATA/archive.toml) "
        "or a server (Lifecycle.ArchiveRun, platform admin; the server's [archive]).",
    )
    r.add_argument("--limit", type=int, default=0, help="at most N calls (default: all due)")
    r.add_argument("--config", metavar="FILE", help="a file with [archive] (local only)")
    r.add_argument("--no-evict", action="store_true", help="keep the local audio (local only)")
    r.add_argument("--json", action="store_true", help="the report as JSON")
    r.set_defaults(func=cmd_run)
    ls = verb(
        asub,
        "ls",
        "archived calls: object, lock, evicted",
        "One archived call a line (--data DIR): tenant, call id, S3 lock mode and "
        "retain-until date, legal hold, whether its local audio was let go of, the "
        "object's key. Reads the index only (no S3 request).",
    )
    ls.add_argument("--json", action="store_true", help="one JSON object a line")
    ls.set_defaults(func=cmd_ls)
    s = verb(
        asub,
        "status",
        "archived, evicted and due calls",
        "Counts of archived calls, their bytes, evicted calls and calls due (--data DIR).",
    )
    s.add_argument("--config", metavar="FILE", help="a file with [archive]")
    s.add_argument("--json", action="store_true", help="as JSON")
    s.set_defaults(func=cmd_status)


def add_reindex_flags(v: argparse.ArgumentParser) -> None:
    """`reindex --from-archive FILE`: rebuild an EMPTY data dir's catalog from the bucket."""
    v.add_argument(
        "--from-archive",
        metavar="FILE",
        help="rebuild the catalog of an EMPTY --data DIR from the bucket of FILE's [archive] "
        "(needs --key-file: the vault's key file, from your backup)",
    )


def reindex_or(
    fallback: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if getattr(args, "from_archive", None):
            return cmd_rebuild(args)
        return fallback(args)

    return run


def _settings(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from callvault.lifecycle import archive as arch

    if getattr(args, "config", None):
        return _section(args.config)
    stored = arch.stored_settings(data)
    if stored is None:
        raise CallvaultError(
            f"no archive settings: pass --config FILE (with [archive]) or keep them with "
            f"`callvault --data {data} archive configure --config FILE`"
        )
    return stored


def cmd_configure(args: argparse.Namespace) -> int:
    from callvault.lifecycle import archive as arch

    if not args.data:
        raise CallvaultError("archive configure needs --data DIR")
    data = Path(args.data)
    if not data.is_dir():
        raise CallvaultError(f"no vault at {data}")
    s = arch.store_settings(data, _section(args.config))
    print(f"callvault: archive settings kept in {data / arch.SETTINGS_FILE} (bucket {s.bucket})")
    return 0


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    print(
        f"archived {len(report.get('archived', []))} call(s) ({report.get('bytes', 0)} bytes), "
        f"evicted {len(report.get('evicted', []))}, errors {len(report.get('errors', []))}"
    )
    for err in report.get("errors", []):
        print(f"  {err.get('call_id', '-')}: {err['error']}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise CallvaultError("--limit is 0 (all due) or more")
    if getattr(args, "server", None):
        if args.config or args.no_evict:
            raise CallvaultError(
                "--config and --no-evict are for --data DIR (a server uses its own)"
            )
        from callvault.cli import remote

        with remote.connect(args) as b:
            report = b.client.archive_run(limit=args.limit)
    else:
        from callvault.cli import local
        from callvault.lifecycle import archive as arch

        if not args.data:
            raise CallvaultError("archive run needs --data DIR or --server ADDR")
        section = _settings(args, Path(args.data))
        with local.connect(args) as lb:
            a = arch.Archive.from_settings(lb.vault, section).attach()
            report = a.run(limit=args.limit, evict=False if args.no_evict else None)
    _print_report(report, args.json)
    return 1 if report.get("errors") else 0


def cmd_status(args: argparse.Namespace) -> int:
    from callvault.cli import local
    from callvault.lifecycle import archive as arch

    if getattr(args, "server", None):
        raise CallvaultError("archive status runs on --data DIR (a server: `callvault stats`)")
    if not args.data:
        raise CallvaultError("archive status needs --data DIR")
    section = _settings(args, Path(args.data))
    with local.connect(args) as lb:
        st = arch.Archive.from_settings(lb.vault, section).status()
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        for k in ("bucket", "archived_calls", "archive_bytes", "evicted_calls", "due_calls"):
            print(f"{k}: {st[k]}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from callvault.cli import local
    from callvault.vault.lifecycle import utc as utc_text

    if getattr(args, "server", None) or not args.data:
        raise CallvaultError("archive ls runs on --data DIR")
    with local.connect(args) as lb:
        v = lb.vault
        for tenant in v.index.tenants():
            for e in v.list_calls(tenant=tenant):
                a = e.archive
                if not a:
                    continue
                row = {
                    "tenant": e.tenant,
                    "call_id": e.call_id,
                    "state": e.state,
                    "mode": a.get("mode", ""),
                    "retain_until_us": a.get("retain_until_us", 0),
                    "legal_hold": bool(e.holds),
                    "evicted": not e.local,
                    "object": f"s3://{a.get('bucket')}/{a.get('key')}",
                    "version_id": a.get("version_id", ""),
                    "deleted_us": a.get("deleted_us", 0),
                }
                if args.json:
                    print(json.dumps(row, sort_keys=True))
                    continue
                until = utc_text(row["retain_until_us"]) if row["retain_until_us"] else "-"
                flags = (
                    ",".join(
                        f
                        for f, on in (
                            ("held", row["legal_hold"]),
                            ("evicted", row["evicted"]),
                            ("deleted", bool(row["deleted_us"])),
                        )
                        if on
                    )
                    or "-"
                )
                print(f"{e.tenant}\t{e.call_id}\t{row['mode']}\t{until}\t{flags}\t{row['object']}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from callvault.lifecycle import archive as arch

    if getattr(args, "server", None) or not args.data:
        raise CallvaultError("reindex --from-archive needs --data DIR (an empty directory)")
    if not args.key_file:
        raise CallvaultError(
            "reindex --from-archive needs --key-file FILE: the vault's key file from your "
            "backup (every key in the bucket is wrapped by it)"
        )
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    settings = arch.Settings.from_dict(_section(args.from_archive))
    done = arch.rebuild_catalog(data, Path(args.key_file), settings)
    arch.store_settings(data, _section(args.from_archive))
    print(
        f"catalog rebuilt from s3://{settings.bucket}/{settings.prefix}: {done['calls']} "
        f"call(s), Merkle log of {done['log_size']} leaves; their audio stays in the archive"
    )
    if done["erased"] or done["erased_tenants"]:
        print(
            f"restored as erased (the bucket's erasure markers): {done['erased']} call(s), "
            f"{done['erased_tenants']} tenant(s); no key of theirs was written"
        )
    return 0

"""`callvault policy apply|show|check`: the retention policy (docs/policy.md).

``apply`` and ``show`` run on the vault in --data DIR or on a server (Lifecycle
ApplyPolicy, platform admins; GetPolicy); ``check`` reads a file and says what it
would do, touching nothing."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callvault.cli.common import local_identity
from callvault.errors import CallvaultError, InputError
from callvault.lifecycle import policy as pol
from callvault.vault.lifecycle import utc

VerbMaker = Callable[..., argparse.ArgumentParser]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: VerbMaker) -> None:
    """The `policy` verb and its actions (``verb`` is cli.main's verb maker)."""
    p = verb(
        sub,
        "policy",
        "the retention policy: apply a file, show the one in force",
        "How long calls are kept (docs/policy.md): a TOML file of a default and rules "
        "(first match wins), each a duration and a mode (compliance, governance, "
        "default). Every call gets its retention end when it is sealed.",
    )
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    a = verb(
        psub,
        "apply",
        "make a policy file the one in force",
        "Check FILE and make it the policy in force (a bad file is refused with its line "
        "and the previous policy stays). Calls sealed from now on get their retention "
        "end under it; --reapply also recomputes it for every sealed call. On --data DIR, "
        "or a server (platform admins).",
    )
    a.add_argument("file", metavar="FILE.toml", help="the policy file (docs/policy.md)")
    a.add_argument(
        "--reapply",
        action="store_true",
        help="recompute the retention of every sealed call (compliance ends are never "
        "shortened); one lifecycle record per call that changes",
    )
    a.add_argument(
        "--shorten-governance",
        action="store_true",
        help="with --reapply: governance ends may be made earlier (needs --reason); "
        "without it they are kept",
    )
    a.add_argument("--reason", default="", help="why (kept in each reapply record)")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_apply)
    s = verb(psub, "show", "the policy in force: its rules, who applied it and when")
    s.add_argument("--json", action="store_true", help="print JSON (the rules and the file)")
    s.set_defaults(func=cmd_show)
    c = verb(psub, "check", "check a policy file and print its rules (nothing changes)")
    c.add_argument("file", metavar="FILE.toml", help="the policy file")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_check)


def _read(path: str) -> tuple[str, pol.Policy]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CallvaultError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    return text, pol.Policy.load(text, where=path)


def _when(us: int) -> str:
    return utc(us) if us else "-"


def _rules_lines(p: pol.Policy) -> list[str]:
    out = []
    for r in [*p.rules, p.default]:
        what = (
            " and ".join(f"{k} in {list(v)}" if len(v) > 1 else f"{k} = {v[0]}" for k, v in r.match)
            or "every other call"
        )
        src = f" (preset {r.preset})" if r.preset else ""
        out.append(f"  {r.name}: {what} -> keep {r.keep}, {r.mode}{src}")
    return out


def _check_flags(args: argparse.Namespace) -> None:
    _one_place(args)
    if args.shorten_governance and not args.reapply:
        raise InputError("--shorten-governance is part of --reapply")
    if args.shorten_governance and not args.reason.strip():
        raise InputError("--shorten-governance needs --reason (kept in each record)")


def cmd_apply(args: argparse.Namespace) -> int:
    _check_flags(args)
    text, p = _read(args.file)
    counts: dict[str, int] | None = None
    if getattr(args, "server", None):
        from callvault.cli import remote

        with remote.connect(args) as b:
            r = b.client.apply_policy(
                text,
                reapply=args.reapply,
                reason=args.reason,
                shorten_governance=args.shorten_governance,
            )
        applied: dict[str, Any] = {
            "sha256": r.sha256,
            "applied_us": r.applied_us,
            "applied_by": r.applied_by,
        }
        if r.HasField("reapplied"):
            counts = {f.name: getattr(r.reapplied, f.name) for f in r.reapplied.DESCRIPTOR.fields}
    else:
        from callvault.cli import local

        with local.connect(args) as lb:
            by = local_identity()
            a = pol.store(lb.vault, p, by=by["name"])
            pol.attach(lb.vault, p)
            applied = {"sha256": a.sha256, "applied_us": a.applied_us, "applied_by": a.applied_by}
            if args.reapply:
                counts = pol.reapply(
                    lb.vault,
                    p,
                    by=by,
                    reason=args.reason,
                    shorten_governance=args.shorten_governance,
                ).doc()
    if args.json:
        print(json.dumps({**applied, **p.doc(), "reapplied": counts}, indent=2))
        return 0
    print(f"policy {applied['sha256'][:12]} in force ({args.file}):")
    print("\n".join(_rules_lines(p)))
    if counts is not None:
        print(
            f"reapplied to {counts['calls']} sealed call(s): {counts['changed']} changed, "
            f"{counts['unchanged']} unchanged, {counts['kept_compliance']} kept a later "
            f"compliance end, {counts['kept_governance']} kept a later governance end"
            + (" (--shorten-governance --reason R to shorten)" if counts["kept_governance"] else "")
        )
    return 0


def _one_place(args: argparse.Namespace) -> None:
    if getattr(args, "server", None) and args.data:
        raise CallvaultError("give --data DIR or --server ADDR, not both")


def cmd_show(args: argparse.Namespace) -> int:
    _one_place(args)
    if getattr(args, "server", None):
        from callvault.cli import remote

        with remote.connect(args) as b:
            r = b.client.get_policy()
        if not r.toml:
            a = None
        else:
            a = pol.Applied(r.sha256, r.applied_us, r.applied_by, r.source, text=r.toml)
            a.policy = pol.Policy.load(r.toml, where="the server's policy")
    else:
        from callvault.cli.local import is_vault

        if not args.data:
            raise CallvaultError("policy show needs --data DIR or --server ADDR")
        if not is_vault(Path(args.data)):
            raise CallvaultError(f"no vault at {args.data}")
        a = pol.current(Path(args.data))  # files only: also while a server holds the vault
    if a is None or a.policy is None:
        if args.json:
            print(json.dumps(None))
        else:
            print("no retention policy applied: calls are kept until one is (docs/policy.md)")
        return 0
    if args.json:
        print(json.dumps({**a.doc(), **a.policy.doc(), "toml": a.text}, indent=2))
        return 0
    print(
        f"policy {a.sha256[:12]} applied {_when(a.applied_us)} by {a.applied_by or '?'} "
        f"({a.source}); first match wins:"
    )
    print("\n".join(_rules_lines(a.policy)))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    _, p = _read(args.file)
    if args.json:
        print(json.dumps({"sha256": p.sha256, **p.doc()}, indent=2))
        return 0
    print(f"{args.file}: a valid policy ({p.sha256[:12]}); first match wins:")
    print("\n".join(_rules_lines(p)))
    return 0

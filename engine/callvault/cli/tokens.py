"""The token verbs: `callvault token create|ls|revoke`, on one of three stores:

- ``--data DIR``: the server's store, DATA/access/ (works while the server runs:
  the first admin token is made this way);
- ``--server ADDR``: the same through Admin.CreateToken/ListTokens/RevokeToken
  (permission "tokens");
- ``token ... --spool DIR``: a sidecar's control API store, SPOOL/access/.

`create` prints the token once, alone on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from callvault.cli.common import iso
from callvault.errors import CallvaultError

SIDECAR_ROLE = "recorder"  # the role of a sidecar's control tokens


def _where(args: argparse.Namespace) -> str:
    spool = getattr(args, "spool", None)
    targets = [t for t in (args.data, getattr(args, "server", None), spool) if t]
    if len(targets) != 1:
        raise CallvaultError("token: give one of --data DIR, --server ADDR, or --spool DIR")
    if spool:
        return "spool"
    return "data" if args.data else "server"


def _store(args: argparse.Namespace, where: str, *, create: bool = False) -> Any:
    """The store of --data DIR or --spool DIR; ``create``: the directory may be new
    (the first token is made before the first `serve` or `sidecar`)."""
    from callvault.access.tokens import TokenStore

    root = Path(args.spool if where == "spool" else args.data)
    if root.exists() and not root.is_dir():
        raise CallvaultError(f"{root} is not a directory")
    if not create and not root.is_dir():
        raise CallvaultError(f"{root} does not exist (the --{where} directory)")
    return TokenStore(root / "access")


def _row(d: dict[str, Any]) -> dict[str, Any]:
    """A token as `token ls --json` prints it (times as ISO and µs)."""
    out = dict(d)
    for k in ("created", "expires", "revoked"):
        us = d.get(f"{k}_us")
        out[k] = iso(us) if us else None
    return out


def cmd_token_create(args: argparse.Namespace) -> int:
    from callvault.access.tokens import parse_span

    where = _where(args)
    expires_s = parse_span(args.expires) if args.expires else None
    if where == "spool":
        if args.token_tenant or args.platform or (args.role and args.role != SIDECAR_ROLE):
            raise CallvaultError(
                f"a sidecar's control tokens are platform tokens of role {SIDECAR_ROLE}: "
                "give neither --tenant, --platform nor another --role"
            )
        role, tenant = SIDECAR_ROLE, None
    else:
        if not args.role:
            raise CallvaultError("token create needs --role ROLE")
        if bool(args.token_tenant) == bool(args.platform):
            raise CallvaultError(
                "token create needs --tenant NAME (the identity's tenant) or --platform "
                "(every tenant)"
            )
        role, tenant = args.role, (None if args.platform else args.token_tenant)
    if where == "server":
        from callvault.cli import remote

        with remote.connect(args) as backend:
            reply = backend.client.create_token(
                args.name,
                role,
                tenant=tenant or "",
                platform=tenant is None,
                expires_s=expires_s or 0,
            )
        text, tid, expires_us = reply.token, reply.info.id, reply.info.expires_us
    else:
        text, info = _store(args, where, create=True).create(args.name, role, tenant, expires_s)
        tid, expires_us = info.id, info.expires_us or 0
    print(text, flush=True)
    scope = f"tenant {tenant}" if tenant else "platform (every tenant)"
    until = f"expires {iso(expires_us)}" if expires_us else "never expires"
    print(
        f"callvault: token {tid} for {args.name} (role {role}, {scope}, {until}); "
        "it is shown only this once: keep it secret (the store keeps only its hash)",
        file=sys.stderr,
    )
    return 0


def _listed(args: argparse.Namespace, where: str) -> list[dict[str, Any]]:
    if where == "server":
        from callvault.cli import remote

        with remote.connect(args) as backend:
            return [
                {
                    "id": t.id,
                    "name": t.name,
                    "role": t.role,
                    "tenant": None if t.platform else t.tenant,
                    "created_us": t.created_us,
                    "expires_us": t.expires_us or None,
                    "revoked_us": t.revoked_us or None,
                    "state": t.state,
                }
                for t in backend.client.list_tokens()
            ]
    store = _store(args, where)
    now = int(time.time() * 1e6)
    return [t.public(now) for t in store.list()]


def cmd_token_ls(args: argparse.Namespace) -> int:
    rows = [_row(d) for d in _listed(args, _where(args))]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    head = ("ID", "NAME", "ROLE", "TENANT", "STATE", "CREATED", "EXPIRES")
    table = [
        (
            r["id"],
            r["name"],
            r["role"],
            r["tenant"] or "*",
            r["state"],
            r["created"] or "-",
            r["expires"] or "never",
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *table, strict=True)]
    for line in (head, *table):
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    where = _where(args)
    if where == "server":
        from callvault.cli import remote

        with remote.connect(args) as backend:
            done = [(t.id, t.name) for t in backend.client.revoke_token(args.token_ref)]
    else:
        done = [(t.id, t.name) for t in _store(args, where).revoke(args.token_ref)]
    for tid, name in done:
        print(f"revoked {tid} ({name})")
    return 0


def add_parser(sub: Any, verb: Any) -> None:
    """The `token` verb and its actions (``verb`` is main's _verb)."""
    from callvault.access.identity import ROLES

    tk = verb(
        sub,
        "token",
        "API tokens: create, list, revoke (of --data DIR, --server ADDR, or a "
        "sidecar's --spool DIR)",
    )
    tsub = tk.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    spool_help = "a sidecar's spool directory: its control API's tokens (SPOOL/access)"
    tc = verb(
        tsub,
        "create",
        "make a token; prints it once on stdout",
        "Make an API token and print it once on stdout (the store keeps only its "
        "hash). A server's token needs --role and --tenant NAME or --platform; a "
        f"sidecar's (--spool) is a platform token of role {SIDECAR_ROLE}.",
    )
    tc.add_argument("--name", required=True, help="who or what uses it (ann, pbx1)")
    tc.add_argument("--role", choices=ROLES, help="the identity's role (docs/access.md)")
    tc.add_argument("--tenant", dest="token_tenant", metavar="NAME", help="the identity's tenant")
    tc.add_argument("--platform", action="store_true", help="a platform identity: every tenant")
    tc.add_argument(
        "--expires", metavar="SPAN", help="valid for N s, m, h, d or w (90d); default never"
    )
    tc.add_argument("--spool", metavar="DIR", help=spool_help)
    tc.set_defaults(func=cmd_token_create)
    tl = verb(tsub, "ls", "list tokens (never their secrets): state, role, tenant, expiry")
    tl.add_argument("--json", action="store_true", help="print JSON")
    tl.add_argument("--spool", metavar="DIR", help=spool_help)
    tl.set_defaults(func=cmd_token_ls)
    tr = verb(tsub, "revoke", "revoke a token by id, or every active token of a name")
    tr.add_argument("token_ref", metavar="ID|NAME", help="the token's id or name")
    tr.add_argument("--spool", metavar="DIR", help=spool_help)
    tr.set_defaults(func=cmd_token_revoke)

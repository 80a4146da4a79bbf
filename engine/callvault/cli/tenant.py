"""`callvault tenant erase|rotate-key`: a tenant's key-encryption key (docs/format.md
8.6). ``erase`` runs on the vault in --data DIR or on a server (Admin.EraseTenant,
a platform identity only); ``rotate-key`` on --data DIR."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from callvault import ids
from callvault.errors import CallvaultError

VerbMaker = Callable[..., argparse.ArgumentParser]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: VerbMaker) -> None:
    """The `tenant` verb and its actions (``verb`` is cli.main's verb maker)."""
    t = verb(
        sub,
        "tenant",
        "erase a tenant, or rotate its key-encryption key",
        "Each tenant's call keys are wrapped under its own key-encryption key (KEK), "
        "itself wrapped under the vault's key file (docs/format.md 8.6).",
    )
    tsub = t.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    e = verb(
        tsub,
        "erase",
        "destroy the tenant's KEK: every call of it unreadable at once",
        "Erase a whole tenant: a tombstone (a segment record and a Merkle log leaf) is "
        "stored, every call of the tenant is marked erased, then its key-encryption key "
        "and its calls' key files are destroyed; the tenant takes no new calls. "
        "Crash-safe; cannot be undone. On --data DIR, or a server (platform admin only).",
    )
    e.add_argument("tenant", metavar="TENANT", help="the tenant to erase")
    e.add_argument("--reason", required=True, help="why (kept in the tombstone and the log)")
    e.set_defaults(func=cmd_erase)
    r = verb(
        tsub,
        "rotate-key",
        "new KEK for the tenant; re-wrap its calls' keys",
        "A new generation of the tenant's key-encryption key; every key file of the "
        "tenant's calls re-wrapped under it (no audio rewritten), then the older "
        "generations destroyed. Crash-safe: if it stops, run it again. On --data DIR.",
    )
    r.add_argument("tenant", metavar="TENANT", help="the tenant")
    r.set_defaults(func=cmd_rotate_key)


def cmd_erase(args: argparse.Namespace) -> int:
    ids.check_call_id(args.tenant, "tenant")
    ids.check_erase_reason(args.reason)
    if getattr(args, "server", None):
        from callvault.cli import remote

        with remote.connect(args) as b:
            r = b.client.erase_tenant(args.tenant, args.reason, timeout=None)
        calls, log_index = r.calls, r.log_index
    else:
        from callvault.cli import local

        with local.connect(args) as lb:
            doc = lb.vault.erase_tenant(args.tenant, reason=args.reason)
        calls, log_index = doc["calls"], doc["log_index"]
    print(
        f"tenant {args.tenant} erased: its key-encryption key is destroyed, {calls} call(s) "
        f"unreadable; the tombstone is log leaf {log_index}"
    )
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    ids.check_call_id(args.tenant, "tenant")
    if getattr(args, "server", None):
        raise CallvaultError(
            "tenant rotate-key runs on --data DIR (stop the server first: it holds the vault)"
        )
    from callvault.cli import local

    with local.connect(args) as lb:
        gen, n = lb.vault.rotate_tenant_key(args.tenant)
    print(
        f"tenant {args.tenant}: key-encryption key generation {gen} active; {n} key file(s) "
        "re-wrapped, no audio rewritten"
    )
    return 0

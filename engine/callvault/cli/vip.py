"""`callvault --data DIR vip add|rm|ls`: the VIP customer numbers of the recording rules
(lifecycle.rules.VipList), stored only as keyed hashes under the vault's recording key.
Works beside a running server: it touches DATA/keys/recording.key (made on first use)
and DATA/keys/vip-hashes (replaced atomically), never the vault itself."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from callvault.errors import CallvaultError
from callvault.lifecycle.rules import KEY_FILE, VIP_FILE, VipList, load_key, number_hash


def _numbers(args: argparse.Namespace) -> list[str]:
    out = list(args.numbers or [])
    if args.from_file:
        text = sys.stdin.read() if args.from_file == "-" else Path(args.from_file).read_text()
        out += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not out:
        raise CallvaultError("no number given (NUMBER arguments or --from FILE)")
    return out


def cmd_vip(args: argparse.Namespace) -> int:
    if not args.data:
        raise CallvaultError("vip needs --data DIR (the vault whose recording key hashes them)")
    data = Path(args.data)
    if not data.is_dir():
        raise CallvaultError(f"no vault at {data}")
    key = load_key(data / "keys" / KEY_FILE, create=args.vip_command != "ls")
    vips = VipList(data / "keys" / VIP_FILE, key)
    if args.vip_command == "add":
        n = vips.add(_numbers(args))
        print(f"callvault: {n} number(s) added ({len(vips.hashes())} VIP hash(es) stored)")
    elif args.vip_command == "rm":
        n = vips.remove(_numbers(args))
        print(f"callvault: {n} number(s) removed ({len(vips.hashes())} VIP hash(es) stored)")
    elif args.check:
        found = number_hash(key, args.check) in vips.hashes()
        print("VIP" if found else "not a VIP")
        return 0 if found else 1
    else:
        for h in sorted(vips.hashes()):
            print(h)
    return 0

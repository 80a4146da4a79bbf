"""The vault verbs' backend on an embedded vault: `callvault --data DIR <verb>`."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from callvault.cli.common import CallFields
from callvault.errors import CallvaultError

if TYPE_CHECKING:
    from callvault_client import pb

    from callvault.vault import Vault


# Verbs that only read: when the vault cannot be opened for writing (another process
# such as `callvault serve` holds it, or the disk is full or read-only), they open
# it read-only (Vault.open(read_only=True): no recovery, no file written).
READ_ONLY_VERBS = frozenset({"ls", "info", "verify", "export", "play"})


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[LocalBackend]:
    """The vault in ``--data DIR`` (with ``--key-file``), open while the block runs."""
    from callvault.vault import Vault, VaultUnwritable

    if not args.data:
        raise CallvaultError(f"{args.command} needs --data DIR (the vault's data directory)")
    # reindex rebuilds the index without opening it (it may be damaged)
    rebuild = args.command == "reindex"
    try:
        v = Vault.open(args.data, key_file=args.key_file, rebuild_index=rebuild)
    except VaultUnwritable:
        if args.command not in READ_ONLY_VERBS:
            raise
        v = Vault.open(args.data, key_file=args.key_file, read_only=True)
    with v:
        yield LocalBackend(v)


class LocalBackend:
    """callvault.cli.backend.Backend on an open Vault."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def import_call(
        self,
        call_id: str,
        inputs: Sequence[str],
        *,
        tenant: str,
        legs: Sequence[str] | None,
        meta: dict[str, Any],
    ) -> bytes:
        _, seal = self.vault.import_call(call_id, inputs, tenant=tenant, legs=legs, **meta)
        return seal

    def list_calls(
        self,
        *,
        tenant: str,
        since_us: int,
        until_us: int | None,
        agent: str | None,
        skill_group: str | None,
        tag: str | None,
    ) -> Sequence[CallFields]:
        return self.vault.list_calls(
            tenant=tenant,
            since_us=since_us,
            until_us=2**63 - 1 if until_us is None else until_us,
            agent=agent,
            skill_group=skill_group,
            tag=tag,
        )

    def call_detail(self, call_id: str, *, tenant: str) -> pb.CallInfo:
        from callvault.server.callinfo import call_detail

        e = self.vault.get_call(call_id, tenant=tenant)
        frames = int(self.vault.manifest(e.call_id, tenant=e.tenant)["frames"]) if e.seal else 0
        return call_detail(self.vault, e, frames, summary=True, customer_number=True)

    def export(
        self,
        call_id: str,
        out: str,
        *,
        tenant: str,
        fmt: Literal["ogg", "wav"],
        from_s: float,
        to_s: float | None,
    ) -> int:
        # Vault.export takes the format from the name, as output_format does
        return self.vault.export(call_id, out, tenant=tenant, from_s=from_s, to_s=to_s)

    def play(
        self, call_id: str, *, tenant: str, from_ms: int, to_ms: int | None, follow: bool
    ) -> Iterator[list[bytes]]:
        from callvault.server import playback

        if follow:
            raise CallvaultError("--follow listens to a call being recorded: it needs --server")
        for c in playback.play(
            self.vault, None, call_id, tenant=tenant, from_ms=from_ms, to_ms=to_ms, pcm=True
        ):
            yield [d for d, _ in c.legs]

    def verify(self, call_ids: Sequence[str], *, tenant: str, all: bool) -> Iterator[list[str]]:
        if all:
            yield [str(p) for p in self.vault.verify_all()]
            return
        for cid in call_ids:
            yield [str(p) for p in self.vault.verify_call(cid, tenant=tenant)]

    def bundle(self, call_id: str, out: Path, *, tenant: str) -> None:
        from callvault.vault.bundle import write_bundle

        write_bundle(self.vault, call_id, out, tenant=tenant)

    def checkpoint(self) -> tuple[str, str]:
        return self.vault.checkpoint(), self.vault.signer.verifier_key()

    def erase(self, call_id: str, *, tenant: str, reason: str) -> None:
        self.vault.erase(call_id, reason=reason, tenant=tenant)

    def reindex(self, progress: Callable[[int], None]) -> int:
        # connect() opened the vault with rebuild_index=True: the index was rebuilt
        progress(self.vault.report.reindexed)
        return self.vault.report.reindexed

    def rotate_key(self) -> tuple[int, int]:
        return self.vault.rotate_key()

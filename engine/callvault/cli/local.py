"""The vault verbs' backend on an embedded vault: `callvault --data DIR <verb>`."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from callvault.cli.backend import CallDetail
from callvault.cli.common import CallRow
from callvault.errors import CallvaultError

if TYPE_CHECKING:
    from callvault.vault import Vault


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[LocalBackend]:
    """The vault in ``--data DIR`` (with ``--key-file``), open while the block runs."""
    from callvault.vault import Vault

    if not args.data:
        raise CallvaultError(f"{args.command} needs --data DIR (the vault's data directory)")
    with Vault.open(args.data, key_file=args.key_file) as v:
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
    ) -> list[CallRow]:
        calls = self.vault.list_calls(
            tenant=tenant,
            since_us=since_us,
            until_us=2**63 - 1 if until_us is None else until_us,
            agent=agent,
            skill_group=skill_group,
            tag=tag,
        )
        return [
            CallRow(
                call_id=e.call_id,
                start_us=e.start_us,
                end_us=e.end_us,
                state=e.state,
                agent=e.agent,
                skill_group=e.skill_group,
                direction=e.direction,
                tags=list(e.tags),
            )
            for e in calls
        ]

    def call_detail(self, call_id: str, *, tenant: str) -> CallDetail:
        v = self.vault
        e = v.get_call(call_id, tenant=tenant)
        erased = e.state == "erased"
        frames = legs_detail = None
        if e.seal:
            frames = int(v.manifest(e.call_id, tenant=e.tenant)["frames"])
            if not erased:
                legs_detail = v.summary(e.call_id, tenant=e.tenant).get("legs", [])
        return CallDetail(
            call_id=e.call_id,
            tenant=e.tenant,
            state=e.state,
            start_us=e.start_us,
            end_us=e.end_us,
            direction=e.direction,
            agent=e.agent,
            skill_group=e.skill_group,
            tags=list(e.tags),
            legs=list(e.legs),
            records=e.records,
            chain_head=e.chain_head,
            seal=e.seal,
            log_index=e.log_index,
            customer_number=None if erased else v.customer_number(e.call_id, tenant=e.tenant),
            frames=frames,
            legs_detail=legs_detail,
            erased=(e.erased_us, e.erase_reason) if erased else None,
        )

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
        return self.vault.reindex(progress=progress)

    def rotate_key(self) -> tuple[int, int]:
        return self.vault.rotate_key()

"""The vault verbs' backend on an embedded vault: `callvault --data DIR <verb>`."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from callvault.cli.common import CallFields
from callvault.errors import CallvaultError, InputError

if TYPE_CHECKING:
    from callvault_client import pb

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
        try:
            _, seal = self.vault.import_call(call_id, inputs, tenant=tenant, legs=legs, **meta)
        except InputError as e:
            e_ = self.vault.index.get_call(tenant, call_id)
            if e_ is None or "already exists" not in str(e):
                raise
            return self._same_import(call_id, inputs, tenant=tenant, legs=legs, state=e_.state)
        return seal

    def _same_import(
        self,
        call_id: str,
        inputs: Sequence[str],
        *,
        tenant: str,
        legs: Sequence[str] | None,
        state: str,
    ) -> bytes:
        """The call exists: its seal when it holds what importing ``inputs`` would
        store (the pipeline is deterministic: the same legs and the same Opus packets,
        compared packet for packet), CallvaultError otherwise."""
        import sys

        from callvault.media import pipeline

        refused = CallvaultError(
            f"call {call_id} already exists ({state}) with different content: "
            "import this recording under a new call id"
        )
        if state != "sealed":
            raise CallvaultError(
                f"call {call_id} already exists ({state}): import this recording under a "
                "new call id"
            )
        e = self.vault.get_call(call_id, tenant=tenant)
        call = pipeline.run_call(pipeline.parse_inputs(inputs, legs), pipeline.Settings())
        if [r.name for r in call.legs] != list(e.legs):
            raise refused
        stored = self.vault.read_packets(call_id, tenant=tenant)
        for r, (data, lengths) in zip(call.legs, stored, strict=True):
            new_data, new_lengths = r.packets_all()
            if bytes(new_data) != bytes(data) or list(new_lengths) != list(lengths):
                raise refused
        print(
            f"callvault: call {call_id} is already stored, identical (nothing imported)",
            file=sys.stderr,
        )
        return bytes.fromhex(e.seal)

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
        return self.vault.reindex(progress=progress)

    def rotate_key(self) -> tuple[int, int]:
        return self.vault.rotate_key()

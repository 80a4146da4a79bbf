"""Where the vault verbs run: the interface every backend offers.

Two implement it: callvault.cli.local (an embedded Vault, `--data DIR`) and
callvault.cli.remote (a server through the SDK, `--server HOST:PORT`). The verbs in
callvault.cli.vault are written once against it, so they print the same either way.
Backends return plain values (a call's fields as the vault's CallEntry or the wire's
CallInfo, lists of problems); they print nothing but progress bars on a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

from callvault.cli.common import CallFields

if TYPE_CHECKING:
    from callvault_client import pb


class Backend(Protocol):
    def import_call(
        self,
        call_id: str,
        inputs: Sequence[str],
        *,
        tenant: str,
        legs: Sequence[str] | None,
        meta: dict[str, Any],
        mask_dtmf: bool = True,
        keep_digits: bool = False,
    ) -> bytes:
        """Store a call from captures or WAV legs; returns its seal once sealed.
        ``meta`` is what callvault.ids.parse_meta returns (with start). PCI: in-band
        DTMF masked (``mask_dtmf``), digits kept in the summary (``keep_digits``); a
        server applies its own [dtmf] policy instead."""
        ...

    def list_calls(
        self,
        *,
        tenant: str,
        since_us: int,
        until_us: int | None,
        agent: str | None,
        skill_group: str | None,
        tag: str | None,
    ) -> Sequence[CallFields]: ...

    def list_decisions(
        self, *, tenant: str, since_us: int, until_us: int | None
    ) -> Sequence[pb.CallInfo]:
        """The calls not recorded (DECISION entries) decided in the range, as CallInfo
        of state "not_recorded" with their ``decision``."""
        ...

    def call_detail(self, call_id: str, *, tenant: str) -> pb.CallInfo:
        """The call's CallInfo with its summary and (unless erased) customer number;
        ``frames`` is the sealed length (0 while open)."""
        ...

    def export(
        self,
        call_id: str,
        out: str | BinaryIO,
        *,
        tenant: str,
        fmt: Literal["ogg", "wav"],
        from_s: float,
        to_s: float | None,
        metadata: bool = False,
        customer_number: bool = False,
    ) -> int:
        """Write the call (or a time range of it) to the file ``out`` or into the
        open binary stream ``out`` (stdout); returns its size. ``metadata`` and
        ``customer_number``: personal data in an Ogg file's comments, when asked."""
        ...

    def play(
        self, call_id: str, *, tenant: str, from_ms: int, to_ms: int | None, follow: bool
    ) -> Iterator[list[bytes]]:
        """The call's audio as PCM s16le chunks, one bytes per leg."""
        ...

    def verify(self, call_ids: Sequence[str], *, tenant: str, all: bool) -> Iterator[list[str]]:
        """One list of problems (empty: it verifies) per call checked, or one for all."""
        ...

    def bundle(
        self, call_id: str, out: Path, *, tenant: str, with_customer_number: bool = False
    ) -> None: ...

    def checkpoint(self) -> tuple[str, str]:
        """The log's signed checkpoint note and its verifier key."""
        ...

    def erase(
        self, call_id: str, *, tenant: str, reason: str, override_retention: bool = False
    ) -> str | None:
        """Erase the call; ``override_retention``: also before a governance retention
        end (the tombstone's reason says so). A held call is not erased: its erasure
        is recorded as deferred, and the sentence saying so is returned (None: erased)."""
        ...

    def reindex(self, progress: Callable[[int], None]) -> int:
        """Rebuild the index; ``progress(records so far)`` where the backend can tell."""
        ...

    def reclaim(self, *, threshold: float, scan: bool) -> dict[str, int]:
        """Free the space of dead records (threshold 0: the default); the counters of
        ReclaimReply by name."""
        ...

    def rotate_key(self) -> tuple[int, int]:
        """A new key-encryption key: (its id, call keys re-wrapped)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters by name (numbers, or a mapping of them): the vault's calls,
        stored bytes, free disk and log size; a server adds its own."""
        ...

"""What every part of the vault shares: its errors, the values its operations
return, and its constants."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from callvault.errors import CallvaultError
from callvault.store.segment import RecordRef

SUMMARY_AAD = b"/summary"  # binds a sealed summary to its role (not a customer number)


class VaultError(CallvaultError):
    """A vault operation cannot be done; the message says why."""


class VaultUnwritable(VaultError):
    """The vault cannot be opened for writing (a full or read-only disk, permissions,
    or another process holds it: VaultBusy); ``Vault.open(read_only=True)`` may work."""


class VaultBusy(VaultUnwritable):
    """The data directory is open in another process (its LOCK is held)."""


class CallNotFound(VaultError):
    pass


class Replay(VaultError):
    """A record found in the segments that the vault never wrote where it stands
    (a second open or seal, an audio record out of chain order or after the seal):
    recovery leaves it out of the index and reports it; verify_all names it."""

    def __init__(self, ref: RecordRef, reason: str) -> None:
        super().__init__(f"segment {ref.segment} offset {ref.offset}: {reason}")
        self.ref = ref


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Ack:
    """A durable record: where its frames are and the call's chain head after it."""

    leg: int
    first_frame: int
    frames: int
    chain_index: int
    chain_head: bytes
    ref: RecordRef


@dataclass
class Problem:
    """Something verify found: which call (or segment), which record, and why."""

    what: str
    record: int | None
    reason: str

    def __str__(self) -> str:
        at = f" record {self.record}" if self.record is not None else ""
        return f"{self.what}{at}: {self.reason}"


@dataclass
class OpenReport:
    """What opening the vault found: a torn tail it truncated, damage it left in
    place (the calls it touches fail verify), records it re-indexed, and records it
    refused to index (Replay)."""

    truncated: Any = None
    damage: list[Any] = field(default_factory=list)
    reindexed: int = 0
    replays: list[Replay] = field(default_factory=list)
    reclaim: str | None = None  # a reclaim a crash interrupted, finished or undone

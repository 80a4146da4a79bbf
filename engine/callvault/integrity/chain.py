"""Per-call hash chains over stored record bytes, and call seals.

Computes and verifies the genesis, links and seal of docs/format.md 8.3
(version 1): a call's chain runs over its AUDIO record bodies exactly as stored
(encrypted), so it stays verifiable after the call's key is destroyed, and the
seal commits to the chain's head, its length and the call's manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from callvault.errors import CallvaultError

CHAIN_LINK = b"\x02"  # role prefix of chain links (and the genesis)
SEAL = b"\x03"  # role prefix of call seals
LIFECYCLE_LINK = b"\x04"  # role prefix of lifecycle links (docs/format.md 8.14)
GENESIS_TAG = b"callvault-chain-v1"
MAX_ID = 255  # tenant and call id are length-prefixed with one byte


class ChainError(CallvaultError):
    """A chain or seal does not verify; the message names the first bad record."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _id(value: str, what: str) -> bytes:
    raw = value.encode()
    if not raw or len(raw) > MAX_ID:
        raise ValueError(f"{what} must be 1 to {MAX_ID} bytes of UTF-8, got {len(raw)}")
    return bytes([len(raw)]) + raw


def genesis(tenant: str, call_id: str) -> bytes:
    return hashlib.sha256(
        CHAIN_LINK + GENESIS_TAG + _id(tenant, "tenant") + _id(call_id, "call id")
    ).digest()


def link(previous: bytes, index: int, record: bytes) -> bytes:
    """The chain head after appending ``record`` as the ``index``-th record."""
    if len(previous) != 32:
        raise ValueError("a chain link is 32 bytes")
    return hashlib.sha256(
        CHAIN_LINK + previous + struct.pack(">I", index) + hashlib.sha256(record).digest()
    ).digest()


def seal(head: bytes, count: int, manifest: bytes) -> bytes:
    return hashlib.sha256(
        SEAL + head + struct.pack(">I", count) + hashlib.sha256(manifest).digest()
    ).digest()


def lifecycle_link(previous: bytes, seq: int, record: bytes) -> bytes:
    """The call's lifecycle head after its ``seq``-th LIFECYCLE record (seq from 1;
    ``previous`` is the seal for seq 1, docs/format.md 8.14): the chain of every
    change made to the call after sealing, anchored on the seal."""
    if len(previous) != 32:
        raise ValueError("a lifecycle link is 32 bytes")
    if seq < 1:
        raise ValueError("lifecycle records count from 1")
    return hashlib.sha256(
        LIFECYCLE_LINK + previous + struct.pack(">I", seq) + hashlib.sha256(record).digest()
    ).digest()


@dataclass
class Chain:
    """A call's running chain: feed records in append order, read ``head``."""

    tenant: str
    call_id: str
    head: bytes = b""
    count: int = 0

    def __post_init__(self) -> None:
        if not self.head:
            self.head = genesis(self.tenant, self.call_id)

    def append(self, record: bytes) -> bytes:
        self.head = link(self.head, self.count, record)
        self.count += 1
        return self.head

    def seal(self, manifest: bytes) -> bytes:
        return seal(self.head, self.count, manifest)


def verify(
    tenant: str,
    call_id: str,
    records: Iterable[bytes],
    *,
    heads: Sequence[bytes] | None = None,
    expect_head: bytes | None = None,
    expect_count: int | None = None,
    manifest: bytes | None = None,
    expect_seal: bytes | None = None,
) -> bytes:
    """Recompute a call's chain; raise ChainError at the first disagreement.

    ``heads`` are the chain heads recorded for each record (acknowledgements
    carry them); ``expect_head``/``expect_count`` what the index says the
    chain ended at; with ``manifest`` and ``expect_seal`` the seal is checked
    too. Returns the recomputed head."""
    chain = Chain(tenant, call_id)
    for i, record in enumerate(records):
        chain.append(record)
        if heads is not None:
            if i >= len(heads):
                raise ChainError(f"record {i} is not in the recorded chain (extra record)", i)
            if not hmac.compare_digest(chain.head, heads[i]):
                raise ChainError(f"record {i} does not match the recorded chain link", i)
    if heads is not None and chain.count < len(heads):
        raise ChainError(
            f"{len(heads) - chain.count} recorded record(s) missing after record {chain.count - 1}",
            chain.count,
        )
    if expect_count is not None and chain.count != expect_count:
        raise ChainError(
            f"{chain.count} records found, the chain says {expect_count}",
            min(chain.count, expect_count),
        )
    if expect_head is not None and not hmac.compare_digest(chain.head, expect_head):
        raise ChainError("the chain head does not match the recorded head", chain.count)
    if expect_seal is not None:
        if manifest is None:
            raise ValueError("checking a seal needs the manifest")
        if not hmac.compare_digest(chain.seal(manifest), expect_seal):
            raise ChainError("the seal does not match the records and manifest", None)
    return chain.head

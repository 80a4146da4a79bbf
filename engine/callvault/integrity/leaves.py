"""Merkle log leaves: what a seal or an erasure commits to (docs/format.md 8.7).

Apart from the vault so that the offline bundle verifier rebuilds a seal's leaf
with no RocksDB and no vault open.
"""

from __future__ import annotations

import struct

from callvault.store import records as rec

LEAF_TAG = b"callvault-leaf-v1"
LEAF_SEAL, LEAF_ERASE = 1, 2


def leaf_data(kind: int, tenant: str, call_id: str, value: bytes, time_us: int) -> bytes:
    """A Merkle log leaf (docs/format.md 8.7): what a seal or erasure commits to."""
    head = rec.header(tenant, call_id)[1:]
    return LEAF_TAG + bytes([kind]) + head + value + struct.pack(">Q", time_us)

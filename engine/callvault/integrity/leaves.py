"""Merkle log leaves: what a seal, an erasure, a transcoding or the audit trail's head
commits to (docs/format.md 8.7).

Apart from the vault so that the offline bundle verifier rebuilds a seal's leaf
with no RocksDB and no vault open.
"""

from __future__ import annotations

import hashlib
import struct

from callvault.store import records as rec

LEAF_TAG = b"callvault-leaf-v1"
LEAF_SEAL, LEAF_ERASE, LEAF_TRANSCODE, LEAF_AUDIT = 1, 2, 3, 4
LEAF_DECISION = 5  # a call not recorded (docs/format.md 8.13)
LEAF_TENANT_ERASE = 6  # a whole tenant erased (docs/format.md 8.6)
LEAF_LIFECYCLE = 7  # a change to a sealed call: tags, retention, hold... (docs/format.md 8.14)


def leaf_data(kind: int, tenant: str, call_id: str, value: bytes, time_us: int) -> bytes:
    """A Merkle log leaf (docs/format.md 8.7): what a seal or erasure commits to."""
    head = rec.header(tenant, call_id)[1:]
    return LEAF_TAG + bytes([kind]) + head + value + struct.pack(">Q", time_us)


def transcode_leaf(
    tenant: str, call_id: str, raw_head: bytes, opus_head: bytes, doc: bytes, time_us: int
) -> bytes:
    """The transcoding leaf (kind 3, docs/format.md 8.7): compaction of the call's raw
    chain (head ``raw_head``) into the Opus records ending at ``opus_head``, with the
    transcoding document ``doc`` (encoder settings, counts), at ``time_us``."""
    if len(raw_head) != 32 or len(opus_head) != 32:
        raise ValueError("chain heads are 32 bytes")
    value = raw_head + opus_head + hashlib.sha256(doc).digest()
    return leaf_data(LEAF_TRANSCODE, tenant, call_id, value, time_us)


def audit_leaf(count: int, head: bytes, time_us: int) -> bytes:
    """The audit leaf (kind 4, docs/format.md 8.7 and 8.12): the audit trail's first
    ``count`` entries, whose chain head is ``head``, committed at ``time_us``. It names
    no call."""
    if len(head) != 32 or count < 1:
        raise ValueError("an audit leaf commits to at least one entry and a 32-byte head")
    return (
        LEAF_TAG
        + bytes([LEAF_AUDIT])
        + struct.pack(">Q", count)
        + head
        + struct.pack(">Q", time_us)
    )


def tenant_erase_leaf(tenant: str, reason: str, time_us: int) -> bytes:
    """The leaf of a tenant's erasure (kind 6, docs/format.md 8.7): the leaf layout
    with an empty call id (c = 0), the value SHA-256 of the reason, the record's time."""
    value = hashlib.sha256(reason.encode()).digest()
    head = rec.tenant_erase_body(tenant, time_us=0, reason="")[1:-8]  # t, tenant, c = 0
    return LEAF_TAG + bytes([LEAF_TENANT_ERASE]) + head + value + struct.pack(">Q", time_us)


def decision_leaf(tenant: str, call_id: str, doc: bytes, time_us: int) -> bytes:
    """The decision leaf (kind 5, docs/format.md 8.13): the call was not recorded, for
    the reasons in ``doc`` (the DECISION record's canonical JSON), at ``time_us``."""
    return leaf_data(LEAF_DECISION, tenant, call_id, hashlib.sha256(doc).digest(), time_us)


def lifecycle_leaf(tenant: str, call_id: str, link: bytes, time_us: int) -> bytes:
    """The leaf of a LIFECYCLE record (kind 7, docs/format.md 8.14): the call's
    lifecycle chain link after the record (which commits to every change since the
    seal, and to the seal), at the record's time."""
    if len(link) != 32:
        raise ValueError("a lifecycle link is 32 bytes")
    return leaf_data(LEAF_LIFECYCLE, tenant, call_id, link, time_us)

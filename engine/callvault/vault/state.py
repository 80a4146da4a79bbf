"""What ``Vault.__init__`` sets up and every part of the Vault (the mixins of
recovery, reading, verify and export) works on."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from callvault.integrity.log import MerkleLog
from callvault.store import crypto
from callvault.store.fs import FileSystem
from callvault.store.index import Index
from callvault.store.segment import RecordRef, SegmentReader, SegmentWriter
from callvault.vault.common import OpenReport
from callvault.vault.keys import CallKeys

if TYPE_CHECKING:
    from callvault.vault.core import CallWriter


class VaultState:
    """The attributes of a Vault (declared here, set by ``Vault.__init__``)."""

    path: Path
    read_only: bool  # opened with Vault.open(read_only=True): no writes
    fs: FileSystem
    keys: crypto.KeyFile  # the key-encryption keys
    call_keys: CallKeys  # the calls' wrapped data keys
    index: Index
    log: MerkleLog
    report: OpenReport
    _lock: threading.RLock  # opening calls, reindex, key rotation
    # the Merkle log is appended on the committer thread and read by proofs
    # and checkpoints on others: one lock around both
    _log_lock: threading.RLock
    _open: dict[tuple[str, str], CallWriter]  # calls being written by this process
    _reader: SegmentReader
    _writer: SegmentWriter
    _segment_bytes: int  # of the segment writer (and of one reopened after a failure)
    _reopen_error: str  # why the last Vault.reopen_writer failed ("" if it did not)
    # one reclaim run at a time; reindex, reopen_writer and verify's segment scan take it
    _reclaim_lock: threading.Lock
    _decision_lock: threading.Lock  # DECISION records: one call decided once
    # audio records a recovery or reindex holds back until their call's erasure
    # (records before them were reclaimed): (ref, why) per call
    _gaps: dict[tuple[str, str], list[tuple[RecordRef, str]]]

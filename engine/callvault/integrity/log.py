"""The global Merkle log on disk: append-only leaf and node hashes, O(log n) proofs.

One log lives in a directory, in the files ``tree`` and ``synced`` of
docs/format.md 8.7 (format version 1, with the byte offset of every record and
node and the recovery rules). Leaves are RFC 6962 leaf hashes
(``merkle.leaf_hash(data)``); the tree is RFC 9162's (see
``callvault.integrity.merkle``). Besides each leaf hash the log stores every
perfect interior node the moment its last leaf arrives, so any root, inclusion
proof or consistency proof is folded from O(log n) stored hashes.

Durability: ``append``/``append_many`` write records to the page cache;
``sync()`` fsyncs them, then rewrites ``synced`` with the synced leaf count.
Open trusts the synced records and checks every later one: a torn tail is
truncated and reported in :attr:`MerkleLog.recovery`; damage that cannot be a
torn unsynced write raises :class:`LogCorruptError` (fails closed).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from crc32c import crc32c

from callvault.durable import fsync_dir
from callvault.errors import FormatError, InputError
from callvault.integrity import merkle

__all__ = ["LogCorruptError", "MerkleLog", "Recovery", "record_offset"]

FORMAT_VERSION = 1
MAGIC = b"CVMRKLOG"
HEADER_SIZE = 16
_HEADER = struct.Struct(">8sHHI")
_CRC = struct.Struct(">I")
CRC_SIZE = 4
H = merkle.HASH_SIZE
SYNCED_MAGIC = b"CVMS"
_SYNCED = struct.Struct(">4sHHQI")
TREE_FILE = "tree"
SYNCED_FILE = "synced"


class LogCorruptError(FormatError):
    """The Merkle log's files are damaged where a torn write cannot explain it."""


@dataclass(frozen=True)
class Recovery:
    """What opening the log found: how many leaves were trusted, kept, dropped."""

    synced_leaves: int
    """Leaves the durability marker vouched for (checked no further)."""
    leaves: int
    """Leaves in the log after recovery."""
    truncated_bytes: int
    """Bytes of torn tail removed (0 when the file ended on a whole record)."""


def record_offset(i: int) -> int:
    """R(i): byte offset of leaf i's record, and the file length of an i-leaf log."""
    return HEADER_SIZE + H * (2 * i - i.bit_count()) + CRC_SIZE * i


def record_length(i: int) -> int:
    """Length of leaf i's record: its leaf hash, t node hashes, a CRC."""
    t = ((i + 1) & -(i + 1)).bit_length() - 1
    return H * (t + 1) + CRC_SIZE


class MerkleLog:
    """An append-only RFC 9162 Merkle log stored in one directory.

    Single writer: one process opens a directory at a time; calls from several
    threads of that process are serialized by a lock. Reads of roots and
    proofs take O(log n) positional reads (:attr:`reads` counts them).
    """

    def __init__(
        self,
        directory: Path,
        fd: int,
        marker_fd: int,
        size: int,
        edge: list[tuple[int, bytes]],
        recovery: Recovery,
    ) -> None:
        self.directory = directory
        self._fd = fd
        self._marker_fd = marker_fd
        self._size = size
        self._synced = recovery.synced_leaves
        # The perfect subtrees of [0, size), left to right, as (level, hash):
        # what the next appends combine with (the log's right edge).
        self._edge = edge
        self._lock = threading.RLock()
        self.recovery = recovery
        self.reads = 0
        """Positional reads of the tree file made since open (for tests and tuning)."""

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> MerkleLog:
        """Open (creating if needed) the log in directory ``path``; recover a torn tail.
        ``read_only``: create, truncate and write nothing (another process may be
        appending): a torn tail is left out of the leaves, not cut."""
        directory = Path(path)
        tree = directory / TREE_FILE
        if not read_only:
            directory.mkdir(parents=True, exist_ok=True)
            if not tree.exists():
                cls._create(tree)
        fd = os.open(tree, os.O_RDONLY if read_only else os.O_RDWR)
        try:
            header = os.pread(fd, HEADER_SIZE, 0)
            cls._check_header(tree, header)
            length = os.fstat(fd).st_size
            marker_flags = os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT
            marker_fd = os.open(directory / SYNCED_FILE, marker_flags, 0o644)
        except BaseException:
            os.close(fd)
            raise
        try:
            synced = cls._read_marker(marker_fd)
            if record_offset(synced) > length:
                raise LogCorruptError(
                    f"{tree}: {synced} leaves were synced but the file ends at byte {length}, "
                    f"before the end of their records at byte {record_offset(synced)}"
                )
            log = cls(directory, fd, marker_fd, synced, [], Recovery(synced, synced, 0))
            log._edge = [
                (level, log._read_node(level, index)) for level, index in cls._edge_nodes(synced)
            ]
            log._recover_tail(length, cut=not read_only)
            return log
        except BaseException:
            os.close(fd)
            os.close(marker_fd)
            raise

    @staticmethod
    def _create(tree: Path) -> None:
        head = _HEADER.pack(MAGIC, FORMAT_VERSION, H, 0)[:12]
        tmp = tree.with_name(tree.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, head + _CRC.pack(crc32c(head)))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, tree)
        fsync_dir(tree.parent)

    @staticmethod
    def _check_header(tree: Path, header: bytes) -> None:
        if len(header) < HEADER_SIZE:
            raise LogCorruptError(f"{tree}: header is {len(header)} bytes, want {HEADER_SIZE}")
        magic, version, hash_size, crc = _HEADER.unpack(header)
        if magic != MAGIC:
            raise LogCorruptError(f"{tree}: not a callvault Merkle log (magic {magic!r})")
        if crc != crc32c(header[:12]):
            raise LogCorruptError(f"{tree}: header CRC mismatch")
        if version != FORMAT_VERSION:
            raise LogCorruptError(
                f"{tree}: format version {version}, this build reads {FORMAT_VERSION}"
            )
        if hash_size != H:
            raise LogCorruptError(f"{tree}: hash size {hash_size}, want {H}")

    @staticmethod
    def _read_marker(marker_fd: int) -> int:
        data = os.pread(marker_fd, _SYNCED.size, 0)
        if len(data) != _SYNCED.size:
            return 0
        magic, version, _reserved, n, crc = _SYNCED.unpack(data)
        if magic != SYNCED_MAGIC or version != 1 or crc != crc32c(data[:16]):
            return 0  # torn or missing: check every record instead
        return int(n)

    @staticmethod
    def _edge_nodes(size: int) -> list[tuple[int, int]]:
        return merkle.perfect_subtrees(0, size) if size else []

    def _recover_tail(self, length: int, cut: bool = True) -> None:
        """Check records after the synced ones; keep the whole, truncate the torn
        (with ``cut``; else leave it)."""
        i = self._size
        end = record_offset(i)
        while end < length:
            rec_len = record_length(i)
            if end + rec_len > length:
                break  # partial record: torn
            data = os.pread(self._fd, rec_len, end)
            self.reads += 1
            body = data[:-CRC_SIZE]
            if _CRC.unpack(data[-CRC_SIZE:])[0] != crc32c(body):
                break  # torn or never fully written
            nodes = self._push(body[:H])
            if nodes != body[H:]:
                raise LogCorruptError(
                    f"{self.directory / TREE_FILE}: record {i} has a valid CRC but its "
                    "node hashes do not match its leaves"
                )
            i += 1
            end += rec_len
        self._size = i
        truncated = length - end
        if truncated and cut:
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        self.recovery = Recovery(self._synced, i, truncated)

    # -- writing -------------------------------------------------------------

    def _push(self, leaf: bytes) -> bytes:
        """Add a leaf hash to the right edge; return the node hashes it completes."""
        level, h = 0, leaf
        nodes = []
        while self._edge and self._edge[-1][0] == level:
            _, left = self._edge.pop()
            h = merkle.node_hash(left, h)
            level += 1
            nodes.append(h)
        self._edge.append((level, h))
        return b"".join(nodes)

    def append(self, leaf_data: bytes) -> int:
        """Append one leaf (its data is hashed as an RFC 6962 leaf); return its index."""
        return self.append_many([leaf_data])

    def append_many(self, leaves: Iterable[bytes]) -> int:
        """Append leaves in order with one write; return the index of the first.

        Not durable until :meth:`sync`.
        """
        return self.append_hashes([merkle.leaf_hash(d) for d in leaves])

    def append_hashes(self, leaf_hashes: Sequence[bytes]) -> int:
        """Append already-computed RFC 6962 leaf hashes; return the index of the first."""
        for h in leaf_hashes:
            if len(h) != H:
                raise InputError(f"leaf hash is {len(h)} bytes, not {H}")
        with self._lock:
            first = self._size
            out = bytearray()
            saved_edge = list(self._edge)
            for h in leaf_hashes:
                body = h + self._push(h)
                out += body
                out += _CRC.pack(crc32c(body))
            offset = record_offset(first)
            try:
                written = 0
                while written < len(out):
                    written += os.pwrite(self._fd, memoryview(out)[written:], offset + written)
            except BaseException:
                self._edge = saved_edge
                os.ftruncate(self._fd, offset)
                raise
            self._size = first + len(leaf_hashes)
            return first

    def sync(self) -> None:
        """Make every appended leaf durable (fsync), then advance the synced marker."""
        with self._lock:
            size = self._size
            os.fsync(self._fd)
            if size != self._synced:
                head = _SYNCED.pack(SYNCED_MAGIC, 1, 0, size, 0)[:16]
                os.pwrite(self._marker_fd, head + _CRC.pack(crc32c(head)), 0)
                self._synced = size

    def close(self) -> None:
        """Close the files (does not sync)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                os.close(self._marker_fd)
                self._fd = self._marker_fd = -1

    def __enter__(self) -> MerkleLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading -------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of leaves appended (durable or not)."""
        return self._size

    @property
    def synced_size(self) -> int:
        """Number of leaves made durable by :meth:`sync`."""
        return self._synced

    def _read_node(self, level: int, index: int) -> bytes:
        """Hash of perfect node (level, index), from the record of its last leaf."""
        last = ((index + 1) << level) - 1
        if last >= self._size:
            raise InputError(f"node ({level}, {index}) is beyond the log's {self._size} leaves")
        length = record_length(last)
        offset = record_offset(last)
        data = os.pread(self._fd, length, offset)
        self.reads += 1
        if len(data) != length or _CRC.unpack(data[-CRC_SIZE:])[0] != crc32c(data[:-CRC_SIZE]):
            raise LogCorruptError(
                f"{self.directory / TREE_FILE}: record {last} at byte {offset} is damaged"
            )
        return data[H * level : H * (level + 1)]

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) of a valid non-empty subtree, from stored nodes."""
        if end > self._size:
            raise InputError(f"subtree [{start}, {end}) is beyond the log's {self._size} leaves")
        return merkle.fold_perfect(
            [self._read_node(level, index) for level, index in merkle.perfect_subtrees(start, end)]
        )

    def _checked_size(self, size: int | None) -> int:
        n = self._size if size is None else size
        if not 0 <= n <= self._size:
            raise InputError(f"tree size {n} is beyond the log's {self._size} leaves")
        return n

    def leaf_hash(self, index: int) -> bytes:
        """The stored leaf hash of leaf ``index``."""
        with self._lock:
            if not 0 <= index < self._size:
                raise InputError(f"leaf index {index} is out of range for {self._size} leaves")
            return self._read_node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        with self._lock:
            n = self._checked_size(size)
            if n == 0:
                return merkle.EMPTY_ROOT
            if n == self._size:
                return merkle.fold_perfect([h for _, h in self._edge])
            return self.subtree_hash(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) (RFC 9162 2.1.3.1); size defaults to the log's."""
        with self._lock:
            n = self._checked_size(size)
            return [self.subtree_hash(lo, hi) for lo, hi in merkle.inclusion_ranges(index, n)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[new_size]) (RFC 9162 2.1.4.1); new_size defaults to the log's."""
        with self._lock:
            n = self._checked_size(new_size)
            return [self.subtree_hash(lo, hi) for lo, hi in merkle.consistency_ranges(old_size, n)]

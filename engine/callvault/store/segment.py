"""Append-only segment files: framing, group-commit writer, reader, recovery.

Writes and reads the segment files of docs/format.md 8.2 (file header, record
framing, the footer that closes a segment, and the recovery rules), format
version 1. The layout is written down only there; a change to it is a version
bump and a change to that section in the same commit.

Durability contract (writer)
============================
``SegmentWriter.append`` returns a future at once. One committer thread takes
everything pending (up to ``max_group_bytes``, after waiting at most
``max_delay_ms`` for more to arrive), writes it with one ``write``, fsyncs the
file once (and the directory when a segment file was created; a group that
fills a segment is one write and fsync per segment it touches), then calls
``on_commit(list[Committed])`` in append order (the vault writes its index
there, before any acknowledgement), then resolves the futures in append order.
A future resolves only after its bytes are durable. Once a write, fsync or
``on_commit`` fails, the writer is failed for good (``failed`` holds the
StoreError): the group in flight, everything pending and every later append
fail with it, and nothing is acknowledged after it. After a failed fsync the
page cache state is unknown (PostgreSQL's "fsyncgate"), so retrying is not safe;
reopen the store, which runs recovery.

The writer closes a segment (appends its footer) when the next record would
pass ``segment_bytes``. There is one writer per directory (the caller holds a
lock file for that: this module takes no inter-process lock). Between two
fsyncs only the bytes of the last group are unsynced, and the writer writes the
next group only after the previous fsync succeeded: after a crash, only the
bytes after the last fsynced group of the last segment can be torn.

Recovery contract
=================
``recover(directory)`` is run on open, before a writer is made, and applies
the recovery rules of docs/format.md 8.2. Like LevelDB's ``log::Reader`` with
its ``Reporter``, it never skips anything silently; it returns a
:class:`RecoveryReport`: ``truncated`` is the torn tail it cut
(:class:`TornTail`, ``removed=True`` when a last segment with a torn header was
removed), ``damage`` the bad stretches it left in place (:class:`Damage`, with
``resumes_at``), ``scanned`` the segments it read record by record, and
``records`` the records for the caller to index.

``known_end=(segment, offset)``, if given, is the end of the last record the
caller knows to be durable (the vault: the end of the last record its index
holds, written in ``on_commit`` after the fsync). Recovery never truncates
below it (a bad record there is damage, not a torn tail), and the report's
``records`` are then every record from that position on, in every segment, so
the caller can index what its index lacks. Without ``known_end``, ``records``
are those of the segments that are not closed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from crc32c import crc32c

from callvault.errors import CallvaultError
from callvault.store.fs import REAL_FS, File, FileSystem

__all__ = [
    "FOOTER_RECORD_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "ORIGIN_RECORD_SIZE",
    "MAX_BODY",
    "Committed",
    "CorruptRecord",
    "Damage",
    "RecordRef",
    "RecoveryReport",
    "SegmentReader",
    "SegmentWriter",
    "StoreError",
    "TornTail",
    "publish_copy",
    "recover",
    "remove_unpublished",
    "segment_origin",
    "segment_path",
    "unpublished_path",
    "write_copy",
]

FORMAT_VERSION = 1
MAGIC = b"CVSEG\x00\r\n"
# magic, version, header_size, segment_id, created_us, header_crc
FILE_HEADER = struct.Struct("<8sHHQQI")
HEADER_SIZE = FILE_HEADER.size
assert HEADER_SIZE == 32
# crc, length, type, flags, reserved
RECORD_HEADER = struct.Struct("<IIBBH")
RECORD_HEADER_SIZE = RECORD_HEADER.size
assert RECORD_HEADER_SIZE == 12
_RECORD_TAIL = struct.Struct("<IBBH")  # the CRC-covered part of the record header
_CRC = struct.Struct("<I")
# Bounds a single record: one second of one leg is a few KB; 16 MiB leaves room.
MAX_BODY = 16 << 20
# Types 0xF0..0xFF belong to the store; callers use 1..0xEF.
FIRST_STORE_TYPE = 0xF0
TYPE_FOOTER = 0xFF
# The first record of a segment written by a rewrite (docs/format.md 8.2, 8.11): the
# place of its records in the store's order (the id of the first segment they came from)
TYPE_ORIGIN = 0xFE
ORIGIN_BODY = struct.Struct("<Q")
ORIGIN_RECORD_SIZE = RECORD_HEADER_SIZE + ORIGIN_BODY.size
FOOTER_BODY = struct.Struct("<QQQQ")  # segment_id, record_count, data_end, closed_us
FOOTER_RECORD_SIZE = RECORD_HEADER_SIZE + FOOTER_BODY.size
# Smaller segments would hold almost nothing but headers and footers.
MIN_SEGMENT_BYTES = 256
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})\.seg$")
UNPUBLISHED = ".tmp"  # a rewrite's segment being written: <id>.seg.tmp (never listed)


class StoreError(CallvaultError):
    """The segment store cannot do what was asked (failed writer, bad file...)."""


class CorruptRecord(StoreError):
    """A record (or a segment header) failed its checks."""

    def __init__(self, segment: int, offset: int, reason: str) -> None:
        super().__init__(f"segment {segment:016x} offset {offset}: {reason}")
        self.segment = segment
        self.offset = offset
        self.reason = reason


class RecordRef(NamedTuple):
    """Where a record lives: its segment, the offset of its record header and
    its whole length (header included)."""

    segment: int
    offset: int
    length: int


class Committed(NamedTuple):
    """One record of a committed group, as given to ``on_commit``."""

    ref: RecordRef
    rtype: int
    body: bytes | None  # None when the writer was made with on_commit_bodies=False


@dataclass(frozen=True)
class TornTail:
    """A torn tail dropped by recovery: ``dropped`` bytes from ``offset`` on."""

    segment: int
    offset: int
    dropped: int
    reason: str
    removed: bool = False  # the whole file was removed (its header was torn)


@dataclass(frozen=True)
class Damage:
    """A bad stretch recovery left in place (the caller fails closed).

    ``resumes_at`` is the offset of the next valid record in the same segment,
    or None if none follows."""

    segment: int
    offset: int
    reason: str
    resumes_at: int | None


@dataclass
class RecoveryReport:
    """What :func:`recover` found and did."""

    segments: list[int] = field(default_factory=list)  # segment ids after recovery
    scanned: list[int] = field(default_factory=list)  # segments read record by record
    truncated: TornTail | None = None
    damage: list[Damage] = field(default_factory=list)
    # (ref, type) of caller records: see the module doc (known_end)
    records: list[tuple[RecordRef, int]] = field(default_factory=list)
    end: tuple[int, int] | None = None  # (last segment, its length) after recovery

    @property
    def clean(self) -> bool:
        return not self.damage


def segment_path(directory: str | os.PathLike[str], segment: int) -> str:
    return os.path.join(os.fspath(directory), f"{segment:016x}.seg")


def _list_segments(fs: FileSystem, directory: str) -> list[int]:
    if not fs.isdir(directory):
        return []
    ids = []
    for name in fs.listdir(directory):
        m = _SEGMENT_NAME.match(name)
        if m:
            ids.append(int(m.group(1), 16))
    return sorted(ids)


def segment_origin(data: bytes | memoryview, segment: int) -> int:
    """The origin of a segment from its first bytes (at least HEADER_SIZE +
    ORIGIN_RECORD_SIZE of them when there are that many): the ``origin`` of its origin
    record (a rewrite's segment), else its own id."""
    if len(data) < HEADER_SIZE + ORIGIN_RECORD_SIZE:
        return segment
    found = _record_at(data[: HEADER_SIZE + ORIGIN_RECORD_SIZE], HEADER_SIZE)
    if isinstance(found, str) or found != (TYPE_ORIGIN, ORIGIN_BODY.size):
        return segment
    _crc, _len, _t, flags, reserved = RECORD_HEADER.unpack_from(data, HEADER_SIZE)
    if flags or reserved:
        return segment
    (origin,) = ORIGIN_BODY.unpack_from(data, HEADER_SIZE + RECORD_HEADER_SIZE)
    return int(origin)


def _ordered(fs: FileSystem, directory: str, ids: list[int] | None = None) -> list[int]:
    return [seg for _, seg in _ordered_keys(fs, directory, ids)]


def _ordered_keys(
    fs: FileSystem, directory: str, ids: list[int] | None = None
) -> list[tuple[int, int]]:
    """Segment ids in the store's order (docs/format.md 8.2): by (origin, id). A
    segment a rewrite wrote takes the place of the segments its records came from, so
    the records keep the order they were written in; every other segment's origin is
    its id. A segment that cannot be read keeps its id as its place (recovery reports
    it)."""
    if ids is None:
        ids = _list_segments(fs, directory)
    keys = []
    for seg in ids:
        origin = seg
        try:
            f = fs.open_read(segment_path(directory, seg))
        except OSError:
            pass
        else:
            try:
                origin = segment_origin(f.pread(HEADER_SIZE + ORIGIN_RECORD_SIZE, 0), seg)
            finally:
                f.close()
        keys.append((origin, seg))
    keys.sort()
    return keys


def _now_us() -> int:
    return time.time_ns() // 1000


def _file_header(segment: int, created_us: int) -> bytes:
    head = FILE_HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, segment, created_us, 0)[:28]
    return head + _CRC.pack(crc32c(head))


def _frame(rtype: int, body: bytes) -> tuple[bytes, bytes]:
    """The record header of ``body``; the record is header + body."""
    tail = _RECORD_TAIL.pack(len(body), rtype, 0, 0)
    return _CRC.pack(crc32c(body, crc32c(tail))) + tail, body


def _header_problem(data: bytes, segment: int) -> tuple[str, bool] | None:
    """None if the file header is good, else (reason, torn): torn means it may
    be an unfinished write (short or CRC-bad); not torn means a CRC-valid header
    this version cannot use."""
    if len(data) < HEADER_SIZE:
        return (f"incomplete segment header ({len(data)} of {HEADER_SIZE} bytes)", True)
    magic, version, hsize, seg, _created, crc = FILE_HEADER.unpack_from(data, 0)
    if crc32c(memoryview(data)[:28]) != crc:
        return ("segment header CRC mismatch", True)
    if magic != MAGIC:
        return (f"bad segment magic {magic!r}", False)
    if version != FORMAT_VERSION or hsize != HEADER_SIZE:
        return (f"unsupported segment format version {version} (header size {hsize})", False)
    if seg != segment:
        return (f"segment header says id {seg:016x}, file name says {segment:016x}", False)
    return None


def _record_at(data: bytes | memoryview, pos: int) -> tuple[int, int] | str:
    """(type, length) of a CRC-valid record at ``pos`` in ``data``, else why not."""
    n = len(data)
    if n - pos < RECORD_HEADER_SIZE:
        return f"incomplete record header ({n - pos} bytes at the end)"
    crc, length, rtype, _flags, _reserved = RECORD_HEADER.unpack_from(data, pos)
    if length > MAX_BODY:
        return f"record length {length} above the maximum {MAX_BODY}"
    end = pos + RECORD_HEADER_SIZE + length
    if end > n:
        return f"record body extends past the end ({length} bytes from {pos + 12}, file has {n})"
    if crc32c(memoryview(data)[pos + 4 : end]) != crc:
        return "record CRC mismatch"
    return (rtype, length)


def _unsupported(
    rtype: int, flags: int, reserved: int, pos: int = 0, length: int = 0
) -> str | None:
    """Why a CRC-valid record at ``pos`` (its body ``length`` bytes) is not allowed,
    or None. The origin record is allowed as a segment's first record only."""
    if rtype == 0:
        return "record type 0 is invalid"
    if flags != 0 or reserved != 0:
        return f"record flags {flags:#x} / reserved {reserved:#x} not allowed in version 1"
    if rtype == TYPE_ORIGIN and pos == HEADER_SIZE and length == ORIGIN_BODY.size:
        return None
    if rtype >= FIRST_STORE_TYPE and rtype != TYPE_FOOTER:
        return f"reserved store record type {rtype:#x}"
    return None


def _find_next_record(data: bytes, start: int) -> int | None:
    """The first offset >= ``start`` where a CRC-valid record lies, or None.

    Candidates are found vectorised (type byte nonzero, flags and reserved
    zero: true of every version 1 record), then checked one by one."""
    import numpy as np  # imported here: recovery only, keeps `import` cheap

    n = len(data)
    last = n - RECORD_HEADER_SIZE  # last offset a record header fits at
    if start > last:
        return None
    a = np.frombuffer(data, dtype=np.uint8)
    chunk = 1 << 20
    for c0 in range(start, last + 1, chunk):
        c1 = min(c0 + chunk, last + 1)
        mask = (
            (a[c0 + 8 : c1 + 8] != 0)
            & (a[c0 + 9 : c1 + 9] == 0)
            & (a[c0 + 10 : c1 + 10] == 0)
            & (a[c0 + 11 : c1 + 11] == 0)
        )
        for q in np.flatnonzero(mask):
            pos = c0 + int(q)
            if not isinstance(_record_at(data, pos), str):
                return pos
    return None


def _footer_problem(body: bytes | memoryview, segment: int, pos: int, n: int) -> str | None:
    if len(body) != FOOTER_BODY.size:
        return f"footer body of {len(body)} bytes, expected {FOOTER_BODY.size}"
    seg, _count, data_end, _closed = FOOTER_BODY.unpack(body)
    if seg != segment or data_end != pos:
        return f"footer says segment {seg:016x} data_end {data_end}, found at {pos}"
    if pos + FOOTER_RECORD_SIZE != n:
        return f"{n - pos - FOOTER_RECORD_SIZE} bytes after the footer"
    return None


@dataclass
class _Scan:
    """One segment read record by record."""

    segment: int
    records: list[tuple[RecordRef, int]] = field(default_factory=list)
    count: int = 0
    closed: bool = False
    damage: list[Damage] = field(default_factory=list)
    torn: tuple[int, str] | None = None  # nothing valid from this offset to the end


def _scan_segment(data: bytes, segment: int) -> _Scan:
    scan = _Scan(segment)
    n = len(data)
    problem = _header_problem(data, segment)
    pos = HEADER_SIZE
    if problem is not None:
        reason, torn = problem
        if not torn:
            scan.damage.append(Damage(segment, 0, reason, None))
            return scan
        nxt = _find_next_record(data, 1)
        if nxt is None:
            scan.torn = (0, reason)
            return scan
        scan.damage.append(Damage(segment, 0, reason, nxt))
        pos = nxt
    while pos < n:
        found = _record_at(data, pos)
        if isinstance(found, str):
            nxt = _find_next_record(data, pos + 1)
            if nxt is None:
                scan.torn = (pos, found)
                return scan
            scan.damage.append(Damage(segment, pos, found, nxt))
            pos = nxt
            continue
        rtype, length = found
        _crc, _len, _t, flags, reserved = RECORD_HEADER.unpack_from(data, pos)
        end = pos + RECORD_HEADER_SIZE + length
        bad = _unsupported(rtype, flags, reserved, pos, length)
        if bad is None and rtype == TYPE_FOOTER:
            bad = _footer_problem(memoryview(data)[pos + RECORD_HEADER_SIZE : end], segment, pos, n)
            if bad is None:
                scan.closed = True
                return scan
        if bad is not None:
            scan.damage.append(Damage(segment, pos, bad, end if end < n else None))
        elif rtype == TYPE_ORIGIN:
            pass  # the store's own: not a caller record
        else:
            scan.records.append((RecordRef(segment, pos, end - pos), rtype))
            scan.count += 1
        pos = end
    return scan


def _is_closed(f: File, segment: int, size: int) -> bool:
    """True if the file's header is good and it ends with its footer (O(1) reads)."""
    if size < HEADER_SIZE + FOOTER_RECORD_SIZE:
        return False
    if _header_problem(f.pread(HEADER_SIZE, 0), segment) is not None:
        return False
    pos = size - FOOTER_RECORD_SIZE
    tail = f.pread(FOOTER_RECORD_SIZE, pos)
    found = _record_at(tail, 0)
    if isinstance(found, str) or found[0] != TYPE_FOOTER:
        return False
    _crc, _len, _t, flags, reserved = RECORD_HEADER.unpack_from(tail, 0)
    if flags or reserved:
        return False
    return _footer_problem(tail[RECORD_HEADER_SIZE:], segment, pos, size) is None


# ---------------------------------------------------------------------------
# Writer


class _Pending:
    __slots__ = ("rtype", "body", "future", "seq", "t")

    def __init__(
        self, rtype: int, body: bytes, future: concurrent.futures.Future[RecordRef], seq: int
    ) -> None:
        self.rtype = rtype
        self.body = body
        self.future = future
        self.seq = seq
        self.t = time.monotonic()


class SegmentWriter:
    """The single writer of a segment directory (see the module doc's contract).

    Open it after :func:`recover`: if the last segment has a torn tail the
    constructor raises StoreError. A whole last segment that is not closed is
    continued; a damaged one is left as it is and a new segment is started.
    ``on_commit`` and the futures' done-callbacks run on the committer thread:
    they must not wait for an append of this writer.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fs: FileSystem = REAL_FS,
        segment_bytes: int = 64 << 20,
        max_delay_ms: float = 2.0,
        max_group_bytes: int = 4 << 20,
        on_commit: Callable[[list[Committed]], None] | None = None,
        on_commit_bodies: bool = True,
        known_end: tuple[int, int] | None = None,
    ) -> None:
        if segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be at least {MIN_SEGMENT_BYTES}")
        if max_delay_ms < 0 or max_group_bytes < 1:
            raise ValueError("max_delay_ms must be >= 0 and max_group_bytes >= 1")
        self._dir = os.fspath(directory)
        self._fs = fs
        self._segment_bytes = segment_bytes
        self._max_delay = max_delay_ms / 1000.0
        self._max_group = max_group_bytes
        self._on_commit = on_commit
        self._bodies = on_commit_bodies
        self.failed: BaseException | None = None
        self.groups = 0  # committed groups (one write + one file fsync each, plus footers)
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._seq = 0
        self._durable_seq = 0
        self._stopping = False
        # Committer-thread state (the constructor sets it before the thread starts).
        self._file: File | None = None
        self._segment = 0
        self._size = 0
        self._count = 0
        self._next_id = 1
        fs.makedirs(self._dir)
        self._open_tail(known_end)
        self._thread = threading.Thread(
            target=self._run, name="callvault-segment-committer", daemon=True
        )
        self._thread.start()

    def _open_tail(self, known_end: tuple[int, int] | None) -> None:
        ids = _list_segments(self._fs, self._dir)
        if not ids:
            return
        self._next_id = ids[-1] + 1
        last = _ordered(self._fs, self._dir, ids)[-1]  # the tail: last in the store's order
        f = self._fs.open_append(segment_path(self._dir, last))
        try:
            size = f.size()
            if _is_closed(f, last, size):
                f.close()
                return
            scan = _scan_segment(f.pread(size, 0), last)
        except BaseException:
            f.close()
            raise
        if scan.torn is not None and known_end is not None and ((last, scan.torn[0]) < known_end):
            # recover() would not truncate below what the caller had made durable
            # (its known_end): it reported damage. Leave the file, start a new one.
            f.close()
            return
        if scan.torn is not None:
            f.close()
            off, reason = scan.torn
            raise StoreError(
                f"segment {last:016x} has a torn tail at offset {off} ({reason}): "
                "run recover() before opening a writer"
            )
        if scan.damage or scan.closed:
            f.close()  # left as it is: recovery reports its damage every time
            return
        self._file, self._segment, self._size, self._count = f, last, size, scan.count

    # -- caller side ------------------------------------------------------

    def append(self, rtype: int, body: bytes) -> concurrent.futures.Future[RecordRef]:
        """Queue one record; the future resolves once its bytes are durable."""
        if not 1 <= rtype < FIRST_STORE_TYPE:
            raise ValueError(f"record type must be in 1..{FIRST_STORE_TYPE - 1}, got {rtype}")
        if len(body) > MAX_BODY:
            raise ValueError(f"record body of {len(body)} bytes above the maximum {MAX_BODY}")
        body = bytes(body)
        future: concurrent.futures.Future[RecordRef] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # not cancellable: once queued it is written
        with self._cond:
            if self._stopping:
                raise StoreError("segment writer is closed")
            failed = self.failed
            if failed is None:
                self._seq += 1
                self._pending.append(_Pending(rtype, body, future, self._seq))
                self._pending_bytes += RECORD_HEADER_SIZE + len(body)
                self._cond.notify_all()
        if failed is not None:
            future.set_exception(failed)  # outside the lock: callbacks run here
        return future

    def reserve_id(self) -> int:
        """A new segment id that this writer will never use (for a rewrite's segment,
        docs/format.md 8.11)."""
        with self._cond:
            sid = self._next_id
            self._next_id += 1
            return sid

    def flush(self) -> None:
        """Wait until everything appended so far is durable (StoreError if it failed)."""
        with self._cond:
            target = self._seq
            while self._durable_seq < target and self.failed is None:
                self._cond.wait()
            if self._durable_seq < target:
                raise StoreError(f"flush failed: {self.failed}") from self.failed

    def close(self) -> None:
        """Commit what is pending, stop the committer, close the file.

        Does not raise for an earlier failure: that is in ``failed`` and in the
        futures."""
        with self._cond:
            if self._stopping and not self._thread.is_alive():
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- committer thread -------------------------------------------------

    def _take_group(self) -> list[_Pending] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None
            if self._max_delay > 0:
                deadline = self._pending[0].t + self._max_delay
                while self._pending_bytes < self._max_group and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            group: list[_Pending] = []
            size = 0
            for p in self._pending:
                n = RECORD_HEADER_SIZE + len(p.body)
                if group and size + n > self._max_group:
                    break
                group.append(p)
                size += n
            del self._pending[: len(group)]
            self._pending_bytes -= size
            return group

    def _run(self) -> None:
        try:
            while True:
                group = self._take_group()
                if group is None:
                    return
                try:
                    committed = self._commit(group)
                except BaseException as exc:
                    self._fail(exc, group, self._what)
                    return
                if self._on_commit is not None:
                    try:
                        self._on_commit(committed)
                    except BaseException as exc:
                        self._fail(
                            exc,
                            group,
                            "on_commit raised (the group is durable but not acknowledged)",
                        )
                        return
                for p, c in zip(group, committed, strict=True):
                    p.future.set_result(c.ref)
                with self._cond:
                    self._durable_seq = group[-1].seq
                    self.groups += 1
                    self._cond.notify_all()
        finally:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def _fail(self, exc: BaseException, group: list[_Pending], what: str) -> None:
        detail = f"{type(exc).__name__}: {exc}"
        err = StoreError(
            f"segment writer failed for good: {what}: {detail}; nothing appended from this "
            "group on is acknowledged (reopen the store to run recovery)"
        )
        err.__cause__ = exc
        with self._cond:
            self.failed = err
            rest = self._pending
            self._pending = []
            self._pending_bytes = 0
            self._cond.notify_all()
        for p in group + rest:
            if not p.future.done():
                p.future.set_exception(err)

    _what = "write"

    def _write_all(self, parts: list[bytes]) -> None:
        assert self._file is not None
        self._what = f"write to segment {self._segment:016x}"
        view = memoryview(b"".join(parts))
        while view:
            n = self._file.write(view)
            if n <= 0:
                raise OSError(f"write returned {n}")
            view = view[n:]

    def _fsync(self) -> None:
        assert self._file is not None
        self._what = (
            f"fsync of segment {self._segment:016x} failed (the page cache state is unknown)"
        )
        self._file.fsync()

    def _fsync_dir(self) -> None:
        self._what = f"fsync of directory {self._dir} failed"
        self._fs.fsync_dir(self._dir)

    def _footer_record(self) -> tuple[bytes, bytes]:
        return _frame(
            TYPE_FOOTER, FOOTER_BODY.pack(self._segment, self._count, self._size, _now_us())
        )

    def _commit(self, group: list[_Pending]) -> list[Committed]:
        """Write and fsync one group; close and create segments as needed."""
        committed: list[Committed] = []
        parts: list[bytes] = []
        created = False  # the current file was created in this group
        for p in group:
            n = RECORD_HEADER_SIZE + len(p.body)
            if (
                self._file is not None
                and self._count > 0
                and self._size + n + FOOTER_RECORD_SIZE > self._segment_bytes
            ):
                parts.extend(self._footer_record())
                self._write_all(parts)
                parts = []
                self._fsync()
                if created:
                    self._fsync_dir()
                self._file.close()
                self._file = None
            if self._file is None:
                with self._cond:  # reserve_id takes ids from other threads
                    self._segment = self._next_id
                    self._next_id += 1
                self._what = f"create segment {self._segment:016x}"
                self._file = self._fs.create(segment_path(self._dir, self._segment))
                parts.append(_file_header(self._segment, _now_us()))
                self._size, self._count = HEADER_SIZE, 0
                created = True
            parts.extend(_frame(p.rtype, p.body))
            ref = RecordRef(self._segment, self._size, n)
            self._size += n
            self._count += 1
            committed.append(Committed(ref, p.rtype, p.body if self._bodies else None))
        full = self._size + RECORD_HEADER_SIZE + FOOTER_RECORD_SIZE > self._segment_bytes
        if full:  # not even an empty record fits: close it now rather than at the next append
            parts.extend(self._footer_record())
        self._write_all(parts)
        self._fsync()
        if created:
            self._fsync_dir()
        if full:
            assert self._file is not None
            self._file.close()
            self._file = None
        return committed


# ---------------------------------------------------------------------------
# Reader


class SegmentReader:
    """Reads records by reference and scans segments, checking every CRC.

    Safe to use from several threads and beside a writer (for the segment
    being written, read only what the writer has acknowledged)."""

    def __init__(self, directory: str | os.PathLike[str], *, fs: FileSystem = REAL_FS) -> None:
        self._dir = os.fspath(directory)
        self._fs = fs
        self._lock = threading.Lock()
        self._files: dict[int, File] = {}
        self._retired: set[int] = set()

    def segments(self) -> list[int]:
        """The segment ids in the store's order (by origin, then id: docs/format.md 8.2)."""
        return _ordered(self._fs, self._dir)

    def origin(self, segment: int) -> int:
        """The segment's place in the store's order (its id unless a rewrite wrote it)."""
        f = self._open(segment)
        return segment_origin(f.pread(HEADER_SIZE + ORIGIN_RECORD_SIZE, 0), segment)

    def size(self, segment: int) -> int:
        return self._open(segment).size()

    def closed(self, segment: int) -> bool:
        """True if the segment ends with its footer (it is never written again)."""
        f = self._open(segment)
        return _is_closed(f, segment, f.size())

    def retire(self, segment: int) -> None:
        """Keep the segment's file open (reads by reference still find its records)
        before it is removed: a reader that took a reference before the index moved
        it reads on; ``release_retired`` closes such files (their space is freed then)."""
        with contextlib.suppress(StoreError):
            self._open(segment)
        with self._lock:
            self._retired.add(segment)

    def release_retired(self) -> None:
        with self._lock:
            files = [self._files.pop(s) for s in self._retired if s in self._files]
            self._retired.clear()
        for f in files:
            f.close()

    def _open(self, segment: int) -> File:
        with self._lock:
            f = self._files.get(segment)
            if f is not None:
                return f
        try:
            f = self._fs.open_read(segment_path(self._dir, segment))
        except FileNotFoundError:
            raise StoreError(f"segment {segment:016x} does not exist") from None
        problem = _header_problem(f.pread(HEADER_SIZE, 0), segment)
        if problem is not None:
            f.close()
            raise CorruptRecord(segment, 0, problem[0])
        with self._lock:
            other = self._files.setdefault(segment, f)
        if other is not f:
            f.close()
        return other

    def read(self, ref: RecordRef) -> tuple[int, bytes]:
        """(type, body) of the record at ``ref``; CorruptRecord if it fails a check."""
        segment, offset, length = ref
        max_length = RECORD_HEADER_SIZE + MAX_BODY
        if offset < HEADER_SIZE or not RECORD_HEADER_SIZE <= length <= max_length:
            raise ValueError(f"not a record reference: {ref}")
        data = self._open(segment).pread(length, offset)
        if len(data) < length:
            raise CorruptRecord(
                segment,
                offset,
                f"record extends past the end of the segment ({len(data)} of {length} bytes)",
            )
        _crc, body_len, rtype, flags, reserved = RECORD_HEADER.unpack_from(data, 0)
        if body_len != length - RECORD_HEADER_SIZE:
            raise CorruptRecord(
                segment,
                offset,
                f"length field {body_len} does not match the reference "
                f"({length - RECORD_HEADER_SIZE})",
            )
        found = _record_at(data, 0)
        if isinstance(found, str):
            raise CorruptRecord(segment, offset, found)
        bad = _unsupported(rtype, flags, reserved)
        if bad is None and rtype >= FIRST_STORE_TYPE:
            bad = f"store record type {rtype:#x} is not a caller record"
        if bad is not None:
            raise CorruptRecord(segment, offset, bad)
        return rtype, data[RECORD_HEADER_SIZE:]

    def scan(
        self, segment: int | None = None, start: int = 0
    ) -> Iterator[tuple[RecordRef, int, bytes]]:
        """Yield (ref, type, body) of caller records in order: every segment when
        ``segment`` is None (``start`` must be 0), else that one from ``start``
        (a record offset; 0 means its first record). Footers are checked,
        not yielded. Raises CorruptRecord at the first bad record, after yielding
        every good one before it: nothing is skipped."""
        if segment is None:
            if start:
                raise ValueError("start applies to one segment")
            for seg in self.segments():
                yield from self._scan_one(seg, 0)
        else:
            yield from self._scan_one(segment, start)

    def _scan_one(self, segment: int, start: int) -> Iterator[tuple[RecordRef, int, bytes]]:
        f = self._open(segment)
        size = f.size()
        pos = max(start, HEADER_SIZE)
        if pos > size:
            raise CorruptRecord(segment, pos, f"start offset past the end of the segment ({size})")
        while pos < size:
            head = f.pread(RECORD_HEADER_SIZE, pos)
            if len(head) < RECORD_HEADER_SIZE:
                raise CorruptRecord(
                    segment, pos, f"incomplete record header ({len(head)} bytes at the end)"
                )
            _crc, length, rtype, flags, reserved = RECORD_HEADER.unpack(head)
            if length > MAX_BODY:
                raise CorruptRecord(segment, pos, f"record length {length} above the maximum")
            data = head + f.pread(length, pos + RECORD_HEADER_SIZE)
            found = _record_at(data, 0)
            if isinstance(found, str):
                raise CorruptRecord(segment, pos, found)
            bad = _unsupported(rtype, flags, reserved, pos, length)
            if bad is None and rtype == TYPE_FOOTER:
                bad = _footer_problem(data[RECORD_HEADER_SIZE:], segment, pos, size)
                if bad is None:
                    return
            if bad is not None:
                raise CorruptRecord(segment, pos, bad)
            if rtype != TYPE_ORIGIN:
                yield RecordRef(segment, pos, len(data)), rtype, data[RECORD_HEADER_SIZE:]
            pos += len(data)

    def close(self) -> None:
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
        for f in files:
            f.close()

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Recovery


def recover(
    directory: str | os.PathLike[str],
    *,
    fs: FileSystem = REAL_FS,
    known_end: tuple[int, int] | None = None,
) -> RecoveryReport:
    """Check the store on open, truncate a torn tail, report damage and records.

    See the module doc, "Recovery contract"."""
    d = os.fspath(directory)
    report = RecoveryReport()
    keys = _ordered_keys(fs, d)  # the store's order: a rewrite's segment stands at its origin
    ids = [seg for _, seg in keys]
    end_key: tuple[float, int] | None = None
    if known_end is not None:
        # the known end is in a segment the writer wrote (its origin is its id); one
        # that is missing (damage, below) stands where it would be
        at = (known_end[0], known_end[0])
        if at in keys:
            end_key = (float(keys.index(at)), known_end[1])
        else:
            end_key = (sum(1 for k in keys if k < at) - 0.5, known_end[1])
    for i, seg in enumerate(ids):
        last = i == len(ids) - 1
        path = segment_path(d, seg)
        f = fs.open_append(path) if last else fs.open_read(path)
        try:
            size = f.size()
            wanted = end_key is not None and i >= end_key[0]
            if _is_closed(f, seg, size) and not wanted:
                report.segments.append(seg)
                continue
            scan = _scan_segment(f.pread(size, 0), seg)
            report.scanned.append(seg)
            report.damage.extend(scan.damage)
            if end_key is None:
                report.records.extend(scan.records)
            else:
                report.records.extend(r for r in scan.records if (i, r[0].offset) >= end_key)
            removed = False
            if scan.torn is not None:
                off, reason = scan.torn
                if not last:
                    report.damage.append(
                        Damage(seg, off, f"{reason} (not the last segment: never truncated)", None)
                    )
                elif end_key is not None and (i, off) < end_key:
                    report.damage.append(
                        Damage(
                            seg,
                            off,
                            f"{reason} (below the known durable end {known_end}: not truncated)",
                            None,
                        )
                    )
                elif off == 0:
                    f.close()
                    fs.remove(path)
                    fs.fsync_dir(d)
                    removed = True
                    report.truncated = TornTail(seg, 0, size, reason, removed=True)
                else:
                    f.truncate(off)
                    f.fsync()
                    report.truncated = TornTail(seg, off, size - off, reason)
                    size = off
            if not removed:
                report.segments.append(seg)
                if last:
                    report.end = (seg, size)
        finally:
            f.close()
    if report.segments and report.end is None:
        last_seg = report.segments[-1]
        report.end = (last_seg, fs.getsize(segment_path(d, last_seg)))
    if known_end is not None and known_end[1] > HEADER_SIZE and known_end[0] not in report.segments:
        report.damage.append(
            Damage(known_end[0], 0, "segment file holding the known durable end is missing", None)
        )
    report.damage.sort(key=lambda dmg: (dmg.segment, dmg.offset))
    return report


# ---------------------------------------------------------------------------
# Rewrite (docs/format.md 8.11): a closed segment holding copies of records


def unpublished_path(directory: str | os.PathLike[str], segment: int) -> str:
    return segment_path(directory, segment) + UNPUBLISHED


def write_copy(
    directory: str | os.PathLike[str],
    segment: int,
    origin: int,
    records: list[tuple[int, bytes]],
    *,
    fs: FileSystem = REAL_FS,
) -> list[RecordRef]:
    """Write ``records`` ((type, body), copied as they are) into a new closed segment
    ``segment`` whose origin record says ``origin``, under its unpublished name
    (``<id>.seg.tmp``, never listed), and fsync it; returns the records' references
    in it. ``publish_copy`` then gives it its name."""
    d = os.fspath(directory)
    tmp = unpublished_path(d, segment)
    with contextlib.suppress(FileNotFoundError):
        fs.remove(tmp)  # left by an earlier attempt that crashed
    f = fs.create(tmp)
    try:
        parts: list[bytes] = [_file_header(segment, _now_us())]
        parts.extend(_frame(TYPE_ORIGIN, ORIGIN_BODY.pack(origin)))
        size = HEADER_SIZE + ORIGIN_RECORD_SIZE
        refs = []
        for rtype, body in records:
            if not 1 <= rtype < FIRST_STORE_TYPE:
                raise ValueError(f"not a caller record type: {rtype}")
            parts.extend(_frame(rtype, body))
            n = RECORD_HEADER_SIZE + len(body)
            refs.append(RecordRef(segment, size, n))
            size += n
        parts.extend(_frame(TYPE_FOOTER, FOOTER_BODY.pack(segment, len(refs), size, _now_us())))
        view = memoryview(b"".join(parts))
        while view:
            n = f.write(view)
            if n <= 0:
                raise OSError(f"write returned {n}")
            view = view[n:]
        f.fsync()
    finally:
        f.close()
    return refs


def publish_copy(
    directory: str | os.PathLike[str], segment: int, *, fs: FileSystem = REAL_FS
) -> None:
    """Rename a segment ``write_copy`` wrote to its name; the directory fsynced."""
    d = os.fspath(directory)
    fs.rename(unpublished_path(d, segment), segment_path(d, segment))
    fs.fsync_dir(d)


def remove_unpublished(directory: str | os.PathLike[str], *, fs: FileSystem = REAL_FS) -> int:
    """Remove the unpublished segments (``<id>.seg.tmp``) a crash left; how many."""
    d = os.fspath(directory)
    if not fs.isdir(d):
        return 0
    n = 0
    for name in fs.listdir(d):
        if name.endswith(".seg" + UNPUBLISHED) and _SEGMENT_NAME.match(name[: -len(UNPUBLISHED)]):
            fs.remove(os.path.join(d, name))
            n += 1
    if n:
        fs.fsync_dir(d)
    return n

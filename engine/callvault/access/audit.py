"""The audit trail: one hash-chained entry per RPC, allowed or denied (docs/access.md
"Audit trail"; the files, framing, encoding, chain and Merkle leaf are docs/format.md
8.12).

``AuditTrail`` owns DATA/audit/: it appends entries (``sink`` is the interceptor's
audit sink, ``append`` the general form), fsyncs them by group commit on a
background flusher (or at once, ``sync = "always"``), and commits the trail's head
to the vault's Merkle log (``commit_leaf``, at each checkpoint and at shutdown).
Appends write whole frames to the page cache under a lock; a reader takes the
trail's end under that lock and reads the file through a descriptor of its own, so
reading never holds appends up for more than that. ``read_entries`` and ``verify``
work on the files alone (a server may be running).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from crc32c import crc32c

from callvault.access.context import Rpc
from callvault.durable import fsync_dir
from callvault.errors import FormatError, InputError
from callvault.integrity import merkle
from callvault.integrity.leaves import audit_leaf

log = logging.getLogger("callvault.audit")

TRAIL_FILE, SYNCED_FILE, LEAVES_FILE = "trail", "synced", "leaves"
MAGIC = b"CVAUDIT1"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sHHI")  # magic, version, reserved, CRC-32C of bytes 0..12
HEADER_SIZE = _HEADER.size
_FRAME_HEAD = struct.Struct(">I32s")  # entry length, h_n
_CRC = struct.Struct(">I")
MAX_ENTRY_BYTES = 1 << 20  # a longer length field is damage, not an entry
SYNCED_MAGIC = b"CVAS"
_SYNCED = struct.Struct(">4sHHQQ32sI")  # magic, version, 0, count, end offset, head, CRC
_LEAF = struct.Struct(">QQ32sQI")  # log index, count, head, time µs, CRC-32C of 0..56
CHAIN_TAG = b"callvault-audit-v1"
GENESIS = bytes(32)  # h_0
SYNC_MODES = ("group", "always")
UNAUDITED = ("/grpc.health.v1.", "/grpc.reflection.")  # as interceptors.OPEN_PREFIXES


def link(prev: bytes, entry: bytes) -> bytes:
    """h_n = SHA-256(CHAIN_TAG || h_{n-1} || canonical entry n) (docs/format.md 8.12)."""
    return hashlib.sha256(CHAIN_TAG + prev + entry).digest()


def canonical(doc: dict[str, Any]) -> bytes:
    """An entry's canonical encoding: JSON, keys sorted, no spaces, ASCII only."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def frame(entry: bytes, h: bytes) -> bytes:
    head = _FRAME_HEAD.pack(len(entry), h)
    return head + entry + _CRC.pack(crc32c(head + entry))


class AuditDamaged(FormatError):
    """The trail's files are damaged where a torn write cannot explain it."""


@dataclass(frozen=True)
class Entry:
    seq: int
    hash: bytes  # h_seq as stored
    doc: dict[str, Any]
    offset: int  # of its frame in DATA/audit/trail


@dataclass(frozen=True)
class LeafRecord:
    """One audit leaf the trail put in the Merkle log (DATA/audit/leaves)."""

    log_index: int
    count: int
    head: bytes
    time_us: int

    def leaf_data(self) -> bytes:
        return audit_leaf(self.count, self.head, self.time_us)


def rpc_doc(rpc: Rpc, outcome: str) -> dict[str, Any]:
    """An RPC's entry, before the trail gives it seq and time_us."""
    ident = rpc.identity
    return {
        "kind": "rpc",
        "identity": ident.doc(),
        "method": rpc.method,
        "calls": [[t, c] for t, c in rpc.calls],
        "outcome": outcome,
        "audio_seconds": round(rpc.audio_seconds, 3),
        "audio_bytes": int(rpc.audio_bytes),
        "peer": rpc.peer,
        "reason": rpc.reason,
        "detail": rpc.detail,
        "started_us": rpc.started_us,
    }


class Observer(Protocol):
    """What watches the entries as they are appended (access.anomaly.Rules): returns
    the alert entries (docs without seq and time_us) an entry sets off."""

    def observe(self, doc: dict[str, Any]) -> list[dict[str, Any]]: ...


def _header() -> bytes:
    head = struct.pack(">8sHH", MAGIC, FORMAT_VERSION, 0)
    return head + _CRC.pack(crc32c(head))


def _check_header(data: bytes, where: Path) -> None:
    if len(data) < HEADER_SIZE:
        raise AuditDamaged(f"{where}: the header is cut short ({len(data)} bytes)")
    magic, version, _, crc = _HEADER.unpack(data[:HEADER_SIZE])
    if magic != MAGIC or crc != crc32c(data[:12]):
        raise AuditDamaged(f"{where}: not an audit trail (bad magic or header checksum)")
    if version != FORMAT_VERSION:
        raise AuditDamaged(f"{where}: audit trail format version {version} is not known")


@dataclass
class Scan:
    """What reading frames from an offset found: the entries, where the last whole
    frame ends, and why reading stopped early (``problem``, at ``bad_offset``)."""

    entries: list[Entry] = field(default_factory=list)
    end: int = HEADER_SIZE
    problem: str = ""
    bad_offset: int = -1


def _scan(data: bytes, start: int, first_seq: int, limit: int | None = None) -> Scan:
    """Frames of ``data`` from ``start``; stops at the first one that is partial, has a
    wrong checksum or does not parse (framing only: the chain is verify's)."""
    out = Scan(end=start)
    off, seq = start, first_seq
    end = len(data) if limit is None else min(limit, len(data))
    while off < end:
        if end - off < _FRAME_HEAD.size + _CRC.size:
            out.problem, out.bad_offset = "a partial frame (cut short)", off
            break
        n, h = _FRAME_HEAD.unpack_from(data, off)
        stop = off + _FRAME_HEAD.size + n + _CRC.size
        if n > MAX_ENTRY_BYTES:
            out.problem, out.bad_offset = f"a frame length of {n} bytes", off
            break
        if stop > end:
            out.problem, out.bad_offset = "a partial frame (cut short)", off
            break
        body = data[off + _FRAME_HEAD.size : stop - _CRC.size]
        (crc,) = _CRC.unpack_from(data, stop - _CRC.size)
        if crc != crc32c(data[off : stop - _CRC.size]):
            out.problem, out.bad_offset = "its checksum is wrong (the bytes were changed)", off
            break
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict) or doc.get("seq") != seq:
                raise ValueError(f"seq {doc.get('seq') if isinstance(doc, dict) else '?'}")
        except ValueError as e:
            out.problem, out.bad_offset = f"the entry does not parse as entry {seq} ({e})", off
            break
        out.entries.append(Entry(seq, h, doc, off))
        off, seq = stop, seq + 1
        out.end = off
    return out


def _read_synced(path: Path) -> tuple[int, int, bytes]:
    """(count, end offset, head) the durability marker vouches for; (0, header, h_0)
    when it is missing or torn."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, HEADER_SIZE, GENESIS
    if len(data) != _SYNCED.size:
        return 0, HEADER_SIZE, GENESIS
    magic, version, _, count, end, head, crc = _SYNCED.unpack(data)
    if magic != SYNCED_MAGIC or version != 1 or crc != crc32c(data[:-4]):
        return 0, HEADER_SIZE, GENESIS
    return count, end, head


def read_leaves(directory: Path) -> tuple[list[LeafRecord], str]:
    """The audit leaf records, and a problem ("" if none): a record whose checksum is
    wrong ends the list (the last one may be torn by a crash: docs/format.md 8.12)."""
    try:
        data = (directory / LEAVES_FILE).read_bytes()
    except FileNotFoundError:
        return [], ""
    out: list[LeafRecord] = []
    for off in range(0, len(data) - _LEAF.size + 1, _LEAF.size):
        index, count, head, t, crc = _LEAF.unpack_from(data, off)
        if crc != crc32c(data[off : off + _LEAF.size - 4]):
            return out, f"audit leaf record {len(out) + 1}: its checksum is wrong"
        out.append(LeafRecord(index, count, head, t))
    if len(data) % _LEAF.size:
        return out, f"audit leaf record {len(out) + 1} is cut short"
    return out, ""


class AuditTrail:
    """The append side of DATA/audit/ (one per server: the vault's LOCK is its lock).
    Use ``AuditTrail.open``."""

    def __init__(
        self,
        directory: Path,
        *,
        sync: str = "group",
        interval_s: float = 0.05,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
        observer: Observer | None = None,
        log_size: int | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise InputError(f"[audit] sync {sync!r}: one of {', '.join(SYNC_MODES)}")
        self.directory = directory
        self.sync_mode = sync
        self.interval_s = interval_s
        self.clock = clock
        self.observer = observer
        self._lock = threading.Lock()  # appends; the file's end
        self._sync_lock = threading.Lock()  # one fsync + marker at a time
        self._leaf_lock = threading.Lock()
        self.error = ""  # why the last append or fsync failed (Admin.Stats)
        # the last append failed: the server serves no audio until one works again
        # (server/app.py: every access to audio must be in the trail)
        self.failing = False
        self.alerts = 0  # alert entries appended since open
        self.truncated = 0  # bytes of torn tail cut on open
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TRAIL_FILE
        fresh = not path.exists() or path.stat().st_size == 0
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if fresh:
                os.ftruncate(self._fd, 0)
                os.write(self._fd, _header())
                os.fsync(self._fd)
                fsync_dir(directory)
                (directory / SYNCED_FILE).unlink(missing_ok=True)
            self._recover(path)
            self._open_leaves(log_size)
        except BaseException:
            os.close(self._fd)
            raise
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._flusher: threading.Thread | None = None
        if sync == "group":
            self._flusher = threading.Thread(target=self._flushing, name="audit", daemon=True)
            self._flusher.start()

    @classmethod
    def open(cls, directory: str | os.PathLike[str], **kw: Any) -> AuditTrail:
        return cls(Path(directory), **kw)

    # -- opening --------------------------------------------------------------------------
    def _recover(self, path: Path) -> None:
        """Trust what the marker vouches for, check every later frame; cut a torn tail."""
        with open(path, "rb") as f:
            _check_header(f.read(HEADER_SIZE), path)
            count, end, head = _read_synced(self.directory / SYNCED_FILE)
            size = os.fstat(f.fileno()).st_size
            if end > size or end < HEADER_SIZE:
                raise AuditDamaged(
                    f"{path} is shorter ({size} bytes) than its synced entries ({end} bytes): "
                    "entries were removed; run `callvault audit verify`"
                )
            f.seek(end)
            tail = f.read()
        scan = _scan(tail, 0, count + 1)  # offsets from ``end``
        good = end + scan.end
        problem = scan.problem
        h = head
        for e in scan.entries:
            nxt = link(h, canonical(e.doc))
            if nxt != e.hash:  # an unsynced frame whose link is wrong: not ours whole
                good, problem = end + e.offset, "its hash link is wrong"
                break
            h, count = nxt, count + 1
        head = h
        if good < size:
            self.truncated = size - good
            log.warning(
                "audit trail %s: cut a torn tail of %d byte(s) at byte %d (%s)",
                path,
                self.truncated,
                good,
                problem or "partial",
            )
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
        self.count = count
        self.head = head
        self._end = good
        self._synced_count = -1  # the marker is rewritten by the first flush
        self._synced_end = good
        self.flush()

    def _open_leaves(self, log_size: int | None) -> None:
        """The audit leaf records; a torn last record, or one whose leaf never reached
        the log (``log_size``: a crash between the two), is cut."""
        records, problem = read_leaves(self.directory)
        if log_size is not None:
            while records and records[-1].log_index >= log_size:
                records.pop()
                problem = problem or "the last audit leaf never reached the Merkle log"
        if problem:
            with open(self.directory / LEAVES_FILE, "r+b") as f:
                f.truncate(len(records) * _LEAF.size)
                os.fsync(f.fileno())
            log.warning("audit leaves: %s (cut)", problem)
        self.leaves = records

    # -- appending ------------------------------------------------------------------------
    def sink(self, rpc: Rpc, outcome: str) -> None:
        """The interceptor's audit sink (server/interceptors.py ``on_end``). Health
        checks and reflection (open to every caller, they touch no call and reveal
        nothing; load balancers poll them) are not audited."""
        if rpc.method.startswith(UNAUDITED):
            return
        self.append(rpc_doc(rpc, outcome))

    def append(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Append one entry (``doc`` without seq and time_us, which the trail gives it),
        then the alerts the observer finds in it. Returns the stored entry, or None if
        it could not be written (``error`` says why; the trail stays whole)."""
        stored = self._write(doc)
        if stored is None or self.observer is None or stored.get("kind") == "alert":
            return stored
        for alert in self.observer.observe(stored):
            if self._write(alert) is not None:
                self.alerts += 1
                log.warning(
                    "audit alert %s: %s (entry %d)", alert["rule"], alert["detail"], stored["seq"]
                )
        return stored

    def _write(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            entry = dict(doc, v=1, seq=self.count + 1, time_us=self.clock())
            body = canonical(entry)
            h = link(self.head, body)
            data = frame(body, h)
            try:
                n = os.pwrite(self._fd, data, self._end)
                if n != len(data):
                    raise OSError(f"short write ({n} of {len(data)} bytes)")
            except OSError as e:
                # never leave a part of a frame: the next entry goes where this one was
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._end)
                self.error = f"appending audit entry {entry['seq']} failed: {e}"
                self.failing = True
                log.error("%s", self.error)
                return None
            if self.failing:
                self.failing = False
                log.warning("the audit trail is written again (entry %d)", entry["seq"])
            self._end += len(data)
            self.count, self.head = entry["seq"], h
        if self.sync_mode == "always":
            self.flush()
        else:
            self._dirty.set()
        return entry

    def _flushing(self) -> None:
        """Group commit: at most every ``interval_s``, one fsync for every entry so far."""
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.wait(self.interval_s):
                break
            self._dirty.clear()
            self.flush()

    def flush(self) -> None:
        """Make every entry appended so far durable, then say so in the marker."""
        with self._sync_lock:
            with self._lock:
                count, end, head = self.count, self._end, self.head
            if count == self._synced_count:
                return
            try:
                os.fsync(self._fd)
                marker = struct.pack(">4sHHQQ32s", SYNCED_MAGIC, 1, 0, count, end, head)
                marker += _CRC.pack(crc32c(marker))
                path = self.directory / SYNCED_FILE
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    os.pwrite(fd, marker, 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                self.error = f"syncing the audit trail failed: {e}"
                log.error("%s", self.error)
                return
            self._synced_count, self._synced_end = count, end

    # -- the Merkle leaf ------------------------------------------------------------------
    def commit_leaf(self, append_leaf: Callable[..., int]) -> LeafRecord | None:
        """Put the trail's head in the Merkle log (leaf kind 4) if the trail grew since
        the last audit leaf: the entries are made durable first, then the leaf record is
        written (and fsynced), then the leaf appended with ``append_leaf(data,
        before=...)`` (Vault.append_leaf). Returns the new record, or None."""
        with self._leaf_lock:
            self.flush()
            count, head = self._synced_count, None
            with self._lock:
                if self._synced_count == self.count:
                    head = self.head
            if head is None or count <= 0:
                return None  # nothing durable yet, or a flush failed
            if self.leaves and self.leaves[-1].count == count:
                return None
            t = self.clock()
            made: list[LeafRecord] = []

            def before(index: int) -> None:  # under the log's lock: the index it gets
                rec = LeafRecord(index, count, head, t)
                raw = _LEAF.pack(index, count, head, t, 0)[:-4]
                fd = os.open(
                    self.directory / LEAVES_FILE,
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                    0o600,
                )
                try:
                    os.write(fd, raw + _CRC.pack(crc32c(raw)))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                made.append(rec)

            try:
                append_leaf(audit_leaf(count, head, t), before=before)
            except Exception as e:  # a checkpoint or a shutdown goes on without it
                self.error = f"putting the audit trail's head in the Merkle log failed: {e}"
                log.error("%s", self.error)
                if made:  # its record without its leaf: cut (else the next open cuts it)
                    with contextlib.suppress(OSError):
                        os.truncate(self.directory / LEAVES_FILE, len(self.leaves) * _LEAF.size)
                return None
            self.leaves.extend(made)
            return made[0] if made else None

    # -- reading --------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, int]:
        """(entries, end offset) now: what a reader may read without the lock."""
        with self._lock:
            return self.count, self._end

    def entries(self) -> Iterator[Entry]:
        """Every entry appended so far, oldest first (appends go on meanwhile)."""
        _, end = self.snapshot()
        return read_entries(self.directory, end=end)

    def close(self) -> None:
        if self._flusher is not None:
            self._stop.set()
            self._dirty.set()
            self._flusher.join()
            self._flusher = None
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_entries(directory: Path, *, end: int | None = None) -> Iterator[Entry]:
    """The trail's entries oldest first, up to byte ``end`` (None: the last whole
    frame; a frame being written, or a torn tail, ends the reading quietly)."""
    path = directory / TRAIL_FILE
    if not path.exists():
        return
    with open(path, "rb") as f:
        _check_header(f.read(HEADER_SIZE), path)
        off, seq = HEADER_SIZE, 1
        chunk = b""
        limit = end
        while True:
            more = f.read(1 << 20)
            if limit is not None:
                more = more[: max(0, limit - off - len(chunk))]
            chunk += more
            scan = _scan(chunk, 0, seq)
            for e in scan.entries:
                yield Entry(e.seq, e.hash, e.doc, off + e.offset)
            consumed = scan.end
            off += consumed
            chunk = chunk[consumed:]
            seq += len(scan.entries)
            if not more:
                return


@dataclass(frozen=True)
class Finding:
    """One problem ``verify`` found; ``seq`` is the entry it names (0: none)."""

    seq: int
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class Verified:
    entries: int = 0
    leaves: int = 0
    head: bytes = GENESIS
    problems: list[Finding] = field(default_factory=list)

    @property
    def first_bad(self) -> int:
        return min((p.seq for p in self.problems if p.seq), default=0)


class LeafHashes(Protocol):
    @property
    def size(self) -> int: ...

    def leaf_hash(self, index: int) -> bytes: ...


def verify(
    directory: Path,
    log_leaves: LeafHashes | None = None,
    claimed: Callable[[], set[int]] | None = None,
) -> Verified:
    """Check every frame and every link of the trail, the marker, and (with the vault's
    Merkle log) that each audit leaf in the log matches the trail's head at its count.
    With ``claimed`` (the log indices the vault's index accounts for: store.index
    ``log_leaves``), every other leaf of the log must be one of the trail's leaf
    records: a leaf record removed (to hide a rewritten trail) is named."""
    out = Verified()
    path = directory / TRAIL_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        out.problems.append(Finding(0, f"{path} does not exist (no audit trail here)"))
        return out
    try:
        _check_header(data, path)
    except AuditDamaged as e:
        out.problems.append(Finding(0, str(e)))
        return out
    scan = _scan(data, HEADER_SIZE, 1)
    h = GENESIS
    heads = [GENESIS]  # heads[n] = h_n recomputed
    for ent in scan.entries:
        h = link(h, canonical(ent.doc))
        if h != ent.hash:
            out.problems.append(
                Finding(
                    ent.seq,
                    f"audit entry {ent.seq} (byte {ent.offset}): its hash link is wrong "
                    "(the entry or the one before it was altered)",
                )
            )
            h = ent.hash  # go on from what is stored: later links are checked on their own
        heads.append(h)
    out.entries, out.head = len(scan.entries), h
    synced, _, _ = _read_synced(directory / SYNCED_FILE)
    if scan.problem:
        seq = len(scan.entries) + 1
        where = f"audit entry {seq} (byte {scan.bad_offset}): {scan.problem}"
        if seq <= synced or "partial" not in scan.problem:
            out.problems.append(Finding(seq, where))
        else:  # an unsynced tail being written (or a crash's): the next open cuts it
            out.problems.append(Finding(0, f"{where}: an unsynced tail, cut on the next open"))
    if synced > len(scan.entries):
        out.problems.append(
            Finding(
                len(scan.entries) + 1,
                f"the trail holds {len(scan.entries)} entries but {synced} were synced: "
                f"entries from {len(scan.entries) + 1} on are missing",
            )
        )
    leaves, problem = read_leaves(directory)
    if problem:
        out.problems.append(Finding(0, problem))
    prev = 0
    for r in leaves:
        out.leaves += 1
        what = f"audit leaf at log index {r.log_index} (entries 1..{r.count})"
        if log_leaves is not None:
            if r.log_index >= log_leaves.size:
                out.problems.append(Finding(0, f"{what}: not in the Merkle log"))
            elif log_leaves.leaf_hash(r.log_index) != merkle.leaf_hash(r.leaf_data()):
                out.problems.append(
                    Finding(0, f"{what}: the Merkle log's leaf differs from the leaf record")
                )
        if r.count >= len(heads):
            out.problems.append(
                Finding(
                    len(heads),
                    f"{what}: the trail has only {len(heads) - 1} entries "
                    f"(entries {len(heads)}..{r.count} are missing)",
                )
            )
        elif heads[r.count] != r.head:
            bad = [p.seq for p in out.problems if prev < p.seq <= r.count]
            first = min(bad) if bad else prev + 1
            out.problems.append(
                Finding(
                    first,
                    f"{what}: the trail's head at entry {r.count} is not the one committed "
                    f"to the log: an entry in {prev + 1}..{r.count} was altered"
                    + (f" (first bad: entry {first})" if bad else " and the chain rewritten"),
                )
            )
        prev = r.count
    if log_leaves is not None and claimed is not None:
        out.problems.extend(_unaccounted(log_leaves.size, {r.log_index for r in leaves}, claimed))
    return out


def _unaccounted(
    size: int, audit_leaves: set[int], claimed: Callable[[], set[int]]
) -> list[Finding]:
    """The log leaves below ``size`` that are neither the vault's (``claimed``) nor an
    audit leaf record. A leaf being indexed right now (a server running) is claimed a
    moment later: what is left is asked once more after a second."""
    left = set(range(size)) - audit_leaves - claimed()
    if left:
        time.sleep(1.0)
        left -= claimed()
    return [
        Finding(
            0,
            f"Merkle log leaf {i} is neither a call's, a decision's or a tenant's (the "
            "index) nor an audit leaf record: an audit leaf record was removed (the "
            "trail may have been rewritten), or the index lost a leaf (`callvault "
            "verify --all`)",
        )
        for i in sorted(left)[:20]
    ] + (
        [Finding(0, f"... and {len(left) - 20} more unaccounted log leaves")]
        if len(left) > 20
        else []
    )


POLICY_KEYS = {"sync", "sync_interval_ms", "anomaly"}


def open_for_server(
    directory: Path,
    policy: dict[str, Any] | None,
    known_methods: list[str],
    *,
    log_size: int | None = None,
) -> AuditTrail:
    """The server's trail, with the policy's ``[audit]`` section (docs/access.md):
    ``sync`` ("group": fsync at most every ``sync_interval_ms``, default 50; "always":
    before the RPC's reply), and the ``[[audit.anomaly]]`` rules. A bad section is
    refused with what is wrong (InputError)."""
    from callvault.access.anomaly import parse_rules

    section = dict(policy or {})
    unknown = sorted(set(section) - POLICY_KEYS)
    if unknown:
        raise InputError(f"[audit]: unknown key(s) {', '.join(unknown)}")
    sync = section.get("sync", "group")
    interval = section.get("sync_interval_ms", 50)
    if (
        not isinstance(interval, int | float)
        or isinstance(interval, bool)
        or not 1 <= interval <= 1000
    ):
        raise InputError(f"[audit] sync_interval_ms {interval!r}: a number of ms in 1..1000")
    rules = parse_rules(section.get("anomaly"), known_methods)
    return AuditTrail(
        directory,
        sync=str(sync),
        interval_s=float(interval) / 1000,
        observer=rules if rules.rules else None,
        log_size=log_size,
    )


@dataclass(frozen=True)
class Filter:
    """Which entries a reader wants (the CLI's and Admin.Audit's filters)."""

    call_id: str = ""
    tenant: str = ""  # of call_id; "" = any
    identity: str = ""
    since_us: int = 0
    until_us: int = 0  # 0: no bound
    kind: str = ""
    after_seq: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("", "rpc", "alert"):
            raise InputError(f"kind {self.kind!r}: rpc or alert")
        if self.until_us and self.until_us <= self.since_us:
            raise InputError(f"until {self.until_us} is not after since {self.since_us}")

    def matches(self, e: Entry) -> bool:
        d = e.doc
        if e.seq <= self.after_seq or d.get("time_us", 0) < self.since_us:
            return False
        if self.until_us and d.get("time_us", 0) >= self.until_us:
            return False
        if self.kind and d.get("kind") != self.kind:
            return False
        if self.identity and (d.get("identity") or {}).get("name") != self.identity:
            return False
        if self.call_id:
            return any(
                c == self.call_id and (not self.tenant or t == self.tenant)
                for t, c in d.get("calls", [])
            )
        return True


def tenant_view(doc: dict[str, Any], tenant: str | None) -> dict[str, Any] | None:
    """The entry as an identity of ``tenant`` may see it (None: a platform identity,
    every entry whole): entries of the tenant's identities, and platform identities'
    entries touching its calls, other tenants' calls left out; None when it may not
    see the entry at all. Another tenant's identity naming this tenant's calls (it got
    NOT_FOUND) stays out: its name, address and reason are the other tenant's."""
    if tenant is None:
        return doc
    calls = [[t, c] for t, c in doc.get("calls", []) if t == tenant]
    caller = (doc.get("identity") or {}).get("tenant")
    if caller == tenant or (caller is None and calls and doc.get("kind") != "alert"):
        return dict(doc, calls=calls)
    return None

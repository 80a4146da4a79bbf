"""The vault's index: RocksDB (rocksdict) column families, one WriteBatch per group commit.

Column families, keys, values, the ``default`` family's ``meta/*``, ``leaf/*``
and ``dead/*`` entries and the call entry's JSON: docs/format.md 8.4 (format
version 4; ``dead/*``, the bytes of records the index let go of per segment, is
what a reclaim reads: 8.11). The index never points past durable bytes: the vault writes each
group commit's batch after the segment fsync and before any acknowledgement
(callvault.store.segment's on_commit). It can be rebuilt from the segments
alone (`callvault --data DIR reindex`, which never opens a damaged index); a
damaged one is refused with IndexUnreadable saying so. RocksDB's info logs are
bounded (LOG_FILES, LOG_FILE_BYTES); a read-only open writes nothing in DATA.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rocksdict import AccessType, DBCompressionType, Options, Rdict, WriteBatch

from callvault.errors import CallvaultError

# 2: the call entry's vault-internal values are fields (docs/format.md 8.4); 3: the
# entry gained `recording_id` and `unsupported_codec` (absent in older entries: their
# defaults). An older index is read (its entries migrate on load) and marked with
# this version on open, so that a build that knows only an older one refuses it
# (with the reindex sentence) instead of failing on an entry field it does not know.
# 4: peak mode's `storage`, `transcode_ref`, `transcode_log_index` and
# `compact_next` (docs/format.md 8.10; absent: the defaults), and an erased call
# keeps no `records` entries (its audio records are dead, their bytes counted under
# `dead/<segment>`: docs/format.md 8.4, 8.11); an older index is migrated on open
# (its erased calls' entries deleted and counted) in the batch that marks it 4.
# 5: the recording policy's `decision` (docs/format.md 8.13) and the lifecycle's
# fields (8.14-8.17: `retention`, `holds`, `lifecycle_count`, `lifecycle_head`,
# `lifecycle_leaves`, `lifecycle_refs`, `open_ref`, `archive`, `local`, `disposal`,
# `pending_erase`, `subjects`; absent: the defaults). Versions 1 to 4 are read and
# marked 5 on open (from 4 nothing else changes).
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
MIGRATE_ERASED_BELOW = 4  # an index older than this kept erased calls' records
CFS = ("calls", "records", "time", "agent", "skill", "tag")
RECORD = struct.Struct(">BBHIQQI")  # leg, type, frames, first frame, segment, offset, length
U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")
DEAD = b"dead/"  # default family: dead/ + u64 segment -> u64 dead bytes (docs/format.md 8.4)
# default family: tenant-erased/ + tenant (UTF-8) -> JSON of the tenant's erasure (8.4, 8.6)
TENANT_ERASED = b"tenant-erased/"

# RocksDB's own info log (DATA/index/LOG): it is rolled to LOG.old.<time> on every
# open, so without a bound each command run leaves one more file. RocksDB keeps at
# most LOG_FILES of them (the live one included), each at most LOG_FILE_BYTES.
LOG_FILES = 3
LOG_FILE_BYTES = 1 << 20
CONFIG_FILE = "rocksdict-config.json"  # rocksdict's own (raw mode), in DATA/index


class IndexUnreadable(CallvaultError):
    """The index cannot be opened. ``damaged``: RocksDB found it corrupt (a missing or
    truncated table file, a bad manifest): the message says how to rebuild it from
    the segments; otherwise the message is RocksDB's reason (a full disk, permissions)."""

    def __init__(self, message: str, *, damaged: bool = True) -> None:
        super().__init__(message)
        self.damaged = damaged


def _rocksdb_reason(e: BaseException) -> str:
    # RocksDB's messages repeat their kind ("Corruption: Corruption: ...") and can run
    # over several lines: the first line, once
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"^(\w[\w ]*: )\1+", r"\1", text)


def _shadow_of(path: Path) -> Path:
    """A temporary directory of symbolic links to the index's files, for a read-only
    open that writes nothing in DATA: rocksdict writes its rocksdict-config.json on
    every open, even a read-only one (here a link to /dev/null, which it reads as
    empty: the options are given), and RocksDB then only reads. The directory is
    made outside DATA (the system's temporary directory), removed on close."""
    # an explicit dir: tempfile.gettempdir() probes by writing a file (a full disk)
    tmp = os.environ.get("TMPDIR") or "/tmp"
    shadow = Path(tempfile.mkdtemp(prefix="callvault-index-", dir=tmp))
    try:
        for name in os.listdir(path):
            if name in (CONFIG_FILE, "LOCK") or name.startswith("LOG"):
                continue
            os.symlink(path / name, shadow / name)
        os.symlink(os.devnull, shadow / CONFIG_FILE)
    except BaseException:
        shutil.rmtree(shadow, ignore_errors=True)
        raise
    return shadow


def index_options() -> Options:
    """The RocksDB options of every index (read-write or read-only)."""
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    opt.create_missing_column_families(True)
    opt.set_compression_type(DBCompressionType.lz4())
    opt.set_keep_log_file_num(LOG_FILES)
    opt.set_max_log_file_size(LOG_FILE_BYTES)
    return opt


def _s(value: str, what: str) -> bytes:
    raw = value.encode()
    if not raw or b"\x00" in raw:
        raise ValueError(f"{what} must be a non-empty string without NUL, got {value!r}")
    return raw + b"\x00"


@dataclass(frozen=True)
class RecordEntry:
    leg: int
    rtype: int
    frames: int
    first_frame: int
    segment: int
    offset: int
    length: int

    def pack(self) -> bytes:
        return RECORD.pack(
            self.leg,
            self.rtype,
            self.frames,
            self.first_frame,
            self.segment,
            self.offset,
            self.length,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> RecordEntry:
        return cls(*RECORD.unpack(raw))


# what a LIFECYCLE record may set in a call entry (docs/format.md 8.14)
LIFECYCLE_FIELDS = frozenset(
    {"tags", "retention", "holds", "archive", "local", "disposal", "pending_erase", "subjects"}
)


@dataclass
class CallEntry:
    """What the index keeps of a call (the customer number only as ciphertext)."""

    tenant: str
    call_id: str
    start_us: int
    direction: str = ""
    agent: str = ""
    skill_group: str = ""
    tags: list[str] = field(default_factory=list)
    legs: list[str] = field(default_factory=list)
    # hex of crypto.encrypt_blob(...); a v1 name: "sealed" means encrypted (docs/format.md 8.6)
    customer_number_sealed: str = ""
    wrapped_key: str = ""  # never set: the wrapped key has its own file (docs/format.md 8.6)
    state: str = "open"  # open, sealed, erased
    records: int = 0
    chain_head: str = ""  # hex
    seal: str = ""  # hex, once sealed
    log_index: int = -1  # the seal's leaf in the Merkle log
    end_us: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # the user's, as given
    # the recording (CallStart.recording_id) that opened the call; None: not known
    # (a call opened by an older version, or not through Ingest)
    recording_id: str | None = None
    # the manifest's "unsupported_codec" (docs/format.md 8.5): audio in codecs callvault
    # does not record; None: none (or sealed before the manifest said so)
    unsupported_codec: dict[str, Any] | None = None
    # the vault's own, from the SEAL and ERASE records:
    manifest_ref: tuple[int, int, int] | None = None  # the SEAL record (segment, offset, length)
    erased_us: int = 0
    erase_reason: str = ""
    erase_log_index: int = -1  # the erasure's leaf in the Merkle log
    # how the audio is stored (docs/format.md 8.5, 8.10): "opus" (recorded in Opus),
    # "raw" (G.711, sealed, not compacted yet), "compacted" (raw turned into Opus)
    storage: str = "opus"
    transcode_ref: tuple[int, int, int] | None = None  # the TRANSCODE record
    transcode_log_index: int = -1  # the transcoding leaf in the Merkle log
    compact_next: int = 0  # the next chain index compaction may use (never reused)
    # the recording policy's decision (the OPEN record's "decision", docs/format.md
    # 8.13): recorded, rule, reason, region, consent; None: recorded before decisions
    decision: dict[str, Any] | None = None
    # lifecycle (docs/format.md 8.14): set by the manifest (retention at seal) and the
    # call's LIFECYCLE records, each of which may set any of LIFECYCLE_FIELDS
    # retention end: {"until_us", "rule", "mode" ("compliance"|"governance"|"default"),
    # "set_us"}; None: no policy applied, kept until one does
    retention: dict[str, Any] | None = None
    # legal holds by name: {"placed_us", "by", "reason", "release"?: the pending request}
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    lifecycle_count: int = 0  # LIFECYCLE records indexed
    lifecycle_head: str = ""  # hex: the lifecycle chain's head ("" before the first)
    lifecycle_leaves: list[int] = field(default_factory=list)  # their Merkle log leaves
    # their records' places [segment, offset, length], in order (verify replays them;
    # a reclaim re-points them: docs/format.md 8.11, 8.14)
    lifecycle_refs: list[list[int]] = field(default_factory=list)
    # the OPEN record's place (segment, offset, length): verify compares its metadata
    # with the seal's manifest (8.14); None in an entry indexed before it was kept
    open_ref: tuple[int, int, int] | None = None
    archive: dict[str, Any] | None = None  # the call's archive object, once archived
    local: bool = True  # False once the local copy of the audio was let go of (archived)
    disposal: dict[str, Any] | None = None  # the disposition that ended the call
    # an erasure asked for while the call was held or retained: {"requested_us", "by",
    # "reason"}; carried out once nothing keeps the call (docs/policy.md)
    pending_erase: dict[str, Any] | None = None
    # the subject index's HMACs of the call (docs/format.md 8.16): {"customer_number":
    # hex, an extra key: hex}, from the OPEN record (or a LIFECYCLE "subject-index"
    # record for a call opened before); never a value in clear
    subjects: dict[str, str] = field(default_factory=dict)

    def pack(self) -> bytes:
        # vars(), not asdict(): asdict deep-copies, and this runs once per call per group
        return json.dumps(vars(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, raw: bytes) -> CallEntry:
        doc = json.loads(raw)
        if "manifest_ref" not in doc:  # packed before the vault's fields had their own
            _from_extra(doc)
        ref = doc.get("manifest_ref")
        if ref is not None:
            doc["manifest_ref"] = tuple(ref)
        if doc.get("transcode_ref") is not None:
            doc["transcode_ref"] = tuple(doc["transcode_ref"])
        if doc.get("open_ref") is not None:
            doc["open_ref"] = tuple(doc["open_ref"])
        return cls(**doc)


# The keys the previous packing kept in ``extra`` (docs/format.md 8.4), the record
# that set them, and their type: only those the vault wrote are moved out.
_OLD_EXTRA = {
    "manifest_ref": ("seal", list),
    "erased_us": ("erased", int),
    "erase_reason": ("erased", str),
    "erase_log_index": ("erased", int),
}


def _from_extra(doc: dict[str, Any]) -> None:
    """Move the vault's fields out of an old entry's ``extra`` into their own."""
    extra = dict(doc.get("extra") or {})
    for name, (when, kind) in _OLD_EXTRA.items():
        written = bool(doc.get("seal")) if when == "seal" else doc.get("state") == "erased"
        value = extra.get(name)
        if written and isinstance(value, kind) and not isinstance(value, bool):
            doc[name] = extra.pop(name)
    doc["extra"] = extra


def call_key(tenant: str, call_id: str) -> bytes:
    return _s(tenant, "tenant") + _s(call_id, "call id")


def record_key(tenant: str, call_id: str, chain_index: int) -> bytes:
    return call_key(tenant, call_id) + U32.pack(chain_index)


def _posting(tenant: str, value: str | None, what: str, start_us: int, call_id: str) -> bytes:
    mid = b"" if value is None else _s(value, what)
    return _s(tenant, "tenant") + mid + U64.pack(start_us) + _s(call_id, "call id")


SUBJECT = b"subject/"  # default family: subject/ + tenant 00 key 00 hmac(32) call id 00 -> ""


def subject_prefix(tenant: str, name: str, mac: bytes) -> bytes:
    """The keys of the calls whose ``name`` has the HMAC ``mac`` (docs/format.md 8.16)."""
    if len(mac) != 32:
        raise ValueError("a subject HMAC is 32 bytes")
    return SUBJECT + _s(tenant, "tenant") + _s(name, "subject key") + mac


def subject_postings(e: CallEntry) -> list[bytes]:
    """The subject index's keys of a call (default family)."""
    out = []
    for name, mac in sorted(e.subjects.items()):
        try:
            raw = bytes.fromhex(mac)
        except (TypeError, ValueError):
            continue  # never written by a vault: not indexed
        if len(raw) == 32 and name and "\x00" not in name:
            out.append(subject_prefix(e.tenant, name, raw) + _s(e.call_id, "call id"))
    return out


DECISION = b"decision/"  # default family: decision/ + tenant 00 call id 00 -> JSON
DECISION_TIME = b"dtime/"  # default family: dtime/ + tenant 00 u64 time call id 00 -> ""


@dataclass
class DecisionEntry:
    """A call the recording policy did not record (a DECISION record, docs/format.md
    8.13): the decision's document, its time and its leaf in the Merkle log."""

    tenant: str
    call_id: str
    time_us: int
    doc: dict[str, Any]  # recorded (false), rule, reason, region, consent
    log_index: int = -1
    ref: tuple[int, int, int] | None = None  # the DECISION record (segment, offset, length)

    def pack(self) -> bytes:
        return json.dumps(vars(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def unpack(cls, raw: bytes) -> DecisionEntry:
        doc = json.loads(raw)
        if doc.get("ref") is not None:
            doc["ref"] = tuple(doc["ref"])
        return cls(**doc)


def decision_key(tenant: str, call_id: str) -> bytes:
    return DECISION + call_key(tenant, call_id)


def _decision_posting(tenant: str, time_us: int, call_id: str) -> bytes:
    return DECISION_TIME + _s(tenant, "tenant") + U64.pack(time_us) + _s(call_id, "call id")


class Batch:
    """The index writes of one group commit, applied atomically by Index.write."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._wb = WriteBatch(raw_mode=True)
        self.count = 0
        # the records put in this batch, per call (a call's erasure in the same batch
        # finds them here: the batch cannot be read)
        self.records_put: dict[tuple[str, str], dict[int, RecordEntry]] = {}
        self.dead: dict[int, int] = {}  # dead bytes added per segment
        self.gone: set[int] = set()  # segments whose counter is deleted
        self.tenants_erased: set[str] = set()  # tenants whose tombstone this batch puts
        self.decisions_put: dict[tuple[str, str], DecisionEntry] = {}

    def put_call(self, entry: CallEntry, *, previous: CallEntry | None = None) -> None:
        ix = self._index
        key = call_key(entry.tenant, entry.call_id)
        new = ix.postings(entry)
        old = ix.postings(previous) if previous is not None else []
        for cf, k in old:  # postings follow the metadata; unchanged ones stay
            if (cf, k) not in new:
                self._wb.delete(k, ix.cf(cf))
        self._wb.put(key, entry.pack(), ix.cf("calls"))
        for cf, k in new:
            if (cf, k) not in old:
                self._wb.put(k, b"", ix.cf(cf))
        # the subject index (docs/format.md 8.16) follows the entry's HMACs likewise
        snew = subject_postings(entry)
        sold = subject_postings(previous) if previous is not None else []
        for k in sold:
            if k not in snew:
                self._wb.delete(k)
        for k in snew:
            if k not in sold:
                self._wb.put(k, b"")
        self.count += 1

    def put_meta(self, key: bytes, value: bytes) -> None:
        """A vault-wide entry of the default column family (not a tenant's)."""
        self._wb.put(key, value)

    def put_record(self, tenant: str, call_id: str, chain_index: int, entry: RecordEntry) -> None:
        self._wb.put(
            record_key(tenant, call_id, chain_index), entry.pack(), self._index.cf("records")
        )
        self.records_put.setdefault((tenant, call_id), {})[chain_index] = entry
        self.count += 1

    def put_tenant_erasure(self, tenant: str, doc: dict[str, Any]) -> None:
        """The tombstone of an erased tenant (docs/format.md 8.4): ``time_us``,
        ``reason``, ``log_index`` (its leaf), ``keys_destroyed`` (the erasure finished)."""
        self._wb.put(TENANT_ERASED + tenant.encode(), json.dumps(doc, sort_keys=True).encode())
        self.tenants_erased.add(tenant)
        self.count += 1

    def delete_record(self, tenant: str, call_id: str, chain_index: int) -> None:
        """The index stops referencing the record: it is dead (docs/format.md 8.11)."""
        self._wb.delete(record_key(tenant, call_id, chain_index), self._index.cf("records"))
        self.records_put.get((tenant, call_id), {}).pop(chain_index, None)
        self.count += 1

    def put_decision(self, d: DecisionEntry) -> None:
        """A call not recorded (docs/format.md 8.13): its entry and its time posting."""
        self._wb.put(decision_key(d.tenant, d.call_id), d.pack())
        self._wb.put(_decision_posting(d.tenant, d.time_us, d.call_id), b"")
        self.decisions_put[(d.tenant, d.call_id)] = d
        self.count += 1

    def add_dead(self, segment: int, nbytes: int) -> None:
        """``nbytes`` more of ``segment`` are dead records (added to ``dead/<segment>``
        when the batch is written)."""
        self.dead[segment] = self.dead.get(segment, 0) + nbytes

    def forget_segment(self, segment: int) -> None:
        """The segment is gone (reclaimed): its dead-bytes counter goes with it."""
        self.dead.pop(segment, None)
        self.gone.add(segment)


def _ids_after(it: Any, prefix: bytes) -> list[str]:
    """The call ids ending the keys under ``prefix`` (``prefix`` call_id 00), in key
    order: a tenant's calls, a subject's calls."""
    out: list[str] = []
    it.seek(prefix)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            break
        out.append(key[len(prefix) : -1].decode())
        it.next()
    return out


class Index:
    """The RocksDB index of one vault (DATA/index)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """Open the index in ``path`` (created when absent, unless ``read_only``).

        ``read_only`` opens it as RocksDB's read-only instance: no lock, no log, no
        write to the directory, so it works while another process writes the index
        and on a full disk; it sees the index as it was when opened. A damaged index
        (a missing or truncated table file, a bad manifest) raises IndexUnreadable
        with the command that rebuilds it."""
        self.path = Path(path)
        self.read_only = read_only
        data = self.path.parent
        if read_only and not (self.path / "CURRENT").exists():
            raise IndexUnreadable(
                f"the index {self.path} is missing: rebuild it from the segments with "
                f"`callvault --data {data} reindex`"
            )
        opt = index_options()
        self._shadow: Path | None = None
        where = self.path
        if read_only:
            opt.set_max_open_files(-1)  # every table file open now: a compaction may remove it
            self._shadow = where = _shadow_of(self.path)
        try:
            self._db = Rdict(
                str(where),
                opt,
                column_families=dict.fromkeys(CFS, opt),
                access_type=AccessType.read_only() if read_only else AccessType.read_write(),
            )
        except Exception as e:  # rocksdict raises a bare Exception with RocksDB's status
            self._drop_shadow()
            reason = _rocksdb_reason(e).replace(str(where), str(self.path))
            if "Corruption" not in reason:  # a lock, a full disk, permissions: not damage
                raise IndexUnreadable(
                    f"the index {self.path} cannot be opened: {reason}", damaged=False
                ) from None
            raise IndexUnreadable(
                f"the index {self.path} is damaged ({reason}); the segments hold every "
                f"call: rebuild the index from them with `callvault --data {data} reindex` "
                "(the damaged index is kept aside as index.backup-<time>)",
                damaged=True,
            ) from None
        self._cfs = {name: self._db.get_column_family_handle(name) for name in CFS}
        self._views = {name: self._db.get_column_family(name) for name in CFS}
        raw = self._db.get(b"meta/format")
        version = None if raw is None else U32.unpack(raw)[0]
        if version is not None and version not in READABLE_VERSIONS:
            self.close()
            raise ValueError(
                f"index format {version} is not {FORMAT_VERSION}: "
                "rebuild it with `callvault --data DIR reindex`"
            )
        if version != FORMAT_VERSION and not read_only:
            older = version is not None and version < MIGRATE_ERASED_BELOW
            b = self._migrate_erased() if older else self.batch()
            b.put_meta(b"meta/format", U32.pack(FORMAT_VERSION))
            self.write(b)

    def cf(self, name: str) -> Any:
        return self._cfs[name]

    def batch(self) -> Batch:
        return Batch(self)

    def write(self, batch: Batch) -> None:
        """Apply the batch atomically. Its dead-bytes increments are read-modify-write:
        the vault writes its batches one at a time (under its log lock)."""
        if self.read_only:
            raise IndexUnreadable(f"the index {self.path} is open read-only")
        for seg in batch.gone:
            batch._wb.delete(DEAD + U64.pack(seg))
        for seg, n in batch.dead.items():
            if n:
                batch._wb.put(DEAD + U64.pack(seg), U64.pack(self.dead_bytes_of(seg) + n))
        self._db.write(batch._wb)

    def dead_bytes_of(self, segment: int) -> int:
        raw = self._db.get(DEAD + U64.pack(segment))
        return 0 if raw is None else int(U64.unpack(raw)[0])

    def dead_bytes(self) -> dict[int, int]:
        """``dead/<segment>``: per segment, the bytes of the records the index let go
        of (erased calls' audio, dropped records): what a reclaim can free."""
        out: dict[int, int] = {}
        it = self._db.iter()
        it.seek(DEAD)
        while it.valid():
            key = it.key()
            if not key.startswith(DEAD):
                break
            out[U64.unpack(key[len(DEAD) :])[0]] = U64.unpack(it.value())[0]
            it.next()
        return out

    def record(self, tenant: str, call_id: str, chain_index: int) -> RecordEntry | None:
        raw = self._views["records"].get(record_key(tenant, call_id, chain_index))
        return None if raw is None else RecordEntry.unpack(raw)

    def _migrate_erased(self) -> Batch:
        """A batch that deletes the `records` entries of every erased call (an index
        older than format 4 kept them) and counts their bytes as dead."""
        b = self.batch()
        it = self._views["calls"].iter()
        it.seek_to_first()
        while it.valid():
            e = CallEntry.unpack(it.value())
            if e.state == "erased":
                for i, r in self.records(e.tenant, e.call_id):
                    b.delete_record(e.tenant, e.call_id, i)
                    b.add_dead(r.segment, r.length)
            it.next()
        return b

    def sync(self) -> None:
        """Make every write so far durable (RocksDB's write-ahead log, fsynced)."""
        self._db.flush_wal(True)

    def close(self) -> None:
        # the column-family views hold the database open: drop them first
        for view in self._views.values():
            view.close()
        self._views.clear()
        self._cfs.clear()
        self._db.close()
        self._drop_shadow()

    def _drop_shadow(self) -> None:
        if self._shadow is not None:
            shutil.rmtree(self._shadow, ignore_errors=True)
            self._shadow = None

    @staticmethod
    def postings(e: CallEntry) -> list[tuple[str, bytes]]:
        out = [("time", _posting(e.tenant, None, "", e.start_us, e.call_id))]
        if e.agent:
            out.append(("agent", _posting(e.tenant, e.agent, "agent", e.start_us, e.call_id)))
        if e.skill_group:
            out.append(
                ("skill", _posting(e.tenant, e.skill_group, "skill group", e.start_us, e.call_id))
            )
        out += [("tag", _posting(e.tenant, t, "tag", e.start_us, e.call_id)) for t in e.tags]
        return out

    # -- reads ---------------------------------------------------------------------------
    def get_meta(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def tenant_erasure(self, tenant: str) -> dict[str, Any] | None:
        """The tombstone of ``tenant`` if it was erased (Batch.put_tenant_erasure)."""
        raw = self._db.get(TENANT_ERASED + tenant.encode())
        if raw is None:
            return None
        doc: dict[str, Any] = json.loads(raw)
        return doc

    def tenant_erasures(self) -> dict[str, dict[str, Any]]:
        """Every erased tenant's tombstone."""
        out: dict[str, dict[str, Any]] = {}
        it = self._db.iter()
        it.seek(TENANT_ERASED)
        while it.valid():
            key = it.key()
            if not key.startswith(TENANT_ERASED):
                break
            out[key[len(TENANT_ERASED) :].decode()] = json.loads(it.value())
            it.next()
        return out

    def log_leaves(self) -> set[int]:
        """Every Merkle log index the index accounts for: calls' seal, erasure and
        transcoding leaves, decisions' leaves and tenant erasures' leaves (the audit
        trail keeps its own: access.audit ``verify`` accounts for the whole log)."""
        out: set[int] = set()
        it = self._views["calls"].iter()
        it.seek_to_first()
        while it.valid():
            e = CallEntry.unpack(it.value())
            out.update(i for i in (e.log_index, e.erase_log_index, e.transcode_log_index) if i >= 0)
            out.update(e.lifecycle_leaves)
            it.next()
        it = self._db.iter()
        it.seek(DECISION)
        while it.valid() and it.key().startswith(DECISION):
            d = DecisionEntry.unpack(it.value())
            if d.log_index >= 0:
                out.add(d.log_index)
            it.next()
        out.update(
            int(doc["log_index"])
            for doc in self.tenant_erasures().values()
            if int(doc.get("log_index", -1)) >= 0
        )
        return out

    def call_ids(self, tenant: str) -> list[str]:
        """Every call id of the tenant in the index (all states), in key order."""
        return _ids_after(self._views["calls"].iter(), _s(tenant, "tenant"))

    def get_call(self, tenant: str, call_id: str) -> CallEntry | None:
        raw = self._views["calls"].get(call_key(tenant, call_id))
        return None if raw is None else CallEntry.unpack(raw)

    def subject_calls(self, tenant: str, name: str, mac: bytes) -> list[str]:
        """The ids of the tenant's calls whose ``name`` has the HMAC ``mac`` (the
        subject index, docs/format.md 8.16), in key order."""
        return _ids_after(self._db.iter(), subject_prefix(tenant, name, mac))

    def get_decision(self, tenant: str, call_id: str) -> DecisionEntry | None:
        raw = self._db.get(decision_key(tenant, call_id))
        return None if raw is None else DecisionEntry.unpack(raw)

    def decisions(
        self, tenant: str, *, since_us: int = 0, until_us: int = 2**63 - 1, reverse: bool = False
    ) -> Iterator[DecisionEntry]:
        """A tenant's decisions (calls not recorded) made in [since_us, until_us), by
        time then call id (or the reverse)."""
        prefix = DECISION_TIME + _s(tenant, "tenant")
        it = self._db.iter()
        if reverse:
            it.seek_for_prev(prefix + U64.pack(min(max(until_us, 0), 2**64 - 1)))
        else:
            it.seek(prefix + U64.pack(max(since_us, 0)))
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            t = U64.unpack(key[len(prefix) : len(prefix) + 8])[0]
            if (t >= until_us) if not reverse else (t < since_us):
                break
            call_id = key[len(prefix) + 8 : -1].decode()
            if reverse:
                it.prev()
            else:
                it.next()
            if reverse and t >= until_us:
                continue
            d = self.get_decision(tenant, call_id)
            if d is not None:
                yield d

    def tenants(self) -> list[str]:
        """Every tenant with a call, in key order (one seek per tenant)."""
        out: list[str] = []
        it = self._views["calls"].iter()
        it.seek_to_first()
        while it.valid():
            tenant = it.key().split(b"\x00", 1)[0]
            out.append(tenant.decode())
            it.seek(tenant + b"\x01")  # past every key of this tenant ("tenant 00 ...")
        return out

    def records(self, tenant: str, call_id: str) -> Iterator[tuple[int, RecordEntry]]:
        """(chain index, entry) of a call's records in chain order."""
        prefix = call_key(tenant, call_id)
        it = self._views["records"].iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield U32.unpack(key[len(prefix) :])[0], RecordEntry.unpack(it.value())
            it.next()

    def search(
        self,
        tenant: str,
        *,
        since_us: int = 0,
        until_us: int = 2**63 - 1,
        agent: str | None = None,
        skill_group: str | None = None,
        tag: str | None = None,
        reverse: bool = False,
        after: tuple[int, str] | None = None,
    ) -> Iterator[CallEntry]:
        """Calls of a tenant started in [since_us, until_us), by one posting list
        (the most selective given: tag, agent, skill group, else time), the other
        conditions checked on the entries; in (start, call id) order, or the
        reverse. ``after`` = (start_us, call_id) resumes past that call in the
        order of the walk (a page cursor: calls added since keep their place)."""
        if tag is not None:
            cf, mid = "tag", _s(tag, "tag")
        elif agent is not None:
            cf, mid = "agent", _s(agent, "agent")
        elif skill_group is not None:
            cf, mid = "skill", _s(skill_group, "skill group")
        else:
            cf, mid = "time", b""
        prefix = _s(tenant, "tenant") + mid
        since = max(since_us, 0)
        until = min(until_us, 2**64 - 1)
        cursor = None if after is None else prefix + U64.pack(after[0]) + _s(after[1], "call id")
        it = self._views[cf].iter()
        if not reverse:
            first = prefix + U64.pack(since)
            # cursor + 00 is the least key greater than the cursor
            it.seek(first if cursor is None else max(first, cursor + b"\x00"))
        else:
            last = prefix + U64.pack(until)  # no key equals it (a call id follows)
            it.seek_for_prev(last if cursor is None else min(last, cursor))
            if it.valid() and it.key() == cursor:
                it.prev()
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            start = U64.unpack(key[len(prefix) : len(prefix) + 8])[0]
            if start >= until_us if not reverse else start < since:
                break
            call_id = key[len(prefix) + 8 : -1].decode()
            entry = self.get_call(tenant, call_id)
            if reverse:
                it.prev()
            else:
                it.next()
            if entry is None or (reverse and start >= until_us):
                continue
            if agent is not None and entry.agent != agent:
                continue
            if skill_group is not None and entry.skill_group != skill_group:
                continue
            if tag is not None and tag not in entry.tags:
                continue
            yield entry

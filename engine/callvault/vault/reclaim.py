"""Reclaiming space: which stored records are live, and the segment rewrite (GC) that
removes the dead ones, crash-safe (docs/format.md 8.11).

Liveness is defined in one place, :class:`Liveness`: an AUDIO record is live while the
index's ``records`` family references it at exactly its place; every other record
(OPEN, SEAL, ERASE, and any later call-level record type) is kept, as ``reindex``
rebuilds the calls from them. So an erased call's audio (the erasure, or its tenant's
erasure, lets go of it)
and the records a compaction dropped (``Vault.drop_records``) are dead. Later policies
(disposal) extend it by subclassing and passing the instance to ``Vault.reclaim``.

A run (``Vault.reclaim``) looks at the closed segments before the one the index's
known end is in (everything in them is indexed), picks those whose dead bytes (the
index's ``dead/<segment>`` counters, or a full scan) reach the threshold (small
segments, earlier runs' copies, join the picks next to them), and handles each run of
consecutive picks (in the store's order) in steps whose copies fit a segment:

1. the live records of the run are copied, as they are, into a new segment
   ``<N>.seg.tmp`` (an id the writer will never use) that starts with an origin record
   (the first member's place in the store's order) and ends with its footer; fsynced;
2. the journal ``DATA/reclaim`` names N and the members (written atomically);
3. ``<N>.seg.tmp`` is renamed to ``<N>.seg`` (the directory fsynced);
4. one index batch re-points every moved record (AUDIO entries, a SEAL's manifest_ref)
   that still references its old place, deletes the members' dead counters; the
   index's write-ahead log is synced;
5. the members are removed (directory fsynced), then the journal.

A run with no live record skips 1 and 3. Opening the vault resolves a journal a crash
left (``resolve_reclaim``): N published (or no N) means step 3 happened: steps 4 and 5
are done again (both are idempotent: 4 re-points only entries still in a member);
otherwise nothing was changed but a file nobody references: ``<N>.seg.tmp`` is removed.
Only the committer's lock is held, and only for the index batch of step 4: ingest goes
on meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callvault.durable import fsync_dir, write_atomic
from callvault.errors import CallvaultError
from callvault.store import records as rec
from callvault.store.index import Batch, CallEntry, Index, RecordEntry
from callvault.store.segment import (
    FOOTER_RECORD_SIZE,
    HEADER_SIZE,
    ORIGIN_RECORD_SIZE,
    RecordRef,
    SegmentReader,
    publish_copy,
    remove_unpublished,
    segment_path,
    write_copy,
)
from callvault.vault.common import CallNotFound, VaultError
from callvault.vault.recovery import Indexing

JOURNAL = "reclaim"  # DATA/reclaim: the rewrite in progress (docs/format.md 8.11)
RECLAIMED = b"meta/reclaimed"  # u64: bytes reclaimed over the vault's life
RECLAIM_SERIAL = b"meta/reclaim-serial"  # u64: the last rewrite whose index batch is written
DEFAULT_THRESHOLD = 0.5  # a closed segment at least half dead is rewritten
# a closed segment smaller than segment_bytes / SMALL (an earlier run's copy) is merged
# with its picked or small neighbours, so copies do not pile up run after run
SMALL = 4
_U64 = struct.Struct(">Q")

# Test hook: the SIGKILL crash tests stop a run at a named step (see tests/vault/
# test_reclaim_crash.py): CALLVAULT_RECLAIM_CRASH=<step> kills the process there.
_CRASH_AT = os.environ.get("CALLVAULT_RECLAIM_CRASH", "")


def _crash_point(step: str) -> None:
    if step == _CRASH_AT:
        os.kill(os.getpid(), 9)


class Liveness:
    """Which stored records the vault still needs: the one definition (docs/format.md
    8.11). Subclass and override ``live`` (calling it for what the subclass does not
    decide) to let a policy kill more records; never keep fewer than the index needs."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def live(self, ref: RecordRef, rtype: int, raw: bytes) -> bool:
        if rtype != rec.AUDIO:
            return True  # OPEN, SEAL, ERASE, later call-level records: reindex needs them
        try:
            b = rec.parse(rtype, raw)
        except CallvaultError:
            return True  # what cannot be read is never thrown away
        entry = self.index.record(b.tenant, b.call_id, b.chain_index)
        return entry is not None and (entry.segment, entry.offset, entry.length) == tuple(ref)


@dataclass
class ReclaimResult:
    """What a reclaim run did (and what is left to do)."""

    bytes_freed: int = 0
    segments_removed: int = 0  # removed: nothing in them was live
    segments_rewritten: int = 0  # removed, their live records copied
    segments_written: int = 0  # the copies
    records_moved: int = 0
    reclaimable_bytes: int = 0  # dead bytes counted in the remaining segments
    reclaimed_bytes: int = 0  # over the vault's life
    skipped: list[str] = field(default_factory=list)  # why a segment was left

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "skipped"}


@dataclass
class _Journal:
    serial: int
    new: int | None  # the copy's id, None when nothing was live
    origin: int
    old: list[int]
    freed: int

    def dump(self) -> bytes:
        return json.dumps(vars(self), sort_keys=True).encode()

    @classmethod
    def load(cls, raw: bytes) -> _Journal:
        doc = json.loads(raw)
        return cls(
            serial=int(doc["serial"]),
            new=None if doc["new"] is None else int(doc["new"]),
            origin=int(doc["origin"]),
            old=[int(x) for x in doc["old"]],
            freed=int(doc["freed"]),
        )


def _meta_u64(index: Index, key: bytes) -> int:
    raw = index.get_meta(key)
    return 0 if raw is None else int(_U64.unpack(raw)[0])


def _repoint(
    index: Index,
    batch: Batch,
    calls: dict[tuple[str, str], CallEntry],
    rtype: int,
    raw: bytes,
    new: RecordRef,
    old_segments: set[int],
    old: RecordRef | None = None,
) -> bool:
    """Point the index entry of a copied record at its copy ``new``, if it still
    references the record in one of ``old_segments`` (at ``old`` when given). Every
    index value holding a record's place is handled here (AUDIO entries, a SEAL's
    manifest_ref, a TRANSCODE's transcode_ref, an OPEN's open_ref, a LIFECYCLE's
    entry in lifecycle_refs): a new one must be added, or a rewrite leaves it dangling."""
    if rtype not in (rec.AUDIO, rec.SEAL, rec.TRANSCODE, rec.OPEN, rec.LIFECYCLE):
        return False
    b = rec.parse(rtype, raw)
    if rtype == rec.AUDIO:
        e = index.record(b.tenant, b.call_id, b.chain_index)
        if e is None or e.segment not in old_segments or e.length != new.length:
            return False
        if old is not None and (e.segment, e.offset) != (old.segment, old.offset):
            return False
        batch.put_record(
            b.tenant,
            b.call_id,
            b.chain_index,
            RecordEntry(e.leg, e.rtype, e.frames, e.first_frame, new.segment, new.offset, e.length),
        )
        return True
    key = (b.tenant, b.call_id)
    c = calls.get(key) or index.get_call(b.tenant, b.call_id)
    if rtype in (rec.OPEN, rec.LIFECYCLE):
        if c is None or not _repoint_meta(c, rtype, b, new, old_segments, old):
            return False
        calls[key] = c
        return True
    if rtype == rec.TRANSCODE:
        ref = c.transcode_ref if c is not None else None
        if c is None or ref is None or ref[0] not in old_segments:
            return False
        if ref[2] != new.length or (old is not None and tuple(ref) != tuple(old)):
            return False
        c.transcode_ref = (new.segment, new.offset, new.length)
        calls[key] = c
        return True
    if c is None or c.manifest_ref is None or c.manifest_ref[0] not in old_segments:
        return False
    if b.seal.hex() != c.seal:  # not the call's seal (a replayed copy): never pointed at
        return False
    if old is not None and tuple(c.manifest_ref) != tuple(old):
        return False
    c.manifest_ref = (new.segment, new.offset, new.length)
    calls[key] = c
    return True


def _repoint_meta(
    c: CallEntry,
    rtype: int,
    b: rec.Body,
    new: RecordRef,
    old_segments: set[int],
    old: RecordRef | None,
) -> bool:
    """Re-point a call's OPEN record (``open_ref``) or one of its LIFECYCLE records
    (``lifecycle_refs``, by the document's ``seq``) at its copy, if the entry still
    references it in one of ``old_segments`` (at ``old`` when given)."""
    if rtype == rec.OPEN:
        ref: Any = c.open_ref
    else:
        try:
            seq = json.loads(b.doc).get("seq")
        except ValueError:
            return False
        if not isinstance(seq, int) or not 1 <= seq <= len(c.lifecycle_refs):
            return False
        ref = c.lifecycle_refs[seq - 1]
    if ref is None or ref[0] not in old_segments or ref[2] != new.length:
        return False
    if old is not None and tuple(ref) != (old.segment, old.offset, old.length):
        return False
    place = (new.segment, new.offset, new.length)
    if rtype == rec.OPEN:
        c.open_ref = place
    else:
        c.lifecycle_refs[seq - 1] = list(place)
    return True


class Reclaiming(Indexing):
    """The Vault's reclaim run, its crash recovery, and ``drop_records``."""

    _reclaim_lock: threading.Lock  # one run at a time; reindex and reopen_writer take it
    _reclaimed_last: ReclaimResult | None
    _empty: set[int]  # the run's segments with no live record
    _picked: set[int]  # the segments dead enough to be rewritten (not only small)

    def _check_writable(self) -> None:
        if self.read_only:
            raise VaultError(f"{self.path} is open read-only: this needs a read-write open")

    @property
    def _journal_path(self) -> Path:
        return self.path / JOURNAL

    # -- what the index lets go of ---------------------------------------------------
    def drop_records(
        self, call_id: str, chain_indexes: list[int], *, tenant: str = "default"
    ) -> int:
        """The index stops referencing these audio records of a call (a compaction that
        replaced them, issue 10's peak mode): they become dead, and a reclaim removes
        them. Returns the bytes let go of. The caller keeps what reindex needs to
        do the same (a record of its own in the segments): this changes the index
        only. Records not referenced are ignored."""
        self._check_writable()
        if self.index.get_call(tenant, call_id) is None:
            raise CallNotFound(f"no call {call_id} in tenant {tenant}")
        freed = 0
        with self._log_lock:
            b = self.index.batch()
            for i in chain_indexes:
                r = self.index.record(tenant, call_id, i)
                if r is None:
                    continue
                b.delete_record(tenant, call_id, i)
                b.add_dead(r.segment, r.length)
                freed += r.length
            self.index.write(b)
        return freed

    def reclaimable_bytes(self) -> int:
        """The dead bytes the index counts in the stored segments (what a reclaim with
        threshold 0 would free, about: a segment's copy adds its header and footer)."""
        return sum(self.index.dead_bytes().values())

    def reclaimed_bytes(self) -> int:
        """Bytes reclaimed over the vault's life."""
        return _meta_u64(self.index, RECLAIMED)

    # -- the run --------------------------------------------------------------------------
    def reclaim(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        scan: bool = False,
        liveness: Liveness | None = None,
        stop: threading.Event | None = None,
    ) -> ReclaimResult:
        """Remove the closed segments whose records are all dead and rewrite those at
        least ``threshold`` dead (0 < threshold <= 1, of the segment's bytes): their
        live records copied into a new segment, the index re-pointed, then the old files
        removed (docs/format.md 8.11). ``scan`` reads every closed segment to find its
        dead bytes (records dead for reasons the index did not count: a reindex's
        replays, an index older than format 4) instead of using the index's counters.
        Ingest goes on meanwhile (the committer waits only for each step's index
        batch); ``stop`` set ends the run after the step it is in. Refused while the
        vault has damage (opening reported it): reindex or repair first, so nothing
        the index lost is taken for dead."""
        self._check_writable()
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], not {threshold}")
        if self.report.damage:
            raise VaultError(
                "the vault reported damage when it was opened: reclaim refuses to run "
                "(see `callvault verify --all`)"
            )
        live = liveness or Liveness(self.index)
        result = ReclaimResult()
        with self._reclaim_lock:
            if self._writer.failed is not None:
                raise VaultError(f"the segment writer failed: {self._writer.failed}")
            self._reader.release_retired()  # the previous run's files: nobody reads them now
            for run in self._plan(threshold, scan, live, result):
                if stop is not None and stop.is_set():
                    break
                self._rewrite(run, live, result, stop)
            result.reclaimable_bytes = self.reclaimable_bytes()
            result.reclaimed_bytes = self.reclaimed_bytes()
            self._reclaimed_last = result
        return result

    def _plan(
        self, threshold: float, scan: bool, live: Liveness, result: ReclaimResult
    ) -> list[list[int]]:
        """The runs of consecutive segments (in the store's order) to rewrite."""
        with self._log_lock:  # the index ends at meta/end: everything before it indexed
            end = self._known_end()
        order = self._reader.segments()
        if end is None:
            return []
        limit = order.index(end[0]) if end[0] in order else len(order)
        self._picked = set()
        dead = self.index.dead_bytes()
        runs: list[list[int]] = []
        current: list[int] = []
        wanted = False  # the current run has a segment picked, or two small ones
        small_segs: set[int] = set()

        def close_run() -> None:
            nonlocal current, wanted
            if wanted:
                runs.append(current)
            current, wanted = [], False

        for seg in order[:limit]:
            picked = small = False
            try:
                if self._reader.closed(seg):
                    size = self._reader.size(seg)
                    if scan:
                        d = sum(
                            ref.length
                            for ref, rtype, raw in self._reader.scan(seg)
                            if not live.live(ref, rtype, raw)
                        )
                    else:
                        d = dead.get(seg, 0)
                    overhead = HEADER_SIZE + FOOTER_RECORD_SIZE
                    if self._reader.origin(seg) != seg:
                        overhead += ORIGIN_RECORD_SIZE
                    # all dead, or at least the threshold of its records' bytes
                    picked = d > 0 and d >= threshold * (size - overhead)
                    # a small segment (an earlier run's copy) joins its neighbours
                    small = size < self._segment_bytes // SMALL

                else:
                    result.skipped.append(f"segment {seg:016x} is not closed")
            except CallvaultError as e:
                result.skipped.append(f"segment {seg:016x}: {e}")
            if picked:
                self._picked.add(seg)
            if picked or small:
                current.append(seg)
                smalls = sum(1 for m in current if m in small_segs) + small
                wanted = wanted or picked or smalls >= 2
                if small:
                    small_segs.add(seg)
            else:
                close_run()
        close_run()
        return runs

    def _rewrite(
        self,
        run: list[int],
        live: Liveness,
        result: ReclaimResult,
        stop: threading.Event | None = None,
    ) -> None:
        """Rewrite one run, cut into steps whose copies fit a segment."""
        step: list[int] = []
        kept: list[tuple[RecordRef, int, bytes]] = []
        size = 0
        self._empty: set[int] = set()
        for seg in run:
            mine = [
                (ref, rtype, raw)
                for ref, rtype, raw in self._reader.scan(seg)
                if live.live(ref, rtype, raw)
            ]
            n = sum(ref.length for ref, _, _ in mine)
            if not mine:
                self._empty.add(seg)
            if step and size + n > self._segment_bytes:
                self._flush(step, kept, result)
                step, kept, size = [], [], 0
                if stop is not None and stop.is_set():
                    return
            step.append(seg)
            kept.extend(mine)
            size += n
        if step:
            self._flush(step, kept, result)

    def _flush(
        self, members: list[int], kept: list[tuple[RecordRef, int, bytes]], result: ReclaimResult
    ) -> None:
        """Do a step, unless it would only copy one small segment as it is."""
        if len(members) == 1 and members[0] not in self._picked and members[0] not in self._empty:
            return
        self._step(members, kept, result)

    def _step(
        self, members: list[int], kept: list[tuple[RecordRef, int, bytes]], result: ReclaimResult
    ) -> None:
        d = self.path / "segments"
        origin = self._reader.origin(members[0])
        old_bytes = sum(self._reader.size(m) for m in members)
        new: int | None = None
        refs: list[RecordRef] = []
        new_bytes = 0
        if kept:
            new = self._writer.reserve_id()
            refs = write_copy(d, new, origin, [(t, raw) for _, t, raw in kept], fs=self.fs)
            new_bytes = self.fs.getsize(str(d / f"{new:016x}.seg.tmp"))
            _crash_point("copied")
        serial = time.time_ns()
        journal = _Journal(serial, new, origin, members, old_bytes - new_bytes)
        write_atomic(self._journal_path, journal.dump(), 0o600)
        _crash_point("journaled")
        if new is not None:
            publish_copy(d, new, fs=self.fs)
            _crash_point("published")
        olds = set(members)
        with self._log_lock:
            b = self.index.batch()
            calls: dict[tuple[str, str], CallEntry] = {}
            moved = 0
            for (old, rtype, raw), ref in zip(kept, refs, strict=True):
                if _repoint(self.index, b, calls, rtype, raw, ref, olds, old):
                    moved += 1
                elif rtype == rec.AUDIO:  # let go of since it was read (an erasure)
                    b.add_dead(ref.segment, ref.length)
            self._finish_batch(b, calls, journal)
        _crash_point("indexed")
        self._remove_members(journal)
        result.bytes_freed += journal.freed
        empty = sum(1 for m in members if m in self._empty)
        result.segments_removed += empty  # nothing in it was live
        result.segments_rewritten += len(members) - empty
        result.segments_written += new is not None
        result.records_moved += moved

    def _finish_batch(
        self, b: Batch, calls: dict[tuple[str, str], CallEntry], journal: _Journal
    ) -> None:
        """Step 4's batch: entries re-pointed (``b``, ``calls``), members' counters
        deleted, the reclaimed total counted once per rewrite; written and synced."""
        for c in calls.values():
            b.put_call(c, previous=c)
        for m in journal.old:
            b.forget_segment(m)
        if _meta_u64(self.index, RECLAIM_SERIAL) != journal.serial:
            b.put_meta(RECLAIMED, _U64.pack(_meta_u64(self.index, RECLAIMED) + journal.freed))
            b.put_meta(RECLAIM_SERIAL, _U64.pack(journal.serial))
        self.index.write(b)
        self.index.sync()

    def _remove_members(self, journal: _Journal, *, retire: bool = True) -> None:
        """Step 5. ``retire``: this process's readers keep the files open until the
        next run (a read that took a reference before step 4 reads on)."""
        d = self.path / "segments"
        for m in journal.old:
            if retire:
                self._reader.retire(m)
            with contextlib.suppress(FileNotFoundError):
                self.fs.remove(segment_path(d, m))
            _crash_point("removing")
        self.fs.fsync_dir(str(d))
        os.unlink(self._journal_path)
        fsync_dir(self.path)

    # -- after a crash ----------------------------------------------------------------------
    def resolve_reclaim(self, *, index: bool) -> str | None:
        """Finish or undo the rewrite a crash interrupted (run on open, before recovery;
        ``index``: the index is open and is re-pointed too, else files only, for a
        reindex). Returns what was done, or None when there was nothing to do."""
        d = self.path / "segments"
        with contextlib.suppress(FileNotFoundError):  # a journal write a crash cut
            os.unlink(self._journal_path.with_name(JOURNAL + ".tmp"))
        raw = None
        with contextlib.suppress(FileNotFoundError):
            raw = self._journal_path.read_bytes()
        if raw is None:
            remove_unpublished(d, fs=self.fs)
            return None
        journal = _Journal.load(raw)
        if journal.new is not None and not os.path.exists(segment_path(d, journal.new)):
            remove_unpublished(d, fs=self.fs)  # never published: nothing else changed
            os.unlink(self._journal_path)
            fsync_dir(self.path)
            return f"reclaim undone (its copy {journal.new:016x} was not published)"
        remove_unpublished(d, fs=self.fs)
        if index:
            olds = set(journal.old)
            b = self.index.batch()
            calls: dict[tuple[str, str], CallEntry] = {}
            if journal.new is not None:
                reader = SegmentReader(d, fs=self.fs)
                try:
                    for ref, rtype, raw_body in reader.scan(journal.new):
                        _repoint(self.index, b, calls, rtype, raw_body, ref, olds)
                finally:
                    reader.close()
            self._finish_batch(b, calls, journal)
        self._remove_members(journal, retire=False)
        return f"reclaim of {len(journal.old)} segment(s) finished"

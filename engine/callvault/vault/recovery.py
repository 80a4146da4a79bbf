"""Indexing and recovery: the committer thread's ``_on_commit`` indexes each
group commit's records in one RocksDB WriteBatch (and appends the log leaves of
seals and erasures); opening re-indexes with the same ``_apply`` the records
recovery finds past the index's known end; ``reindex`` rebuilds the index from
the segments alone."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

from callvault.errors import FormatError
from callvault.integrity import chain as chainmod
from callvault.integrity import merkle
from callvault.integrity.leaves import (
    LEAF_ERASE,
    LEAF_SEAL,
    decision_leaf,
    leaf_data,
    lifecycle_leaf,
    tenant_erase_leaf,
    transcode_leaf,
)
from callvault.store import records as rec
from callvault.store.index import Batch, CallEntry, DecisionEntry, Index, RecordEntry
from callvault.store.segment import (
    FILE_HEADER,
    HEADER_SIZE,
    Committed,
    RecordRef,
    SegmentReader,
    StoreError,
    recover,
    segment_path,
)
from callvault.vault import lifecycle as vlife
from callvault.vault.common import Replay, VaultError, now_us
from callvault.vault.keys import crash_point
from callvault.vault.state import VaultState

_Cache = dict[tuple[str, str], CallEntry]

INDEX_NEW = "index.new"
# the erase_reason of a call erased with its tenant: this, then the tenant erasure's reason
TENANT_ERASED_REASON = "tenant erased: "  # an index being rebuilt (docs/format.md 8.4)
# the latest time the vault has recorded (docs/format.md 8.15): the vault's clock at
# each group commit, the times of the records the vault stamps, on reindex also the
# segments' creation times; disposal refuses a clock earlier than it
LATEST_US = b"meta/latest-us"
_TIMED = (rec.ERASE, rec.TENANT_ERASE, rec.LIFECYCLE, rec.DECISION, rec.TRANSCODE)


def _subjects(value: object) -> dict[str, str]:
    """An OPEN record's ``subjects`` (docs/format.md 8.16): name -> HMAC hex; anything
    else (absent: a call opened before the subject index) is none."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle_index_swap(data: Path) -> None:
    """Finish or undo an index rebuild a crash interrupted (run before opening the
    index). DATA/index.new is renamed to DATA/index only after it is complete, and
    DATA/index is moved aside only then: so index.new next to an index is an
    unfinished build (removed), and index.new without an index is a finished build
    whose swap was cut between its two renames (completed)."""
    new_dir = data / INDEX_NEW
    if not new_dir.exists():
        return
    if (data / "index").exists():
        shutil.rmtree(new_dir)
    else:
        os.rename(new_dir, data / "index")
    _fsync_dir(data)


class Indexing(VaultState):
    """The Vault's indexing of durable records, its recovery and reindex."""

    # -- recovery ------------------------------------------------------------------------
    def _known_end(self) -> tuple[int, int] | None:
        raw = self.index.get_meta(b"meta/end")
        return None if raw is None else struct.unpack(">QQ", raw)

    def _recover(self) -> tuple[int, int] | None:
        known_end = self._known_end()
        report = recover(self.path / "segments", fs=self.fs, known_end=known_end)
        self.report.truncated = report.truncated
        self.report.damage = list(report.damage)
        # leaves the log holds but the index does not know yet (crash between them)
        self._map_log_leaves(self._meta_int(b"meta/log-size"))
        if report.records:
            reader = SegmentReader(self.path / "segments", fs=self.fs)
            committed = [
                Committed(ref, rtype, reader.read(ref)[1]) for ref, rtype in report.records
            ]
            self._on_commit(committed, recovering=True)
            self._end_recovery()
            self.report.reindexed = len(committed) - len(self.report.replays)
        return known_end

    def _map_log_leaves(self, start: int) -> None:
        """Index the log's leaves from ``start`` on (leaf hash -> leaf index)."""
        if self.log.size <= start:
            return
        b = self.index.batch()
        for i in range(start, self.log.size):
            b.put_meta(b"leaf/" + self.log.leaf_hash(i), struct.pack(">Q", i))
        b.put_meta(b"meta/log-size", struct.pack(">Q", self.log.size))
        self.index.write(b)

    def _meta_int(self, key: bytes) -> int:
        raw = self.index.get_meta(key)
        return 0 if raw is None else int(struct.unpack(">Q", raw)[0])

    def latest_us(self) -> int:
        """The latest time (unix µs) the vault has recorded (``LATEST_US``); 0: none."""
        return self._meta_int(LATEST_US)

    def _note_latest(self, batch: Batch, t: int) -> None:
        # the value last read or written, per index (a reindex opens a new one): one
        # read of the index per index, not one per group commit
        seen: tuple[Index, int] | None = getattr(self, "_latest_seen", None)
        if seen is None or seen[0] is not self.index:
            seen = (self.index, self.latest_us())
        if t > seen[1]:
            batch.put_meta(LATEST_US, struct.pack(">Q", t))
            seen = (self.index, t)
        self._latest_seen = seen

    def _note_segment_times(self) -> None:
        """Reindex: the segments' creation times count as times the vault recorded."""
        latest = 0
        for seg in self._reader.segments():
            path = segment_path(self.path / "segments", seg)
            with contextlib.suppress(OSError, struct.error), open(path, "rb") as f:
                latest = max(latest, FILE_HEADER.unpack(f.read(HEADER_SIZE))[4])
        batch = self.index.batch()
        self._note_latest(batch, latest)
        self.index.write(batch)

    def reindex(self, progress: Callable[[int], object] | None = None) -> int:
        """Rebuild the index from the segments alone, on an open vault (the old index
        is replaced once the new one is complete, see ``_rebuild_index``); returns the
        number of records indexed. (A damaged index cannot be opened at all:
        ``Vault.open(DIR, rebuild_index=True)`` rebuilds it without opening it.)"""
        if self.read_only:
            raise VaultError(f"{self.path} is open read-only: reindex needs a read-write open")
        with self._lock, self._reclaim_lock:
            self._writer.flush()
            # the committer indexes under _log_lock: holding it, the index ends at
            # meta/end, and what commits meanwhile is indexed into the new index after
            with self._log_lock:
                n = self._rebuild_index(keep_old=False, until=self._known_end(), progress=progress)
                self._finish_tenant_erasures()  # the rebuilt tombstones say so again
            for (tenant, call_id), w in self._open.items():  # calls still being recorded
                e = self.index.get_call(tenant, call_id)
                if e is not None:
                    w.entry = e
            return n

    def _rebuild_index(
        self,
        *,
        keep_old: bool,
        until: tuple[int, int] | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Build a new index from the segments (the records before ``until``, all when
        None) in DATA/index.new, without reading the current one; then swap: DATA/index
        is renamed to DATA/index.backup-<UTC time> (``keep_old``: kept, as the index
        may be damaged and worth a look) or index.old-<time> (removed once the swap
        is durable), then index.new to index.
        Crash-safe: index.new is complete and synced before the first rename, and
        ``settle_index_swap`` (run on every open) finishes or discards a swap a crash
        interrupted. Leaves ``self.index`` open on the new index."""
        new_dir = self.path / INDEX_NEW
        if new_dir.exists():
            shutil.rmtree(new_dir)  # a build a crash interrupted
        if hasattr(self, "index"):
            old_index: Index | None = self.index
        else:
            old_index = None
        self.index = Index(new_dir)
        try:
            self._map_log_leaves(0)  # the log's leaves first, so seals find theirs
            n = 0
            chunk: list[Committed] = []
            # ``until`` is in a segment the writer wrote; a rewrite's segment stands
            # before it in the store's order even with a higher id (docs/format.md 8.2)
            rank = {seg: i for i, seg in enumerate(self._reader.segments())}
            stop = None if until is None else (rank.get(until[0], len(rank)), until[1])
            for ref, rtype, body in self._reader.scan():
                if stop is not None and (rank.get(ref.segment, len(rank)), ref.offset) >= stop:
                    break
                chunk.append(Committed(ref, rtype, body))
                if len(chunk) >= 1000:
                    self._on_commit(chunk, recovering=True)
                    n += len(chunk)
                    chunk = []
                    if progress is not None:
                        progress(n)
            self._on_commit(chunk, recovering=True)
            self._end_recovery()
            self._note_segment_times()
            n += len(chunk)
            if progress is not None:
                progress(n)
            self.index.sync()
        except BaseException:
            self._gaps.clear()
            self.index.close()
            if old_index is not None:
                self.index = old_index
            else:
                del self.index
            raise
        self.index.close()
        del self.index
        if old_index is not None:
            old_index.close()
        _fsync_dir(new_dir)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = f"index.{'backup' if keep_old else 'old'}-{stamp}"
        aside = self.path / base
        k = 1
        while aside.exists():
            aside = self.path / f"{base}-{k}"
            k += 1
        if (self.path / "index").exists():
            os.rename(self.path / "index", aside)
            _fsync_dir(self.path)
        os.rename(new_dir, self.path / "index")
        _fsync_dir(self.path)
        if not keep_old and aside.exists():
            shutil.rmtree(aside)
        self.index = Index(self.path / "index")
        return n

    # -- indexing (committer thread, and recovery) --------------------------------------
    def _on_commit(self, committed: list[Committed], recovering: bool = False) -> None:
        with self._log_lock:
            self._index_committed(committed, recovering)

    def _index_committed(self, committed: list[Committed], recovering: bool) -> None:
        batch = self.index.batch()
        cache: _Cache = {}
        log_grew = False
        erased: list[tuple[str, str]] = []
        # the vault's clock at this group commit (not at recovery: a past batch)
        latest = 0 if recovering else getattr(self, "clock", now_us)()
        for c in committed:
            assert c.body is not None
            if c.rtype in _TIMED:
                with contextlib.suppress(FormatError):  # _apply names it
                    latest = max(latest, rec.parse(c.rtype, c.body).time_us)
            try:
                log_grew |= self._apply(batch, cache, c.ref, c.rtype, c.body, erased, recovering)
            except Replay as e:
                if not recovering:  # the vault itself never writes one: stop acking
                    raise
                self.report.replays.append(e)  # left out of the index, reported
        for entry in cache.values():
            batch.put_call(entry, previous=self.index.get_call(entry.tenant, entry.call_id))
        if committed:
            last = committed[-1].ref
            batch.put_meta(b"meta/end", struct.pack(">QQ", last.segment, last.offset + last.length))
        if log_grew:
            self.log.sync()
            batch.put_meta(b"meta/log-size", struct.pack(">Q", self.log.size))
        self._note_latest(batch, latest)
        self.index.write(batch)
        # the erasures are durable and indexed: only now destroy the keys (a failure
        # before this point leaves every erased call readable, see Vault.erase)
        for tenant, call_id in erased:
            with contextlib.suppress(OSError):  # Vault.erase reports a key file left
                if call_id:
                    self.call_keys.destroy(tenant, call_id)
                else:  # a tenant's erasure (Vault.erase_tenant reports what is left)
                    self._finish_tenant_erasure(tenant)

    def _finish_tenant_erasure(self, tenant: str) -> None:
        """The key destruction of an erased tenant, once its tombstone is indexed
        (docs/format.md 8.6): every generation of its KEK (from then on none of its
        calls can be decrypted), the key files of its calls (version 1 keys, recorded
        before per-tenant KEKs, are not under the tenant's KEK), its directory; then
        the tombstone says ``keys_destroyed``. Idempotent: the open of the vault runs
        it again for a tombstone without ``keys_destroyed`` (a crash cut it short).
        The caller holds the log lock (or the vault is being opened)."""
        crash_point("tenant-erase-indexed")
        self.call_keys.tenants.destroy(tenant)
        crash_point("tenant-erase-kek-destroyed")
        dirs: set[Path] = set()
        for call_id in self.index.call_ids(tenant):
            p = self.call_keys.path(tenant, call_id)
            if p.exists() or self.call_keys.number_path(tenant, call_id).exists():
                self.call_keys.destroy(tenant, call_id)
                dirs.add(p.parent)
        for d in sorted(dirs):
            _fsync_dir(d)
        self.call_keys.tenants.remove(tenant)
        doc = self.index.tenant_erasure(tenant)
        if doc is not None and not doc.get("keys_destroyed"):
            doc["keys_destroyed"] = True
            b = self.index.batch()
            b.put_tenant_erasure(tenant, doc)
            self.index.write(b)

    def _finish_tenant_erasures(self) -> None:
        """On open: finish the key destruction of every erased tenant a crash cut short."""
        for tenant, doc in self.index.tenant_erasures().items():
            if not doc.get("keys_destroyed"):
                self._finish_tenant_erasure(tenant)

    def _entry(self, cache: _Cache, tenant: str, call_id: str) -> CallEntry | None:
        key = (tenant, call_id)
        if key not in cache:
            e = self.index.get_call(tenant, call_id)
            if e is None:
                return None
            cache[key] = e
        return cache[key]

    def _apply(
        self,
        batch: Batch,
        cache: _Cache,
        ref: RecordRef,
        rtype: int,
        raw: bytes,
        erased: list[tuple[str, str]],
        recovering: bool = False,
    ) -> bool:
        """Index one durable record; True if it appended a log leaf. An erasure's call
        is added to ``erased``: its key is destroyed once the batch is written.
        ``recovering`` (recovery, reindex): an audio record after a gap is held back
        (``_gaps``) instead of refused, as the records before it may have been
        reclaimed (its call erased later in the segments)."""
        b = rec.parse(rtype, raw)
        if rtype == rec.TENANT_ERASE:
            return self._apply_tenant_erase(batch, cache, ref, b, erased)
        if rtype == rec.OPEN:
            meta = b.meta or {}
            opened = CallEntry(
                tenant=b.tenant,
                call_id=b.call_id,
                start_us=b.start_us,
                direction=meta.get("direction", ""),
                agent=meta.get("agent", ""),
                skill_group=meta.get("skill_group", ""),
                tags=meta.get("tags", []),
                legs=meta.get("legs", []),
                customer_number_sealed=meta.get("customer_number_sealed", ""),
                extra=meta.get("extra", {}),
                chain_head=chainmod.genesis(b.tenant, b.call_id).hex(),
                recording_id=rid if isinstance(rid := meta.get("recording_id"), str) else None,
                decision=dec if isinstance(dec := meta.get("decision"), dict) else None,
                open_ref=(ref.segment, ref.offset, ref.length),
                subjects=_subjects(meta.get("subjects")),
            )
            if self._entry(cache, b.tenant, b.call_id) is not None:
                raise Replay(ref, f"a second open record of call {b.call_id}")
            if self._decided(batch, b.tenant, b.call_id):
                raise Replay(ref, f"an open record of call {b.call_id}, decided not recorded")
            cache[(b.tenant, b.call_id)] = opened
            return False
        if rtype == rec.DECISION:  # a call not recorded (docs/format.md 8.13)
            if self._entry(cache, b.tenant, b.call_id) is not None:
                raise Replay(ref, f"a decision record of call {b.call_id}, which is recorded")
            if self._decided(batch, b.tenant, b.call_id):
                raise Replay(ref, f"a second decision record of call {b.call_id}")
            d = DecisionEntry(
                b.tenant,
                b.call_id,
                b.time_us,
                json.loads(b.doc),
                ref=(ref.segment, ref.offset, ref.length),
            )
            d.log_index = self._log_leaf(
                batch, decision_leaf(b.tenant, b.call_id, b.doc, b.time_us)
            )
            batch.put_decision(d)
            return True
        e = self._entry(cache, b.tenant, b.call_id)
        if e is None:
            raise StoreError(
                f"{rec.NAMES[rtype]} record of unknown call {b.call_id} "
                f"at segment {ref.segment} offset {ref.offset}"
            )
        if rtype == rec.LIFECYCLE:
            return self._apply_lifecycle(batch, e, ref, b)
        if rtype in (rec.AUDIO, rec.TRANSCODE) and e.state != "open" and e.storage == "raw":
            return self._apply_compaction(batch, e, ref, b)
        if e.state != "open" and rtype != rec.ERASE:
            raise Replay(ref, f"{rec.NAMES[rtype]} record of call {b.call_id} after its seal")
        if rtype == rec.AUDIO:
            if b.chain_index > e.records and recovering and e.state == "open":
                # records before it were reclaimed (an erased call's, docs/format.md
                # 8.11): held until the call's erasure; reported if none comes
                self._gaps.setdefault((b.tenant, b.call_id), []).append(
                    (
                        ref,
                        f"audio record {b.chain_index} of call {b.call_id} where "
                        f"record {e.records} comes next",
                    )
                )
                return False
            if b.chain_index != e.records:  # each index is written once, in order
                raise Replay(
                    ref,
                    f"audio record {b.chain_index} of call {b.call_id} where "
                    f"record {e.records} comes next",
                )
            e.chain_head = chainmod.link(bytes.fromhex(e.chain_head), b.chain_index, raw).hex()
            e.records += 1
            if b.codec in rec.RAW_CODECS:
                e.storage = "raw"  # peak mode: known from the first G.711 record
            batch.put_record(
                b.tenant,
                b.call_id,
                b.chain_index,
                RecordEntry(
                    b.leg, rtype, b.frames, b.first_frame, ref.segment, ref.offset, ref.length
                ),
            )
            return False
        if rtype == rec.SEAL:
            e.state = "sealed" if e.state != "erased" else e.state
            e.seal = b.seal.hex()
            e.end_us = b.end_us
            e.manifest_ref = (ref.segment, ref.offset, ref.length)
            doc = json.loads(b.manifest)
            e.unsupported_codec = doc.get("unsupported_codec")
            ret = doc.get("retention")  # manifest version 2: the retention end at seal
            e.retention = ret if isinstance(ret, dict) else None
            if (doc.get("codec") or {}).get("name") == "g711":
                e.storage = "raw"  # peak mode: the compactor turns it into Opus later
                e.compact_next = max(e.compact_next, b.count)
            e.log_index = self._log_leaf(
                batch, leaf_data(LEAF_SEAL, b.tenant, b.call_id, b.seal, b.end_us)
            )
            return True
        if rtype == rec.ERASE:
            e.state = "erased"
            e.wrapped_key = ""
            erased.append((b.tenant, b.call_id))
            self._drop_erased_audio(batch, e)
            e.erased_us = b.time_us
            e.erase_reason = b.reason
            e.erase_log_index = self._log_leaf(
                batch,
                leaf_data(
                    LEAF_ERASE,
                    b.tenant,
                    b.call_id,
                    hashlib.sha256(b.reason.encode()).digest(),
                    b.time_us,
                ),
            )
            return True
        return False

    def _apply_lifecycle(self, batch: Batch, e: CallEntry, ref: RecordRef, b: rec.Body) -> bool:
        """A change to a sealed call (docs/format.md 8.14): checked to follow the call's
        lifecycle chain (its number and previous link), applied to the entry, its leaf
        (kind 7) appended. A record letting go of the local audio (``local`` False)
        makes the call's audio records dead, as an erasure does (its key stays)."""
        if e.state == "open":
            raise Replay(ref, f"lifecycle record of call {b.call_id} before its seal")
        try:
            doc = json.loads(b.doc)
            seq = doc.get("seq")
            if not isinstance(doc, dict) or not isinstance(seq, int):
                raise ValueError("not a lifecycle document")
        except ValueError as err:
            raise StoreError(
                f"lifecycle record of call {b.call_id} at segment {ref.segment} offset "
                f"{ref.offset}: {err}"
            ) from err
        if seq != e.lifecycle_count + 1 or doc.get("prev") != (e.lifecycle_head or e.seal):
            raise Replay(
                ref,
                f"lifecycle record {seq} of call {b.call_id} where record "
                f"{e.lifecycle_count + 1} after link {(e.lifecycle_head or e.seal)[:16]}... "
                "comes next",
            )
        link = vlife.link_of(e, b.raw, seq)
        try:
            drop = vlife.apply(e, doc)
        except (ValueError, TypeError) as err:
            raise StoreError(
                f"lifecycle record {seq} of call {b.call_id} at segment {ref.segment} "
                f"offset {ref.offset}: {err}"
            ) from err
        e.lifecycle_count = seq
        e.lifecycle_head = link
        e.lifecycle_refs.append([ref.segment, ref.offset, ref.length])
        e.lifecycle_leaves.append(
            self._log_leaf(
                batch, lifecycle_leaf(b.tenant, b.call_id, bytes.fromhex(link), b.time_us)
            )
        )
        if drop and e.state != "erased":
            self._drop_erased_audio(batch, e)  # the archive holds it (key kept)
        return True

    def _apply_tenant_erase(
        self,
        batch: Batch,
        cache: _Cache,
        ref: RecordRef,
        b: rec.Body,
        erased: list[tuple[str, str]],
    ) -> bool:
        """A tenant's erasure (docs/format.md 8.6): its leaf (kind 6) in the log, its
        tombstone in the index, every call of the tenant erased in the index (their
        audio dead, as for a call's erasure); its keys are destroyed once the batch is
        written (``erased`` gets (tenant, ""))."""
        crash_point("tenant-erase-durable")  # fsynced, not indexed (tests)
        if self.index.tenant_erasure(b.tenant) is not None or b.tenant in batch.tenants_erased:
            raise Replay(ref, f"a second erasure of tenant {b.tenant}")
        leaf = self._log_leaf(batch, tenant_erase_leaf(b.tenant, b.reason, b.time_us))
        batch.put_tenant_erasure(
            b.tenant,
            {"time_us": b.time_us, "reason": b.reason, "log_index": leaf, "keys_destroyed": False},
        )
        call_ids = set(self.index.call_ids(b.tenant))
        call_ids.update(c for t, c in cache if t == b.tenant)
        for call_id in sorted(call_ids):
            e = self._entry(cache, b.tenant, call_id)
            if e is None or e.state == "erased":
                continue  # erased before: its own tombstone and leaf stay
            e.state = "erased"
            e.wrapped_key = ""
            self._drop_erased_audio(batch, e)
            e.erased_us = b.time_us
            e.erase_reason = TENANT_ERASED_REASON + b.reason
            e.erase_log_index = leaf
        erased.append((b.tenant, ""))
        return True

    def _decided(self, batch: Batch, tenant: str, call_id: str) -> bool:
        """Whether the call has a DECISION entry (indexed, or in this batch)."""
        return (tenant, call_id) in batch.decisions_put or (
            self.index.get_decision(tenant, call_id) is not None
        )

    def _apply_compaction(self, batch: Batch, e: CallEntry, ref: RecordRef, b: rec.Body) -> bool:
        """Compaction of a sealed raw call (vault/compact.py, docs/format.md 8.10).

        An Opus AUDIO record is indexed under its chain index (past every index the
        call used; never reused) but the call stays raw: readers of a raw call take
        only its first ``records`` records. The TRANSCODE record makes the call
        compacted: the raw records (and those of an attempt a crash cut short) leave
        the index, its leaf goes into the log. A compaction record of an erased call
        is dead: ignored."""
        if e.state == "erased":
            return False
        if b.rtype == rec.AUDIO:
            floor = max(e.records, e.compact_next)
            if b.codec != rec.CODEC_OPUS or b.chain_index < floor:
                raise Replay(
                    ref,
                    f"audio record {b.chain_index} of sealed call {b.call_id} is not a "
                    f"compaction record (Opus, chain index {floor} or more)",
                )
            e.compact_next = b.chain_index + 1
            batch.put_record(
                b.tenant,
                b.call_id,
                b.chain_index,
                RecordEntry(
                    b.leg, b.rtype, b.frames, b.first_frame, ref.segment, ref.offset, ref.length
                ),
            )
            return False
        doc = json.loads(b.doc)
        raw, opus = doc["raw"], doc["opus"]
        first = int(opus["first_index"])
        if first < int(raw["count"]) or first + int(opus["count"]) > e.compact_next:
            raise Replay(ref, f"transcode record of call {b.call_id} names records it lacks")
        # the raw records, and those of a cut-short attempt, leave the index: dead
        # (their bytes counted, docs/format.md 8.11), a reclaim frees them
        places = {i: (r.segment, r.length) for i, r in self.index.records(b.tenant, b.call_id)}
        for i, r in batch.records_put.get((b.tenant, b.call_id), {}).items():
            places[i] = (r.segment, r.length)
        for i in range(first):
            batch.delete_record(b.tenant, b.call_id, i)
            if i in places:
                batch.add_dead(*places[i])
        # raw records a recovery or reindex held back because earlier ones were
        # reclaimed (a partly rewritten raw chain): dead as well, never indexed
        for held, _why in self._gaps.pop((b.tenant, b.call_id), []):
            batch.add_dead(held.segment, held.length)
        e.storage = "compacted"
        e.records = int(raw["count"])
        e.chain_head = str(raw["head"])
        e.transcode_ref = (ref.segment, ref.offset, ref.length)
        e.transcode_log_index = self._log_leaf(
            batch,
            transcode_leaf(
                b.tenant,
                b.call_id,
                bytes.fromhex(raw["head"]),
                bytes.fromhex(opus["head"]),
                b.doc,
                b.time_us,
            ),
        )
        return True

    def _drop_erased_audio(self, batch: Batch, e: CallEntry) -> None:
        """An erased call's audio records are dead (docs/format.md 8.11): the index lets
        go of them (their bytes counted as dead in their segments) and keeps the chain's
        count and head as sealed (the SEAL record has them), whether or not the records
        are still stored: a reindex after a reclaim gives the same entry."""
        refs: dict[int, tuple[int, int]] = {
            i: (r.segment, r.length) for i, r in self.index.records(e.tenant, e.call_id)
        }
        for i, r in batch.records_put.get((e.tenant, e.call_id), {}).items():
            refs[i] = (r.segment, r.length)
        for ref, _why in self._gaps.pop((e.tenant, e.call_id), []):
            batch.add_dead(ref.segment, ref.length)  # held back by a reindex: never put
        for i, (segment, length) in sorted(refs.items()):
            batch.delete_record(e.tenant, e.call_id, i)
            batch.add_dead(segment, length)
        if e.manifest_ref is not None:
            rtype, raw = self._reader.read(RecordRef(*e.manifest_ref))
            sb = rec.parse(rtype, raw)
            e.records, e.chain_head = sb.count, sb.head.hex()

    def _end_recovery(self) -> None:
        """Audio records held back by a recovery or reindex whose call was not erased
        after all: reported as before (Replay), never indexed."""
        for held in self._gaps.values():
            for ref, why in held:
                self.report.replays.append(Replay(ref, why))
        self._gaps.clear()

    def _log_leaf(self, batch: Batch, data: bytes) -> int:
        """Append a leaf once (a re-indexed seal finds its leaf already there)."""
        h = merkle.leaf_hash(data)
        raw = self.index.get_meta(b"leaf/" + h)
        if raw is not None:
            return int(struct.unpack(">Q", raw)[0])
        i = self.log.append(data)
        batch.put_meta(b"leaf/" + h, struct.pack(">Q", i))
        return i

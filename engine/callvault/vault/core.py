"""The vault: the embedded engine on one data directory (docs/format.md section 8).

    DATA/segments/   append-only segment files (callvault.store.segment)
    DATA/index/      RocksDB index (callvault.store.index), derived from the segments
    DATA/log/        the Merkle log of seals and erasures (callvault.integrity.log)
    DATA/keys/       the checkpoint signing key (Ed25519) and the calls' wrapped data
                     keys (one file per call: erasing a call deletes its file)
    key file         the key-encryption keys (callvault.store.crypto.KeyFile);
                     DATA/keys/kek unless Vault.open(key_file=...) says otherwise

Write path: a CallWriter encrypts each record with the call's data key,
chains it and hands it to the segment writer; the writer's group commit
fsyncs many calls' records at once, then ``_on_commit`` (on the committer
thread) indexes them in one RocksDB WriteBatch (and, for seals and erasures,
appends the log leaf and syncs the log), and only then are the futures
resolved: an acknowledgement means durable bytes, an index entry and, for a
seal, a log leaf. The same ``_apply`` that indexes live records re-indexes
the records recovery finds past the index's known end, so a crash anywhere
between fsync and index write loses nothing.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.durable import write_atomic
from callvault.errors import CallvaultError, InputError
from callvault.integrity import chain as chainmod
from callvault.integrity import checkpoint, merkle
from callvault.integrity.leaves import LEAF_ERASE, LEAF_SEAL, leaf_data
from callvault.integrity.log import MerkleLog
from callvault.store import crypto
from callvault.store import records as rec
from callvault.store.fs import REAL_FS, FileSystem
from callvault.store.index import CallEntry, Index, RecordEntry
from callvault.store.segment import (
    Committed,
    RecordRef,
    SegmentReader,
    SegmentWriter,
    StoreError,
    recover,
)

FRAMES_PER_RECORD = 50  # about one second of one leg per record (DESIGN.md "record")
SUMMARY_AAD = b"/summary"  # binds a sealed summary to its role (not a customer number)
PRE_SKIP = 312  # Opus encoder lookahead at 48 kHz (Encoder.lookahead), the Ogg pre-skip


class VaultError(CallvaultError):
    """A vault operation cannot be done; the message says why."""


class CallNotFound(VaultError):
    pass


class Replay(VaultError):
    """A record found in the segments that the vault never wrote where it stands
    (a second open or seal, an audio record out of chain order or after the seal):
    recovery leaves it out of the index and reports it; verify_all names it."""

    def __init__(self, ref: RecordRef, reason: str) -> None:
        super().__init__(f"segment {ref.segment} offset {ref.offset}: {reason}")
        self.ref = ref


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Ack:
    """A durable record: where its frames are and the call's chain head after it."""

    leg: int
    first_frame: int
    frames: int
    chain_index: int
    chain_head: bytes
    ref: RecordRef


@dataclass
class Problem:
    """Something verify found: which call (or segment), which record, and why."""

    what: str
    record: int | None
    reason: str

    def __str__(self) -> str:
        at = f" record {self.record}" if self.record is not None else ""
        return f"{self.what}{at}: {self.reason}"


@dataclass
class OpenReport:
    """What opening the vault found: a torn tail it truncated, damage it left in
    place (the calls it touches fail verify), records it re-indexed, and records it
    refused to index (Replay)."""

    truncated: Any = None
    damage: list[Any] = field(default_factory=list)
    reindexed: int = 0
    replays: list[Replay] = field(default_factory=list)


class CallWriter:
    """Records of one call, in order. Thread-safe; ``seal`` ends the call."""

    def __init__(
        self, vault: Vault, entry: CallEntry, key: crypto.DataKey, chain: chainmod.Chain
    ) -> None:
        self._vault = vault
        self.entry = entry
        self._key = key
        self._chain = chain
        self._lock = threading.Lock()
        self._pending: list[Future[Ack]] = []
        self.frames = [0] * len(entry.legs)  # frames appended per leg
        self.sealed = False

    @property
    def chain_head(self) -> bytes:
        return self._chain.head

    def append(
        self, leg: int, first_frame: int, lengths: npt.NDArray[np.int32], packets: bytes
    ) -> Future[Ack]:
        """Store one leg's Opus packets for frames first_frame.. (one record)."""
        if not 0 <= leg < len(self.entry.legs):
            raise InputError(f"leg {leg} does not exist (call has {len(self.entry.legs)})")
        with self._lock:
            if self.sealed:
                raise VaultError(f"call {self.entry.call_id} is sealed")
            index = self._chain.count
            body = rec.audio_body(
                self.entry.tenant,
                self.entry.call_id,
                self._key,
                leg=leg,
                chain_index=index,
                first_frame=first_frame,
                lengths=lengths,
                packets=packets,
            )
            head = self._chain.append(body)
            self.frames[leg] = max(self.frames[leg], first_frame + len(lengths))
            inner = self._vault._writer.append(rec.AUDIO, body)
            out: Future[Ack] = Future()

            def done(f: Future[RecordRef], n: int = len(lengths)) -> None:
                if f.exception() is not None:
                    out.set_exception(f.exception())
                else:
                    out.set_result(Ack(leg, first_frame, n, index, head, f.result()))

            inner.add_done_callback(done)
            self._pending.append(out)
            return out

    def append_leg(
        self, leg: int, lengths: npt.NDArray[np.int32], packets: bytes, first_frame: int = 0
    ) -> list[Future[Ack]]:
        """A whole leg's packets, cut into records of FRAMES_PER_RECORD frames."""
        offs = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offs[1:])
        futures = []
        for lo in range(0, len(lengths), FRAMES_PER_RECORD):
            hi = min(lo + FRAMES_PER_RECORD, len(lengths))
            futures.append(
                self.append(leg, first_frame + lo, lengths[lo:hi], packets[offs[lo] : offs[hi]])
            )
        return futures

    def seal(
        self,
        *,
        end_us: int | None = None,
        summary: dict[str, Any] | None = None,
        frames: int | None = None,
    ) -> bytes:
        """Wait until every record is durable, then seal: returns the seal hash once
        the seal record is durable and its leaf is in the Merkle log."""
        with self._lock:
            if self.sealed:
                raise VaultError(f"call {self.entry.call_id} is already sealed")
            self.sealed = True
            pending = list(self._pending)
        for f in pending:
            f.result()  # raises if a record did not become durable
        e = self.entry
        # The summary (gaps, levels, DTMF digits: possibly card numbers) is call
        # content: sealed with the call's key, unreadable once the call is erased.
        sealed_summary = crypto.seal_blob(
            self._key,
            plaintext=json.dumps(summary or {}, sort_keys=True).encode(),
            aad=rec.call_aad(e.tenant, e.call_id) + SUMMARY_AAD,
        ).hex()
        manifest = self._vault._manifest(
            e,
            sealed_summary,
            frames if frames is not None else max(self.frames, default=0),
            end_us or _now_us(),
            self._chain.count,
        )
        seal = self._chain.seal(manifest)
        body = rec.seal_body(
            e.tenant,
            e.call_id,
            count=self._chain.count,
            head=self._chain.head,
            seal=seal,
            end_us=end_us or _now_us(),
            manifest=manifest,
        )
        self._vault._writer.append(rec.SEAL, body).result()
        self._vault._forget(e)
        return seal


class Vault:
    """The embedded engine on one data directory. Use ``Vault.open(path)``."""

    def __init__(
        self,
        path: Path,
        key_file: Path,
        *,
        segment_bytes: int,
        origin: str,
        fs: FileSystem = REAL_FS,
    ) -> None:
        self.path = path
        self.origin = origin
        for sub in ("segments", "keys/calls", "log"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        # one process per data directory: the segment writer has no lock of its own
        self._lock_fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise VaultError(
                f"{path} is open in another process (callvault serve or "
                "another command); stop it first"
            ) from None
        self.fs = fs
        try:
            self.keys = crypto.KeyFile.open(key_file)
            self.index = Index(path / "index")
            self.log = MerkleLog.open(path / "log")
            self._lock = threading.RLock()
            # the Merkle log is appended on the committer thread and read by proofs
            # and checkpoints on others: one lock around both
            self._log_lock = threading.RLock()
            self._open: dict[tuple[str, str], CallWriter] = {}
            self.report = OpenReport()
            known_end = self._recover()
            self._reader = SegmentReader(path / "segments", fs=fs)
            self._writer = SegmentWriter(
                path / "segments",
                fs=fs,
                segment_bytes=segment_bytes,
                on_commit=self._on_commit,
                known_end=known_end,
            )
            self.signer = checkpoint.Signer.open(path / "keys", origin)
            self.checkpoints = checkpoint.CheckpointLog.open(path / "log", self.log, self.signer)
        except BaseException:
            self._release()  # a failed open leaves the directory free for the next one
            raise

    def _release(self) -> None:
        """Close what is open (all of it, or what a failed open got to) and unlock."""
        for part in ("_writer", "log", "index"):
            if hasattr(self, part):
                getattr(self, part).close()
        os.close(self._lock_fd)  # releases the flock

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key_file: str | os.PathLike[str] | None = None,
        segment_bytes: int = 64 << 20,
        origin: str = "callvault",
        fs: FileSystem = REAL_FS,
    ) -> Vault:
        """Open (creating on first use) the vault in ``path``; recovery runs first.
        ``fs`` is the segment store's file layer (tests pass a fault-injecting one)."""
        p = Path(path)
        return cls(
            p,
            Path(key_file) if key_file else p / "keys" / "kek",
            segment_bytes=segment_bytes,
            origin=origin,
            fs=fs,
        )

    def close(self) -> None:
        self._release()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    # -- indexing (committer thread, and recovery) --------------------------------------
    def _on_commit(self, committed: list[Committed], recovering: bool = False) -> None:
        with self._log_lock:
            self._index_committed(committed, recovering)

    def _index_committed(self, committed: list[Committed], recovering: bool) -> None:
        batch = self.index.batch()
        cache: dict[tuple[str, str], CallEntry] = {}
        log_grew = False
        for c in committed:
            assert c.body is not None
            try:
                log_grew |= self._apply(batch, cache, c.ref, c.rtype, c.body)
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
        self.index.write(batch)

    def _entry(
        self, cache: dict[tuple[str, str], CallEntry], tenant: str, call_id: str
    ) -> CallEntry | None:
        key = (tenant, call_id)
        if key not in cache:
            e = self.index.get_call(tenant, call_id)
            if e is None:
                return None
            cache[key] = e
        return cache[key]

    def _apply(
        self,
        batch: Any,
        cache: dict[tuple[str, str], CallEntry],
        ref: RecordRef,
        rtype: int,
        raw: bytes,
    ) -> bool:
        """Index one durable record; True if it appended a log leaf."""
        b = rec.parse(rtype, raw)
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
            )
            if self._entry(cache, b.tenant, b.call_id) is not None:
                raise Replay(ref, f"a second open record of call {b.call_id}")
            cache[(b.tenant, b.call_id)] = opened
            return False
        e = self._entry(cache, b.tenant, b.call_id)
        if e is None:
            raise StoreError(
                f"{rec.NAMES[rtype]} record of unknown call {b.call_id} "
                f"at segment {ref.segment} offset {ref.offset}"
            )
        if e.state != "open" and rtype != rec.ERASE:
            raise Replay(ref, f"{rec.NAMES[rtype]} record of call {b.call_id} after its seal")
        if rtype == rec.AUDIO:
            if b.chain_index != e.records:  # each index is written once, in order
                raise Replay(
                    ref,
                    f"audio record {b.chain_index} of call {b.call_id} where "
                    f"record {e.records} comes next",
                )
            e.chain_head = chainmod.link(bytes.fromhex(e.chain_head), b.chain_index, raw).hex()
            e.records += 1
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
            e.extra = {**e.extra, "manifest_ref": [ref.segment, ref.offset, ref.length]}
            e.log_index = self._log_leaf(
                batch, leaf_data(LEAF_SEAL, b.tenant, b.call_id, b.seal, b.end_us)
            )
            return True
        if rtype == rec.ERASE:
            e.state = "erased"
            e.wrapped_key = ""
            self._key_path(b.tenant, b.call_id).unlink(missing_ok=True)
            e.extra = {
                **e.extra,
                "erased_us": b.time_us,
                "erase_reason": b.reason,
                "erase_log_index": self._log_leaf(
                    batch,
                    leaf_data(
                        LEAF_ERASE,
                        b.tenant,
                        b.call_id,
                        hashlib.sha256(b.reason.encode()).digest(),
                        b.time_us,
                    ),
                ),
            }
            return True
        return False

    def _log_leaf(self, batch: Any, data: bytes) -> int:
        """Append a leaf once (a re-indexed seal finds its leaf already there)."""
        h = merkle.leaf_hash(data)
        raw = self.index.get_meta(b"leaf/" + h)
        if raw is not None:
            return int(struct.unpack(">Q", raw)[0])
        i = self.log.append(data)
        batch.put_meta(b"leaf/" + h, struct.pack(">Q", i))
        return i

    # -- calls ---------------------------------------------------------------------------
    def _key_path(self, tenant: str, call_id: str) -> Path:
        h = hashlib.sha256(rec.call_aad(tenant, call_id)).hexdigest()
        return self.path / "keys" / "calls" / h[:2] / f"{h}.key"

    def _data_key(self, tenant: str, call_id: str) -> crypto.DataKey:
        p = self._key_path(tenant, call_id)
        try:
            return crypto.DataKey(self.keys.unwrap(p.read_bytes()))
        except FileNotFoundError:
            raise VaultError(
                f"call {call_id}: its key was destroyed (erased); the audio cannot be read"
            ) from None

    def open_call(
        self,
        call_id: str,
        *,
        tenant: str = "default",
        start_us: int | None = None,
        direction: str = "",
        agent: str = "",
        skill_group: str = "",
        customer_number: str = "",
        tags: Sequence[str] = (),
        legs: Sequence[str] = ("agent", "customer"),
        extra: dict[str, Any] | None = None,
    ) -> CallWriter:
        """Start recording a call; its OPEN record is durable when this returns."""
        with self._lock:
            if self.index.get_call(tenant, call_id) is not None or (tenant, call_id) in self._open:
                raise InputError(f"call {call_id} already exists in tenant {tenant}")
            key = crypto.new_data_key()
            kp = self._key_path(tenant, call_id)
            kp.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(kp, self.keys.wrap(key))
            sealed_number = ""
            if customer_number:
                sealed_number = crypto.seal_blob(
                    key, plaintext=customer_number.encode(), aad=rec.call_aad(tenant, call_id)
                ).hex()
            meta = {
                "direction": direction,
                "agent": agent,
                "skill_group": skill_group,
                "tags": list(tags),
                "legs": list(legs),
                "customer_number_sealed": sealed_number,
                "extra": extra or {},
            }
            start = start_us if start_us is not None else _now_us()
            body = rec.open_body(tenant, call_id, start, meta)
            entry = CallEntry(
                tenant=tenant,
                call_id=call_id,
                start_us=start,
                direction=direction,
                agent=agent,
                skill_group=skill_group,
                tags=list(tags),
                legs=list(legs),
                customer_number_sealed=sealed_number,
                extra=extra or {},
            )
            w = CallWriter(self, entry, key, chainmod.Chain(tenant, call_id))
            self._open[(tenant, call_id)] = w
        self._writer.append(rec.OPEN, body).result()
        return w

    def resume_call(self, call_id: str, *, tenant: str = "default") -> CallWriter:
        """Writer of a call left open by an earlier process (a crash or a restart):
        the chain continues from the durable records the index holds."""
        with self._lock:
            if (tenant, call_id) in self._open:
                raise VaultError(f"call {call_id} is already being written in this process")
            e = self.get_call(call_id, tenant=tenant)
            if e.state != "open":
                raise VaultError(f"call {call_id} is {e.state}: it cannot be resumed")
            w = CallWriter(
                self,
                e,
                self._data_key(tenant, call_id),
                chainmod.Chain(tenant, call_id, bytes.fromhex(e.chain_head), e.records),
            )
            w.frames = self.durable_frames(call_id, tenant=tenant)
            self._open[(tenant, call_id)] = w
            return w

    def durable_frames(self, call_id: str, *, tenant: str = "default") -> list[int]:
        """Per leg, how many frames from 0 the call's durable records cover."""
        e = self.get_call(call_id, tenant=tenant)
        out = [0] * len(e.legs)
        for _, r in self.index.records(tenant, call_id):
            if r.leg < len(out):
                out[r.leg] = max(out[r.leg], r.first_frame + r.frames)
        return out

    def iter_frames(
        self,
        call_id: str,
        *,
        tenant: str = "default",
        from_frame: int = 0,
        to_frame: int,
        chunk: int = 50,
    ) -> Iterator[tuple[int, list[tuple[bytes, npt.NDArray[np.int32]]]]]:
        """The Opus packets of frames [from_frame, to_frame), every leg, in chunks of
        ``chunk`` frames: (first frame, [(data, lengths) per leg]). One pass over the
        call's records; only those in range are read and decrypted."""
        e = self.get_call(call_id, tenant=tenant)
        key = self._data_key(tenant, call_id)
        nlegs = len(e.legs)
        # per leg, the records read but not yet emitted, whole (no Python object per
        # packet): [packets, lengths, byte offsets, next packet] each
        pending: list[collections.deque[list[Any]]] = [collections.deque() for _ in range(nlegs)]
        have = [from_frame] * nlegs  # the frame after the last one read, per leg
        pos = from_frame

        def take(g: int, n: int) -> tuple[bytes, npt.NDArray[np.int32]]:
            datas: list[bytes] = []
            lens: list[npt.NDArray[np.int32]] = []
            while n:
                seg = pending[g][0]
                packets, lengths, offs, cur = seg
                k = min(n, len(lengths) - cur)
                datas.append(packets[offs[cur] : offs[cur + k]])
                lens.append(lengths[cur : cur + k])
                seg[3] = cur + k
                n -= k
                if seg[3] == len(lengths):
                    pending[g].popleft()
            if len(datas) == 1:
                return datas[0], lens[0]
            return b"".join(datas), np.concatenate(lens)

        for _, r in self.index.records(tenant, call_id):
            g = r.leg
            if r.first_frame + r.frames <= have[g] or r.first_frame >= to_frame:
                continue
            _, raw = self._reader.read(RecordRef(r.segment, r.offset, r.length))
            lengths, packets = rec.parse(rec.AUDIO, raw).open_audio(key)
            lo = max(have[g] - r.first_frame, 0)
            hi = min(len(lengths), to_frame - r.first_frame)
            offs = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offs[1:])
            pending[g].append(
                [packets, lengths[:hi].astype(np.int32, copy=False), offs[: hi + 1], lo]
            )
            have[g] = r.first_frame + hi
            while pos < to_frame and min(have) >= min(pos + chunk, to_frame):
                n = min(chunk, to_frame - pos)
                yield pos, [take(x, n) for x in range(nlegs)]
                pos += n
        if pos < min(have):  # the end of what is stored
            n = min(have) - pos
            yield pos, [take(x, n) for x in range(nlegs)]

    def _forget(self, e: CallEntry) -> None:
        with self._lock:
            self._open.pop((e.tenant, e.call_id), None)

    def _manifest(
        self, e: CallEntry, sealed_summary: str, frames: int, end_us: int, count: int
    ) -> bytes:
        doc = {
            "version": 1,
            "tenant": e.tenant,
            "call_id": e.call_id,
            "start_us": e.start_us,
            "end_us": end_us,
            "direction": e.direction,
            "agent": e.agent,
            "skill_group": e.skill_group,
            "tags": e.tags,
            "legs": e.legs,
            "customer_number_sealed": e.customer_number_sealed,
            "frames": frames,
            "records": count,
            "codec": {"name": "opus", "sample_rate": 8000, "frame_ms": 20, "pre_skip": PRE_SKIP},
            "summary_sealed": sealed_summary,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def import_call(
        self,
        call_id: str,
        inputs: Sequence[str],
        *,
        tenant: str = "default",
        legs: Sequence[str] | None = None,
        settings: Any = None,
        **meta: Any,
    ) -> tuple[CallEntry, bytes]:
        """Transcode captures or WAV legs (as `callvault transcode`) and store the call;
        returns when it is durable and sealed: (entry, seal hash)."""
        from callvault.media import pipeline

        leg_inputs = pipeline.parse_inputs(inputs, legs)
        call = pipeline.run_call(leg_inputs, settings or pipeline.Settings())
        if call.start_us is not None:  # a capture knows when the call happened
            meta.setdefault("start_us", call.start_us)
        w = self.open_call(call_id, tenant=tenant, legs=[r.name for r in call.legs], **meta)
        for i, r in enumerate(call.legs):
            data, lengths = r.packets_all()
            w.append_leg(i, lengths, data)
        seal = w.seal(
            summary={"legs": [r.summary() for r in call.legs]},
            frames=call.frames,
            end_us=w.entry.start_us + call.frames * 20_000,
        )
        entry = self.index.get_call(tenant, call_id)
        assert entry is not None
        return entry, seal

    # -- reading -------------------------------------------------------------------------
    def get_call(self, call_id: str, *, tenant: str = "default") -> CallEntry:
        e = self.index.get_call(tenant, call_id)
        if e is None:
            raise CallNotFound(f"no call {call_id} in tenant {tenant}")
        return e

    def list_calls(
        self,
        *,
        tenant: str = "default",
        since_us: int = 0,
        until_us: int = 2**63 - 1,
        agent: str | None = None,
        skill_group: str | None = None,
        tag: str | None = None,
        direction: str | None = None,
        min_duration_us: int = 0,
        max_duration_us: int | None = None,
        limit: int = 0,
    ) -> list[CallEntry]:
        """Calls started in [since_us, until_us) matching every filter given, in start
        order. Duration bounds apply to ended calls; an open call (no end yet) only
        matches when neither bound is given."""
        out: list[CallEntry] = []
        for e in self.index.search(
            tenant,
            since_us=since_us,
            until_us=until_us,
            agent=agent,
            skill_group=skill_group,
            tag=tag,
        ):
            if direction is not None and e.direction != direction:
                continue
            if min_duration_us or max_duration_us is not None:
                if not e.end_us:
                    continue
                d = e.end_us - e.start_us
                if d < min_duration_us or (max_duration_us is not None and d > max_duration_us):
                    continue
            out.append(e)
            if limit and len(out) >= limit:
                break
        return out

    def manifest(self, call_id: str, *, tenant: str = "default") -> dict[str, Any]:
        e = self.get_call(call_id, tenant=tenant)
        if "manifest_ref" not in e.extra:
            raise VaultError(f"call {call_id} is not sealed yet")
        rtype, raw = self._reader.read(RecordRef(*e.extra["manifest_ref"]))
        doc: dict[str, Any] = json.loads(rec.parse(rtype, raw).manifest)
        return doc

    def summary(self, call_id: str, *, tenant: str = "default") -> dict[str, Any]:
        """The sealed per-leg summary of a call (gaps, DTMF, levels, RTP counters)."""
        m = self.manifest(call_id, tenant=tenant)
        plain = crypto.open_blob(
            self._data_key(tenant, call_id),
            blob=bytes.fromhex(m["summary_sealed"]),
            aad=rec.call_aad(tenant, call_id) + SUMMARY_AAD,
        )
        doc: dict[str, Any] = json.loads(plain)
        return doc

    def customer_number(self, call_id: str, *, tenant: str = "default") -> str:
        e = self.get_call(call_id, tenant=tenant)
        if not e.customer_number_sealed:
            return ""
        return crypto.open_blob(
            self._data_key(tenant, call_id),
            blob=bytes.fromhex(e.customer_number_sealed),
            aad=rec.call_aad(tenant, call_id),
        ).decode()

    def stored_records(
        self, call_id: str, *, tenant: str = "default"
    ) -> Iterator[tuple[int, RecordEntry, bytes]]:
        """(chain index, index entry, stored body) of a call's audio records."""
        for i, entry in self.index.records(tenant, call_id):
            rtype, raw = self._reader.read(RecordRef(entry.segment, entry.offset, entry.length))
            yield i, entry, raw

    def read_packets(
        self,
        call_id: str,
        *,
        tenant: str = "default",
        from_frame: int = 0,
        to_frame: int | None = None,
    ) -> list[tuple[bytes, npt.NDArray[np.int32]]]:
        """Per leg, the Opus packets of frames [from_frame, to_frame) (data, lengths)."""
        e = self.get_call(call_id, tenant=tenant)
        key = self._data_key(tenant, call_id)
        total = to_frame
        if total is None:
            total = self.manifest(call_id, tenant=tenant)["frames"] + 1  # + the flush packet
        per_leg: list[dict[int, tuple[npt.NDArray[np.int32], bytes]]] = [{} for _ in e.legs]
        for _, entry, raw in self.stored_records(call_id, tenant=tenant):
            if entry.first_frame + entry.frames <= from_frame or entry.first_frame >= total:
                continue
            b = rec.parse(rec.AUDIO, raw)
            per_leg[b.leg][b.first_frame] = b.open_audio(key)
        out = []
        for leg in per_leg:
            datas: list[bytes] = []
            lens: list[npt.NDArray[np.int32]] = []
            for first in sorted(leg):
                lengths, packets = leg[first]
                offs = np.zeros(len(lengths) + 1, dtype=np.int64)
                np.cumsum(lengths, out=offs[1:])
                lo = max(from_frame - first, 0)
                hi = min(total - first, len(lengths))
                datas.append(packets[offs[lo] : offs[hi]])
                lens.append(lengths[lo:hi])
            out.append(
                (b"".join(datas), np.concatenate(lens) if lens else np.zeros(0, dtype=np.int32))
            )
        return out

    def export(
        self,
        call_id: str,
        out: str | os.PathLike[str],
        *,
        tenant: str = "default",
        from_s: float = 0.0,
        to_s: float | None = None,
    ) -> int:
        """Write the call (or a time range) as dual-track Ogg Opus (no re-encoding) or WAV."""
        from callvault import _opus
        from callvault.media import ogg, wav

        m = self.manifest(call_id, tenant=tenant)
        frames = int(m["frames"])
        lo = max(0, int(from_s * 50))
        hi = frames if to_s is None else min(frames, int(np.ceil(to_s * 50)))
        if hi <= lo:
            raise InputError(
                f"--from {from_s} / --to {to_s}: empty range of a {frames / 50:.2f} s call"
            )
        legs = self.read_packets(call_id, tenant=tenant, from_frame=lo, to_frame=hi + 1)
        suffix = Path(out).suffix.lower()
        if suffix == ".wav":
            pcm = []
            for data, lengths in legs:
                dec = _opus.Decoder(sample_rate=8000).decode_frames(data, lengths)
                pcm.append(dec.reshape(-1)[PRE_SKIP // 6 : PRE_SKIP // 6 + (hi - lo) * 160])
            return wav.write(Path(out), pcm)
        if suffix not in (".ogg", ".opus"):
            raise InputError(f"output {out}: name it .ogg or .wav")
        if len(legs) == 2:
            data, lengths = _opus.pack_multistream(legs[0][0], legs[0][1], legs[1][0], legs[1][1])
        else:
            data, lengths = legs[0]
        w = ogg.OggOpusWriter(
            out,
            channels=len(legs),
            pre_skip=PRE_SKIP,
            comments={f"CALLVAULT_CHANNEL_{i}": name for i, name in enumerate(m["legs"])},
        )
        w.write_packets(data, lengths)
        w.close(duration_48k=(hi - lo) * 960)
        return Path(out).stat().st_size

    # -- integrity -----------------------------------------------------------------------
    def verify_call(self, call_id: str, *, tenant: str = "default") -> list[Problem]:
        """Every check a call's records allow; [] when it all verifies."""
        problems: list[Problem] = []
        what = f"call {call_id}"
        try:
            e = self.get_call(call_id, tenant=tenant)
        except CallNotFound as ex:
            return [Problem(what, None, str(ex))]
        bodies: list[bytes] = []
        expected = 0
        for i, _entry, raw in self._safe_records(tenant, call_id, problems, what):
            if i != expected:
                problems.append(Problem(what, expected, f"missing from the index (next is {i})"))
            expected = i + 1
            bodies.append(raw)
            try:
                b = rec.parse(rec.AUDIO, raw)
                if (b.tenant, b.call_id, b.chain_index) != (tenant, call_id, i):
                    problems.append(Problem(what, i, "record belongs elsewhere (spliced)"))
            except CallvaultError as ex:
                problems.append(Problem(what, i, str(ex)))
        if problems:
            return problems
        try:
            manifest = None
            seal = None
            if e.seal:
                m_type, m_raw = self._reader.read(RecordRef(*e.extra["manifest_ref"]))
                mb = rec.parse(m_type, m_raw)
                manifest, seal = mb.manifest, bytes.fromhex(e.seal)
                if mb.count != len(bodies):
                    problems.append(
                        Problem(
                            what,
                            len(bodies),
                            f"{len(bodies)} records found, the seal says {mb.count}",
                        )
                    )
            chainmod.verify(
                tenant,
                call_id,
                bodies,
                expect_head=bytes.fromhex(e.chain_head),
                expect_count=e.records,
                manifest=manifest,
                expect_seal=seal,
            )
        except chainmod.ChainError as ex:
            problems.append(Problem(what, ex.index, str(ex)))
        except CallvaultError as ex:
            problems.append(Problem(what, None, str(ex)))
        if e.state != "erased" and not problems:
            try:
                key = self._data_key(tenant, call_id)
                for body in bodies:
                    rec.parse(rec.AUDIO, body).open_audio(key)
            except CallvaultError as ex:
                problems.append(Problem(what, None, f"audio does not authenticate: {ex}"))
        if e.seal and e.log_index >= 0 and not problems:
            m_type, m_raw = self._reader.read(RecordRef(*e.extra["manifest_ref"]))
            mb = rec.parse(m_type, m_raw)
            leaf = merkle.leaf_hash(leaf_data(LEAF_SEAL, tenant, call_id, mb.seal, mb.end_us))
            if e.log_index >= self.log.size or self.log.leaf_hash(e.log_index) != leaf:
                problems.append(Problem(what, None, "the seal is not in the Merkle log"))
        return problems

    def _safe_records(
        self, tenant: str, call_id: str, problems: list[Problem], what: str
    ) -> Iterator[tuple[int, RecordEntry, bytes]]:
        for i, entry in self.index.records(tenant, call_id):
            try:
                _, raw = self._reader.read(RecordRef(entry.segment, entry.offset, entry.length))
            except CallvaultError as ex:
                problems.append(Problem(what, i, str(ex)))
                continue
            yield i, entry, raw

    def verify_all(self) -> list[Problem]:
        """What opening found, every segment (headers, record CRCs, framing: read
        afresh), then every call's chain, seal, audio and log leaf."""
        return [p for _, found in self.verify_parts() for p in found]

    def verify_parts(self) -> Iterator[tuple[str, list[Problem]]]:
        """verify_all part by part, as it goes: ("segments", problems) first, then
        ("call ID", problems) for every call of every tenant."""
        problems: list[Problem] = []
        problems += [
            Problem(
                "segments", None, f"damage at segment {d.segment} offset {d.offset}: {d.reason}"
            )
            for d in self.report.damage
        ]
        problems += [Problem("segments", None, str(r)) for r in self.report.replays]
        self._writer.flush()
        reader = SegmentReader(self.path / "segments", fs=self.fs)  # no cached headers
        try:
            for _ in reader.scan():
                pass
        except CallvaultError as ex:
            problems.append(Problem("segments", None, str(ex)))
        finally:
            reader.close()
        yield "segments", problems
        for tenant in self.index.tenants():
            for e in self.list_calls(tenant=tenant):
                yield f"call {e.call_id}", self.verify_call(e.call_id, tenant=tenant)

    def erase(self, call_id: str, *, reason: str, tenant: str = "default") -> None:
        """Crypto-shred a sealed call: its key is destroyed, a tombstone and a log leaf stay."""
        e = self.get_call(call_id, tenant=tenant)
        if e.state == "erased":
            raise VaultError(f"call {call_id} is already erased")
        if e.state != "sealed" or (tenant, call_id) in self._open:
            raise VaultError(f"call {call_id} is still being recorded: seal it, then erase it")
        if not reason.strip():
            raise InputError("erasure needs a reason")
        body = rec.erase_body(tenant, call_id, time_us=_now_us(), reason=reason)
        self._writer.append(rec.ERASE, body).result()

    def reindex(self, progress: Any = None) -> int:
        """Rebuild the index from the segments alone (the old one is moved aside);
        returns the number of records indexed."""
        import shutil

        with self._lock:
            self._writer.flush()
            self.index.close()
            old = self.path / f"index.old-{_now_us()}"
            os.replace(self.path / "index", old)
            self.index = Index(self.path / "index")
            self._map_log_leaves(0)  # the log's leaves first, so seals find theirs
            n = 0
            chunk: list[Committed] = []
            for ref, rtype, body in self._reader.scan():
                chunk.append(Committed(ref, rtype, body))
                if len(chunk) >= 1000:
                    self._on_commit(chunk)
                    n += len(chunk)
                    chunk = []
                    if progress is not None:
                        progress(n)
            self._on_commit(chunk)
            n += len(chunk)
            for (tenant, call_id), w in self._open.items():  # calls still being recorded
                e = self.index.get_call(tenant, call_id)
                if e is not None:
                    w.entry = e
            shutil.rmtree(old)
            return n

    def rotate_key(self) -> tuple[int, int]:
        """A new key-encryption key; every call's data key re-wrapped under it (no audio
        is rewritten); the old KEKs retired. Returns (new KEK id, keys re-wrapped)."""
        with self._lock:
            old = [v.id for v in self.keys.versions()]
            new = self.keys.rotate()
            n = 0
            for p in sorted((self.path / "keys" / "calls").glob("*/*.key")):
                write_atomic(p, self.keys.rewrap(p.read_bytes(), new))
                n += 1
            for kek in old:
                if kek != new and any(
                    v.id == kek and v.state.name != "RETIRED" for v in self.keys.versions()
                ):
                    self.keys.retire(kek)
            return new, n

    def checkpoint(self) -> str:
        """A signed checkpoint of the log as it is now (C2SP signed note), consistent
        with every checkpoint signed before it (CheckpointLog refuses otherwise)."""
        with self._lock, self._log_lock:
            return self.checkpoints.sign().decode()

    def inclusion_proof(
        self, leaf_index: int, tree_size: int = 0
    ) -> tuple[int, bytes, list[bytes], bytes]:
        """(tree size, leaf hash, RFC 9162 inclusion path, root) of a log leaf;
        tree_size 0 = the log as it is now."""
        with self._log_lock:
            size = tree_size or self.log.size
            if not 0 <= leaf_index < size <= self.log.size:
                raise InputError(
                    f"leaf {leaf_index} is not in a log of size {size} "
                    f"(the log has {self.log.size} leaves)"
                )
            return (
                size,
                self.log.leaf_hash(leaf_index),
                self.log.inclusion_proof(leaf_index, size),
                self.log.root(size),
            )

    def consistency_proof(
        self, old_size: int, new_size: int = 0
    ) -> tuple[int, list[bytes], bytes, bytes]:
        """(new size, RFC 9162 consistency path, old root, new root)."""
        with self._log_lock:
            new = new_size or self.log.size
            if not 0 < old_size <= new <= self.log.size:
                raise InputError(
                    f"consistency from size {old_size} to {new}: need "
                    f"0 < old <= new <= {self.log.size} (the log's size)"
                )
            return (
                new,
                self.log.consistency_proof(old_size, new),
                self.log.root(old_size),
                self.log.root(new),
            )

    def log_size(self) -> int:
        with self._log_lock:
            return self.log.size

    def stats(self) -> dict[str, int]:
        """Calls in the index, segment bytes, free disk and log size."""
        calls = sum(1 for t in self.index.tenants() for _ in self.index.search(t))
        stored = sum(p.stat().st_size for p in (self.path / "segments").glob("*") if p.is_file())
        st = os.statvfs(self.path)
        return {
            "calls": calls,
            "stored_bytes": stored,
            "free_disk_bytes": st.f_bavail * st.f_frsize,
            "log_size": self.log_size(),
        }

"""The vault: the embedded engine on one data directory (the directory's layout is
docs/format.md 8.1; the modules of this package split the Vault by its parts).

Write path: a CallWriter encrypts each record with the call's data key,
chains it and hands it to the segment writer; the writer's group commit
fsyncs many calls' records at once, then ``_on_commit`` (recovery.py, on the
committer thread) indexes them in one RocksDB WriteBatch (and, for seals and erasures,
appends the log leaf and syncs the log), and only then are the futures
resolved: an acknowledgement means durable bytes, an index entry and, for a
seal, a log leaf. The same ``_apply`` that indexes live records re-indexes
the records recovery finds past the index's known end, so a crash anywhere
between fsync and index write loses nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.errors import CallvaultError, InputError
from callvault.ids import (
    MAX_RECORDING_ID_BYTES,
    check_call_id,
    check_call_meta,
    check_erase_reason,
    check_text,
)
from callvault.integrity import chain as chainmod
from callvault.integrity import checkpoint
from callvault.integrity.log import MerkleLog
from callvault.media.packets import PacketRun
from callvault.media.pipeline import call_unsupported_codec
from callvault.store import crypto
from callvault.store import records as rec
from callvault.store.fs import REAL_FS, FileSystem
from callvault.store.index import CallEntry, DecisionEntry, Index, IndexUnreadable
from callvault.store.segment import (
    RecordRef,
    SegmentReader,
    SegmentWriter,
    StoreError,
    recover,
    segment_path,
)
from callvault.timeline import (
    FRAME_MS,
    FRAMES_PER_RECORD,
    OPUS_PRE_SKIP_48K,
    SAMPLE_RATE,
    frames_us,
)
from callvault.vault.common import (
    SUMMARY_AAD,
    Ack,
    OpenReport,
    VaultBusy,
    VaultError,
    VaultUnwritable,
    now_us,
)
from callvault.vault.export import Export
from callvault.vault.keys import (
    CallKeys,
    TenantErased,
    TenantKeks,
    has_vault_data,
    open_key_file,
    subject_mac,
    subject_values,
)
from callvault.vault.lifecycle import Lifecycle, Retained
from callvault.vault.reclaim import Reclaiming
from callvault.vault.recovery import settle_index_swap
from callvault.vault.verify import Verification

PROBE_BYTES = 1 << 20  # what reopen_writer writes (and removes) to see that writing works


def _probe_space(directory: Path) -> None:
    """Write, fsync and remove PROBE_BYTES in ``directory``: OSError while the disk is
    full, the directory not writable, or the file size limit below it."""
    probe = directory / ".probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        block = bytes(64 << 10)
        for _ in range(PROBE_BYTES // len(block)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)


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
        self.raw = False  # a G.711 record was appended (peak mode): sealed as raw
        self.sealed = False
        # set when the vault's segment writer failed and was reopened: this writer's
        # chain may count records that were never stored (Vault.reopen_writer)
        self.broken: str | None = None

    def _usable(self) -> None:
        if self.broken is not None:
            raise VaultError(
                f"call {self.entry.call_id}: {self.broken}; continue it with "
                "Vault.resume_call (from the records that were stored)"
            )

    @property
    def chain_head(self) -> bytes:
        return self._chain.head

    def append(
        self,
        leg: int,
        first_frame: int,
        lengths: npt.NDArray[np.int32],
        packets: bytes,
        codec: int = rec.CODEC_OPUS,
    ) -> Future[Ack]:
        """Store one leg's Opus packets (or, ``codec`` PCMU/PCMA, G.711 frames of 160
        bytes) for frames first_frame.. (one record)."""
        if not 0 <= leg < len(self.entry.legs):
            raise InputError(f"leg {leg} does not exist (call has {len(self.entry.legs)})")
        with self._lock:
            self._usable()
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
                codec=codec,
            )
            if codec in rec.RAW_CODECS:
                self.raw = True
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

    def release(self) -> None:
        """Stop writing the call without sealing it (added by the ingest lane): it stays
        open in the vault, as after a restart, and ``Vault.resume_call`` takes it up."""
        self._vault._forget(self.entry)

    def append_leg(
        self,
        leg: int,
        lengths: npt.NDArray[np.int32],
        packets: bytes,
        first_frame: int = 0,
        codec: int = rec.CODEC_OPUS,
    ) -> list[Future[Ack]]:
        """A whole leg's packets, cut into records of FRAMES_PER_RECORD frames."""
        run = PacketRun(packets, lengths)
        futures = []
        for lo in range(0, len(run), FRAMES_PER_RECORD):
            part = run[lo : lo + FRAMES_PER_RECORD]
            futures.append(self.append(leg, first_frame + lo, part.lengths, part.data, codec))
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
            self._usable()
            if self.sealed:
                raise VaultError(f"call {self.entry.call_id} is already sealed")
            self.sealed = True
            pending = list(self._pending)
        for f in pending:
            f.result()  # raises if a record did not become durable
        e = self.entry
        end = end_us or now_us()  # one instant for the manifest and the seal record
        # The summary (gaps, levels, DTMF digits: possibly card numbers) is call
        # content: sealed with the call's key, unreadable once the call is erased.
        sealed_summary = crypto.encrypt_blob(
            self._key,
            plaintext=json.dumps(summary or {}, sort_keys=True).encode(),
            aad=rec.call_aad(e.tenant, e.call_id) + SUMMARY_AAD,
        ).hex()
        manifest = self._vault._manifest(
            e,
            sealed_summary,
            frames if frames is not None else max(self.frames, default=0),
            end,
            self._chain.count,
            call_unsupported_codec((summary or {}).get("legs", [])),
            raw=self.raw,
        )
        seal = self._chain.seal(manifest)
        body = rec.seal_body(
            e.tenant,
            e.call_id,
            count=self._chain.count,
            head=self._chain.head,
            seal=seal,
            end_us=end,
            manifest=manifest,
        )
        self._vault._writer.append(rec.SEAL, body).result()
        self._vault._forget(e)
        hook = self._vault.on_raw_sealed
        if self.raw and hook is not None:  # peak mode: the compactor takes it from here
            hook(e.tenant, e.call_id, frames if frames is not None else max(self.frames))
        return seal


class Vault(Export, Verification, Reclaiming, Lifecycle):
    """The embedded engine on one data directory. Use ``Vault.open(path)``.

    Its parts, each a module of this package: indexing and recovery
    (recovery.Indexing), reclaiming space (reclaim.Reclaiming), reading
    (reading.Reading), verify (verify.Verification), export (export.Export), the
    calls' key files (keys.CallKeys, ``call_keys``); here: opening, the write path
    (open_call, CallWriter, erase), key rotation and the Merkle log's checkpoints and
    proofs."""

    def __init__(
        self,
        path: Path,
        key_file: Path,
        *,
        segment_bytes: int,
        origin: str,
        fs: FileSystem = REAL_FS,
        create: bool = True,
        read_only: bool = False,
        rebuild_index: bool = False,
    ) -> None:
        self.path = path
        self.origin = origin
        self.read_only = read_only
        self.fs = fs
        self._lock_fd = -1
        self._lock = threading.RLock()
        self._log_lock = threading.RLock()
        self._open = {}
        # called (tenant, call_id, frames) when a raw (G.711) call is sealed: the
        # server's compactor (vault/compact.py) queues it
        self.on_raw_sealed: Callable[[str, str, int], object] | None = None
        # called before each checkpoint is signed (the server's audit trail puts its
        # head in the log here: docs/format.md 8.12)
        self.before_checkpoint: list[Callable[[], object]] = []
        self._gaps = {}
        self._reclaim_lock = threading.Lock()
        self._decision_lock = threading.Lock()
        self._lifecycle_lock = threading.RLock()
        self.after_change = []  # hooks after each lifecycle change (vault/lifecycle.py)
        self.after_record = []  # the same, given the LIFECYCLE record's body as stored
        # hooks (tenant, call_id) after an erasure's commit point; call_id None: the
        # whole tenant (the archive marks the erasure in its bucket). A hook's failure
        # is logged: the erasure stands.
        self.after_erase: list[Callable[[str, str | None], object]] = []
        # the retention end of a call being sealed, kept in its manifest (docs/format.md
        # 8.14): set by callvault.lifecycle from the stored policy; None: no policy
        self.retention_at_seal: Callable[[CallEntry, int], dict[str, Any] | None] | None = None
        # what the subject index keeps of new calls (docs/format.md 8.16): the customer
        # number and these keys of `extra` (the server's [subject] keys)
        self.subject_keys: tuple[str, ...] = ("customer_number",)
        self._reclaimed_last = None
        self.report = OpenReport()
        self._segment_bytes = segment_bytes
        self._reopen_error = ""
        fresh = not has_vault_data(path)
        if fresh and (read_only or not create):
            raise VaultError(f"no vault at {path}")
        if read_only and rebuild_index:
            raise ValueError("a read-only vault cannot rebuild its index")
        if not read_only:
            for sub in ("segments", "keys/calls", "keys/tenants", "log"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            # one process per data directory: the segment writer has no lock of its own
            self._lock_fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise VaultBusy(
                    f"{path} is open in another process (callvault serve or "
                    "another command); stop it first, or use its --server address"
                ) from None
        try:
            self.keys = open_key_file(path, key_file, fresh=fresh, read_only=read_only)
            self.call_keys = CallKeys(
                path / "keys" / "calls",
                self.keys,
                TenantKeks(path / "keys" / "tenants", self.keys),
                erased=self._tenant_erased,
            )
            if fresh:  # every call key of this vault is under its tenant's KEK
                self.call_keys.mark_v2_only()
            self.log = MerkleLog.open(path / "log", read_only=read_only)
            self._reader = SegmentReader(path / "segments", fs=fs)
            if read_only:
                self.index = Index(path / "index", read_only=True)
            elif rebuild_index:
                self.report.reclaim = self.resolve_reclaim(index=False)
                self.report.truncated = recover(path / "segments", fs=fs).truncated
                self.report.reindexed = self._rebuild_index(keep_old=True)
            else:
                settle_index_swap(path)
                if not fresh and not (path / "index" / "CURRENT").exists():
                    # an empty new index would hide every call of the closed segments
                    raise IndexUnreadable(
                        f"the index {path / 'index'} is missing; the segments hold every "
                        f"call: rebuild the index from them with "
                        f"`callvault --data {path} reindex`",
                        damaged=True,
                    )
                self.index = Index(path / "index")
                self.report.reclaim = self.resolve_reclaim(index=True)
            if not read_only:
                known_end = self._known_end() if rebuild_index else self._recover()
                self._finish_tenant_erasures()  # a tenant erasure a crash cut short
                self._writer = SegmentWriter(
                    path / "segments",
                    fs=fs,
                    segment_bytes=segment_bytes,
                    on_commit=self._on_commit,
                    known_end=known_end,
                )
            if not read_only or (path / "keys" / checkpoint.KEY_FILE).exists():
                self.signer = checkpoint.Signer.open(path / "keys", origin)
                self.checkpoints = checkpoint.CheckpointLog.open(
                    path / "log", self.log, self.signer
                )
        except BaseException as e:
            self._release()  # a failed open leaves the directory free for the next one
            if read_only:
                raise
            if isinstance(e, IndexUnreadable) and not e.damaged:
                raise VaultUnwritable(str(e)) from e
            if isinstance(e, OSError):
                where = f" ({e.filename})" if e.filename else ""
                raise VaultUnwritable(
                    f"{path} cannot be opened for writing: {e.strerror or e}{where}"
                ) from e
            raise

    def _release(self) -> None:
        """Close what is open (all of it, or what a failed open got to) and unlock."""
        for part in ("_writer", "log", "index", "_reader"):
            if hasattr(self, part):
                getattr(self, part).close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _writable(self) -> None:
        if self.read_only:
            raise VaultError(f"{self.path} is open read-only: this needs a read-write open")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key_file: str | os.PathLike[str] | None = None,
        segment_bytes: int = 64 << 20,
        origin: str = "callvault",
        fs: FileSystem = REAL_FS,
        create: bool = True,
        read_only: bool = False,
        rebuild_index: bool = False,
    ) -> Vault:
        """Open the vault in ``path``; recovery runs first. ``fs`` is the segment
        store's file layer (tests pass a fault-injecting one).

        ``create``: make a new vault when ``path`` holds none (else VaultError "no
        vault at PATH"). ``read_only``: open for reading only: no lock, no recovery,
        no segment writer, no file created or written in ``path`` (a full disk, a
        read-only mount, or while another process such as `callvault serve` holds
        the vault); it sees the calls as the index had them when opened; writing
        verbs raise VaultError. ``rebuild_index``: do not open the index: rebuild it
        from the segments (what `callvault reindex` does; works on a damaged index,
        which is kept aside as index.backup-<time>); ``report.reindexed`` is the
        number of records indexed."""
        p = Path(path)
        return cls(
            p,
            Path(key_file) if key_file else p / "keys" / "kek",
            segment_bytes=segment_bytes,
            origin=origin,
            fs=fs,
            create=create,
            read_only=read_only,
            rebuild_index=rebuild_index,
        )

    def close(self) -> None:
        self._release()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------
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
        recording_id: str | None = None,
        decision: dict[str, Any] | None = None,
    ) -> CallWriter:
        """Start recording a call; its OPEN record is durable when this returns.
        ``decision``: the recording policy's (lifecycle.rules.Decision.doc()), kept in
        the OPEN record and the call entry (docs/format.md 8.13).
        Metadata beyond the bounds of callvault.ids (MAX_TAGS, ...) is refused.
        ``recording_id``: the recording that opens the call (Ingest's
        CallStart.recording_id), kept in the OPEN record and the call entry so that
        after a restart only that recording resumes the call (None: not kept)."""
        self._writable()
        if recording_id is not None:
            check_text(recording_id, "recording_id", MAX_RECORDING_ID_BYTES)
        check_call_meta(
            direction=direction,
            agent=agent,
            skill_group=skill_group,
            customer_number=customer_number,
            tags=tags,
            extra=extra,
        )
        with self._lock:
            if self.index.get_call(tenant, call_id) is not None or (tenant, call_id) in self._open:
                raise InputError(f"call {call_id} already exists in tenant {tenant}")
            self.check_tenant(tenant)
            if self.index.get_decision(tenant, call_id) is not None:
                raise InputError(
                    f"call {call_id} of tenant {tenant} was decided not recorded (its "
                    "decision entry is stored): a call id names one call"
                )
            key = self.call_keys.create(tenant, call_id)
            sealed_number = ""
            if customer_number:  # under its own key: a bundle ships the data key
                sealed_number = (
                    rec.NUMBER_PREFIX
                    + crypto.encrypt_blob(
                        self.call_keys.create_number(tenant, call_id),
                        plaintext=customer_number.encode(),
                        aad=rec.call_aad(tenant, call_id) + rec.NUMBER_AAD,
                    ).hex()
                )
            meta = {
                "direction": direction,
                "agent": agent,
                "skill_group": skill_group,
                "tags": list(tags),
                "legs": list(legs),
                "customer_number_sealed": sealed_number,
                "extra": extra or {},
            }
            if recording_id is not None:
                meta["recording_id"] = recording_id
            if decision is not None:
                meta["decision"] = decision
            # the subject index (docs/format.md 8.16): HMACs, never the values
            subjects = self.subject_macs(tenant, customer_number, extra, create=True)
            if subjects:
                meta["subjects"] = subjects
            start = start_us if start_us is not None else now_us()
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
                recording_id=recording_id,
                decision=decision,
                subjects=subjects,
            )
            w = CallWriter(self, entry, key, chainmod.Chain(tenant, call_id))
            self._open[(tenant, call_id)] = w
        try:
            self._writer.append(rec.OPEN, body).result()
        except BaseException:
            # not opened: the id stays free for a retry (once the writer works again)
            self._forget(entry)
            raise
        return w

    def subject_macs(
        self,
        tenant: str,
        customer_number: str,
        extra: dict[str, Any] | None,
        *,
        create: bool = False,
    ) -> dict[str, str]:
        """The subject index's HMACs (hex) of a call's values (docs/format.md 8.16):
        its customer number and the ``subject_keys`` of its ``extra``; {} when it has
        none (or, unless ``create``, its tenant has no subject key yet)."""
        values = subject_values(self.subject_keys, customer_number, extra)
        if not values:
            return {}
        key = self.call_keys.tenants.subject_key(tenant, create=create)
        if key is None:
            return {}
        return {name: subject_mac(key, name, v).hex() for name, v in values.items()}

    def record_decision(
        self, call_id: str, decision: dict[str, Any], *, tenant: str = "default"
    ) -> DecisionEntry:
        """Store that a call is not recorded (a DECISION record, docs/format.md 8.13:
        the decision's document, no audio, no customer number), durable, indexed and a
        leaf of the Merkle log when this returns. A call that has a decision already
        keeps it (returned as stored); one that exists is refused (InputError)."""
        self._writable()
        self.check_tenant(tenant)  # an erased tenant takes no new decisions either
        if decision.get("recorded", False):
            raise ValueError("a DECISION record is for a call that is not recorded")
        doc = json.dumps(decision, sort_keys=True, separators=(",", ":")).encode()
        with self._decision_lock:
            old = self.index.get_decision(tenant, call_id)
            if old is not None:
                return old
            with self._lock:
                if self.index.get_call(tenant, call_id) is not None or (
                    (tenant, call_id) in self._open
                ):
                    raise InputError(f"call {call_id} already exists in tenant {tenant}")
            body = rec.decision_body(tenant, call_id, time_us=now_us(), doc=doc)
            self._writer.append(rec.DECISION, body).result()
            stored = self.index.get_decision(tenant, call_id)
            assert stored is not None
            return stored

    def get_decision(self, call_id: str, *, tenant: str = "default") -> DecisionEntry | None:
        """The DECISION entry of a call that was not recorded, or None."""
        return self.index.get_decision(tenant, call_id)

    def resume_call(self, call_id: str, *, tenant: str = "default") -> CallWriter:
        """Writer of a call left open by an earlier process (a crash or a restart):
        the chain continues from the durable records the index holds."""
        self._writable()
        with self._lock:
            if (tenant, call_id) in self._open:
                raise VaultError(f"call {call_id} is already being written in this process")
            e = self.get_call(call_id, tenant=tenant)
            self.check_tenant(tenant)
            if e.state != "open":
                raise VaultError(f"call {call_id} is {e.state}: it cannot be resumed")
            w = CallWriter(
                self,
                e,
                self.call_keys.get(tenant, call_id),
                chainmod.Chain(tenant, call_id, bytes.fromhex(e.chain_head), e.records),
            )
            w.frames = self.durable_frames(call_id, tenant=tenant)
            w.raw = self.stored_codec(e) in rec.RAW_CODECS
            self._open[(tenant, call_id)] = w
            return w

    def _forget(self, e: CallEntry) -> None:
        with self._lock:
            self._open.pop((e.tenant, e.call_id), None)

    def _manifest(
        self,
        e: CallEntry,
        sealed_summary: str,
        frames: int,
        end_us: int,
        count: int,
        unsupported_codec: dict[str, Any] | None = None,
        *,
        raw: bool = False,
    ) -> bytes:
        codec: dict[str, Any] = {
            "name": "opus",
            "sample_rate": SAMPLE_RATE,
            "frame_ms": FRAME_MS,
            "pre_skip": OPUS_PRE_SKIP_48K,
        }
        if raw:  # peak mode: G.711 records (each says its law), no encoder delay
            codec = {"name": "g711", "sample_rate": SAMPLE_RATE, "frame_ms": FRAME_MS}
        doc: dict[str, Any] = {
            "version": 2,
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
            "codec": codec,
            "summary_sealed": sealed_summary,
        }
        if unsupported_codec is not None:  # only then: other manifests stay as they were
            doc["unsupported_codec"] = unsupported_codec
        # version 2: every metadata field is sealed (docs/format.md 8.5, 8.14)
        doc["extra"] = e.extra
        if e.recording_id is not None:
            doc["recording_id"] = e.recording_id
        if e.decision is not None:
            doc["decision"] = e.decision
        if e.subjects:  # the subject index's HMACs (8.16): sealed, so verify covers them
            doc["subjects"] = e.subjects
        hook = self.retention_at_seal
        retention = hook(e, end_us) if hook is not None else None
        if retention is not None:
            doc["retention"] = retention
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
            w.append_leg(i, lengths, data, codec=r.codec)
        seal = w.seal(
            summary={"legs": [r.summary() for r in call.legs]},
            frames=call.frames,
            end_us=w.entry.start_us + frames_us(call.frames),
        )
        entry = self.index.get_call(tenant, call_id)
        assert entry is not None
        return entry, seal

    def erase(
        self,
        call_id: str,
        *,
        reason: str,
        tenant: str = "default",
        override_governance: bool = False,
    ) -> None:
        """Crypto-shred a sealed call: its key is destroyed, a tombstone and a log leaf
        stay; its audio records are dead (the index lets go of them, a reclaim frees
        them: docs/format.md 8.11). Refused (Retained) for a call under a legal hold or
        a retention end in the future (compliance: always; governance: unless
        ``override_governance``, an admin with a reason): docs/policy.md."""
        self._writable()
        e = self.get_call(call_id, tenant=tenant)
        if e.state == "erased":
            raise VaultError(f"call {call_id} is already erased")
        if e.state != "sealed" or (tenant, call_id) in self._open:
            raise VaultError(f"call {call_id} is still being recorded: seal it, then erase it")
        check_erase_reason(reason)
        # The check and the ERASE record under the lifecycle lock: a hold (a LIFECYCLE
        # record, Vault.change) cannot be placed between the two (lock order: the
        # lifecycle lock, then self._lock)
        with self._lifecycle_lock:
            e = self.get_call(call_id, tenant=tenant)
            if e.state == "erased":
                raise VaultError(f"call {call_id} is already erased")
            self.check_erasable(e, override_governance=override_governance)
            body = rec.erase_body(tenant, call_id, time_us=self.clock(), reason=reason)
            # The commit point is the ERASE record acknowledged: durable, indexed (and
            # its log leaf synced); only then is the call's key file deleted
            # (_index_committed). A failure before it is undone: the unacknowledged
            # records are cut from the segments, so no later recovery applies an
            # erasure reported as failed.
            try:
                self._writer.append(rec.ERASE, body).result()
            except StoreError as err:
                with self._lock:
                    undone = self._roll_back_unacknowledged()
                if undone:
                    raise VaultError(
                        f"erasing call {call_id} failed, nothing was applied (the call is "
                        f"still sealed and readable): {err}"
                    ) from err
                raise VaultError(
                    f"erasing call {call_id} failed and its record could not be removed: "
                    f"the next open of the vault may apply it ({err})"
                ) from err
        self._erased(tenant, call_id)
        if self.call_keys.path(tenant, call_id).exists():
            raise VaultError(
                f"call {call_id} is erased (its tombstone and log leaf are stored) but its "
                f"key file {self.call_keys.path(tenant, call_id)} could not be deleted: "
                "delete it"
            )

    def _erased(self, tenant: str, call_id: str | None) -> None:
        for hook in list(self.after_erase):
            try:
                hook(tenant, call_id)
            except Exception:  # the erasure is committed: a hook cannot undo it
                logging.getLogger("callvault.vault").exception("after_erase hook failed")

    # -- tenants: erasure and KEK rotation (docs/format.md 8.6) -----------------------------
    def _tenant_erased(self, tenant: str) -> bool:
        return hasattr(self, "index") and self.index.tenant_erasure(tenant) is not None

    def check_tenant(self, tenant: str) -> None:
        """TenantErased if ``tenant`` was erased (it takes no new calls)."""
        if self._tenant_erased(tenant):
            raise TenantErased(f"tenant {tenant} was erased: it takes no new calls")

    def tenant_erasure(self, tenant: str) -> dict[str, Any] | None:
        """The tombstone of an erased tenant (time_us, reason, log_index,
        keys_destroyed), None if the tenant was not erased."""
        return self.index.tenant_erasure(tenant)

    def erase_tenant(self, tenant: str, *, reason: str) -> dict[str, Any]:
        """Erase a whole tenant by destroying its KEK: every call of the tenant becomes
        unreadable at once. In the order of a call's erasure: the TENANT_ERASE record
        (the tombstone) durable, indexed (every call of the tenant erased in the index,
        their audio dead) and its log leaf synced; only then the tenant's KEK and its
        calls' key files destroyed (a crash in between: the next open finishes it).
        The tenant takes no new call afterwards. Refused while this process records a
        call of the tenant. Returns the tombstone (with ``calls``: how many calls the
        erasure ended)."""
        self._writable()
        check_call_id(tenant, "tenant")
        check_erase_reason(reason)
        # the lifecycle lock first (no hold placed between the check and the record),
        # then the vault's (no call of the tenant opened meanwhile)
        with self._lifecycle_lock, self._lock:
            if self._tenant_erased(tenant):
                raise TenantErased(f"tenant {tenant} is already erased")
            recording = sorted(c for t, c in self._open if t == tenant)
            if recording:
                raise VaultError(
                    f"tenant {tenant} has {len(recording)} call(s) being recorded "
                    f"({', '.join(recording[:3])}): stop them, then erase the tenant"
                )
            entries = [
                e
                for c in self.index.call_ids(tenant)
                if (e := self.index.get_call(tenant, c)) is not None and e.state != "erased"
            ]
            # a held or compliance-retained call outlives its tenant's erasure (a platform
            # admin's, with a reason: governance retention gives way)
            kept = [
                why
                for e in entries
                if (why := self.retained(e, override_governance=True)) is not None
            ]
            if kept:
                raise Retained(
                    f"tenant {tenant} has {len(kept)} call(s) that may not be erased now: "
                    + "; ".join(kept[:3])
                    + (f"; and {len(kept) - 3} more" if len(kept) > 3 else "")
                )
            live = len(entries)
            body = rec.tenant_erase_body(tenant, time_us=self.clock(), reason=reason)
            try:
                self._writer.append(rec.TENANT_ERASE, body).result()
            except StoreError as e:
                undone = self._roll_back_unacknowledged()
                if undone:
                    raise VaultError(
                        f"erasing tenant {tenant} failed, nothing was applied: {e}"
                    ) from e
                raise VaultError(
                    f"erasing tenant {tenant} failed and its record could not be removed: "
                    f"the next open of the vault may apply it ({e})"
                ) from e
        self._erased(tenant, None)
        doc = self.index.tenant_erasure(tenant)
        assert doc is not None
        if not doc.get("keys_destroyed"):
            raise VaultError(
                f"tenant {tenant} is erased (its tombstone and log leaf are stored, its "
                "calls are erased in the index) but its keys could not all be destroyed "
                f"(under {self.call_keys.tenants.dir(tenant)}): reopen the vault to finish"
            )
        return {**doc, "calls": live}

    def rotate_tenant_key(self, tenant: str) -> tuple[int, int]:
        """A new generation of the tenant's KEK; every key file of the tenant's calls
        re-wrapped under it (calls recorded before per-tenant KEKs are moved to it);
        then the older generations destroyed. No audio is rewritten. Crash-safe (each
        file replaced atomically, older generations kept until every key is
        re-wrapped: run it again to finish). Returns (generation, key files re-wrapped)."""
        self._writable()
        check_call_id(tenant, "tenant")
        with self._lock:  # no call of the tenant is opened meanwhile
            self.check_tenant(tenant)
            calls = set(self.index.call_ids(tenant))
            calls.update(c for t, c in self._open if t == tenant)
            try:
                return self.call_keys.rotate_tenant(tenant, sorted(calls))
            except OSError as e:
                raise VaultError(
                    f"rotating tenant {tenant}'s key stopped ({e.strerror or e}: "
                    f"{e.filename}): every call key still unwraps (the older generations "
                    "are kept); run it again"
                ) from e

    # -- the segment writer's health ----------------------------------------------------
    @property
    def writer_error(self) -> str | None:
        """None while the segment writer works; once it failed for good (a full disk,
        permission denied, an I/O error), a sentence saying what failed. Every append
        fails until ``reopen_writer`` succeeds."""
        if self.read_only:
            return f"{self.path} is open read-only"
        failed = self._writer.failed
        if failed is None:
            return None
        text = f"the segment writer failed: {failed}"
        if self._reopen_error:
            text += f"; reopening it failed: {self._reopen_error}"
        return text

    def reopen_writer(self) -> bool:
        """After the segment writer failed: cut what it never acknowledged from the
        segments, run recovery and start a new writer. True when writing works again
        (also when it never failed); False (and ``writer_error`` says why) while the
        cause remains. Calls being written by this process are dropped from it: their
        CallWriters raise, and ``resume_call`` continues them from the stored records."""
        self._writable()
        with self._lock, self._reclaim_lock:
            if self._writer.failed is None:
                return True
            with self._log_lock:
                try:
                    self._writer.close()
                    _probe_space(self.path / "segments")
                    if not self._roll_back_unacknowledged():
                        raise VaultError("the unacknowledged records could not be removed")
                    for w in self._open.values():
                        w.broken = "the vault's segment writer failed and was reopened"
                    self._open.clear()
                    known_end = self._recover()
                    self._reader.close()
                    self._reader = SegmentReader(self.path / "segments", fs=self.fs)
                    writer = SegmentWriter(
                        self.path / "segments",
                        fs=self.fs,
                        segment_bytes=self._segment_bytes,
                        on_commit=self._on_commit,
                        known_end=known_end,
                    )
                except (OSError, CallvaultError) as e:
                    self._reopen_error = str(e)
                    return False
                self._writer = writer
                self._reopen_error = ""
                return True

    def _roll_back_unacknowledged(self) -> bool:
        """Cut the segments back to the end of the last acknowledged record (the
        index's meta/end: every acknowledged record is indexed before its ack), after
        the writer failed: whatever a failed group left in the files (written but not
        acknowledged) must not be applied by a later recovery. True once that is
        durable (truncated, fsynced); False if the files could not be changed."""
        if self._writer.failed is None:
            return False
        self._writer.close()  # its committer has stopped: this joins it
        end = self._known_end()
        directory = str(self.path / "segments")
        try:
            if end is None:
                # nothing was ever acknowledged (meta/end is written before the first
                # ack): no segment holds anything to keep
                for sid in self._reader.segments():
                    self.fs.remove(segment_path(directory, sid))
                self.fs.fsync_dir(directory)
                return True
            seg, off = end
            order = self._reader.segments()  # the store's order (docs/format.md 8.2)
            if seg in order:
                for sid in order[order.index(seg) + 1 :]:
                    self.fs.remove(segment_path(directory, sid))
            f = self.fs.open_append(segment_path(directory, seg))
            try:
                if f.size() > off:
                    f.truncate(off)
                f.fsync()
            finally:
                f.close()
            self.fs.fsync_dir(directory)
        except OSError:
            return False
        return True

    # -- keys and the log ----------------------------------------------------------------
    def rotate_key(self) -> tuple[int, int]:
        """A new master key-encryption key (of the key file); the tenants' KEKs re-wrapped
        under it (and the data keys of calls recorded before per-tenant KEKs: no
        per-call work otherwise; no audio is rewritten); the old master KEKs retired.
        Returns (new KEK id, wrapped keys re-wrapped)."""
        self._writable()
        with self._lock:
            old = [v.id for v in self.keys.versions()]
            new = self.keys.rotate()
            try:
                # the tenants' KEKs, and the call keys wrapped before per-tenant KEKs
                n = self.call_keys.tenants.rewrap(new) + self.call_keys.rewrap(new)
            except OSError as e:
                # each key file is replaced atomically and the old KEKs are not retired
                # yet: every call key still unwraps; a second run finishes the job
                raise VaultError(
                    f"key rotation stopped ({e.strerror or e}: {e.filename}): every call "
                    "key still unwraps (the previous key-encryption keys are kept); "
                    "run rotate-key again"
                ) from e
            for kek in old:
                if kek != new and any(
                    v.id == kek and v.state.name != "RETIRED" for v in self.keys.versions()
                ):
                    self.keys.retire(kek)
            return new, n

    def checkpoint(self) -> str:
        """A signed checkpoint of the log as it is now (C2SP signed note), consistent
        with every checkpoint signed before it (CheckpointLog refuses otherwise)."""
        self._writable()
        for hook in list(self.before_checkpoint):
            hook()
        with self._lock, self._log_lock:
            return self.checkpoints.sign().decode()

    def append_leaf(self, data: bytes, before: Callable[[int], object] | None = None) -> int:
        """Append a leaf that no record of the segments holds (the audit trail's head,
        kind 4: docs/format.md 8.12), sync the log and index it; returns its index.
        ``before(index)`` runs first, under the log's lock, with the index it will get."""
        self._writable()
        with self._log_lock:
            index = self.log.size
            if before is not None:
                before(index)
            batch = self.index.batch()
            self._log_leaf(batch, data)
            self.log.sync()
            batch.put_meta(b"meta/log-size", struct.pack(">Q", self.log.size))
            self.index.write(batch)
            return index

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
        """Calls in the index (and of them the raw ones: peak mode, not compacted yet),
        segment bytes, free disk, log size, and the bytes a reclaim can free and has
        freed (docs/format.md 8.11)."""
        calls = raw = 0
        for t in self.index.tenants():
            for e in self.index.search(t):
                calls += 1
                raw += e.storage == "raw"
        stored = sum(p.stat().st_size for p in (self.path / "segments").glob("*") if p.is_file())
        st = os.statvfs(self.path)
        return {
            "calls": calls,
            "raw_calls": raw,
            "stored_bytes": stored,
            "free_disk_bytes": st.f_bavail * st.f_frsize,
            "log_size": self.log_size(),
            "reclaimable_bytes": self.reclaimable_bytes(),
            "reclaimed_bytes": self.reclaimed_bytes(),
        }

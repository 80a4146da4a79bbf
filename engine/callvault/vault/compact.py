"""The compactor: sealed raw (G.711, peak mode) calls turned into Opus.

Peak mode (``Settings.store_codec = "g711"``, the server's ``ingest_codec``) stores
each leg's de-jittered frames as G.711; compaction later encodes them at the
product's quality (the encoder settings of live ingest, ``media.pipeline.Settings``)
and replaces the raw records, in three durable steps (docs/format.md 8.10):

1. the call's Opus AUDIO records, chained on from the raw chain's head with chain
   indexes the call never used (so no data-key nonce is ever reused);
2. a TRANSCODE record (type 5) whose document commits to the raw chain head and
   count, the Opus chain head, first index and count, and the encoder settings; its
   indexing appends the transcoding leaf to the Merkle log and drops the raw records
   from the index (they become dead records a segment GC reclaims);
3. nothing else: until the TRANSCODE record is durable the call is raw (readers of
   a raw call take only its first ``records`` records), after it the call is
   compacted. A crash anywhere leaves one or the other, never neither, never a half.

The encoding runs in worker processes (``Compactor``: a process pool); the vault
stays one writer: the parent appends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.integrity import chain as chainmod
from callvault.media.packets import PacketRun
from callvault.media.pipeline import LegPipeline, Settings
from callvault.store import records as rec
from callvault.store.index import CallEntry
from callvault.timeline import (
    FRAME_MS,
    FRAME_SAMPLES,
    FRAMES_PER_RECORD,
    OPUS_PRE_SKIP_48K,
    SAMPLE_RATE,
)
from callvault.vault.common import VaultError, now_us

log = logging.getLogger(__name__)

Packets = tuple[bytes, npt.NDArray[np.int32]]
Encode = Callable[[Sequence[int], Sequence[bytes], Settings], list[Packets]]


def encoder_settings(settings: Settings) -> dict[str, Any]:
    """The encoder settings a transcoding document records (``Settings`` without what
    is not an encoder setting)."""
    doc = dataclasses.asdict(settings)
    doc.pop("store_codec", None)
    return doc


def encode_pcm_legs(pcm: Sequence[npt.NDArray[np.int16]], settings: Settings) -> list[Packets]:
    """Per leg, the Opus packets of PCM frames (one per frame, then the flush packet):
    the same pipeline stages as live ingest (DSP, VAD, per-run bitrate, DTX packet
    replacement), so a compacted call is coded as an Opus-mode call of that audio."""
    opus = dataclasses.replace(settings, store_codec="opus")
    out = []
    for leg in pcm:
        p = LegPipeline("leg", "compact", opus)
        p.push_pcm(leg)
        out.append(p.finish(total_frames=len(leg) // FRAME_SAMPLES).packets_all())
    return out


def encode_g711_legs(
    laws: Sequence[int], datas: Sequence[bytes], settings: Settings
) -> list[Packets]:
    """``encode_pcm_legs`` of G.711 legs (what a worker process runs)."""
    from callvault import _g711

    return encode_pcm_legs(
        [_g711.decode(d, law) for law, d in zip(laws, datas, strict=True)], settings
    )


@dataclass
class Compacted:
    call_id: str
    tenant: str
    raw_records: int
    opus_records: int
    first_index: int
    frames: int
    raw_bytes: int
    opus_bytes: int
    log_index: int


def compact_call(
    vault: Any,
    call_id: str,
    *,
    tenant: str = "default",
    settings: Settings | None = None,
    encode: Encode = encode_g711_legs,
    step: Callable[[str], object] | None = None,
) -> Compacted:
    """Compact one sealed raw call (see the module docstring); returns what it did.

    ``encode`` turns the legs' G.711 into Opus packets (``Compactor`` passes one
    that runs in a worker process). ``step`` is called at each step ("encoded",
    "opus-record" after each Opus record is durable, "opus-written",
    "transcode-written"): the crash tests kill the process there."""
    key = (id(vault), tenant, call_id)
    with _active_lock:
        if key in _active:
            raise VaultError(f"call {call_id} is being compacted already")
        _active.add(key)
    try:
        return _compact(vault, call_id, tenant, settings, encode, step)
    finally:
        with _active_lock:
            _active.discard(key)


# the calls being compacted in this process (two compactions of one call at once would
# pick the same chain indexes: the vault's LOCK rules out another process)
_active: set[tuple[int, str, str]] = set()
_active_lock = threading.Lock()


def _compact(
    vault: Any,
    call_id: str,
    tenant: str,
    settings: Settings | None,
    encode: Encode,
    step: Callable[[str], object] | None,
) -> Compacted:
    vault._writable()
    s = settings or Settings()
    e: CallEntry = vault.get_call(call_id, tenant=tenant)
    if e.state != "sealed" or e.storage != "raw":
        raise VaultError(f"call {call_id} is {e.state}, stored as {e.storage}: nothing to compact")
    frames = int(vault.manifest(call_id, tenant=tenant)["frames"])
    legs = vault.read_g711(e, 0, frames)
    raw_bytes = sum(len(d) for _, d in legs)
    for g, (_, data) in enumerate(legs):
        if len(data) != frames * rec.G711_FRAME_BYTES:
            raise VaultError(
                f"call {call_id} leg {g}: {len(data) // rec.G711_FRAME_BYTES} raw frames "
                f"stored, the manifest says {frames}"
            )
    packets = encode([law for law, _ in legs], [d for _, d in legs], s)
    if step:
        step("encoded")
    key = vault.call_keys.get(tenant, call_id)
    first = max(e.compact_next, e.records)
    raw_head = bytes.fromhex(e.chain_head)
    chain = chainmod.Chain(tenant, call_id, raw_head, first)
    opus_bytes = 0
    pending: list[Future[Any]] = []
    for g, (data, lengths) in enumerate(packets):
        run = PacketRun(data, lengths)
        opus_bytes += len(data)
        for lo in range(0, len(run), FRAMES_PER_RECORD):
            part = run[lo : lo + FRAMES_PER_RECORD]
            body = rec.audio_body(
                tenant,
                call_id,
                key,
                leg=g,
                chain_index=chain.count,
                first_frame=lo,
                lengths=part.lengths,
                packets=part.data,
            )
            chain.append(body)
            pending.append(vault._writer.append(rec.AUDIO, body))
    for f in pending:
        f.result()
        if step:
            step("opus-record")
    if step:
        step("opus-written")
    count = chain.count - first
    doc = {
        "version": 1,
        "raw": {"count": e.records, "head": e.chain_head, "seal": e.seal},
        "opus": {"first_index": first, "count": count, "head": chain.head.hex()},
        "codec": {
            "name": "opus",
            "sample_rate": SAMPLE_RATE,
            "frame_ms": FRAME_MS,
            "pre_skip": OPUS_PRE_SKIP_48K,
        },
        "encoder": encoder_settings(s),
        "frames": frames,
    }
    raw_doc = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    body = rec.transcode_body(tenant, call_id, time_us=now_us(), doc=raw_doc)
    vault._writer.append(rec.TRANSCODE, body).result()
    if step:
        step("transcode-written")
    after = vault.get_call(call_id, tenant=tenant)
    if after.storage != "compacted":  # erased meanwhile: the records are dead
        raise VaultError(f"call {call_id} is {after.state}: its compaction was dropped")
    return Compacted(
        call_id,
        tenant,
        e.records,
        count,
        first,
        frames,
        raw_bytes,
        opus_bytes,
        after.transcode_log_index,
    )


def raw_calls(vault: Any) -> list[tuple[str, str]]:
    """(tenant, call id) of every sealed call stored raw (a scan of the index)."""
    out = []
    for tenant in vault.index.tenants():
        for e in vault.index.search(tenant):
            if e.storage == "raw" and e.state == "sealed":
                out.append((tenant, e.call_id))
    return out


def _worker_init(parent: int) -> None:
    """A worker process encodes only: it ignores SIGINT (the parent stops it), and it
    exits when its parent is gone (a SIGKILLed server leaves no encoder behind: the
    pool's queues do not tell a worker that waits for work)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Compactor:
    """Background compaction of a server's vault: ``workers`` encoder processes, the
    appends in this process. Calls are queued when sealed raw (``notify``) and, on
    start, from a scan of the index. ``paused``: nothing new starts."""

    def __init__(
        self,
        vault: Any,
        *,
        workers: int = 1,
        settings: Settings | None = None,
        paused: bool = False,
    ) -> None:
        self.vault = vault
        self.workers = max(1, workers)
        self.settings = dataclasses.replace(settings or Settings(), store_codec="opus")
        self.paused = paused
        self._cond = threading.Condition()
        self._queue: dict[tuple[str, str], int] = {}  # (tenant, call) -> frames (0: unknown)
        self._busy: set[tuple[str, str]] = set()
        self._stop = False
        self._scanned = False  # the index scanned for raw calls (by the compactor thread)
        self.compacted = 0
        self.failed = 0
        self.last_error = ""
        self._procs = self._pool()
        self._retried: set[tuple[str, str]] = set()
        self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="compact")
        self._main = threading.Thread(target=self._run, name="compactor", daemon=True)

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(),),  # not the worker's getppid(): its parent may be gone
        )

    def start(self) -> None:
        """Queue every sealed raw call of the vault, and each one sealed from now on
        (``Vault.on_raw_sealed``), then start compacting."""
        self.vault.on_raw_sealed = self.notify
        self._main.start()  # scans the index first (not here: a large vault takes a while)

    def notify(self, tenant: str, call_id: str, frames: int = 0) -> None:
        """A raw call was sealed: queue it."""
        with self._cond:
            self._queue[(tenant, call_id)] = frames
            self._cond.notify_all()

    def pause(self, paused: bool = True) -> None:
        with self._cond:
            self.paused = paused
            self._cond.notify_all()

    def backlog(self) -> tuple[int, int]:
        """(raw calls waiting or being compacted, their seconds of audio where known)."""
        with self._cond:
            frames = sum(self._queue.values())
            return len(self._queue) + len(self._busy), frames // (1000 // FRAME_MS)

    def idle(self) -> bool:
        with self._cond:
            return self._scanned and not self._queue and not self._busy

    def _encode(self, laws: Sequence[int], datas: Sequence[bytes], s: Settings) -> list[Packets]:
        procs = self._procs
        try:
            out: list[Packets] = procs.submit(encode_g711_legs, list(laws), list(datas), s).result()
        except BrokenProcessPool:
            # a worker died (killed, out of memory): a new pool for the next calls
            with self._cond:
                if self._procs is procs:
                    self._procs = self._pool()
            raise
        return out

    def _one(self, key: tuple[str, str]) -> None:
        tenant, call_id = key
        requeue = False
        try:
            compact_call(
                self.vault, call_id, tenant=tenant, settings=self.settings, encode=self._encode
            )
            self.compacted += 1
        except BrokenProcessPool as ex:  # its worker died: once more, in a new pool
            with self._cond:
                requeue = key not in self._retried
                self._retried.add(key)
            if not requeue:
                self.failed += 1
                self.last_error = f"{call_id}: {ex}"
            log.warning("compaction of %s/%s: a worker process died (%s)", tenant, call_id, ex)
        except Exception as ex:  # noqa: BLE001 (a call that fails stays raw, readable)
            self.failed += 1
            self.last_error = f"{call_id}: {ex}"
            log.warning("compaction of %s/%s failed (it stays raw): %s", tenant, call_id, ex)
        finally:
            with self._cond:
                self._busy.discard(key)
                if requeue:
                    self._queue.setdefault(key, 0)
                self._cond.notify_all()

    def _run(self) -> None:
        try:
            found = raw_calls(self.vault)
        except Exception as ex:  # noqa: BLE001 (the vault closed under it; say so)
            log.warning("the compactor could not list the raw calls: %s", ex)
            found = []
        with self._cond:
            for key in found:
                self._queue.setdefault(key, 0)
            self._scanned = True
            self._cond.notify_all()
        while True:
            with self._cond:
                while not self._stop and (
                    self.paused or not self._queue or len(self._busy) >= self.workers
                ):
                    self._cond.wait(1.0)
                if self._stop:
                    return
                key = next(iter(self._queue))
                del self._queue[key]
                self._busy.add(key)
            self._threads.submit(self._one, key)

    def wait_idle(self, timeout: float) -> bool:
        """Until nothing is queued or running (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._scanned or self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def stop(self) -> None:
        """Stop starting calls; the ones running finish (their appends need the vault
        open: call this before closing it); then the workers exit."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._main.is_alive():
            self._main.join()
        self._threads.shutdown(wait=True)
        self._procs.shutdown(wait=True, cancel_futures=True)

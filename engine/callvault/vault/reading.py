"""Reading calls: their index entries, sealed manifest and summary, customer
number, stored record bodies, and Opus packets. One path reads and decrypts
audio records (``Reading._runs``); ``iter_frames`` (playback's reader, in
chunks) and ``read_packets`` (a range at once, for export) are built on it."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.media.packets import PacketRun
from callvault.store import crypto
from callvault.store import records as rec
from callvault.store.index import CallEntry, RecordEntry
from callvault.store.segment import RecordRef
from callvault.vault.common import SUMMARY_AAD, CallNotFound, VaultError
from callvault.vault.state import VaultState

Packets = tuple[bytes, npt.NDArray[np.int32]]  # Opus packets back to back, their lengths


@dataclass(slots=True)
class _Run:
    """A decrypted audio record's packets kept whole (no Python object per packet and
    no copy): ``run``, the record's packets, ``cur``, the next packet not yet taken,
    and ``end``, one past the last packet of the range read."""

    run: PacketRun
    cur: int
    end: int


def _take(runs: collections.deque[_Run], n: int) -> Packets:
    """The next ``n`` packets of a leg's runs (consumed; the runs hold at least ``n``)."""
    datas: list[bytes] = []
    lens: list[npt.NDArray[np.int32]] = []
    while n:
        head = runs[0]
        run, cur = head.run, head.cur
        k = min(n, head.end - cur)
        bounds = run.bounds
        datas.append(run.data[bounds[cur] : bounds[cur + k]])
        lens.append(run.lengths[cur : cur + k])
        head.cur = cur + k
        n -= k
        if head.cur == head.end:
            runs.popleft()
    if len(datas) == 1:
        return datas[0], lens[0]
    if not datas:
        return b"", np.zeros(0, dtype=np.int32)
    return b"".join(datas), np.concatenate(lens)


@dataclass(frozen=True)
class ArchivedRecord(RecordEntry):
    """An audio record of an evicted call (docs/format.md 8.17): its body comes from
    the call's archive object (fetched and checked by ``Vault.fetch_archived``), not
    from a segment."""

    body: bytes = b""


class Reading(VaultState):
    """The Vault's read side."""

    # An evicted call's audio (entry.local False: the archive holds it): chain index ->
    # AUDIO record body as stored, fetched from its archive object and verified
    # (callvault.lifecycle.archive sets it; None: no archive configured)
    fetch_archived: Callable[[CallEntry], dict[int, bytes]] | None = None

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
        reverse: bool = False,
        after: tuple[int, str] | None = None,
    ) -> list[CallEntry]:
        """Calls started in [since_us, until_us) matching every filter given, in start
        order (then call id; ``reverse``: newest first). Duration bounds apply to
        ended calls; an open call (no end yet) only matches when neither bound is
        given. ``after`` = (start_us, call_id): only calls past that one in this
        order (a page cursor)."""
        out: list[CallEntry] = []
        for e in self.index.search(
            tenant,
            since_us=since_us,
            until_us=until_us,
            agent=agent,
            skill_group=skill_group,
            tag=tag,
            reverse=reverse,
            after=after,
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

    def _body(self, entry: RecordEntry) -> bytes:
        """A record's body as stored (the segment's checks done)."""
        if isinstance(entry, ArchivedRecord):
            return entry.body
        return self._reader.read(RecordRef(entry.segment, entry.offset, entry.length))[1]

    def _seal_record(self, e: CallEntry) -> rec.Body:
        """The parsed SEAL record of a sealed call."""
        if e.manifest_ref is None:
            raise VaultError(f"call {e.call_id} is not sealed yet")
        rtype, raw = self._reader.read(RecordRef(*e.manifest_ref))
        return rec.parse(rtype, raw)

    def manifest(self, call_id: str, *, tenant: str = "default") -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(
            self._seal_record(self.get_call(call_id, tenant=tenant)).manifest
        )
        return doc

    def summary(self, call_id: str, *, tenant: str = "default") -> dict[str, Any]:
        """The sealed per-leg summary of a call (gaps, DTMF, levels, RTP counters)."""
        m = self.manifest(call_id, tenant=tenant)
        plain = crypto.decrypt_blob(
            self.call_keys.get(tenant, call_id),
            blob=bytes.fromhex(m["summary_sealed"]),
            aad=rec.call_aad(tenant, call_id) + SUMMARY_AAD,
        )
        doc: dict[str, Any] = json.loads(plain)
        return doc

    def customer_number(self, call_id: str, *, tenant: str = "default") -> str:
        e = self.get_call(call_id, tenant=tenant)
        sealed = e.customer_number_sealed
        if not sealed:
            return ""
        if sealed.startswith(rec.NUMBER_PREFIX):  # under its own key
            return crypto.decrypt_blob(
                self.call_keys.get_number(tenant, call_id),
                blob=bytes.fromhex(sealed[len(rec.NUMBER_PREFIX) :]),
                aad=rec.call_aad(tenant, call_id) + rec.NUMBER_AAD,
            ).decode()
        return crypto.decrypt_blob(  # an older call's: under its data key
            self.call_keys.get(tenant, call_id),
            blob=bytes.fromhex(sealed),
            aad=rec.call_aad(tenant, call_id),
        ).decode()

    def audio_records(self, e: CallEntry) -> Iterator[tuple[int, RecordEntry]]:
        """(chain index, entry) of the audio records that make the call now: for a raw
        call its first ``records`` (Opus records a compaction wrote past them are not
        the call until its TRANSCODE record, docs/format.md 8.10); else all of them
        (a compacted call's index holds only its Opus records). An evicted call's
        (``local`` False) come from its archive object (``fetch_archived``)."""
        if not e.local and e.state != "erased":
            yield from self._archived_records(e)
            return
        for i, r in self.index.records(e.tenant, e.call_id):
            if e.storage == "raw" and i >= e.records:
                return
            yield i, r

    def _archived_records(self, e: CallEntry) -> Iterator[tuple[int, RecordEntry]]:
        fetch = self.fetch_archived
        if fetch is None:
            where = (e.archive or {}).get("bucket", "?")
            raise VaultError(
                f"call {e.call_id}'s audio is in the archive (bucket {where}), not on this "
                "disk: configure the archive ([archive] settings, docs/policy.md) to read it"
            )
        for i, body in sorted(fetch(e).items()):
            if e.storage == "raw" and i >= e.records:
                return
            b = rec.parse(rec.AUDIO, body)
            yield (
                i,
                ArchivedRecord(b.leg, rec.AUDIO, b.frames, b.first_frame, -1, 0, len(body), body),
            )

    def stored_codec(self, e: CallEntry) -> int:
        """The codec byte of the call's first audio record (docs/format.md 8.5):
        records.CODEC_OPUS, or CODEC_PCMU / CODEC_PCMA (peak mode); Opus when none."""
        for _, r in self.audio_records(e):
            return rec.parse(rec.AUDIO, self._body(r)).codec
        return rec.CODEC_OPUS

    def leg_laws(self, e: CallEntry) -> list[int]:
        """Per leg of a raw call, its G.711 law (RTP payload type 0 or 8) from its first
        record (a leg keeps one law); PCMU for a leg with no record yet."""
        laws: list[int | None] = [None] * len(e.legs)
        for _, r in self.audio_records(e):
            if laws[r.leg] is None:
                laws[r.leg] = rec.g711_law(rec.parse(rec.AUDIO, self._body(r)).codec)
                if all(x is not None for x in laws):
                    break
        return [0 if x is None else x for x in laws]

    def is_raw(self, e: CallEntry) -> bool:
        """Whether the call's audio is G.711 (peak mode, not compacted yet)."""
        return e.storage == "raw"

    def transcoding(self, e: CallEntry) -> tuple[rec.Body, dict[str, Any]]:
        """A compacted call's TRANSCODE record and its document (docs/format.md 8.5)."""
        if e.transcode_ref is None:
            raise VaultError(f"call {e.call_id} is not compacted")
        rtype, raw = self._reader.read(RecordRef(*e.transcode_ref))
        b = rec.parse(rtype, raw)
        doc: dict[str, Any] = json.loads(b.doc)
        return b, doc

    def read_g711(
        self, e: CallEntry, from_frame: int = 0, to_frame: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Per leg of a raw call, (law, G.711 bytes) of frames [from_frame, to_frame)
        (what is stored; frames no record holds are not there)."""
        key = self.call_keys.get(e.tenant, e.call_id)
        legs: list[list[bytes]] = [[] for _ in e.legs]
        laws = [0] * len(e.legs)
        have = [from_frame] * len(e.legs)
        for _, r in self.audio_records(e):
            g = r.leg
            if r.first_frame + r.frames <= have[g] or (
                to_frame is not None and r.first_frame >= to_frame
            ):
                continue
            b = rec.parse(rec.AUDIO, self._body(r))
            _, data = b.decrypt_audio(key)
            laws[g] = rec.g711_law(b.codec)
            lo = max(have[g] - r.first_frame, 0)
            hi = r.frames if to_frame is None else min(r.frames, to_frame - r.first_frame)
            if lo >= hi:
                continue
            have[g] = r.first_frame + hi
            legs[g].append(data[lo * rec.G711_FRAME_BYTES : hi * rec.G711_FRAME_BYTES])
        return [(laws[g], b"".join(parts)) for g, parts in enumerate(legs)]

    def read_pcm(
        self, call_id: str, *, tenant: str = "default", from_frame: int = 0, to_frame: int
    ) -> list[npt.NDArray[np.int16]]:
        """Per leg, the PCM of a raw call's frames [from_frame, to_frame): G.711 decoded
        (exact: no codec delay)."""
        from callvault import _g711

        e = self.get_call(call_id, tenant=tenant)
        return [
            _g711.decode(data, law)
            for law, data in self.read_g711(e, from_frame=from_frame, to_frame=to_frame)
        ]

    def durable_frames(self, call_id: str, *, tenant: str = "default") -> list[int]:
        """Per leg, how many frames from 0 the call's durable records cover."""
        e = self.get_call(call_id, tenant=tenant)
        out = [0] * len(e.legs)
        for _, r in self.audio_records(e):
            if r.leg < len(out):
                out[r.leg] = max(out[r.leg], r.first_frame + r.frames)
        return out

    def stored_records(
        self, call_id: str, *, tenant: str = "default"
    ) -> Iterator[tuple[int, RecordEntry, bytes]]:
        """(chain index, index entry, stored body) of a call's audio records."""
        for i, entry in self.audio_records(self.get_call(call_id, tenant=tenant)):
            yield i, entry, self._body(entry)

    def _runs(
        self, e: CallEntry, from_frame: int, to_frame: int
    ) -> Iterator[tuple[int, int, _Run]]:
        """(leg, frame after the run, run) of the call's audio records that hold frames
        of [from_frame, to_frame), in chain order: only those are read and decrypted,
        each once, and cut to the range and past what their leg already gave."""
        key = self.call_keys.get(e.tenant, e.call_id)
        have = [from_frame] * len(e.legs)  # the frame after the last one read, per leg
        for _, r in self.audio_records(e):
            g = r.leg
            if r.first_frame + r.frames <= have[g] or r.first_frame >= to_frame:
                continue
            lengths, packets = rec.parse(rec.AUDIO, self._body(r)).decrypt_audio(key)
            lo = max(have[g] - r.first_frame, 0)
            hi = min(len(lengths), to_frame - r.first_frame)
            if lo >= hi:
                continue
            have[g] = r.first_frame + hi
            # decrypt_audio checked the lengths against the packets
            yield g, have[g], _Run(PacketRun.checked_by_caller(packets, lengths), lo, hi)

    def iter_frames(
        self,
        call_id: str,
        *,
        tenant: str = "default",
        from_frame: int = 0,
        to_frame: int,
        chunk: int = 50,
    ) -> Iterator[tuple[int, list[Packets]]]:
        """The Opus packets of frames [from_frame, to_frame), every leg, in chunks of
        ``chunk`` frames: (first frame, [(data, lengths) per leg]). One pass over the
        call's records; only those in range are read and decrypted."""
        e = self.get_call(call_id, tenant=tenant)
        nlegs = len(e.legs)
        pending: list[collections.deque[_Run]] = [collections.deque() for _ in range(nlegs)]
        have = [from_frame] * nlegs  # the frame after the last one read, per leg
        pos = from_frame
        for g, end, run in self._runs(e, from_frame, to_frame):
            pending[g].append(run)
            have[g] = end
            while pos < to_frame and min(have) >= min(pos + chunk, to_frame):
                n = min(chunk, to_frame - pos)
                yield pos, [_take(pending[x], n) for x in range(nlegs)]
                pos += n
        if pos < min(have):  # the end of what is stored
            n = min(have) - pos
            yield pos, [_take(pending[x], n) for x in range(nlegs)]

    def read_packets(
        self,
        call_id: str,
        *,
        tenant: str = "default",
        from_frame: int = 0,
        to_frame: int | None = None,
    ) -> list[Packets]:
        """Per leg, the Opus packets of frames [from_frame, to_frame) (data, lengths)."""
        e = self.get_call(call_id, tenant=tenant)
        total = to_frame
        if total is None:
            total = self.manifest(call_id, tenant=tenant)["frames"]
            if e.storage != "raw":
                total += 1  # + the Opus encoder's flush packet
        runs: list[collections.deque[_Run]] = [collections.deque() for _ in e.legs]
        for g, _, run in self._runs(e, from_frame, total):
            runs[g].append(run)
        return [_take(leg, sum(r.end - r.cur for r in leg)) for leg in runs]

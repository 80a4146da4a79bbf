"""Verification: every check a call's records allow (chain, seal, record identity,
audio authentication, the seal's leaf in the Merkle log), and the whole vault's."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from typing import Any

from callvault.errors import CallvaultError
from callvault.integrity import chain as chainmod
from callvault.integrity import merkle
from callvault.integrity.leaves import (
    LEAF_ERASE,
    LEAF_SEAL,
    leaf_data,
    lifecycle_leaf,
    tenant_erase_leaf,
    transcode_leaf,
)
from callvault.store import records as rec
from callvault.store.index import LIFECYCLE_FIELDS, CallEntry, RecordEntry
from callvault.store.segment import CorruptRecord, RecordRef, SegmentReader
from callvault.vault import lifecycle as vlife
from callvault.vault.common import CallNotFound, Problem
from callvault.vault.reading import Reading


class Verification(Reading):
    """The Vault's verify verbs."""

    def verify_call(self, call_id: str, *, tenant: str = "default") -> list[Problem]:
        """Every check a call's records allow; [] when it all verifies: its audio
        (chain, seal, authentication, leaves) and its metadata (the index entry and
        the OPEN record against the sealed manifest, the lifecycle chain replayed)."""
        what = f"call {call_id}"
        try:
            e = self.get_call(call_id, tenant=tenant)
        except CallNotFound as ex:
            return [Problem(what, None, str(ex))]
        return self._verify_audio(e, what) + self.verify_metadata(e)

    def _verify_audio(self, e: CallEntry, what: str) -> list[Problem]:
        problems: list[Problem] = []
        tenant, call_id = e.tenant, e.call_id
        if e.state == "erased":
            return self._verify_erased(e, what)
        if e.storage == "compacted":
            return self._verify_compacted(e, what)
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
                mb = self._seal_record(e)
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
                key = self.call_keys.get(tenant, call_id)
                for body in bodies:
                    rec.parse(rec.AUDIO, body).decrypt_audio(key)
            except CallvaultError as ex:
                problems.append(Problem(what, None, f"audio does not authenticate: {ex}"))
        if e.seal and e.log_index >= 0 and not problems:
            mb = self._seal_record(e)
            leaf = merkle.leaf_hash(leaf_data(LEAF_SEAL, tenant, call_id, mb.seal, mb.end_us))
            if e.log_index >= self.log.size or self.log.leaf_hash(e.log_index) != leaf:
                problems.append(Problem(what, None, "the seal is not in the Merkle log"))
        return problems

    def verify_metadata(self, e: CallEntry) -> list[Problem]:
        """A sealed (or erased after sealing) call's metadata as evidence (docs/format.md
        8.14): the index entry and the OPEN record against the SEAL's manifest (every
        field the manifest's version covers), then the call's LIFECYCLE records
        replayed from the seal (each link, its leaf in the Merkle log) and the entry's
        lifecycle fields against the replay. Each problem names the field and both
        values. [] for a call not sealed (nothing sealed to compare with)."""
        what = f"call {e.call_id}"
        if not e.seal or e.manifest_ref is None:
            return []
        try:
            m = json.loads(self._seal_record(e).manifest)
        except (CallvaultError, ValueError) as ex:
            return [Problem(what, None, f"its seal record cannot be read: {ex}")]
        problems: list[Problem] = []
        sealed = sealed_fields(m)
        # the index entry (what ls, info and search show)
        for name, value in sealed.items():
            if name in LIFECYCLE_FIELDS:
                continue  # the replay below (a LIFECYCLE record may change them)
            mine = getattr(e, name, None)
            if not _same(mine, value):
                problems.append(_differs(what, name, "the index", mine, value))
        # the OPEN record (what a reindex would rebuild the entry from)
        if e.open_ref is not None:
            problems += self._verify_open_record(e, sealed, what)
        problems += self._verify_lifecycle(e, m, what)
        return problems

    def _verify_open_record(self, e: CallEntry, sealed: dict[str, Any], what: str) -> list[Problem]:
        assert e.open_ref is not None
        try:
            rtype, raw = self._reader.read(RecordRef(*e.open_ref))
            b = rec.parse(rtype, raw)
        except CallvaultError as ex:
            return [Problem(what, None, f"its OPEN record cannot be read: {ex}")]
        if rtype != rec.OPEN or (b.tenant, b.call_id) != (e.tenant, e.call_id):
            return [Problem(what, None, "the index's OPEN record belongs elsewhere")]
        meta = dict(b.meta or {})
        opened: dict[str, Any] = {"start_us": b.start_us}
        for name in sealed:
            if name in ("tenant", "call_id", "start_us", "end_us", "retention"):
                continue  # not the OPEN record's
            opened[name] = meta.get(name, _OPEN_DEFAULTS.get(name))
        return [
            _differs(what, name, "the OPEN record", opened[name], sealed[name])
            for name in opened
            if not _same(opened[name], sealed[name])
        ]

    def _open_subjects(self, e: CallEntry) -> dict[str, str]:
        if e.open_ref is None:
            return dict(e.subjects)
        try:
            rtype, raw = self._reader.read(RecordRef(*e.open_ref))
            meta = rec.parse(rtype, raw).meta or {}
        except CallvaultError:
            return dict(e.subjects)  # _verify_open_record names what is wrong with it
        value = meta.get("subjects")
        if not isinstance(value, dict):
            return {}
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}

    def _verify_lifecycle(self, e: CallEntry, m: dict[str, Any], what: str) -> list[Problem]:
        """Replay the call's LIFECYCLE records from the seal (docs/format.md 8.14)."""
        problems: list[Problem] = []
        n = e.lifecycle_count
        if len(e.lifecycle_refs) != n or len(e.lifecycle_leaves) != n:
            return [
                Problem(
                    what,
                    None,
                    f"the index counts {n} lifecycle record(s) but keeps "
                    f"{len(e.lifecycle_refs)} place(s) and {len(e.lifecycle_leaves)} leaf "
                    "index(es): rebuild it with `callvault --data DIR reindex`",
                )
            ]
        replay = CallEntry(e.tenant, e.call_id, e.start_us)
        replay.tags = list(m.get("tags") or [])
        ret = m.get("retention")
        replay.retention = ret if isinstance(ret, dict) else None
        # the subject index's HMACs (8.16): as sealed (a manifest sealed since they are),
        # else as the OPEN record has them (an entry without its place: the index's)
        sealed_subjects = m.get("subjects")
        if isinstance(sealed_subjects, dict):
            replay.subjects = dict(sealed_subjects)
            opened = self._open_subjects(e)
            if e.open_ref is not None and not _same(opened, sealed_subjects):
                problems.append(
                    _differs(what, "subjects", "the OPEN record", opened, sealed_subjects)
                )
        else:
            replay.subjects = self._open_subjects(e)
        link = bytes.fromhex(e.seal)
        for seq, (ref, leaf_index) in enumerate(
            zip(e.lifecycle_refs, e.lifecycle_leaves, strict=True), 1
        ):
            at = f"lifecycle record {seq}"
            try:
                rtype, raw = self._reader.read(RecordRef(*ref))
                b = rec.parse(rtype, raw)
                if rtype != rec.LIFECYCLE or (b.tenant, b.call_id) != (e.tenant, e.call_id):
                    problems.append(Problem(what, None, f"{at}: the index points elsewhere"))
                    return problems
                doc = json.loads(b.doc)
            except (CallvaultError, ValueError) as ex:
                problems.append(Problem(what, None, f"{at} cannot be read: {ex}"))
                return problems
            if doc.get("seq") != seq or doc.get("prev") != link.hex():
                problems.append(
                    Problem(
                        what,
                        None,
                        f"{at} does not follow the lifecycle chain (it says number "
                        f"{doc.get('seq')!r} after link {str(doc.get('prev'))[:16]}..., "
                        f"the chain is at {seq} after {link.hex()[:16]}...)",
                    )
                )
                return problems
            link = chainmod.lifecycle_link(link, seq, raw)
            leaf = merkle.leaf_hash(lifecycle_leaf(e.tenant, e.call_id, link, b.time_us))
            if not 0 <= leaf_index < self.log.size or self.log.leaf_hash(leaf_index) != leaf:
                problems.append(Problem(what, None, f"{at} is not in the Merkle log"))
            try:
                vlife.apply(replay, doc)
            except (ValueError, TypeError) as ex:
                problems.append(Problem(what, None, f"{at} cannot be applied: {ex}"))
                return problems
        if n and link.hex() != e.lifecycle_head:
            problems.append(
                _differs(what, "lifecycle_head", "the index", e.lifecycle_head, link.hex())
            )
        for name in sorted(LIFECYCLE_FIELDS):
            mine, theirs = getattr(e, name), getattr(replay, name)
            if not _same(mine, theirs):
                problems.append(
                    _differs(what, name, "the index", mine, theirs, "the seal and lifecycle chain")
                )
        return problems

    def _verify_compacted(self, e: CallEntry, what: str) -> list[Problem]:
        """A compacted call (docs/format.md 8.10): the seal over the raw chain head and
        count, the seal's leaf; the Opus chain from the raw head through the records
        to the transcoding document's head; the transcoding leaf in the log; the
        audio authenticates."""
        problems: list[Problem] = []
        tenant, call_id = e.tenant, e.call_id
        try:
            tb, doc = self.transcoding(e)
            raw, opus = doc["raw"], doc["opus"]
            first, count = int(opus["first_index"]), int(opus["count"])
            raw_head = bytes.fromhex(raw["head"])
            mb = self._seal_record(e)
            if (mb.count, mb.head) != (int(raw["count"]), raw_head):
                problems.append(Problem(what, None, "the transcoding names another raw chain"))
            if chainmod.seal(raw_head, mb.count, mb.manifest) != mb.seal or mb.seal.hex() != e.seal:
                problems.append(Problem(what, None, "the seal does not match the raw chain"))
            c = chainmod.Chain(tenant, call_id, raw_head, first)
            bodies = []
            for i, _entry, body in self._safe_records(tenant, call_id, problems, what):
                if i != c.count:
                    problems.append(Problem(what, c.count, f"missing from the index (next is {i})"))
                    c.count = i
                b = rec.parse(rec.AUDIO, body)
                if (b.tenant, b.call_id, b.chain_index) != (tenant, call_id, i):
                    problems.append(Problem(what, i, "record belongs elsewhere (spliced)"))
                c.append(body)
                bodies.append(body)
            if c.count - first != count or c.head.hex() != opus["head"]:
                problems.append(
                    Problem(what, None, "the Opus records do not make the transcoded chain")
                )
            if not problems:
                key = self.call_keys.get(tenant, call_id)
                for body in bodies:
                    rec.parse(rec.AUDIO, body).decrypt_audio(key)
            leaves = [
                (e.log_index, leaf_data(LEAF_SEAL, tenant, call_id, mb.seal, mb.end_us), "seal"),
                (
                    e.transcode_log_index,
                    transcode_leaf(
                        tenant, call_id, raw_head, bytes.fromhex(opus["head"]), tb.doc, tb.time_us
                    ),
                    "transcoding",
                ),
            ]
            for index, data, name in leaves:
                if not 0 <= index < self.log.size or self.log.leaf_hash(index) != merkle.leaf_hash(
                    data
                ):
                    problems.append(Problem(what, None, f"the {name} is not in the Merkle log"))
        except (CallvaultError, KeyError, ValueError) as ex:
            problems.append(Problem(what, None, str(ex)))
        return problems

    def _verify_erased(self, e: CallEntry, what: str) -> list[Problem]:
        """An erased call: its audio is shredded and dead (a reclaim may have removed
        it, docs/format.md 8.11), so what is checked is what stays: the SEAL record
        (its seal recomputed from the head, count and manifest it holds, equal to the
        index's), the seal's leaf and the erasure's leaf in the Merkle log."""
        problems: list[Problem] = []
        tomb = self.index.tenant_erasure(e.tenant)
        with_tenant = tomb is not None and e.erase_log_index == tomb["log_index"]
        if with_tenant and (not e.seal or e.manifest_ref is None):
            return self._verify_tenant_leaf(e, what, tomb)  # erased while open
        if not e.seal or e.manifest_ref is None:
            return [Problem(what, None, "erased, but its seal is not in the index")]
        try:
            mb = self._seal_record(e)
        except CallvaultError as ex:
            return [Problem(what, None, f"its seal record cannot be read: {ex}")]
        if (mb.tenant, mb.call_id) != (e.tenant, e.call_id):
            problems.append(Problem(what, None, "its seal record belongs elsewhere"))
        if chainmod.seal(mb.head, mb.count, mb.manifest) != mb.seal or mb.seal.hex() != e.seal:
            problems.append(Problem(what, None, "its seal record does not verify"))
        if (mb.count, mb.head.hex()) != (e.records, e.chain_head):
            problems.append(Problem(what, None, "the index's chain disagrees with the seal"))
        leaves: tuple[tuple[int, bytes, str], ...] = (
            (e.log_index, leaf_data(LEAF_SEAL, e.tenant, e.call_id, mb.seal, mb.end_us), "seal"),
            (
                e.erase_log_index,
                leaf_data(
                    LEAF_ERASE,
                    e.tenant,
                    e.call_id,
                    hashlib.sha256(e.erase_reason.encode()).digest(),
                    e.erased_us,
                ),
                "erasure",
            ),
        )
        if with_tenant:  # erased with its tenant: the tenant erasure's leaf (kind 6)
            leaves = leaves[:1]
            problems += self._verify_tenant_leaf(e, what, tomb)
        for index, data, name in leaves:
            leaf = merkle.leaf_hash(data)
            if not 0 <= index < self.log.size or self.log.leaf_hash(index) != leaf:
                problems.append(Problem(what, None, f"the {name} is not in the Merkle log"))
        return problems

    def _verify_tenant_leaf(self, e: CallEntry, what: str, tomb: Any) -> list[Problem]:
        """A call erased with its tenant (docs/format.md 8.6): the tenant erasure's
        leaf is in the log at the tombstone's index."""
        data = tenant_erase_leaf(e.tenant, str(tomb["reason"]), int(tomb["time_us"]))
        index = int(tomb["log_index"])
        if not 0 <= index < self.log.size or self.log.leaf_hash(index) != merkle.leaf_hash(data):
            return [
                Problem(what, None, f"the erasure of tenant {e.tenant} is not in the Merkle log")
            ]
        return []

    def _safe_records(
        self, tenant: str, call_id: str, problems: list[Problem], what: str
    ) -> Iterator[tuple[int, RecordEntry, bytes]]:
        """stored_records, a record that cannot be read added to ``problems``."""
        for i, entry in self.audio_records(self.get_call(call_id, tenant=tenant)):
            try:
                raw = self._body(entry)
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
        if not self.read_only:  # a read-only open has no writer (and recovered nothing)
            self._writer.flush()
        reader = SegmentReader(self.path / "segments", fs=self.fs)  # no cached headers
        # read-only (beside a writer, or before recovery): a bad record past what the
        # index holds is the tail being written, or a torn tail recovery will cut
        tail = self.index.get_meta(b"meta/end") if self.read_only else None
        try:
            with self._reclaim_lock:  # no segment removed under the scan
                for _ in reader.scan():
                    pass
        except CorruptRecord as ex:
            end_seg, end_off = struct.unpack(">QQ", tail) if tail is not None else (0, 0)
            rank = {seg: i for i, seg in enumerate(reader.segments())}  # the store's order
            if tail is None or (rank.get(ex.segment, -1), ex.offset) < (
                rank.get(end_seg, len(rank)),
                end_off,
            ):
                problems.append(Problem("segments", None, str(ex)))
        except CallvaultError as ex:
            problems.append(Problem("segments", None, str(ex)))
        finally:
            reader.close()
        yield "segments", problems
        for tenant in self.index.tenants():
            for e in self.list_calls(tenant=tenant):
                yield f"call {e.call_id}", self.verify_call(e.call_id, tenant=tenant)


# the manifest fields each version seals (docs/format.md 8.5, 8.14), with the entry's
# value when the manifest has none (version 2 writes recording_id, decision and
# retention only when the call has them)
SEALED_V1 = (
    "tenant",
    "call_id",
    "start_us",
    "end_us",
    "direction",
    "agent",
    "skill_group",
    "tags",
    "legs",
    "customer_number_sealed",
)
SEALED_V2 = ("extra", "recording_id", "decision", "retention")
_ABSENT: dict[str, Any] = {"extra": {}, "recording_id": None, "decision": None, "retention": None}
_OPEN_DEFAULTS: dict[str, Any] = {
    "direction": "",
    "agent": "",
    "skill_group": "",
    "tags": [],
    "legs": [],
    "customer_number_sealed": "",
    "extra": {},
    "recording_id": None,
    "decision": None,
}


def manifest_version(m: dict[str, Any]) -> int:
    v = m.get("version", 1)
    return v if isinstance(v, int) else 1


def sealed_fields(m: dict[str, Any]) -> dict[str, Any]:
    """The metadata the manifest ``m`` seals, by call entry field name."""
    out = {name: m.get(name) for name in SEALED_V1}
    if manifest_version(m) >= 2:
        out.update({name: m.get(name, _ABSENT[name]) for name in SEALED_V2})
    return out


def not_sealed(m: dict[str, Any]) -> list[str]:
    """The metadata fields a manifest of an older version does not cover (verify
    cannot check them): e.g. ``extra`` for version 1."""
    return [] if manifest_version(m) >= 2 else list(SEALED_V2[:3])


def _norm(value: Any) -> Any:
    """A value as JSON has it (tuples as lists), for comparing the index's with a
    record's."""
    return json.loads(json.dumps(value, sort_keys=True))


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (the common case compared without a round trip)."""
    return a == b or _norm(a) == _norm(b)


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 160 else text[:157] + "..."


def _differs(
    what: str, name: str, where: str, mine: Any, theirs: Any, sealed: str = "the seal"
) -> Problem:
    return Problem(what, None, f"{name}: {where} says {_show(mine)}, {sealed} says {_show(theirs)}")

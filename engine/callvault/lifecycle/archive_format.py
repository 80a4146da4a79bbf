"""The archive object's format (docs/format.md 8.17): one self-describing container
per archived call (its records as stored, its wrapped key files, its tenant's
wrapped KEKs, a SHA-256 trailer), and the small ones of its later LIFECYCLE
records. No S3 here (callvault.lifecycle.archive moves them)."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from crc32c import crc32c

from callvault.store import records as rec
from callvault.vault import VaultError

MAGIC = b"CVARCHV\x00"
# 2: the OPEN record is the call's own, as stored (1: rebuilt from the manifest,
# which loses what a version-1 manifest does not seal and the subject HMACs)
VERSION = 2
READABLE = (1, 2)
HEADER = struct.Struct("<8sHHI")  # magic, version, header size, CRC-32C of bytes 0..12
FRAME = struct.Struct("<IIBBH")  # CRC-32C, body length, kind, flags, reserved
_FRAME_TAIL = struct.Struct("<IBBH")
K_META, K_RECORD, K_CALL_KEY, K_NUMBER_KEY, K_TENANT_KEK, K_TRAILER = 1, 2, 3, 4, 5, 15
MAX_SECTION = 1 << 30
SUFFIX = ".cva"
LC_INFIX = ".lc/"  # <object key>.lc/<seq>: the call's later LIFECYCLE records
ERASED = "erased/"  # <prefix>erased/...: the erasure markers (unlocked, small JSON)


class ArchiveError(VaultError):
    """The archive could not do what was asked (S3 refused, an object does not
    verify, a setting is wrong); nothing local was changed by the failed step."""


# -- the object ------------------------------------------------------------------


def _frame(kind: int, body: bytes, flags: int = 0) -> bytes:
    tail = _FRAME_TAIL.pack(len(body), kind, flags, 0)
    return struct.pack("<I", crc32c(body, crc32c(tail))) + tail + body


@dataclass
class CallObject:
    """A parsed archive object (docs/format.md 8.17)."""

    meta: dict[str, Any]
    records: list[tuple[int, bytes]]  # (record type, body as stored), in chain order
    call_key: bytes
    number_key: bytes | None
    keks: dict[int, bytes]  # tenant KEK generation -> its file as stored
    sha256: str
    version: int = VERSION

    def audio(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for rtype, body in self.records:
            if rtype == rec.AUDIO:
                out[rec.parse(rec.AUDIO, body).chain_index] = body
        return out

    def first(self, rtype: int) -> bytes | None:
        return next((b for t, b in self.records if t == rtype), None)


def build_object(
    meta: dict[str, Any],
    records: list[tuple[int, bytes]],
    call_key: bytes,
    number_key: bytes | None,
    keks: dict[int, bytes],
    version: int = VERSION,
) -> bytes:
    if version not in READABLE:
        raise ArchiveError(f"archive object format version {version} is not one this build writes")
    parts = [HEADER.pack(MAGIC, version, HEADER.size, 0)[:12]]
    parts[0] += struct.pack("<I", crc32c(parts[0]))
    parts.append(_frame(K_META, json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()))
    for rtype, body in records:
        parts.append(_frame(K_RECORD, body, rtype))
    if call_key:
        parts.append(_frame(K_CALL_KEY, call_key))
    if number_key is not None:
        parts.append(_frame(K_NUMBER_KEY, number_key))
    for gen, data in sorted(keks.items()):
        parts.append(_frame(K_TENANT_KEK, struct.pack("<I", gen) + data))
    data = b"".join(parts)
    return data + _frame(K_TRAILER, hashlib.sha256(data).digest())


def parse_object(data: bytes, what: str = "archive object") -> CallObject:
    """Parse and check an object: header, every frame's CRC, the trailer's SHA-256 of
    everything before it, nothing after it. ArchiveError says what is wrong."""
    if len(data) < HEADER.size:
        raise ArchiveError(f"{what}: {len(data)} bytes, shorter than its header")
    magic, version, hsize, crc = HEADER.unpack_from(data, 0)
    if magic != MAGIC or crc != crc32c(data[:12]):
        raise ArchiveError(f"{what}: not a callvault archive object (bad header)")
    if version not in READABLE or hsize != HEADER.size:
        raise ArchiveError(
            f"{what}: format version {version}; this build reads versions "
            + ", ".join(map(str, READABLE))
        )
    pos = HEADER.size
    meta: dict[str, Any] | None = None
    records: list[tuple[int, bytes]] = []
    call_key = b""
    number_key: bytes | None = None
    keks: dict[int, bytes] = {}
    while pos < len(data):
        if len(data) - pos < FRAME.size:
            raise ArchiveError(f"{what}: truncated at byte {pos}")
        crc, n, kind, flags, _ = FRAME.unpack_from(data, pos)
        end = pos + FRAME.size + n
        if n > MAX_SECTION or end > len(data):
            raise ArchiveError(f"{what}: truncated section at byte {pos}")
        body = data[pos + FRAME.size : end]
        if crc != crc32c(body, crc32c(data[pos + 4 : pos + FRAME.size])):
            raise ArchiveError(f"{what}: section at byte {pos} fails its CRC")
        if kind == K_TRAILER:
            if end != len(data):
                raise ArchiveError(f"{what}: bytes after the trailer")
            if body != hashlib.sha256(data[:pos]).digest():
                raise ArchiveError(f"{what}: its SHA-256 trailer does not match its contents")
            if meta is None or (not call_key and meta.get("kind") != "lifecycle"):
                raise ArchiveError(f"{what}: no metadata or no key file")
            return CallObject(
                meta,
                records,
                call_key,
                number_key,
                keks,
                hashlib.sha256(data).hexdigest(),
                version,
            )
        if kind == K_META:
            meta = json.loads(body)
        elif kind == K_RECORD:
            records.append((flags, body))
        elif kind == K_CALL_KEY:
            call_key = body
        elif kind == K_NUMBER_KEY:
            number_key = body
        elif kind == K_TENANT_KEK:
            (gen,) = struct.unpack_from("<I", body)
            keks[gen] = body[4:]
        else:
            raise ArchiveError(f"{what}: unknown section kind {kind} at byte {pos}")
        pos = end
    raise ArchiveError(f"{what}: no trailer (truncated)")


def open_body_from_manifest(m: dict[str, Any]) -> bytes:
    """The call's OPEN record rebuilt from its sealed manifest (version 2 seals every
    metadata field the OPEN record holds; the OPEN record is not chained)."""
    meta: dict[str, Any] = {
        "direction": m["direction"],
        "agent": m["agent"],
        "skill_group": m["skill_group"],
        "tags": list(m["tags"]),
        "legs": list(m["legs"]),
        "customer_number_sealed": m["customer_number_sealed"],
        "extra": m.get("extra") or {},
    }
    if m.get("recording_id") is not None:
        meta["recording_id"] = m["recording_id"]
    if m.get("decision") is not None:
        meta["decision"] = m["decision"]
    return rec.open_body(m["tenant"], m["call_id"], int(m["start_us"]), meta)


def check_open(obj: CallObject, what: str) -> None:
    """The object's OPEN record against its SEAL record: this call's, and every
    metadata field the manifest seals (docs/format.md 8.14) the same. ArchiveError
    names the first field that differs (an object altered before it was written)."""
    from callvault.vault.verify import _OPEN_DEFAULTS, sealed_fields

    ob, sb = obj.first(rec.OPEN), obj.first(rec.SEAL)
    if ob is None or sb is None:
        raise ArchiveError(f"{what}: no OPEN or no SEAL record")
    o, s = rec.parse(rec.OPEN, ob), rec.parse(rec.SEAL, sb)
    ids = (obj.meta.get("tenant"), obj.meta.get("call_id"))
    if (o.tenant, o.call_id) != ids or (s.tenant, s.call_id) != ids:
        raise ArchiveError(f"{what}: its OPEN or SEAL record is another call's")
    sealed = sealed_fields(json.loads(s.manifest))
    meta = dict(o.meta or {})
    opened: dict[str, Any] = {"start_us": o.start_us}
    for name in sealed:
        if name not in ("tenant", "call_id", "start_us", "end_us", "retention"):
            opened[name] = meta.get(name, _OPEN_DEFAULTS.get(name))
    for name, value in opened.items():
        if json.dumps(value, sort_keys=True) != json.dumps(sealed[name], sort_keys=True):
            raise ArchiveError(
                f"{what}: its OPEN record's {name} differs from what the seal covers"
            )


def erased_call_key(prefix: str, tenant: str, call_id: str, seal: str) -> str:
    """The marker of an erased call's object (docs/format.md 8.17)."""
    h = hashlib.sha256(rec.call_aad(tenant, call_id)).hexdigest()
    return f"{prefix}{ERASED}calls/{h}/{seal}.json"


def erased_tenant_key(prefix: str, tenant: str) -> str:
    """The marker of an erased tenant."""
    return f"{prefix}{ERASED}tenants/{hashlib.sha256(tenant.encode()).hexdigest()}.json"


def marker(
    kind: str, tenant: str, call_id: str, seal: str, erased_us: int, log_index: int, reason: str
) -> bytes:
    """An erasure marker's body: canonical JSON; the reason only as its SHA-256 (it
    may name the data subject)."""
    doc = {
        "format": 1,
        "kind": kind,
        "tenant": tenant,
        "call_id": call_id,
        "seal": seal,
        "erased_us": int(erased_us),
        "log_index": int(log_index),
        "reason_sha256": hashlib.sha256(reason.encode()).hexdigest(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_marker(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != 1:
            raise ValueError("not a version-1 marker")
        doc["erased_us"] = int(doc["erased_us"])
        doc["log_index"] = int(doc["log_index"])
        if doc["kind"] not in ("call", "tenant") or not isinstance(doc["tenant"], str):
            raise ValueError("bad kind or tenant")
        return doc
    except (ValueError, KeyError, TypeError) as e:
        raise ArchiveError(f"{what}: not an erasure marker ({e})") from None


def object_key(prefix: str, tenant: str, call_id: str, seal: str) -> str:
    h = hashlib.sha256(rec.call_aad(tenant, call_id)).hexdigest()
    return f"{prefix}calls/{h}/{seal}{SUFFIX}"


def record_key(call_object_key: str, seq: int) -> str:
    """The key of a call's LIFECYCLE record ``seq`` written after it was archived."""
    return f"{call_object_key}{LC_INFIX}{seq:08d}"

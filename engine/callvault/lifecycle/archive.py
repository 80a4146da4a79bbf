"""The archive tier: sealed calls moved to S3 with Object Lock (issue 12 section 7;
docs/format.md 8.17, docs/policy.md "Archive").

One object per call, ``<prefix>calls/<sha256(tenant 00 call_id)>/<seal hex>.cva``: a
self-describing container of the call's records exactly as stored (OPEN, AUDIO...,
SEAL, TRANSCODE, LIFECYCLE: still encrypted under the call's data key), its key files
as stored (wrapped by the tenant's KEK) and the tenant's KEK generations as stored
(wrapped by the vault's key file), CRC-framed, with a SHA-256 trailer. The bucket
alone reveals nothing; with the key file it rebuilds the catalog
(``rebuild_catalog``). Each run also uploads the Merkle log (``log/tree.NNNNNNNN``) and
the last checkpoint (``log/checkpoint``).

The object carries S3 Object Lock: COMPLIANCE until the call's retention end when
its retention mode is compliance, GOVERNANCE until it otherwise (``modes``); a call
without a retention end gets no lock date. A call under a legal hold gets the
object's legal hold; later holds, releases and retention extensions are mirrored
(``vault.after_change``).

Order of a call's archiving, each step durable before the next: PUT; read back
(GET, SHA-256 and format checked); the LIFECYCLE record op "archive" (sets
``archive``); then, on eviction, the record op "evict" (sets ``local`` False: the
audio records become dead, the key stays). A crash between any two steps leaves the
call whole on disk: the next run PUTs again (a new version) or evicts.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callvault.durable import write_atomic
from callvault.errors import InputError
from callvault.integrity import chain as chainmod
from callvault.lifecycle.archive_format import (
    ERASED,
    LC_INFIX,
    SUFFIX,
    VERSION,
    ArchiveError,
    CallObject,
    build_object,
    check_open,
    erased_call_key,
    erased_tenant_key,
    marker,
    object_key,
    open_body_from_manifest,
    parse_marker,
    parse_object,
    record_key,
)
from callvault.store import records as rec
from callvault.store.index import CallEntry
from callvault.store.segment import CorruptRecord, RecordRef
from callvault.vault import Vault
from callvault.vault.keys import KEK_SUFFIX, crash_point

log = logging.getLogger("callvault.archive")

LOG_PART = "log/tree."  # + 8 digits: the Merkle log's tree in parts of LOG_PART_BYTES
LOG_PART_BYTES = 64 << 20
SETTINGS_FILE = "archive.toml"  # DATA/archive.toml: the [archive] section (0600)
DEFAULT_MODES = {"compliance": "COMPLIANCE", "governance": "GOVERNANCE", "default": "GOVERNANCE"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(value: Any, what: str) -> int:
    """'30d', '12h', '90m', '45s', '2w', '1y' (365 days), or seconds as a number ->
    microseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return int(value * 1_000_000)
    m = re.fullmatch(r"\s*(\d+)\s*([smhdwy])\s*", str(value))
    if not m:
        raise InputError(f"[archive] {what} = {value!r}: a duration such as 30d, 12h, 0s")
    return int(m.group(1)) * _UNITS[m.group(2)] * 1_000_000


@dataclass
class Settings:
    """The ``[archive]`` section (docs/policy.md "Archive")."""

    bucket: str
    endpoint: str | None = None  # None: AWS S3 (boto3's default endpoint for region)
    region: str = "us-east-1"
    access_key: str | None = None  # None: boto3's own chain (env, ~/.aws, instance role)
    secret_key: str | None = None
    prefix: str = ""
    after_us: int = 30 * 86400 * 1_000_000  # archive calls sealed at least this long ago
    evict: bool = True  # drop the local audio once archived and verified
    interval_s: float = 3600.0  # the server's schedule (0: never)
    limit: int = 0  # calls per scheduled run (0: all due)
    modes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODES))
    path_style: bool = True  # path-style addressing (SeaweedFS, Ceph RGW, MinIO)
    cache_objects: int = 4  # fetched objects kept in memory for reads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Settings:
        d = dict(d)
        known = {
            "bucket",
            "endpoint",
            "region",
            "access_key",
            "secret_key",
            "credentials_file",
            "prefix",
            "after",
            "evict",
            "interval_s",
            "limit",
            "modes",
            "path_style",
            "cache_objects",
        }
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"[archive]: unknown setting(s) {', '.join(unknown)}")
        bucket = d.get("bucket")
        if not isinstance(bucket, str) or not re.fullmatch(
            r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket
        ):
            raise InputError(f"[archive] bucket = {bucket!r}: an S3 bucket name is required")
        s = cls(bucket=bucket)
        if d.get("endpoint") is not None:
            s.endpoint = str(d["endpoint"])
            if not re.match(r"https?://", s.endpoint):
                raise InputError(f"[archive] endpoint = {s.endpoint!r}: http(s)://HOST[:PORT]")
        s.region = str(d.get("region", s.region))
        if "credentials_file" in d:  # TOML with access_key and secret_key
            import tomllib

            p = Path(str(d["credentials_file"]))
            try:
                creds = tomllib.loads(p.read_text())
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise InputError(f"[archive] credentials_file {p}: {e}") from None
            d.setdefault("access_key", creds.get("access_key"))
            d.setdefault("secret_key", creds.get("secret_key"))
        s.access_key = d.get("access_key")
        s.secret_key = d.get("secret_key")
        if (s.access_key is None) != (s.secret_key is None):
            raise InputError("[archive]: access_key and secret_key go together")
        s.prefix = str(d.get("prefix", ""))
        if s.prefix and not s.prefix.endswith("/"):
            s.prefix += "/"
        if "after" in d:
            s.after_us = parse_duration(d["after"], "after")
        s.evict = bool(d.get("evict", True))
        s.interval_s = float(d.get("interval_s", s.interval_s))
        s.limit = int(d.get("limit", 0))
        s.path_style = bool(d.get("path_style", True))
        s.cache_objects = int(d.get("cache_objects", s.cache_objects))
        if s.interval_s < 0 or s.limit < 0 or s.cache_objects < 0:
            raise InputError("[archive] interval_s, limit and cache_objects are 0 or more")
        modes = d.get("modes", {})
        if not isinstance(modes, dict):
            raise InputError(
                "[archive] modes: a table {compliance=..., governance=..., default=...}"
            )
        for k, v in modes.items():
            if k not in DEFAULT_MODES or v not in ("COMPLIANCE", "GOVERNANCE", "NONE"):
                raise InputError(
                    f"[archive] modes.{k} = {v!r}: compliance/governance/default -> "
                    "COMPLIANCE, GOVERNANCE or NONE"
                )
            s.modes[k] = v
        if s.modes["compliance"] != "COMPLIANCE":
            raise InputError("[archive] modes.compliance must stay COMPLIANCE")
        return s


def _utc(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC)


def _said(e: BaseException) -> str:
    """An S3 error as a sentence, with what to do for the known ones."""
    if _code(e) == "RequestTimeTooSkewed":
        return (
            f"{e} (this host's clock and the S3 server's differ by more than S3 allows, "
            "usually 15 minutes: set the clock right, e.g. with NTP)"
        )
    return str(e)


def _code(e: BaseException) -> str:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", ""))
    return ""


# -- the archive -----------------------------------------------------------------


def make_client(s: Settings) -> Any:
    """A boto3 S3 client for the settings (boto3 imported only when an archive is used)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s.endpoint,
        region_name=s.region,
        aws_access_key_id=s.access_key,
        aws_secret_access_key=s.secret_key,
        config=Config(
            s3={"addressing_style": "path" if s.path_style else "auto"},
            retries={"max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
        ),
    )


def _archive_hook(hook: object) -> bool:
    return isinstance(getattr(hook, "__self__", None), Archive)


class Archive:
    """One vault's archive in one bucket. Thread-safe for reads; runs are serialized."""

    def __init__(self, vault: Vault, settings: Settings, client: Any = None) -> None:
        self.vault = vault
        self.settings = settings
        self._client = client
        self._run_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[str, str, str], CallObject] = (
            collections.OrderedDict()
        )
        self.last_error = ""  # the last run's or mirror's failure (Admin.Stats)
        self.archived_total = 0  # by this process
        self.evicted_total = 0
        self.mirror_pending: set[tuple[str, str]] = set()  # holds/retention to re-mirror
        self._status: tuple[float, dict[str, Any]] | None = None
        self.records_pending: set[tuple[str, str]] = set()  # later records to upload
        self._synced_once = False  # the first run re-mirrors the calls that may lag
        self._log_parts: dict[str, int] | None = None  # log part key -> size uploaded
        # erasures whose marker is not in the bucket yet: (tenant, call_id or "")
        self.markers_pending: set[tuple[str, str]] = set()

    @classmethod
    def from_settings(cls, vault: Vault, settings: dict[str, Any] | Settings) -> Archive:
        s = settings if isinstance(settings, Settings) else Settings.from_dict(settings)
        return cls(vault, s)

    @property
    def s3(self) -> Any:
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

    def attach(self) -> Archive:
        """Serve evicted calls' reads from the archive, mirror later holds and
        retention changes onto archived objects and upload their later lifecycle
        records; replaces an archive attached before (one per vault)."""
        v = self.vault
        v.fetch_archived = self.audio_bodies
        # one archive per vault: this one replaces any attached before
        v.after_change[:] = [h for h in v.after_change if not _archive_hook(h)]
        v.after_record[:] = [h for h in v.after_record if not _archive_hook(h)]
        v.after_erase[:] = [h for h in v.after_erase if not _archive_hook(h)]
        v.after_change.append(self.mirror)
        v.after_record.append(self.upload_record)
        v.after_erase.append(self.mark_erased)
        return self

    def key_of(self, e: CallEntry) -> str:
        return object_key(self.settings.prefix, e.tenant, e.call_id, e.seal)

    # -- which calls ---------------------------------------------------------

    def _calls(self) -> Iterator[CallEntry]:
        for tenant in self.vault.index.tenants():
            yield from self.vault.list_calls(tenant=tenant)

    def due(self, now_us: int) -> list[CallEntry]:
        """Sealed calls, not erased, still local, sealed at least ``after`` before
        ``now_us``, not archived yet; a raw (peak mode) call once compacted. Oldest
        first."""
        cut = now_us - self.settings.after_us
        out = [
            e
            for e in self._calls()
            if e.state == "sealed"
            and e.local
            and e.archive is None
            and e.storage != "raw"
            and e.end_us <= cut
        ]
        return sorted(out, key=lambda e: (e.end_us, e.tenant, e.call_id))

    def evictable(self) -> list[CallEntry]:
        """Archived calls whose local audio is still here, not under a legal hold."""
        return [
            e
            for e in self._calls()
            if e.state == "sealed" and e.local and e.archive and not e.holds
        ]

    # -- building ------------------------------------------------------------

    def _lifecycle_records(self, e: CallEntry) -> list[bytes]:
        """The call's LIFECYCLE records as stored: found by scanning the segments from
        its seal on, checked to make its lifecycle chain up to the index's head."""
        if not e.lifecycle_count:
            return []
        assert e.manifest_ref is not None
        reader = self.vault._reader
        found: list[bytes] = []
        with self.vault._reclaim_lock:  # no segment removed under the scan
            segs = reader.segments()  # in the store's order
            first = segs.index(e.manifest_ref[0]) if e.manifest_ref[0] in segs else 0
            for seg in segs[first:]:
                start = e.manifest_ref[1] if seg == e.manifest_ref[0] else 0
                try:
                    for _ref, rtype, body in reader.scan(seg, start):
                        if rtype != rec.LIFECYCLE:
                            continue
                        b = rec.parse(rtype, body)
                        if (b.tenant, b.call_id) == (e.tenant, e.call_id):
                            found.append(body)
                except CorruptRecord:
                    break  # the tail being written: what the index holds is before it
                if len(found) >= e.lifecycle_count:
                    break
        found = found[: e.lifecycle_count]
        link = bytes.fromhex(e.seal)
        for seq, body in enumerate(found, 1):
            link = chainmod.lifecycle_link(link, seq, body)
        if len(found) != e.lifecycle_count or link.hex() != e.lifecycle_head:
            raise ArchiveError(
                f"call {e.call_id}: its {e.lifecycle_count} lifecycle record(s) were not "
                "found whole in the segments"
            )
        return found

    def build(self, e: CallEntry) -> tuple[bytes, dict[str, Any]]:
        """The call's object (docs/format.md 8.17) and its metadata."""
        v = self.vault
        sb = v._seal_record(e)
        manifest = json.loads(sb.manifest)
        # the OPEN record as stored (format 2); an entry indexed before its place was
        # kept: rebuilt from the manifest (what it seals; no subject HMACs)
        if e.open_ref is not None:
            ob = v._reader.read(RecordRef(*e.open_ref))[1]
        else:
            ob = open_body_from_manifest(manifest)
        records: list[tuple[int, bytes]] = [(rec.OPEN, ob)]
        audio = [(i, v._body(r)) for i, r in v.audio_records(e)]
        # in the order they were stored: a compacted call's Opus records and its
        # TRANSCODE record came after its seal (docs/format.md 8.10)
        if e.transcode_ref is not None:
            tb, _doc = v.transcoding(e)
            records.append((rec.SEAL, sb.raw))
            records += [(rec.AUDIO, body) for _, body in audio]
            records.append((rec.TRANSCODE, tb.raw))
        else:
            records += [(rec.AUDIO, body) for _, body in audio]
            records.append((rec.SEAL, sb.raw))
        records += [(rec.LIFECYCLE, body) for body in self._lifecycle_records(e)]
        keys = v.call_keys
        call_key = keys.path(e.tenant, e.call_id).read_bytes()
        np = keys.number_path(e.tenant, e.call_id)
        number_key = np.read_bytes() if np.exists() else None
        keks = {
            gen: keys.tenants.path(e.tenant, gen).read_bytes()
            for gen in keys.tenants.generations(e.tenant)
        }
        meta = {
            "format": VERSION,
            "open": "stored" if e.open_ref is not None else "manifest",
            "tenant": e.tenant,
            "call_id": e.call_id,
            "seal": e.seal,
            "storage": e.storage,
            "audio_records": len(audio),
            "first_audio": audio[0][0] if audio else 0,
            "lifecycle_count": e.lifecycle_count,
            "lifecycle_head": e.lifecycle_head,
            "built_us": v.clock(),
        }
        return build_object(meta, records, call_key, number_key, keks), meta

    # -- one call ------------------------------------------------------------

    def lock_of(self, e: CallEntry, now_us: int) -> tuple[str, int]:
        """(S3 Object Lock mode or "NONE", retain-until µs) for the call's retention."""
        r = e.retention or {}
        until = int(r.get("until_us", 0) or 0)
        mode = self.settings.modes.get(str(r.get("mode", "default")), "GOVERNANCE")
        if until <= now_us or mode == "NONE":
            return "NONE", 0
        return mode, until

    def archive_call(self, e: CallEntry) -> CallEntry:
        """Build, PUT with Object Lock, read back and check, then record ``archive``.
        Returns the entry after the LIFECYCLE record."""
        if e.state != "sealed" or not e.local:
            raise ArchiveError(f"call {e.call_id} is {e.state}{'' if e.local else ', evicted'}")
        if e.archive is not None:
            return e
        data, _meta = self.build(e)
        sha = hashlib.sha256(data)
        key = self.key_of(e)
        now = self.vault.clock()
        mode, until = self.lock_of(e, now)
        args: dict[str, Any] = {
            "Bucket": self.settings.bucket,
            "Key": key,
            "Body": data,
            "ChecksumSHA256": base64.b64encode(sha.digest()).decode(),
            "ContentType": "application/vnd.callvault.archive",
        }
        if mode != "NONE":
            args["ObjectLockMode"] = mode
            args["ObjectLockRetainUntilDate"] = _utc(until)
        if e.holds:
            args["ObjectLockLegalHoldStatus"] = "ON"
        try:
            put = self.s3.put_object(**args)
        except Exception as ex:
            raise ArchiveError(
                f"call {e.call_id}: PUT s3://{self.settings.bucket}/{key}: {_said(ex)}"
            ) from ex
        version = put.get("VersionId")
        if not version or version == "null":
            raise ArchiveError(
                f"bucket {self.settings.bucket} gave no object version: it must be created "
                "with Object Lock enabled (versioning on)"
            )
        crash_point("archive-put")  # stored in S3, not recorded (tests)
        got = self._get(key, version, e.call_id)
        if hashlib.sha256(got).hexdigest() != sha.hexdigest():
            raise ArchiveError(f"call {e.call_id}: the object read back differs from what was sent")
        parse_object(got, key)
        doc = {
            "bucket": self.settings.bucket,
            "key": key,
            "version_id": version,
            "sha256": sha.hexdigest(),
            "size": len(data),
            "archived_us": now,
            "mode": mode,
            "retain_until_us": until,
            "legal_hold": bool(e.holds),
            "object_lifecycle_count": e.lifecycle_count,  # later records: <key>.lc/<seq>
        }
        e = self.vault.change(
            e.call_id,
            tenant=e.tenant,
            op="archive",
            changes={"archive": doc},
            reason=f"archived to s3://{self.settings.bucket}/{key}",
            expect_seq=e.lifecycle_count,
        )
        crash_point("archive-recorded")  # archived, not evicted (tests)
        self.archived_total += 1
        return e

    def _get(self, key: str, version: str, call_id: str) -> bytes:
        try:
            r = self.s3.get_object(Bucket=self.settings.bucket, Key=key, VersionId=version)
            return bytes(r["Body"].read())
        except Exception as ex:
            raise ArchiveError(
                f"call {call_id}: GET s3://{self.settings.bucket}/{key}: {_said(ex)}"
            ) from ex

    def evict(self, e: CallEntry) -> CallEntry:
        """Let go of the local audio of an archived call whose object is there and
        verifies (GET, SHA-256, format, the audio chain against the seal). A call under
        a legal hold is never evicted (issue 12: held calls stay whole where they are);
        one evicted before the hold stays in the archive, its object held."""
        if not e.local:
            return e
        if e.archive is None or e.state != "sealed":
            raise ArchiveError(f"call {e.call_id} is not archived: its audio stays local")
        if e.holds:
            raise ArchiveError(
                f"call {e.call_id} is under legal hold {', '.join(sorted(e.holds))}: its "
                "local audio is not let go of"
            )
        obj = self.fetch(e)
        local = {i: self.vault._body(r) for i, r in self.vault.audio_records(e)}
        if obj.audio() != local:
            raise ArchiveError(
                f"call {e.call_id}: its archive object's audio differs from the disk's"
            )
        return self._evicted(
            self.vault.change(
                e.call_id,
                tenant=e.tenant,
                op="evict",
                changes={"local": False},
                reason=f"archived in s3://{e.archive['bucket']}/{e.archive['key']}",
                expect_seq=e.lifecycle_count,
            )
        )

    def _evicted(self, e: CallEntry) -> CallEntry:
        self.evicted_total += 1
        return e

    # -- reading -------------------------------------------------------------

    def fetch(self, e: CallEntry) -> CallObject:
        """The call's archive object, fetched (or from the small cache) and verified:
        its SHA-256 is the one the call's chained ``archive`` record names, its format
        checks, it is this call's, and (not compacted) its audio makes the sealed chain."""
        a = e.archive
        if not a:
            raise ArchiveError(f"call {e.call_id} is not archived")
        ck = (e.tenant, e.call_id, str(a["sha256"]))
        with self._cache_lock:
            hit = self._cache.get(ck)
            if hit is not None:
                self._cache.move_to_end(ck)
                return hit
        data = self._get(str(a["key"]), str(a["version_id"]), e.call_id)
        if hashlib.sha256(data).hexdigest() != a["sha256"]:
            raise ArchiveError(
                f"call {e.call_id}: its archive object does not match the SHA-256 recorded "
                "when it was archived (altered or replaced in the bucket)"
            )
        obj = parse_object(data, str(a["key"]))
        m = obj.meta
        if (m.get("tenant"), m.get("call_id"), m.get("seal")) != (e.tenant, e.call_id, e.seal):
            raise ArchiveError(f"call {e.call_id}: its archive object is another call's")
        if e.storage != "compacted":
            sb = self.vault._seal_record(e)
            bodies = [b for _, b in sorted(obj.audio().items())]
            try:
                chainmod.verify(
                    e.tenant,
                    e.call_id,
                    bodies,
                    expect_head=sb.head,
                    expect_count=sb.count,
                    manifest=sb.manifest,
                    expect_seal=sb.seal,
                )
            except chainmod.ChainError as ex:
                raise ArchiveError(f"call {e.call_id}: archived audio: {ex}") from ex
        if self.settings.cache_objects:
            with self._cache_lock:
                self._cache[ck] = obj
                while len(self._cache) > self.settings.cache_objects:
                    self._cache.popitem(last=False)
        return obj

    def audio_bodies(self, e: CallEntry) -> dict[int, bytes]:
        """The Vault.fetch_archived hook."""
        return self.fetch(e).audio()

    # -- holds, retention, deletion -----------------------------------------

    def upload_record(self, e: CallEntry, body: bytes) -> None:
        """vault.after_record: a LIFECYCLE record of an archived call (the ``archive``
        record itself and every later one) goes to ``<key>.lc/<seq>``, locked as the
        call is, so a rebuilt catalog has the call's whole lifecycle chain. A failure
        is kept and the records are uploaded again by the next run."""
        a = e.archive
        if not a or a.get("deleted_us") or str(a.get("bucket")) != self.settings.bucket:
            return
        try:
            self._put_record(e, e.lifecycle_count, body)
        except Exception as ex:  # the change is durable already: report, retry later
            self.records_pending.add((e.tenant, e.call_id))
            self.last_error = f"call {e.call_id}: uploading lifecycle record: {_said(ex)}"
            log.error("%s", self.last_error)

    def _put_record(self, e: CallEntry, seq: int, body: bytes) -> None:
        a = e.archive
        assert a is not None
        meta = {
            "format": 1,
            "kind": "lifecycle",
            "tenant": e.tenant,
            "call_id": e.call_id,
            "seal": e.seal,
            "seq": seq,
        }
        data = build_object(meta, [(rec.LIFECYCLE, body)], b"", None, {}, version=1)
        args: dict[str, Any] = {
            "Bucket": self.settings.bucket,
            "Key": record_key(str(a["key"]), seq),
            "Body": data,
            "ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
        }
        mode, until = self.lock_of(e, self.vault.clock())
        if mode != "NONE":
            args["ObjectLockMode"] = mode
            args["ObjectLockRetainUntilDate"] = _utc(until)
        self.s3.put_object(**args)

    def _records_missing(self) -> set[tuple[str, str]]:
        """Archived calls with a LIFECYCLE record after their object that is not in
        the bucket (one listing of the prefix: once per process)."""
        b, p = self.settings.bucket, self.settings.prefix
        have: dict[str, set[int]] = {}
        pager = self.s3.get_paginator("list_objects_v2")
        for page in pager.paginate(Bucket=b, Prefix=f"{p}calls/"):
            for o in page.get("Contents", []):
                key = str(o["Key"])
                if LC_INFIX in key:
                    main, _, seq = key.partition(LC_INFIX)
                    have.setdefault(main, set()).add(int(seq))
        out = set()
        for e in self._calls():
            a = e.archive
            if not a or a.get("deleted_us") or str(a.get("bucket")) != b:
                continue
            want = set(range(int(a.get("object_lifecycle_count", 0)) + 1, e.lifecycle_count + 1))
            if want - have.get(str(a["key"]), set()):
                out.add((e.tenant, e.call_id))
        return out

    def upload_missing_records(self, e: CallEntry) -> int:
        """Every LIFECYCLE record after the object's (found in the segments) uploaded
        again: for a call whose upload failed. Returns how many."""
        a = e.archive
        if not a or a.get("deleted_us"):
            return 0
        first = int(a.get("object_lifecycle_count", 0)) + 1
        bodies = self._lifecycle_records(e)
        for seq in range(first, len(bodies) + 1):
            self._put_record(e, seq, bodies[seq - 1])
        return max(0, len(bodies) + 1 - first)

    def mirror(self, e: CallEntry, doc: dict[str, Any]) -> None:
        """vault.after_change: a hold placed or released, a retention extended, on an
        archived call -> the object's legal hold and retention follow. A failure is
        kept (``last_error``, ``mirror_pending``) and tried again at the next run."""
        changed = set(doc.get("set", {}))
        if not e.archive or e.archive.get("deleted_us") or not changed & {"holds", "retention"}:
            return
        try:
            self.sync(e)
            self.mirror_pending.discard((e.tenant, e.call_id))
        except Exception as ex:  # the change is durable already: report, retry later
            self.mirror_pending.add((e.tenant, e.call_id))
            self.last_error = f"call {e.call_id}: mirroring onto its object: {ex}"
            log.error("%s", self.last_error)

    @staticmethod
    def _needs_sync(e: CallEntry) -> bool:
        """Whether the object's lock may lag the call: held (or held when archived),
        or a retention end later than the lock written at archiving."""
        a = e.archive
        if not a or a.get("deleted_us") or e.state == "erased":
            return False
        until = int((e.retention or {}).get("until_us", 0) or 0)
        return (
            bool(e.holds) or bool(a.get("legal_hold")) or until > int(a.get("retain_until_us", 0))
        )

    def sync(self, e: CallEntry) -> None:
        """Set the object's legal hold from the call's holds, and extend its lock to
        the call's retention end (never shortened: S3 refuses that for COMPLIANCE)."""
        a = e.archive
        assert a is not None
        b, k, ver = self.settings.bucket, str(a["key"]), str(a["version_id"])
        self.s3.put_object_legal_hold(
            Bucket=b, Key=k, VersionId=ver, LegalHold={"Status": "ON" if e.holds else "OFF"}
        )
        mode, until = self.lock_of(e, self.vault.clock())
        if mode == "NONE":
            return
        try:
            cur = self.s3.get_object_retention(Bucket=b, Key=k, VersionId=ver)["Retention"]
            cur_until = int(cur["RetainUntilDate"].timestamp() * 1e6)
            cur_mode = cur.get("Mode", mode)
        except Exception as ex:
            code = _code(ex)  # no retention on the version yet (codes differ by server)
            if not code.startswith("NoSuch") and "NotFound" not in code:
                raise

            cur_until, cur_mode = 0, mode
        if until > cur_until:
            self.s3.put_object_retention(
                Bucket=b,
                Key=k,
                VersionId=ver,
                Retention={
                    "Mode": "COMPLIANCE" if "COMPLIANCE" in (mode, cur_mode) else mode,
                    "RetainUntilDate": _utc(until),
                },
            )

    def delete_call(self, e: CallEntry, *, bypass_governance: bool | None = None) -> str:
        """For disposal or erasure: delete every version of the call's object, then,
        once none is left, its later lifecycle records' objects. GOVERNANCE locks are
        bypassed when the VAULT allows the call's erasure (``bypass_governance``
        None: the call is erased, or ``vault.retained`` finds nothing keeping it; the
        vault checks holds and compliance itself, and a governance retention it let
        go of binds the object no longer); True/False force it. Only a COMPLIANCE
        lock or an S3 legal hold can then keep a version: what is kept is reported
        with the date its lock ends. The caller shreds the key either way."""
        if bypass_governance is None:
            bypass_governance = e.state == "erased" or self.vault.retained(e) is None
        a = e.archive
        if not a:
            return "not archived"
        b, main = self.settings.bucket, str(a["key"])
        versions: list[tuple[str, str]] = []  # the object's and its later records'
        pager = self.s3.get_paginator("list_object_versions")
        for page in pager.paginate(Bucket=b, Prefix=main):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] == main or v["Key"].startswith(main + LC_INFIX):
                    versions.append((v["Key"], v["VersionId"]))
        deleted = 0
        kept: list[str] = []
        # the object's versions first; its records' (the call's history) only once no
        # version of the object is left
        versions.sort(key=lambda kv: kv[0] != main)
        for key, ver in versions:
            if kept and key != main:
                break
            try:
                self.s3.delete_object(
                    Bucket=b, Key=key, VersionId=ver, BypassGovernanceRetention=bypass_governance
                )
                deleted += 1
            except Exception as ex:
                if _code(ex) not in ("AccessDenied", "InvalidRequest"):
                    raise ArchiveError(f"call {e.call_id}: deleting version {ver}: {ex}") from ex
                kept.append(self._why_kept(key, ver))
        if not kept:
            return f"deleted {deleted} object version(s)"
        return f"deleted {deleted} object version(s); kept {len(kept)}: {'; '.join(kept)}"

    def _why_kept(self, key: str, ver: str) -> str:
        b = self.settings.bucket
        try:
            h = self.s3.head_object(Bucket=b, Key=key, VersionId=ver)
        except Exception as ex:
            return f"version {ver}: {ex}"
        if h.get("ObjectLockLegalHoldStatus") == "ON":
            return f"version {ver} under legal hold"
        until = h.get("ObjectLockRetainUntilDate")
        if until is not None:
            return (
                f"version {ver} locked ({h.get('ObjectLockMode')}) until {until:%Y-%m-%dT%H:%M:%SZ}"
            )
        return f"version {ver} refused by the bucket"

    # -- erasure markers (docs/format.md 8.17) ----------------------------------

    def mark_erased(self, tenant: str, call_id: str | None) -> None:
        """vault.after_erase: right after an erasure's commit point, its marker goes
        to the bucket (an archived call's, or a tenant's), so a catalog rebuilt from
        the bucket restores the call or tenant as erased even while a COMPLIANCE lock
        or a legal hold keeps its object. A failure is kept and retried by every run."""
        item = (tenant, call_id or "")
        try:
            self._put_marker(tenant, call_id)
            self.markers_pending.discard(item)
        except Exception as ex:  # the erasure is durable already: report, retry later
            self.markers_pending.add(item)
            what = f"call {call_id}" if call_id else f"tenant {tenant}"
            self.last_error = f"{what}: writing its erasure marker: {_said(ex)}"
            log.error("%s", self.last_error)

    def _put_marker(self, tenant: str, call_id: str | None) -> bool:
        """The marker written (True), or nothing to mark (False: a call not archived
        in this bucket)."""
        b, p = self.settings.bucket, self.settings.prefix
        if call_id:
            e = self.vault.index.get_call(tenant, call_id)
            if e is None or e.state != "erased" or not e.archive:
                return False
            if str(e.archive.get("bucket")) != b:
                return False
            key = erased_call_key(p, tenant, call_id, e.seal)
            body = marker(
                "call", tenant, call_id, e.seal, e.erased_us, e.erase_log_index, e.erase_reason
            )
        else:
            doc = self.vault.tenant_erasure(tenant)
            if doc is None or not any(
                e.archive and str(e.archive.get("bucket")) == b
                for e in self.vault.list_calls(tenant=tenant)
            ):
                return False
            key = erased_tenant_key(p, tenant)
            body = marker(
                "tenant",
                tenant,
                "",
                "",
                int(doc.get("time_us", 0)),
                int(doc.get("log_index", -1)),
                str(doc.get("reason", "")),
            )
        self.s3.put_object(
            Bucket=b,
            Key=key,
            Body=body,
            ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
            ContentType="application/json",
        )
        return True

    def _markers_missing(self) -> set[tuple[str, str]]:
        """Erased archived calls and erased tenants with an archived call whose marker
        is not in the bucket (one listing of the markers: once per process)."""
        b, p = self.settings.bucket, self.settings.prefix
        have: set[str] = set()
        pager = self.s3.get_paginator("list_objects_v2")
        for page in pager.paginate(Bucket=b, Prefix=f"{p}{ERASED}"):
            have |= {str(o["Key"]) for o in page.get("Contents", [])}
        out: set[tuple[str, str]] = set()
        for tenant in self.vault.index.tenants():
            erased_tenant = self.vault.tenant_erasure(tenant) is not None
            for e in self.vault.list_calls(tenant=tenant):
                a = e.archive
                if e.state != "erased" or not a or str(a.get("bucket")) != b:
                    continue
                if erased_tenant:
                    if erased_tenant_key(p, tenant) not in have:
                        out.add((tenant, ""))
                elif erased_call_key(p, tenant, e.call_id, e.seal) not in have:
                    out.add((tenant, e.call_id))
        return out

    def _erased_archived(self) -> list[CallEntry]:
        """Erased calls whose archive object was not deleted yet."""
        return [
            e
            for e in self._calls()
            if e.state == "erased" and e.archive and not e.archive.get("deleted_us")
        ]

    def delete_erased(self, e: CallEntry) -> str:
        """An erased call's object versions deleted when their locks allow (the key
        they hold, wrapped, must not outlive the erasure longer than the lock makes
        it); once none is left, a LIFECYCLE record op "archive-deleted" says so
        (``archive.deleted_us``) and later runs skip the call."""
        what = self.delete_call(e)
        if "kept" in what:
            return what
        a = dict(e.archive or {})
        a["deleted_us"] = self.vault.clock()
        self.vault.change(
            e.call_id,
            tenant=e.tenant,
            op="archive-deleted",
            changes={"archive": a},
            reason=f"erased call: {what}",
            expect_seq=e.lifecycle_count,
        )
        return what

    # -- runs ----------------------------------------------------------------

    def upload_log(self) -> int:
        """The Merkle log's tree (its synced leaves) and the last checkpoint, so a
        rebuilt catalog can still prove inclusion. Returns the log size uploaded."""
        v = self.vault
        with v._log_lock:
            size = v.log.synced_size
        from callvault.integrity.log import TREE_FILE, record_offset

        end = record_offset(size)
        b, p = self.settings.bucket, self.settings.prefix
        if self._log_parts is None:  # once per process: the parts already there
            self._log_parts = {}
            pager = self.s3.get_paginator("list_objects_v2")
            for page in pager.paginate(Bucket=b, Prefix=f"{p}{LOG_PART}"):
                for o in page.get("Contents", []):
                    self._log_parts[str(o["Key"])] = int(o["Size"])
        # append-only: a full part never changes, so only new or grown parts go up
        with open(v.path / "log" / TREE_FILE, "rb") as f:
            for i in range(0, max(end, 1), LOG_PART_BYTES):
                n = min(LOG_PART_BYTES, end - i)
                key = f"{p}{LOG_PART}{i // LOG_PART_BYTES:08d}"
                if n <= 0 or self._log_parts.get(key) == n:
                    continue
                f.seek(i)
                self.s3.put_object(Bucket=b, Key=key, Body=f.read(n))
                self._log_parts[key] = n
        cp = v.path / "log" / "checkpoint"
        if cp.exists():
            self.s3.put_object(Bucket=b, Key=f"{p}log/checkpoint", Body=cp.read_bytes())
        return size

    def run(
        self, *, limit: int = 0, evict: bool | None = None, stop: threading.Event | None = None
    ) -> dict[str, Any]:
        """Archive the calls due (at most ``limit``; 0: all), evict the archived ones
        (``evict``: the setting when None), mirror what failed to, upload the log.
        A call that fails is reported and left as it was; the run goes on."""
        evict = self.settings.evict if evict is None else evict
        report: dict[str, Any] = {
            "archived": [],
            "evicted": [],
            "deleted": [],
            "errors": [],
            "bytes": 0,
        }
        with self._run_lock:
            if not self._synced_once:  # a mirror or upload may have failed in an earlier
                self.mirror_pending |= {  # process
                    (e.tenant, e.call_id) for e in self._calls() if self._needs_sync(e)
                }
                try:
                    self.records_pending |= self._records_missing()
                    self.markers_pending |= self._markers_missing()
                except Exception as ex:
                    report["errors"].append({"error": f"listing the bucket: {_said(ex)}"})
                self._synced_once = True
            for tenant, call_id in sorted(self.markers_pending):
                try:
                    self._put_marker(tenant, call_id or None)
                    self.markers_pending.discard((tenant, call_id))
                except Exception as ex:
                    report["errors"].append(
                        {
                            "call_id": call_id,
                            "tenant": tenant,
                            "error": f"erasure marker: {_said(ex)}",
                        }
                    )
            for tenant, call_id in sorted(self.records_pending):
                try:
                    self.upload_missing_records(self.vault.get_call(call_id, tenant=tenant))
                    self.records_pending.discard((tenant, call_id))
                except Exception as ex:
                    report["errors"].append(
                        {"call_id": call_id, "tenant": tenant, "error": _said(ex)}
                    )
            for tenant, call_id in sorted(self.mirror_pending):
                try:
                    self.sync(self.vault.get_call(call_id, tenant=tenant))
                    self.mirror_pending.discard((tenant, call_id))
                except Exception as ex:
                    report["errors"].append(
                        {"call_id": call_id, "tenant": tenant, "error": str(ex)}
                    )
            due = self.due(self.vault.clock())
            if limit:
                due = due[:limit]
            for e in due:
                if stop is not None and stop.is_set():
                    break  # the server stops: the rest waits for the next run
                try:
                    e = self.archive_call(e)
                    assert e.archive is not None
                    report["archived"].append(
                        {
                            "tenant": e.tenant,
                            "call_id": e.call_id,
                            "key": e.archive["key"],
                            "mode": e.archive["mode"],
                            "size": e.archive["size"],
                        }
                    )
                    report["bytes"] += int(e.archive["size"])
                except Exception as ex:
                    report["errors"].append(
                        {"tenant": e.tenant, "call_id": e.call_id, "error": str(ex)}
                    )
            for e in self._erased_archived():
                if stop is not None and stop.is_set():
                    break
                try:
                    what = self.delete_erased(e)
                    report["deleted"].append(
                        {"tenant": e.tenant, "call_id": e.call_id, "result": what}
                    )
                except Exception as ex:
                    report["errors"].append(
                        {"tenant": e.tenant, "call_id": e.call_id, "error": str(ex)}
                    )
            if evict:
                for e in self.evictable():
                    if stop is not None and stop.is_set():
                        break
                    try:
                        self.evict(e)
                        report["evicted"].append({"tenant": e.tenant, "call_id": e.call_id})
                    except Exception as ex:
                        report["errors"].append(
                            {"tenant": e.tenant, "call_id": e.call_id, "error": str(ex)}
                        )
            try:
                report["log_size"] = self.upload_log()
            except Exception as ex:
                report["errors"].append({"error": f"uploading the Merkle log: {ex}"})
        self.last_error = report["errors"][-1]["error"] if report["errors"] else ""
        self._status = None  # the counts changed
        return report

    def status(self, max_age_s: float = 0.0) -> dict[str, Any]:
        """Counts over the index: archived calls, their bytes, evicted ones, due now
        (``max_age_s``: counts computed at most that long ago may be given again)."""
        import time

        cached = self._status
        if cached is not None and time.monotonic() - cached[0] <= max_age_s:
            return {**cached[1], "error": self.last_error}
        st = self._count()
        self._status = (time.monotonic(), st)
        return st

    def _count(self) -> dict[str, Any]:
        archived = evicted = size = 0
        for e in self._calls():
            if e.archive and e.state != "erased":
                archived += 1
                size += int(e.archive.get("size", 0))
                evicted += 0 if e.local else 1
        return {
            "bucket": self.settings.bucket,
            "archived_calls": archived,
            "archive_bytes": size,
            "evicted_calls": evicted,
            "due_calls": len(self.due(self.vault.clock())),
            "error": self.last_error,
        }


# -- settings kept with the data directory ---------------------------------------


def store_settings(data: Path, section: dict[str, Any]) -> Settings:
    """Validate an [archive] section and keep it as DATA/archive.toml (0600): the
    local verbs (play, export, verify of evicted calls; archive run) read it."""
    s = Settings.from_dict(section)
    lines = []
    for k, v in sorted(section.items()):
        if isinstance(v, dict):
            continue
        lines.append(f"{k} = {json.dumps(v)}")
    modes = section.get("modes")
    if isinstance(modes, dict) and modes:
        lines.append("[modes]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in sorted(modes.items())]
    write_atomic(data / SETTINGS_FILE, ("\n".join(lines) + "\n").encode(), 0o600)
    return s


def stored_settings(data: Path) -> dict[str, Any] | None:
    import tomllib

    p = data / SETTINGS_FILE
    if not p.exists():
        return None
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{p}: {e}") from None


def attached(vault: Vault) -> Archive | None:
    """The archive attached to ``vault`` (``Archive.attach``), if any: what disposal
    and the capacity watermarks call (``delete_call``, ``evict``)."""
    fetch = vault.fetch_archived
    owner = getattr(fetch, "__self__", None)
    return owner if isinstance(owner, Archive) else None


def attach_stored(vault: Vault) -> Archive | None:
    """The archive of DATA/archive.toml attached to ``vault`` (None: no such file)."""
    section = stored_settings(vault.path)
    if section is None:
        return None
    return Archive.from_settings(vault, section).attach()


# -- rebuilding a catalog from the bucket ----------------------------------------


def fetch_objects(
    settings: Settings, client: Any = None
) -> tuple[list[tuple[str, bytes]], bytes, dict[str, dict[int, bytes]]]:
    """Every call object under the prefix (key, data; each checked), the Merkle log's
    tree (b"" when the bucket has none), and per call object key its later LIFECYCLE
    records by number (their bodies)."""
    s3 = client or make_client(settings)
    b, p = settings.bucket, settings.prefix
    objects: list[tuple[str, bytes]] = []
    later: dict[str, dict[int, bytes]] = {}
    pager = s3.get_paginator("list_objects_v2")
    for page in pager.paginate(Bucket=b, Prefix=f"{p}calls/"):
        for o in page.get("Contents", []):
            key = str(o["Key"])
            if key.endswith(SUFFIX):
                data = bytes(s3.get_object(Bucket=b, Key=key)["Body"].read())
                parse_object(data, key)
                objects.append((key, data))
            elif LC_INFIX in key:
                data = bytes(s3.get_object(Bucket=b, Key=key)["Body"].read())
                lc = parse_object(data, key)
                main = key[: key.index(LC_INFIX)]
                later.setdefault(main, {})[int(lc.meta["seq"])] = lc.records[0][1]
    parts: list[str] = []
    for page in pager.paginate(Bucket=b, Prefix=f"{p}{LOG_PART}"):
        parts += [str(o["Key"]) for o in page.get("Contents", [])]
    parts.sort()
    for i, key in enumerate(parts):  # contiguous from part 0, else not a whole log
        if key != f"{p}{LOG_PART}{i:08d}":
            raise ArchiveError(f"the bucket's Merkle log misses part {i} ({key} follows)")
    tree = b"".join(bytes(s3.get_object(Bucket=b, Key=k)["Body"].read()) for k in parts)
    return objects, tree, later


def fetch_markers(settings: Settings, client: Any = None) -> dict[str, dict[str, Any]]:
    """The bucket's erasure markers (docs/format.md 8.17) by key, each checked."""
    s3 = client or make_client(settings)
    b, p = settings.bucket, settings.prefix
    out: dict[str, dict[str, Any]] = {}
    pager = s3.get_paginator("list_objects_v2")
    for page in pager.paginate(Bucket=b, Prefix=f"{p}{ERASED}"):
        for o in page.get("Contents", []):
            key = str(o["Key"])
            out[key] = parse_marker(bytes(s3.get_object(Bucket=b, Key=key)["Body"].read()), key)
    return out


def _restore_keys(data: Path, obj: CallObject, *, call: bool = True, keks: bool = True) -> None:
    """The object's key files written where the vault keeps them, as stored: the
    call's (not ``call``: an erased call's stay destroyed) and its tenant's KEK
    generations (not ``keks``: an erased tenant's stay destroyed)."""
    keys = data / "keys"
    tenant, call_id = obj.meta["tenant"], obj.meta["call_id"]
    if call:
        h = hashlib.sha256(rec.call_aad(tenant, call_id)).hexdigest()
        cdir = keys / "calls" / h[:2]
        cdir.mkdir(parents=True, exist_ok=True)
        write_atomic(cdir / f"{h}.key", obj.call_key, 0o600)
        if obj.number_key is not None:
            write_atomic(cdir / f"{h}.number.key", obj.number_key, 0o600)
    if not keks:
        return
    tdir = keys / "tenants" / hashlib.sha256(tenant.encode()).hexdigest()
    tdir.mkdir(parents=True, exist_ok=True)
    for gen, wrapped in obj.keks.items():
        t = tdir / f"{gen:08x}{KEK_SUFFIX}"
        if not t.exists():
            write_atomic(t, wrapped, 0o600)


def _protection_from_lock(e: CallEntry, doc: dict[str, Any], now_us: int) -> dict[str, Any]:
    """What the object's lock says that the rebuilt entry does not: changes made after
    the call was archived are not in its object, but holds and retention extensions
    were mirrored onto its lock. A legal hold ON with no hold in the entry becomes a
    hold named "archive-legal-hold"; a lock date past the entry's retention end
    becomes its retention end (COMPLIANCE -> compliance, else governance). Never
    less protection than the bucket shows."""
    out: dict[str, Any] = {}
    if doc["legal_hold"] and not e.holds:
        out["holds"] = {
            "archive-legal-hold": {
                "placed_us": now_us,
                "by": None,
                "reason": "the call's archive object carries a legal hold (catalog rebuilt "
                "from the archive): release it with the holds' dual control",
            }
        }
    until = int(doc["retain_until_us"])
    r = e.retention or {}
    if until > int(r.get("until_us", 0) or 0) and doc["mode"] in ("COMPLIANCE", "GOVERNANCE"):
        out["retention"] = {
            "until_us": until,
            "rule": "archive-lock",
            "mode": "compliance" if doc["mode"] == "COMPLIANCE" else "governance",
            "set_us": now_us,
        }
    return out


def rebuild_catalog(
    data: Path, key_file: Path, settings: Settings, client: Any = None
) -> dict[str, Any]:
    """`callvault reindex --from-archive`: the catalog of an EMPTY data directory
    rebuilt from the bucket, with the vault's key file (``key_file``, from your
    backup: the bucket holds only wrapped keys). The Merkle log's tree is restored
    first; then, per call object: its key files and tenant KEKs written as stored,
    its records appended as stored (the index applies them as it does live ones:
    chains, seals and lifecycle records checked, their log leaves found in the
    restored log), then one LIFECYCLE record op "restore" setting ``archive`` and
    ``local`` False (the audio records are dead at once: the audio stays in the
    archive). Each object's OPEN record is checked against its seal first (nothing
    is written if one differs). A call or tenant the bucket has an erasure marker
    for is restored ERASED: its key files (and an erased tenant's KEKs) are not
    written, and an ERASE (TENANT_ERASE) record of the marker's time, naming the
    marker, follows its records. Returns {"calls", "erased", "erased_tenants",
    "log_size", "skipped"}."""
    from callvault.vault.keys import has_vault_data

    if has_vault_data(data):
        raise ArchiveError(
            f"{data} holds a vault: rebuild from the archive into an empty directory"
        )
    if not key_file.exists():
        raise ArchiveError(f"key file {key_file} not found: the bucket's keys are wrapped by it")
    s3 = client or make_client(settings)
    objects, tree, later = fetch_objects(settings, s3)
    markers = fetch_markers(settings, s3)
    for key, blob in objects:  # all checked before anything is written
        check_open(parse_object(blob, key), key)
    p = settings.prefix
    erased_tenants = {m["tenant"]: m for m in markers.values() if m["kind"] == "tenant"}
    if tree:
        (data / "log").mkdir(parents=True, exist_ok=True)
        write_atomic(data / "log" / "tree", tree, 0o644)
    n, skipped, n_erased = 0, 0, 0
    with Vault.open(data, key_file=key_file) as vault:
        for key, blob in objects:
            obj = parse_object(blob, key)
            tenant, call_id = obj.meta["tenant"], obj.meta["call_id"]
            if vault.index.get_call(tenant, call_id) is not None:
                skipped += 1  # another version of an object already restored
                continue
            erased = markers.get(erased_call_key(p, tenant, call_id, str(obj.meta["seal"])))
            gone = erased is not None or tenant in erased_tenants
            _restore_keys(data, obj, call=not gone, keks=tenant not in erased_tenants)
            for rtype, body in obj.records:
                vault._writer.append(rtype, body).result()
            e = vault.get_call(call_id, tenant=tenant)
            for seq in sorted(later.get(key, {})):  # the records after archiving, in order
                body = later[key][seq]
                doc = json.loads(rec.parse(rec.LIFECYCLE, body).doc)
                if seq != e.lifecycle_count + 1 or doc.get("prev") != (e.lifecycle_head or e.seal):
                    break  # a gap (an upload that never happened): the lock covers the rest
                vault._writer.append(rec.LIFECYCLE, body).result()
                e = vault.get_call(call_id, tenant=tenant)
            head = s3.head_object(Bucket=settings.bucket, Key=key)
            until = head.get("ObjectLockRetainUntilDate")
            doc = {
                "bucket": settings.bucket,
                "key": key,
                "version_id": head.get("VersionId", ""),
                "sha256": obj.sha256,
                "size": len(blob),
                "archived_us": int(obj.meta.get("built_us", 0)),
                "mode": head.get("ObjectLockMode", "NONE"),
                "retain_until_us": int(until.timestamp() * 1e6) if until else 0,
                "legal_hold": head.get("ObjectLockLegalHoldStatus") == "ON",
                "object_lifecycle_count": int(obj.meta.get("lifecycle_count", 0)),
            }
            if erased is not None and e.state != "erased":
                vault._writer.append(rec.ERASE, _erase_from_marker(erased)).result()
                e = vault.get_call(call_id, tenant=tenant)
            # an erased call keeps no protection (the vault allowed its erasure)
            changes: dict[str, Any] = {} if gone else _protection_from_lock(e, doc, vault.clock())
            if not e.archive or (e.local and e.state != "erased"):
                changes["archive"] = doc  # the archive and evict records were not there
                if e.state != "erased":
                    changes["local"] = False
            if changes:
                vault.change(
                    call_id,
                    tenant=tenant,
                    op="restore",
                    changes=changes,
                    reason="catalog rebuilt from the archive",
                    expect_seq=e.lifecycle_count,
                )
            n += 1
            n_erased += gone
        for tenant, m in sorted(erased_tenants.items()):
            if vault.tenant_erasure(tenant) is None and vault.index.call_ids(tenant):
                vault._writer.append(rec.TENANT_ERASE, _erase_from_marker(m)).result()
        size = vault.log_size()
    return {
        "calls": n,
        "erased": n_erased,
        "erased_tenants": len(erased_tenants),
        "log_size": size,
        "skipped": skipped,
    }


def _erase_from_marker(m: dict[str, Any]) -> bytes:
    """The ERASE (or TENANT_ERASE) record a rebuilt catalog gets for an erasure the
    bucket's marker records: the marker's time; the reason names the original
    erasure (its log leaf, its reason's SHA-256: the reason itself is not in the
    bucket)."""
    reason = (
        f"erased {_utc(m['erased_us']):%Y-%m-%dT%H:%M:%SZ} (log leaf {m['log_index']}, "
        f"reason SHA-256 {m.get('reason_sha256', '?')}); restored erased from the "
        "archive's erasure marker"
    )
    if m["kind"] == "tenant":
        return rec.tenant_erase_body(m["tenant"], time_us=m["erased_us"], reason=reason)
    return rec.erase_body(m["tenant"], m["call_id"], time_us=m["erased_us"], reason=reason)

"""A call's info on the wire (``pb.CallInfo``) from the vault's index entry.

What Archive.Search and Archive.GetCall answer, and what `callvault --data DIR
info` prints from, so that a local vault and a server show a call the same way.
No grpc here: the command line on a local vault imports it without a server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

from callvault_client._pb import callvault_pb2 as pb

from callvault.access import context as rpcctx
from callvault.errors import CallvaultError, InputError
from callvault.lifecycle.rules import Decision
from callvault.server.decisions import decision_pb
from callvault.store.index import CallEntry
from callvault.vault import Vault

CALL_STATES = {
    "open": pb.CALL_STATE_OPEN,
    "sealed": pb.CALL_STATE_SEALED,
    "erased": pb.CALL_STATE_ERASED,
    "not_recorded": pb.CALL_STATE_NOT_RECORDED,
}
GAP_REASONS = {"lost": pb.GAP_REASON_LOST, "unsupported_codec": pb.GAP_REASON_UNSUPPORTED_CODEC}


def call_info(e: CallEntry, frames: int) -> pb.CallInfo:
    """The entry's fields, ``frames`` per leg, and of ``extra`` the caller's scalar keys."""
    extra = {str(k): str(v) for k, v in e.extra.items() if not isinstance(v, list | dict)}
    erased = e.state == "erased"
    info = pb.CallInfo(
        tenant=e.tenant,
        call_id=e.call_id,
        state=e.state,
        call_state=CALL_STATES.get(e.state, pb.CALL_STATE_UNSPECIFIED),
        start_us=e.start_us,
        end_us=e.end_us,
        direction=e.direction,
        agent=e.agent,
        skill_group=e.skill_group,
        tags=e.tags,
        legs=e.legs,
        extra=extra,
        frames=frames,
        records=e.records,
        chain_head=bytes.fromhex(e.chain_head),
        seal=bytes.fromhex(e.seal) if e.seal else b"",
        log_index=e.log_index,
        erased_us=e.erased_us if erased else 0,
        erase_reason=e.erase_reason if erased else "",
        erase_log_index=e.erase_log_index if erased else -1,
        storage=e.storage,
        transcode_log_index=e.transcode_log_index if e.storage == "compacted" else -1,
    )
    r = e.retention
    if r:  # docs/policy.md "Retention"
        info.retention.CopyFrom(
            pb.CallRetention(
                until_us=int(r.get("until_us", 0)),
                rule=str(r.get("rule", "")),
                mode=str(r.get("mode", "")),
                set_us=int(r.get("set_us", 0)),
                policy=str(r.get("policy", "")),
            )
        )
    if e.decision:  # the recording policy's (docs/access.md "Recording rules")
        info.decision.CopyFrom(decision_pb(Decision.from_doc(e.decision)))
    lifecycle_fields(info, e)
    a = e.archive
    if a and not erased:  # CallInfo 55-58: the archive tier (docs/policy.md "Archive")
        info.archive_object = f"s3://{a.get('bucket', '')}/{a.get('key', '')}"
        info.archive_version = str(a.get("version_id", ""))
        info.archive_lock_mode = str(a.get("mode", ""))
    info.evicted = not e.local and not erased
    u = e.unsupported_codec
    if u is not None and e.state == "sealed":
        info.unsupported_codec.legs.extend(u["legs"])
        info.unsupported_codec.payload_types.extend(u["payload_types"])
        info.unsupported_codec.frames = u["frames"]
    hold_fields(info, e)
    if e.disposal:  # disposed at the end of its retention (lifecycle.disposal)
        info.disposal_report = str(e.disposal.get("report", ""))
        info.disposed_us = int(e.disposal.get("disposed_us", 0))
    return info


def hold_fields(info: pb.CallInfo, e: CallEntry) -> None:
    """CallInfo 50-53: the call's legal holds and its deferred erasure."""
    for name, h in sorted(e.holds.items()):
        rel = h.get("release") or {}
        info.holds.add(
            name=name,
            placed_us=int(h.get("placed_us") or 0),
            placed_by=str((h.get("by") or {}).get("name") or ""),
            reason=str(h.get("reason") or ""),
            release_requested=bool(rel),
            release_requested_by=str((rel.get("by") or {}).get("name") or ""),
            release_requested_us=int(rel.get("requested_us") or 0),
        )
    p = e.pending_erase
    if p and e.state == "sealed":
        info.erase_pending = True
        info.erase_pending_reason = str(p.get("reason") or "")
        info.erase_pending_by = str((p.get("by") or {}).get("name") or "")


def lifecycle_fields(info: pb.CallInfo, e: CallEntry) -> None:
    """CallInfo 48 (docs/format.md 8.14): the changes since the seal and their chain
    head (the retention is field 45, the holds 50). Nothing for an open call."""
    if e.state == "open" or not e.seal:
        return
    lc = info.lifecycle
    lc.changes = e.lifecycle_count
    lc.head = bytes.fromhex(e.lifecycle_head) if e.lifecycle_head else b""


def call_detail(
    vault: Vault, e: CallEntry, frames: int, *, summary: bool, customer_number: bool
) -> pb.CallInfo:
    """``call_info`` with what GetCall adds on request: a sealed call's summary (JSON)
    and, unless the call is erased, its customer number (decrypted); its manifest's
    version (what the seal covers)."""
    info = call_info(e, frames)
    if e.manifest_ref is not None:
        try:
            version = vault.manifest(e.call_id, tenant=e.tenant).get("version", 1)
        except CallvaultError:  # what verify names; the call's info still shows
            version = 0
        info.lifecycle.manifest_version = version if isinstance(version, int) else 1
    if summary and e.state == "sealed":
        doc = vault.summary(e.call_id, tenant=e.tenant)
        info.summary_json = json.dumps(doc, sort_keys=True)
        info.leg_summaries.extend(leg_summary(leg) for leg in doc.get("legs", []))
        pci_fields(info, doc)
    if customer_number and e.state != "erased":
        info.customer_number = vault.customer_number(e.call_id, tenant=e.tenant)
    return info


def pci_fields(info: pb.CallInfo, doc: Mapping[str, Any]) -> None:
    """CallInfo 35-37 from a sealed summary (docs/format.md 1.1): the paused spans,
    whether the DTMF digits were kept (a summary from before ``digits_kept`` kept
    them) and how many DTMF events there were."""
    for p in doc.get("paused") or []:
        info.paused.add(start_frame=_uint(p.get("start_frame")), frames=_uint(p.get("frames")))
    legs = doc.get("legs") or []
    info.digits_kept = all(bool(leg.get("digits_kept", True)) for leg in legs)
    info.dtmf_events = sum(
        len(leg.get("dtmf") or []) + len(leg.get("telephone_events") or []) for leg in legs
    )
    events = [ev for leg in legs for k in ("dtmf", "telephone_events") for ev in leg.get(k) or []]
    if any("digit" in ev for ev in events):
        # digits are card numbers unless a policy says otherwise: their disclosure is
        # in the RPC's audit entry (docs/access.md "PCI")
        rpcctx.note_detail("DTMF digits disclosed (in the call's summary)")


def _uint(value: Any) -> int:
    """A counter of the summary as an unsigned wire value (absent or null: 0)."""
    return max(int(value or 0), 0)


def leg_summary(leg: Mapping[str, Any]) -> pb.LegSummary:
    """One leg of the sealed summary (docs/format.md 1.1) as the typed message.

    Keys a summary sealed by an older build lacks read as zero/empty; a gap with
    no "reason" predates the field and was a loss."""
    gaps = [
        pb.LegSummary.Gap(
            start_frame=_uint(g.get("start_frame")),
            frames=_uint(g.get("frames")),
            reason=GAP_REASONS.get(g.get("reason", "lost"), pb.GAP_REASON_UNSPECIFIED),
            payload_type=_uint(g.get("payload_type")),
        )
        for g in leg.get("gaps", [])
    ]

    def events(items: list[Mapping[str, Any]]) -> list[pb.LegSummary.DtmfEvent]:
        return [
            pb.LegSummary.DtmfEvent(
                digit=str(d.get("digit", "")),
                start_ms=int(d.get("start_ms") or 0),
                duration_ms=_uint(d.get("duration_ms")),
                source=str(d.get("source", "")),
                volume_dbm0=int(d.get("volume_dbm0") or 0),
                masked=bool(d.get("masked", False)),
            )
            for d in items
        ]

    level = leg.get("level") or {}
    rms = level.get("rms_dbfs")
    unsupported = leg.get("unsupported_codec") or {}
    return pb.LegSummary(
        leg=str(leg.get("leg", "")),
        source=str(leg.get("source", "")),
        frames=_uint(leg.get("frames")),
        seconds=float(leg.get("seconds") or 0.0),
        lost=_uint(leg.get("lost")),
        late=_uint(leg.get("late")),
        duplicates=_uint(leg.get("duplicates")),
        malformed=_uint(leg.get("malformed")),
        gaps=gaps,
        telephone_events=events(leg.get("telephone_events", [])),
        dtmf=events(leg.get("dtmf", [])),
        voice_frames=_uint(leg.get("voice_frames")),
        level=pb.LegSummary.Level(
            rms_dbfs=None if rms is None else float(rms),
            peak=_uint(level.get("peak")),
            clipped=_uint(level.get("clipped")),
        ),
        bytes=_uint(leg.get("bytes")),
        rtp={str(k): _uint(v) for k, v in (leg.get("rtp") or {}).items() if isinstance(v, int)},
        unsupported_codec=pb.LegSummary.UnsupportedCodec(
            frames=_uint(unsupported.get("frames")),
            packets=_uint(unsupported.get("packets")),
            payload_types=[_uint(t) for t in unsupported.get("payload_types", [])],
        ),
    )


# -- search pages (Archive.SearchCalls) -----------------------------------------------

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_VERSION = 1
_TOKEN_HEAD = struct.Struct(">BB16sQ")  # version, order, filter digest, start_us
MAX_TOKEN_CHARS = 2048  # a token is about 60 characters plus the call id's


def page_size(requested: int) -> int:
    """AIP-158: 0 means the default, above the maximum means the maximum."""
    return DEFAULT_PAGE_SIZE if requested == 0 else min(requested, MAX_PAGE_SIZE)


def newest_first(r: pb.SearchRequest) -> bool:
    if r.order not in (
        pb.SEARCH_ORDER_UNSPECIFIED,
        pb.SEARCH_ORDER_OLDEST_FIRST,
        pb.SEARCH_ORDER_NEWEST_FIRST,
    ):
        raise InputError(
            f"order {r.order} is not a SearchOrder: expected SEARCH_ORDER_OLDEST_FIRST "
            "or SEARCH_ORDER_NEWEST_FIRST"
        )
    return r.order == pb.SEARCH_ORDER_NEWEST_FIRST


def _filters_digest(r: pb.SearchRequest) -> bytes:
    """What a page token is bound to: every field of the request but the paging ones."""
    key = [
        r.tenant or "default",
        r.since_us,
        r.until_us,
        r.agent,
        r.skill_group,
        r.direction,
        r.tag,
        r.min_duration_ms,
        r.max_duration_ms,
        int(newest_first(r)),
    ]
    return hashlib.sha256(json.dumps(key).encode()).digest()[:16]


def page_token(r: pb.SearchRequest, last: CallEntry) -> str:
    """The token of the page after ``last`` (the last call of this page)."""
    raw = (
        _TOKEN_HEAD.pack(_TOKEN_VERSION, int(newest_first(r)), _filters_digest(r), last.start_us)
        + last.call_id.encode()
    )
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_cursor(r: pb.SearchRequest) -> tuple[int, str] | None:
    """The (start_us, call_id) a request's page_token resumes after (None: the first
    page); InputError when the token is not one this server gave for these filters."""
    token = r.page_token
    if not token:
        return None
    bad = "page_token is not a next_page_token this server returned"
    if len(token) > MAX_TOKEN_CHARS:
        raise InputError(f"{bad} (it is {len(token)} characters long)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, order, digest, start_us = _TOKEN_HEAD.unpack_from(raw)
        call_id = raw[_TOKEN_HEAD.size :].decode()
    except (binascii.Error, ValueError, struct.error, UnicodeDecodeError):
        raise InputError(f"{bad} (it does not decode)") from None
    if version != _TOKEN_VERSION or not call_id or "\x00" in call_id:
        raise InputError(f"{bad} (unknown version or no call id)")
    if order != int(newest_first(r)) or digest != _filters_digest(r):
        raise InputError(
            "page_token belongs to a search with other filters or another order: "
            "repeat the first request's filters and order (only page_size may change), "
            "or start again without a page_token"
        )
    return start_us, call_id

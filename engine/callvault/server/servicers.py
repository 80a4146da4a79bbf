"""gRPC servicers: proto <-> Vault / Ingestor, nothing more (proto/callvault/v1).

Each method checks its request's shape, calls the engine, and converts the
answer; engine errors become status codes by ``fail`` (InputError ->
INVALID_ARGUMENT, CallNotFound -> NOT_FOUND, other VaultErrors ->
FAILED_PRECONDITION, ...), with the engine's message, which is written for
people.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault import ids
from callvault.access import context as rpcctx
from callvault.access import policy
from callvault.access.audit import AuditTrail
from callvault.access.exports import ExportRequest, ExportRequests, RequestNotFound
from callvault.access.identity import OPEN, Identity
from callvault.access.policy import AccessDenied
from callvault.errors import CallvaultError, InputError
from callvault.integrity import checkpoint
from callvault.lifecycle.holds import counts as hold_counts
from callvault.lifecycle.holds import erase_or_defer
from callvault.lifecycle.holds import identity as by_identity
from callvault.lifecycle.policy import override_reason
from callvault.server import callinfo, decisions, playback
from callvault.server.callinfo import call_detail, call_info
from callvault.server.ingest import (
    Batch,
    CallExpired,
    CallFailed,
    CallSpec,
    Control,
    End,
    Ingestor,
    Leave,
    Limits,
    MuxEvent,
    MuxItem,
    MuxStream,
    OutOfOrder,
    Progress,
    RecordingConflict,
    RecordStream,
    Reply,
    Request,
    ShuttingDown,
    Started,
    StoreFailed,
    StreamIdle,
    StreamTakenOver,
    TooManyCalls,
    Unknown,
    WriterFailed,
    check_writer,
)
from callvault.server.interceptors import MethodLog, Undecodable, current_identity
from callvault.store.index import CallEntry
from callvault.timeline import FRAME_US
from callvault.vault import CallNotFound, Vault, VaultError
from callvault.vault.common import Problem

CHUNK_BYTES = 1 << 20
T = TypeVar("T")


# What an engine error means on the wire: the first entry it is an instance of
# (subclasses before their bases).
STATUS: tuple[tuple[type[CallvaultError], grpc.StatusCode], ...] = (
    (CallNotFound, grpc.StatusCode.NOT_FOUND),
    (RequestNotFound, grpc.StatusCode.NOT_FOUND),
    (AccessDenied, grpc.StatusCode.PERMISSION_DENIED),
    (StreamTakenOver, grpc.StatusCode.ABORTED),
    (RecordingConflict, grpc.StatusCode.ALREADY_EXISTS),
    (TooManyCalls, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (WriterFailed, grpc.StatusCode.UNAVAILABLE),
    (CallExpired, grpc.StatusCode.FAILED_PRECONDITION),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (OutOfOrder, grpc.StatusCode.FAILED_PRECONDITION),
    (StreamIdle, grpc.StatusCode.DEADLINE_EXCEEDED),
    (StoreFailed, grpc.StatusCode.INTERNAL),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),  # ALREADY_EXISTS when it says so
    (VaultError, grpc.StatusCode.FAILED_PRECONDITION),
    (CallvaultError, grpc.StatusCode.INTERNAL),
)


def status_of(e: BaseException) -> grpc.StatusCode | None:
    """The status an engine error means (STATUS); None for what is not one."""
    for kind, code in STATUS:
        if isinstance(e, kind):
            if kind is InputError and "already exists" in str(e):
                return grpc.StatusCode.ALREADY_EXISTS
            return code
    return None


def fail(context: grpc.ServicerContext, e: BaseException) -> NoReturn:
    """Abort the RPC with the status an engine error means (STATUS)."""
    code = status_of(e)
    if code is not None:
        context.abort(code, str(e))
    raise e


def unary(method: Callable[..., T]) -> Callable[..., T]:
    def run(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        try:
            return method(self, request, context)
        except CallvaultError as e:
            fail(context, e)

    run.__name__ = method.__name__
    run.__doc__ = method.__doc__
    return run


def streaming(method: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    def run(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[T]:
        try:
            yield from method(self, request, context)
        except CallvaultError as e:
            fail(context, e)

    run.__name__ = method.__name__
    run.__doc__ = method.__doc__
    return run


def _ref(ref: pb.CallRef) -> tuple[str, str]:
    if not ref.call_id:
        raise InputError("call.call_id is required")
    ids.check_call_id(ref.call_id, "call.call_id")
    if ref.tenant:
        ids.check_call_id(ref.tenant, "call.tenant")
    return ref.tenant or "default", ref.call_id


def _who() -> Identity:
    """The caller of the RPC this thread serves (the interceptor's); OPEN outside one."""
    rpc = rpcctx.current()
    return rpc.identity if rpc is not None else OPEN


def _reason() -> str:
    rpc = rpcctx.current()
    return rpc.reason if rpc is not None else ""


def _scoped(ref: pb.CallRef) -> tuple[Identity, str, str]:
    """(caller, tenant, call_id) of a call reference, the tenant scoped by the caller
    (docs/access.md "Tenants"): a tenant identity naming another tenant gets exactly
    the NOT_FOUND of a call that does not exist."""
    _ref(ref)  # the shape
    who = _who()
    tenant = policy.tenant_of(who, ref.tenant)
    if tenant is None:
        rpcctx.note_call(ref.tenant, ref.call_id)
        raise policy.not_found(ref.call_id, ref.tenant)
    rpcctx.note_call(tenant, ref.call_id)
    return who, tenant, ref.call_id


def _lookup(vault: Vault, ref: pb.CallRef) -> tuple[Identity, CallEntry]:
    """The call a request names, as the caller may see it (else NOT_FOUND, the same
    message as for a call that does not exist: policy.visible)."""
    who, tenant, call_id = _scoped(ref)
    e = vault.get_call(call_id, tenant=tenant)
    if not policy.visible(who, e):
        raise policy.not_found(call_id, tenant)
    return who, e


def _allow(who: Identity, method: str, e: CallEntry | None, approval: str = "") -> None:
    """PERMISSION_DENIED unless access.policy.check allows ``method`` on ``e`` now."""
    why = policy.check(who, method, e, reason=_reason(), approval=approval)
    if why is not None:
        raise AccessDenied(why)


def _platform_only(who: Identity, what: str) -> None:
    """Operations on the whole vault (every tenant): platform identities only."""
    if who.tenant is not None:
        raise AccessDenied(
            f"{who.name} belongs to tenant {who.tenant}: {what} acts on every tenant, "
            "a platform identity's (no tenant) to do"
        )


def _seconds(e: CallEntry, from_ms: int = 0, to_ms: int = 0) -> float:
    """Seconds of a sealed call's audio in [from_ms, to_ms) (0: to the end)."""
    length_ms = max(0, e.end_us - e.start_us) // 1000
    end = min(to_ms, length_ms) if to_ms else length_ms
    return max(0, end - from_ms) / 1000


def _check_texts(r: Any, *names: str) -> None:
    """Refuse a request whose tenant is not a tenant or whose text fields hold a NUL
    (INVALID_ARGUMENT; the index would fail on them later with a Python error)."""
    if r.tenant:
        ids.check_call_id(r.tenant, "tenant")
    for name in names:
        ids.check_text(getattr(r, name), name, 1 << 16)


def _format(value: int, allowed: tuple[int, ...], why: str) -> int:
    """A request's AudioFormat: one of ``allowed``, the first when unset."""
    fmt = value or allowed[0]
    if fmt not in allowed:
        raise InputError(why)
    return fmt


POLICY_SECTIONS = (
    "recording",
    "regions",
    "dtmf",
    "audit",
    "access",
    # issue 12 (docs/policy.md): retention rules, the sweeper, the archive, watermarks
    "policy",
    "disposal",
    "archive",
    "capacity",
    "subject",
)


class Config:
    """Server settings (`callvault serve --config FILE`, TOML or JSON; docs/server.md)."""

    def __init__(self, **kw: Any) -> None:
        self.max_message_bytes: int = int(kw.pop("max_message_bytes", 8 << 20))
        self.max_concurrent_rpcs: int = int(kw.pop("max_concurrent_rpcs", 1000))
        self.workers: int = int(kw.pop("workers", 1100))
        self.ingest_idle_s: float = float(kw.pop("ingest_idle_s", 120.0))
        self.shutdown_grace_s: float = float(kw.pop("shutdown_grace_s", 10.0))
        self.segment_bytes: int = int(kw.pop("segment_bytes", 64 << 20))
        # threads that run batches through the pipelines; 0 = CPUs + 1
        self.ingest_workers: int = int(kw.pop("ingest_workers", 0))
        # RecordCalls: a message's calls are split into this many chunks processed at
        # once (one on the stream's thread, the others on the ingest workers);
        # 0 = CPUs (the default: the per-batch audio work runs without the GIL, so
        # every core records), 1 = all on the stream's thread
        self.ingest_mux_chunks: int = int(kw.pop("ingest_mux_chunks", 0))
        # Ingest bounds (ingest.Limits; docs/server.md "Limits")
        d = Limits()
        self.max_open_calls: int = int(kw.pop("max_open_calls", d.max_open_calls))
        self.call_idle_s: float = float(kw.pop("call_idle_s", d.call_idle_s))
        self.resume_s: float = float(kw.pop("resume_s", d.resume_s))
        # how often the reaper and the writer-health check run
        self.housekeeping_s: float = float(kw.pop("housekeeping_s", 1.0))
        # peak mode (docs/server.md "Settings"): what ingest stores, and the compactor
        self.ingest_codec: str = str(kw.pop("ingest_codec", "opus"))
        self.auto_opus_calls: int = int(kw.pop("auto_opus_calls", 16 * (os.cpu_count() or 1)))
        self.compact_workers: int = int(kw.pop("compact_workers", 1))
        self.compact_paused: bool = bool(kw.pop("compact_paused", False))
        # the scheduled reclaim (docs/format.md 8.11): every reclaim_interval_s (0: never)
        # rewrite closed segments at least reclaim_threshold dead
        self.reclaim_interval_s: float = float(kw.pop("reclaim_interval_s", 600.0))
        self.reclaim_threshold: float = float(kw.pop("reclaim_threshold", 0.5))
        # four-eyes export (docs/access.md): how long an approved request may be used
        self.export_approval_s: float = float(kw.pop("export_approval_s", 24 * 3600.0))
        # the policy sections (docs/access.md), each read by its owner:
        # recording + regions (lifecycle.rules), dtmf (PCI), audit (anomaly rules),
        # access (identities)
        self.policy: dict[str, Any] = {k: kw.pop(k) for k in POLICY_SECTIONS if k in kw}
        if kw:
            raise InputError(f"unknown server setting(s): {', '.join(sorted(kw))}")
        if self.max_open_calls < 1 or min(self.call_idle_s, self.resume_s) <= 0:
            raise InputError("max_open_calls, call_idle_s and resume_s must be positive")
        if self.housekeeping_s <= 0:
            raise InputError("housekeeping_s must be positive")
        if self.ingest_codec not in ("opus", "g711", "auto"):
            raise InputError(f"ingest_codec {self.ingest_codec!r}: opus, g711 or auto")
        if self.compact_workers < 1 or self.auto_opus_calls < 0:
            raise InputError("compact_workers must be at least 1, auto_opus_calls at least 0")
        if self.reclaim_interval_s < 0 or not 0 < self.reclaim_threshold <= 1:
            raise InputError(
                "reclaim_interval_s must be >= 0 (0: never) and reclaim_threshold in (0, 1]"
            )
        if self.export_approval_s <= 0:
            raise InputError("export_approval_s must be positive")
        if self.ingest_mux_chunks < 0 or self.ingest_workers < 0:
            raise InputError("ingest_workers and ingest_mux_chunks must be 0 or more")
        if self.workers < self.max_concurrent_rpcs:
            raise InputError(
                "workers must be at least max_concurrent_rpcs (each stream holds a worker thread)"
            )


class IngestServicer(pbg.IngestServicer):
    """Ingest.Record and Ingest.RecordCalls: proto <-> the engine's RecordStream and
    MuxStream (ingest.py)."""

    def __init__(self, ingestor: Ingestor, config: Config) -> None:
        self.ingestor = ingestor
        self.config = config

    @streaming
    def Record(
        self, request_iterator: Iterator[pb.IngestRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.IngestReply]:
        who = _who()
        self._note_digits_kept()
        stream = RecordStream(self.ingestor, idle_s=self.config.ingest_idle_s)
        decode = lambda item: _ingest_request(item, who)  # noqa: E731
        for reply in stream.run(request_iterator, decode, active=context.is_active):
            yield _ingest_reply(reply)

    def _note_digits_kept(self) -> None:
        """The policy that keeps DTMF digits (PCI: docs/access.md "PCI") is audited on
        every ingest stream it applies to."""
        if self.ingestor.settings.keep_digits:
            rpcctx.note_detail("DTMF digits of its calls kept by the policy [dtmf] keep_digits")

    @unary
    def Decide(self, r: pb.CallStart, context: grpc.ServicerContext) -> pb.CallDecision:
        d, log_index, time_us = self.ingestor.decide(_spec(r, _who()))
        return decisions.decision_pb(d, log_index=log_index, time_us=time_us)

    @streaming
    def RecordCalls(
        self, request_iterator: Iterator[pb.IngestMux], context: grpc.ServicerContext
    ) -> Iterator[pb.IngestMuxReply]:
        chunks = self.config.ingest_mux_chunks or os.cpu_count() or 1
        stream = MuxStream(
            self.ingestor,
            idle_s=self.config.ingest_idle_s,
            pool=self.ingestor.workers if chunks > 1 else None,
            chunks=chunks,
        )
        who = _who()
        self._note_digits_kept()
        decode = lambda item: _mux_request(item, who)  # noqa: E731
        for events in stream.run(request_iterator, decode, active=context.is_active):
            yield _mux_reply(events)


def _mux_request(item: pb.IngestMux | Undecodable, who: Identity) -> list[MuxItem]:
    if isinstance(item, Undecodable):
        raise InputError(item.message("/callvault.v1.Ingest/RecordCalls"))
    out = []
    for it in item.items:
        which = it.WhichOneof("msg")
        req: Request
        if which == "batch":
            b = it.batch
            req = Batch(b.seq, b.leg, b.packets, b.lengths, b.arrival_us)
        elif which == "start":
            req = _spec(it.start, who)
        elif which == "end":
            req = End(it.end.batches, it.end.end_us)
        elif which == "leave":
            req = Leave()
        elif which in ("pause", "resume"):  # PCI (lane pci)
            c = getattr(it, which)
            req = Control(c.seq, which == "pause", c.at_us)
        else:
            req = Unknown()
        out.append(MuxItem(it.slot, req))
    return out


def _mux_reply(events: list[MuxEvent]) -> pb.IngestMuxReply:
    out = pb.IngestMuxReply()
    for slot, r in events:
        ev = out.events.add(slot=slot)
        if isinstance(r, Progress):
            a = ev.ack
            a.seq = r.seq
            a.durable_frames.extend(r.durable_frames)
            a.chain_records = r.chain_records
            a.chain_head = r.chain_head
        elif isinstance(r, CallFailed):
            code = status_of(r.error) or grpc.StatusCode.INTERNAL
            ev.error.code = code.value[0]
            ev.error.message = str(r.error) or type(r.error).__name__
        elif isinstance(r, Started):
            ev.started.CopyFrom(_ingest_reply(r).started)
        else:
            ev.sealed.CopyFrom(_ingest_reply(r).sealed)
    return out


def _ingest_request(item: pb.IngestRequest | Undecodable, who: Identity) -> Request:
    if isinstance(item, Undecodable):
        raise InputError(item.message("/callvault.v1.Ingest/Record"))
    which = item.WhichOneof("msg")
    if which == "start":
        return _spec(item.start, who)
    if which == "batch":
        b = item.batch
        return Batch(b.seq, b.leg, b.packets, b.lengths, b.arrival_us)
    if which == "end":
        return End(item.end.batches, item.end.end_us)
    if which in ("pause", "resume"):  # PCI (lane pci)
        c = getattr(item, which)
        return Control(c.seq, which == "pause", c.at_us)
    return Unknown()


@dataclass(frozen=True)
class RefusedSpec(CallSpec):
    """A CallStart the caller may not make: the ingestor's ``check`` refuses it with
    PERMISSION_DENIED before anything is kept (that call only, on RecordCalls)."""

    refusal: str = ""

    def check(self) -> None:
        raise AccessDenied(self.refusal)


def _spec(s: pb.CallStart, who: Identity) -> CallSpec:
    """The engine's CallSpec of a CallStart; its tenant scoped by the caller: a tenant
    recorder records in its own tenant (an empty tenant is its tenant) and another
    tenant is PERMISSION_DENIED (docs/access.md "Tenants")."""
    tenant = policy.tenant_of(who, s.tenant)
    refusal = ""
    if tenant is None:
        tenant = s.tenant
        refusal = f"{who.name} records for tenant {who.tenant}, not {s.tenant} (call {s.call_id})"
    elif who.tenant is None:
        tenant = s.tenant  # as before: empty is "default", checked by the ingestor
    if not refusal:  # the stream's audit entry names the calls it started
        rpcctx.note_call(tenant or "default", s.call_id)
    legs = tuple(leg.name for leg in s.legs)
    m = s.meta
    meta: dict[str, Any] = {
        "direction": m.direction,
        "agent": m.agent,
        "skill_group": m.skill_group,
        "customer_number": m.customer_number,
        "tags": list(m.tags),
        "extra": dict(m.extra),
    }
    fields: dict[str, Any] = dict(
        recording_id=s.recording_id,
        call_id=s.call_id,
        tenant=tenant,
        legs=legs,
        start_us=s.start_us,
        event_payload_types=tuple(tuple(leg.event_payload_types) for leg in s.legs),
        meta=meta,
        region=s.region,
        consent=decisions.consent_name(s.consent),
    )
    return RefusedSpec(refusal=refusal, **fields) if refusal else CallSpec(**fields)


def _ingest_reply(r: Reply) -> pb.IngestReply:
    if isinstance(r, Progress):
        return pb.IngestReply(
            ack=pb.Ack(
                seq=r.seq,
                durable_frames=r.durable_frames,
                chain_records=r.chain_records,
                chain_head=r.chain_head,
            )
        )
    if isinstance(r, Started):
        started = pb.Started(
            resume_from_seq=r.resume_from_seq,
            resumed=r.resumed,
            start_us=r.start_us,
            sealed_before=r.sealed_before,
        )
        if r.decision is not None:
            started.decision.CopyFrom(decisions.decision_pb(r.decision))
        return pb.IngestReply(started=started)
    # log_index is unsigned on the wire
    return pb.IngestReply(
        sealed=pb.Sealed(seal=r.seal, frames=r.frames, log_index=max(r.log_index, 0))
    )


class ArchiveServicer(pbg.ArchiveServicer):
    def __init__(
        self,
        vault: Vault,
        ingestor: Ingestor,
        config: Config | None = None,
        exports: ExportRequests | None = None,
    ) -> None:
        self.vault = vault
        self.ingestor = ingestor
        c = config or Config()
        # four-eyes export requests (docs/access.md), shared with IntegrityServicer
        self.exports = exports or ExportRequests(vault.path / "access", ttl_s=c.export_approval_s)

    def _frames(self, e: CallEntry) -> int:
        return playback.durable_frames(self.vault, self.ingestor, e.call_id, tenant=e.tenant)

    def _search(
        self, r: pb.SearchRequest, *, limit: int, after: tuple[int, str] | None
    ) -> list[CallEntry]:
        """The calls of a SearchRequest's filters, in its order, past ``after``: the
        caller's tenant only (another tenant's: none), an agent's own calls only."""
        _check_texts(r, "agent", "skill_group", "tag", "direction")
        if r.until_us and r.until_us <= r.since_us:
            raise InputError(f"until_us {r.until_us} is not after since_us {r.since_us}")
        if r.max_duration_ms and r.max_duration_ms < r.min_duration_ms:
            raise InputError("max_duration_ms is below min_duration_ms")
        who = _who()
        tenant = policy.tenant_of(who, r.tenant)
        agent = r.agent or None
        if who.role == "agent":
            if agent not in (None, who.name):
                return []
            agent = who.name
        if tenant is None:
            return []
        found = self.vault.list_calls(
            tenant=tenant,
            since_us=r.since_us,
            until_us=r.until_us or 2**63 - 1,
            agent=agent,
            skill_group=r.skill_group or None,
            tag=r.tag or None,
            direction=r.direction or None,
            min_duration_us=r.min_duration_ms * 1000,
            max_duration_us=r.max_duration_ms * 1000 if r.max_duration_ms else None,
            limit=limit,
            reverse=callinfo.newest_first(r),
            after=after,
        )
        for e in found:
            rpcctx.note_call(e.tenant, e.call_id)
        return found

    @streaming
    def Search(self, r: pb.SearchRequest, context: grpc.ServicerContext) -> Iterator[pb.CallInfo]:
        if r.page_size or r.page_token:
            raise InputError(
                "Search streams every match and takes no page_size or page_token: "
                "use SearchCalls for pages (or limit to cap the stream)"
            )
        if r.decisions:  # calls not recorded (docs/access.md "Recording rules")
            yield from self._decisions(r)
            return
        for e in self._search(r, limit=r.limit, after=None):
            yield call_info(e, self._frames(e))

    def _decisions(self, r: pb.SearchRequest) -> Iterator[pb.CallInfo]:
        if r.until_us and r.until_us <= r.since_us:
            raise InputError(f"until_us {r.until_us} is not after since_us {r.since_us}")
        who = _who()
        tenant = policy.tenant_of(who, r.tenant)
        if tenant is None or who.role == "agent":  # another tenant's; agents: own calls
            return
        found = self.vault.index.decisions(
            tenant,
            since_us=r.since_us,
            until_us=r.until_us or 2**63 - 1,
            reverse=callinfo.newest_first(r),
        )
        for n, d in enumerate(found):
            if r.limit and n >= r.limit:
                return
            yield decisions.decision_info(d)

    @unary
    def SearchCalls(
        self, r: pb.SearchRequest, context: grpc.ServicerContext
    ) -> pb.SearchCallsReply:
        if r.limit:
            raise InputError("SearchCalls pages with page_size; limit is for Search only")
        if r.decisions:
            raise InputError("decisions are listed by Search (one stream), not SearchCalls")
        size = callinfo.page_size(r.page_size)
        # one more than a page tells whether there is a next page
        calls = self._search(r, limit=size + 1, after=callinfo.page_cursor(r))
        page = calls[:size]
        token = callinfo.page_token(r, page[-1]) if len(calls) > size else ""
        return pb.SearchCallsReply(
            calls=[call_info(e, self._frames(e)) for e in page], next_page_token=token
        )

    @unary
    def GetCall(self, r: pb.GetCallRequest, context: grpc.ServicerContext) -> pb.CallInfo:
        who, tenant, call_id = _scoped(r.call)
        if self.vault.index.get_call(tenant, call_id) is None:
            d = self.vault.get_decision(call_id, tenant=tenant)
            # not recorded: its decision, not NOT_FOUND (a decision names no agent:
            # an agent identity sees none)
            if d is not None and who.role != "agent":
                return decisions.decision_info(d)
        _, e = _lookup(self.vault, r.call)
        return call_detail(
            self.vault,
            e,
            self._frames(e),
            summary=r.include_summary,
            customer_number=r.include_customer_number,
        )

    @streaming
    def Play(self, r: pb.PlayRequest, context: grpc.ServicerContext) -> Iterator[pb.PlayChunk]:
        _ref(r.call)
        fmt = _format(
            r.format,
            (pb.OPUS, pb.PCM),
            "Play streams OPUS or PCM (OGG and WAV files come from Export)",
        )
        who, e = _lookup(self.vault, r.call)
        _allow(who, policy.PLAY, e)
        tenant, call_id = e.tenant, e.call_id
        chunks = playback.play(
            self.vault,
            self.ingestor,
            call_id,
            tenant=tenant,
            from_ms=r.from_ms,
            to_ms=r.to_ms or None,
            chunk=r.frames_per_chunk or playback.DEFAULT_CHUNK,
            follow=r.follow,
            pcm=fmt == pb.PCM,
            active=context.is_active,
        )
        for c in chunks:
            out = pb.PlayChunk(
                first_frame=c.first_frame, frames=c.frames, live=c.live, pre_skip=c.pre_skip
            )
            for data, lengths in c.legs:
                out.legs.add(data=data, lengths=[] if lengths is None else lengths.tolist())
            # the audit: seconds of the call's timeline sent (every leg at once)
            rpcctx.note_audio(c.frames * FRAME_US / 1e6, sum(len(d) for d, _ in c.legs))
            yield out

    @streaming
    def Export(self, r: pb.ExportRequest, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        fmt = _format(
            r.format, (pb.OGG, pb.WAV), "Export writes OGG or WAV files (OPUS and PCM are for Play)"
        )
        if r.to_ms and r.to_ms <= r.from_ms:
            raise InputError(f"to_ms {r.to_ms} is not after from_ms {r.from_ms}")
        who, e = _lookup(self.vault, r.call)
        _allow(who, policy.EXPORT, e, r.approval)
        tenant, call_id = e.tenant, e.call_id
        if e.state != "sealed":
            raise VaultError(
                f"call {call_id} is {e.state}: only sealed calls are exported "
                "(Play streams a call being recorded)"
            )
        with tempfile.TemporaryDirectory(prefix="callvault-export-") as tmp:
            out = Path(tmp) / ("call.ogg" if fmt == pb.OGG else "call.wav")
            self.vault.export(
                call_id,
                out,
                tenant=tenant,
                from_s=r.from_ms / 1000,
                to_s=r.to_ms / 1000 if r.to_ms else None,
                metadata=r.include_metadata,
                customer_number=r.include_customer_number,
            )
            if r.approval:  # spent before the first byte goes out
                _use_approval(self.exports, who, r.approval, e, "export")
            rpcctx.note_audio(_seconds(e, r.from_ms, r.to_ms), out.stat().st_size)
            yield from _file_chunks(out, out.name)

    @unary
    def RequestExport(
        self, r: pb.RequestExportRequest, context: grpc.ServicerContext
    ) -> pb.ExportRequestInfo:
        _ref(r.call)
        if not r.reason.strip():
            raise InputError("an export request needs a reason (--reason TEXT)")
        ids.check_text(r.reason, "reason", ids.MAX_REASON_BYTES)
        who, e = _lookup(self.vault, r.call)
        req = self.exports.request(who, e.tenant, e.call_id, r.reason)
        rpcctx.note_detail(f"export request {req.id}")
        return _request_info(req)

    @unary
    def ApproveExport(
        self, r: pb.ApproveExportRequest, context: grpc.ServicerContext
    ) -> pb.ExportRequestInfo:
        if not r.id:
            raise InputError("id (the export request's) is required")
        ids.check_text(r.id, "id", 256)
        req = self.exports.approve(_who(), r.id)
        rpcctx.note_call(req.tenant, req.call_id)
        rpcctx.note_detail(f"export request {req.id} approved")
        return _request_info(req)

    @unary
    def ListExportRequests(
        self, r: pb.ListExportRequestsRequest, context: grpc.ServicerContext
    ) -> pb.ListExportRequestsReply:
        return pb.ListExportRequestsReply(
            requests=[_request_info(x) for x in self.exports.visible_to(_who())]
        )


def _use_approval(
    exports: ExportRequests, who: Identity, approval: str, e: CallEntry, what: str
) -> None:
    ids.check_text(approval, "approval", 256)
    exports.use(who, approval, e.tenant, e.call_id, what)
    rpcctx.note_detail(f"export request {approval} used ({what})")


def _request_info(r: ExportRequest) -> pb.ExportRequestInfo:
    return pb.ExportRequestInfo(
        id=r.id,
        tenant=r.tenant,
        call_id=r.call_id,
        reason=r.reason,
        requested_by=r.requested_by,
        requested_us=r.requested_us,
        approved_by=r.approved_by,
        approved_us=r.approved_us,
        expires_us=r.expires_us,
        used_us=r.used_us,
        used_by=r.used_by,
        used_for=r.used_for,
        state=r.state(time.time_ns() // 1000),
    )


def _file_chunks(path: Path, name: str) -> Iterator[pb.FileChunk]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while True:
            data = f.read(CHUNK_BYTES)
            if not data and offset:
                return
            yield pb.FileChunk(name=name, offset=offset, data=data, size=size)
            offset += len(data)
            if offset >= size:
                return


class IntegrityServicer(pbg.IntegrityServicer):
    def __init__(self, vault: Vault, exports: ExportRequests | None = None) -> None:
        self.vault = vault
        self.exports = exports or ExportRequests(vault.path / "access")

    @unary
    def GetCheckpoint(
        self, r: pb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.Checkpoint:
        note = self.vault.checkpoint()
        cp = checkpoint.parse(note)
        return pb.Checkpoint(
            note=note,
            tree_size=cp.size,
            root_hash=cp.root,
            verifier_key=self.vault.signer.verifier_key(),
        )

    @unary
    def GetInclusionProof(
        self, r: pb.InclusionProofRequest, context: grpc.ServicerContext
    ) -> pb.InclusionProof:
        which = r.WhichOneof("leaf")
        if which == "call":
            _, e = _lookup(self.vault, r.call)
            if e.log_index < 0:
                raise VaultError(f"call {e.call_id} is not sealed: it has no log leaf yet")
            index = e.log_index
        elif which == "leaf_index":
            who = _who()
            if who.tenant is not None:
                raise AccessDenied(
                    f"{who.name} belongs to tenant {who.tenant}: the log is shared by every "
                    "tenant, so a tenant identity asks the proof of a call (call), not of "
                    "a leaf index"
                )
            index = r.leaf_index
        else:
            raise InputError("name the leaf: call or leaf_index")
        size, leaf, path, root = self.vault.inclusion_proof(index, r.tree_size)
        return pb.InclusionProof(
            leaf_index=index, tree_size=size, leaf_hash=leaf, path=path, root_hash=root
        )

    @unary
    def GetConsistencyProof(
        self, r: pb.ConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.ConsistencyProof:
        new, path, old_root, new_root = self.vault.consistency_proof(r.old_size, r.new_size)
        return pb.ConsistencyProof(
            old_size=r.old_size, new_size=new, path=path, old_root=old_root, new_root=new_root
        )

    @streaming
    def GetBundle(
        self, r: pb.GetBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FileChunk]:
        from callvault.vault.bundle import write_bundle

        who, e = _lookup(self.vault, r.call)
        _allow(who, policy.BUNDLE, e, r.approval)
        with tempfile.TemporaryDirectory(prefix="callvault-bundle-") as tmp:
            d = write_bundle(
                self.vault,
                e.call_id,
                Path(tmp) / "bundle",
                tenant=e.tenant,
                with_customer_number=r.include_customer_number,
            )
            files = sorted(x for x in d.rglob("*") if x.is_file())
            if r.approval:  # spent before the first byte goes out
                _use_approval(self.exports, who, r.approval, e, "bundle")
            rpcctx.note_audio(_seconds(e), sum(p.stat().st_size for p in files))
            for p in files:
                yield from _file_chunks(p, p.relative_to(d).as_posix())

    @streaming
    def Verify(
        self, r: pb.VerifyRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.VerifyResult]:
        who = _who()
        if r.all and who.tenant is not None:
            # a tenant's own calls; the segments are every tenant's (docs/access.md)
            for e in self.vault.list_calls(tenant=who.tenant):
                rpcctx.note_call(e.tenant, e.call_id)
                found = [str(p) for p in self.vault.verify_call(e.call_id, tenant=e.tenant)]
                yield pb.VerifyResult(what=f"call {e.call_id}", ok=not found, problems=found)
            return
        if r.all:
            for what, problems in self.vault.verify_parts():
                yield pb.VerifyResult(
                    what=what, ok=not problems, problems=[str(p) for p in problems]
                )
            return
        if not r.call_ids:
            raise InputError("name the calls to verify (call_ids), or set all")
        _check_texts(r)
        for call_id in r.call_ids:
            ids.check_call_id(call_id, "call_ids item")
        tenant = policy.tenant_of(who, r.tenant)
        for call_id in r.call_ids:
            rpcctx.note_call(tenant or r.tenant, call_id)
            if tenant is None:  # another tenant's: as a call that does not exist
                what = f"call {call_id}"
                gone = Problem(what, None, str(policy.not_found(call_id, r.tenant)))
                yield pb.VerifyResult(what=what, ok=False, problems=[str(gone)])
                continue
            found = [str(p) for p in self.vault.verify_call(call_id, tenant=tenant)]
            yield pb.VerifyResult(what=f"call {call_id}", ok=not found, problems=found)


class AdminServicer(pbg.AdminServicer):
    def __init__(
        self,
        vault: Vault,
        ingestor: Ingestor,
        methods: MethodLog,
        config: Config | None = None,
        reclaim_error: Callable[[], str] = lambda: "",
    ) -> None:
        self.vault = vault
        self.ingestor = ingestor
        self.methods = methods
        self.config = config or Config()
        self.reclaim_error = reclaim_error  # the scheduled reclaim's last failure
        self.started = time.monotonic()
        self.compactor: Any = None  # vault.compact.Compactor, set by the server (peak mode)
        self.audit: AuditTrail | None = None  # the server's audit trail (access.audit)
        # more StatsReply fields by name, from the server's other parts (issue 12's
        # lifecycle: capacity 75-78, erasure by subject 90-91, ...)
        self.stats_parts: list[Callable[[], dict[str, Any]]] = []

    @unary
    def Stats(self, r: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsReply:
        who = _who()
        if who.tenant is not None:
            return self._tenant_stats(who.tenant)
        s = self.vault.stats()
        pps, bps = self.ingestor.rates()
        mux_streams, mux_calls = self.ingestor.mux_counts()
        return pb.StatsReply(
            calls=s["calls"],
            open_calls=self.ingestor.open_calls(),
            stored_bytes=s["stored_bytes"],
            free_disk_bytes=s["free_disk_bytes"],
            ingest_packets_per_s=pps,
            ingest_bytes_per_s=bps,
            packets_total=self.ingestor.packets_total,
            batches_total=self.ingestor.batches_total,
            log_size=s["log_size"],
            uptime_s=time.monotonic() - self.started,
            streams=self.methods.active,
            rpcs=self.methods.counts(),
            writer_error=self.vault.writer_error or "",
            expired_calls=self.ingestor.expired_total,
            resume_sealed_calls=self.ingestor.resume_sealed_total,
            not_recorded_calls=self.ingestor.not_recorded_total,
            unsupported_codec_calls=self.ingestor.unsupported_codec["calls"],
            unsupported_codec_packets=self.ingestor.unsupported_codec["packets"],
            unsupported_codec_frames=self.ingestor.unsupported_codec["frames"],
            **self._compactor_stats(),
            reclaimable_bytes=s["reclaimable_bytes"],
            reclaimed_bytes=s["reclaimed_bytes"],
            reclaim_error=self.reclaim_error(),
            mux_streams=mux_streams,
            mux_calls=mux_calls,
            **self._audit_stats(),
            **hold_counts(self.vault),
            **{k: v for part in self.stats_parts for k, v in part().items()},
        )

    def _audit_stats(self) -> dict[str, Any]:
        """StatsReply 40-42: the audit trail."""
        trail = self.audit
        if trail is None:
            return {}
        return {
            "audit_entries": trail.count,
            "audit_alerts": trail.alerts,
            "audit_error": trail.error,
        }

    @streaming
    def Audit(self, r: pb.AuditRequest, context: grpc.ServicerContext) -> Iterator[pb.AuditEntry]:
        """The trail's entries that match (docs/access.md "Audit trail"); an identity of
        a tenant sees only its tenant's (access.audit.tenant_view)."""
        from callvault.access import audit

        if self.audit is None:
            raise VaultError("this server keeps no audit trail")
        for name in ("call_id", "tenant"):
            if getattr(r, name):
                ids.check_call_id(getattr(r, name), name)
        ids.check_text(r.identity, "identity", 1 << 10)
        want = audit.Filter(
            call_id=r.call_id,
            tenant=r.tenant,
            identity=r.identity,
            since_us=r.since_us,
            until_us=r.until_us,
            kind=r.kind,
            after_seq=r.after_seq,
        )
        tenant = current_identity().tenant
        n = 0
        for e in self.audit.entries():
            doc = audit.tenant_view(e.doc, tenant)  # filters apply to what it may see
            if doc is None or not want.matches(audit.Entry(e.seq, e.hash, doc, e.offset)):
                continue
            yield audit_entry(doc, e.hash)
            n += 1
            if r.limit and n >= r.limit:
                return

    def _tenant_stats(self, tenant: str) -> pb.StatsReply:
        """A tenant identity's Stats: its calls and open calls; the server-wide figures
        are not kept per tenant and stay 0 (they would tell of other tenants)."""
        calls = self.vault.list_calls(tenant=tenant)
        with self.ingestor.lock:
            live = sum(1 for t, _c in self.ingestor.calls if t == tenant)
        return pb.StatsReply(
            tenant=tenant,
            calls=len(calls),
            open_calls=live,
            uptime_s=time.monotonic() - self.started,
            **hold_counts(self.vault, tenant=tenant),
        )

    def _compactor_stats(self) -> dict[str, Any]:
        """StatsReply 22-26: the compactor's backlog (peak mode)."""
        c = self.compactor
        if c is None:
            return {"compactor_paused": True}
        calls, seconds = c.backlog()
        return {
            "compact_backlog_calls": calls,
            "compact_backlog_seconds": seconds,
            "compacted_calls": c.compacted,
            "compact_failed_calls": c.failed,
            "compactor_paused": c.paused,
        }

    @unary
    def Erase(self, r: pb.EraseRequest, context: grpc.ServicerContext) -> pb.EraseReply:
        _ref(r.call)  # the request's shape first, then whether the caller sees the call
        ids.check_text(r.reason, "reason", ids.MAX_REASON_BYTES)
        who, e = _lookup(self.vault, r.call)
        tenant, call_id = e.tenant, e.call_id
        reason = r.reason
        if r.override_retention:  # docs/policy.md "Modes": admins, with a reason
            if who.role != "admin":
                raise AccessDenied(
                    f"{who.name} is {who.role}: only an admin may erase a call under "
                    "governance retention before its end"
                )
            reason = override_reason(self.vault, e, r.reason)
        check_writer(self.vault)
        # a held call: the erasure is recorded as pending, carried out at the last
        # release (docs/policy.md "Legal holds"); OK with deferred set
        done = erase_or_defer(
            self.vault,
            call_id,
            tenant=tenant,
            reason=reason,
            override_governance=r.override_retention,
            by=by_identity(who.name, who.role, who.tenant, who.via),
        )
        if not done.erased:
            return pb.EraseReply(log_index=done.log_index, deferred=True, deferred_why=done.message)
        return pb.EraseReply(log_index=done.entry.erase_log_index)

    @unary
    def Reindex(self, r: pb.ReindexRequest, context: grpc.ServicerContext) -> pb.ReindexReply:
        _platform_only(_who(), "reindex")
        n = self.ingestor.open_calls()
        if n:
            raise VaultError(
                f"{n} call(s) are being recorded: reindex when none is (or "
                "stop the server and run `callvault --data DIR reindex`)"
            )
        return pb.ReindexReply(records=self.vault.reindex())

    @unary
    def Reclaim(self, r: pb.ReclaimRequest, context: grpc.ServicerContext) -> pb.ReclaimReply:
        _platform_only(_who(), "reclaim")
        threshold = r.threshold or self.config.reclaim_threshold
        if not 0 < threshold <= 1:
            raise InputError(f"threshold must be in (0, 1], not {r.threshold}")
        check_writer(self.vault)
        done = self.vault.reclaim(threshold=threshold, scan=r.scan)
        return pb.ReclaimReply(**done.as_dict())

    @unary
    def EraseTenant(
        self, r: pb.EraseTenantRequest, context: grpc.ServicerContext
    ) -> pb.EraseTenantReply:
        """Erase a whole tenant (docs/format.md 8.6); platform identities only."""
        _platform_only(_who(), "erase a tenant")
        if not r.tenant:
            raise InputError("tenant is required")
        ids.check_call_id(r.tenant, "tenant")
        ids.check_text(r.reason, "reason", ids.MAX_REASON_BYTES)
        check_writer(self.vault)
        # refused while the ingestor records a call of the tenant (its writer is open)
        doc = self.vault.erase_tenant(r.tenant, reason=r.reason)
        rpcctx.note_detail(f"tenant {r.tenant} erased ({doc['calls']} calls)")
        return pb.EraseTenantReply(
            calls=doc["calls"], log_index=doc["log_index"], time_us=doc["time_us"]
        )

    @unary
    def RotateKey(self, r: pb.RotateKeyRequest, context: grpc.ServicerContext) -> pb.RotateKeyReply:
        _platform_only(_who(), "rotate-key")
        check_writer(self.vault)
        kek, n = self.vault.rotate_key()
        return pb.RotateKeyReply(kek_id=kek, rewrapped=n)


def audit_entry(doc: dict[str, Any], h: bytes) -> pb.AuditEntry:
    """An audit entry (docs/format.md 8.12) on the wire."""
    ident = doc.get("identity") or {}
    return pb.AuditEntry(
        seq=doc["seq"],
        time_us=doc["time_us"],
        kind=doc.get("kind", ""),
        identity=ident.get("name") or "",
        role=ident.get("role") or "",
        identity_tenant=ident.get("tenant") or "",
        via=ident.get("via") or "",
        method=doc.get("method", ""),
        calls=[pb.CallRef(tenant=t, call_id=c) for t, c in doc.get("calls", [])],
        outcome=doc.get("outcome", ""),
        audio_seconds=doc.get("audio_seconds", 0.0),
        audio_bytes=doc.get("audio_bytes", 0),
        peer=doc.get("peer", ""),
        reason=doc.get("reason", ""),
        detail=doc.get("detail", ""),
        rule=doc.get("rule", ""),
        cause=doc.get("cause", 0),
        started_us=doc.get("started_us", 0),
        hash=h,
    )

"""`Client`: typed methods for the Ingest, Archive, Integrity, Lifecycle and Admin services,
and `SidecarClient` for a sidecar's control API.

Methods return the generated messages (typed by ``_pb/callvault_pb2.pyi``);
server streams are iterators. Every unary call has a deadline (``timeout``,
per client, overridable per call); streams have none unless ``timeout=`` is
given, because a Play that follows a live call runs as long as the call. See
``callvault_client._channel`` for the retry rules.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from callvault_client import errors
from callvault_client._channel import DEFAULT, Metadata, Pem, Rpc, Timeout
from callvault_client._pb import callvault_pb2 as pb
from callvault_client.recording import AckEvent, BatchSource, Recording

_INGEST = "/callvault.v1.Ingest/"
_ARCHIVE = "/callvault.v1.Archive/"
_INTEGRITY = "/callvault.v1.Integrity/"
_ADMIN = "/callvault.v1.Admin/"
_SIDECAR = "/callvault.v1.Sidecar/"
_LIFECYCLE = "/callvault.v1.Lifecycle/"

MetaArg = pb.CallMeta | Mapping[str, Any] | None
ChunkCallback = Callable[[pb.FileChunk], None]

_META_FIELDS = ("direction", "agent", "skill_group", "customer_number")
_PLAY_FORMATS = {"opus": pb.OPUS, "pcm": pb.PCM}
_EXPORT_FORMATS = {"ogg": pb.OGG, "wav": pb.WAV}
_ORDERS = {"oldest": pb.SEARCH_ORDER_OLDEST_FIRST, "newest": pb.SEARCH_ORDER_NEWEST_FIRST}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)  # noqa: UP017 (the SDK runs on 3.10)

Instant = dt.datetime | int
"""An instant for search bounds: an aware datetime, or µs since the Unix epoch."""


def to_us(value: Instant, what: str = "instant") -> int:
    """µs since the Unix epoch of an aware datetime (exactly), or an int as it is.

    A naive datetime is refused: it names no instant (local time? UTC?), and a
    search off by the machine's UTC offset would silently miss calls."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{what} {value.isoformat()} is a naive datetime: give it a time zone, "
                "e.g. datetime(..., tzinfo=timezone.utc) or .astimezone()"
            )
        return (value - _EPOCH) // dt.timedelta(microseconds=1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{what} must be an aware datetime or an int of µs since the epoch, "
            f"not {type(value).__name__}"
        )
    return value


def _bound(value: Instant | None, us: int, name: str) -> int:
    """since/until (datetime or µs) or the older since_us/until_us keyword; not both."""
    if value is None:
        return us
    if us:
        raise ValueError(f"give {name} or {name}_us, not both")
    return to_us(value, name)


def _order(value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        return _ORDERS[value.lower().removesuffix("_first").removesuffix("-first")]
    except KeyError:
        raise ValueError(f"order {value!r}: expected one of {', '.join(_ORDERS)}") from None


def make_meta(meta: MetaArg) -> pb.CallMeta:
    """A CallMeta from a message or a mapping with keys direction, agent, skill_group,
    customer_number, tags (a list, or "a,b") and extra (a mapping of strings)."""
    if meta is None:
        return pb.CallMeta()
    if isinstance(meta, pb.CallMeta):
        return meta
    out = pb.CallMeta()
    for key, value in meta.items():
        if key in _META_FIELDS:
            setattr(out, key, str(value))
        elif key == "tags":
            tags = value.split(",") if isinstance(value, str) else list(value)
            out.tags.extend(str(t) for t in tags if t)
        elif key == "extra":
            out.extra.update({str(k): str(v) for k, v in dict(value).items()})
        else:
            raise ValueError(
                f"meta key {key!r}: expected one of {', '.join(_META_FIELDS)}, tags, extra"
            )
    return out


def _format(value: str | int, table: Mapping[str, int], what: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return table[value.lower()]
    except KeyError:
        raise ValueError(f"{what} format {value!r}: expected one of {', '.join(table)}") from None


class _Base:
    """Channel ownership, context management and the shared options."""

    def __init__(
        self,
        address: str,
        *,
        tls_ca: Pem | None = None,
        tls_cert: Pem | None = None,
        tls_key: Pem | None = None,
        tls_server_name: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: tuple[float, float] = (0.1, 5.0),
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
        token: str | None = None,
    ) -> None:
        self._rpc = Rpc(
            address,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_server_name=tls_server_name,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            metadata=metadata,
            options=options,
            token=token,
        )

    @property
    def address(self) -> str:
        return self._rpc.address

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until connected (``Unavailable`` after ``timeout`` seconds)."""
        self._rpc.wait_ready(timeout)

    def close(self) -> None:
        """Close the channel; RPCs in flight are cancelled."""
        self._rpc.close()

    def __enter__(self) -> _Base:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(_Base):
    """A connection to a callvault server.

    ``Client(address, token=None, tls_ca=..., tls_cert=..., tls_key=..., timeout=30.0,
    retries=3, metadata=(), options=())``: an insecure channel unless a TLS option is
    given (``tls_ca`` trusts that CA instead of the system roots; ``tls_cert``/``tls_key``
    present a client certificate). ``token``: an API token (``cvt_...``) sent with every
    call as ``authorization: Bearer <token>``; None takes $CALLVAULT_TOKEN when set,
    "" sends none. ``timeout`` is the default deadline of unary
    calls in seconds (None: none); ``retries`` how often an idempotent call is
    retried on UNAVAILABLE; ``metadata`` is sent with every call; ``options`` are
    extra grpc channel options. Use it as a context manager or call ``close()``.
    """

    def __enter__(self) -> Client:
        return self

    # -- Ingest -------------------------------------------------------------------
    def record(
        self,
        call_id: str,
        legs: Sequence[str | pb.LegSpec] = ("agent", "customer"),
        *,
        tenant: str = "",
        start_us: int = 0,
        meta: MetaArg = None,
        on_ack: Callable[[AckEvent], None] | None = None,
        reconnect_timeout: float | None = 60.0,
        recording_id: str | None = None,
        region: str = "",
        consent: str | int = "",
    ) -> Recording:
        """Start recording a call over an Ingest stream; see :class:`Recording`.

        ``legs`` are names or LegSpec messages (channel order); ``start_us`` the
        wall-clock instant of frame 0 (0: the server takes it from the first batch);
        ``on_ack`` is called once per acknowledged batch with its send and ack times;
        after a broken stream the recording reconnects until ``reconnect_timeout``
        seconds pass without a Started (None: forever). ``recording_id`` identifies
        this recording on every reconnect (default: a random one), so the server tells
        a resume from another recording that reuses the call id (ALREADY_EXISTS).
        ``region`` and ``consent`` ("granted", "declined", "unknown") are for the
        server's recording policy: ``Recording.recorded`` says what it decided."""
        specs = [pb.LegSpec(name=leg) if isinstance(leg, str) else leg for leg in legs]
        start = pb.CallStart(
            call_id=call_id,
            tenant=tenant,
            legs=specs,
            start_us=start_us,
            meta=make_meta(meta),
            recording_id=secrets.token_hex(16) if recording_id is None else recording_id,
            region=region,
            consent=consent_enum(consent),  # type: ignore[arg-type]
        )
        return self.record_from(start, on_ack=on_ack, reconnect_timeout=reconnect_timeout)

    def record_from(
        self,
        start: pb.CallStart,
        *,
        on_ack: Callable[[AckEvent], None] | None = None,
        reconnect_timeout: float | None = 60.0,
        source: BatchSource | None = None,
        retry: Callable[[errors.CallvaultClientError], bool] | None = None,
        on_reply: Callable[[pb.IngestReply], None] | None = None,
        on_lost: Callable[[errors.CallvaultClientError, float], None] | None = None,
    ) -> Recording:
        """Start recording from a complete CallStart (one a forwarder kept, say, so
        that a restarted process sends the same one); the options are
        :class:`Recording`'s: ``source`` (batches read from a :class:`BatchSource`
        instead of :meth:`Recording.send`), ``retry``, ``on_reply``, ``on_lost``."""
        return Recording(
            self._rpc,
            start,
            on_ack=on_ack,
            reconnect_timeout=reconnect_timeout,
            source=source,
            retry=retry,
            on_reply=on_reply,
            on_lost=on_lost,
        )

    def decide(self, start: pb.CallStart, *, timeout: Timeout = DEFAULT) -> pb.CallDecision:
        """Ingest.Decide: whether the server's recording policy records the call of this
        CallStart (a call not recorded gets its decision entry stored). Not retried."""
        return self._rpc.unary(
            _INGEST + "Decide", start, pb.CallDecision, idempotent=False, timeout=timeout
        )

    # -- Archive ------------------------------------------------------------------
    def _search_request(
        self,
        *,
        tenant: str,
        since: Instant | None,
        until: Instant | None,
        since_us: int,
        until_us: int,
        agent: str,
        skill_group: str,
        direction: str,
        tag: str,
        min_duration_ms: int,
        max_duration_ms: int,
        order: str | int,
    ) -> pb.SearchRequest:
        return pb.SearchRequest(
            tenant=tenant,
            since_us=_bound(since, since_us, "since"),
            until_us=_bound(until, until_us, "until"),
            agent=agent,
            skill_group=skill_group,
            direction=direction,
            tag=tag,
            min_duration_ms=min_duration_ms,
            max_duration_ms=max_duration_ms,
            order=_order(order),  # type: ignore[arg-type]
        )

    def search(
        self,
        *,
        tenant: str = "",
        since: Instant | None = None,
        until: Instant | None = None,
        agent: str = "",
        skill_group: str = "",
        direction: str = "",
        tag: str = "",
        min_duration_ms: int = 0,
        max_duration_ms: int = 0,
        order: str | int = "oldest",
        limit: int = 0,
        since_us: int = 0,
        until_us: int = 0,
        timeout: Timeout = None,
        decisions: bool = False,
    ) -> Iterator[pb.CallInfo]:
        """Calls starting in [since, until) matching every filter given, as one stream
        (at most ``limit``; 0: all). ``since``/``until`` are aware datetimes or µs
        since the epoch (``since_us``/``until_us`` are the older spelling);
        ``order`` "oldest" (first, the default) or "newest". For pages use
        :meth:`search_page` or :meth:`search_all`. ``decisions``: the calls NOT
        recorded (their decision entries, state "not_recorded") instead of calls."""
        req = self._search_request(
            tenant=tenant,
            since=since,
            until=until,
            since_us=since_us,
            until_us=until_us,
            agent=agent,
            skill_group=skill_group,
            direction=direction,
            tag=tag,
            min_duration_ms=min_duration_ms,
            max_duration_ms=max_duration_ms,
            order=order,
        )
        req.limit = limit
        req.decisions = decisions
        return self._rpc.stream(
            _ARCHIVE + "Search", req, pb.CallInfo, idempotent=True, timeout=timeout
        )

    def search_page(
        self,
        *,
        tenant: str = "",
        since: Instant | None = None,
        until: Instant | None = None,
        agent: str = "",
        skill_group: str = "",
        direction: str = "",
        tag: str = "",
        min_duration_ms: int = 0,
        max_duration_ms: int = 0,
        order: str | int = "oldest",
        page_size: int = 0,
        page_token: str = "",
        timeout: Timeout = DEFAULT,
    ) -> pb.SearchCallsReply:
        """One page of a search (Archive.SearchCalls): at most ``page_size`` calls
        (0: the server's default, 100; at most 1000) and ``next_page_token``,
        empty on the last page. Pass it back as ``page_token`` with the same
        filters and order to get the next page; calls recorded meanwhile do not
        shift the pages. Arguments as :meth:`search`."""
        req = self._search_request(
            tenant=tenant,
            since=since,
            until=until,
            since_us=0,
            until_us=0,
            agent=agent,
            skill_group=skill_group,
            direction=direction,
            tag=tag,
            min_duration_ms=min_duration_ms,
            max_duration_ms=max_duration_ms,
            order=order,
        )
        req.page_size = page_size
        req.page_token = page_token
        return self._rpc.unary(
            _ARCHIVE + "SearchCalls", req, pb.SearchCallsReply, idempotent=True, timeout=timeout
        )

    def search_all(
        self,
        *,
        tenant: str = "",
        since: Instant | None = None,
        until: Instant | None = None,
        agent: str = "",
        skill_group: str = "",
        direction: str = "",
        tag: str = "",
        min_duration_ms: int = 0,
        max_duration_ms: int = 0,
        order: str | int = "oldest",
        page_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> Iterator[pb.CallInfo]:
        """Every call of a search, fetched page by page as the iterator is consumed
        (one :meth:`search_page` request per page, each with its own deadline and
        retries), so a long result never holds one stream open. Arguments are
        checked at once (a naive datetime raises here, not at the first page)."""
        kw: dict[str, Any] = dict(
            tenant=tenant,
            since=None if since is None else to_us(since, "since"),
            until=None if until is None else to_us(until, "until"),
            agent=agent,
            skill_group=skill_group,
            direction=direction,
            tag=tag,
            min_duration_ms=min_duration_ms,
            max_duration_ms=max_duration_ms,
            order=_order(order),
            page_size=page_size,
            timeout=timeout,
        )

        def pages() -> Iterator[pb.CallInfo]:
            token = ""
            while True:
                page = self.search_page(page_token=token, **kw)
                yield from page.calls
                token = page.next_page_token
                if not token:
                    return

        return pages()

    def get_call(
        self,
        call_id: str,
        *,
        tenant: str = "",
        include_summary: bool = False,
        include_customer_number: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> pb.CallInfo:
        """One call's metadata (NotFound if there is no such call in the tenant)."""
        req = pb.GetCallRequest(
            call=pb.CallRef(tenant=tenant, call_id=call_id),
            include_summary=include_summary,
            include_customer_number=include_customer_number,
        )
        return self._rpc.unary(
            _ARCHIVE + "GetCall", req, pb.CallInfo, idempotent=True, timeout=timeout
        )

    def play(
        self,
        call_id: str,
        *,
        tenant: str = "",
        from_ms: int = 0,
        to_ms: int = 0,
        format: str | int = "opus",
        follow: bool = False,
        frames_per_chunk: int = 0,
        timeout: Timeout = None,
    ) -> Iterator[pb.PlayChunk]:
        """A time range of a call as Opus packets or PCM ("opus" / "pcm"), in chunks.

        With ``follow`` on an open call the stream continues as the call is
        recorded, until it is sealed, ``timeout`` passes or the iterator is closed."""
        req = pb.PlayRequest(
            call=pb.CallRef(tenant=tenant, call_id=call_id),
            from_ms=from_ms,
            to_ms=to_ms,
            format=_format(format, _PLAY_FORMATS, "play"),  # type: ignore[arg-type]
            follow=follow,
            frames_per_chunk=frames_per_chunk,
        )
        return self._rpc.stream(
            _ARCHIVE + "Play", req, pb.PlayChunk, idempotent=True, timeout=timeout
        )

    def export_chunks(
        self,
        call_id: str,
        *,
        tenant: str = "",
        format: str | int = "ogg",
        from_ms: int = 0,
        to_ms: int = 0,
        timeout: Timeout = None,
        include_metadata: bool = False,
        include_customer_number: bool = False,
        approval: str = "",
    ) -> Iterator[pb.FileChunk]:
        """The raw Export stream (see :meth:`export` to write a file)."""
        req = pb.ExportRequest(
            call=pb.CallRef(tenant=tenant, call_id=call_id),
            format=_format(format, _EXPORT_FORMATS, "export"),  # type: ignore[arg-type]
            from_ms=from_ms,
            to_ms=to_ms,
            include_metadata=include_metadata,
            include_customer_number=include_customer_number,
            approval=approval,
        )
        return self._rpc.stream(
            _ARCHIVE + "Export", req, pb.FileChunk, idempotent=True, timeout=timeout
        )

    def export(
        self,
        call_id: str,
        out: str | os.PathLike[str],
        *,
        tenant: str = "",
        format: str | int | None = None,
        from_ms: int = 0,
        to_ms: int = 0,
        progress: ChunkCallback | None = None,
        timeout: Timeout = None,
        include_metadata: bool = False,
        include_customer_number: bool = False,
        approval: str = "",
    ) -> int:
        """Write a sealed call (or [from_ms, to_ms) of it) to ``out`` as Ogg Opus or WAV.

        An Ogg file names the call in its comments; ``include_metadata`` and
        ``include_customer_number`` add the call's metadata and customer number
        (personal data: off unless asked). ``approval``: the id of an approved export
        request of the call (four-eyes export, the legal role: :meth:`request_export`).

        ``format`` defaults from the file name (.wav: WAV, else Ogg). The file
        appears whole or not at all (written to a temporary file beside it, then
        renamed). ``progress(chunk)`` is called after each chunk is written
        (``chunk.offset + len(chunk.data)`` of ``chunk.size`` bytes). Returns the
        bytes written."""
        path = Path(out)
        fmt = format if format is not None else ("wav" if path.suffix.lower() == ".wav" else "ogg")
        chunks = self.export_chunks(
            call_id,
            tenant=tenant,
            format=fmt,
            from_ms=from_ms,
            to_ms=to_ms,
            timeout=timeout,
            include_metadata=include_metadata,
            include_customer_number=include_customer_number,
            approval=approval,
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                written = _write_chunks(chunks, lambda name: f, progress)
                n = sum(written.values())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n

    # -- Four-eyes export (docs/access.md) -------------------------------------------
    def request_export(
        self, call_id: str, reason: str, *, tenant: str = "", timeout: Timeout = DEFAULT
    ) -> pb.ExportRequestInfo:
        """Ask to export a call (legal role): a pending request; another legal or admin
        identity approves it (:meth:`approve_export`), then pass its ``id`` as
        ``approval`` to :meth:`export` or :meth:`get_bundle`, once. Never retried."""
        req = pb.RequestExportRequest(
            call=pb.CallRef(tenant=tenant, call_id=call_id), reason=reason
        )
        return self._rpc.unary(
            _ARCHIVE + "RequestExport",
            req,
            pb.ExportRequestInfo,
            idempotent=False,
            timeout=timeout,
        )

    def approve_export(
        self, request_id: str, *, timeout: Timeout = DEFAULT
    ) -> pb.ExportRequestInfo:
        """Approve another identity's export request (four eyes). Never retried."""
        return self._rpc.unary(
            _ARCHIVE + "ApproveExport",
            pb.ApproveExportRequest(id=request_id),
            pb.ExportRequestInfo,
            idempotent=False,
            timeout=timeout,
        )

    def list_export_requests(self, *, timeout: Timeout = DEFAULT) -> list[pb.ExportRequestInfo]:
        """The export requests this identity may see, oldest first."""
        reply = self._rpc.unary(
            _ARCHIVE + "ListExportRequests",
            pb.ListExportRequestsRequest(),
            pb.ListExportRequestsReply,
            idempotent=True,
            timeout=timeout,
        )
        return list(reply.requests)

    # -- Integrity ----------------------------------------------------------------
    def get_checkpoint(self, *, timeout: Timeout = DEFAULT) -> pb.Checkpoint:
        """The log's signed checkpoint as it is now."""
        return self._rpc.unary(
            _INTEGRITY + "GetCheckpoint",
            pb.GetCheckpointRequest(),
            pb.Checkpoint,
            idempotent=True,
            timeout=timeout,
        )

    def get_inclusion_proof(
        self,
        call_id: str | None = None,
        *,
        tenant: str = "",
        leaf_index: int | None = None,
        tree_size: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> pb.InclusionProof:
        """Proof that a call's seal (or leaf ``leaf_index``) is in the log at ``tree_size``
        (0: the current size). Give exactly one of call_id and leaf_index."""
        if (call_id is None) == (leaf_index is None):
            raise ValueError("give exactly one of call_id and leaf_index")
        if call_id is not None:
            req = pb.InclusionProofRequest(
                call=pb.CallRef(tenant=tenant, call_id=call_id), tree_size=tree_size
            )
        else:
            req = pb.InclusionProofRequest(leaf_index=leaf_index, tree_size=tree_size)
        return self._rpc.unary(
            _INTEGRITY + "GetInclusionProof",
            req,
            pb.InclusionProof,
            idempotent=True,
            timeout=timeout,
        )

    def get_consistency_proof(
        self, old_size: int, new_size: int = 0, *, timeout: Timeout = DEFAULT
    ) -> pb.ConsistencyProof:
        """Proof that the log at ``old_size`` is a prefix of the log at ``new_size``."""
        req = pb.ConsistencyProofRequest(old_size=old_size, new_size=new_size)
        return self._rpc.unary(
            _INTEGRITY + "GetConsistencyProof",
            req,
            pb.ConsistencyProof,
            idempotent=True,
            timeout=timeout,
        )

    def bundle_chunks(
        self,
        call_id: str,
        *,
        tenant: str = "",
        include_customer_number: bool = False,
        timeout: Timeout = None,
        approval: str = "",
    ) -> Iterator[pb.FileChunk]:
        """The raw GetBundle stream (see :meth:`get_bundle`)."""
        req = pb.GetBundleRequest(
            call=pb.CallRef(tenant=tenant, call_id=call_id),
            include_customer_number=include_customer_number,
            approval=approval,
        )
        return self._rpc.stream(
            _INTEGRITY + "GetBundle", req, pb.FileChunk, idempotent=True, timeout=timeout
        )

    def get_bundle(
        self,
        call_id: str,
        directory: str | os.PathLike[str],
        *,
        tenant: str = "",
        include_customer_number: bool = False,
        progress: ChunkCallback | None = None,
        timeout: Timeout = None,
        approval: str = "",
    ) -> dict[str, int]:
        """Write a sealed call's export bundle into the new directory ``directory``;
        with ``include_customer_number`` it also holds the key of the customer number.

        The bundle is written into a temporary directory beside it and renamed
        once every file is whole; ``directory`` must not exist yet. Returns
        {file name: size}; check the bundle with ``callvault verify-bundle``."""
        target = Path(directory)
        if target.exists():
            raise FileExistsError(f"{target} exists: a bundle goes into a new directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
        files: dict[str, IO[bytes]] = {}

        def open_file(name: str) -> IO[bytes]:
            f = files.get(name)
            if f is None:
                p = tmp / _safe_name(name)
                p.parent.mkdir(parents=True, exist_ok=True)
                f = files[name] = open(p, "wb")  # noqa: SIM115 (closed below)
            return f

        try:
            try:
                sizes = _write_chunks(
                    self.bundle_chunks(
                        call_id,
                        tenant=tenant,
                        include_customer_number=include_customer_number,
                        timeout=timeout,
                        approval=approval,
                    ),
                    open_file,
                    progress,
                )
            finally:
                for f in files.values():
                    f.close()
            if not sizes:
                raise errors.ProtocolError(f"GetBundle of {call_id} streamed no files")
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return sizes

    def verify(
        self,
        call_ids: Iterable[str] = (),
        *,
        tenant: str = "",
        all: bool = False,
        timeout: Timeout = None,
    ) -> Iterator[pb.VerifyResult]:
        """Check calls (or ``all``: every call and segment); one result per call."""
        req = pb.VerifyRequest(tenant=tenant, call_ids=list(call_ids), all=all)
        return self._rpc.stream(
            _INTEGRITY + "Verify", req, pb.VerifyResult, idempotent=True, timeout=timeout
        )

    # -- Admin --------------------------------------------------------------------
    def stats(self, *, timeout: Timeout = DEFAULT) -> pb.StatsReply:
        """Calls, bytes, free disk, ingest rate, open calls and streams."""
        return self._rpc.unary(
            _ADMIN + "Stats", pb.StatsRequest(), pb.StatsReply, idempotent=True, timeout=timeout
        )

    def audit(
        self,
        *,
        call_id: str = "",
        tenant: str = "",
        identity: str = "",
        since: Instant | None = None,
        until: Instant | None = None,
        kind: str = "",
        after_seq: int = 0,
        limit: int = 0,
        timeout: Timeout = None,
    ) -> Iterator[pb.AuditEntry]:
        """The audit trail's entries that match every filter, oldest first (the
        "audit" permission; an identity of a tenant sees its tenant's only)."""
        req = pb.AuditRequest(
            call_id=call_id,
            tenant=tenant,
            identity=identity,
            since_us=0 if since is None else to_us(since, "since"),
            until_us=0 if until is None else to_us(until, "until"),
            kind=kind,
            after_seq=after_seq,
            limit=limit,
        )
        return self._rpc.stream(
            _ADMIN + "Audit", req, pb.AuditEntry, idempotent=True, timeout=timeout
        )

    def tag(
        self,
        call_id: str,
        *,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        reason: str = "",
        tenant: str = "",
        timeout: Timeout = DEFAULT,
    ) -> pb.CallInfo:
        """Add and remove tags of a sealed call (Lifecycle.Tag; roles qa, supervisor,
        legal, admin): one lifecycle record, its retention end recomputed by the
        policy. Returns the call after the change; ``lifecycle.note`` says what was
        done (nothing, when every tag to add is there and none to remove is). Safe to
        retry: the tags are a set, a repeated change changes nothing."""
        req = pb.TagRequest(
            call=pb.CallRef(tenant=tenant, call_id=call_id),
            add=list(add),
            remove=list(remove),
            reason=reason,
        )
        return self._rpc.unary(
            _LIFECYCLE + "Tag", req, pb.CallInfo, idempotent=True, timeout=timeout
        )

    def erase(
        self,
        call_id: str,
        reason: str,
        *,
        tenant: str = "",
        override_retention: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> pb.EraseReply:
        """Crypto-shred a sealed call (never retried: erasing twice is FailedPrecondition).
        ``override_retention``: also before a governance retention end (role admin)."""
        req = pb.EraseRequest(
            call=pb.CallRef(tenant=tenant, call_id=call_id),
            reason=reason,
            override_retention=override_retention,
        )
        return self._rpc.unary(
            _ADMIN + "Erase", req, pb.EraseReply, idempotent=False, timeout=timeout
        )

    def get_policy(self, *, timeout: Timeout = DEFAULT) -> pb.PolicyInfo:
        """The retention policy in force (docs/policy.md); toml "" when none."""
        return self._rpc.unary(
            _LIFECYCLE + "GetPolicy",
            pb.GetPolicyRequest(),
            pb.PolicyInfo,
            idempotent=True,
            timeout=timeout,
        )

    def apply_policy(
        self,
        toml: str,
        *,
        reapply: bool = False,
        reason: str = "",
        shorten_governance: bool = False,
        timeout: Timeout = None,
    ) -> pb.PolicyInfo:
        """Replace the retention policy (platform admins); InvalidArgument names the
        line of a bad file. ``reapply``: recompute every sealed call's retention."""
        req = pb.ApplyPolicyRequest(
            toml=toml, reapply=reapply, reason=reason, shorten_governance=shorten_governance
        )
        return self._rpc.unary(
            _LIFECYCLE + "ApplyPolicy", req, pb.PolicyInfo, idempotent=False, timeout=timeout
        )

    def erase_tenant(
        self, tenant: str, reason: str, *, timeout: Timeout = DEFAULT
    ) -> pb.EraseTenantReply:
        """Erase a whole tenant: its key-encryption key is destroyed, every call of it
        unreadable; a platform identity only (never retried: twice is
        FailedPrecondition)."""
        req = pb.EraseTenantRequest(tenant=tenant, reason=reason)
        return self._rpc.unary(
            _ADMIN + "EraseTenant", req, pb.EraseTenantReply, idempotent=False, timeout=timeout
        )

    def erase_subject(
        self,
        key: str,
        value: str,
        reason: str,
        *,
        dry_run: bool = False,
        tenant: str = "",
        all_tenants: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> dict[str, Any]:
        """Erase every call of a data subject (``key`` customer_number or an extra key
        = ``value``); those held or retained are deferred and marked pending_erase.
        Returns the report (docs/policy.md "Erasure by data subject"). An admin only;
        ``all_tenants`` a platform identity's. Never retried (a dry run is)."""
        req = pb.EraseSubjectRequest(
            key=key,
            value=value,
            reason=reason,
            dry_run=dry_run,
            tenant=tenant,
            all_tenants=all_tenants,
        )
        reply = self._rpc.unary(
            _LIFECYCLE + "EraseSubject",
            req,
            pb.EraseSubjectReply,
            idempotent=dry_run,
            timeout=timeout,
        )
        report: dict[str, Any] = json.loads(reply.report_json)
        return report

    # -- Legal holds (docs/policy.md "Legal holds") ---------------------------------
    def _hold(
        self,
        method: str,
        call_ids: str | Sequence[str],
        name: str,
        reason: str,
        tenant: str,
        timeout: Timeout,
    ) -> pb.HoldReply:
        ids = [call_ids] if isinstance(call_ids, str) else list(call_ids)
        req = pb.HoldRequest(
            calls=[pb.CallRef(tenant=tenant, call_id=c) for c in ids], name=name, reason=reason
        )
        return self._rpc.unary(
            _LIFECYCLE + method, req, pb.HoldReply, idempotent=False, timeout=timeout
        )

    def place_hold(
        self,
        call_ids: str | Sequence[str],
        name: str,
        reason: str,
        *,
        tenant: str = "",
        timeout: Timeout = DEFAULT,
    ) -> pb.HoldReply:
        """Place the legal hold ``name`` (e.g. a case number: 1 to 64 letters, digits,
        ``. _ - :``) on one call or up to 10,000 (roles legal, admin). A held call
        cannot be erased or disposed of; an erasure of it is deferred. ``outcomes``
        says per call what happened (a call already under the hold: ``changed``
        false). A request stops at the first call it cannot hold
        (FailedPrecondition naming the calls changed before it). Never retried."""
        return self._hold("PlaceHold", call_ids, name, reason, tenant, timeout)

    def request_release(
        self,
        call_ids: str | Sequence[str],
        name: str,
        reason: str,
        *,
        tenant: str = "",
        timeout: Timeout = DEFAULT,
    ) -> pb.HoldReply:
        """Ask to release the hold ``name`` of these calls; another identity approves
        (:meth:`approve_release`: dual control). Never retried."""
        return self._hold("RequestRelease", call_ids, name, reason, tenant, timeout)

    def approve_release(
        self,
        call_ids: str | Sequence[str],
        name: str,
        *,
        reason: str = "",
        tenant: str = "",
        timeout: Timeout = DEFAULT,
    ) -> pb.HoldReply:
        """Approve another identity's release request: the hold is lifted. A call left
        with no hold whose erasure was deferred is erased now if nothing else keeps it
        back (``outcomes[i].erased``; else ``erase_pending`` says why). The requester
        itself may not approve (PermissionDenied). Never retried."""
        return self._hold("ApproveRelease", call_ids, name, reason, tenant, timeout)

    def list_holds(
        self, *, name: str = "", tenant: str = "", timeout: Timeout = DEFAULT
    ) -> dict[str, Any]:
        """The holds (only ``name``'s, when given) and their calls, as the JSON document
        of docs/policy.md "Legal holds" (``{"holds": [...]}``). Safe to retry."""
        reply = self._rpc.unary(
            _LIFECYCLE + "ListHolds",
            pb.ListHoldsRequest(name=name, tenant=tenant),
            pb.ListHoldsReply,
            idempotent=True,
            timeout=timeout,
        )
        doc: dict[str, Any] = json.loads(reply.json)
        return doc

    # -- Disposal (docs/policy.md "Disposal") ------------------------------------------
    def plan_disposal(
        self, *, tenant: str = "", reason: str = "", timeout: Timeout = None
    ) -> pb.DisposeReply:
        """The calls due for disposal now, as a signed disposition report
        (``report_json``, status "planned"; its calls empty when nothing is due).
        Nothing changes. Safe to retry."""
        return self._rpc.unary(
            _LIFECYCLE + "PlanDisposal",
            pb.DisposeRequest(tenant=tenant, reason=reason),
            pb.DisposeReply,
            idempotent=True,
            timeout=timeout,
        )

    def list_disposal_reports(
        self, *, tenant: str = "", timeout: Timeout = DEFAULT
    ) -> list[dict[str, Any]]:
        """The disposition reports the server keeps, oldest first (each a JSON
        document, docs/format.md 8.15). Safe to retry."""
        reply = self._rpc.unary(
            _LIFECYCLE + "PlanDisposal",
            pb.DisposeRequest(tenant=tenant, list_reports=True),
            pb.DisposeReply,
            idempotent=True,
            timeout=timeout,
        )
        return [json.loads(t) for t in reply.reports_json]

    def dispose(
        self,
        *,
        report_id: str = "",
        reason: str = "",
        tenant: str = "",
        timeout: Timeout = None,
    ) -> pb.DisposeReply:
        """Dispose of the calls due now, or (``report_id``) apply a pending report
        another admin made. With the server's ``[disposal] approval = true`` a
        request without ``report_id`` only stores the report (status "pending").
        ``disposed``/``skipped``/``reclaimed_bytes`` count what happened; the signed
        report with its results is ``report_json`` (status "" and no report when
        nothing was due). Never retried."""
        return self._rpc.unary(
            _LIFECYCLE + "Dispose",
            pb.DisposeRequest(report_id=report_id, reason=reason, tenant=tenant),
            pb.DisposeReply,
            idempotent=False,
            timeout=timeout,
        )

    # -- Archive tier (docs/policy.md "Archive") ----------------------------------
    def archive_run(self, *, limit: int = 0, timeout: Timeout = None) -> dict[str, Any]:
        """Move the sealed calls due to the server's archive now (at most ``limit``;
        0: every call due), platform admins. Returns the run's report (archived,
        evicted, errors). FailedPrecondition when the server has no archive. Never
        retried."""
        reply = self._rpc.unary(
            _LIFECYCLE + "ArchiveRun",
            pb.ArchiveRunRequest(limit=limit),
            pb.ArchiveRunReply,
            idempotent=False,
            timeout=timeout,
        )
        report: dict[str, Any] = json.loads(reply.report_json)
        return report

    def reindex(self, *, timeout: Timeout = DEFAULT) -> pb.ReindexReply:
        """Rebuild the server's index from its segments (never retried)."""
        return self._rpc.unary(
            _ADMIN + "Reindex",
            pb.ReindexRequest(),
            pb.ReindexReply,
            idempotent=False,
            timeout=timeout,
        )

    def reclaim(
        self, *, threshold: float = 0.0, scan: bool = False, timeout: Timeout = DEFAULT
    ) -> pb.ReclaimReply:
        """Reclaim the space of dead records (erased audio, dropped records): segments
        at least ``threshold`` dead rewritten (0: the server's setting); ``scan`` reads
        every closed segment instead of the index's counters. Safe to retry."""
        return self._rpc.unary(
            _ADMIN + "Reclaim",
            pb.ReclaimRequest(threshold=threshold, scan=scan),
            pb.ReclaimReply,
            idempotent=True,
            timeout=timeout,
        )

    def create_token(
        self,
        name: str,
        role: str,
        *,
        tenant: str = "",
        platform: bool = False,
        expires_s: int = 0,
        timeout: Timeout = DEFAULT,
    ) -> pb.CreateTokenReply:
        """A new API token (``reply.token`` is its text: shown once). ``tenant`` ""
        is "default"; ``platform``: every tenant; ``expires_s`` 0: never. Not retried."""
        req = pb.CreateTokenRequest(
            name=name, role=role, tenant=tenant, platform=platform, expires_s=expires_s
        )
        return self._rpc.unary(
            _ADMIN + "CreateToken", req, pb.CreateTokenReply, idempotent=False, timeout=timeout
        )

    def list_tokens(self, *, timeout: Timeout = DEFAULT) -> list[pb.TokenInfo]:
        """Every token the caller may see (never their secrets)."""
        reply = self._rpc.unary(
            _ADMIN + "ListTokens",
            pb.ListTokensRequest(),
            pb.ListTokensReply,
            idempotent=True,
            timeout=timeout,
        )
        return list(reply.tokens)

    def revoke_token(self, id_or_name: str, *, timeout: Timeout = DEFAULT) -> list[pb.TokenInfo]:
        """Revoke the token with this id, else every unrevoked one of this name."""
        reply = self._rpc.unary(
            _ADMIN + "RevokeToken",
            pb.RevokeTokenRequest(token=id_or_name),
            pb.RevokeTokenReply,
            idempotent=True,
            timeout=timeout,
        )
        return list(reply.revoked)

    def rotate_key(self, *, timeout: Timeout = DEFAULT) -> pb.RotateKeyReply:
        """A new key-encryption key; every data key re-wrapped (never retried)."""
        return self._rpc.unary(
            _ADMIN + "RotateKey",
            pb.RotateKeyRequest(),
            pb.RotateKeyReply,
            idempotent=False,
            timeout=timeout,
        )


class SidecarClient(_Base):
    """The control API of a ``callvault sidecar`` (same options as :class:`Client`)."""

    def __enter__(self) -> SidecarClient:
        return self

    def start_call(
        self,
        call_id: str,
        legs: Sequence[str] = ("agent", "customer"),
        *,
        tenant: str = "",
        meta: MetaArg = None,
        timeout: Timeout = DEFAULT,
        region: str = "",
        consent: str | int = "",
    ) -> dict[str, int]:
        """Allocate one UDP port per leg; returns {leg name: port}. Not retried.
        ``region`` and ``consent`` ("granted", "declined", "unknown") are for the
        server's recording policy; a call it does not record gets ports too, and its
        RTP is dropped (``list_calls`` shows it "not_recorded"; the whole reply, with
        the decision: :meth:`start_call_reply`)."""
        reply = self.start_call_reply(
            call_id, legs, tenant=tenant, meta=meta, timeout=timeout, region=region, consent=consent
        )
        return dict(reply.ports)

    def start_call_reply(
        self,
        call_id: str,
        legs: Sequence[str] = ("agent", "customer"),
        *,
        tenant: str = "",
        meta: MetaArg = None,
        timeout: Timeout = DEFAULT,
        region: str = "",
        consent: str | int = "",
    ) -> pb.StartCallReply:
        """:meth:`start_call`'s whole reply: the ports and the server's decision."""
        req = pb.StartCallRequest(
            call_id=call_id,
            tenant=tenant,
            legs=list(legs),
            meta=make_meta(meta),
            region=region,
            consent=consent_enum(consent),  # type: ignore[arg-type]
        )
        return self._rpc.unary(
            _SIDECAR + "StartCall", req, pb.StartCallReply, idempotent=False, timeout=timeout
        )

    def stop_call(
        self, call_id: str, *, tenant: str = "", timeout: Timeout = DEFAULT
    ) -> pb.StopCallReply:
        """Stop receiving; the sidecar seals the call on the server. Not retried.
        The reply's ``state`` is "failed" (with its ``reason``) for a call that ended
        on a failure of its own (its spool, or a refusal by the server)."""
        req = pb.StopCallRequest(call_id=call_id, tenant=tenant)
        return self._rpc.unary(
            _SIDECAR + "StopCall", req, pb.StopCallReply, idempotent=False, timeout=timeout
        )

    def pause_call(
        self, call_id: str, *, tenant: str = "", timeout: Timeout = DEFAULT
    ) -> pb.PauseCallReply:
        """PCI pause: from now the call's RTP is discarded (never spooled) and its span
        recorded as silence, marked "paused". Not retried."""
        req = pb.PauseCallRequest(call_id=call_id, tenant=tenant)
        return self._rpc.unary(
            _SIDECAR + "PauseCall", req, pb.PauseCallReply, idempotent=False, timeout=timeout
        )

    def resume_call(
        self, call_id: str, *, tenant: str = "", timeout: Timeout = DEFAULT
    ) -> pb.PauseCallReply:
        """The end of a PCI pause: RTP arriving from now is recorded again. Not retried."""
        req = pb.PauseCallRequest(call_id=call_id, tenant=tenant)
        return self._rpc.unary(
            _SIDECAR + "ResumeCall", req, pb.PauseCallReply, idempotent=False, timeout=timeout
        )

    def list_calls(self, *, timeout: Timeout = DEFAULT) -> list[pb.SidecarCall]:
        """The sidecar's calls and their forwarding state."""
        reply = self._rpc.unary(
            _SIDECAR + "ListCalls",
            pb.ListCallsRequest(),
            pb.ListCallsReply,
            idempotent=True,
            timeout=timeout,
        )
        return list(reply.calls)


CONSENTS = {
    "": pb.CONSENT_UNSPECIFIED,
    "granted": pb.CONSENT_GRANTED,
    "declined": pb.CONSENT_DECLINED,
    "unknown": pb.CONSENT_UNKNOWN,
}


def consent_enum(consent: str | int) -> int:
    """A consent as the wire's enum: "granted", "declined", "unknown" ("" unset) or
    the number itself."""
    if isinstance(consent, int):
        return consent
    try:
        return int(CONSENTS[consent])
    except KeyError:
        raise ValueError(f"consent {consent!r}: granted, declined or unknown") from None


def _safe_name(name: str) -> Path:
    """A bundle file name as a relative path that stays inside the bundle."""
    p = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in p.parts)
    ):
        raise errors.ProtocolError(f"bundle file name {name!r} is not a plain relative path")
    return Path(*p.parts)


def _write_chunks(
    chunks: Iterator[pb.FileChunk],
    open_file: Callable[[str], IO[bytes]],
    progress: ChunkCallback | None,
) -> dict[str, int]:
    """Write FileChunks in order (each file's chunks at increasing offsets, no gaps);
    returns {name: bytes written}, after checking each file reached its size."""
    written: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for chunk in chunks:
        done = written.get(chunk.name, 0)
        if chunk.offset != done:
            raise errors.ProtocolError(
                f"file {chunk.name!r}: chunk at offset {chunk.offset}, expected {done}"
            )
        f = open_file(chunk.name)
        f.write(chunk.data)
        written[chunk.name] = done + len(chunk.data)
        sizes[chunk.name] = chunk.size
        if progress is not None:
            progress(chunk)
    for name, n in written.items():
        if sizes[name] and n != sizes[name]:
            raise errors.ProtocolError(f"file {name!r}: got {n} bytes of {sizes[name]}")
    return written

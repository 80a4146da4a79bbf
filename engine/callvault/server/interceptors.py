"""The interceptor chain every RPC passes: who is calling, may they, and a log of it
(docs/access.md).

An ``Authenticator`` (callvault.access.identity) turns the call's credentials
(TLS client certificate, metadata token) into an ``Identity``, or the RPC ends
UNAUTHENTICATED; ``authorize`` checks the method's permission (``PERMISSIONS``)
against the identity's role (``ROLE_PERMISSIONS``) before the servicer runs.
Every RPC, allowed or denied, is an ``access.context.Rpc`` handed to each audit
sink (``on_end``) when it ends. Servicers read the caller with
``current_identity()`` and add to the RPC's audit with ``access.context.note_*``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from callvault.access import context as rpcctx
from callvault.access.context import current_identity as current_identity
from callvault.access.identity import Authenticator, Identity, Unauthenticated

log = logging.getLogger("callvault.server")

# What each method needs: checked by authorize(). docs/access.md has the method x
# role matrix these two tables make (tests/server/test_access_matrix.py reads it and
# drives every cell), and the rules that depend on the request (access/policy.py).
PERMISSIONS: dict[str, str] = {
    "/callvault.v1.Ingest/Record": "record",
    "/callvault.v1.Ingest/RecordCalls": "record",
    "/callvault.v1.Ingest/Decide": "record",
    "/callvault.v1.Archive/Search": "metadata",
    "/callvault.v1.Archive/SearchCalls": "metadata",
    "/callvault.v1.Archive/GetCall": "metadata",
    "/callvault.v1.Archive/Play": "listen",
    "/callvault.v1.Archive/Export": "export",
    "/callvault.v1.Archive/RequestExport": "export-request",
    "/callvault.v1.Archive/ApproveExport": "export-approve",
    "/callvault.v1.Archive/ListExportRequests": "export-list",
    "/callvault.v1.Integrity/GetCheckpoint": "proofs",
    "/callvault.v1.Integrity/GetInclusionProof": "proofs",
    "/callvault.v1.Integrity/GetConsistencyProof": "proofs",
    "/callvault.v1.Integrity/GetBundle": "export",
    "/callvault.v1.Integrity/Verify": "proofs",
    "/callvault.v1.Admin/Stats": "stats",
    "/callvault.v1.Admin/Erase": "erase",
    "/callvault.v1.Admin/Reindex": "maintain",
    "/callvault.v1.Admin/Reclaim": "maintain",
    "/callvault.v1.Admin/RotateKey": "keys",
    "/callvault.v1.Admin/CreateToken": "tokens",
    "/callvault.v1.Admin/ListTokens": "tokens",
    "/callvault.v1.Admin/RevokeToken": "tokens",
    "/callvault.v1.Admin/Audit": "audit",
    "/callvault.v1.Admin/EraseTenant": "tenants",  # platform identities only (servicer)
    "/callvault.v1.Lifecycle/Tag": "tag",
    "/callvault.v1.Lifecycle/GetPolicy": "policy-read",
    "/callvault.v1.Lifecycle/ApplyPolicy": "policy",  # platform identities only
    "/callvault.v1.Lifecycle/PlaceHold": "hold",
    "/callvault.v1.Lifecycle/RequestRelease": "hold",
    "/callvault.v1.Lifecycle/ApproveRelease": "hold",
    "/callvault.v1.Lifecycle/ListHolds": "holds-list",
    "/callvault.v1.Lifecycle/PlanDisposal": "dispose-plan",
    "/callvault.v1.Lifecycle/Dispose": "dispose",
    "/callvault.v1.Lifecycle/EraseSubject": "erase-subject",
    "/callvault.v1.Lifecycle/ArchiveRun": "maintain",  # platform identities only
}
# Health and reflection are open to every caller. The Sidecar service is not served
# here: the sidecar's control API has its own tokens (docs/access.md).
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
ALL = frozenset(PERMISSIONS.values())

# What each role may: the only place (docs/access.md "Roles"). Audio needs more
# than the permission for some roles (a reason, an approval, a sealed call):
# access/policy.py, asked by the servicers.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "recorder": frozenset({"record"}),
    "agent": frozenset({"metadata"}),  # own calls only (policy.visible)
    "qa": frozenset({"metadata", "listen", "tag"}),  # sealed calls only (policy.check)
    "supervisor": frozenset({"metadata", "listen", "tag"}),  # live too
    "legal": frozenset(
        {
            "metadata",
            "listen",
            "export",
            "export-request",
            "export-approve",
            "export-list",
            "tag",
            "hold",
            "holds-list",
            "policy-read",
            "dispose-plan",
        }
    ),
    "it": frozenset({"metadata", "stats", "policy-read", "dispose-plan"}),  # never audio
    "auditor": frozenset(
        {"proofs", "audit", "export-list", "holds-list", "policy-read", "dispose-plan"}
    ),
    "admin": ALL,  # audio only with a reason (policy.check)
}


def authorize(identity: Identity, method: str) -> str | None:
    """None if allowed, else why not."""
    if method.startswith(OPEN_PREFIXES):
        return None
    need = PERMISSIONS.get(method)
    if need is None:
        return f"{method} is not a callvault method"
    if need not in ROLE_PERMISSIONS.get(identity.role, frozenset()):
        return f"{identity.name} (role {identity.role}) may not {need} ({method})"
    return None


AuditSink = Callable[[rpcctx.Rpc, str], None]
# the caller of a refused RPC whose credentials failed, and of health/reflection
UNAUTHENTICATED = Identity("(unauthenticated)", "", None, "none")
ANONYMOUS = Identity("(anonymous)", "", None, "none")


class MethodLog:
    """Counts per method and outcome, and the RPCs in flight (Stats.streams)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.active = 0

    def begin(self) -> float:
        """One more RPC active; returns when it started (time.monotonic), for ``end``."""
        with self.lock:
            self.active += 1
        return time.monotonic()

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {f"{m} {o}": n for (m, o), n in self.calls.items()}

    def end(self, method: str, outcome: str, started: float, who: str) -> None:
        with self.lock:
            self.active -= 1
            self.calls[(method, outcome)] += 1
        log.info("%s %s %s %.1f ms", who, method, outcome, (time.monotonic() - started) * 1e3)


class IdentityInterceptor(grpc.ServerInterceptor):
    """Identity, authorization and the method log around every handler."""

    def __init__(
        self,
        auth: Authenticator,
        methods: MethodLog,
        on_end: list[AuditSink] | None = None,
        gate: Callable[[str], str | None] | None = None,
    ) -> None:
        self.auth = auth
        self.methods = methods
        # called with the RPC and its outcome when it ends, allowed or denied
        self.on_end: list[AuditSink] = list(on_end or [])
        # why an allowed method cannot be served now (UNAVAILABLE), or None
        self.gate = gate

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.request_deserializer is not None:
            handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._stream(handler.unary_stream, method))
        return handler._replace(stream_stream=self._stream(handler.stream_stream, method))

    def _finish(self, rpc: rpcctx.Rpc, outcome: str) -> None:
        rpcctx.end()
        for sink in self.on_end:
            try:
                sink(rpc, outcome)
            except Exception:
                log.exception("the audit of %s failed", rpc.method)

    def _refuse(
        self, rpc: rpcctx.Rpc, context: grpc.ServicerContext, code: grpc.StatusCode, why: str
    ) -> None:
        rpc.detail = why
        self.methods.end(rpc.method, code.name, self.methods.begin(), rpc.identity.name)
        self._finish(rpc, code.name)
        context.abort(code, why)

    def _enter(self, request: Any, context: grpc.ServicerContext, method: str) -> rpcctx.Rpc:
        """Who calls; aborts with UNAUTHENTICATED if the credentials are not good,
        PERMISSION_DENIED if the caller may not call ``method``, INVALID_ARGUMENT if
        the request does not parse. Every refusal is audited too."""
        peer = context.peer() or ""
        try:
            # health and reflection are open: a load balancer's probe has no token
            ident = ANONYMOUS if method.startswith(OPEN_PREFIXES) else self.auth.identify(context)
        except Unauthenticated as e:
            self._refuse(
                rpcctx.Rpc(UNAUTHENTICATED, method, peer),
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                str(e),
            )
            raise  # not reached: abort raises
        rpc = rpcctx.Rpc(ident, method, peer, reason=_reason(context))
        rpcctx.begin(rpc)
        why = authorize(ident, method)
        if why is not None:
            self._refuse(rpc, context, grpc.StatusCode.PERMISSION_DENIED, why)
        why = self.gate(method) if self.gate is not None else None
        if why is not None:
            self._refuse(rpc, context, grpc.StatusCode.UNAVAILABLE, why)
        if isinstance(request, Undecodable):
            self._refuse(rpc, context, grpc.StatusCode.INVALID_ARGUMENT, request.message(method))
        return rpc

    @contextlib.contextmanager
    def _logged(self, request: Any, context: grpc.ServicerContext, method: str) -> Iterator[None]:
        """The handler's run (the ``with`` block), admitted by ``_enter`` and counted in
        the method log with its outcome: OK, CANCELLED (a stream the client left) or
        the status it ended with."""
        rpc = self._enter(request, context, method)
        started = self.methods.begin()
        outcome = "OK"
        try:
            yield
        except GeneratorExit:
            outcome = "CANCELLED"
            raise
        except Exception:
            code = _outcome(context, "")
            if code:  # the handler aborted with a status of its own
                outcome = code
                raise
            # anything else is our bug: logged here in full, and the caller gets a
            # sentence of ours with INTERNAL, never grpcio's UNKNOWN with a Python repr
            ref = f"{time.time_ns() // 1000:x}"
            log.exception("%s failed unexpectedly (error %s)", method, ref)
            outcome = "INTERNAL"
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"the server failed to handle {method.rsplit('/', 1)[-1]}: an internal "
                f"error, logged on the server as error {ref}",
            )
        except BaseException:
            outcome = _outcome(context, "ERROR")
            raise
        finally:
            if outcome == "OK" and not context.is_active():
                outcome = "CANCELLED"  # a handler that ended quietly as the client left
            self.methods.end(method, outcome, started, rpc.identity.name)
            self._finish(rpc, outcome)

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with self._logged(request, context, method):
                return behavior(request, context)

        return run

    def _stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._logged(request, context, method):
                yield from behavior(request, context)

        return run


REASON_KEY = "callvault-reason"  # metadata: the caller's stated reason (audited)


def _reason(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REASON_KEY and isinstance(value, str):
            return value[:1024]
    return ""


class Undecodable:
    """A request message that does not parse: the handler answers INVALID_ARGUMENT
    (grpcio itself would answer INTERNAL, which blames the server)."""

    def __init__(self, size: int, error: Exception) -> None:
        self.size = size
        self.error = error

    def message(self, method: str) -> str:
        return (
            f"the request to {method} is not a valid protobuf message of its type "
            f"({self.size} bytes: {self.error})"
        )


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def run(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as e:  # protobuf's DecodeError, or worse
            return Undecodable(len(raw), e)

    return run


def _outcome(context: grpc.ServicerContext, default: str) -> str:
    code = getattr(context, "code", lambda: None)()
    return code.name if code is not None else default

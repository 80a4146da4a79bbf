"""The interceptor chain every RPC passes: who is calling, may they, and a log of it.

Today there is one local identity with every role (the server trusts whoever
reaches its port: bind it to loopback or a private network, or use TLS).
Access control is the next step, and it plugs in here: an ``Authenticator``
turns the call's credentials (TLS client certificate, metadata token) into an
``Identity``, and ``authorize`` checks the method's permission (``PERMISSIONS``)
against the identity's roles before the servicer runs. Servicers read the
caller with ``current_identity()``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

log = logging.getLogger("callvault.server")

# What each method needs (DESIGN.md "Roles"): checked by authorize().
PERMISSIONS: dict[str, str] = {
    "/callvault.v1.Ingest/Record": "record",
    "/callvault.v1.Ingest/RecordCalls": "record",
    "/callvault.v1.Archive/Search": "metadata",
    "/callvault.v1.Archive/SearchCalls": "metadata",
    "/callvault.v1.Archive/GetCall": "metadata",
    "/callvault.v1.Archive/Play": "listen",
    "/callvault.v1.Archive/Export": "export",
    "/callvault.v1.Integrity/GetCheckpoint": "proofs",
    "/callvault.v1.Integrity/GetInclusionProof": "proofs",
    "/callvault.v1.Integrity/GetConsistencyProof": "proofs",
    "/callvault.v1.Integrity/GetBundle": "export",
    "/callvault.v1.Integrity/Verify": "proofs",
    "/callvault.v1.Admin/Stats": "health",
    "/callvault.v1.Admin/Erase": "erase",
    "/callvault.v1.Admin/Reindex": "admin",
    "/callvault.v1.Admin/RotateKey": "admin",
    "/callvault.v1.Admin/Reclaim": "admin",
}
# Health and reflection are open to every caller.
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
ALL = frozenset(PERMISSIONS.values())


@dataclass(frozen=True)
class Identity:
    name: str
    permissions: frozenset[str]
    tenants: frozenset[str] | None = None  # None = every tenant


LOCAL = Identity("local", ALL)


class Authenticator:
    """Credentials -> Identity. The local one: everyone is the local identity."""

    def identify(self, context: grpc.ServicerContext) -> Identity:
        return LOCAL


def authorize(identity: Identity, method: str) -> str | None:
    """None if allowed, else why not."""
    if method.startswith(OPEN_PREFIXES):
        return None
    need = PERMISSIONS.get(method)
    if need is None:
        return f"{method} is not a callvault method"
    if need not in identity.permissions:
        return f"{identity.name} may not {need} ({method})"
    return None


_current = threading.local()


def current_identity() -> Identity:
    """The caller of the RPC this thread serves (grpc's sync server runs an RPC,
    response stream included, on one pool thread; the interceptor sets this first)."""
    ident: Identity | None = getattr(_current, "identity", None)
    if ident is None:
        raise RuntimeError("no RPC identity on this thread")
    return ident


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

    def __init__(self, auth: Authenticator, methods: MethodLog) -> None:
        self.auth = auth
        self.methods = methods

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

    def _enter(self, request: Any, context: grpc.ServicerContext, method: str) -> Identity:
        """Who calls; aborts with PERMISSION_DENIED if they may not call ``method``,
        INVALID_ARGUMENT if the request does not parse."""
        ident = self.auth.identify(context)
        _current.identity = ident
        why = authorize(ident, method)
        if why is not None:
            self.methods.end(method, "PERMISSION_DENIED", self.methods.begin(), ident.name)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message(method))
        return ident

    @contextlib.contextmanager
    def _logged(self, request: Any, context: grpc.ServicerContext, method: str) -> Iterator[None]:
        """The handler's run (the ``with`` block), admitted by ``_enter`` and counted in
        the method log with its outcome: OK, CANCELLED (a stream the client left) or
        the status it ended with."""
        ident = self._enter(request, context, method)
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
            self.methods.end(method, outcome, started, ident.name)

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

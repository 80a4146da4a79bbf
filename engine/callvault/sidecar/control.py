"""The sidecar's control API: gRPC ``callvault.v1.Sidecar`` (StartCall, StopCall,
ListCalls, PauseCall, ResumeCall). Translation only: the logic is in
:class:`callvault.sidecar.daemon.Sidecar`, whose refusals (:class:`SidecarError`)
become the gRPC status they name.

:class:`ControlAuth` admits a control call only with a token of the sidecar's own
store (SPOOL/access, `callvault token create --spool SPOOL`): every valid token may
start, stop, pause, resume and list calls. While that store never had a token the API is open to
callers on loopback (a WARNING at start), as a server's. Health is open to all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.access.authn import CredentialAuthenticator
from callvault.access.identity import Unauthenticated
from callvault.sidecar.call import SidecarError
from callvault.sidecar.daemon import Sidecar

T = TypeVar("T")
log = logging.getLogger("callvault.sidecar")
CONTROL_PREFIX = "/callvault.v1.Sidecar/"


class ControlAuth(grpc.ServerInterceptor):
    """UNAUTHENTICATED for a control call without a good token (health passes)."""

    def __init__(self, auth: CredentialAuthenticator) -> None:
        self.auth = auth

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith(CONTROL_PREFIX):
            return handler
        if handler.unary_unary is None:  # the control API is unary only
            return handler
        behavior = handler.unary_unary
        method = details.method.rsplit("/", 1)[-1]

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                self.auth.identify(context)
            except Unauthenticated as e:
                log.warning("control %s from %s refused: %s", method, context.peer(), e)
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
            return behavior(request, context)

        return handler._replace(unary_unary=run)


class SidecarServicer(pbg.SidecarServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    def _run(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except SidecarError as e:
            context.abort(e.code, str(e))
            raise  # abort raises; this is for type checkers

    def StartCall(
        self,
        request: pb.StartCallRequest,  # noqa: N802 (gRPC's name)
        context: grpc.ServicerContext,
    ) -> pb.StartCallReply:
        return self._run(context, lambda: self.sidecar.start_call_reply(request))

    def StopCall(
        self,
        request: pb.StopCallRequest,  # noqa: N802
        context: grpc.ServicerContext,
    ) -> pb.StopCallReply:
        return self._run(context, lambda: self.sidecar.stop_call(request))

    def PauseCall(
        self,
        request: pb.PauseCallRequest,  # noqa: N802
        context: grpc.ServicerContext,
    ) -> pb.PauseCallReply:
        return self._run(context, lambda: self.sidecar.pause_call(request, True))

    def ResumeCall(
        self,
        request: pb.PauseCallRequest,  # noqa: N802
        context: grpc.ServicerContext,
    ) -> pb.PauseCallReply:
        return self._run(context, lambda: self.sidecar.pause_call(request, False))

    def ListCalls(
        self,
        request: pb.ListCallsRequest,  # noqa: N802
        context: grpc.ServicerContext,
    ) -> pb.ListCallsReply:
        return pb.ListCallsReply(calls=self.sidecar.list_calls())

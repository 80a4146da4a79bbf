"""The sidecar's control API: gRPC ``callvault.v1.Sidecar`` (StartCall, StopCall,
ListCalls, PauseCall, ResumeCall). Translation only: the logic is in
:class:`callvault.sidecar.daemon.Sidecar`, whose refusals (:class:`SidecarError`) become
the gRPC status they name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.sidecar.call import SidecarError
from callvault.sidecar.daemon import Sidecar

T = TypeVar("T")


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
        return pb.StartCallReply(ports=self._run(context, lambda: self.sidecar.start_call(request)))

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

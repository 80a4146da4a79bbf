"""Errors of the callvault SDK: one class per gRPC status the service uses.

Every failed RPC raises a subclass of :class:`CallvaultClientError` carrying the
status code and the server's message (the proto promises that an
INVALID_ARGUMENT message says which field is wrong and why), so callers can
``except NotFound`` instead of inspecting ``grpc.RpcError``.
"""

from __future__ import annotations

import grpc


class CallvaultClientError(Exception):
    """A failed call to a callvault service; ``code`` is the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, *, code: grpc.StatusCode | None = None, method: str = ""
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.method = method

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        return f"{where}{self.message} ({self.code.name})"


class Cancelled(CallvaultClientError):
    code = grpc.StatusCode.CANCELLED


class Unknown(CallvaultClientError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(CallvaultClientError):
    """The request is malformed; the message says which field and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(CallvaultClientError):
    """The call's deadline (``timeout=``) passed before it completed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(CallvaultClientError):
    """No such call in that tenant."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CallvaultClientError):
    """The call id is taken (a fresh start of a call that exists)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(CallvaultClientError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(CallvaultClientError):
    """A server limit: message size, concurrent streams."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(CallvaultClientError):
    """The call is not in a state that allows this (e.g. exporting an open call)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(CallvaultClientError):
    """Another stream took over this call."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(CallvaultClientError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(CallvaultClientError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(CallvaultClientError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(CallvaultClientError):
    """The server cannot be reached or is shutting down; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(CallvaultClientError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(CallvaultClientError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ProtocolError(CallvaultClientError):
    """The server's replies broke the contract (e.g. a file chunk at a wrong offset)."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[CallvaultClientError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def from_status(
    code: grpc.StatusCode | int, message: str, method: str = ""
) -> CallvaultClientError:
    """The SDK error for a status given as a code (or its number, as in an
    IngestMuxError) and a message."""
    if isinstance(code, int):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(code, CallvaultClientError)
    return cls(message or code.name.lower().replace("_", " "), code=code, method=method)


def from_rpc_error(e: grpc.RpcError, method: str = "") -> CallvaultClientError:
    """The SDK error for a failed RPC (``e`` is also a ``grpc.Call``)."""
    code_fn = getattr(e, "code", None)
    details_fn = getattr(e, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else None
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, CallvaultClientError)
    return cls(details or code.name.lower().replace("_", " "), code=code, method=method)


__all__ = [
    "Aborted",
    "AlreadyExists",
    "CallvaultClientError",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ProtocolError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_rpc_error",
    "from_status",
]

"""What one RPC did, for its audit entry (docs/access.md "Audit trail").

The interceptor starts an ``Rpc`` before the servicer runs and hands it to the
audit sink when the RPC ends; servicers add what only they know (the calls
touched, the seconds and bytes of audio played or exported, a reason) with the
``note_*`` functions, which act on the RPC this thread serves (grpcio's sync
server runs an RPC, response stream included, on one pool thread).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from callvault.access.identity import Identity


@dataclass
class Rpc:
    identity: Identity
    method: str  # "/callvault.v1.Archive/Play"
    peer: str  # grpc's context.peer(): "ipv4:127.0.0.1:5555"
    started_us: int = field(default_factory=lambda: time.time_ns() // 1000)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (tenant, call_id)
    audio_seconds: float = 0.0  # of audio played or exported
    audio_bytes: int = 0  # of audio (or files holding audio) sent
    reason: str = ""  # the caller's stated reason (metadata "callvault-reason")
    detail: str = ""  # e.g. a denial's message, an export request id
    calls_capped: bool = False  # more than MAX_CALLS calls were noted


_current = threading.local()


def begin(rpc: Rpc) -> None:
    _current.rpc = rpc


def end() -> None:
    _current.rpc = None


def current() -> Rpc | None:
    rpc: Rpc | None = getattr(_current, "rpc", None)
    return rpc


def current_identity() -> Identity:
    rpc = current()
    if rpc is None:
        raise RuntimeError("no RPC on this thread")
    return rpc.identity


# An entry lists at most this many calls (a sidecar's RecordCalls stream records
# calls for days); beyond it, its detail says so.
MAX_CALLS = 1000


def note_call(tenant: str, call_id: str) -> None:
    rpc = current()
    if rpc is None or (tenant, call_id) in rpc.calls:
        return
    if len(rpc.calls) < MAX_CALLS:
        rpc.calls.append((tenant, call_id))
    elif not rpc.calls_capped:
        rpc.calls_capped = True
        note_detail(f"more than {MAX_CALLS} calls: the first {MAX_CALLS} are listed")


def note_audio(seconds: float, nbytes: int) -> None:
    rpc = current()
    if rpc is not None:
        rpc.audio_seconds += seconds
        rpc.audio_bytes += nbytes


def note_detail(text: str) -> None:
    rpc = current()
    if rpc is not None:
        rpc.detail = f"{rpc.detail}; {text}" if rpc.detail else text

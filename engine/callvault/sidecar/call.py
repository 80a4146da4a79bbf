"""One call on the sidecar: its spool, its legs (UDP ports and sockets), counters and
state (``receiving`` -> ``forwarding`` -> ``sealed``, or ``failed`` from either with a
``reason``), shared by the receive thread, the call's forwarder and the control API;
and the control API's refusal (:class:`SidecarError`)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np
import numpy.typing as npt
from callvault_client._pb import callvault_pb2 as pb

from callvault.errors import CallvaultError
from callvault.sidecar.latch import DEFAULT_EVENT_PT, SourceLatch
from callvault.sidecar.spool import Spool

if TYPE_CHECKING:
    from callvault.sidecar.forwarder import Forwarder

# What StartCall accepts as a call id (the server's rule, callvault.server.ingest).


class SidecarError(CallvaultError):
    """A control request the sidecar refuses; ``code`` is the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Leg:
    """One leg: its UDP port and socket, the packets received since the last flush,
    what the receive thread refused (docs/server.md, "What the sidecar accepts") and
    its latched source. The counters count since the sidecar (re)started."""

    name: str
    index: int
    port: int
    sock: socket.socket | None = None
    pending: list[tuple[bytes, npt.NDArray[np.int32], npt.NDArray[np.int64]]] = field(
        default_factory=list
    )
    invalid: int = 0  # refused by the sidecar's packet check: never spooled nor forwarded
    foreign: int = 0  # valid, but from a source other than the latched one: dropped
    relatches: int = 0  # times a new source (or a new SSRC) was latched
    event_pts: frozenset[int] = frozenset({DEFAULT_EVENT_PT})  # RFC 4733 payload types
    latch: SourceLatch = field(default_factory=SourceLatch)


class Call:
    """One call: its spool, legs, counters and its forwarder (once it has one)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.start = pb.CallStart.FromString(spool.call_start)
        self.tenant = self.start.tenant
        self.call_id = self.start.call_id
        self.legs = [
            Leg(spec.name, i, port)
            for i, (spec, port) in enumerate(zip(self.start.legs, spool.ports, strict=True))
        ]
        self.state = "forwarding" if spool.end is not None else "receiving"
        self.packets = spool.packets
        self.truncated = 0
        self.forwarder: Forwarder | None = None
        # Why the call failed (state "failed") or ended short; empty when all is well.
        self.reason = ""
        self.sync_failed = False  # an fsync of its spool failed (logged once)

    @property
    def connected(self) -> bool:
        """The call's forwarder has a stream up to the server."""
        return self.forwarder is not None and self.forwarder.connected

    def wake(self) -> None:
        """The spool grew or ended: the forwarder may send."""
        forwarder = self.forwarder
        if forwarder is not None:
            forwarder.wake()

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant or "default", self.call_id)

    def spool_bytes(self) -> int:
        """Bytes the call's spool holds on disk (0 once it is deleted)."""
        total = 0
        try:
            with os.scandir(self.spool.directory) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            return 0
        return total

    def describe(self) -> pb.SidecarCall:
        # Leg.invalid / Leg.foreign are the receiver's counters (0 where it keeps none).
        return pb.SidecarCall(
            call_id=self.call_id,
            tenant=self.tenant,
            ports={leg.name: leg.port for leg in self.legs},
            state=self.state,
            packets=self.packets,
            batches=self.spool.batches,
            acked_seq=self.spool.acked,
            connected=self.connected,
            reason=self.reason,
            invalid_packets=sum(int(getattr(leg, "invalid", 0)) for leg in self.legs),
            foreign_packets=sum(int(getattr(leg, "foreign", 0)) for leg in self.legs),
            spool_bytes=self.spool_bytes() if self.state != "sealed" else 0,
        )

    def call_start(self) -> pb.CallStart:
        start = pb.CallStart()
        start.CopyFrom(self.start)
        start.start_us = self.spool.start_us or 0
        return start

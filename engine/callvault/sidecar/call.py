"""One call on the sidecar: its spool, its legs (UDP ports and sockets), counters and
state (``receiving`` -> ``forwarding`` -> ``sealed``, or ``failed`` from either with a
``reason``, or ``not_recorded`` when the server's Started says so), shared by the
receive thread, the call's forwarder and the control API; a call the server does not
record (:class:`UnrecordedCall`); and the control API's refusal (:class:`SidecarError`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np
import numpy.typing as npt
from callvault_client._pb import callvault_pb2 as pb

from callvault.errors import CallvaultError
from callvault.media.jitter_ref import DECODERS
from callvault.rtpdefs import PT_CN
from callvault.sidecar.latch import DEFAULT_EVENT_PT, SourceLatch
from callvault.sidecar.spool import Spool

if TYPE_CHECKING:
    from callvault.sidecar.forwarder import Forwarder

# Payload types every leg records: the jitter buffer's decoders (its table, G.711 PCMU 0
# and PCMA 8) and comfort noise; a leg's declared telephone-event types come on top.
RECORDED_PTS: frozenset[int] = frozenset(DECODERS) | {PT_CN}

# Names of the RFC 3551 static payload types, for the messages about unsupported ones.
PT_NAMES: dict[int, str] = {
    0: "PCMU",
    3: "GSM",
    4: "G.723",
    5: "DVI4",
    6: "DVI4",
    7: "LPC",
    8: "PCMA",
    9: "G.722",
    10: "L16",
    11: "L16",
    12: "QCELP",
    13: "CN",
    14: "MPA",
    15: "G.728",
    16: "DVI4",
    17: "DVI4",
    18: "G.729",
    25: "CelB",
    26: "JPEG",
    28: "nv",
    31: "H.261",
    32: "MPV",
    33: "MP2T",
    34: "H.263",
}


def payload_type_name(pt: int) -> str:
    """``9: G.722``; ``101: dynamic`` for 96 to 127, ``40: unassigned`` for the rest."""
    return f"{pt}: " + PT_NAMES.get(pt, "dynamic" if 96 <= pt <= 127 else "unassigned")


def payload_types(packets: bytes, lengths: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
    """Packets per RTP payload type (128 counts) of valid RTP packets (12 bytes or more),
    concatenated in ``packets`` with ``lengths``."""
    if not len(lengths):
        return np.zeros(128, np.int64)
    ends = np.cumsum(lengths, dtype=np.int64)
    second = np.frombuffer(packets, np.uint8)[ends - lengths + 1]
    return np.bincount(second & 0x7F, minlength=128).astype(np.int64)


class SidecarError(CallvaultError):
    """A control request the sidecar refuses; ``code`` is the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Leg:
    """One leg: its UDP port and socket, what the receive thread refused
    (docs/server.md, "What the sidecar accepts") and its latched source. The
    counters count since the sidecar (re)started."""

    name: str
    index: int
    port: int
    sock: socket.socket | None = None
    invalid: int = 0  # refused by the sidecar's packet check: never spooled nor forwarded
    foreign: int = 0  # valid, but from a source other than the latched one: dropped
    relatches: int = 0  # times a new source (or a new SSRC) was latched
    recv_errors: int = 0  # reads of its socket that failed (the first one is logged)
    event_pts: frozenset[int] = frozenset({DEFAULT_EVENT_PT})  # RFC 4733 payload types
    latch: SourceLatch = field(default_factory=SourceLatch)
    # Packets kept (spooled and forwarded) per RTP payload type, 0 to 127.
    pt_packets: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(128, np.int64))

    def recorded_pts(self) -> frozenset[int]:
        """The payload types this leg records: RECORDED_PTS and its telephone events."""
        return RECORDED_PTS | self.event_pts

    def count_payload_types(self, packets: bytes, lengths: npt.NDArray[np.int32]) -> list[int]:
        """Count kept packets by payload type; returns the unsupported payload types
        among them that this leg had not seen before."""
        if len(lengths) == 1 and len(packets) >= 12:  # the real-time case: no arrays
            pt = packets[1] & 0x7F
            seen = self.pt_packets[pt]
            self.pt_packets[pt] = seen + 1
            return [pt] if not seen and pt not in self.recorded_pts() else []
        counts = payload_types(packets, lengths)
        recorded = self.recorded_pts()
        new = [
            int(pt)
            for pt in np.flatnonzero(counts)
            if int(pt) not in recorded and not self.pt_packets[pt]
        ]
        self.pt_packets += counts
        return new

    def recorded_packets(self) -> int:
        """Packets in a payload type the leg records."""
        return int(sum(int(self.pt_packets[pt]) for pt in self.recorded_pts() if 0 <= pt < 128))

    def unsupported(self) -> dict[int, int]:
        """Packets per payload type the leg does not record (a codec without a decoder)."""
        recorded = self.recorded_pts()
        return {
            int(pt): int(self.pt_packets[pt])
            for pt in np.flatnonzero(self.pt_packets)
            if int(pt) not in recorded
        }

    def unrecorded_reason(self) -> str:
        """A sentence when the leg received packets but none in a codec callvault records
        (the server seals its span as unsupported-codec gaps); "" otherwise."""
        unsupported = self.unsupported()
        if not unsupported or self.recorded_packets():
            return ""
        pts = ", ".join(payload_type_name(pt) for pt in sorted(unsupported))
        s = "s" if len(unsupported) > 1 else ""
        return (
            f"leg {self.name}: every packet was in a codec callvault does not record "
            f"(payload type{s} {pts}); nothing of this leg is recorded"
        )

    def describe(self) -> pb.SidecarLeg:
        return pb.SidecarLeg(
            name=self.name,
            recorded_packets=self.recorded_packets(),
            unsupported_packets=self.unsupported(),
        )


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
        self.codec_warned = False  # an unsupported payload type was logged (once a call)
        self.paused_packets = 0  # PCI: packets discarded while paused (never spooled)

    @property
    def connected(self) -> bool:
        """The call's forwarder has a stream up to the server."""
        return self.forwarder is not None and self.forwarder.connected

    def wake(self) -> None:
        """The spool grew or ended: the uplink may send (it gathers every call's new
        batches into its next message)."""
        forwarder = self.forwarder
        if forwarder is not None:
            forwarder.wake()

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant or "default", self.call_id)

    def spool_bytes(self) -> int:
        """Bytes the call's spool holds on disk (0 once it is deleted)."""
        return self.spool.stored_bytes

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
            legs=[leg.describe() for leg in self.legs],
            codec_problem=self.codec_problem(),
        )

    def codec_problem(self) -> str:
        """Each leg's ``unrecorded_reason``, joined by "; " ("" when every leg that
        received packets received some in a recorded codec)."""
        return "; ".join(r for r in (leg.unrecorded_reason() for leg in self.legs) if r)

    def call_start(self) -> pb.CallStart:
        start = pb.CallStart()
        start.CopyFrom(self.start)
        start.start_us = self.spool.start_us or 0
        return start


class UnrecordedCall:
    """A call the server's recording policy does not record (its decision came at
    StartCall, Ingest.Decide): its UDP ports are bound, so no other call gets them
    while the PBX still sends this one's RTP, but never read (what arrives stays in
    the kernel's socket buffer until ``close`` discards it); no spool, nothing on disk,
    nothing forwarded. State ``not_recorded`` until ``call stop`` closes the ports."""

    def __init__(
        self,
        start: pb.CallStart,
        bound: list[tuple[int, socket.socket]],
        decision: pb.CallDecision,
    ) -> None:
        self.start = start
        self.tenant = start.tenant
        self.call_id = start.call_id
        self.names = [leg.name for leg in start.legs]
        self.socks = [s for _, s in bound]
        self.port_numbers = [p for p, _ in bound]
        self.decision = decision
        self.state = "not_recorded"
        self.stopped = False  # call stop closed its ports
        self.reason = f"not recorded by the server's policy ({decision.rule}: {decision.reason})"

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant or "default", self.call_id)

    def ports(self) -> dict[str, int]:
        return dict(zip(self.names, self.port_numbers, strict=True))

    def close(self) -> None:
        self.stopped = True
        for s in self.socks:
            s.close()

    def describe(self) -> pb.SidecarCall:
        return pb.SidecarCall(
            call_id=self.call_id,
            tenant=self.tenant,
            ports=self.ports(),
            state=self.state,
            reason=self.reason,
            legs=[pb.SidecarLeg(name=n) for n in self.names],
        )

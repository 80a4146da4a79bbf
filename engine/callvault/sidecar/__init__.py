"""`callvault sidecar`: receive calls' RTP beside a PBX and forward it to a server.

This package owns the sidecar: receiving each call's RTP on UDP ports of its
own, spooling it to disk before anything else (store and forward), forwarding
it to a callvault server over Ingest.RecordCalls until the server seals the call,
and the control API (gRPC ``callvault.v1.Sidecar``) a PBX drives it with.

Modules, by role:

- :mod:`~callvault.sidecar.addresses`: ``--server``/``--listen``/``--rtp`` parsing.
- :mod:`~callvault.sidecar.call`: one call's shared state (:class:`Call`, :class:`Leg`)
  and the control API's refusal (:class:`SidecarError`).
- :mod:`~callvault.sidecar.receiver`: the receive thread (:class:`Receiver`): a tick
  every ``FLUSH_MS`` drains every call's sockets in one C call (recvmmsg, kernel
  arrival stamps), checks and latches them, and appends one batch per leg to each
  call's spool; one call's failure stays that call's.
- :mod:`~callvault.sidecar.latch`: what a leg accepts: the server's RTP checks
  before anything is spooled, source latching and the re-latch rule.
- :mod:`~callvault.sidecar.spool`: the per-call store-and-forward spool
  (docs/format.md section 9).
- :mod:`~callvault.sidecar.forwarder`: the link to the server: ONE :class:`Uplink`
  per sidecar, a single Ingest.RecordCalls stream carrying every call (each call's
  new batches, read from its spool, sent together per window), and a
  :class:`Forwarder` per call (its slot and resume state on that stream; the
  Ingest.Record resume protocol per call), reconnecting forever after transient
  errors; a refusal for good ends the call alone (state ``failed``, with its
  reason); the spool goes only after Sealed or such a refusal.
- :mod:`~callvault.sidecar.daemon`: :class:`Sidecar`, which owns the calls, ports,
  spools, receiver and forwarders, recovers the spool directory on start, ends a
  call that fails (alone) and answers health.
- :mod:`~callvault.sidecar.control`: :class:`SidecarServicer`, the gRPC control API
  (translation only).

The command line (``callvault sidecar``, ``callvault call start|stop``) is
:mod:`callvault.cli.sidecar`.

The call's frame 0 (``CallStart.start_us``) is decided when the call's first
packets are flushed: the earliest first-sample bound among them (a G.711
packet leaves its sender once its last sample is in, so arrival minus the RTP
time from the leg's first packet to this packet's end bounds when the first
sample was captured; bursty senders send ahead of time, so the earliest bound
wins). It is written to the spool before the first batch, so a restarted
sidecar sends the same CallStart. A call stopped before any packet arrived
starts at its StartCall instant.

Imports: the base modules (callvault.errors, callvault.durable), media/ (the
packet-capture helpers), the compiled extensions (callvault._net) and the SDK
(callvault_client: the generated messages and its Recording); it needs nothing
of vault/, store/ or integrity/, and never imports server/ or cli/.
"""

from __future__ import annotations

from callvault.sidecar.addresses import parse_address, parse_rtp_range
from callvault.sidecar.call import Call, Leg, SidecarError
from callvault.sidecar.control import SidecarServicer
from callvault.sidecar.daemon import KEEP_SEALED, SYNC_S, Sidecar
from callvault.sidecar.forwarder import BACKOFF_S, Forwarder, SpoolSource
from callvault.sidecar.receiver import (
    FLUSH_MS,
    RCVBUF,
    RECV_MAX_SIZE,
    RECV_PACKETS,
    Receiver,
    bind_udp,
)
from callvault.sidecar.spool import End, Spool, list_spools, spool_name

__all__ = [
    "BACKOFF_S",
    "FLUSH_MS",
    "KEEP_SEALED",
    "RCVBUF",
    "RECV_MAX_SIZE",
    "RECV_PACKETS",
    "SYNC_S",
    "Call",
    "End",
    "Forwarder",
    "Leg",
    "Receiver",
    "Sidecar",
    "SidecarError",
    "SidecarServicer",
    "Spool",
    "SpoolSource",
    "bind_udp",
    "list_spools",
    "parse_address",
    "parse_rtp_range",
    "spool_name",
]

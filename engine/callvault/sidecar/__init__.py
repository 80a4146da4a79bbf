"""`callvault sidecar`: receive calls' RTP beside a PBX and forward it to a server.

This package owns the sidecar: receiving each call's RTP on UDP ports of its
own, spooling it to disk before anything else (store and forward), forwarding
it to a callvault server over Ingest.Record until the server seals the call,
and the control API (gRPC ``callvault.v1.Sidecar``) a PBX drives it with.

Modules, by role:

- :mod:`~callvault.sidecar.addresses`: ``--server``/``--listen``/``--rtp`` parsing.
- :mod:`~callvault.sidecar.call`: one call's shared state (:class:`Call`, :class:`Leg`)
  and the control API's refusal (:class:`SidecarError`).
- :mod:`~callvault.sidecar.receiver`: the receive thread (:class:`Receiver`): epoll
  over every call's sockets, recvmmsg with kernel arrival stamps, one batch per leg
  every ``FLUSH_MS`` appended to the spool.
- :mod:`~callvault.sidecar.spool`: the per-call store-and-forward spool
  (docs/format.md section 9).
- :mod:`~callvault.sidecar.forwarder`: the link to the server (:class:`Forwarder`),
  one per call: the SDK's ``Recording`` (the Ingest.Record resume protocol) fed
  from the call's spool, reconnecting forever; the spool goes only after Sealed.
- :mod:`~callvault.sidecar.daemon`: :class:`Sidecar`, which owns the calls, ports,
  spools, receiver and forwarders, and recovers the spool directory on start.
- :mod:`~callvault.sidecar.control`: :class:`SidecarServicer`, the gRPC control API
  (translation only).

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

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.errors import CallvaultError
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
    "CALL_ID",
    "FLUSH_MS",
    "KEEP_SEALED",
    "META_FIELDS",
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
    "call_meta",
    "cmd_call_start",
    "cmd_call_stop",
    "cmd_sidecar",
    "list_spools",
    "parse_address",
    "parse_rtp_range",
    "spool_name",
]

log = logging.getLogger("callvault.sidecar")

CALL_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
META_FIELDS = ("agent", "skill_group", "direction", "customer_number")


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def cmd_sidecar(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s sidecar %(levelname)s %(message)s",
    )
    parse_address(args.upstream, "--server")
    rtp_host, lo, hi = parse_rtp_range(args.rtp)
    parse_address(args.listen, "--listen")
    ca = getattr(args, "upstream_tls_ca", None)
    try:
        tls_ca = Path(ca).read_bytes() if ca else None
    except OSError as e:
        raise CallvaultError(f"--tls-ca {ca}: {e.strerror}") from None
    sidecar = Sidecar(args.upstream, rtp_host, lo, hi, Path(args.spool), tls_ca=tls_ca)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sidecar.start()
    server = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="control"))
    pbg.add_SidecarServicer_to_server(SidecarServicer(sidecar), server)
    port = server.add_insecure_port(args.listen)
    if not port:
        sidecar.shutdown()
        raise CallvaultError(f"--listen {args.listen}: cannot bind")
    server.start()
    if args.port_file:
        _write_port_file(args.port_file, port)
    log.info(
        "control API on %s:%d, RTP on %s:%d-%d, forwarding to %s, spool %s",
        args.listen.rpartition(":")[0],
        port,
        rtp_host,
        lo,
        hi,
        args.upstream,
        args.spool,
    )
    stop.wait()
    log.info("stopping: flushing the spools")
    server.stop(grace=1).wait()
    sidecar.shutdown()
    log.info("stopped")
    return 0


def _control(address: str) -> tuple[grpc.Channel, pbg.SidecarStub]:
    ch = grpc.insecure_channel(address)
    return ch, pbg.SidecarStub(ch)


def _rpc_error(address: str, e: grpc.RpcError) -> CallvaultError:
    return CallvaultError(f"sidecar {address}: {e.details() or e.code().name}")


def call_meta(items: list[str] | None) -> pb.CallMeta:
    """``--meta KEY=VALUE`` items as CallMeta: the known keys, tags (a,b), the rest extra."""
    meta = pb.CallMeta()
    for item in items or []:
        k, sep, v = item.partition("=")
        k = k.strip().replace("-", "_")
        if not sep or not k:
            raise CallvaultError(f"--meta {item!r}: expected KEY=VALUE")
        if k in META_FIELDS:
            setattr(meta, k, v)
        elif k == "tags":
            meta.tags.extend(t for t in v.split(",") if t)
        else:
            meta.extra[k] = v
    return meta


def cmd_call_start(args: argparse.Namespace) -> int:
    legs = [x.strip() for x in args.legs.split(",")] if args.legs else []
    req = pb.StartCallRequest(
        call_id=args.call_id,
        tenant=getattr(args, "tenant", "") or "",
        legs=legs,
        meta=call_meta(args.meta),
    )
    ch, stub = _control(args.sidecar)
    with ch:
        try:
            reply = stub.StartCall(req, timeout=30)
        except grpc.RpcError as e:
            raise _rpc_error(args.sidecar, e) from e
    order = legs or list(reply.ports)
    print(json.dumps({name: reply.ports[name] for name in order}))
    return 0


def cmd_call_stop(args: argparse.Namespace) -> int:
    ch, stub = _control(args.sidecar)
    with ch:
        try:
            reply = stub.StopCall(
                pb.StopCallRequest(call_id=args.call_id, tenant=getattr(args, "tenant", "") or ""),
                timeout=60,
            )
        except grpc.RpcError as e:
            raise _rpc_error(args.sidecar, e) from e
    print(json.dumps({"packets": reply.packets, "batches": reply.batches}))
    return 0

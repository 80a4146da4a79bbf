"""The sidecar verbs: `sidecar` (run one beside a PBX) and `call start` / `call stop`
(its control API, through the SDK's SidecarClient)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from callvault import ids
from callvault.cli.common import leg_names
from callvault.durable import write_atomic
from callvault.errors import CallvaultError

log = logging.getLogger("callvault.sidecar")


def cmd_sidecar(args: argparse.Namespace) -> int:
    import grpc
    from callvault_client._pb import callvault_pb2_grpc as pbg

    from callvault.sidecar import Sidecar, SidecarServicer, parse_address, parse_rtp_range

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
        write_atomic(Path(args.port_file), f"{port}\n".encode(), mode=0o644)
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


def cmd_call_start(args: argparse.Namespace) -> int:
    from callvault_client import SidecarClient
    from callvault_client.errors import CallvaultClientError

    tenant = getattr(args, "tenant", "") or ""
    ids.check_call_id(args.call_id)
    if tenant:
        ids.check_call_id(tenant, "tenant")
    legs = leg_names(args.legs) or []
    for name in legs:
        ids.check_leg_name(name)
    meta = ids.parse_meta(args.meta, extra=True)
    with SidecarClient(args.sidecar) as client:
        try:
            ports = client.start_call(args.call_id, legs, tenant=tenant, meta=meta, timeout=30)
        except CallvaultClientError as e:
            raise CallvaultError(f"sidecar {args.sidecar}: {e.message}") from e
    print(json.dumps({name: ports[name] for name in legs or ports}))
    return 0


def cmd_call_stop(args: argparse.Namespace) -> int:
    from callvault_client import SidecarClient
    from callvault_client.errors import CallvaultClientError

    with SidecarClient(args.sidecar) as client:
        try:
            reply = client.stop_call(
                args.call_id, tenant=getattr(args, "tenant", "") or "", timeout=60
            )
        except CallvaultClientError as e:
            raise CallvaultError(f"sidecar {args.sidecar}: {e.message}") from e
    print(json.dumps({"packets": reply.packets, "batches": reply.batches}))
    return 0

"""The sidecar verbs: `sidecar` (run one beside a PBX) and `call start` / `call stop` /
`call ls` (its control API, through the SDK's SidecarClient; `call ls` also asks the
sidecar's grpc.health.v1 service)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from callvault import ids
from callvault.cli.common import TOKEN_ENV, leg_names, resolve_token
from callvault.durable import write_atomic
from callvault.errors import CallvaultError

log = logging.getLogger("callvault.sidecar")


def cmd_sidecar(args: argparse.Namespace) -> int:
    import grpc
    from callvault_client._pb import callvault_pb2_grpc as pbg
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from callvault.sidecar import Sidecar, SidecarServicer, parse_address, parse_rtp_range

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s sidecar %(levelname)s %(message)s",
    )
    parse_address(args.upstream, "--server")
    rtp_host, lo, hi = parse_rtp_range(args.rtp)
    parse_address(args.listen, "--listen")
    from callvault.server.app import is_loopback_host

    if not args.insecure_listen and not is_loopback_host(args.listen.rpartition(":")[0]):
        # the control API has no TLS: its tokens would cross the network in clear
        raise CallvaultError(
            f"--listen {args.listen} is not a loopback address and the control API has no "
            "TLS: put the sidecar beside its PBX (loopback), or give --insecure-listen to "
            "take control tokens in clear anyway"
        )
    ca = getattr(args, "upstream_tls_ca", None)
    try:
        tls_ca = Path(ca).read_bytes() if ca else None
    except OSError as e:
        raise CallvaultError(f"--tls-ca {ca}: {e.strerror}") from None
    from callvault.access.authn import CredentialAuthenticator
    from callvault.access.tokens import TokenStore
    from callvault.sidecar.control import ControlAuth

    token = resolve_token(argparse.Namespace(token_file=args.upstream_token_file))
    sidecar = Sidecar(args.upstream, rtp_host, lo, hi, Path(args.spool), tls_ca=tls_ca, token=token)
    store = TokenStore(Path(args.spool) / "access")
    control_auth = CredentialAuthenticator(
        store, create_hint=f"callvault token create --spool {args.spool} --name NAME"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sidecar.start()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=8, thread_name_prefix="control"),
        interceptors=[ControlAuth(control_auth)],
    )
    pbg.add_SidecarServicer_to_server(SidecarServicer(sidecar), server)
    # grpc.health.v1 for "" and callvault.v1.Sidecar: NOT_SERVING while the receive
    # thread is dead or the spool directory cannot be written (checked every second).
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def on_health(ok: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", "callvault.v1.Sidecar"):
            health_servicer.set(service, status)

    sidecar.on_health = on_health
    sidecar.update_health()
    port = server.add_insecure_port(args.listen)
    if not port:
        sidecar.shutdown()
        raise CallvaultError(f"--listen {args.listen}: cannot bind")
    server.start()
    if control_auth.is_open():
        log.warning(
            "OPEN MODE: the control API has no tokens (%s): every caller on loopback may "
            "start and stop calls, others are refused. Create one: callvault token create "
            "--spool %s --name NAME",
            store.dir,
            args.spool,
        )
    if not token:
        log.info("no server token (--token-file, $%s): the server must be in open mode", TOKEN_ENV)
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
    with SidecarClient(args.sidecar, token=resolve_token(args) or "") as client:
        try:
            reply = client.start_call_reply(
                args.call_id,
                legs,
                tenant=tenant,
                meta=meta,
                timeout=30,
                region=args.region or "",
                consent=args.consent or "",
            )
        except CallvaultClientError as e:
            raise CallvaultError(f"sidecar {args.sidecar}: {e.message}") from e
    ports = dict(reply.ports)
    print(json.dumps({name: ports[name] for name in legs or ports}), flush=True)
    if reply.HasField("decision") and not reply.decision.recorded:
        # the ports exist (the PBX may send to them); the sidecar drops what arrives
        print(
            f"callvault: call {args.call_id} is not recorded ({reply.decision.rule}: "
            f"{reply.decision.reason}); its RTP is dropped",
            file=sys.stderr,
        )
    return 0


def cmd_call_stop(args: argparse.Namespace) -> int:
    from callvault_client import SidecarClient
    from callvault_client.errors import CallvaultClientError

    with SidecarClient(args.sidecar, token=resolve_token(args) or "") as client:
        try:
            reply = client.stop_call(
                args.call_id, tenant=getattr(args, "tenant", "") or "", timeout=60
            )
        except CallvaultClientError as e:
            raise CallvaultError(f"sidecar {args.sidecar}: {e.message}") from e
    out: dict[str, object] = {"packets": reply.packets, "batches": reply.batches}
    if reply.state:
        out["state"] = reply.state
    if reply.reason:
        out["reason"] = reply.reason
    out["legs"] = _legs(reply.legs)
    if reply.codec_problem:
        out["codec_problem"] = reply.codec_problem
    print(json.dumps(out), flush=True)
    if reply.state == "failed":
        raise CallvaultError(f"call {args.call_id} failed: {reply.reason}")
    if reply.codec_problem:  # sealed all the same, its span an unsupported-codec gap
        raise CallvaultError(reply.codec_problem)
    return 0


def cmd_call_pause(args: argparse.Namespace) -> int:
    """`call pause` / `call resume` (PCI): prints {"paused"|"resumed": at_us, "seq": n}."""
    from callvault_client import SidecarClient
    from callvault_client.errors import CallvaultClientError

    tenant = getattr(args, "tenant", "") or ""
    with SidecarClient(args.sidecar, token=resolve_token(args) or "") as client:
        try:
            if args.pause:
                reply = client.pause_call(args.call_id, tenant=tenant, timeout=30)
            else:
                reply = client.resume_call(args.call_id, tenant=tenant, timeout=30)
        except CallvaultClientError as e:
            raise CallvaultError(f"sidecar {args.sidecar}: {e.message}") from e
    out: dict[str, object] = {"paused" if args.pause else "resumed": reply.at_us, "seq": reply.seq}
    if not args.pause:
        out["dropped_packets"] = reply.dropped_packets
    print(json.dumps(out), flush=True)
    return 0


def _legs(legs: Iterable[Any]) -> dict[str, dict[str, object]]:
    """SidecarLeg messages as JSON: leg name -> recorded packets and the packets per
    unsupported payload type (keys are the payload types, as strings)."""
    return {
        leg.name: {
            "recorded_packets": leg.recorded_packets,
            "unsupported_packets": {
                str(pt): n for pt, n in sorted(leg.unsupported_packets.items())
            },
        }
        for leg in legs
    }


def _health(address: str) -> str:
    """The sidecar's grpc.health.v1 status name (or why it cannot be asked)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as e:
            return f"UNKNOWN ({e.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))


def _unsupported_cell(legs: Iterable[Any]) -> str:
    """``customer:PT9x150`` per leg and unsupported payload type; ``-`` for none."""
    cells = [
        f"{leg.name}:PT{pt}x{n}"
        for leg in legs
        for pt, n in sorted(leg.unsupported_packets.items())
    ]
    return ",".join(cells) or "-"


def cmd_call_ls(args: argparse.Namespace) -> int:
    from callvault_client import SidecarClient
    from callvault_client.errors import CallvaultClientError

    with SidecarClient(args.sidecar, token=resolve_token(args) or "") as client:
        try:
            calls = client.list_calls(timeout=30)
        except CallvaultClientError as e:
            raise CallvaultError(f"sidecar {args.sidecar}: {e.message}") from e
    status = _health(args.sidecar)
    pending = [c for c in calls if c.state in ("receiving", "forwarding")]
    backlog = {
        "calls": len(pending),
        "batches_unacked": sum(max(0, c.batches - c.acked_seq) for c in pending),
        "spool_bytes": sum(c.spool_bytes for c in calls),
    }
    rows = [
        {
            "call_id": c.call_id,
            "tenant": c.tenant,
            "state": c.state,
            "reason": c.reason,
            "ports": dict(c.ports),
            "packets": c.packets,
            "invalid_packets": c.invalid_packets,
            "foreign_packets": c.foreign_packets,
            "batches": c.batches,
            "acked": c.acked_seq,
            "connected": c.connected,
            "spool_bytes": c.spool_bytes,
            "legs": _legs(c.legs),
            "codec_problem": c.codec_problem,
        }
        for c in calls
    ]
    if args.json:
        print(json.dumps({"health": status, "backlog": backlog, "calls": rows}))
        return 0
    print(
        f"sidecar {args.sidecar}: {status}; backlog {backlog['calls']} calls, "
        f"{backlog['batches_unacked']} batches not acknowledged, "
        f"{backlog['spool_bytes']} bytes spooled"
    )
    if not rows:
        return 0
    head = (
        "CALL",
        "STATE",
        "PACKETS",
        "INVALID",
        "FOREIGN",
        "UNSUPPORTED",
        "BATCHES",
        "ACKED",
        "REASON",
    )
    table = [
        (
            (f"{r['tenant']}/" if r["tenant"] else "") + str(r["call_id"]),
            str(r["state"]),
            str(r["packets"]),
            str(r["invalid_packets"]),
            str(r["foreign_packets"]),
            _unsupported_cell(c.legs),
            str(r["batches"]),
            str(r["acked"]),
            str(r["reason"] or r["codec_problem"]),
        )
        for r, c in zip(rows, calls, strict=True)
    ]
    # every column but the last (the reason, a sentence) padded to its widest cell,
    # two spaces between columns
    widths = [max(len(x) for x in col) for col in zip(head, *table, strict=True)]
    for line in (head, *table):
        cells = [x.ljust(w) for x, w in zip(line[:-1], widths[:-1], strict=True)]
        print("  ".join([*cells, line[-1]]).rstrip())
    return 0

"""The sidecar itself (:class:`Sidecar`): the calls, their UDP ports and spools, the
receive thread, the forwarders and the spool fsync timer; what the control API
asks of it (start, stop, list calls); recovery of the spool directory on start.

Spool durability policy: every record is written to the OS at once (a SIGKILL
of the sidecar loses nothing it received); each spool is fsynced every
``SYNC_S`` seconds when it changed, at the call's stop, and on SIGTERM.

On start the sidecar recovers its spool directory: calls not stopped get
their UDP ports back (same numbers, so senders keep sending) and keep
receiving; stopped ones keep forwarding until sealed.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import socket
import threading
from pathlib import Path

import grpc
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb

from callvault import _net, ids
from callvault.errors import CallvaultError
from callvault.sidecar.call import Call, SidecarError
from callvault.sidecar.forwarder import BACKOFF_S, Forwarder
from callvault.sidecar.receiver import Receiver, bind_udp
from callvault.sidecar.spool import Spool, list_spools, spool_name

log = logging.getLogger(__name__)

SYNC_S = 1.0  # spool fsync period (a power cut loses at most this much)
KEEP_SEALED = 1000  # sealed calls remembered (ListCalls, duplicate start)


class Sidecar:
    """The calls, their ports, spools, receiver and forwarders."""

    def __init__(
        self,
        upstream: str,
        rtp_host: str,
        port_min: int,
        port_max: int,
        spool_root: Path,
        *,
        tls_ca: bytes | None = None,
    ) -> None:
        self.upstream = upstream
        self.rtp_host = rtp_host
        self.port_range = (port_min, port_max)
        self.spool_root = spool_root
        spool_root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, str], Call] = {}
        self.sealed_keys: collections.OrderedDict[tuple[str, str], Call] = collections.OrderedDict()
        self._next_port = 0  # index into the range's even ports
        self._reserved: set[tuple[str, str]] = set()
        self.closing = threading.Event()
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.max_send_message_length", 16 << 20),
        ]
        # The SDK's client of the server, with these channel options over its
        # defaults and the forwarders' reconnect backoff.
        self.client = Client(upstream, tls_ca=tls_ca, backoff=BACKOFF_S, options=options)
        # Linux turns receive timestamping on for the whole stack asynchronously when
        # the first socket asks; until then datagrams are stamped when read. One
        # socket asking for the sidecar's whole life keeps it on, so a new call's
        # first packets get their arrival time, not their read time.
        self._stamp_keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _net.enable_timestamps(self._stamp_keeper.fileno())
        self.receiver = Receiver(self._first_flush, self._call_failed)
        self._syncer = threading.Thread(target=self._sync_loop, name="sidecar-sync", daemon=True)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Recover the spool directory, then start receiving and forwarding."""
        self.receiver.start()
        self._syncer.start()
        for path in list_spools(self.spool_root):
            try:
                spool = Spool.open(path)
            except (OSError, CallvaultError) as e:
                log.error("spool %s cannot be opened, left alone: %s", path, e)
                continue
            if spool.dropped_bytes:
                log.warning("spool %s: torn tail of %d bytes truncated", path, spool.dropped_bytes)
            call = Call(spool)
            if call.state == "receiving":
                for leg in call.legs:
                    try:
                        leg.sock = self._bind(leg.port)
                    except OSError as e:
                        log.error(
                            "%s leg %s: UDP port %d cannot be bound again (%s): the "
                            "leg receives nothing",
                            call.call_id,
                            leg.name,
                            leg.port,
                            e,
                        )
                self.receiver.submit(functools.partial(self.receiver.add, call)).result()
            with self.lock:
                self.calls[call.key] = call
            log.info(
                "recovered %s (%s, %d batches spooled)", call.call_id, call.state, spool.batches
            )
            if spool.start_us is not None:
                self._start_forwarder(call)

    def shutdown(self) -> None:
        """SIGTERM: stop receiving, flush and fsync the spools, stop forwarding."""
        self.receiver.shutdown()
        with self.lock:
            calls = list(self.calls.values())
        for call in calls:
            call.spool.sync()
        with self.lock:
            self.closing.set()
            forwarders = [c.forwarder for c in self.calls.values() if c.forwarder is not None]
        for forwarder in forwarders:
            forwarder.stop()
        self.client.close()
        self._stamp_keeper.close()

    def _sync_loop(self) -> None:
        while not self.closing.wait(SYNC_S):
            with self.lock:
                calls = list(self.calls.values())
            for call in calls:
                try:
                    call.spool.sync()
                except OSError as e:  # deleted meanwhile (sealed), or a disk error
                    if call.state != "sealed":
                        log.error("%s: spool fsync failed: %s", call.call_id, e)

    # -- ports -------------------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        return bind_udp(self.rtp_host, port)

    def _allocate(self, count: int) -> list[tuple[int, socket.socket]]:
        """Bind ``count`` free EVEN ports of the range (RFC 3550 section 11: RTP on an
        even port, the sender's RTCP goes to the odd one above, which no leg takes),
        round robin (a port just freed is taken last, so stray packets of an old call
        do not land in a new one)."""
        lo, hi = self.port_range
        even = list(range(lo + lo % 2, hi + 1, 2))
        with self.lock:
            taken = {
                leg.port for c in self.calls.values() if c.state == "receiving" for leg in c.legs
            }
        got: list[tuple[int, socket.socket]] = []
        for i in range(len(even)):
            port = even[(self._next_port + i) % len(even)]
            if port in taken:
                continue
            try:
                got.append((port, self._bind(port)))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    for _, s in got:
                        s.close()
                    raise SidecarError(
                        grpc.StatusCode.INTERNAL, f"cannot bind UDP {self.rtp_host}:{port}: {e}"
                    ) from e
                continue
            if len(got) == count:
                self._next_port = (self._next_port + i + 1) % len(even)
                return got
        for _, s in got:
            s.close()
        raise SidecarError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"no free even UDP port pair in {self.rtp_host}:{lo}-{hi} for {count} legs",
        )

    # -- control -------------------------------------------------------------------

    def start_call(self, req: pb.StartCallRequest) -> dict[str, int]:
        if not ids.is_call_id(req.call_id):
            raise SidecarError(
                grpc.StatusCode.INVALID_ARGUMENT, f"call_id {req.call_id!r}: use {ids.CALL_ID_RULE}"
            )
        legs = list(req.legs) or ["agent", "customer"]
        if not 1 <= len(legs) <= 2 or len(set(legs)) != len(legs) or not all(legs):
            raise SidecarError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"legs {legs}: one or two distinct, non-empty names",
            )
        key = (req.tenant or "default", req.call_id)
        with self.lock:
            if key in self.calls or key in self.sealed_keys or key in self._reserved:
                state = self.calls.get(key) or self.sealed_keys.get(key)
                raise SidecarError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"call {req.call_id} is already on this sidecar"
                    + (f" ({state.state})" if state else ""),
                )
            self._reserved.add(key)  # while its ports are bound and its spool made
        try:
            bound = self._allocate(len(legs))
            start = pb.CallStart(
                call_id=req.call_id,
                tenant=req.tenant,
                meta=req.meta,
                legs=[pb.LegSpec(name=n) for n in legs],
            )
            try:
                spool = Spool.create(
                    self.spool_root,
                    spool_name(req.tenant, req.call_id),
                    start.SerializeToString(),
                    [p for p, _ in bound],
                    _net.now_us(),
                )
            except BaseException:
                for _, s in bound:
                    s.close()
                raise
            call = Call(spool)
            for leg, (_, sock) in zip(call.legs, bound, strict=True):
                leg.sock = sock
            with self.lock:
                self.calls[key] = call
        finally:
            with self.lock:
                self._reserved.discard(key)
        self.receiver.submit(lambda: self.receiver.add(call)).result()
        log.info(
            "call %s started: %s",
            req.call_id,
            ", ".join(f"{leg.name} udp/{leg.port}" for leg in call.legs),
        )
        return {leg.name: leg.port for leg in call.legs}

    def _lookup(self, tenant: str, call_id: str) -> Call:
        key = (tenant or "default", call_id)
        with self.lock:
            call = self.calls.get(key) or self.sealed_keys.get(key)
        if call is None:
            raise SidecarError(
                grpc.StatusCode.NOT_FOUND,
                f"no call {call_id!r} on this sidecar" + (f" (tenant {tenant})" if tenant else ""),
            )
        return call

    def stop_call(self, req: pb.StopCallRequest) -> tuple[int, int]:
        call = self._lookup(req.tenant, req.call_id)
        if call.state == "receiving":
            self.receiver.submit(lambda: self._stop_in_receiver(call)).result(timeout=30)
            log.info(
                "call %s stopped: %d packets, %d batches",
                call.call_id,
                call.packets,
                call.spool.batches,
            )
        return call.packets, call.spool.batches

    def _stop_in_receiver(self, call: Call) -> None:
        if call.state != "receiving":
            return
        self.receiver.stop_call(call)
        call.state = "forwarding"
        no_audio = call.spool.start_us is None
        if no_audio:
            call.spool.set_start_us(call.spool.created_us)
        call.spool.finish()
        call.wake()
        if no_audio:
            self._start_forwarder(call)

    def list_calls(self) -> list[pb.SidecarCall]:
        with self.lock:
            calls = list(self.calls.values()) + list(self.sealed_keys.values())
        return [c.describe() for c in calls]

    # -- forwarding ----------------------------------------------------------------

    def _first_flush(self, call: Call) -> None:
        self._start_forwarder(call)

    def _call_failed(self, call: Call, exc: BaseException) -> None:
        """(receive thread) Receiving ``call`` failed; the receiver closed its sockets.
        (Minimal: lane sidecar ends the call with its reason.)"""
        call.state = "failed"

    def _start_forwarder(self, call: Call) -> None:
        with self.lock:  # the receive thread (first flush) and start() (recovery) may race
            if call.forwarder is not None or self.closing.is_set():
                return
            call.forwarder = Forwarder(self, call)
        call.forwarder.start()

    def sealed(self, call: Call, sealed: pb.Sealed) -> None:
        """The server sealed the call: its spool goes."""
        log.info(
            "call %s sealed: %d frames per leg, log index %d, seal %s",
            call.call_id,
            sealed.frames,
            sealed.log_index,
            sealed.seal.hex(),
        )
        call.state = "sealed"
        with self.lock:
            self.calls.pop(call.key, None)
            self.sealed_keys[call.key] = call
            while len(self.sealed_keys) > KEEP_SEALED:
                self.sealed_keys.popitem(last=False)
        call.spool.delete()

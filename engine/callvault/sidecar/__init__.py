"""`callvault sidecar`: receive calls' RTP beside a PBX and forward it to a server.

Three parts, each a thread or a pool:

- The control API (gRPC ``callvault.v1.Sidecar`` on ``--listen``): StartCall
  binds one UDP port per leg from the ``--rtp`` range and creates the call's
  spool; StopCall ends receiving; ListCalls reports. The servicer only
  translates: the logic is in :class:`Sidecar`.
- One receive thread (:class:`Receiver`): epoll over every call's sockets,
  ``_net.recv_batch`` (recvmmsg, kernel arrival stamps) on readiness, pending
  packets per leg; every ``FLUSH_MS`` (and at stop) each leg's pending
  packets become one batch (seq per call across legs) appended to the spool
  (callvault.sidecar.spool, docs/format.md section 9), then the call's forwarder is
  woken. Changes to the set of sockets run in this thread (submitted through
  an eventfd), so a stop never races a flush.
- One forwarder thread per call (:class:`Forwarder`): an Ingest.Record stream
  to ``--server``: CallStart, then on Started every spooled batch from
  ``resume_from_seq`` on, then live ones; after the stop, CallEnd(batches =
  total); on Sealed the spool is deleted. Any stream error (server down,
  killed mid-stream) means back off and reconnect, forever, while the
  receiver keeps spooling.

The call's frame 0 (``CallStart.start_us``) is decided when the call's first
packets are flushed: the earliest first-sample bound among them (a G.711
packet leaves its sender once its last sample is in, so arrival minus the RTP
time from the leg's first packet to this packet's end bounds when the first
sample was captured; bursty senders send ahead of time, so the earliest bound
wins). It is written to the spool before the first batch, so a restarted
sidecar sends the same CallStart. A call stopped before any packet arrived
starts at its StartCall instant.

Spool durability policy: every record is written to the OS at once (a SIGKILL
of the sidecar loses nothing it received); each spool is fsynced every
``SYNC_S`` seconds when it changed, at the call's stop, and on SIGTERM.

On start the sidecar recovers its spool directory: calls not stopped get
their UDP ports back (same numbers, so senders keep sending) and keep
receiving; stopped ones keep forwarding until sealed.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault import _net, ids
from callvault.errors import CallvaultError
from callvault.media.capture import first_sample_bound
from callvault.sidecar.spool import Spool, list_spools, spool_name

log = logging.getLogger("callvault.sidecar")

FLUSH_MS = 20  # one batch per leg per 20 ms: one frame of audio, small acks
SYNC_S = 1.0  # spool fsync period (a power cut loses at most this much)
RECV_PACKETS = 256  # datagrams per recvmmsg
RECV_MAX_SIZE = 65535  # the largest UDP payload: nothing real is truncated
RCVBUF = 1 << 20  # per leg socket: ~6 s of G.711 at 20 ms, bursts included
BACKOFF_S = (0.1, 2.0)  # forwarder reconnect backoff: first, largest
KEEP_SEALED = 1000  # sealed calls remembered (ListCalls, duplicate start)

T = TypeVar("T")


class SidecarError(CallvaultError):
    """A control request the sidecar refuses; ``code`` is the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CallvaultError(f"{what} {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def parse_rtp_range(value: str) -> tuple[str, int, int]:
    host, sep, ports = value.rpartition(":")
    lo, dash, hi = ports.partition("-")
    if (
        not sep
        or not host
        or not dash
        or not lo.isdigit()
        or not hi.isdigit()
        or not 1 <= int(lo) <= int(hi) <= 65535
    ):
        raise CallvaultError(
            f"--rtp {value!r}: expected HOST:PMIN-PMAX, 1 <= PMIN <= PMAX <= 65535"
        )
    return host.strip("[]"), int(lo), int(hi)


# ---------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------


@dataclass
class Leg:
    name: str
    index: int
    port: int
    sock: socket.socket | None = None
    pending: list[tuple[bytes, npt.NDArray[np.int32], npt.NDArray[np.int64]]] = field(
        default_factory=list
    )


class Call:
    """One call: its spool, legs, counters and the condition its forwarder waits on."""

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
        self.connected = False
        self.cond = threading.Condition()
        self.forwarder: Forwarder | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant or "default", self.call_id)

    def describe(self) -> pb.SidecarCall:
        return pb.SidecarCall(
            call_id=self.call_id,
            tenant=self.tenant,
            ports={leg.name: leg.port for leg in self.legs},
            state=self.state,
            packets=self.packets,
            batches=self.spool.batches,
            acked_seq=self.spool.acked,
            connected=self.connected,
        )

    def call_start(self) -> pb.CallStart:
        start = pb.CallStart()
        start.CopyFrom(self.start)
        start.start_us = self.spool.start_us or 0
        return start


# ---------------------------------------------------------------------------
# Receive thread
# ---------------------------------------------------------------------------


class Receiver(threading.Thread):
    """epoll over every receiving call's sockets; batches every FLUSH_MS into the spools."""

    def __init__(self, on_first_flush: Callable[[Call], None]) -> None:
        super().__init__(name="sidecar-receive", daemon=True)
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._fds: dict[int, tuple[Call, Leg]] = {}
        self._calls: list[Call] = []
        self._requests: collections.deque[tuple[Callable[[], Any], Future[Any]]] = (
            collections.deque()
        )
        self._stopping = False
        self._on_first_flush = on_first_flush
        self.packets = 0
        self.flushes = 0

    # -- requests run in this thread ----------------------------------------

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        if not self.is_alive():
            raise SidecarError(grpc.StatusCode.UNAVAILABLE, "the sidecar is shutting down")
        self._requests.append((fn, fut))
        os.eventfd_write(self._wake, 1)
        return fut

    def add(self, call: Call) -> None:
        """(receive thread) Start receiving on the call's sockets."""
        self._calls.append(call)
        for leg in call.legs:
            if leg.sock is not None:
                self._fds[leg.sock.fileno()] = (call, leg)
                self._epoll.register(leg.sock.fileno(), select.EPOLLIN)

    def stop_call(self, call: Call) -> None:
        """(receive thread) Drain and close the call's sockets and flush what they held."""
        for leg in call.legs:
            if leg.sock is not None:
                fd = leg.sock.fileno()
                self._read(fd, call, leg, drain=True)
                self._epoll.unregister(fd)
                del self._fds[fd]
                leg.sock.close()
                leg.sock = None
        self._flush(call)
        self._calls.remove(call)

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        period = FLUSH_MS / 1000
        next_flush = time.monotonic() + period
        while not self._stopping:
            timeout = max(0.0, next_flush - time.monotonic())
            for fd, _ in self._epoll.poll(timeout):
                if fd == self._wake:
                    self._serve_requests()
                elif fd in self._fds:
                    call, leg = self._fds[fd]
                    self._read(fd, call, leg, drain=False)
            now = time.monotonic()
            if now >= next_flush:
                for call in self._calls:
                    self._flush(call)
                next_flush = max(next_flush + period, now)
        # SIGTERM: what the sockets hold goes to the spools; they are closed.
        for call in list(self._calls):
            for leg in call.legs:
                if leg.sock is not None:
                    self._read(leg.sock.fileno(), call, leg, drain=True)
                    leg.sock.close()
                    leg.sock = None
            self._flush(call)
        self._serve_requests()

    def _serve_requests(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake)
        while self._requests:
            fn, fut = self._requests.popleft()
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed to the requester
                fut.set_exception(e)

    def shutdown(self) -> None:
        """Stop receiving: flush every leg's pending packets to the spools, close sockets."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        self.join()

    def _read(self, fd: int, call: Call, leg: Leg, *, drain: bool) -> None:
        for _ in range(1 << 30 if drain else 8):
            try:
                packets, lengths, arrival, truncated = _net.recv_batch(
                    fd, RECV_PACKETS, RECV_MAX_SIZE
                )
            except OSError as e:
                log.warning("%s leg %s: receive failed: %s", call.call_id, leg.name, e)
                return
            if truncated:
                call.truncated += truncated
            if len(lengths):
                leg.pending.append((packets, lengths, arrival))
                call.packets += len(lengths)
                self.packets += len(lengths)
            if len(lengths) < RECV_PACKETS:
                return

    def _flush(self, call: Call) -> None:
        """Each leg's pending packets become one batch, appended to the spool."""
        if not any(leg.pending for leg in call.legs):
            return
        batches = []
        for leg in call.legs:
            if leg.pending:
                chunks = leg.pending
                leg.pending = []
                if len(chunks) == 1:
                    batches.append((leg.index, *chunks[0]))
                else:
                    batches.append(
                        (
                            leg.index,
                            b"".join(c[0] for c in chunks),
                            np.concatenate([c[1] for c in chunks]),
                            np.concatenate([c[2] for c in chunks]),
                        )
                    )
        first = call.spool.start_us is None
        if first:
            bounds = [first_sample_bound(p, ln, ar) for _, p, ln, ar in batches]
            known = [b for b in bounds if b is not None]
            call.spool.set_start_us(
                min(known) if known else min(int(ar[0]) for _, _, _, ar in batches)
            )
        for leg_index, packets, lengths, arrival in batches:
            call.spool.append(leg_index, packets, lengths, arrival)
        self.flushes += 1
        with call.cond:
            call.cond.notify_all()
        if first:
            self._on_first_flush(call)


# ---------------------------------------------------------------------------
# Forwarder
# ---------------------------------------------------------------------------


class _Attempt:
    """One Ingest.Record stream of a call: its request generator and what came back."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.resume: int | None = None
        self.dead = False

    def requests(self) -> Iterator[pb.IngestRequest]:
        call = self.call
        yield pb.IngestRequest(start=call.call_start())
        with call.cond:
            while self.resume is None and not self.dead:
                call.cond.wait(0.5)
            if self.dead or self.resume is None:
                return
            seq = self.resume
        while True:
            with call.cond:
                while not self.dead and seq >= call.spool.batches and call.spool.end is None:
                    call.cond.wait(0.5)
                if self.dead:
                    return
                end = call.spool.end
            if seq < call.spool.batches:
                b = call.spool.read(seq)
                yield pb.IngestRequest(
                    batch=pb.RtpBatch(
                        seq=b.seq,
                        leg=b.leg,
                        packets=b.packets,
                        lengths=b.lengths.tolist(),
                        arrival_us=b.arrival_us.tolist(),
                    )
                )
                seq += 1
            elif end is not None:
                yield pb.IngestRequest(end=pb.CallEnd(batches=end.batches, end_us=end.end_us))
                return

    def started(self, resume: int) -> None:
        with self.call.cond:
            self.resume = resume
            self.call.cond.notify_all()

    def close(self) -> None:
        with self.call.cond:
            self.dead = True
            self.call.cond.notify_all()


class Forwarder(threading.Thread):
    """Forward one call to the server until it is sealed, reconnecting forever."""

    def __init__(self, sidecar: Sidecar, call: Call) -> None:
        super().__init__(name=f"forward-{call.call_id}", daemon=True)
        self.sidecar = sidecar
        self.call = call

    def run(self) -> None:
        call = self.call
        backoff = BACKOFF_S[0]
        stub = pbg.IngestStub(self.sidecar.channel)
        while not self.sidecar.closing.is_set():
            attempt = _Attempt(call)
            try:
                for reply in stub.Record(attempt.requests()):
                    kind = reply.WhichOneof("msg")
                    if kind == "started":
                        resume = reply.started.resume_from_seq
                        if resume > call.spool.batches:
                            log.error(
                                "%s: server says resume from batch %d, the spool has %d",
                                call.call_id,
                                resume,
                                call.spool.batches,
                            )
                        log.info(
                            "%s: stream up, resume from %d (resumed=%s)",
                            call.call_id,
                            resume,
                            reply.started.resumed,
                        )
                        call.connected = True
                        backoff = BACKOFF_S[0]
                        attempt.started(resume)
                    elif kind == "ack":
                        call.spool.set_acked(reply.ack.seq + 1)
                    elif kind == "sealed":
                        attempt.close()
                        self.sidecar.sealed(call, reply.sealed)
                        return
                log.warning("%s: the server ended the stream without Sealed", call.call_id)
            except grpc.RpcError as e:
                if not self.sidecar.closing.is_set():
                    log.info(
                        "%s: stream lost (%s: %s); retry in %.1f s",
                        call.call_id,
                        e.code().name if e.code() else "?",
                        e.details(),
                        backoff,
                    )
            finally:
                attempt.close()
                call.connected = False
            if self.sidecar.closing.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_S[1])


# ---------------------------------------------------------------------------
# The sidecar
# ---------------------------------------------------------------------------


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
        self.channel = (
            grpc.secure_channel(upstream, grpc.ssl_channel_credentials(tls_ca), options=options)
            if tls_ca is not None
            else grpc.insecure_channel(upstream, options=options)
        )
        # Linux turns receive timestamping on for the whole stack asynchronously when
        # the first socket asks; until then datagrams are stamped when read. One
        # socket asking for the sidecar's whole life keeps it on, so a new call's
        # first packets get their arrival time, not their read time.
        self._stamp_keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _net.enable_timestamps(self._stamp_keeper.fileno())
        self.receiver = Receiver(self._first_flush)
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
        self.closing.set()
        self.channel.close()
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
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.rtp_host else socket.AF_INET, socket.SOCK_DGRAM
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((self.rtp_host, port))
            sock.setblocking(False)
            _net.enable_timestamps(sock.fileno())
        except OSError:
            sock.close()
            raise
        return sock

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
        with call.cond:
            call.cond.notify_all()
        if no_audio:
            self._start_forwarder(call)

    def list_calls(self) -> list[pb.SidecarCall]:
        with self.lock:
            calls = list(self.calls.values()) + list(self.sealed_keys.values())
        return [c.describe() for c in calls]

    # -- forwarding ----------------------------------------------------------------

    def _first_flush(self, call: Call) -> None:
        self._start_forwarder(call)

    def _start_forwarder(self, call: Call) -> None:
        if call.forwarder is None and not self.closing.is_set():
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


# ---------------------------------------------------------------------------
# gRPC control API (translation only)
# ---------------------------------------------------------------------------


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
        packets, batches = self._run(context, lambda: self.sidecar.stop_call(request))
        return pb.StopCallReply(packets=packets, batches=batches)

    def ListCalls(
        self,
        request: pb.ListCallsRequest,  # noqa: N802
        context: grpc.ServicerContext,
    ) -> pb.ListCallsReply:
        return pb.ListCallsReply(calls=self.sidecar.list_calls())

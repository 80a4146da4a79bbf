"""The receive thread: epoll over every receiving call's UDP sockets, ``_net.recv_batch``
(recvmmsg, kernel arrival stamps) on readiness, pending packets per leg; every
``FLUSH_MS`` (and at a call's stop) each leg's pending packets become one batch
appended to the call's spool, then the call's forwarder is woken. Changes to the
set of sockets run in this thread (submitted through an eventfd), so a stop never
races a flush.

Every datagram is checked before it is kept (callvault.sidecar.latch: the server's
RTP checks, then the leg's latched source); what fails is counted on the leg
(``Leg.invalid``, ``Leg.foreign``) and dropped, never spooled nor forwarded. What
is kept is counted per payload type (``Leg.pt_packets``); the first packet of a call
in a payload type its leg does not record (no decoder, not comfort noise, not a
declared telephone event) is logged at WARNING, once per call.

One call's failure stays that call's: when reading or flushing a call raises (its
spool closed or deleted, a full disk), the thread closes that call's sockets, hands
the call and the exception to ``on_call_failed`` and carries on with every other
call; it never dies of one call."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from callvault import _net
from callvault.media.batch import first_sample_bound
from callvault.media.packets import PacketRun
from callvault.rtpdefs import RECORDED_CODECS
from callvault.sidecar.call import Call, Leg, SidecarError, payload_type_name
from callvault.sidecar.latch import describe_source
from callvault.timeline import FRAME_MS

log = logging.getLogger(__name__)

FLUSH_MS = FRAME_MS  # one batch per leg per frame (20 ms) of audio: small acks
RECV_PACKETS = 256  # datagrams per recvmmsg
RECV_MAX_SIZE = 65535  # the largest UDP payload: nothing real is truncated
RCVBUF = 1 << 20  # per leg socket: ~6 s of G.711 at 20 ms, bursts included

T = TypeVar("T")
# (packets, lengths, arrival_us, truncated, sources) as _net.recv_batch_from gives them
RecvResult = tuple[bytes, npt.NDArray[np.int32], npt.NDArray[np.int64], int, bytes]


def bind_udp(host: str, port: int) -> socket.socket:
    """A leg's socket: ``host:port``, SO_RCVBUF = RCVBUF, non-blocking, kernel
    receive timestamps on."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((host, port))
        sock.setblocking(False)
        _net.enable_timestamps(sock.fileno())
    except OSError:
        sock.close()
        raise
    return sock


class Receiver(threading.Thread):
    """epoll over every receiving call's sockets; batches every FLUSH_MS into the spools."""

    def __init__(
        self,
        on_first_flush: Callable[[Call], None],
        on_call_failed: Callable[[Call, BaseException], None],
    ) -> None:
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
        self._on_call_failed = on_call_failed
        self.packets = 0
        self.flushes = 0
        self.failed_calls = 0

    # -- requests run in this thread ----------------------------------------

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        if not self.is_alive():
            raise SidecarError(grpc.StatusCode.UNAVAILABLE, "the sidecar is shutting down")
        self._requests.append((fn, fut))
        os.eventfd_write(self._wake, 1)
        return fut

    def add(self, call: Call) -> None:
        """(receive thread) Start receiving on the call's sockets (none watched if one
        cannot be: the error goes to the requester)."""
        self._calls.append(call)
        try:
            for leg in call.legs:
                if leg.index < len(call.start.legs):
                    declared = call.start.legs[leg.index].event_payload_types
                    if declared:
                        leg.event_pts = frozenset(int(pt) for pt in declared)
                if leg.sock is not None:
                    self._fds[leg.sock.fileno()] = (call, leg)
                    self._epoll.register(leg.sock.fileno(), select.EPOLLIN)
        except BaseException:
            for leg in call.legs:
                if leg.sock is not None and self._fds.pop(leg.sock.fileno(), None) is not None:
                    with contextlib.suppress(OSError, ValueError):
                        self._epoll.unregister(leg.sock.fileno())
            self._calls.remove(call)
            raise

    def stop_call(self, call: Call) -> None:
        """(receive thread) Drain and close the call's sockets and flush what they held.
        If that fails, the call is failed (``on_call_failed``) and the error raised."""
        if call not in self._calls:
            return  # failed earlier: its sockets are closed already
        try:
            for leg in call.legs:
                if leg.sock is not None:
                    self._read(leg.sock.fileno(), call, leg, drain=True)
            self._flush(call)
        except Exception as e:
            self._fail(call, e)
            raise
        self._close_sockets(call)
        self._calls.remove(call)

    def _close_sockets(self, call: Call) -> None:
        """Stop watching and close the call's sockets; what a candidate source held goes."""
        for leg in call.legs:
            leg.foreign += leg.latch.drop_candidate()
            if leg.sock is None:
                continue
            fd = leg.sock.fileno()
            if self._fds.pop(fd, None) is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)
            leg.sock.close()
            leg.sock = None

    def _fail(self, call: Call, exc: Exception) -> None:
        """(receive thread) Reading or flushing ``call`` raised: close its sockets, drop
        what it had pending, stop serving it and tell ``on_call_failed``."""
        log.error("%s: receiving failed, the call stops here: %s", call.call_id, exc)
        self.failed_calls += 1
        self._close_sockets(call)
        for leg in call.legs:
            leg.pending = []
        if call in self._calls:
            self._calls.remove(call)
        try:
            self._on_call_failed(call, exc)
        except Exception:  # the owner's bug must not take the other calls down
            log.exception("%s: on_call_failed raised", call.call_id)

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
                    try:
                        self._read(fd, call, leg, drain=False)
                    except Exception as e:
                        self._fail(call, e)
            now = time.monotonic()
            if now >= next_flush:
                for call in list(self._calls):
                    try:
                        self._flush(call)
                    except Exception as e:
                        self._fail(call, e)
                next_flush = max(next_flush + period, now)
        # SIGTERM: what the sockets hold goes to the spools; they are closed.
        for call in list(self._calls):
            try:
                for leg in call.legs:
                    if leg.sock is not None:
                        self._read(leg.sock.fileno(), call, leg, drain=True)
                self._flush(call)
            except Exception as e:
                self._fail(call, e)
            else:
                self._close_sockets(call)
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

    def _recv(self, fd: int, leg: Leg) -> RecvResult:
        """Up to RECV_PACKETS datagrams waiting on ``fd`` (``_net.recv_batch_from``:
        recvmmsg with kernel arrival stamps and each datagram's source); the one
        place the receiver reads a socket (benchmarks/bench_sidecar.py's peer
        overrides only this)."""
        return _net.recv_batch_from(fd, RECV_PACKETS, RECV_MAX_SIZE)

    def _read(self, fd: int, call: Call, leg: Leg, *, drain: bool) -> None:
        for _ in range(1 << 30 if drain else 8):
            try:
                packets, lengths, arrival, truncated, sources = self._recv(fd, leg)
            except OSError as e:
                log.warning("%s leg %s: receive failed: %s", call.call_id, leg.name, e)
                return
            if truncated:
                call.truncated += truncated
                leg.invalid += truncated
            if len(lengths):
                call.packets += len(lengths)
                self.packets += len(lengths)
                before = (leg.latch.source, leg.latch.ssrc)
                got = leg.latch.filter(packets, lengths, arrival, sources, leg.event_pts)
                if got.invalid and not leg.invalid:
                    log.warning(
                        "%s leg %s: refusing packets that are not valid RTP (counted in "
                        "invalid_packets, not forwarded)",
                        call.call_id,
                        leg.name,
                    )
                if got.foreign and not leg.foreign:
                    log.warning(
                        "%s leg %s: dropping packets from sources other than %s (counted "
                        "in foreign_packets)",
                        call.call_id,
                        leg.name,
                        describe_source(leg.latch.source, leg.latch.ssrc),
                    )
                leg.invalid += got.invalid
                leg.foreign += got.foreign
                if got.relatches:
                    leg.relatches += got.relatches
                    log.warning(
                        "%s leg %s: source changed from %s to %s",
                        call.call_id,
                        leg.name,
                        describe_source(*before),
                        describe_source(leg.latch.source, leg.latch.ssrc),
                    )
                if got.chunk is not None:
                    leg.pending.append(got.chunk)
                    unsupported = leg.count_payload_types(got.chunk[0], got.chunk[1])
                    if unsupported and not call.codec_warned:
                        call.codec_warned = True
                        log.warning(
                            "%s leg %s: packets in a codec callvault does not record "
                            "(payload type %s; it records %s): recorded as an "
                            "unsupported-codec gap, not as audio (counted per leg in "
                            "call ls)",
                            call.call_id,
                            leg.name,
                            ", ".join(payload_type_name(pt) for pt in unsupported),
                            RECORDED_CODECS,
                        )
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
                    run = PacketRun.concat((c[0], c[1]) for c in chunks)
                    arrival = np.concatenate([c[2] for c in chunks])
                    batches.append((leg.index, run.data, run.lengths, arrival))
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
        call.wake()
        if first:
            self._on_first_flush(call)

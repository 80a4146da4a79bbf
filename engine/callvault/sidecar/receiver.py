"""The receive thread: a tick every ``FLUSH_MS``. Each tick drains every receiving
call's UDP sockets in ONE C call (``callvault._net.MultiRecv``: recvmmsg per socket,
the kernel's arrival stamps and each datagram's source), checks all the datagrams
in one more (``callvault._rtp.check_datagrams``), and appends each call's new
packets to its spool, one batch per leg, both legs in one write; then the call's
forwarder is woken. Nothing is made per packet in Python on the common path: a leg
whose datagrams are all valid and all from its latched source (the C call compares
each datagram's source and SSRC with the leg's) is a slice of the tick's buffers.
A leg with anything else in the tick (a datagram that fails the checks, another
source, no source latched yet, a re-latch candidate held) goes through its
:class:`~callvault.sidecar.latch.SourceLatch` in Python, the reference rules.

Arrival instants are the kernel's receive stamps, so reading a socket once per
tick rather than on each datagram changes no timeline: the stamps are when each
datagram reached the host, whenever it is read. The sockets' buffers
(``RCVBUF``, ~6 s of G.711 each) hold far more than a tick.

Changes to the set of sockets run in this thread (submitted through an eventfd,
the one descriptor the thread waits on between ticks), so a stop never races a
flush. A call's stop drains its sockets at once and flushes them (it does not
wait for the tick).

Every datagram is checked before it is kept (callvault.sidecar.latch: the server's
RTP checks, then the leg's latched source); what fails is counted on the leg
(``Leg.invalid``, ``Leg.foreign``) and dropped, never spooled nor forwarded. What
is kept is counted per payload type (``Leg.pt_packets``); the first packet of a call
in a payload type its leg does not record (no decoder, not comfort noise, not a
declared telephone event) is logged at WARNING, once per call.

One call's failure stays that call's: when flushing a call raises (its spool
closed or deleted, a full disk), the thread closes that call's sockets, hands the
call and the exception to ``on_call_failed`` and carries on with every other
call; it never dies of one call. A socket whose read fails is logged (once per
leg) and read again at the next tick."""

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
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from callvault import _net, _rtp
from callvault.media.batch import MAX_PACKET_BYTES, MAX_PACKETS_PER_BATCH, first_sample_bound
from callvault.rtpdefs import RECORDED_CODECS
from callvault.sidecar.call import RECORDED_PTS, Call, Leg, SidecarError, payload_type_name
from callvault.sidecar.latch import (
    MIN_EVENT_PAYLOAD,
    SOURCE_SIZE,
    Chunk,
    describe_source,
    second_byte_rules,
)

log = logging.getLogger(__name__)

# One tick (read every socket, one batch per leg per call, one spool write per call)
# every FLUSH_MS: docs/server.md, "The sidecar's receive path", has the measurements
# this was chosen by (CPU per packet against acknowledgement latency).
FLUSH_MS = 200
RECV_PACKETS = 256  # datagrams per recvmmsg
RECV_MAX_SIZE = 65535  # the largest UDP payload: nothing real is truncated
RECV_ROUNDS = 64  # recvmmsg calls per socket per tick at most (16,384 datagrams)
RCVBUF = 1 << 20  # per leg socket: ~6 s of G.711 at 20 ms, bursts included
BATCH_BYTES = 4 << 20  # a spooled batch holds at most this many bytes of packets

T = TypeVar("T")
# What MultiRecv.recv gives: (packets, lengths, arrival_us, sources, counts per fd,
# truncated per fd, errno per fd, mine per datagram)
Drained = tuple[
    bytes,
    npt.NDArray[np.int32],
    npt.NDArray[np.int64],
    bytes,
    npt.NDArray[np.int32],
    npt.NDArray[np.int32],
    npt.NDArray[np.int32],
    npt.NDArray[np.bool_],
]
# (leg index, packets, lengths, arrival_us): one batch to spool
Batch = tuple[int, bytes | memoryview, npt.NDArray[np.int32], npt.NDArray[np.int64]]


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


@functools.lru_cache(maxsize=64)
def _unrecorded(event_pts: frozenset[int] = frozenset()) -> npt.NDArray[np.bool_]:
    """Per payload type 0 to 127: True where a leg with these telephone-event types
    does not record it (Leg.recorded_pts)."""
    row = np.ones(128, np.bool_)
    row[[pt for pt in RECORDED_PTS | event_pts if 0 <= pt < 128]] = False
    return row


class Watch:
    """The legs one tick reads, in call order (a call's legs adjacent), and what the
    C call needs of them: their fds, whether each leg's source-latch fast path is on
    (a source latched, no candidate held) with that source and SSRC, and each leg's
    check table (``latch.second_byte_rules`` of its telephone-event types)."""

    def __init__(self, pairs: list[tuple[Call, Leg]]) -> None:
        n = len(pairs)
        self.pairs = pairs
        self.socks = [leg.sock for _, leg in pairs]
        fds = []
        for _, leg in pairs:
            fd = leg.sock.fileno() if leg.sock is not None else -1
            if fd < 0:
                raise ValueError(f"leg {leg.name}: its socket is closed")
            fds.append(fd)
        self._fd_list = fds
        self.fds = np.array(fds, np.int32)
        self.latched = np.zeros(n, np.uint8)
        self.source = bytearray(n * SOURCE_SIZE)
        self.ssrc = np.zeros(n, np.uint32)
        tables: dict[frozenset[int], int] = {}
        rows = [tables.setdefault(leg.event_pts, len(tables)) for _, leg in pairs]
        self.rows = np.array(rows, np.int32)
        self.multi = len(tables) > 1
        order = sorted(tables, key=tables.__getitem__)
        self.rules = (
            np.concatenate([second_byte_rules(pts) for pts in order])
            if order
            else second_byte_rules(frozenset())
        )
        # per leg and payload type: True where the leg does not record it
        self.unrecorded = np.stack([_unrecorded(pts) for pts in order] or [_unrecorded()])[
            self.rows
        ]
        for i, (_, leg) in enumerate(pairs):
            if leg.latch.source is not None:
                self.sync(i)

    def stale(self) -> bool:
        """A leg's socket was replaced or closed since (its descriptor number could
        name another file now): the watch must be rebuilt before it is read."""
        return any(
            sock is None or leg.sock is not sock or sock.fileno() != fd
            for (_, leg), sock, fd in zip(self.pairs, self.socks, self._fd_list, strict=True)
        )

    def sync(self, i: int) -> None:
        """Take leg ``i``'s latch state (after its SourceLatch ran)."""
        latch = self.pairs[i][1].latch
        fast = latch.source is not None and not latch.held
        self.latched[i] = fast
        if fast:
            assert latch.source is not None
            self.source[i * SOURCE_SIZE : (i + 1) * SOURCE_SIZE] = latch.source
            self.ssrc[i] = latch.ssrc


def _split(batch: Batch) -> Iterable[Batch]:
    """``batch`` in pieces the server takes (MAX_PACKETS_PER_BATCH packets and
    BATCH_BYTES bytes at most)."""
    leg, packets, lengths, arrival = batch
    n = len(lengths)
    if n <= MAX_PACKETS_PER_BATCH and len(packets) <= BATCH_BYTES:
        yield batch
        return
    ends = np.cumsum(lengths, dtype=np.int64)
    view = memoryview(packets)
    i = 0
    while i < n:
        base = int(ends[i - 1]) if i else 0
        j = min(int(np.searchsorted(ends, base + BATCH_BYTES, "right")), i + MAX_PACKETS_PER_BATCH)
        j = max(j, i + 1)  # one packet is at most MAX_PACKET_BYTES < BATCH_BYTES
        yield leg, view[base : int(ends[j - 1])], lengths[i:j], arrival[i:j]
        i = j


class Receiver(threading.Thread):
    """A tick every ``flush_ms``: every receiving call's sockets drained, checked and
    latched, one batch per leg appended to each call's spool.

    ``on_first_flush(call)`` runs after a call's first flush (its start is known);
    ``on_call_failed(call, exc)`` when a call's flush raised; ``on_flushed(calls)``,
    when given, once per tick with every call that was flushed in it (instead of
    ``call.wake()`` for each)."""

    def __init__(
        self,
        on_first_flush: Callable[[Call], None],
        on_call_failed: Callable[[Call, BaseException], None],
        *,
        flush_ms: int = FLUSH_MS,
        on_flushed: Callable[[list[Call]], None] | None = None,
    ) -> None:
        super().__init__(name="sidecar-receive", daemon=True)
        if flush_ms <= 0:
            raise ValueError(f"flush_ms {flush_ms}: must be 1 or more")
        self.flush_ms = flush_ms
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._mr = _net.MultiRecv(RECV_PACKETS, RECV_MAX_SIZE)
        self._calls: list[Call] = []
        self._watch: Watch | None = None  # of self._calls; None: to be rebuilt
        self._requests: collections.deque[tuple[Callable[[], Any], Future[Any]]] = (
            collections.deque()
        )
        self._stopping = False
        self._on_first_flush = on_first_flush
        self._on_call_failed = on_call_failed
        self._on_flushed = on_flushed
        self.packets = 0
        self.flushes = 0
        self.ticks = 0
        self.tick_errors = 0
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
        """(receive thread) Start receiving on the call's sockets (none read if one
        cannot be: the error goes to the requester)."""
        for leg in call.legs:
            if leg.index < len(call.start.legs):
                declared = call.start.legs[leg.index].event_payload_types
                if declared:
                    leg.event_pts = frozenset(int(pt) for pt in declared)
        # Every socket must be one to read: refused whole otherwise (nothing watched).
        Watch([(call, leg) for leg in call.legs if leg.sock is not None])
        self._calls.append(call)
        self._watch = None

    def stop_call(self, call: Call, *, keep: bool = True) -> None:
        """(receive thread) Drain and close the call's sockets and flush what they held
        (``keep``; else it is counted and dropped with the call, which is failing). If
        that fails, the call is failed (``on_call_failed``) and the error raised."""
        if call not in self._calls:
            return  # failed earlier: its sockets are closed already
        try:
            self._receive([call], rounds=0, fail=False, keep=keep)
        except Exception as e:
            self._fail(call, e)
            raise
        self._close_sockets(call)
        self._calls.remove(call)
        self._watch = None

    def pause_call(self, call: Call, pause: bool) -> tuple[int, int, int]:
        """(receive thread) PCI pause or resume: what the sockets hold goes first (to
        the spool before a pause; discarded before a resume, still paused), then the
        Pause / Resume record at this instant (the clock of arrival_us) takes the
        next seq. While paused, ``_flush`` discards the call's packets: card-entry
        audio is never spooled. Returns (at_us, seq, packets discarded so far)."""
        if call not in self._calls:
            raise SidecarError(
                grpc.StatusCode.FAILED_PRECONDITION, f"call {call.call_id} is not receiving"
            )
        if call.spool.paused == pause:
            raise SidecarError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"call {call.call_id} is {'paused already' if pause else 'not paused'}",
            )
        self._receive([call], rounds=0, fail=False)
        at_us = _net.now_us()
        first = call.spool.start_us is None
        if first:  # paused before any audio: the call starts with the pause
            call.spool.set_start_us(at_us)
        seq = call.spool.append_control(pause, at_us)
        if first:
            self._on_first_flush(call)
        self._notify([call])
        return at_us, seq, call.paused_packets

    def _close_sockets(self, call: Call) -> None:
        """Stop reading and close the call's sockets; what a candidate source held goes."""
        for leg in call.legs:
            leg.foreign += leg.latch.drop_candidate()
            if leg.sock is None:
                continue
            leg.sock.close()
            leg.sock = None
        self._watch = None

    def _fail(self, call: Call, exc: Exception) -> None:
        """(receive thread) Flushing ``call`` raised: close its sockets, stop serving
        it and tell ``on_call_failed``."""
        log.error("%s: receiving failed, the call stops here: %s", call.call_id, exc)
        self.failed_calls += 1
        self._close_sockets(call)
        if call in self._calls:
            self._calls.remove(call)
        self._watch = None
        try:
            self._on_call_failed(call, exc)
        except Exception:  # the owner's bug must not take the other calls down
            log.exception("%s: on_call_failed raised", call.call_id)

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        period = self.flush_ms / 1000
        next_tick = time.monotonic() + period
        while not self._stopping:
            timeout = max(0.0, next_tick - time.monotonic())
            if self._epoll.poll(timeout):  # the eventfd: requests
                self._serve_requests()
            now = time.monotonic()
            if now >= next_tick:
                self._tick()
                next_tick = max(next_tick + period, now)
        # SIGTERM: what the sockets hold goes to the spools; they are closed.
        calls = list(self._calls)
        if calls:
            try:
                self._receive(calls, rounds=0, fail=True)
            except Exception:
                log.exception("receiving at shutdown failed; the spools keep what they hold")
        for call in calls:
            if call in self._calls:
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

    def _tick(self) -> None:
        self.ticks += 1
        if not self._calls:
            return
        try:
            self._receive(self._calls, rounds=RECV_ROUNDS, fail=True)
        except Exception:  # not one call's: the thread carries on, the next tick retries
            self.tick_errors += 1
            if self.tick_errors % 600 == 1:  # the first, then once a minute at most
                log.exception("receive tick failed (%d times so far)", self.tick_errors)
            self._watch = None

    # -- reading, checking, latching, flushing ------------------------------------

    def _drain(self, watch: Watch, rounds: int) -> Drained:
        """Every datagram waiting on the watch's sockets (``MultiRecv.recv``); the
        one place the receiver reads sockets (benchmarks/bench_sidecar.py's peer
        overrides only this)."""
        return self._mr.recv(watch.fds, watch.latched, watch.source, watch.ssrc, rounds)

    def _receive(self, calls: list[Call], *, rounds: int, fail: bool, keep: bool = True) -> None:
        """Read ``calls``' sockets, check and latch, flush one batch per leg per call
        (``keep``; else only count). ``fail``: a call whose flush raises is failed and
        the others go on; else the exception propagates (one call: stop_call)."""
        main = calls is self._calls
        watch = self._watch if main else None
        if watch is None or watch.stale():
            for call in list(calls):
                if any(leg.sock is not None and leg.sock.fileno() < 0 for leg in call.legs):
                    closed = OSError(
                        errno.EBADF, "a socket of the call was closed under the receiver"
                    )
                    if not fail:
                        raise closed
                    self._fail(call, closed)
            watch = Watch([(c, leg) for c in calls for leg in c.legs if leg.sock is not None])
            if main:
                self._watch = watch
        if not len(watch.fds):
            return
        flushed: list[Call] = []
        failed: dict[Call, Exception] = {}
        for call, batches in self._collect(watch, rounds, failed).items():
            if call in failed or not batches or not keep:
                continue
            try:
                self._flush(call, batches)
            except Exception as e:
                failed[call] = e
                continue
            flushed.append(call)
        for call, exc in failed.items():
            if not fail:
                raise exc
            self._fail(call, exc)
        if not main:
            self._watch = None  # a latch may have changed under the main watch
        if flushed:
            self._notify(flushed)

    def _collect(
        self, watch: Watch, rounds: int, failed: dict[Call, Exception]
    ) -> dict[Call, list[Batch]]:
        """Drain the watch's sockets; per call, the batches of its legs (in leg order).
        A call whose latching raised is put in ``failed`` with the exception."""
        packets, lengths, arrival, sources, counts, truncated, errors, mine = self._drain(
            watch, rounds
        )
        if errors.any() or truncated.any():
            self._note_read_problems(watch, truncated, errors)
        out: dict[Call, list[Batch]] = {}
        n = len(lengths)
        if not n:
            return out
        self.packets += n
        rows = np.repeat(watch.rows, counts) if watch.multi else None
        ok, _, pt = _rtp.check_datagrams(
            packets, lengths, watch.rules, MIN_EVENT_PAYLOAD, MAX_PACKET_BYTES, rows
        )
        good = ok & mine  # valid and from the leg's latched source: the fast path
        legs = np.flatnonzero(counts)
        ends = np.cumsum(counts, dtype=np.int64)
        starts = ends - counts
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        first = starts[legs]
        newest = np.maximum.reduceat(arrival, first).tolist()
        fast_fd = np.zeros(len(counts), np.bool_)
        if good.all():
            fast_fd[legs] = True
            leg_of = np.repeat(np.arange(len(counts)), counts)
            keys = leg_of * 128 + pt
        else:
            bad = np.add.reduceat((~good).astype(np.int32), first)
            fast_fd[legs] = bad == 0
            keep = np.repeat(fast_fd, counts)
            leg_of = np.repeat(np.arange(len(counts)), counts)
            keys = (leg_of * 128 + pt)[keep]
        pt_counts = np.bincount(keys, minlength=len(counts) * 128).reshape(len(counts), 128)
        new_unsupported = (pt_counts > 0) & watch.unrecorded
        warn = bool(new_unsupported.any())
        mv = memoryview(packets)
        for k, i in enumerate(legs.tolist()):
            call, leg = watch.pairs[i]
            s, e = int(starts[i]), int(ends[i])
            call.packets += e - s
            batches = out.setdefault(call, [])
            if fast_fd[i]:
                latch = leg.latch
                if newest[k] > latch.last_us:
                    latch.last_us = newest[k]
                if warn and new_unsupported[i].any():
                    fresh = np.flatnonzero(new_unsupported[i] & (leg.pt_packets == 0))
                    self._warn_codec(call, leg, [int(x) for x in fresh])
                leg.pt_packets += pt_counts[i]
                b0, b1 = int(offsets[s]), int(offsets[e])
                batches.append((leg.index, mv[b0:b1], lengths[s:e], arrival[s:e]))
            elif call not in failed:
                try:
                    chunk = self._latch(
                        call,
                        leg,
                        (bytes(mv[int(offsets[s]) : int(offsets[e])]), lengths[s:e], arrival[s:e]),
                        sources[s * SOURCE_SIZE : e * SOURCE_SIZE],
                    )
                except Exception as exc:  # one call's, never the others'
                    failed[call] = exc
                    continue
                watch.sync(i)
                if chunk is not None:
                    batches.append((leg.index, *chunk))
        return out

    def _note_read_problems(
        self, watch: Watch, truncated: npt.NDArray[np.int32], errors: npt.NDArray[np.int32]
    ) -> None:
        for i in np.flatnonzero(truncated).tolist():
            call, leg = watch.pairs[i]
            call.truncated += int(truncated[i])
            leg.invalid += int(truncated[i])
        for i in np.flatnonzero(errors).tolist():
            call, leg = watch.pairs[i]
            if not leg.recv_errors:
                log.warning(
                    "%s leg %s: receive failed: %s",
                    call.call_id,
                    leg.name,
                    os.strerror(int(errors[i])),
                )
            leg.recv_errors += 1

    def _latch(self, call: Call, leg: Leg, chunk: Chunk, sources: bytes) -> Chunk | None:
        """One leg's datagrams of the tick through its SourceLatch (the reference
        rules): counters, warnings, payload types; returns what is kept."""
        before = (leg.latch.source, leg.latch.ssrc)
        got = leg.latch.filter(*chunk, sources, leg.event_pts)
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
            self._warn_codec(call, leg, leg.count_payload_types(got.chunk[0], got.chunk[1]))
        return got.chunk

    @staticmethod
    def _warn_codec(call: Call, leg: Leg, unsupported: list[int]) -> None:
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

    def _flush(self, call: Call, batches: list[Batch]) -> None:
        """The call's batches (one per leg) appended to its spool in one write; none
        while the call is paused (PCI: discarded, counted in ``paused_packets``)."""
        if call.spool.paused:
            call.paused_packets += sum(len(ln) for _, _, ln, _ in batches)
            return
        first = call.spool.start_us is None
        if first:
            bounds = [first_sample_bound(bytes(p), ln, ar) for _, p, ln, ar in batches]
            known = [b for b in bounds if b is not None]
            call.spool.set_start_us(
                min(known) if known else min(int(ar[0]) for _, _, _, ar in batches)
            )
        call.spool.append_batches([piece for b in batches for piece in _split(b)])
        self.flushes += 1
        if first:
            self._on_first_flush(call)

    def _notify(self, calls: list[Call]) -> None:
        """The flushed calls' forwarders may send: ``on_flushed(calls)`` or each
        ``call.wake()``."""
        if self._on_flushed is not None:
            try:
                self._on_flushed(calls)
            except Exception:
                log.exception("on_flushed raised")
            return
        for call in calls:
            call.wake()

"""Shared pieces of the receive-path tests: RTP packets made by hand, a real
:class:`Receiver` thread over real UDP sockets and real spools, and reading back
what a leg's spool holds."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from callvault_client._pb import callvault_pb2 as pb

from callvault import _net
from callvault.media.packets import PacketRun
from callvault.sidecar.call import Call
from callvault.sidecar.receiver import Receiver, bind_udp
from callvault.sidecar.spool import Spool, spool_name


def rtp(
    seq: int,
    ssrc: int,
    payload: bytes = b"\xff" * 160,
    *,
    pt: int = 0,
    ts: int | None = None,
    marker: int = 0,
    first: int = 0x80,
) -> bytes:
    """An RTP packet (RFC 3550 fixed header, no CSRC) with ``payload``; ``ts`` defaults
    to 160 samples a packet."""
    ts = seq * 160 if ts is None else ts
    return (
        struct.pack("!BBHII", first, (marker << 7) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        + payload
    )


class Rx:
    """A started Receiver with its callbacks recorded."""

    def __init__(self) -> None:
        self.failed: list[tuple[Call, BaseException]] = []
        self.first: list[Call] = []
        self.failed_event = threading.Event()
        self.receiver = Receiver(self.first.append, self._failed)
        self.receiver.start()

    def _failed(self, call: Call, exc: BaseException) -> None:
        self.failed.append((call, exc))
        self.failed_event.set()

    def add(self, call: Call) -> None:
        self.receiver.submit(lambda: self.receiver.add(call)).result(timeout=10)

    def stop_call(self, call: Call) -> None:
        self.receiver.submit(lambda: self.receiver.stop_call(call)).result(timeout=10)


@contextmanager
def receiver() -> Iterator[Rx]:
    rx = Rx()
    try:
        yield rx
    finally:
        if rx.receiver.is_alive():
            rx.receiver.shutdown()


def new_call(root: Path, call_id: str, legs: int = 1) -> Call:
    """A receiving call as the sidecar makes one: a spool and a bound socket per leg."""
    socks = [bind_udp("127.0.0.1", 0) for _ in range(legs)]
    ports = [int(s.getsockname()[1]) for s in socks]
    start = pb.CallStart(call_id=call_id, legs=[pb.LegSpec(name=f"leg{i}") for i in range(legs)])
    spool = Spool.create(
        root, spool_name("", call_id), start.SerializeToString(), ports, _net.now_us()
    )
    call = Call(spool)
    for leg, sock in zip(call.legs, socks, strict=True):
        leg.sock = sock
    return call


def sender(port: int | None = None) -> socket.socket:
    """A UDP socket on 127.0.0.1 (a given local port, or any)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port or 0))
    return s


def spooled(call: Call, leg: int = 0) -> list[bytes]:
    """Every packet the call's spool holds for ``leg``, in order."""
    out: list[bytes] = []
    for b in call.spool.read_from(0):
        if b.leg == leg:
            out.extend(PacketRun(b.packets, b.lengths))
    return out


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)

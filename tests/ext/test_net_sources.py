"""callvault._net.recv_batch_from: each datagram's source address and port, IPv4 (as
its IPv4-mapped IPv6 form) and IPv6, on real loopback sockets."""

from __future__ import annotations

import ipaddress
import select
import socket

import pytest

from callvault import _net


def _recv_all(rx: socket.socket, count: int) -> tuple[list[int], bytes]:
    lengths: list[int] = []
    sources = b""
    while len(lengths) < count:
        assert select.select([rx], [], [], 5.0)[0], "nothing arrived"
        _, lens, arrival, truncated, src = _net.recv_batch_from(rx.fileno())
        assert truncated == 0 and len(arrival) == len(lens)
        assert len(src) == _net.SOURCE_SIZE * len(lens)
        lengths += lens.tolist()
        sources += src
    return lengths, sources


def _source(raw: bytes) -> tuple[str, int]:
    addr = ipaddress.IPv6Address(raw[:16])
    host = str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)
    return host, int.from_bytes(raw[16:18], "big")


def test_ipv4_sources_in_arrival_order_with_empty_datagrams() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    txs = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for tx in txs:
        tx.bind(("127.0.0.1", 0))
    order = [0, 1, 2, 1, 0, 2, 2]
    for i, k in enumerate(order):
        txs[k].sendto(b"x" * i, rx.getsockname())  # the first datagram is empty
    lengths, sources = _recv_all(rx, len(order))
    assert lengths == list(range(len(order)))
    got = [_source(sources[i * 18 : (i + 1) * 18]) for i in range(len(order))]
    assert got == [txs[k].getsockname() for k in order]
    for s in (rx, *txs):
        s.close()


def test_ipv6_source() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        rx.bind(("::1", 0))
    except OSError:
        rx.close()
        pytest.skip("no IPv6 loopback")
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx.bind(("::1", 0))
    tx.sendto(b"abc", rx.getsockname())
    lengths, sources = _recv_all(rx, 1)
    assert lengths == [3]
    assert _source(sources) == ("::1", tx.getsockname()[1])
    rx.close()
    tx.close()

"""callvault._net.MultiRecv: many UDP sockets drained in one call (the sidecar's receive
tick) on real loopback sockets: each socket's datagrams after the previous socket's,
in arrival order, with kernel stamps and sources exactly as recv_batch_from gives
them; the latched-source test; the read bound; errors and truncation per socket."""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest

from callvault import _net

SRC = _net.SOURCE_SIZE


def _rx() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    _net.enable_timestamps(s.fileno())
    return s


@pytest.fixture
def socks() -> Iterator[tuple[list[socket.socket], list[socket.socket]]]:
    """Three receiving sockets and two senders."""
    rx = [_rx() for _ in range(3)]
    tx = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for t in tx:
        t.bind(("127.0.0.1", 0))
    yield rx, tx
    for s in rx + tx:
        s.close()


def _source(sock: socket.socket) -> bytes:
    host, port = sock.getsockname()
    return b"\x00" * 10 + b"\xff\xff" + socket.inet_aton(host) + int(port).to_bytes(2, "big")


def _rtp(seq: int, ssrc: int, size: int = 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes([seq % 256]) * size


def _fds(rx: list[socket.socket]) -> np.ndarray:
    return np.array([s.fileno() for s in rx], np.int32)


def _none(n: int) -> tuple[np.ndarray, bytes, np.ndarray]:
    return np.zeros(n, np.uint8), bytes(n * SRC), np.zeros(n, np.uint32)


def _settle() -> None:
    time.sleep(0.05)  # loopback delivery is immediate; a margin for a loaded machine


def test_every_socket_drained_in_order_with_stamps_and_sources(
    socks: tuple[list[socket.socket], list[socket.socket]],
) -> None:
    rx, tx = socks
    sent: list[list[tuple[bytes, int]]] = [[], [], []]
    before = _net.now_us()
    for i in range(30):
        k, t = i % 3 if i % 7 else 0, i % 2
        d = _rtp(i, 7, size=i)
        tx[t].sendto(d, rx[k].getsockname())
        sent[k].append((d, t))
    _settle()
    mr = _net.MultiRecv()
    packets, lengths, arrival, sources, counts, truncated, errors, mine = mr.recv(
        _fds(rx), *_none(3)
    )
    after = _net.now_us()
    assert counts.tolist() == [len(x) for x in sent]
    assert truncated.tolist() == [0, 0, 0] and errors.tolist() == [0, 0, 0]
    assert packets == b"".join(d for leg in sent for d, _ in leg)
    assert lengths.tolist() == [len(d) for leg in sent for d, _ in leg]
    assert sources == b"".join(_source(tx[t]) for leg in sent for _, t in leg)
    assert lengths.dtype == np.int32 and arrival.dtype == np.int64 and mine.dtype == np.bool_
    assert not mine.any()  # nothing latched
    assert (arrival >= before - 1000).all() and (arrival <= after + 1000).all()
    # each socket's datagrams in arrival order
    ends = np.cumsum(counts)
    for s, e in zip(ends - counts, ends, strict=True):
        assert (np.diff(arrival[s:e]) >= 0).all()
    # drained: the next call finds nothing
    again = mr.recv(_fds(rx), *_none(3))
    assert again[0] == b"" and again[4].tolist() == [0, 0, 0] and len(again[7]) == 0


def test_same_bytes_stamps_and_sources_as_recv_batch_from(
    socks: tuple[list[socket.socket], list[socket.socket]],
) -> None:
    """Arrival instants are the kernel's stamps: a datagram read 0.2 s after it
    arrived keeps its arrival instant."""
    rx, tx = socks
    for i in range(5):
        tx[0].sendto(_rtp(i, 1), rx[0].getsockname())
    t_sent = _net.now_us()
    time.sleep(0.2)
    packets, lengths, arrival, sources, *_ = _net.MultiRecv().recv(_fds(rx[:1]), *_none(1))
    assert len(lengths) == 5 and sources == _source(tx[0]) * 5
    assert (arrival <= t_sent + 1000).all(), "the stamp is when it arrived, not when read"
    assert (_net.now_us() - arrival >= 150_000).all()


def test_mine_is_the_latched_source_and_ssrc(
    socks: tuple[list[socket.socket], list[socket.socket]],
) -> None:
    rx, tx = socks
    dst = rx[0].getsockname()
    tx[0].sendto(_rtp(0, 0xAB), dst)  # the latched source: mine
    tx[1].sendto(_rtp(1, 0xAB), dst)  # same SSRC, another port: not
    tx[0].sendto(_rtp(2, 0xAC), dst)  # latched address, another SSRC: not
    tx[0].sendto(_rtp(3, 0xAB)[:11], dst)  # too short to carry an SSRC: not
    tx[0].sendto(_rtp(4, 0xAB), dst)  # mine
    tx[0].sendto(_rtp(5, 0xAB), rx[1].getsockname())  # fd not latched: not
    _settle()
    latched = np.array([1, 0], np.uint8)
    source = _source(tx[0]) * 2
    ssrc = np.array([0xAB, 0xAB], np.uint32)
    *_, counts, _, _, mine = _net.MultiRecv().recv(_fds(rx[:2]), latched, source, ssrc)
    assert counts.tolist() == [5, 1]
    assert mine.tolist() == [True, False, False, False, True, False]


def test_max_rounds_bounds_one_socket_per_call(
    socks: tuple[list[socket.socket], list[socket.socket]],
) -> None:
    rx, tx = socks
    for i in range(10):
        tx[0].sendto(_rtp(i, 1), rx[0].getsockname())
        tx[0].sendto(_rtp(i, 2), rx[1].getsockname())
    _settle()
    mr = _net.MultiRecv(slots=4)
    first = mr.recv(_fds(rx[:2]), *_none(2), 2)
    assert first[4].tolist() == [8, 8]  # two recvmmsg of 4 each per socket
    rest = mr.recv(_fds(rx[:2]), *_none(2), 0)  # 0: until empty
    assert rest[4].tolist() == [2, 2]
    assert first[0][: 8 * 172] + rest[0][: 2 * 172] == b"".join(_rtp(i, 1) for i in range(10))


def test_buffers_grow_for_a_large_tick(
    socks: tuple[list[socket.socket], list[socket.socket]],
) -> None:
    """More datagrams and bytes in one call than the first capacity (1024 packets)."""
    rx, tx = socks
    sent = [_rtp(i, 3, size=1000) for i in range(1500)]
    for i, d in enumerate(sent):
        tx[0].sendto(d, rx[i % 3].getsockname())
    _settle()
    packets, lengths, _, _, counts, _, _, _ = _net.MultiRecv().recv(_fds(rx), *_none(3))
    assert counts.sum() == len(sent)
    want = [d for k in range(3) for d in sent[k::3]]
    assert packets == b"".join(want) and lengths.tolist() == [len(d) for d in want]


def test_a_failing_socket_is_reported_and_the_others_read(
    socks: tuple[list[socket.socket], list[socket.socket]],
) -> None:
    rx, tx = socks
    tx[0].sendto(_rtp(1, 1), rx[2].getsockname())
    _settle()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = dead.fileno()
    dead.close()  # a descriptor number nothing holds now: EBADF
    fds = np.array([rx[0].fileno(), fd, rx[2].fileno()], np.int32)
    *_, counts, truncated, errors, _ = _net.MultiRecv().recv(fds, *_none(3))
    assert counts.tolist() == [0, 0, 1]
    assert errors.tolist() == [0, errno.EBADF, 0] and truncated.tolist() == [0, 0, 0]


def test_an_oversized_datagram_is_counted_and_dropped(
    socks: tuple[list[socket.socket], list[socket.socket]],
) -> None:
    rx, tx = socks
    dst = rx[0].getsockname()
    tx[0].sendto(_rtp(0, 1, size=50), dst)
    tx[0].sendto(_rtp(1, 1, size=200), dst)  # longer than max_size
    tx[0].sendto(_rtp(2, 1, size=50), dst)
    _settle()
    packets, lengths, arrival, sources, counts, truncated, errors, mine = _net.MultiRecv(
        max_size=100
    ).recv(_fds(rx[:1]), *_none(1))
    assert truncated.tolist() == [1] and counts.tolist() == [2]
    assert packets == _rtp(0, 1, size=50) + _rtp(2, 1, size=50)
    assert len(arrival) == len(mine) == 2 and len(sources) == 2 * SRC


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        _net.MultiRecv(slots=0)
    with pytest.raises(ValueError):
        _net.MultiRecv(slots=2000)
    with pytest.raises(ValueError):
        _net.MultiRecv(max_size=70000)
    mr = _net.MultiRecv()
    fds = np.array([0, 1], np.int32)
    with pytest.raises(ValueError):
        mr.recv(fds, np.zeros(1, np.uint8), bytes(2 * SRC), np.zeros(2, np.uint32))
    with pytest.raises(ValueError):
        mr.recv(fds, np.zeros(2, np.uint8), bytes(SRC), np.zeros(2, np.uint32))
    with pytest.raises(ValueError):
        mr.recv(fds, np.zeros(2, np.uint8), bytes(2 * SRC), np.zeros(3, np.uint32))
    empty = mr.recv(np.zeros(0, np.int32), np.zeros(0, np.uint8), b"", np.zeros(0, np.uint32))
    assert empty[0] == b"" and len(empty[4]) == 0

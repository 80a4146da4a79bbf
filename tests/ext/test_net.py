"""callvault._net: batch UDP receive (recvmmsg) and send (sendmmsg) on real loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from callvault import _net


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A bound receiver and a sender connected to it."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield rx, tx
    rx.close()
    tx.close()


def _wait_readable(sock: socket.socket) -> None:
    import select

    assert select.select([sock], [], [], 5.0)[0], "nothing arrived"


def test_empty_socket_gives_empty_batch(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, _ = pair
    packets, lengths, arrival, truncated = _net.recv_batch(rx.fileno())
    assert packets == b"" and len(lengths) == 0 and len(arrival) == 0 and truncated == 0
    assert lengths.dtype == np.int32 and arrival.dtype == np.int64


def test_batch_keeps_order_content_and_lengths(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    sent = [bytes([i % 256]) * (12 + i) for i in range(100)]
    for d in sent:
        tx.send(d)
    _wait_readable(rx)
    got = b""
    lens: list[int] = []
    while len(lens) < len(sent):
        packets, lengths, _, truncated = _net.recv_batch(rx.fileno(), max_packets=64)
        assert truncated == 0
        got += packets
        lens += lengths.tolist()
    assert lens == [len(d) for d in sent]
    assert got == b"".join(sent)


def test_max_packets_bounds_one_call(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    for i in range(10):
        tx.send(bytes([i]) * 20)
    _wait_readable(rx)
    time.sleep(0.05)
    _, first, _, _ = _net.recv_batch(rx.fileno(), max_packets=4)
    _, rest, _, _ = _net.recv_batch(rx.fileno(), max_packets=256)
    assert len(first) == 4 and len(rest) == 6


def test_kernel_timestamps_are_arrival_instants(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    _net.enable_timestamps(rx.fileno())
    # Linux switches receive timestamping on for the whole stack asynchronously the
    # first time a socket asks for it (net_enable_timestamp defers it to a work queue);
    # a datagram that arrives before then is stamped when it is read. A warm-up
    # datagram (read and dropped) lets that happen: the sidecar keeps a socket with
    # timestamps on for its whole life for the same reason.
    tx.send(b"w")
    time.sleep(0.1)
    _net.recv_batch(rx.fileno())
    before = _net.now_us()
    tx.send(b"a" * 40)
    time.sleep(0.2)
    tx.send(b"b" * 40)
    time.sleep(0.05)
    after_send = _net.now_us()
    time.sleep(0.2)  # the batch is read well after both arrived
    _, lengths, arrival, _ = _net.recv_batch(rx.fileno())
    assert len(lengths) == 2
    # the kernel's stamps, not the read time: both before the read, 200 ms apart
    assert before <= arrival[0] < arrival[1] <= after_send
    assert arrival[1] - arrival[0] >= 150_000


def test_without_timestamps_arrival_is_the_read_time(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    tx.send(b"a" * 40)
    time.sleep(0.1)
    sent_by = _net.now_us()
    _, lengths, arrival, _ = _net.recv_batch(rx.fileno())
    assert len(lengths) == 1 and arrival[0] >= sent_by


def test_oversized_datagram_is_counted_and_dropped(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    tx.send(b"a" * 100)
    tx.send(b"B" * 3000)
    tx.send(b"c" * 200)
    _wait_readable(rx)
    time.sleep(0.05)
    packets, lengths, arrival, truncated = _net.recv_batch(rx.fileno(), max_size=2048)
    assert truncated == 1
    assert lengths.tolist() == [100, 200] and len(arrival) == 2
    assert packets == b"a" * 100 + b"c" * 200


def test_bad_arguments_raise(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, _ = pair
    with pytest.raises(ValueError, match="max_packets"):
        _net.recv_batch(rx.fileno(), max_packets=0)
    with pytest.raises(ValueError, match="max_size"):
        _net.recv_batch(rx.fileno(), max_size=70000)
    with pytest.raises(OSError):
        _net.recv_batch(10_000_000)
    with pytest.raises(ValueError, match="sum"):
        _net.send_batch(rx.fileno(), b"abc", np.array([2], np.int32))


def test_send_batch_round_trip(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    data = [bytes([i]) * (172 + i % 7) for i in range(200)]
    lengths = np.array([len(d) for d in data], np.int32)
    assert _net.send_batch(tx.fileno(), b"".join(data), lengths) == 200
    _wait_readable(rx)
    got = b""
    n = 0
    deadline = time.monotonic() + 5
    while n < 200 and time.monotonic() < deadline:
        packets, lens, _, _ = _net.recv_batch(rx.fileno(), max_packets=1024)
        got += packets
        n += len(lens)
    assert got == b"".join(data)

"""The receiver's tick (callvault.sidecar.receiver) on real UDP sockets and real spools,
ticked by hand (the thread not started, so each tick is exactly where the test puts
it): one batch per leg per call per tick, in leg order; the C fast path keeps exactly
what the reference SourceLatch keeps and counts the same; legs with different
telephone-event types checked in one call; the wake hook; batches split to the
server's bounds; a failing call's datagrams dropped at its stop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from callvault_client._pb import callvault_pb2 as pb

from callvault import _net
from callvault.sidecar import receiver as receiver_mod
from callvault.sidecar.call import Call
from callvault.sidecar.latch import DEFAULT_EVENT_PT, SourceLatch
from callvault.sidecar.receiver import Receiver, bind_udp
from callvault.sidecar.spool import Spool, spool_name
from tests.sidecar.rxkit import new_call, rtp, sender, spooled

pytestmark = pytest.mark.timeout(120)


def _rx(**kw: object) -> tuple[Receiver, list[list[Call]], list[Call]]:
    flushed: list[list[Call]] = []
    first: list[Call] = []

    def failed(call: Call, exc: BaseException) -> None:
        raise AssertionError(f"{call.call_id} failed: {exc!r}")

    rx = Receiver(first.append, failed, on_flushed=flushed.append, **kw)  # type: ignore[arg-type]
    return rx, flushed, first


def _settle() -> None:
    time.sleep(0.05)  # loopback delivers in the send; a margin for a loaded machine


def _source(sock: object) -> bytes:
    import socket

    assert isinstance(sock, socket.socket)
    host, port = sock.getsockname()
    return b"\x00" * 10 + b"\xff\xff" + socket.inet_aton(host) + int(port).to_bytes(2, "big")


def test_one_batch_per_leg_per_call_per_tick_and_one_wake(tmp_path: Path) -> None:
    a, b = new_call(tmp_path, "A", legs=2), new_call(tmp_path, "B", legs=2)
    rx, flushed, first = _rx()
    rx.add(a)
    rx.add(b)
    tx = sender()
    want: dict[tuple[str, int], list[bytes]] = {}
    for seq in range(12):
        for call in (a, b):
            for leg in call.legs:
                p = rtp(seq, 100 + leg.index + (0 if call is a else 10))
                tx.sendto(p, ("127.0.0.1", leg.port))
                want.setdefault((call.call_id, leg.index), []).append(p)
    _settle()
    rx._tick()
    assert flushed == [[a, b]] and first == [a, b]
    for call in (a, b):
        assert [(x.seq, x.leg) for x in call.spool.read_from(0)] == [(0, 0), (1, 1)]
        for leg in call.legs:
            assert spooled(call, leg.index) == want[(call.call_id, leg.index)]
        assert call.spool.start_us is not None and call.packets == 24
    # the next tick: only the call that received something, again one batch per leg
    tx.sendto(rtp(12, 110), ("127.0.0.1", b.legs[0].port))
    _settle()
    rx._tick()
    rx._tick()  # nothing new: no batch, no wake
    assert flushed == [[a, b], [b]]
    assert a.spool.batches == 2 and [(x.seq, x.leg) for x in b.spool.read_from(2)] == [(2, 0)]
    assert rx.packets == 49 and rx.ticks == 3
    for call in (a, b):
        rx.stop_call(call)
    tx.close()


def test_without_a_hook_each_flushed_call_is_woken(tmp_path: Path) -> None:
    call = new_call(tmp_path, "W")
    woken: list[str] = []
    call.wake = lambda: woken.append("W")  # type: ignore[method-assign]
    rx = Receiver(lambda c: None, lambda c, e: None)
    rx.add(call)
    tx = sender()
    tx.sendto(rtp(0, 5), ("127.0.0.1", call.legs[0].port))
    _settle()
    rx._tick()
    assert woken == ["W"] and len(spooled(call)) == 1
    rx.stop_call(call)
    tx.close()


def test_the_fast_path_keeps_and_counts_exactly_what_the_source_latch_does(
    tmp_path: Path,
) -> None:
    """A leg fed a random mix (its source, a competing sender, invalid datagrams, a
    new SSRC from its own address for good, short runs of another SSRC from its own
    address that must not latch), ticked at random points: what is spooled and the
    counters are what one SourceLatch over the whole sequence gives."""
    rng = np.random.default_rng(5)
    call = new_call(tmp_path, "D")
    rx, _, _ = _rx()
    rx.add(call)
    dst = ("127.0.0.1", call.legs[0].port)
    mine, other = sender(), sender()
    seq_of: dict[int, int] = {}
    sent: list[tuple[bytes, bytes]] = []  # (datagram, source) in order
    ssrc = 0x100
    flap = 0  # packets left of a short run of another SSRC from the leg's address
    for _ in range(1500):
        r = rng.random()
        if r < 0.004:
            ssrc += 1  # the PBX restarts its stream: a new SSRC from the same address
        elif r < 0.02 and not flap:
            flap = int(rng.integers(1, 5))  # fewer than RELATCH_PACKETS: never latched
        if flap:
            flap -= 1
            tx, s = mine, ssrc + 0x1000
        else:
            tx, s = (other, 0x999) if r > 0.93 else (mine, ssrc)
        seq_of[s] = seq_of.get(s, 0) + 1
        p = rtp(seq_of[s], s)
        if rng.random() < 0.05:
            p = p[: int(rng.integers(0, 13))]  # no payload: invalid
        tx.sendto(p, dst)
        sent.append((p, _source(tx)))
        if rng.random() < 0.05:
            _settle()
            rx._tick()
    _settle()
    rx.stop_call(call)
    leg = call.legs[0]

    ref = SourceLatch()
    data = b"".join(p for p, _ in sent)
    lengths = np.array([len(p) for p, _ in sent], np.int32)
    got = ref.filter(
        data,
        lengths,
        _net.now_us() + np.arange(len(sent), dtype=np.int64),
        b"".join(s for _, s in sent),
        frozenset({DEFAULT_EVENT_PT}),
    )
    assert got.chunk is not None
    kept, klen, _ = got.chunk
    offs = np.concatenate([[0], np.cumsum(klen)])
    ref_kept = [kept[offs[i] : offs[i + 1]] for i in range(len(klen))]
    assert spooled(call) == ref_kept
    assert leg.invalid == got.invalid > 0
    assert leg.foreign == got.foreign + ref.drop_candidate() > 0
    assert leg.relatches == got.relatches > 0
    assert call.packets == len(sent)
    mine.close()
    other.close()


def test_a_tick_of_the_latched_source_alone_still_ends_a_held_candidate(
    tmp_path: Path,
) -> None:
    """A candidate held across ticks (a new SSRC from the leg's address, fewer than
    RELATCH_PACKETS packets) is dropped by the next packet of the latched source, even
    in a tick holding nothing else: its packets never add up to a re-latch."""
    call = new_call(tmp_path, "C")
    rx, _, _ = _rx()
    rx.add(call)
    tx = sender()
    dst = ("127.0.0.1", call.legs[0].port)
    leg = call.legs[0]

    def tick(ssrc: int, seqs: range) -> None:
        for seq in seqs:
            tx.sendto(rtp(seq, ssrc), dst)
        _settle()
        rx._tick()

    tick(1, range(0, 3))
    tick(2, range(100, 103))  # held: a candidate
    assert leg.foreign == 0 and len(leg.latch.held) == 3
    tick(1, range(3, 5))  # the latched source alone in this tick
    assert leg.foreign == 3 and not leg.latch.held
    tick(2, range(103, 106))  # 3 again, not 6: no re-latch
    assert leg.relatches == 0 and len(leg.latch.held) == 3
    tick(1, range(5, 6))
    rx.stop_call(call)
    assert spooled(call) == [rtp(seq, 1) for seq in range(6)]
    assert leg.foreign == 6 and leg.relatches == 0 and leg.invalid == 0
    tx.close()


def test_legs_with_different_event_types_are_checked_in_one_tick(tmp_path: Path) -> None:
    """A 2-byte payload in PT 96 is a short RFC 4733 event on a leg that declares 96
    (refused) and a packet of an unsupported codec on a leg that does not (kept)."""
    start = pb.CallStart(call_id="E", legs=[pb.LegSpec(name="a", event_payload_types=[96])])
    socks = [bind_udp("127.0.0.1", 0)]
    spool = Spool.create(
        tmp_path,
        spool_name("", "E"),
        start.SerializeToString(),
        [socks[0].getsockname()[1]],
        _net.now_us(),
    )
    declared = Call(spool)
    declared.legs[0].sock = socks[0]
    plain = new_call(tmp_path, "P")
    rx, _, _ = _rx()
    rx.add(declared)
    rx.add(plain)
    assert rx._watch is None
    tx = sender()
    for call in (declared, plain):
        dst = ("127.0.0.1", call.legs[0].port)
        tx.sendto(rtp(0, 1), dst)
        tx.sendto(rtp(1, 1, b"\x05\x0a", pt=96), dst)
        tx.sendto(rtp(2, 1), dst)
    _settle()
    rx._tick()
    assert rx._watch is not None and rx._watch.multi
    assert declared.legs[0].invalid == 1 and spooled(declared) == [rtp(0, 1), rtp(2, 1)]
    assert plain.legs[0].invalid == 0 and len(spooled(plain)) == 3
    assert plain.legs[0].unsupported() == {96: 1} and not declared.legs[0].unsupported()
    # the next tick, both legs latched: the C fast path, the same rules per leg
    for call in (declared, plain):
        tx.sendto(rtp(3, 1, b"\x05\x0a", pt=96), ("127.0.0.1", call.legs[0].port))
    _settle()
    rx._tick()
    assert declared.legs[0].invalid == 2 and plain.legs[0].unsupported() == {96: 2}
    assert len(spooled(declared)) == 2 and len(spooled(plain)) == 4
    for call in (declared, plain):
        rx.stop_call(call)
    tx.close()


def test_a_large_tick_is_split_into_batches_the_server_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receiver_mod, "MAX_PACKETS_PER_BATCH", 7)
    monkeypatch.setattr(receiver_mod, "BATCH_BYTES", 1000)
    call = new_call(tmp_path, "S")
    rx, _, _ = _rx()
    rx.add(call)
    tx = sender()
    sent = [rtp(i, 3, b"\x01" * int(40 + (i * 37) % 300)) for i in range(60)]
    for p in sent:
        tx.sendto(p, ("127.0.0.1", call.legs[0].port))
    _settle()
    rx._tick()
    batches = list(call.spool.read_from(0))
    assert len(batches) > 60 // 7
    assert all(len(b.lengths) <= 7 and len(b.packets) <= 1000 for b in batches)
    assert spooled(call) == sent
    rx.stop_call(call)
    tx.close()


def test_a_failing_calls_stop_drops_what_its_sockets_hold(tmp_path: Path) -> None:
    call = new_call(tmp_path, "F")
    rx, flushed, _ = _rx()
    rx.add(call)
    tx = sender()
    for seq in range(4):
        tx.sendto(rtp(seq, 8), ("127.0.0.1", call.legs[0].port))
    _settle()
    rx.stop_call(call, keep=False)
    assert call.spool.batches == 0 and call.packets == 4 and flushed == []
    assert call.legs[0].sock is None
    tx.close()


def test_a_socket_closed_under_the_receiver_fails_its_call_alone(tmp_path: Path) -> None:
    """The watch's descriptor numbers are checked every tick: a socket closed
    elsewhere (its number free for another file) is never read; its call fails with
    EBADF and the others go on."""
    import errno

    a, b = new_call(tmp_path, "A"), new_call(tmp_path, "B")
    failed: list[tuple[Call, BaseException]] = []
    rx = Receiver(lambda c: None, lambda c, e: failed.append((c, e)))
    rx.add(a)
    rx.add(b)
    tx = sender()
    tx.sendto(rtp(0, 1), ("127.0.0.1", a.legs[0].port))
    tx.sendto(rtp(0, 2), ("127.0.0.1", b.legs[0].port))
    _settle()
    rx._tick()
    assert a.legs[0].sock is not None
    a.legs[0].sock.close()
    reuse = bind_udp("127.0.0.1", 0)  # may take the closed descriptor's number
    tx.sendto(rtp(9, 9), reuse.getsockname())
    tx.sendto(rtp(1, 2), ("127.0.0.1", b.legs[0].port))
    _settle()
    rx._tick()
    assert [c for c, _ in failed] == [a]
    err = failed[0][1]
    assert isinstance(err, OSError) and err.errno == errno.EBADF
    assert spooled(a) == [rtp(0, 1)] and spooled(b) == [rtp(0, 2), rtp(1, 2)]
    assert len(_net.recv_batch(reuse.fileno())[1]) == 1  # nobody else read it
    rx.stop_call(b)
    reuse.close()
    tx.close()


def test_a_call_whose_latching_raises_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = new_call(tmp_path, "A"), new_call(tmp_path, "B")
    failed: list[tuple[Call, BaseException]] = []
    flushed: list[list[Call]] = []
    rx = Receiver(lambda c: None, lambda c, e: failed.append((c, e)), on_flushed=flushed.append)
    rx.add(a)
    rx.add(b)

    def broken(*args: object) -> None:
        raise RuntimeError("latch bug")

    monkeypatch.setattr(a.legs[0].latch, "filter", broken)
    tx = sender()
    tx.sendto(rtp(0, 1), ("127.0.0.1", a.legs[0].port))
    tx.sendto(rtp(0, 2), ("127.0.0.1", b.legs[0].port))
    _settle()
    rx._tick()
    assert [(c, str(e)) for c, e in failed] == [(a, "latch bug")]
    assert a.legs[0].sock is None and spooled(a) == []
    assert flushed == [[b]] and spooled(b) == [rtp(0, 2)]
    rx.stop_call(b)
    tx.close()

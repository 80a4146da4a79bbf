"""callvault.sidecar.receiver against real UDP sockets and real spools: one call's
failure stays that call's (issue 9: a sealed call id restarted on a fresh sidecar
killed the receive thread with EBADF), every datagram the server would refuse is
counted and never spooled, and a leg keeps to its latched source."""

from __future__ import annotations

import errno
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from callvault import _rtp
from callvault.media.batch import LegBatch
from callvault.sidecar.latch import RELATCH_PACKETS, RELATCH_SILENCE_US
from callvault.sidecar.receiver import bind_udp
from tests.sidecar.rxkit import new_call, receiver, rtp, sender, spooled, wait_for

pytestmark = pytest.mark.timeout(120)


def test_a_failing_call_stops_alone_and_the_receiver_carries_on(tmp_path: Path) -> None:
    a, b = new_call(tmp_path, "A"), new_call(tmp_path, "B")
    tx = sender()
    with receiver() as rx:
        rx.add(a)
        rx.add(b)
        for seq in range(5):
            tx.sendto(rtp(seq, 1), ("127.0.0.1", a.legs[0].port))
            tx.sendto(rtp(seq, 2), ("127.0.0.1", b.legs[0].port))
        wait_for(lambda: len(spooled(a)) == 5 and len(spooled(b)) == 5, "first packets")
        a_port = a.legs[0].port
        # The case: the call's spool is closed under the receiver (a sealed id
        # restarted on a fresh sidecar): the next write raises EBADF.
        a.spool.close()
        for seq in range(5, 10):
            tx.sendto(rtp(seq, 1), ("127.0.0.1", a_port))
            tx.sendto(rtp(seq, 2), ("127.0.0.1", b.legs[0].port))
        assert rx.failed_event.wait(20), "on_call_failed was not called"
        assert len(rx.failed) == 1
        failed, exc = rx.failed[0]
        assert failed is a
        assert isinstance(exc, OSError) and exc.errno == errno.EBADF
        assert all(leg.sock is None for leg in a.legs)
        assert rx.receiver.is_alive()
        wait_for(lambda: len(spooled(b)) == 10, "B's packets after A failed")
        # A's port is closed (it can be bound again) and the receiver takes new calls.
        bind_udp("127.0.0.1", a_port).close()
        c = new_call(tmp_path, "C")
        rx.add(c)
        for seq in range(3):
            tx.sendto(rtp(seq, 3), ("127.0.0.1", c.legs[0].port))
        wait_for(lambda: len(spooled(c)) == 3, "a new call's packets")
        rx.stop_call(c)
        rx.stop_call(a)  # already failed: nothing to do, no error
        assert len(rx.failed) == 1
    tx.close()


def _malformed() -> list[bytes]:
    """Datagrams the server refuses (a batch holding one) or counts as malformed."""
    good = rtp(0, 7)
    return [
        b"",  # the empty datagram: the server refused the whole batch
        b"\x80\x00\x00",  # shorter than the fixed header
        rtp(1, 7)[:12],  # header only: empty payload
        rtp(1, 7, first=0x40),  # version 1
        rtp(1, 7, first=0x8F, payload=b"\xff" * 20),  # 15 CSRCs run past the end
        rtp(1, 7, first=0x90, payload=b"\x00\x00"),  # extension header cut short
        rtp(1, 7, first=0x90, payload=b"\xbe\xde\x00\x30" + b"\xff" * 8),  # ext past end
        rtp(1, 7, first=0xA0, payload=b"\xff" * 10 + b"\x00"),  # padding count 0
        rtp(1, 7, first=0xA0, payload=b"\xff" * 10 + b"\xf0"),  # padding past the payload
        rtp(1, 7, first=0xA0, payload=b"\x00\x00\x03"),  # padding leaves no payload
        good[:1] + bytes([200]) + good[2:],  # RTCP sender report (RFC 5761 type 200)
        rtp(1, 7, pt=101, payload=b"\x05\x0a"),  # RFC 4733 event shorter than 4 bytes
    ]


def test_datagrams_the_server_would_refuse_are_counted_and_never_spooled(
    tmp_path: Path,
) -> None:
    call = new_call(tmp_path, "V")
    bad = _malformed()
    good = [rtp(seq, 7) for seq in range(len(bad) + 5)]
    tx = sender()
    dst = ("127.0.0.1", call.legs[0].port)
    with receiver() as rx:
        rx.add(call)
        tx.sendto(good[0], dst)  # the latched source is the one sending the bad ones too
        for g, x in zip(good[1:], bad, strict=False):
            tx.sendto(x, dst)
            tx.sendto(g, dst)
        for g in good[len(bad) + 1 :]:
            tx.sendto(g, dst)
        wait_for(lambda: len(spooled(call)) == len(good), "the valid packets")
        rx.stop_call(call)
    tx.close()
    leg = call.legs[0]
    assert spooled(call) == good
    assert leg.invalid == len(bad)
    assert leg.foreign == 0 and leg.relatches == 0
    assert call.packets == len(good) + len(bad)
    # What is spooled passes the server's batch check and its RTP parse, all of it.
    for batch in call.spool.read_from(0):
        LegBatch.checked(
            batch.seq,
            batch.leg,
            batch.packets,
            batch.lengths.tolist(),
            batch.arrival_us.tolist(),
            1,
        )
        run = batch.run
        assert _rtp.parse(run.data, run.offsets, run.lengths).valid.all()


def test_a_second_sender_is_dropped_and_counted(tmp_path: Path) -> None:
    call = new_call(tmp_path, "L")
    victim, attacker = sender(), sender()
    dst = ("127.0.0.1", call.legs[0].port)
    mine = [rtp(seq, 0x1111) for seq in range(60)]
    with receiver() as rx:
        rx.add(call)
        for seq, p in enumerate(mine):
            victim.sendto(p, dst)
            attacker.sendto(rtp(seq, 0x2222, b"\x00" * 160), dst)
            time.sleep(0.002)
        wait_for(lambda: len(spooled(call)) == len(mine), "the victim's packets")
        wait_for(lambda: call.packets == 2 * len(mine), "every datagram read")
        rx.stop_call(call)
    leg = call.legs[0]
    assert spooled(call) == mine
    assert leg.foreign == len(mine)
    assert leg.relatches == 0 and leg.invalid == 0
    victim.close()
    attacker.close()


def test_failover_to_a_new_source_after_silence_loses_nothing(tmp_path: Path) -> None:
    call = new_call(tmp_path, "F")
    old, new = sender(), sender()
    dst = ("127.0.0.1", call.legs[0].port)
    before = [rtp(seq, 0xAAAA) for seq in range(10)]
    after = [rtp(seq, 0xBBBB) for seq in range(100, 110)]
    with receiver() as rx:
        rx.add(call)
        for p in before:
            old.sendto(p, dst)
        wait_for(lambda: len(spooled(call)) == len(before), "the first source's packets")
        # The latched source goes silent for longer than the re-latch silence.
        time.sleep(RELATCH_SILENCE_US / 1e6 + 0.3)
        for p in after:
            new.sendto(p, dst)
            time.sleep(0.005)
        wait_for(lambda: len(spooled(call)) == len(before) + len(after), "the new source")
        # The old source is now foreign (held as a candidate, dropped at the stop).
        old.sendto(rtp(10, 0xAAAA), dst)
        wait_for(lambda: call.packets == len(before) + len(after) + 1, "every datagram read")
        rx.stop_call(call)
    leg = call.legs[0]
    assert spooled(call) == before + after
    assert leg.relatches == 1 and leg.invalid == 0 and leg.foreign == 1
    old.close()
    new.close()


def test_a_new_ssrc_from_the_same_address_is_latched_without_silence(tmp_path: Path) -> None:
    call = new_call(tmp_path, "S")
    tx = sender()
    dst = ("127.0.0.1", call.legs[0].port)
    first = [rtp(seq, 0x10) for seq in range(8)]
    restarted = [rtp(seq, 0x20, ts=seq * 160 + 12345) for seq in range(500, 500 + 8)]
    with receiver() as rx:
        rx.add(call)
        for p in first + restarted:
            tx.sendto(p, dst)
        wait_for(lambda: len(spooled(call)) == 16, "both streams")
        rx.stop_call(call)
    assert spooled(call) == first + restarted
    assert call.legs[0].relatches == 1 and call.legs[0].foreign == 0
    assert len(restarted) >= RELATCH_PACKETS
    tx.close()


def test_a_candidate_still_held_at_stop_is_counted_foreign(tmp_path: Path) -> None:
    call = new_call(tmp_path, "H")
    a, b = sender(), sender()
    dst = ("127.0.0.1", call.legs[0].port)
    with receiver() as rx:
        rx.add(call)
        a.sendto(rtp(0, 1), dst)
        wait_for(lambda: len(spooled(call)) == 1, "the latched packet")
        for seq in range(RELATCH_PACKETS - 1):  # not enough to be latched
            b.sendto(rtp(seq, 2), dst)
        wait_for(lambda: call.packets == RELATCH_PACKETS, "every datagram read")
        rx.stop_call(call)
    assert spooled(call) == [rtp(0, 1)]
    assert call.legs[0].foreign == RELATCH_PACKETS - 1
    a.close()
    b.close()


def test_rtp_parse_agrees_on_the_malformed_set() -> None:
    """The sidecar's check reuses the server's parse: each malformed datagram but the
    empty one, the RTCP one and the short event is malformed to the server too."""
    bad = [x for x in _malformed() if x and x[1] != 200 and (x[1] & 0x7F) != 101]
    lens = np.array([len(x) for x in bad], np.int32)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    assert not _rtp.parse(b"".join(bad), offs, lens).valid.any()
    assert struct.calcsize("!BBHII") == 12


def test_a_call_that_cannot_be_watched_is_refused_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    bad, good = new_call(tmp_path, "bad", legs=2), new_call(tmp_path, "good")
    assert bad.legs[1].sock is not None
    bad.legs[1].sock.close()  # fileno -1: epoll refuses it
    tx = sender()
    with receiver() as rx:
        with pytest.raises((ValueError, OSError)):
            rx.add(bad)
        assert rx.receiver.is_alive()
        rx.add(good)
        tx.sendto(rtp(0, 9), ("127.0.0.1", good.legs[0].port))
        tx.sendto(rtp(0, 8), ("127.0.0.1", bad.legs[0].port))  # not watched
        wait_for(lambda: len(spooled(good)) == 1, "the good call's packet")
        rx.stop_call(bad)  # not receiving: nothing to do
    assert spooled(bad) == [] and rx.failed == []
    tx.close()

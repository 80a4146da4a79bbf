"""The RecordCalls stream's state machine (server/ingest.py: MuxStream) without gRPC, as
test_ingest.py does for Record: a real Vault, real pipelines and libopus, messages of
items in the engine's terms. Many calls on one stream: each call's items in order,
one call's error fails that call only, take-over by a new stream, idempotent resend,
and recordings identical to one Record stream's."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from callvault.errors import InputError
from callvault.server.ingest import (
    Batch,
    CallExpired,
    CallFailed,
    CallSpec,
    End,
    Leave,
    Limits,
    MuxEvent,
    MuxItem,
    MuxStream,
    OutOfOrder,
    Progress,
    Request,
    Sealed,
    Started,
    StreamTakenOver,
    Unknown,
)
from tests.server import test_ingest
from tests.server.test_ingest import Feed, Packets, server, stored

# test_ingest's fixtures: the capture's batches and their single-stream recording
feed = test_ingest.feed
uninterrupted = test_ingest.uninterrupted

pytestmark = pytest.mark.timeout(300)


def items(slot: int, reqs: Sequence[Request]) -> list[MuxItem]:
    return [MuxItem(slot, r) for r in reqs]


def interleave(*streams: list[MuxItem], per: int = 3) -> Iterator[list[MuxItem]]:
    """Messages holding ``per`` items of each call in turn (every call in each message)."""
    pos = [0] * len(streams)
    while any(p < len(s) for p, s in zip(pos, streams, strict=True)):
        msg: list[MuxItem] = []
        for i, s in enumerate(streams):
            msg.extend(s[pos[i] : pos[i] + per])
            pos[i] += per
        yield msg


def by_slot(events: list[MuxEvent]) -> dict[int, list[object]]:
    out: dict[int, list[object]] = {}
    for slot, r in events:
        out.setdefault(slot, []).append(r)
    return out


def run_messages(stream: MuxStream, messages: Iterator[list[MuxItem]]) -> list[MuxEvent]:
    """The stream run on a fed iterator until the client half-closes."""
    q: queue.Queue[list[MuxItem] | None] = queue.Queue()
    for m in messages:
        q.put(m)
    q.put(None)

    def fed() -> Iterator[list[MuxItem]]:
        while (m := q.get()) is not None:
            yield m

    out: list[MuxEvent] = []
    for events in stream.run(fed(), lambda m: m):
        out.extend(events)
    return out


def test_calls_share_a_stream_and_record_as_one_record_stream_would(
    feed: Feed, tmp_path: Path, uninterrupted: Packets
) -> None:
    """Three calls interleaved in every message (one seals, two more as well); each
    call gets one Ack per message at most, acks never go back, every call's records
    equal the single-stream recording of the same batches."""
    with server(tmp_path / "vault") as (vault, ingestor):
        calls = [items(s, feed.requests(f"m{s}")) for s in (1, 2, 3)]
        stream = MuxStream(ingestor)
        for msg in interleave(*calls, per=5):
            events = stream.handle(msg)
            acks = [slot for slot, r in events if isinstance(r, Progress)]
            assert len(acks) == len(set(acks))  # coalesced: one Ack per call per message
        events = stream.closed()
        assert stream.sessions == {}
        assert ingestor.open_calls() == 0
        for s in (1, 2, 3):
            assert stored(vault, f"m{s}") == uninterrupted


def test_one_calls_bad_batch_fails_that_call_only(
    feed: Feed, tmp_path: Path, uninterrupted: Packets
) -> None:
    """A gap in one call's seq (FAILED_PRECONDITION on Record) and a batch with an empty
    packet in another (INVALID_ARGUMENT): each fails its own slot in the message that
    carried it, the late items of those slots are ignored, and the third call, whose
    items share every message with them, seals complete."""
    with server(tmp_path / "vault") as (vault, ingestor):
        good = items(1, feed.requests("good"))
        gap = items(2, [feed.spec("gap"), *feed.batches[:10], *feed.batches[11:]])
        bad = feed.batches[6]
        empty = items(
            3,
            [
                feed.spec("empty"),
                *feed.batches[:6],
                Batch(6, bad.leg, bad.packets, [*bad.lengths, 0], [*bad.arrival_us, 0]),
                *feed.batches[7:],
            ],
        )
        stream = MuxStream(ingestor)
        got: list[MuxEvent] = []
        for msg in interleave(good, gap, empty, per=4):
            got.extend(stream.handle(msg))
        slots = by_slot(got)
        failed = {s: [r for r in rs if isinstance(r, CallFailed)] for s, rs in slots.items()}
        assert failed[1] == []
        assert [type(f.error) for f in failed[2]] == [OutOfOrder]
        assert "batch 11 arrived but batch 10 is next" in str(failed[2][0].error)
        assert [type(f.error) for f in failed[3]] == [InputError]
        assert "packet lengths" in str(failed[3][0].error)
        # nothing after the error on its slot
        for s in (2, 3):
            assert isinstance(slots[s][-1], CallFailed)
        assert isinstance(slots[1][-1], Sealed)
        assert stored(vault, "good") == uninterrupted
        # the failed calls stay open on the server, detached: a new CallStart resumes
        assert {c.spec.call_id for c in ingestor.calls.values()} == {"gap", "empty"}
        assert not any(c.attached for c in ingestor.calls.values())
        again = MuxStream(ingestor)
        ev = again.handle(items(9, [feed.spec("gap")]))
        [(_, started)] = ev
        assert isinstance(started, Started) and started.resume_from_seq == 10
        ev = again.handle(items(9, [*feed.batches[10:], End(len(feed.batches))]))
        assert isinstance(ev[-1][1], Sealed)
        assert stored(vault, "gap") == uninterrupted


def test_a_bad_callstart_unknown_slots_and_reuse_fail_their_slot_only(
    feed: Feed, tmp_path: Path
) -> None:
    with server(tmp_path / "vault") as (_, ingestor):
        stream = MuxStream(ingestor)
        ev = by_slot(
            stream.handle(
                [
                    MuxItem(1, CallSpec("ok", "", feed.legs, start_us=feed.start_us)),
                    MuxItem(2, CallSpec("x", "bad tenant", ("a",))),
                    MuxItem(2, feed.batches[0]),  # after its slot's error: ignored
                    MuxItem(3, feed.batches[0]),  # no CallStart on slot 3
                    MuxItem(4, Unknown()),
                    MuxItem(1, feed.batches[0]),
                ]
            )
        )
        assert isinstance(ev[1][0], Started) and len(ev[1]) == 2  # Started, then its Ack
        assert isinstance(ev[1][1], Progress) and ev[1][1].seq == 0
        for slot, text in ((2, "tenant"), (3, "slot 3 holds no call"), (4, "start, batch or end")):
            [f] = ev[slot]
            assert isinstance(f, CallFailed) and isinstance(f.error, InputError)
            assert text in str(f.error), f.error
        # late items of an ended slot are ignored; a CallStart on it or on a bound
        # slot is refused (for that slot only)
        assert stream.handle([MuxItem(2, feed.batches[1])]) == []
        [(_, f2)] = stream.handle([MuxItem(2, feed.spec("y"))])
        assert isinstance(f2, CallFailed) and "slot 2 was used" in str(f2.error)
        [(_, f1)] = stream.handle([MuxItem(1, feed.spec("z"))])
        assert isinstance(f1, CallFailed) and "holds a call already" in str(f1.error)
        assert stream.sessions == {}  # the slot's call let go (it stays open, detached)
        ok = ingestor.get("", "ok")
        assert ok is not None and not ok.attached


def test_a_new_stream_takes_a_call_over_and_resends_are_skipped(
    feed: Feed, tmp_path: Path, uninterrupted: Packets
) -> None:
    """The sidecar reconnected: its new stream's CallStart takes the call over (the old
    stream's next batch of it fails ABORTED, the old stream's other call goes on), the
    new stream resends from 0 (skipped up to resume_from_seq) and seals."""
    half = len(feed.batches) // 2
    with server(tmp_path / "vault") as (vault, ingestor):
        old = MuxStream(ingestor)
        old.handle(items(1, [feed.spec("t1"), *feed.batches[:half]]))
        old.handle(items(2, [feed.spec("t2"), *feed.batches[:half]]))
        new = MuxStream(ingestor)
        [(slot, started)] = new.handle(items(7, [feed.spec("t1")]))
        assert slot == 7 and isinstance(started, Started)
        assert started.resume_from_seq == half and started.resumed
        ev = by_slot(old.handle(items(1, [feed.batches[half]]) + items(2, [feed.batches[half]])))
        [f] = ev[1]
        assert isinstance(f, CallFailed) and isinstance(f.error, StreamTakenOver)
        # t2 goes on (its Ack now, or in a later reply once its record is durable)
        assert all(isinstance(r, Progress) for r in ev.get(2, []))
        # the whole call again from 0: what was processed is skipped
        ev = by_slot(new.handle(items(7, [*feed.batches, End(len(feed.batches))])))
        assert isinstance(ev[7][-1], Sealed)
        assert stored(vault, "t1") == uninterrupted
        ev = by_slot(old.handle(items(2, [*feed.batches[half + 1 :], End(len(feed.batches))])))
        assert isinstance(ev[2][-1], Sealed)
        assert stored(vault, "t2") == uninterrupted


def test_chunks_on_a_pool_record_the_same(
    feed: Feed, tmp_path: Path, uninterrupted: Packets
) -> None:
    """A message's calls split over chunks run on worker threads: same recordings."""
    with server(tmp_path / "vault") as (vault, ingestor):
        with ThreadPoolExecutor(2) as pool:
            stream = MuxStream(ingestor, pool=pool, chunks=3)
            calls = [items(s, feed.requests(f"p{s}")) for s in range(1, 6)]
            events = run_messages(stream, interleave(*calls, per=7))
        sealed = [s for s, r in events if isinstance(r, Sealed)]
        assert sorted(sealed) == [1, 2, 3, 4, 5]
        assert not any(isinstance(r, CallFailed) for _, r in events)
        for s in range(1, 6):
            assert stored(vault, f"p{s}") == uninterrupted


def test_acks_of_records_made_durable_later_come_between_messages(
    feed: Feed, tmp_path: Path
) -> None:
    """Every batch sent is acknowledged on a stream that then goes quiet (the acks of
    records the committer makes durable later come in a reply of their own), and a
    call that expires while its stream is quiet fails alone."""
    with server(tmp_path / "vault") as (_, ingestor):
        ingestor.limits = Limits(call_idle_s=0.5)
        q: queue.Queue[list[MuxItem] | None] = queue.Queue()

        def fed() -> Iterator[list[MuxItem]]:
            while (m := q.get()) is not None:
                yield m

        stream = MuxStream(ingestor)
        replies = stream.run(fed(), lambda m: m)
        q.put(items(1, [feed.spec("a1"), *feed.batches]) + items(2, [feed.spec("a2")]))
        last = -1
        while last < len(feed.batches) - 1:
            for slot, r in next(replies):
                if isinstance(r, Progress) and slot == 1:
                    assert r.seq > last
                    last = r.seq
        # a2 got no batch: reaped (expired) while the stream is quiet; it fails alone
        while not ingestor.reap():
            time.sleep(0.1)
        assert ingestor.get("", "a2") is None  # expired and forgotten by the reaper
        expired: list[MuxEvent] = []
        while not expired:  # the stream's next check finds it
            expired = [e for e in next(replies) if isinstance(e[1], CallFailed)]
        [(slot, f)] = expired
        assert slot == 2 and isinstance(f, CallFailed) and isinstance(f.error, CallExpired)
        assert ingestor.mux_counts() == (1, 1)
        q.put(None)
        assert list(replies) == []
        assert ingestor.mux_counts() == (0, 0)
        a1 = ingestor.get("", "a1")
        assert a1 is not None and not a1.attached  # detached, still open


def test_leave_lets_a_call_go_and_keeps_it_open(feed: Feed, tmp_path: Path) -> None:
    """IngestMuxLeave (the sidecar stopped forwarding a call): the slot ends with the
    last Ack due, the call stays open on the server, detached (the reaper's resume_s
    applies), and a new CallStart resumes it."""
    half = len(feed.batches) // 2
    with server(tmp_path / "vault") as (_, ingestor):
        stream = MuxStream(ingestor)
        stream.handle(items(1, [feed.spec("l1"), *feed.batches[:half]]))
        ev = stream.handle([MuxItem(1, Leave())])
        assert all(isinstance(r, Progress) for _, r in ev)
        assert stream.sessions == {} and stream.handle([MuxItem(1, feed.batches[half])]) == []
        live = ingestor.get("", "l1")
        assert live is not None and not live.attached and live.sealed is None
        [(_, started)] = MuxStream(ingestor).handle(items(2, [feed.spec("l1")]))
        assert isinstance(started, Started) and started.resume_from_seq == half

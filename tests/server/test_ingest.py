"""The Record stream's state machine (server/ingest.py: RecordStream) without gRPC:
a real Vault in a tmp dir, real pipelines and libopus, requests in the engine's
terms (CallSpec, Batch, End), replies as the engine gives them."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from callvault.errors import InputError
from callvault.media import sample
from callvault.media.batch import LegBatch
from callvault.server.ingest import (
    Batch,
    CallSpec,
    End,
    Ingestor,
    OutOfOrder,
    Progress,
    RecordStream,
    Reply,
    Request,
    Sealed,
    Started,
    StreamIdle,
    StreamTakenOver,
    Unknown,
)
from callvault.timeline import FRAMES_PER_RECORD
from callvault.vault import Vault
from tests.rtpfeed import capture_feed

Packets = list[tuple[bytes, list[int]]]


@dataclass
class Feed:
    """A capture's RTP as a Record stream carries it: the CallStart and the batches."""

    start_us: int
    legs: tuple[str, ...]
    batches: list[Batch]

    def spec(self, call_id: str) -> CallSpec:
        return CallSpec(call_id=call_id, tenant="", legs=self.legs, start_us=self.start_us)

    def requests(self, call_id: str, first: int = 0) -> list[Request]:
        """CallStart, batches from ``first``, CallEnd."""
        return [self.spec(call_id), *self.batches[first:], End(len(self.batches))]


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=6.0)
    f = capture_feed(path)
    batches = [
        Batch(b.seq, b.leg, b.packets, list(b.lengths), list(b.arrival_us)) for b in f.batches
    ]
    return Feed(f.start_us, tuple(f.legs), batches)


@contextmanager
def server(data: Path) -> Iterator[tuple[Vault, Ingestor]]:
    """What a server holds: the vault and its live calls (closed like a stop)."""
    vault = Vault.open(data)
    ingestor = Ingestor(vault, workers=2)
    try:
        yield vault, ingestor
    finally:
        ingestor.workers.shutdown()
        vault.close()


def same(r: Request) -> Request:
    return r


def fed(q: queue.Queue[Request | None]) -> Iterator[Request]:
    """The requests put on ``q``, until None (the client half-closes)."""
    while (r := q.get()) is not None:
        yield r


def stored(vault: Vault, call_id: str) -> Packets:
    """The call's packets per leg, once its records are checked to tile each leg's
    frames with no overlap (nothing stored twice) and no gap."""
    assert vault.verify_call(call_id) == []
    ends: dict[int, int] = {}
    for _, r in sorted(vault.index.records("default", call_id), key=lambda x: x[1].first_frame):
        assert r.first_frame == ends.get(r.leg, 0), (r.leg, r.first_frame, ends)
        ends[r.leg] = r.first_frame + r.frames
    return [(d, ln.tolist()) for d, ln in vault.read_packets(call_id)]


def kinds(replies: list[Reply]) -> list[str]:
    return [type(r).__name__ for r in replies]


@pytest.fixture(scope="module")
def uninterrupted(feed: Feed, tmp_path_factory: pytest.TempPathFactory) -> Packets:
    """The call recorded in one stream, start to end."""
    with server(tmp_path_factory.mktemp("ref") / "vault") as (vault, ingestor):
        replies = list(RecordStream(ingestor).run(feed.requests("ref"), same))
        assert isinstance(replies[-1], Sealed)
        return stored(vault, "ref")


class Interactive:
    """A stream run on a thread-fed iterator, as a client drives it: put requests,
    read replies."""

    def __init__(self, ingestor: Ingestor, idle_s: float = 60.0) -> None:
        self.stream = RecordStream(ingestor, idle_s=idle_s)
        self.requests: queue.Queue[Request | None] = queue.Queue()
        self.replies = self.stream.run(fed(self.requests), same)

    def send(self, *reqs: Request) -> None:
        for r in reqs:
            self.requests.put(r)

    def ack_of(self, seq: int) -> Progress:
        """Replies up to the Ack of batch ``seq`` (each Ack after the one before)."""
        last = -1
        while True:
            r = next(self.replies)
            assert isinstance(r, Progress), r
            assert r.seq > last  # coalesced: never the same seq twice
            last = r.seq
            if r.seq >= seq:
                return r

    def close(self) -> list[Reply]:
        """The client half-closes: the replies still due."""
        self.requests.put(None)
        return list(self.replies)


def test_a_call_start_to_seal(feed: Feed, tmp_path: Path, uninterrupted: Packets) -> None:
    with server(tmp_path / "vault") as (vault, ingestor):
        replies = list(RecordStream(ingestor).run(feed.requests("c1"), same))
        assert replies[0] == Started(resume_from_seq=0, resumed=False, start_us=feed.start_us)
        assert isinstance(replies[-1], Sealed)
        acks = replies[1:-1]
        assert all(isinstance(a, Progress) for a in acks)
        seqs = [a.seq for a in acks if isinstance(a, Progress)]
        assert seqs == sorted(set(seqs)) and seqs[-1] == len(feed.batches) - 1
        e = vault.get_call("c1")
        assert e.state == "sealed"
        sealed = replies[-1]
        frames = (e.end_us - e.start_us) // 20_000
        assert sealed == Sealed(bytes.fromhex(e.seal), frames, e.log_index)
        # the End's Ack: every frame durable, + the encoder's flush packet; the chain's head
        last = acks[-1]
        assert isinstance(last, Progress)
        assert last.durable_frames == [frames + 1] * len(feed.legs)
        assert (last.chain_records, last.chain_head.hex()) == (e.records, e.chain_head)
        assert ingestor.get("default", "c1") is None  # no longer live
        assert stored(vault, "c1") == uninterrupted


def test_an_ack_says_what_is_durable(feed: Feed, tmp_path: Path) -> None:
    with server(tmp_path / "vault") as (vault, ingestor):
        s = Interactive(ingestor)
        s.send(feed.spec("c1"))
        assert next(s.replies) == Started(0, False, feed.start_us)
        k = len(feed.batches) * 2 // 3
        s.send(*feed.batches[:k])
        ack = s.ack_of(k - 1)
        assert ack.seq == k - 1  # nothing beyond what was sent
        e = vault.get_call("c1")
        assert min(ack.durable_frames) >= 50
        assert ack.durable_frames == vault.durable_frames("c1")
        assert (ack.chain_records, ack.chain_head.hex()) == (e.records, e.chain_head)
        # the client half-closes: nothing more is due, the call stays open and live
        assert s.close() == []
        assert vault.get_call("c1").state == "open"
        live = ingestor.get("default", "c1")
        assert live is not None and live.next_seq == k


def test_a_resend_is_skipped_and_a_gap_refused(
    feed: Feed, tmp_path: Path, uninterrupted: Packets
) -> None:
    with server(tmp_path / "vault") as (vault, ingestor):
        s = RecordStream(ingestor)
        s.handle(feed.spec("c1"))
        k = len(feed.batches) // 2
        for b in feed.batches[:k]:
            assert s.handle(b) == []
        assert s.live is not None and s.live.next_seq == k
        packets = s.live.packets
        for b in feed.batches[: k // 2]:  # resent: skipped
            assert s.handle(b) == []
        assert (s.live.next_seq, s.live.packets) == (k, packets)
        with pytest.raises(OutOfOrder, match=f"batch {k + 1} arrived but batch {k} is next"):
            s.handle(feed.batches[k + 1])
        with pytest.raises(InputError, match=f"CallEnd says {len(feed.batches)} batches"):
            s.handle(End(len(feed.batches)))
        for b in feed.batches[k:]:
            s.handle(b)
        out = s.handle(End(len(feed.batches)))
        assert kinds(out) == ["Progress", "Sealed"]
        assert s.done
        assert stored(vault, "c1") == uninterrupted


@pytest.mark.parametrize("flushed", [False, True], ids=["killed", "stopped"])
def test_a_restart_resumes_by_replay(
    feed: Feed, tmp_path: Path, uninterrupted: Packets, flushed: bool
) -> None:
    """Killed: only whole records were durable. Stopped: shutdown stored every frame
    encoded (records shorter than 50 frames). Either way, replaying every batch from
    seq 0 gives the very packets of an uninterrupted recording."""
    data = tmp_path / "vault"
    k = len(feed.batches) * 2 // 3
    with server(data) as (vault, ingestor):
        s = RecordStream(ingestor)
        s.handle(feed.spec("c1"))
        for b in feed.batches[:k]:
            s.handle(b)
        if flushed:
            ingestor.shutdown()
        elif s.live is not None and s.live.last_future is not None:
            s.live.last_future.result()
        before = vault.durable_frames("c1")
    assert min(before) >= 50
    assert any(f % 50 for f in before) == flushed
    with server(data) as (vault, ingestor):
        assert vault.get_call("c1").state == "open"
        replies = list(RecordStream(ingestor).run(feed.requests("c1"), same))
        started = replies[0]
        assert isinstance(started, Started)
        assert started.resumed and started.resume_from_seq == 0  # replayed from the start
        assert started.start_us == feed.start_us
        assert isinstance(replies[-1], Sealed)
        assert stored(vault, "c1") == uninterrupted


def test_records_are_cut_at_absolute_multiples_of_frames_per_record(
    feed: Feed, tmp_path: Path
) -> None:
    """Every record lies within one block [50k, 50k + 50) of its leg's frames and
    ends at the block's end, except a leg's last record and, across a stop and a
    replay, the short record shutdown stored (the next one completes its block)."""
    data = tmp_path / "vault"
    k = len(feed.batches) // 2
    with server(data) as (vault, ingestor):
        s = RecordStream(ingestor)
        s.handle(feed.spec("c1"))
        for b in feed.batches[:k]:
            s.handle(b)
        ingestor.shutdown()
        stopped_at = vault.durable_frames("c1")
    assert any(f % FRAMES_PER_RECORD for f in stopped_at)
    with server(data) as (vault, ingestor):
        replies = list(RecordStream(ingestor).run(feed.requests("c1"), same))
        assert isinstance(replies[-1], Sealed)
        stored(vault, "c1")  # tiled: no gap, no overlap
        spans: dict[int, list[tuple[int, int]]] = {}
        for _, r in vault.index.records("default", "c1"):
            spans.setdefault(r.leg, []).append((r.first_frame, r.first_frame + r.frames))
    assert sorted(spans) == list(range(len(feed.legs)))
    for leg, legs_spans in spans.items():
        legs_spans.sort()
        assert len(legs_spans) > 2
        for lo, hi in legs_spans:
            assert lo // FRAMES_PER_RECORD == (hi - 1) // FRAMES_PER_RECORD, (leg, lo, hi)
        ends = [hi for _, hi in legs_spans[:-1] if hi % FRAMES_PER_RECORD]
        assert ends == ([stopped_at[leg]] if stopped_at[leg] % FRAMES_PER_RECORD else []), leg


def test_a_second_stream_takes_the_call_over(
    feed: Feed, tmp_path: Path, uninterrupted: Packets
) -> None:
    with server(tmp_path / "vault") as (vault, ingestor):
        old = RecordStream(ingestor)
        old.handle(feed.spec("c1"))
        k = len(feed.batches) // 2
        for b in feed.batches[:k]:
            old.handle(b)
        new = RecordStream(ingestor)  # the client reconnected
        [started] = new.handle(feed.spec("c1"))
        assert started == Started(resume_from_seq=k, resumed=True, start_us=feed.start_us)
        for req in (feed.batches[k], End(k)):
            with pytest.raises(StreamTakenOver, match="another stream took over"):
                old.handle(req)
        replies = list(new.run(feed.requests("c1", first=k)[1:], same))
        assert isinstance(replies[-1], Sealed)
        assert stored(vault, "c1") == uninterrupted


def test_a_callstart_for_a_sealed_call_answers_sealed(feed: Feed, tmp_path: Path) -> None:
    with server(tmp_path / "vault") as (vault, ingestor):
        first = list(RecordStream(ingestor).run(feed.requests("c1"), same))
        sealed = first[-1]
        assert isinstance(sealed, Sealed)
    with server(tmp_path / "vault") as (vault, ingestor):  # and after a restart
        for _ in range(2):
            s = RecordStream(ingestor)
            out = s.handle(feed.spec("c1"))
            assert out == [Started(0, True, feed.start_us, sealed_before=True), sealed]
            assert s.done
            with pytest.raises(InputError, match="stream is over"):
                s.handle(feed.batches[0])
        again = list(RecordStream(ingestor).run(feed.requests("c1"), same))
        assert again == out  # the rest of the stream is not read
        with pytest.raises(InputError, match="exists with legs"):
            RecordStream(ingestor).handle(CallSpec("c1", "", ("other",), feed.start_us))


def test_requests_out_of_place_are_refused(feed: Feed, tmp_path: Path) -> None:
    with server(tmp_path / "vault") as (_, ingestor):
        s = RecordStream(ingestor)
        for req in (feed.batches[0], End(0), Unknown()):
            with pytest.raises(InputError, match="first message of a Record stream"):
                s.handle(req)
        with pytest.raises(InputError, match="call_id 'x y'"):
            s.handle(CallSpec("x y", "", ("a",)))
        s.handle(feed.spec("c1"))
        with pytest.raises(InputError, match="a second CallStart"):
            s.handle(feed.spec("c1"))
        with pytest.raises(InputError, match="must hold start, batch or end"):
            s.handle(Unknown())
        b = feed.batches[0]
        with pytest.raises(InputError, match="leg 7 does not exist"):
            s.handle(Batch(0, 7, b.packets, b.lengths, b.arrival_us))
        with pytest.raises(InputError, match="add up to"):
            s.handle(Batch(0, 0, b.packets, [5] * len(b.lengths), b.arrival_us))
        assert s.live is not None and s.live.next_seq == 0  # nothing taken


def test_a_quiet_stream_is_closed_and_the_call_stays(feed: Feed, tmp_path: Path) -> None:
    with server(tmp_path / "vault") as (_, ingestor):
        s = Interactive(ingestor, idle_s=0.5)
        s.send(feed.spec("c1"), *feed.batches[:3])
        assert isinstance(next(s.replies), Started)
        assert s.ack_of(2).seq == 2
        with pytest.raises(StreamIdle, match="no message for 0.5 s"):
            next(s.replies)
        s.requests.put(None)  # let the reader thread finish
        live = ingestor.get("default", "c1")
        assert live is not None and live.next_seq == 3
        # the client comes back: the same CallStart resumes where it was
        [started] = RecordStream(ingestor).handle(feed.spec("c1"))
        assert started == Started(3, True, feed.start_us)


def test_an_inactive_stream_stops(feed: Feed, tmp_path: Path) -> None:
    """``active()`` false (the RPC was cancelled): the stream gives nothing more and
    the call stays live."""
    with server(tmp_path / "vault") as (_, ingestor):
        on = threading.Event()
        on.set()
        requests: queue.Queue[Request | None] = queue.Queue()
        requests.put(feed.spec("c1"))
        replies = RecordStream(ingestor).run(fed(requests), same, active=on.is_set)
        assert isinstance(next(replies), Started)
        on.clear()
        assert list(replies) == []
        requests.put(None)
        assert ingestor.get("default", "c1") is not None


def test_reap_expires_unfed_calls_and_seals_abandoned_ones(feed: Feed, tmp_path: Path) -> None:
    """Ingestor.reap against a given clock (issue 9: 5,100 CallStart-only streams left
    5,232 open calls for good): a call with no batch expires after call_idle_s and
    nothing of it is stored; a call with audio and no stream is sealed after
    resume_s with every processed frame; an attached stream keeps its call."""
    from callvault.server.ingest import CallExpired, Limits

    with server(tmp_path / "vault") as (vault, ingestor):
        ingestor.limits = Limits(max_open_calls=10, call_idle_s=60, resume_s=600)
        unfed, t1 = ingestor.attach(feed.spec("unfed"))
        fed = RecordStream(ingestor)
        fed.handle(feed.spec("fed"))
        half = feed.batches[: len(feed.batches) // 2]
        for b in half:
            fed.handle(b)
        assert fed.live is not None
        t0 = fed.live.touched
        assert ingestor.reap(t0 + 59) == []
        assert [(c.spec.call_id, w) for c, w in ingestor.reap(t0 + 61)] == [("unfed", "expired")]
        with pytest.raises(CallExpired, match="no audio within 60 s"):
            ingestor.process(unfed, t1, LegBatch.checked(0, 0, b"\x80" * 12, [12], [1], 2))
        assert ingestor.reap(t0 + 10_000) == []  # "fed" still has its stream
        ingestor.detach(fed.live, fed.token)
        gone = fed.live.touched
        assert ingestor.reap(gone + 599) == []
        assert [(c.spec.call_id, w) for c, w in ingestor.reap(gone + 601)] == [("fed", "sealed")]
        assert ingestor.open_calls() == 0 and ingestor.expired_total == 1
        e = vault.get_call("fed")
        assert e.state == "sealed" and vault.index.get_call("default", "unfed") is None
        # every frame the processed batches made final is in the sealed call
        progress = fed.live.progress(len(half) - 1)
        frames = (e.end_us - e.start_us) // 20_000
        assert frames + 1 >= max(progress.durable_frames) > 0


def test_max_open_calls_refuses_one_more(feed: Feed, tmp_path: Path) -> None:
    from callvault.server.ingest import Limits, TooManyCalls

    with server(tmp_path / "vault") as (_, ingestor):
        ingestor.limits = Limits(max_open_calls=2)
        ingestor.attach(feed.spec("a"))
        ingestor.attach(feed.spec("b"))
        ingestor.attach(feed.spec("a"))  # a reconnect is not one more
        with pytest.raises(TooManyCalls, match="records 2 calls already"):
            ingestor.attach(feed.spec("c"))


def test_metadata_and_ids_are_checked_before_a_call_is_kept(feed: Feed, tmp_path: Path) -> None:
    with server(tmp_path / "vault") as (_, ingestor):
        for spec, text in [
            (CallSpec("..", "", ("a",)), "call_id '..'"),
            (CallSpec("x", "\x00", ("a",)), "tenant '\\x00'"),
            (CallSpec("x", "", (".",)), "leg name '.'"),
            (CallSpec("x", "", ("a",), meta={"agent": "a" * 300}), "agent is 300 bytes"),
            (CallSpec("x", "", ("a",), meta={"tags": ["t"] * 65}), "65 tags"),
            (CallSpec("x", "", ("a",), recording_id="r" * 129), "recording_id is 129"),
        ]:
            with pytest.raises(InputError, match=re.escape(text)):
                ingestor.attach(spec)
        assert ingestor.open_calls() == 0


def test_a_resumed_call_never_replayed_is_released_and_resumes_later(
    feed: Feed, tmp_path: Path, uninterrupted: Packets
) -> None:
    """After a restart a CallStart resumes the call from the vault; if its client then
    stays away resume_s, the call is left open in the vault (nothing to seal from:
    no batch was replayed) and a later CallStart still resumes it."""
    from callvault.server.ingest import Limits

    half = len(feed.batches) // 2
    with server(tmp_path / "vault") as (_, ingestor):
        s = RecordStream(ingestor)
        s.handle(feed.spec("c1"))
        for b in feed.batches[:half]:
            s.handle(b)
        ingestor.shutdown()
    with server(tmp_path / "vault") as (vault, ingestor):
        ingestor.limits = Limits(resume_s=600)
        live, token = ingestor.attach(feed.spec("c1"))
        assert live.resumed and live.pipes is None
        ingestor.detach(live, token)
        assert [w for _, w in ingestor.reap(live.touched + 601)] == ["released"]
        assert ingestor.open_calls() == 0 and vault.get_call("c1").state == "open"
        replies = list(RecordStream(ingestor).run(feed.requests("c1"), same))
        assert isinstance(replies[-1], Sealed)
        assert stored(vault, "c1") == uninterrupted


def test_an_open_call_of_an_older_vault_resumes_for_any_recording(
    feed: Feed, tmp_path: Path, uninterrupted: Packets
) -> None:
    """A call opened without a kept recording_id (an older version, or not through
    Ingest) is resumed by the first CallStart whatever its recording_id, as before;
    one opened through Ingest keeps it, and only that recording resumes it."""
    from dataclasses import replace

    from callvault.server.ingest import RecordingConflict

    with Vault.open(tmp_path / "vault") as vault:
        w = vault.open_call("old", legs=feed.legs, start_us=feed.start_us)
        w.release()
        assert vault.get_call("old").recording_id is None
    half = len(feed.batches) // 2
    with server(tmp_path / "vault") as (vault, ingestor):
        s = RecordStream(ingestor)
        s.handle(replace(feed.spec("new"), recording_id="rec-A"))
        for b in feed.batches[:half]:
            s.handle(b)
        ingestor.shutdown()
    with server(tmp_path / "vault") as (vault, ingestor):
        assert vault.get_call("new").recording_id == "rec-A"
        with pytest.raises(RecordingConflict, match=r"call new already exists \(open\)"):
            ingestor.attach(replace(feed.spec("new"), recording_id="rec-B"))
        requests = [replace(feed.spec("old"), recording_id="any"), *feed.requests("old")[1:]]
        replies = list(RecordStream(ingestor).run(requests, same))
        assert isinstance(replies[0], Started) and replies[0].resumed
        assert isinstance(replies[-1], Sealed)
        assert stored(vault, "old") == uninterrupted

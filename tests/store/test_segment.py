"""Segment store: framing, group commit, failure handling, recovery."""

from __future__ import annotations

import functools
import os
import shutil
import struct
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from crc32c import crc32c

from callvault.errors import CallvaultError
from callvault.store.fs import FaultyFS
from callvault.store.segment import (
    MAX_BODY,
    Committed,
    CorruptRecord,
    RecordRef,
    SegmentReader,
    SegmentWriter,
    StoreError,
    recover,
    segment_path,
)


def body_of(i: int) -> bytes:
    """A deterministic body of varying length (0..299 bytes) for payload i."""
    return (f"payload-{i}-".encode() * 40)[: (i * 37) % 300]


def write_records(directory: Path, bodies: list[bytes], **kw: object) -> list[RecordRef]:
    with SegmentWriter(directory, **kw) as w:  # type: ignore[arg-type]
        futures = [w.append(1 + i % 7, b) for i, b in enumerate(bodies)]
        return [f.result(timeout=30) for f in futures]


def flip(path: str, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


# -- framing -----------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    bodies = [b"", b"x", os.urandom(1000), b"\x00" * 64]
    refs = write_records(tmp_path, bodies)
    with SegmentReader(tmp_path) as r:
        for i, (ref, body) in enumerate(zip(refs, bodies, strict=True)):
            assert r.read(ref) == (1 + i % 7, body)
            assert ref.length == 12 + len(body)
        assert [(ref, t, b) for ref, t, b in r.scan()] == [
            (ref, 1 + i % 7, b) for i, (ref, b) in enumerate(zip(refs, bodies, strict=True))
        ]


def test_file_and_record_layout_match_the_documented_format(tmp_path: Path) -> None:
    [ref] = write_records(tmp_path, [b"hello"])
    data = Path(segment_path(tmp_path, ref.segment)).read_bytes()
    magic, version, hsize, seg, created, hcrc = struct.unpack_from("<8sHHQQI", data, 0)
    assert (magic, version, hsize, seg) == (b"CVSEG\x00\r\n", 1, 32, 1)
    assert created > 1_600_000_000_000_000  # unix microseconds
    assert hcrc == crc32c(data[:28])
    assert ref == RecordRef(1, 32, 17)
    crc, length, rtype, flags, reserved = struct.unpack_from("<IIBBH", data, 32)
    assert (length, rtype, flags, reserved) == (5, 1, 0, 0)
    assert crc == crc32c(data[36:49])  # everything after the crc field
    assert data[44:49] == b"hello" and len(data) == 49


def test_many_records_across_segment_closing(tmp_path: Path) -> None:
    bodies = [body_of(i) for i in range(600)]
    refs = write_records(tmp_path, bodies, segment_bytes=2048)
    segments = sorted({r.segment for r in refs})
    assert len(segments) > 20
    assert [int(n[:16], 16) for n in sorted(os.listdir(tmp_path))] == segments
    for seg in segments:
        assert os.path.getsize(segment_path(tmp_path, seg)) <= 2048
    report = recover(tmp_path)
    assert report.clean and report.truncated is None
    assert report.scanned == [segments[-1]]  # every other segment is closed
    with SegmentReader(tmp_path) as r:
        assert [(ref, b) for ref, _t, b in r.scan()] == list(zip(refs, bodies, strict=True))
        assert [r.read(ref)[1] for ref in refs[::37]] == bodies[::37]


def test_scan_order_and_start_offset(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [body_of(i) for i in range(50)])
    with SegmentReader(tmp_path) as r:
        assert [ref for ref, _t, _b in r.scan(1)] == refs
        assert [ref for ref, _t, _b in r.scan(1, start=refs[20].offset)] == refs[20:]
        assert list(r.scan(1, start=refs[-1].offset + refs[-1].length)) == []
        assert r.segments() == [1]


def test_crc_covers_length(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [b"a" * 40, b"b" * 40, b"c" * 40])
    path = segment_path(tmp_path, 1)
    flip(path, refs[1].offset + 4)  # lowest bit of the length field: 40 -> 41
    with SegmentReader(tmp_path) as r:
        with pytest.raises(CorruptRecord) as info:
            r.read(RecordRef(1, refs[1].offset, refs[1].length + 1))
        assert info.value.reason == "record CRC mismatch"
        seen = []
        with pytest.raises(CorruptRecord) as info:
            for ref, _t, _b in r.scan():
                seen.append(ref)
        assert seen == refs[:1]
        assert (info.value.segment, info.value.offset) == (1, refs[1].offset)


def test_flipped_body_bit_detected_on_read(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [b"a" * 40, b"b" * 40])
    flip(segment_path(tmp_path, 1), refs[0].offset + 20, 0x80)
    with SegmentReader(tmp_path) as r, pytest.raises(CorruptRecord, match="CRC mismatch"):
        r.read(refs[0])


def test_body_too_large_raises_value_error(tmp_path: Path) -> None:
    with SegmentWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="maximum"):
            w.append(1, bytes(MAX_BODY + 1))
        assert w.append(1, b"ok").result(timeout=30).length == 14


@pytest.mark.parametrize("rtype", [0, 0xF0, 0xFF, 256, -1])
def test_invalid_record_type_raises_value_error(tmp_path: Path, rtype: int) -> None:
    with SegmentWriter(tmp_path) as w, pytest.raises(ValueError, match="record type"):
        w.append(rtype, b"x")


def test_errors_are_callvault_errors() -> None:
    assert issubclass(CorruptRecord, StoreError) and issubclass(StoreError, CallvaultError)
    e = CorruptRecord(3, 100, "record CRC mismatch")
    assert "0000000000000003" in str(e) and "offset 100" in str(e)


# -- group commit --------------------------------------------------------------


def test_group_commit_threads_share_fsyncs(tmp_path: Path) -> None:
    fs = FaultyFS()
    threads_n, per_thread = 8, 200
    results: list[list[tuple[RecordRef, bytes]]] = [[] for _ in range(threads_n)]
    with SegmentWriter(tmp_path, fs=fs, segment_bytes=64 << 10) as w:
        start = threading.Barrier(threads_n)

        def worker(t: int) -> None:
            start.wait()
            bodies = [f"t{t}-{i}".encode() * 10 for i in range(per_thread)]
            futures = [w.append(1, b) for b in bodies]
            results[t] = [(f.result(timeout=60), b) for f, b in zip(futures, bodies, strict=True)]

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        groups = w.groups
    appends = threads_n * per_thread
    refs = [ref for rs in results for ref, _b in rs]
    assert len(refs) == appends and len(set(refs)) == appends
    assert fs.fsync_count < appends / 4, (fs.fsync_count, groups)
    with SegmentReader(tmp_path) as r:
        for rs in results:
            for ref, body in rs[::17]:
                assert r.read(ref) == (1, body)


def test_on_commit_runs_before_futures_resolve_in_order(tmp_path: Path) -> None:
    futures: dict[bytes, Future[RecordRef]] = {}
    seen: list[Committed] = []
    resolved_early: list[bytes] = []

    def on_commit(group: list[Committed]) -> None:
        for c in group:
            assert c.body is not None
            if futures[c.body].done():
                resolved_early.append(c.body)
        seen.extend(group)

    bodies = [f"rec-{i}".encode() for i in range(300)]
    with SegmentWriter(tmp_path, on_commit=on_commit) as w:
        for i, b in enumerate(bodies):
            futures[b] = w.append(1 + i % 3, b)
        refs = [futures[b].result(timeout=30) for b in bodies]
    assert resolved_early == []
    assert [c.body for c in seen] == bodies
    assert [c.ref for c in seen] == refs
    assert [c.rtype for c in seen] == [1 + i % 3 for i in range(300)]
    assert refs == sorted(refs)


def test_on_commit_bodies_false_passes_none(tmp_path: Path) -> None:
    seen: list[Committed] = []
    with SegmentWriter(tmp_path, on_commit=seen.extend, on_commit_bodies=False) as w:
        ref = w.append(2, b"abc").result(timeout=30)
    assert seen == [Committed(ref, 2, None)]


def test_on_commit_exception_fails_writer_without_acks(tmp_path: Path) -> None:
    calls = 0

    def on_commit(group: list[Committed]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("index write failed")

    w = SegmentWriter(tmp_path, on_commit=on_commit, max_delay_ms=0)
    first = w.append(1, b"one")
    assert first.result(timeout=30).offset == 32
    second = w.append(1, b"two")
    with pytest.raises(StoreError, match="on_commit raised.*index write failed"):
        second.result(timeout=30)
    later = w.append(1, b"three")
    with pytest.raises(StoreError):
        later.result(timeout=30)
    assert isinstance(w.failed, StoreError)
    with pytest.raises(StoreError):
        w.flush()
    w.close()
    # the failed group is durable but unacknowledged: recovery lists it for re-indexing
    report = recover(tmp_path)
    assert [ref.offset for ref, _t in report.records] == [32, 32 + 15]


# -- failures --------------------------------------------------------------------


def test_fsync_error_fails_pending_and_later_appends(tmp_path: Path) -> None:
    fs = FaultyFS()
    committed: list[Committed] = []  # on_commit runs only after a successful fsync
    w = SegmentWriter(
        tmp_path, fs=fs, max_delay_ms=0, max_group_bytes=2000, on_commit=committed.extend
    )
    w.append(1, b"warm-up").result(timeout=30)  # creates the file: one file + one dir fsync
    del committed[:]
    fs.fail_fsync(nth=3)
    futures = [w.append(1, body_of(i)) for i in range(400)]
    with pytest.raises(StoreError) as info:
        w.flush()
    assert all(f.done() for f in futures)
    fsyncs_at_failure = fs.fsync_count
    message = str(w.failed)
    assert "fsync of segment 0000000000000001 failed" in message
    assert "Input/output error" in message and "nothing appended" in message
    assert "fsync" in str(info.value)
    acked = [i for i, f in enumerate(futures) if f.exception() is None]
    failed = [i for i, f in enumerate(futures) if f.exception() is not None]
    # two groups were fsynced and acknowledged; everything from the third on failed
    assert 0 < len(acked) < 400
    assert acked == list(range(len(acked))) and failed == list(range(len(acked), 400))
    assert [c.ref for c in committed] == [futures[i].result() for i in acked]
    for i in failed:
        assert futures[i].exception() is w.failed
    later = w.append(1, b"after")
    with pytest.raises(StoreError, match="fsync"):
        later.result(timeout=30)
    w.close()
    assert fs.fsync_count == fsyncs_at_failure  # never retried
    with SegmentReader(tmp_path) as r:
        assert [r.read(futures[i].result())[1] for i in acked] == [body_of(i) for i in acked]


def test_write_error_fails_writer(tmp_path: Path) -> None:
    fs = FaultyFS()
    w = SegmentWriter(tmp_path, fs=fs)
    w.append(1, b"ok").result(timeout=30)
    fs.fail_write()
    with pytest.raises(StoreError, match="write to segment 0000000000000001.*No space left"):
        w.append(1, b"lost").result(timeout=30)
    w.close()
    assert recover(tmp_path).clean


def test_short_write_is_completed(tmp_path: Path) -> None:
    fs = FaultyFS()
    with SegmentWriter(tmp_path, fs=fs) as w:
        fs.short_write(keep=5)
        refs = [w.append(1, b"x" * 100).result(timeout=30) for _ in range(3)]
    with SegmentReader(tmp_path) as r:
        assert [r.read(ref) for ref in refs] == [(1, b"x" * 100)] * 3
    assert recover(tmp_path).truncated is None


def test_append_after_close_raises(tmp_path: Path) -> None:
    w = SegmentWriter(tmp_path)
    f = w.append(1, b"a")
    w.close()
    assert f.result(timeout=0).offset == 32  # close commits what is pending
    with pytest.raises(StoreError, match="closed"):
        w.append(1, b"b")


# -- recovery ----------------------------------------------------------------------


def test_torn_tail_at_every_offset_of_last_record(tmp_path: Path) -> None:
    src = tmp_path / "src"
    refs = write_records(src, [b"first" * 5, b"second" * 5, b"last!" * 12])
    original = Path(segment_path(src, 1)).read_bytes()
    last = refs[-1]
    assert len(original) == last.offset + last.length
    work = tmp_path / "work"
    work.mkdir()
    path = segment_path(work, 1)
    for cut in range(last.offset + 1, last.offset + last.length):
        Path(path).write_bytes(original[:cut])
        report = recover(work)
        assert report.truncated is not None, cut
        assert (report.truncated.segment, report.truncated.offset) == (1, last.offset)
        assert report.truncated.dropped == cut - last.offset
        assert not report.truncated.removed and report.clean
        assert os.path.getsize(path) == last.offset
        assert [ref for ref, _t in report.records] == refs[:-1]
        assert report.end == (1, last.offset)
    Path(path).write_bytes(original[: last.offset])  # cut on the boundary: nothing torn
    report = recover(work)
    assert report.truncated is None and report.clean and len(report.records) == 2


def test_bad_crc_in_final_bytes_is_truncated(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [b"a" * 30, b"b" * 30])
    path = segment_path(tmp_path, 1)
    flip(path, os.path.getsize(path) - 1)
    report = recover(tmp_path)
    assert report.truncated is not None
    assert report.truncated.offset == refs[1].offset
    assert report.truncated.reason == "record CRC mismatch"
    assert os.path.getsize(path) == refs[1].offset


def test_writer_continues_after_recovered_torn_tail(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [b"a" * 30, b"b" * 30])
    path = segment_path(tmp_path, 1)
    os.truncate(path, os.path.getsize(path) - 3)
    with pytest.raises(StoreError, match="run recover"):
        SegmentWriter(tmp_path)
    recover(tmp_path)
    more = write_records(tmp_path, [b"c" * 30])
    assert more == [RecordRef(1, refs[1].offset, 42)]
    with SegmentReader(tmp_path) as r:
        assert [b for _ref, _t, b in r.scan()] == [b"a" * 30, b"c" * 30]


def test_bad_crc_in_middle_is_damage_not_truncated(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [f"{i}".encode() * 20 for i in range(5)])
    path = segment_path(tmp_path, 1)
    size = os.path.getsize(path)
    flip(path, refs[2].offset + 15)
    report = recover(tmp_path)
    assert report.truncated is None and not report.clean
    [damage] = report.damage
    assert (damage.segment, damage.offset, damage.resumes_at) == (1, refs[2].offset, refs[3].offset)
    assert damage.reason == "record CRC mismatch"
    assert os.path.getsize(path) == size
    assert [ref for ref, _t in report.records] == [refs[0], refs[1], refs[3], refs[4]]
    with SegmentReader(tmp_path) as r:
        assert r.read(refs[4])[1] == b"4" * 20
        with pytest.raises(CorruptRecord):
            list(r.scan())


def test_corrupt_length_in_middle_is_damage(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [b"x" * 50 for _ in range(4)])
    path = segment_path(tmp_path, 1)
    flip(path, refs[1].offset + 5, 0x10)  # length 50 + 4096: past the end of the file
    report = recover(tmp_path)
    assert report.truncated is None
    assert [(d.offset, d.resumes_at) for d in report.damage] == [(refs[1].offset, refs[2].offset)]
    assert "past the end" in report.damage[0].reason


def test_damage_in_closed_segment_is_reported_with_known_end(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [body_of(i) for i in range(100)], segment_bytes=1024)
    victim = refs[1]  # refs[0] has an empty body
    flip(segment_path(tmp_path, victim.segment), victim.offset + 13)
    assert recover(tmp_path).clean  # closed segments are not read without known_end
    report = recover(tmp_path, known_end=(1, 32))
    assert [(d.segment, d.offset) for d in report.damage] == [(1, victim.offset)]
    assert report.truncated is None
    assert [ref for ref, _t in report.records] == refs[:1] + refs[2:]


def test_known_end_prevents_truncating_durable_records(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [b"a" * 30, b"b" * 30])
    path = segment_path(tmp_path, 1)
    size = os.path.getsize(path)
    flip(path, size - 1)
    report = recover(tmp_path, known_end=(1, size))
    assert report.truncated is None and os.path.getsize(path) == size
    assert [(d.offset, d.resumes_at) for d in report.damage] == [(refs[1].offset, None)]
    assert "not truncated" in report.damage[0].reason


def test_recover_lists_records_from_known_end(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [body_of(i) for i in range(60)], segment_bytes=1024)
    mid = refs[25]
    report = recover(tmp_path, known_end=(mid.segment, mid.offset + mid.length))
    assert [ref for ref, _t in report.records] == refs[26:]
    assert report.clean


def test_missing_segment_of_known_end_is_damage(tmp_path: Path) -> None:
    write_records(tmp_path, [b"a"])
    report = recover(tmp_path, known_end=(7, 100))
    assert [(d.segment, d.offset) for d in report.damage] == [(7, 0)]


def test_empty_directory_and_header_only_segment(tmp_path: Path) -> None:
    assert recover(tmp_path / "absent") == recover(tmp_path)
    assert recover(tmp_path).segments == []
    w = SegmentWriter(tmp_path)
    w.append(1, b"x").result(timeout=30)
    w.close()
    os.truncate(segment_path(tmp_path, 1), 32)  # a new segment: header only
    report = recover(tmp_path)
    assert report.clean and report.truncated is None and report.records == []
    assert report.end == (1, 32)
    assert write_records(tmp_path, [b"y"]) == [RecordRef(1, 32, 13)]


@pytest.mark.parametrize("size", [0, 10, 31])
def test_torn_segment_header_removes_the_file(tmp_path: Path, size: int) -> None:
    write_records(tmp_path, [b"x" * 3000], segment_bytes=1024)  # segment 1, closed
    Path(segment_path(tmp_path, 2)).write_bytes(b"CVSEG\x00\r\n\x01\x00"[:size].ljust(size, b"\0"))
    report = recover(tmp_path)
    assert report.truncated is not None
    assert (report.truncated.segment, report.truncated.dropped) == (2, size)
    assert report.truncated.removed and report.clean
    assert sorted(os.listdir(tmp_path)) == ["0000000000000001.seg"]
    assert report.segments == [1] and report.end is not None and report.end[0] == 1
    assert write_records(tmp_path, [b"z"])[0].segment == 2


def test_damage_before_the_end_of_a_non_last_segment_is_never_truncated(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [b"a" * 30, b"b" * 30])
    path = segment_path(tmp_path, 1)
    flip(path, os.path.getsize(path) - 1)  # the last record of segment 1 is bad...
    Path(segment_path(tmp_path, 2)).write_bytes(b"")  # ...and segment 2 exists after it
    size = os.path.getsize(path)
    report = recover(tmp_path)
    assert os.path.getsize(path) == size
    assert [(d.segment, d.offset) for d in report.damage] == [(1, refs[1].offset)]
    assert report.truncated is not None and report.truncated.removed  # the empty segment 2


def test_writer_starts_new_segment_after_damaged_last_segment(tmp_path: Path) -> None:
    refs = write_records(tmp_path, [f"{i}".encode() * 20 for i in range(4)])
    flip(segment_path(tmp_path, 1), refs[1].offset + 14)
    assert not recover(tmp_path).clean
    more = write_records(tmp_path, [b"new"])
    assert more == [RecordRef(2, 32, 15)]
    report = recover(tmp_path)  # the damage keeps being reported
    assert [(d.segment, d.offset) for d in report.damage] == [(1, refs[1].offset)]
    assert report.scanned == [1, 2]


@pytest.mark.parametrize("acks_before_crash", [1, 40, 300])
def test_crash_keeps_every_acknowledged_record(tmp_path: Path, acks_before_crash: int) -> None:
    fs = FaultyFS()
    acked: dict[RecordRef, bytes] = {}
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()
    w = SegmentWriter(tmp_path, fs=fs, segment_bytes=8192, max_delay_ms=0.5)

    def on_done(f: Future[RecordRef], body: bytes) -> None:
        if f.exception() is None:
            with lock:
                acked[f.result()] = body
                if len(acked) >= acks_before_crash:
                    enough.set()

    def worker(t: int) -> None:
        i = 0
        while not stop.is_set():
            body = f"t{t}-{i}-".encode() * (1 + i % 9)
            try:
                f = w.append(1 + t, body)
            except StoreError:
                return
            f.add_done_callback(functools.partial(on_done, body=body))
            i += 1
            if i % 16 == 0:
                try:
                    f.result(timeout=30)
                except StoreError:
                    return

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    assert enough.wait(timeout=60)
    fs.crash()
    stop.set()
    for th in threads:
        th.join()
    # the workers may all have stopped before touching the crashed files: the
    # next append must fail, and leave the writer failed
    with pytest.raises(StoreError):
        w.append(1, b"after the crash").result(timeout=30)
    w.close()
    assert isinstance(w.failed, StoreError)
    with lock:
        survivors = dict(acked)
    assert len(survivors) >= acks_before_crash
    report = recover(tmp_path)
    assert report.clean
    with SegmentReader(tmp_path) as r:
        for ref, body in survivors.items():
            assert r.read(ref)[1] == body
        scanned = {ref for ref, _t, _b in r.scan()}
    assert set(survivors) <= scanned


def test_copying_a_store_keeps_it_readable(tmp_path: Path) -> None:
    refs = write_records(tmp_path / "a", [body_of(i) for i in range(30)], segment_bytes=1024)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with SegmentReader(tmp_path / "b") as r:
        assert [r.read(ref)[1] for ref in refs] == [body_of(i) for i in range(30)]

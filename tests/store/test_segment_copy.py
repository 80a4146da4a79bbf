"""A rewrite's segment (docs/format.md 8.2, 8.11): written unpublished, published by a
rename, read in the store's order (by origin), never taken for the tail or for records
past the known end; leftovers removed."""

from __future__ import annotations

from pathlib import Path

from callvault.store.segment import (
    HEADER_SIZE,
    ORIGIN_RECORD_SIZE,
    SegmentReader,
    SegmentWriter,
    publish_copy,
    recover,
    remove_unpublished,
    segment_path,
    unpublished_path,
    write_copy,
)


def test_a_copy_stands_at_its_origin_in_the_store_order(tmp_path: Path) -> None:
    d = tmp_path / "seg"
    with SegmentWriter(d, segment_bytes=1024, max_delay_ms=0) as w:
        refs = [w.append(1, bytes([i]) * 300).result() for i in range(7)]
        reserved = w.reserve_id()
    segs = sorted({r.segment for r in refs})
    assert len(segs) >= 3 and reserved > segs[-1]
    # copy the records of the first two segments (all but one) into `reserved`
    first_two = [r for r in refs if r.segment in segs[:2]]
    copied = first_two[1:]
    with SegmentReader(d) as reader:
        bodies = [reader.read(r) for r in copied]
    new = write_copy(d, reserved, segs[0], bodies)
    assert [r.offset for r in new][0] == HEADER_SIZE + ORIGIN_RECORD_SIZE
    with SegmentReader(d) as reader:
        assert reserved not in reader.segments()  # unpublished: not listed
    publish_copy(d, reserved)
    with SegmentReader(d) as reader:
        assert reader.segments() == [segs[0], reserved, *segs[1:]]
        assert reader.origin(reserved) == segs[0] and reader.closed(reserved)
        assert [reader.read(r) for r in new] == bodies
        scanned = [(rtype, body) for _, rtype, body in reader.scan(reserved)]
        assert scanned == bodies  # the origin record is the store's: not yielded
    # the known end is in the writer's tail: the copy (higher id) is before it
    end = (refs[-1].segment, refs[-1].offset + refs[-1].length)
    report = recover(d, known_end=end)
    assert report.clean and report.records == [] and report.end is not None
    assert report.end[0] == segs[-1]
    # the writer continues its own tail and never reuses the copy's id
    with SegmentWriter(d, segment_bytes=1024, max_delay_ms=0) as w:
        more = w.append(2, b"x" * 300).result()
    assert more.segment not in (reserved, *segs[:-1])
    # once the originals are removed, the copy holds their records in their place
    for s in segs[:2]:
        (d / f"{s:016x}.seg").unlink()
    with SegmentReader(d) as reader:
        order = [(rtype, body) for _, rtype, body in reader.scan()]
    assert order[: len(bodies)] == bodies


def test_unpublished_copies_are_removed(tmp_path: Path) -> None:
    d = tmp_path / "seg"
    with SegmentWriter(d, segment_bytes=1024, max_delay_ms=0) as w:
        w.append(1, b"a" * 10).result()
        sid = w.reserve_id()
    write_copy(d, sid, 1, [(1, b"b" * 10)])
    assert Path(unpublished_path(d, sid)).exists()
    assert remove_unpublished(d) == 1
    assert not Path(unpublished_path(d, sid)).exists()
    assert not Path(segment_path(d, sid)).exists()
    assert recover(d).clean

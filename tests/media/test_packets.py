"""callvault.media.packets.PacketRun: packets back to back with their lengths."""

from __future__ import annotations

import numpy as np
import pytest

from callvault.media.packets import PacketRun

PACKETS = [b"abc", b"", b"defgh", b"i"]


def test_of_offsets_ends_bounds() -> None:
    run = PacketRun.of(PACKETS)
    assert run.data == b"abcdefghi" and run.lengths.dtype == np.int32
    assert run.offsets.tolist() == [0, 3, 3, 8] and run.offsets.dtype == np.int64
    assert run.ends.tolist() == [3, 3, 8, 9]
    assert run.bounds.tolist() == [0, 3, 3, 8, 9]
    assert len(run) == 4 and list(run) == PACKETS


def test_index_and_slice() -> None:
    run = PacketRun.of(PACKETS)
    assert [run[i] for i in range(4)] == PACKETS and run[-1] == b"i"
    assert run[1:3] == PacketRun.of(PACKETS[1:3])
    assert run[2:] == PacketRun(b"defghi", np.array([5, 1]))
    assert len(run[3:1]) == 0 and run[3:1].data == b""
    with pytest.raises(IndexError):
        run[4]
    with pytest.raises(ValueError, match="step 1"):
        run[::2]


def test_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="lengths add up to 4 bytes but data has 3"):
        PacketRun(b"abc", np.array([2, 2]))
    with pytest.raises(ValueError, match="negative"):
        PacketRun(b"abc", np.array([4, -1]))
    with pytest.raises(ValueError, match="1-D"):
        PacketRun(b"abcd", np.array([[2, 2]]))
    run = PacketRun(memoryview(b"abcd"), [1, 3])  # type: ignore[arg-type]
    assert type(run.data) is bytes and run.lengths.dtype == np.int32


def test_concat_takes_runs_and_pairs() -> None:
    a, b = PacketRun.of(PACKETS[:2]), (b"defghi", np.array([5, 1], dtype=np.int64))
    assert PacketRun.concat([a, b]) == PacketRun.of(PACKETS)
    empty = PacketRun.concat([])
    assert len(empty) == 0 and empty.data == b"" and empty.lengths.dtype == np.int32


def test_replace_splices_in_order() -> None:
    run = PacketRun.of(PACKETS)
    out = run.replace([0, 3], PacketRun.of([b"XY", b"ZZZ"]))
    assert list(out) == [b"XY", b"", b"defgh", b"ZZZ"]
    assert list(run) == PACKETS  # the original is unchanged
    assert run.replace([], PacketRun.of([])) is run
    with pytest.raises(ValueError, match="ascending"):
        run.replace([3, 0], PacketRun.of([b"a", b"b"]))
    with pytest.raises(ValueError, match="2 indexes but 1"):
        run.replace([0, 1], PacketRun.of([b"a"]))


def test_equality() -> None:
    assert PacketRun.of([b"ab", b"c"]) != PacketRun.of([b"a", b"bc"])
    assert PacketRun.of([b"ab", b"c"]) == PacketRun(b"abc", np.array([2, 1], dtype=np.int16))

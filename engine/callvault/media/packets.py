"""A run of packets back to back in one buffer, with each packet's length.

The shape every batch of packets takes in callvault: RTP batches
(docs/format.md section 2: ``data`` + ``lengths``, offsets derived), a leg's
Opus packets (section 4), the packets of an audio record (section 8.5).
``PacketRun`` does the ``lengths -> offsets`` arithmetic once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, eq=False)
class PacketRun:
    """``data`` holds ``len(lengths)`` packets back to back; ``lengths[i]`` is packet i's size.

    Checked on construction: ``lengths`` is 1-D, no length is negative and they
    add up to ``len(data)`` (a ValueError says which). ``lengths`` is stored as
    a C-contiguous int32 array; treat it as read-only.
    """

    data: bytes
    lengths: npt.NDArray[np.int32]

    def __post_init__(self) -> None:
        data = self.data if type(self.data) is bytes else bytes(self.data)
        lens = np.ascontiguousarray(self.lengths, dtype=np.int32)
        if lens.ndim != 1:
            raise ValueError(f"lengths must be 1-D, got {lens.ndim} dimensions")
        if len(lens) and int(lens.min()) < 0:
            raise ValueError(f"negative packet length {int(lens.min())}")
        total = int(lens.sum(dtype=np.int64))
        if total != len(data):
            raise ValueError(f"lengths add up to {total} bytes but data has {len(data)}")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "lengths", lens)

    @classmethod
    def checked_by_caller(cls, data: bytes, lengths: npt.NDArray[np.int32]) -> PacketRun:
        """A run from ``data`` and a 1-D C-contiguous int32 ``lengths`` that the caller
        has already checked (no negative length, the sum is ``len(data)``), e.g. a
        decrypted record's packets: skips the checks on a hot path."""
        run = object.__new__(cls)
        object.__setattr__(run, "data", data)
        object.__setattr__(run, "lengths", lengths)
        return run

    @classmethod
    def of(cls, packets: Sequence[bytes]) -> PacketRun:
        """The packets concatenated."""
        lengths = np.fromiter((len(p) for p in packets), dtype=np.int32, count=len(packets))
        return cls(b"".join(packets), lengths)

    @classmethod
    def concat(cls, runs: Iterable[PacketRun | tuple[bytes, npt.ArrayLike]]) -> PacketRun:
        """Runs (or ``(data, lengths)`` pairs) one after the other."""
        datas: list[bytes] = []
        lens: list[npt.NDArray[Any]] = []
        for r in runs:
            d, ln = (r.data, r.lengths) if isinstance(r, PacketRun) else r
            datas.append(d)
            lens.append(np.asarray(ln, dtype=np.int32).reshape(-1))
        return cls(b"".join(datas), np.concatenate(lens) if lens else np.zeros(0, np.int32))

    @property
    def bounds(self) -> npt.NDArray[np.int64]:
        """int64[n + 1]: packet i is ``data[bounds[i]:bounds[i + 1]]`` (computed once)."""
        out: npt.NDArray[np.int64] | None = self.__dict__.get("_bounds")
        if out is None:  # a plain dict cache: functools.cached_property costs more here
            out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
            np.cumsum(self.lengths, out=out[1:])
            self.__dict__["_bounds"] = out
        return out

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        """int64[n]: where each packet starts (the ``offsets`` of docs/format.md section 2)."""
        return self.bounds[:-1]

    @property
    def ends(self) -> npt.NDArray[np.int64]:
        """int64[n]: one past each packet's last byte."""
        return self.bounds[1:]

    def __len__(self) -> int:
        return len(self.lengths)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> PacketRun: ...
    def __getitem__(self, i: int | slice) -> bytes | PacketRun:
        """Packet ``i`` as bytes, or the packets of a slice (step 1) as a run."""
        b = self.bounds
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a PacketRun slice takes consecutive packets (step 1)")
            hi = max(hi, lo)
            return PacketRun(self.data[b[lo] : b[hi]], self.lengths[lo:hi])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"packet {i} out of range ({n} packets)")
        i %= n
        return self.data[b[i] : b[i + 1]]

    def __iter__(self) -> Iterator[bytes]:
        mv = memoryview(self.data)
        b = self.bounds.tolist()
        for lo, hi in zip(b[:-1], b[1:], strict=True):
            yield bytes(mv[lo:hi])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PacketRun):
            return NotImplemented
        return self.data == other.data and np.array_equal(self.lengths, other.lengths)

    __hash__ = None  # type: ignore[assignment]  # mutable array inside: not hashable

    def astuple(self) -> tuple[bytes, npt.NDArray[np.int32]]:
        """``(data, lengths)``, the pair the compiled codecs take and return."""
        return self.data, self.lengths

    def replace(self, indexes: npt.ArrayLike, packets: PacketRun) -> PacketRun:
        """This run with packet ``indexes[j]`` replaced by ``packets[j]`` (indexes ascending)."""
        idx = np.asarray(indexes, dtype=np.int64).reshape(-1)
        if len(idx) != len(packets):
            raise ValueError(f"{len(idx)} indexes but {len(packets)} replacement packets")
        if not len(idx):
            return self
        if (np.diff(idx) <= 0).any() or idx[0] < 0 or idx[-1] >= len(self):
            raise ValueError("indexes must be ascending, distinct and within the run")
        b = self.bounds
        mv = memoryview(self.data)
        parts: list[bytes | memoryview] = []
        prev = 0
        for j, i in enumerate(idx.tolist()):
            parts.append(mv[b[prev] : b[i]])
            parts.append(packets[j])
            prev = i + 1
        parts.append(mv[b[prev] :])
        lengths = self.lengths.copy()
        lengths[idx] = packets.lengths
        return PacketRun(b"".join(parts), lengths)

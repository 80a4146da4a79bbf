"""Capacity relief (docs/policy.md "Capacity") with the REAL archive tier: the
watermarks' relief archives the calls due to SeaweedFS through
``callvault.lifecycle.archive.Archive`` (Object Lock bucket), evicts archived calls
oldest first only until below ``low``, never a call that is only local nor a held
one, reclaims the freed records, and the evicted calls still export the same audio
and verify, read from the archive. (tests/lifecycle/test_capacity.py keeps the unit
tests with an injected stand-in.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from callvault.lifecycle import archive as arch
from callvault.lifecycle.capacity import HIGH, OK, Capacity, Settings, Usage
from callvault.media import ogg, sample
from callvault.vault import Vault

pytestmark = pytest.mark.timeout(300)

SEGMENT_BYTES = 16 << 10
T0 = 1_700_000_000_000_000
# start times out of name order: "oldest first" is by start, not by name; "held" is
# the oldest of all (archived, never evicted)
STARTS = {"held": 0, "c3": 1, "c1": 2, "c4": 3, "c2": 4}
BY_AGE = ["c3", "c1", "c4", "c2"]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(p, seconds=2.0)
    return p


def _segments_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "segments").iterdir() if p.is_file())


def _export(v: Vault, call_id: str, out: Path) -> bytes:
    v.export(call_id, out)
    data, lens = ogg.OggOpusReader(out).packets_data()
    return data + lens.tobytes()


def test_relief_with_the_real_archive(
    tmp_path: Path, capture: Path, archive_settings: dict[str, Any]
) -> None:
    data = tmp_path / "data"
    v = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    try:
        for c, k in STARTS.items():
            v.import_call(c, [str(capture)], start_us=T0 + k * 60_000_000, agent="ann")
        # "recent": only local (not due for the archive: sealed less than `after` ago)
        v.import_call("recent", [str(capture)], start_us=v.clock(), agent="ann")
        hold = {"CASE-5": {"placed_us": v.clock(), "by": None, "reason": "court order"}}
        v.change("held", op="hold", changes={"holds": hold})
        before = {c: _export(v, c, tmp_path / f"{c}-0.ogg") for c in [*STARTS, "recent"]}
        archive = arch.Archive.from_settings(v, {**archive_settings, "after": "1d"}).attach()
        v._writer.flush()
        total = _segments_bytes(data)
        audio = {c: sum(r.length for _i, r in v.index.records("default", c)) for c in before}
        # the volume: the segments plus a fixed rest, at 90% of it (high 85, low 75):
        # the goal, 15% of the volume, is two and a half calls' audio: more than the
        # oldest call's, less than the four evictable calls'
        goal = 2.5 * sum(audio[c] for c in BY_AGE) / len(BY_AGE)
        size = int(goal / 0.15)
        rest = int(size * 0.9) - total
        assert rest > 0 and audio["c3"] < goal < sum(audio[c] for c in BY_AGE)
        cap = Capacity(
            v,
            Settings.parse({"high": 85, "low": 75, "floor": 95, "reclaim_threshold": 0.01}),
            usage=lambda: Usage(rest + _segments_bytes(data), size),
            archive=lambda: archive,
        )
        state = cap.check()
        archived = {c for c in before if v.get_call(c).archive is not None}
        assert archived == set(STARTS)  # every due call, the held one too; not "recent"
        evicted = [c for c in BY_AGE if not v.get_call(c).local]
        assert evicted and evicted == BY_AGE[: len(evicted)]  # oldest first
        assert len(evicted) < len(BY_AGE)  # stopped once below low
        assert cap.evicted_calls == len(evicted) and cap.error == ""
        assert v.get_call("held").local and v.get_call("recent").local
        assert _segments_bytes(data) < total  # the relief's reclaim freed bytes
        assert cap.used_percent < 90.0 and state in (OK, HIGH)

        # a volume that stays full: every archived call is evicted, the held and the
        # only-local ones never are
        cap.usage = lambda: Usage(99, 100)
        assert cap.check() == "critical"
        assert [c for c in BY_AGE if v.get_call(c).local] == []
        assert v.get_call("held").local and v.get_call("recent").local
        assert v.get_call("recent").archive is None
        assert _segments_bytes(data) < total - sum(audio[c] for c in BY_AGE) // 2
        # evicted calls play and verify from the archive; what stayed, from the disk
        for c in [*STARTS, "recent"]:
            assert v.verify_call(c) == [], c
            assert _export(v, c, tmp_path / f"{c}-1.ogg") == before[c], c
        assert list(v.index.records("default", "c3")) == []  # nothing local to read
    finally:
        v.close()

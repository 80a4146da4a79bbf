"""Tamper evidence of the vault (callvault.vault, docs/format.md section 8).

Acceptance (issue 3): every single-byte change in a small vault's segment
files is detected by verify; so are reordered, duplicated, deleted, spliced and
truncated records. And nothing under DATA holds a customer number or audio in
plaintext.

"Detected" means: Vault.open fails with a CallvaultError, or open reports the
change (recovery's damage, or the truncation of a torn tail, which is only
allowed past the last acknowledged record), or verify_all() returns problems.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from callvault import _opus
from callvault.errors import CallvaultError
from callvault.store.index import Index, RecordEntry, record_key
from callvault.store.segment import SegmentReader
from callvault.vault import Problem, Vault

SEGMENT_BYTES = 1024  # several segment files, closed ones and the open last one
TENANT = "acme"
CALLS = ("call-a", "call-b", "call-c")  # equal lengths: their records are byte-compatible
FRAMES = 3  # frames per record
RECORDS = 4  # records per call (legs 0, 1, 0, 1)
NUMBER = "+15551234567"
START_US = 1_795_000_000_000_000


def _packets(call_id: str, index: int) -> tuple[np.ndarray, bytes]:
    rng = random.Random(f"{call_id}/{index}")
    return np.full(FRAMES, 7, dtype=np.int32), rng.randbytes(7 * FRAMES)


def build_vault(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        for n, call_id in enumerate(CALLS):
            w = v.open_call(
                call_id,
                tenant=TENANT,
                agent="ann",
                customer_number=NUMBER,
                tags=["tamper"],
                start_us=START_US + n,
            )
            for r in range(RECORDS):
                w.append(r % 2, (r // 2) * FRAMES, *_packets(call_id, r)).result()
            w.seal(frames=RECORDS // 2 * FRAMES, end_us=START_US + 10**6, summary={"n": n})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("pristine") / "data"
    build_vault(data)
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert v.verify_all() == []
        assert v.report.truncated is None and v.report.damage == []
    return data


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


@dataclass
class Outcome:
    how: str  # "open", "report", "verify" or "" (not detected)
    detail: str


def release_leaked_open(data: Path) -> None:
    """Work around the bug test_a_failed_open_releases_the_data_directory pins: a
    Vault.__init__ that raises keeps its DATA/LOCK descriptor (and the flock) open,
    so every later open in this process would fail. Close that descriptor."""
    lock = os.path.realpath(data / "LOCK")
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == lock:
                os.close(int(fd))
    gc.collect()  # and the RocksDB handle of the half-made vault


def check(data: Path) -> Outcome:
    """Open the vault and verify it; say whether and how a change was detected."""
    try:
        v = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    except CallvaultError as ex:
        assert "open in another process" not in str(ex)  # an earlier failed open's leak
        release_leaked_open(data)
        return Outcome("open", str(ex))
    try:
        problems = v.verify_all()
        if problems:
            return Outcome("verify", str(problems[0]))
        if v.report.damage or v.report.truncated is not None:
            return Outcome("report", str(v.report.damage or v.report.truncated))
        return Outcome("", "")
    finally:
        v.close()


def segment_files(data: Path) -> list[Path]:
    return sorted((data / "segments").iterdir())


def records(data: Path) -> list[tuple[int, int, int, int, bytes]]:
    """(segment, offset, length, type, framed bytes) of every caller record, in order."""
    out = []
    with SegmentReader(data / "segments") as r:
        for ref, rtype, _body in r.scan():
            raw = (data / "segments" / f"{ref.segment:016x}.seg").read_bytes()
            out.append(
                (
                    ref.segment,
                    ref.offset,
                    ref.length,
                    rtype,
                    raw[ref.offset : ref.offset + ref.length],
                )
            )
    return out


def index_entries(data: Path, call_id: str) -> list[RecordEntry]:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        return [e for _, e, _ in v.stored_records(call_id, tenant=TENANT)]


def edit_index(data: Path, edit: Callable[[Index, object], None]) -> None:
    """Change the RocksDB index of a closed vault in one write batch."""
    ix = Index(data / "index")
    try:
        b = ix.batch()
        edit(ix, b._wb)
        ix.write(b)
    finally:
        ix.close()


def problems_of(data: Path) -> tuple[list[Problem], object]:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        return v.verify_all(), v.report


def names(problems: list[Problem], call_id: str, record: int) -> bool:
    return any(p.what == f"call {call_id}" and p.record == record for p in problems)


# -- every single byte ----------------------------------------------------------------------

REOPEN_EVERY = 16  # in a closed segment, every 16th offset is also checked with a reopen


def _flip_all(
    pristine: Path,
    tmp_path: Path,
    pattern: Callable[[int, int], int],
    offsets: Callable[[int], Iterator[int]],
    *,
    all_reopen: bool = False,
) -> tuple[dict[str, int], list[str]]:
    """Change one byte at a time, check, restore.

    Recovery on open reads only the last segment record by record (closed ones:
    their header and footer), so every offset of the last segment, every
    header and SEAL byte and every REOPEN_EVERY-th offset is checked the whole
    way (Vault.open, its report, verify_all); the other offsets of sealed
    segments by verify_all() of a vault opened once (it re-reads every record)."""
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    seen: dict[str, int] = {"open": 0, "report": 0, "verify": 0, "live verify": 0}
    missed: list[str] = []
    files = segment_files(data)
    originals = {p: p.read_bytes() for p in files}
    todo = [(path, off) for path in files for off in offsets(len(originals[path]))]

    def reopen(path: Path, off: int) -> bool:
        n = len(originals[path])
        return (
            all_reopen or path == files[-1] or off < 32 or off >= n - 44 or off % REOPEN_EVERY == 0
        )

    def flip(path: Path, off: int) -> str:
        changed = bytearray(originals[path])
        changed[off] = pattern(changed[off], off)
        with open(path, "r+b") as f:  # in place: the open vault's reader sees it
            f.seek(off)
            f.write(changed[off : off + 1])
        return f"{path.name} offset {off} ({originals[path][off]:#04x} -> {changed[off]:#04x})"

    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as live:
        for path, off in todo:
            if reopen(path, off):
                continue
            what = flip(path, off)
            if live.verify_all():
                seen["live verify"] += 1
            else:
                missed.append(what)
            path.write_bytes(originals[path])
    for path, off in todo:
        if not reopen(path, off):
            continue
        what = flip(path, off)
        out = check(data)
        if out.how:
            seen[out.how] += 1
        else:
            missed.append(what)
        path.write_bytes(originals[path])  # recovery may have truncated or removed it
        assert sorted(p.name for p in segment_files(data)) == [p.name for p in files]
    return seen, missed


def test_every_single_byte_change_in_the_segment_files_is_detected(
    pristine: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    seen, missed = _flip_all(pristine, tmp_path, lambda b, _o: b ^ 0x01, lambda n: iter(range(n)))
    total = sum(seen.values()) + len(missed)
    print(
        f"{total} offsets in {len(segment_files(pristine))} segment files: {seen}, "
        f"{len(missed)} missed, {time.monotonic() - started:.1f} s"
    )
    assert missed == []


def test_a_second_byte_pattern_on_a_sample_of_offsets_is_detected(
    pristine: Path, tmp_path: Path
) -> None:
    rng = random.Random(7)
    seen, missed = _flip_all(
        pristine,
        tmp_path,
        lambda b, _o: (b + rng.randrange(1, 256)) % 256,
        lambda n: iter(sorted(rng.sample(range(n), max(1, n // 24)))),
        all_reopen=True,
    )
    assert missed == [] and sum(seen.values()) > 0


def test_verify_all_on_a_running_vault_checks_the_segment_headers(data: Path) -> None:
    """Bug found here: SegmentReader checks a segment's header once, when it first
    opens the file, and keeps the handle; verify_all() on a vault that has read
    the segment before therefore misses a changed header byte (magic, version,
    segment id, created_us, header CRC) until the vault is reopened. (The
    every-byte test checks header bytes with a reopen, where they are caught.)"""
    path = segment_files(data)[0]
    raw = path.read_bytes()
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert v.verify_all() == []  # the reader now holds the file open
        missed = []
        for off in (0, 8, 12, 20, 28):
            with open(path, "r+b") as f:
                f.seek(off)
                f.write(bytes([raw[off] ^ 0x01]))
            if not v.verify_all():
                missed.append(off)
            path.write_bytes(raw)
    assert missed == [], f"header bytes {missed} changed under a running vault passed verify_all"


# -- record-level tampers -------------------------------------------------------------------


def _audio_of(data: Path, call_id: str) -> list[tuple[int, int, int, int, bytes]]:
    found = [r for r in records(data) if r[3] == 2 and call_id.encode() in r[4][12:40]]
    assert len(found) == RECORDS
    return found


def _put(data: Path, seg: int, off: int, framed: bytes) -> None:
    path = data / "segments" / f"{seg:016x}.seg"
    raw = bytearray(path.read_bytes())
    raw[off : off + len(framed)] = framed
    path.write_bytes(raw)


def test_records_swapped_in_place_in_the_segments_are_detected(data: Path) -> None:
    a = _audio_of(data, "call-a")
    assert a[1][2] == a[2][2]  # equal lengths: the CRCs stay valid, only the chain sees it
    _put(data, a[1][0], a[1][1], a[2][4])
    _put(data, a[2][0], a[2][1], a[1][4])
    problems, _ = problems_of(data)
    assert names(problems, "call-a", 1), problems


def test_reordered_index_entries_are_detected(data: Path) -> None:
    e = index_entries(data, "call-b")

    def swap(ix: Index, wb: object) -> None:
        wb.put(record_key(TENANT, "call-b", 0), e[1].pack(), ix.cf("records"))  # type: ignore
        wb.put(record_key(TENANT, "call-b", 1), e[0].pack(), ix.cf("records"))  # type: ignore

    edit_index(data, swap)
    problems, _ = problems_of(data)
    assert names(problems, "call-b", 0), problems


def test_a_record_duplicated_over_the_next_one_is_detected(data: Path) -> None:
    a = _audio_of(data, "call-c")
    _put(data, a[3][0], a[3][1], a[2][4])  # record 2's bytes twice, record 3 gone
    problems, _ = problems_of(data)
    assert names(problems, "call-c", 3), problems


def test_a_duplicated_index_entry_is_detected(data: Path) -> None:
    e = index_entries(data, "call-a")

    def dup(ix: Index, wb: object) -> None:
        wb.put(record_key(TENANT, "call-a", 2), e[1].pack(), ix.cf("records"))  # type: ignore

    edit_index(data, dup)
    problems, _ = problems_of(data)
    assert names(problems, "call-a", 2), problems


def test_a_record_replayed_at_the_segment_tail_is_detected(data: Path) -> None:
    """A verbatim copy of an acknowledged record appended to the last segment: its
    CRC is valid, so recovery re-indexes it as if it were new. The vault must
    report it (a record of a sealed call, or a chain index it already has)."""
    a = _audio_of(data, "call-a")
    last = segment_files(data)[-1]
    with open(last, "ab") as f:
        f.write(a[1][4])
    out = check(data)
    assert out.how, "a replayed record of a sealed call passed unnoticed"


def test_a_deleted_index_entry_is_detected(data: Path) -> None:
    def delete(ix: Index, wb: object) -> None:
        wb.delete(record_key(TENANT, "call-b", 1), ix.cf("records"))  # type: ignore

    edit_index(data, delete)
    problems, _ = problems_of(data)
    assert names(problems, "call-b", 1), problems


def test_the_deleted_last_record_of_a_sealed_call_is_detected(data: Path) -> None:
    def delete(ix: Index, wb: object) -> None:
        wb.delete(record_key(TENANT, "call-b", RECORDS - 1), ix.cf("records"))  # type: ignore

    edit_index(data, delete)
    problems, _ = problems_of(data)
    assert any(p.what == "call call-b" for p in problems), problems


def test_a_record_cut_out_of_a_segment_is_detected(data: Path) -> None:
    a = _audio_of(data, "call-b")
    seg, off, length, _, _ = a[1]
    path = data / "segments" / f"{seg:016x}.seg"
    raw = path.read_bytes()
    path.write_bytes(raw[:off] + raw[off + length :])
    out = check(data)
    assert out.how, "a record cut out of its segment passed unnoticed"
    problems, _ = problems_of(data)
    assert names(problems, "call-b", 1), problems


def test_a_record_spliced_in_from_another_call_is_detected(data: Path) -> None:
    a, c = _audio_of(data, "call-a"), _audio_of(data, "call-c")
    assert a[2][2] == c[2][2]
    _put(data, a[2][0], a[2][1], c[2][4])  # call-c's record 2, CRC valid, in call-a's place
    problems, _ = problems_of(data)
    assert names(problems, "call-a", 2), problems
    assert any("spliced" in p.reason for p in problems), problems


def test_an_index_entry_pointing_into_another_call_is_detected(data: Path) -> None:
    c = index_entries(data, "call-c")

    def splice(ix: Index, wb: object) -> None:
        wb.put(record_key(TENANT, "call-a", 3), c[3].pack(), ix.cf("records"))  # type: ignore

    edit_index(data, splice)
    problems, _ = problems_of(data)
    assert names(problems, "call-a", 3), problems


@pytest.mark.parametrize("which", ["first", "last"])
def test_a_segment_truncated_inside_a_record_is_detected(data: Path, which: str) -> None:
    audio = _audio_of(data, "call-a") + _audio_of(data, "call-c")
    seg_ids = sorted({r[0] for r in records(data)})
    target = seg_ids[0] if which == "first" else seg_ids[-1]
    cands = [r for r in audio if r[0] == target]
    if not cands:  # the last segment may hold only a seal: cut that record instead
        cands = [r for r in records(data) if r[0] == target]
    seg, off, length, _, framed = cands[-1]
    path = data / "segments" / f"{seg:016x}.seg"
    os.truncate(path, off + length // 2)
    out = check(data)
    assert out.how, f"segment {seg} cut inside the record at {off} passed unnoticed"
    if out.how == "open":  # the last segment: the writer refuses its damaged tail
        assert "torn tail" in out.detail and f"{seg:016x}" in out.detail, out.detail
        return
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert v.report.truncated is None  # below the acknowledged end: damage, never truncated
        assert v.report.damage
        problems = v.verify_all()
    call_id = framed[12 + 3 + len(TENANT) : 12 + 3 + len(TENANT) + 6].decode()
    assert any(p.what == f"call {call_id}" for p in problems), problems


def test_bit_rot_in_the_last_acknowledged_record_leaves_the_vault_openable(data: Path) -> None:
    """Bug found here: one flipped byte in the last record of the last segment (an
    acknowledged record, below the index's known end) is rightly not truncated by
    recovery (it reports damage), but SegmentWriter._open_tail then rescans that
    segment without the known end, calls it a torn tail and raises, so Vault.open
    fails: the whole vault is unreadable and verify cannot name the damaged call.
    DESIGN.md: damage before the last acknowledgement fails closed for the calls
    concerned."""
    seg, off, length, _, framed = records(data)[-1]
    path = data / "segments" / f"{seg:016x}.seg"
    raw = bytearray(path.read_bytes())
    raw[off + length - 5] ^= 0x01
    path.write_bytes(raw)
    try:
        v = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    except CallvaultError:
        release_leaked_open(data)
        raise
    with v:
        assert v.report.damage and v.report.truncated is None
        problems = v.verify_all()
    call_id = framed[12 + 3 + len(TENANT) : 12 + 3 + len(TENANT) + 6].decode()
    assert any(p.what == f"call {call_id}" for p in problems), problems


def test_a_failed_open_releases_the_data_directory(data: Path) -> None:
    """Regression (bug found here): when Vault.__init__ raised after taking
    DATA/LOCK it closed neither the lock descriptor nor the index and log, so
    every later open in the process failed with "open in another process".
    Here the open fails last, with index, log and segment writer open: the
    checkpoint signing key is readable by others, which the signer refuses."""
    key = data / "keys" / "checkpoint-signer.key"
    key.chmod(0o644)
    with pytest.raises(CallvaultError, match="want 600"):
        Vault.open(data, segment_bytes=SEGMENT_BYTES)
    key.chmod(0o600)
    gc.collect()
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert v.verify_all() == []


# -- no plaintext --------------------------------------------------------------------------


def test_no_file_under_data_holds_the_customer_number_or_audio_in_plaintext(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pcm = (
        np.sin(np.arange(50 * 160) * 0.07) * 9000
        + np.random.default_rng(3).normal(0, 800, 50 * 160)
    ).astype(np.int16)
    opus, lengths = _opus.Encoder(bitrate=12000).encode_frames(pcm.reshape(-1, 160))
    noise = random.Random(11).randbytes(600)
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        w = v.open_call("plain-1", tenant=TENANT, customer_number=NUMBER, agent="ann")
        w.append_leg(0, lengths, opus)
        w.append(1, 0, np.full(50, 12, dtype=np.int32), noise).result()
        w.seal(frames=len(lengths))
        assert v.customer_number("plain-1", tenant=TENANT) == NUMBER
    runs = set()
    for blob in (opus, noise):
        for i in range(len(blob) - 7):
            run = blob[i : i + 8]
            if len(set(run)) >= 4:  # leave out runs like 8 zero bytes found anywhere
                runs.add(run)
    assert len(runs) > 500
    needles = [NUMBER.encode(), NUMBER[1:].encode(), NUMBER.encode("utf-16-le")]
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.parent.name == "index" for p in files) and any(p.suffix == ".seg" for p in files)
    for p in files:
        raw = p.read_bytes()
        for needle in needles:
            assert needle not in raw, f"{p} holds the customer number"
        hits = [raw[i : i + 8] for i in range(len(raw) - 7) if raw[i : i + 8] in runs]
        assert hits == [], f"{p} holds audio in plaintext: {hits[:3]}"


def test_the_index_holds_only_the_sealed_customer_number(data: Path) -> None:
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        e = v.get_call("call-a", tenant=TENANT)
        assert e.customer_number_sealed and NUMBER not in e.pack().decode()
        assert v.customer_number("call-a", tenant=TENANT) == NUMBER
    assert struct.calcsize(">BBHIQQI") == 28  # the RecordEntry layout the edits above rely on

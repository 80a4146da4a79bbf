"""Crash safety of the vault with real processes and real files.

Acceptance (issue 3): a child process ingests many concurrent calls and prints
each acknowledgement; it is killed with SIGKILL at >= 100 random points; after
each restart every acknowledged frame is present and every chain verifies.

The child is tests/e2e/vault_child.py. A SIGKILL keeps the page cache, so
these tests cover the process-crash half of durability (acknowledge only after
fsync and index write, recover a writer killed mid-group or between the segment
fsync and the index write); the power-loss half is tests/store/test_segment.py with
FaultyFS.crash(). The fsync-error test runs in process with FaultyFS.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from callvault.integrity import chain as chainmod
from callvault.integrity import checkpoint
from callvault.store.fs import FaultyFS
from callvault.store.segment import FOOTER_RECORD_SIZE, TYPE_FOOTER, SegmentWriter, StoreError
from callvault.vault import Vault
from tests.e2e.vault_child import (
    FRAMES_PER_RECORD,
    SEGMENT_BYTES,
    TENANTS,
    packets_for,
)

# 100 per CI run (the floor); `make stress` sets CALLVAULT_STRESS_KILLS for more
KILLS = int(os.environ.get("CALLVAULT_STRESS_KILLS", "100"))
DELAY_S = (0.020, 0.400)
# A full check (contents, chains, verify) of every call every 25 kills and at the end; the
# calls of the children since the last check are fully checked at every check.
FULL_CHECK_EVERY = 25
TEAR_EVERY = 5  # every 5th kill, the test adds half a record to the tail before it opens
SKIP_OPEN_EVERY = 3  # every 3rd kill the next child, not the test, recovers the torn store
ROOT = Path(__file__).resolve().parents[2]

CallKey = tuple[str, str]


@dataclass
class Acked:
    """Everything the children acknowledged, per call."""

    records: dict[CallKey, dict[int, tuple[int, int, int, bytes]]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # chain index -> leg, first, frames, head
    sealed: dict[CallKey, str] = field(default_factory=dict)

    def add(self, out: bytes) -> set[CallKey]:
        """Parse a child's stdout; a last line without its newline is ignored."""
        touched: set[CallKey] = set()
        for line in out.split(b"\n")[:-1]:
            parts = line.decode().split()
            if parts[0] == "ACK":
                tenant, call_id = parts[1], parts[2]
                leg, first, frames, index = (int(x) for x in parts[3:7])
                key = (tenant, call_id)
                assert index not in self.records[key], f"{key} record {index} acked twice"
                self.records[key][index] = (leg, first, frames, bytes.fromhex(parts[7]))
                touched.add(key)
            elif parts[0] == "SEALED":
                key = (parts[1], parts[2])
                assert key not in self.sealed, f"{key} sealed twice"
                self.sealed[key] = parts[3]
                touched.add(key)
            else:
                assert parts == ["READY"], line
        return touched


def run_child(data: Path, seed: int, delay: float, *, from_spawn: bool) -> tuple[bytes, bytes]:
    """Start a child, SIGKILL it ``delay`` seconds after it is READY (or after its
    spawn), read its pipes to EOF and return (stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.vault_child", str(data), str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdout is not None
    head = b""
    try:
        if not from_spawn:
            head = proc.stdout.readline()  # unbuffered: reads nothing past the line
            assert head == b"READY\n", (head, proc.stderr.read() if proc.stderr else b"")
        try:
            out, err = proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)  # keeps what was read before the timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    return head + out, err


def tear_tail(data: Path, rng: random.Random) -> tuple[int, int, int] | None:
    """Append half a record (a torn write of an unacknowledged group) to the last
    segment unless it is closed; returns (segment, offset, bytes added)."""
    names = sorted(os.listdir(data / "segments"))
    path = data / "segments" / names[-1]
    raw = path.read_bytes()
    tail = raw[-FOOTER_RECORD_SIZE:]
    if len(raw) < 32 or (
        len(raw) >= 32 + FOOTER_RECORD_SIZE
        and tail[8] == TYPE_FOOTER
        and tail[4:8] == b"\x20\0\0\0"
    ):
        return None  # a closed segment is never appended to; a torn header is left as it is
    body = rng.randbytes(rng.randrange(40, 400))
    frame = struct.pack("<IIBBH", rng.getrandbits(32), len(body), 2, 0, 0) + body
    cut = frame[: rng.randrange(1, len(frame))]
    with open(path, "ab") as f:
        f.write(cut)
    return int(names[-1].split(".")[0], 16), len(raw), len(cut)


def check_call(v: Vault, acked: Acked, key: CallKey, *, full: bool) -> int:
    """Check one call against its acknowledgements; returns the frames compared."""
    tenant, call_id = key
    e = v.get_call(call_id, tenant=tenant)
    acks = acked.records.get(key, {})
    if acks:
        assert e.records >= max(acks) + 1, f"{key}: acked record {max(acks)}, index has {e.records}"
    if key in acked.sealed:
        assert (e.state, e.seal) == ("sealed", acked.sealed[key]), key
    if not full:
        return 0
    bodies = [raw for _, _, raw in v.stored_records(call_id, tenant=tenant)]
    chain = chainmod.Chain(tenant, call_id)
    heads = [chain.append(b) for b in bodies]
    assert len(heads) == e.records, f"{key}: {len(heads)} stored records, index says {e.records}"
    legs = v.read_packets(call_id, tenant=tenant, to_frame=1 << 30)
    offsets = [np.concatenate(([0], np.cumsum(lengths))) for _, lengths in legs]
    compared = 0
    for index, (leg, first, frames, head) in acks.items():
        assert heads[index] == head, f"{key}: chain head after record {index} differs from its ack"
        want_lengths, want_packets = packets_for(call_id, leg, first, frames)
        data, lengths = legs[leg]
        assert len(lengths) >= first + frames, f"{key}: leg {leg} frames {first}.. missing"
        assert np.array_equal(lengths[first : first + frames], want_lengths), (key, index)
        got = data[offsets[leg][first] : offsets[leg][first + frames]]
        assert got == want_packets, f"{key}: acked record {index} has other packets"
        compared += frames
    assert v.verify_call(call_id, tenant=tenant) == [], key
    return compared


def check_vault(v: Vault, acked: Acked, keys: set[CallKey], *, full: bool) -> int:
    assert v.report.damage == [], v.report.damage
    compared = 0
    for key in acked.records.keys() | acked.sealed.keys():
        compared += check_call(v, acked, key, full=full or key in keys)
    if full:  # also the calls no acknowledgement names (opened, killed before any ack)
        for tenant in TENANTS:
            for e in v.list_calls(tenant=tenant):
                assert v.verify_call(e.call_id, tenant=tenant) == [], (tenant, e.call_id)
        assert v.verify_all() == []
    return compared


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_at_random_points_loses_no_acknowledged_frame(tmp_path: Path) -> None:
    rng = random.Random(20261129)
    data = tmp_path / "data"
    acked = Acked()
    truncated = reindexed = opens = tears = compared = segments = 0
    started = time.monotonic()
    touched: set[CallKey] = set()
    for kill in range(KILLS):
        delay = rng.uniform(*DELAY_S)
        out, _err = run_child(data, kill, delay, from_spawn=kill % 10 == 9)
        touched |= acked.add(out)
        full = kill % FULL_CHECK_EVERY == FULL_CHECK_EVERY - 1 or kill == KILLS - 1
        if kill % SKIP_OPEN_EVERY == SKIP_OPEN_EVERY - 1 and not full:
            continue  # leave the store to the next child's recovery
        torn = tear_tail(data, rng) if kill % TEAR_EVERY == 0 else None
        with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
            opens += 1
            t = v.report.truncated
            if torn is not None:
                seg, off, added = torn  # (a kill may have torn that tail earlier already)
                assert t is not None and t.segment == seg and t.offset <= off, (t, torn)
                assert t.offset + t.dropped == off + added and not t.removed, (t, torn)
                tears += 1
            elif t is not None:  # the kill itself tore a record, or a segment's header
                truncated += 1
                assert (t.offset >= 32 and t.dropped > 0) or (t.removed and t.offset == 0), t
            reindexed += v.report.reindexed
            compared = check_vault(v, acked, touched, full=full)
            segments = len(v._reader.segments())
        touched = set()
        if os.environ.get("VAULT_CRASH_PROGRESS"):
            print(kill, full, f"{time.monotonic() - started:.1f}", flush=True)
    records = sum(len(r) for r in acked.records.values())
    assert records > KILLS  # the children did acknowledge work before dying
    assert compared == sum(f for r in acked.records.values() for _, _, f, _ in r.values())
    assert len(acked.sealed) > 0 and tears > 0
    print(
        f"{KILLS} kills, {records} acked records ({compared} frames), {len(acked.records)} "
        f"calls, {len(acked.sealed)} sealed, {segments} segments, {opens} checks, "
        f"{tears} torn tails added and truncated, {truncated} more torn by a kill, "
        f"{reindexed} records re-indexed, {time.monotonic() - started:.1f} s"
    )


def _run_dying_child(data: Path, mode: str) -> bytes:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.vault_child", str(data), "7", mode],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 9, proc.stderr.decode(errors="replace")
    return proc.stdout


def _check_recorded_call(v: Vault, call_id: str, records: int) -> None:
    legs = v.read_packets(call_id, tenant="acme", to_frame=records * FRAMES_PER_RECORD)
    for leg, (data, lengths) in enumerate(legs):
        want_lengths, want = packets_for(call_id, leg, 0, records * FRAMES_PER_RECORD)
        assert np.array_equal(lengths, want_lengths)
        assert data == want
    assert v.verify_call(call_id, tenant="acme") == []


def test_crash_between_segment_fsync_and_index_write_reindexes_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = _run_dying_child(data, "die-before-index")
    assert b"RECORDED" not in out  # no record of the call was acknowledged
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert v.report.reindexed > 0
        assert v.report.damage == [] and v.report.truncated is None
        e = v.get_call("s7-dying", tenant="acme")
        assert (e.state, e.records) == ("open", 8)
        _check_recorded_call(v, "s7-dying", 4)
        assert v.verify_all() == []
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:  # re-indexed once, not again
        assert v.report.reindexed == 0
        assert v.get_call("s7-dying", tenant="acme").records == 8


def test_crash_between_seal_fsync_and_index_write_keeps_the_seal_and_its_log_leaf(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    out = _run_dying_child(data, "die-before-index-seal")
    assert b"RECORDED" in out and b"SEALED-UNEXPECTEDLY" not in out
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        assert v.report.reindexed == 1  # the seal record
        e = v.get_call("s7-dying", tenant="acme")
        assert (e.state, e.records, e.log_index) == ("sealed", 8, 0)
        assert v.log.size == 1  # one leaf: the re-indexed seal did not append it twice
        _check_recorded_call(v, "s7-dying", 4)
        assert v.verify_all() == []
        manifest = v.manifest("s7-dying", tenant="acme")
        assert manifest["records"] == 8 and manifest["frames"] == 4 * FRAMES_PER_RECORD


def test_fsync_error_stops_every_later_acknowledgement(tmp_path: Path) -> None:
    """Vault.open takes no fs=: the vault's writer is swapped for one on FaultyFS
    (same directory, same on_commit) right after open. Reported to the lead."""
    data = tmp_path / "data"
    faulty = FaultyFS()
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        v._writer.close()
        v._writer = SegmentWriter(
            data / "segments", fs=faulty, segment_bytes=SEGMENT_BYTES, on_commit=v._on_commit
        )
        w = v.open_call("f1", tenant="acme")
        first = [w.append(leg, 0, *packets_for("f1", leg, 0, FRAMES_PER_RECORD)) for leg in (0, 1)]
        acks = [f.result() for f in first]
        faulty.fail_fsync(1, persist=False)  # the next fsync fails once; later ones would pass
        later = []
        for r in range(1, 6):
            for leg in (0, 1):
                later.append(
                    w.append(
                        leg,
                        r * FRAMES_PER_RECORD,
                        *packets_for("f1", leg, r * FRAMES_PER_RECORD, FRAMES_PER_RECORD),
                    )
                )
                time.sleep(0.003)  # spread them over several groups
        errors = [f.exception(timeout=30) for f in later]
        assert all(isinstance(e, StoreError) for e in errors), errors
        assert "fsync" in str(errors[0])
        with pytest.raises(StoreError):  # and a new append, after the failure, too
            w.append(
                0,
                6 * FRAMES_PER_RECORD,
                *packets_for("f1", 0, 6 * FRAMES_PER_RECORD, FRAMES_PER_RECORD),
            ).result()
        with pytest.raises(StoreError):
            w.seal(frames=7 * FRAMES_PER_RECORD)
        with pytest.raises(StoreError):
            v.open_call("f2", tenant="acme")
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:  # recovery: the acked ones are there
        assert v.report.damage == []
        e = v.get_call("f1", tenant="acme")
        assert e.state == "open" and e.records >= 2
        stored = [raw for _, _, raw in v.stored_records("f1", tenant="acme")]
        chain = chainmod.Chain("acme", "f1")
        heads = [chain.append(b) for b in stored]
        for a in acks:
            assert heads[a.chain_index] == a.chain_head
        assert v.verify_all() == []


def test_vault_reopens_when_its_signer_key_has_a_plus_in_base64(tmp_path: Path) -> None:
    """Regression: Signer.open split the key line on every "+" (fixed in a4f4c92), so
    a key whose base64 held a "+" (about half of them) made the second Vault.open
    of a data directory fail."""
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    text = next(
        t
        for i in range(1000)
        if (
            t := checkpoint.Signer.from_seed(
                "callvault", hashlib.sha256(b"%d" % i).digest()
            )._private_text()
        ).count("+")
        > 4
    )
    path = data / "keys" / checkpoint.KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    with Vault.open(data) as v:
        key = v.signer.verifier_key()
    with Vault.open(data) as v:
        assert v.signer.verifier_key() == key

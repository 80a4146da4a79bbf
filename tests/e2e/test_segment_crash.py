"""Real-process crash test of the segment store: SIGKILL at random moments.

Each child process opens a SegmentWriter on the same directory (continuing
what earlier children left), appends from four threads and prints every
acknowledgement (ref and payload id) to stdout as it happens. The parent kills
it with SIGKILL 10-300 ms after it is ready, runs recover() and checks that
every acknowledged record, from this child and all earlier ones, is present
and intact. A SIGKILL keeps the page cache, so this tests the process-crash
half of durability (acknowledge only after the write and fsync returned, no
acknowledgement lost or invented, recovery of a writer killed mid-group); the
power-loss half (unsynced bytes lost) is tests/store/test_segment.py with
FaultyFS.crash().
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from callvault.store.segment import RecordRef, SegmentReader, recover

KILLS = 100
SEGMENT_BYTES = 128 << 10  # small, so that children close and create segments too

CHILD = r"""
import hashlib, os, sys, threading, time
from callvault.store.segment import SegmentWriter

directory, child = sys.argv[1], sys.argv[2]
SEGMENT_BYTES = int(sys.argv[3])


def body_for(pid):
    digest = hashlib.sha256(pid.encode()).digest()
    return digest * (1 + digest[0] % 24)


w = SegmentWriter(directory, segment_bytes=SEGMENT_BYTES, max_delay_ms=1.0)
os.write(1, b"ready\n")


def ack(f, pid, rtype):
    if f.exception() is None:
        ref = f.result()
        os.write(1, f"{ref.segment} {ref.offset} {ref.length} {rtype} {pid}\n".encode())


def worker(t):
    i = 0
    while True:
        pid = f"{child}-{t}-{i}"
        rtype = 1 + t
        f = w.append(rtype, body_for(pid))
        f.add_done_callback(lambda f, pid=pid, rtype=rtype: ack(f, pid, rtype))
        i += 1
        if i % 8 == 0:
            f.result()


for t in range(4):
    threading.Thread(target=worker, args=(t,), daemon=True).start()
time.sleep(30)  # the parent kills us long before
"""


def body_for(pid: str) -> bytes:
    digest = hashlib.sha256(pid.encode()).digest()
    return digest * (1 + digest[0] % 24)


def run_child(directory: Path, child: int, delay: float) -> list[tuple[RecordRef, int, str]]:
    """Start a child, kill it ``delay`` seconds after it is ready, return its acks."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(child), str(SEGMENT_BYTES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        ready = proc.stdout.readline()
        assert ready == b"ready\n", (ready, proc.stderr.read() if proc.stderr else b"")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=delay)  # returns early only if the child died on its own
        proc.send_signal(signal.SIGKILL)
        # read through the same buffered reader as the readline above: communicate()
        # reads the raw pipe and would miss what readline buffered past "ready" (a
        # first acknowledgement cut in two). The child is dead: both reads end at EOF.
        out = proc.stdout.read()
        err = proc.stderr.read() if proc.stderr else b""
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    acks = []
    for line in out.decode().split("\n")[:-1]:  # a line is one write(2): never partial
        seg, off, length, rtype, pid = line.split()
        acks.append((RecordRef(int(seg), int(off), int(length)), int(rtype), pid))
    return acks


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_never_loses_an_acknowledged_record(tmp_path: Path) -> None:
    rng = random.Random(20240531)
    directory = tmp_path / "segments"
    acked: dict[RecordRef, tuple[int, str]] = {}
    truncations = 0
    for child in range(KILLS):
        acks = run_child(directory, child, rng.uniform(0.010, 0.300))
        report = recover(directory)
        assert report.clean, report.damage
        truncations += report.truncated is not None
        with SegmentReader(directory) as reader:
            for ref, rtype, pid in acks:
                assert ref not in acked, f"{ref} acknowledged twice"
                assert reader.read(ref) == (rtype, body_for(pid)), pid
                acked[ref] = (rtype, pid)
    assert len(acked) > KILLS  # the children did acknowledge work before dying
    # at the end: every acknowledgement of every child, in one scan of the store
    with SegmentReader(directory) as reader:
        found = {ref: (rtype, body) for ref, rtype, body in reader.scan()}
    for ref, (rtype, pid) in acked.items():
        assert found[ref] == (rtype, body_for(pid)), pid
    print(
        f"{KILLS} kills, {len(acked)} acknowledged records, {len(found)} records stored, "
        f"{len(reader.segments())} segments, {truncations} torn tails truncated"
    )

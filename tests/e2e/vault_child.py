"""The child process of tests/e2e/test_vault_crash.py: records calls until killed.

    python -m tests.e2e.vault_child DATA SEED [MODE]

MODE ``ingest`` (the default): open the vault on DATA (recovery runs on open),
print ``READY``, then record calls from THREADS threads until killed. Call ids
are ``s<SEED>-t<thread>-<n>``, so a child never reuses an earlier child's id
when each child gets a new SEED. Each call gets RECORDS_PER_LEG records per leg
(both legs interleaved), FRAMES_PER_RECORD frames each, with packets computed by
:func:`packets_for` from (call id, leg, frame), so the parent can recompute and
compare them. Every acknowledgement (the append's future resolved) prints one
line, written with one ``write(2)`` so a line is never interleaved with another::

    ACK <tenant> <call_id> <leg> <first_frame> <frames> <chain_index> <chain_head hex>

Every other call is sealed when its records are acknowledged::

    SEALED <tenant> <call_id> <seal hex>

the others are left open (a call whose recorder went away).

MODE ``die-before-index`` / ``die-before-index-seal``: record one call, but make
the vault's index write of the group commit holding its audio records (or its
seal) end the process with ``os._exit(9)``: the segment bytes are fsynced,
the index does not have them, no acknowledgement was given. The parent reopens
and checks that recovery re-indexes them.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.store.index import Index
from callvault.vault import Ack, Vault

THREADS = 4
FRAMES_PER_RECORD = 5
SEGMENT_BYTES = 16 << 10  # small, so the children close segments and start new ones
WINDOW = 6  # appends a thread keeps in flight before it waits for the oldest
TENANTS = ("acme", "globex")


def tenant_for(thread: int) -> str:
    return TENANTS[thread % len(TENANTS)]


def records_per_leg(call_id: str) -> int:
    return 2 + hashlib.sha256(call_id.encode()).digest()[0] % 7


def packets_for(
    call_id: str, leg: int, first_frame: int, frames: int
) -> tuple[npt.NDArray[np.int32], bytes]:
    """The (lengths, packets) the child stores for frames first_frame.. of a leg:
    a 12 to 59 byte packet per frame, derived from SHA-256 of (call id, leg, frame)."""
    lengths = np.empty(frames, dtype=np.int32)
    parts = []
    for i in range(frames):
        d = hashlib.sha256(f"{call_id}/{leg}/{first_frame + i}".encode()).digest()
        n = 12 + d[0] % 48
        parts.append((d + d)[:n])
        lengths[i] = n
    return lengths, b"".join(parts)


def customer_number_for(call_id: str) -> str:
    return "+1555" + str(int(hashlib.sha256(call_id.encode()).hexdigest(), 16) % 10**7).zfill(7)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line, below PIPE_BUF


def _on_ack(tenant: str, call_id: str) -> Callable[[Future[Ack]], None]:
    def done(f: Future[Ack]) -> None:
        if f.exception() is None:
            a = f.result()
            _say(
                f"ACK {tenant} {call_id} {a.leg} {a.first_frame} {a.frames} "
                f"{a.chain_index} {a.chain_head.hex()}"
            )

    return done


def record_call(v: Vault, tenant: str, call_id: str, *, seal: bool) -> None:
    w = v.open_call(
        call_id,
        tenant=tenant,
        agent=f"agent-{call_id[-1]}",
        customer_number=customer_number_for(call_id),
        tags=["crash"],
    )
    in_flight: list[Future[Ack]] = []
    n = records_per_leg(call_id)
    for r in range(n):
        for leg in (0, 1):
            lengths, packets = packets_for(call_id, leg, r * FRAMES_PER_RECORD, FRAMES_PER_RECORD)
            f = w.append(leg, r * FRAMES_PER_RECORD, lengths, packets)
            f.add_done_callback(_on_ack(tenant, call_id))
            in_flight.append(f)
            if len(in_flight) > WINDOW:
                in_flight.pop(0).result()
    for f in in_flight:
        f.result()
    if seal:
        s = w.seal(
            frames=n * FRAMES_PER_RECORD,
            end_us=w.entry.start_us + n * FRAMES_PER_RECORD * 20_000,
            summary={"child": call_id},
        )
        _say(f"SEALED {tenant} {call_id} {s.hex()}")


def ingest(data: Path, seed: int) -> None:
    v = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    _say("READY")

    def worker(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        n = 0
        while True:
            record_call(v, tenant_for(t), f"s{seed}-t{t}-{n}", seal=rng.random() < 0.5)
            n += 1

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def die_before_index(data: Path, seed: int, *, at_seal: bool) -> None:
    """Record one call; die in the index write after its records (or seal) are fsynced."""
    v = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    call_id = f"s{seed}-dying"
    w = v.open_call(call_id, tenant="acme", agent="agent-x", tags=["crash"])
    real_write = Index.write

    def write_or_die(self: Index, batch: Any) -> None:
        if armed:
            os._exit(9)  # after the segment fsync (on_commit), before the index write
        real_write(self, batch)

    armed = not at_seal
    Index.write = write_or_die  # type: ignore[method-assign]
    futures = []
    for r in range(4):
        for leg in (0, 1):
            lengths, packets = packets_for(call_id, leg, r * FRAMES_PER_RECORD, FRAMES_PER_RECORD)
            futures.append(w.append(leg, r * FRAMES_PER_RECORD, lengths, packets))
    for f in futures:
        f.result()  # only reached with at_seal: the index writes of the audio were allowed
    _say("RECORDED")
    armed = True
    w.seal(frames=4 * FRAMES_PER_RECORD, end_us=w.entry.start_us + 4 * FRAMES_PER_RECORD * 20_000)
    _say("SEALED-UNEXPECTEDLY")  # the seal's index write must have ended the process


def main(argv: list[str]) -> None:
    data, seed = Path(argv[0]), int(argv[1])
    mode = argv[2] if len(argv) > 2 else "ingest"
    if mode == "ingest":
        ingest(data, seed)
    elif mode == "die-before-index":
        die_before_index(data, seed, at_seal=False)
    elif mode == "die-before-index-seal":
        die_before_index(data, seed, at_seal=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])

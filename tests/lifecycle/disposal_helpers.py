"""Shared by the disposal tests: a vault of sealed calls with retention ends set at
seal (Vault.retention_at_seal, as the policy lane wires it), recorded with the
vault's own write path (open_call, append, seal)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from callvault.store.index import CallEntry
from callvault.vault import Vault

SEGMENT_BYTES = 32 << 10  # small: segments close, so a reclaim can free them
PER_RECORD = 10
ROOT = Path(__file__).resolve().parents[2]
DAY_US = 86_400 * 1_000_000


def packets(call_id: str, leg: int, first: int, n: int) -> tuple[np.ndarray, bytes]:
    lengths = np.empty(n, dtype=np.int32)
    parts = []
    for i in range(n):
        d = hashlib.sha256(f"{call_id}/{leg}/{first + i}".encode()).digest()
        k = 20 + d[0] % 40
        parts.append((d * 3)[:k])
        lengths[i] = k
    return lengths, b"".join(parts)


def retention(until_us: int, mode: str = "default", rule: str = "r") -> dict[str, Any]:
    return {"until_us": until_us, "rule": rule, "mode": mode, "set_us": until_us - DAY_US}


def record(
    v: Vault,
    calls: dict[str, dict[str, Any] | None],
    frames: int = 300,
    tenant: str = "default",
) -> None:
    """Record and seal the calls (id -> retention dict or None), one after another."""
    keep = v.retention_at_seal

    for call_id, ret in calls.items():
        v.retention_at_seal = lambda e, end, r=ret: r
        w = v.open_call(call_id, tenant=tenant, legs=["agent", "customer"], agent="ann")
        fs = [
            w.append(leg, first, *packets(call_id, leg, first, PER_RECORD))
            for first in range(0, frames, PER_RECORD)
            for leg in (0, 1)
        ]
        for f in fs:
            f.result()
        w.seal(summary={"legs": []}, frames=frames)
    v.retention_at_seal = keep


def entry(v: Vault, call_id: str, tenant: str = "default") -> CallEntry:
    return v.get_call(call_id, tenant=tenant)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "engine"), str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")]
    )
    return env

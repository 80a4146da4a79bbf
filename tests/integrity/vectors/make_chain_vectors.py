"""Write tests/integrity/vectors/chain/*.json: callvault's own per-call chain vectors.

Each file is named after the tamper it applies to a valid call (like the
transparency-dev/merkle vectors): the records as stored, the heads and seal
recorded when the call was written (from the untampered records), the
manifest, and ``wantErr``. Deterministic: running this again writes the same
files. Run: .venv/bin/python -m tests.integrity.vectors.make_chain_vectors
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from callvault.integrity.chain import Chain

OUT = Path(__file__).parent / "chain"
TENANT, CALL = "acme", "call-0001"


def record(i: int, call: str = CALL) -> bytes:
    """Stand-in ciphertext: deterministic bytes of varying length."""
    return b"".join(hashlib.sha256(f"{call}/{i}/{k}".encode()).digest() for k in range(1 + i % 3))


def main() -> None:
    records = [record(i) for i in range(6)]
    manifest = json.dumps(
        {"tenant": TENANT, "call_id": CALL, "legs": ["agent", "customer"]}, sort_keys=True
    ).encode()
    chain = Chain(TENANT, CALL)
    heads = [chain.append(r).hex() for r in records]
    sealed = chain.seal(manifest).hex()
    flipped = bytearray(records[2])
    flipped[5] ^= 0x01
    tampers: dict[str, tuple[list[bytes], bytes, bool, str]] = {
        "valid": (records, manifest, False, ""),
        "reordered-records": (
            [records[0], records[2], records[1], *records[3:]],
            manifest,
            True,
            "record 1",
        ),
        "duplicated-record": ([*records[:3], records[2], *records[3:]], manifest, True, "record 3"),
        "deleted-record": ([*records[:2], *records[3:]], manifest, True, "record 2"),
        "deleted-last-record": (records[:-1], manifest, True, "missing"),
        "extra-record": ([*records, record(6)], manifest, True, "extra record"),
        "spliced-record-from-another-call": (
            [*records[:4], record(4, "call-0002"), records[5]],
            manifest,
            True,
            "record 4",
        ),
        "truncated-record": (
            [*records[:3], records[3][:-1], *records[4:]],
            manifest,
            True,
            "record 3",
        ),
        "flipped-byte": ([*records[:2], bytes(flipped), *records[3:]], manifest, True, "record 2"),
        "modified-manifest": (records, manifest.replace(b"agent", b"agenT"), True, "seal"),
    }
    OUT.mkdir(exist_ok=True)
    for name, (recs, man, want_err, err) in tampers.items():
        doc = {
            "tenant": TENANT,
            "callId": CALL,
            "records": [r.hex() for r in recs],
            "heads": heads,
            "manifest": man.hex(),
            "seal": sealed,
            "wantErr": want_err,
            "errContains": err,
        }
        (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

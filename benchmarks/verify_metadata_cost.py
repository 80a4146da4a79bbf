"""What checking metadata as evidence costs verify (docs/format.md 8.14): CPU time of
``Vault.verify_call`` over every call of a fresh vault, with the metadata part
(index entry and OPEN record against the manifest, the lifecycle chain replayed)
and without it (``verify_metadata`` replaced by a no-op), interleaved, medians of
5 rounds. Half the calls carry two tag changes (LIFECYCLE records).

    PYTHONPATH=engine:clients/python python -m benchmarks.verify_metadata_cost \
        [--calls 100] [--records 150]

Not a pytest benchmark (`make bench` does not run it).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from callvault.lifecycle.tags import retag
from callvault.vault import Vault
from callvault.vault.verify import Verification

FRAMES = 50  # per record


def build(data: Path, calls: int, records: int) -> None:
    with Vault.open(data) as v:
        for i in range(calls):
            w = v.open_call(f"c{i}", agent="ann", tags=["a"], extra={"k": "v"})
            for r in range(records):
                lengths = np.full(FRAMES, 40, dtype=np.int32)
                w.append(r % 2, (r // 2) * FRAMES, lengths, bytes(40 * FRAMES)).result()
            w.seal(frames=(records + 1) // 2 * FRAMES, summary={})
            if i % 2 == 0:
                retag(v, f"c{i}", add=["x"], policy=None)
                retag(v, f"c{i}", add=["y"], policy=None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--records", type=int, default=150, help="audio records per call")
    a = p.parse_args()
    data = Path(tempfile.mkdtemp(prefix="verify-metadata-")) / "data"
    build(data, a.calls, a.records)
    real = Verification.verify_metadata
    times: dict[bool, list[float]] = {False: [], True: []}
    with Vault.open(data) as v:
        for _ in range(5):
            for with_metadata in (False, True):
                Verification.verify_metadata = (  # type: ignore[method-assign]
                    real if with_metadata else (lambda self, e: [])
                )
                t = time.process_time()
                for i in range(a.calls):
                    assert v.verify_call(f"c{i}") == []
                times[with_metadata].append(time.process_time() - t)
    Verification.verify_metadata = real  # type: ignore[method-assign]
    base, meta = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"verify_call x{a.calls} ({a.records} records each), CPU s (median of 5): "
        f"audio checks only {base:.3f}, with metadata {meta:.3f}, ratio {meta / base:.3f}"
    )


if __name__ == "__main__":
    main()

"""The child process of tests/e2e/test_compact_crash.py: compacts one call and kills
itself with SIGKILL at a chosen step of the compaction.

    python -m tests.e2e.compact_child DATA CALL_ID STEP N

STEP is a step name ``vault.compact.compact_call`` reports ("encoded",
"opus-record", "opus-written", "transcode-written"); the process SIGKILLs itself
the N-th time (from 1) that step is reached. STEP ``none`` compacts to the end.
"""

from __future__ import annotations

import os
import signal
import sys

from callvault.vault import Vault
from callvault.vault.compact import compact_call


def main() -> None:
    data, call_id, step, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    seen = 0

    def at(name: str) -> None:
        nonlocal seen
        if name == step:
            seen += 1
            if seen == n:
                os.kill(os.getpid(), signal.SIGKILL)

    v = Vault.open(data)
    compact_call(v, call_id, step=at)
    v.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()

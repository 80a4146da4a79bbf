"""What the audit trail costs a unary RPC (docs/access.md "Audit trail"): Admin.Stats
against a real `callvault serve` with ``[audit] sync = "group"`` (the default) and
``sync = "always"``, beside a server without a trail (``--baseline PATH``: a checkout
of callvault before the trail, e.g. main's) in the same run. Reports the server's
CPU time per RPC (from /proc/PID/stat) and the client's median and p99 latency.

    PYTHONPATH=engine:clients/python python -m benchmarks.audit_cost [--baseline /work/main]

Not a pytest benchmark (`make bench` does not run it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from callvault_client import Client

from tests.servers import start_server


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(mode: str, baseline: str, n: int) -> tuple[float, float, float]:
    """(server CPU µs per RPC, median µs, p99 µs) of n Stats RPCs."""
    d = Path(tempfile.mkdtemp(prefix="audit-cost-"))
    env: dict[str, str] = {}
    args: tuple[str, ...] = ()
    if mode == "none":
        env["PYTHONPATH"] = f"{baseline}/engine:{baseline}/clients/python"
    else:
        cfg = d / "policy.toml"
        cfg.write_text(f'[audit]\nsync = "{mode}"\n')
        args = ("--config", str(cfg))
    srv = start_server(d / "data", args=args, env=env)
    try:
        with Client(srv.address) as c:
            for _ in range(300):  # warm up
                c.stats()
            before = cpu_s(srv.proc.pid)
            lat = []
            for _ in range(n):
                t = time.perf_counter()
                c.stats()
                lat.append(time.perf_counter() - t)
            used = cpu_s(srv.proc.pid) - before
    finally:
        srv.stop()
    lat.sort()
    return used / n * 1e6, statistics.median(lat) * 1e6, lat[int(n * 0.99)] * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help="a callvault checkout without the audit trail")
    p.add_argument("--rpcs", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    modes = (["none"] if a.baseline else []) + ["group", "always"]
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    for _ in range(a.rounds):  # interleaved: the machine's noise hits every mode
        for m in modes:
            results[m].append(run(m, a.baseline or "", a.rpcs))
    for m, rs in results.items():
        cells = " | ".join(
            f"cpu/rpc {c:.0f} us, median {m_:.0f} us, p99 {p_:.0f} us" for c, m_, p_ in rs
        )
        print(f"{m:>6}: {cells}")


if __name__ == "__main__":
    main()

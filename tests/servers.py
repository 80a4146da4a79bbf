"""Real callvault processes for tests: `callvault serve` on a loopback port.

``run_cli(*args)`` runs the `callvault` command once. A test starts what it
needs and stops it: ``start_server(data)`` runs the
server as a child process on 127.0.0.1 with port 0 (the kernel picks a free
port; the server writes it to a port file once it serves) and waits until the
gRPC health service says SERVING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CLI = [sys.executable, "-m", "callvault.cli"]


def run_cli(*args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`callvault ARGS...` as a child process, its output as text; with ``ok``, it
    must exit 0 (else the test fails with its stderr)."""
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


@dataclass
class Proc:
    """A running child process with a gRPC address (host:port)."""

    proc: subprocess.Popen[bytes]
    address: str
    log: Path
    data: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the process and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"process did not exit {timeout} s after signal {sig}; log:\n{self.output()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL: nothing runs on the way out."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_port_file(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0
) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().strip())
        if proc.poll() is not None:
            raise AssertionError(
                f"process exited with {proc.returncode} before serving:\n"
                f"{log.read_text(errors='replace')}"
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no port file after {timeout} s:\n{log.read_text(errors='replace')}")


def wait_healthy(address: str, timeout: float = 30.0, service: str = "") -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{address} not SERVING after {timeout} s")
            time.sleep(0.05)


def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    cli: Sequence[str] = tuple(CLI),
) -> Proc:
    """`callvault ARGV... --port-file FILE` as a child process, its output in
    ``log_dir``/NAME-N.log (N: the next free number); returns once it wrote its port
    (the address is 127.0.0.1 and that port)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(log_dir.glob(f"{name}-*.log")))
    log = log_dir / f"{name}-{n}.log"
    port_file = log_dir / f"{name}-{n}.port"
    port_file.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*cli, *argv, "--port-file", str(port_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    port = wait_port_file(port_file, proc, log)
    return Proc(proc, f"127.0.0.1:{port}", log)


def start_server(
    data: Path,
    *,
    port: int = 0,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
    cli: tuple[str, ...] = tuple(CLI),
) -> Proc:
    """`callvault serve --data DATA` on 127.0.0.1, ``port`` (0: a free one; give the old
    port to restart a server where its clients expect it); returns once SERVING."""
    argv = ["serve", "--data", str(data), "--listen", f"127.0.0.1:{port}", *args]
    proc = spawn("server", argv, log_dir or data.parent, env=env, cli=cli)
    wait_healthy(proc.address)
    proc.data = data
    return proc

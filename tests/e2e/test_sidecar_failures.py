"""A failure of one call ends that call alone, with real processes: `callvault serve`,
`callvault sidecar`, `callvault call start|stop|ls`, RTP over loopback UDP.

The issue's first report is replayed first: a sidecar with a fresh spool is asked to
record a call id the server has sealed already. It used to kill the receive thread
(EBADF in the spool's write: the forwarder's Sealed deleted the spool while the call
was still receiving) and every later `call start` answered "the sidecar is shutting
down". Now the id is refused at `call start` when the server can say it exists, and
when it cannot (server down at the start) the call fails alone once the server
answers, with its reason in `call stop`, `call ls` and the log.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import grpc
import pytest
from callvault_client import Client, SidecarClient, errors
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.sidecar_procs import (
    call_start,
    call_state,
    call_stop,
    list_calls,
    rtp_range,
    send_rtp,
    start_sidecar,
    wait_sealed,
    wait_state,
)
from tests.servers import Proc, run_cli, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _record(sidecar: Proc, call_id: str, seconds: float = 1.0, seed: int = 0) -> None:
    ports = call_start(sidecar, call_id)
    send_rtp(ports, seconds, seed=seed)
    call_stop(sidecar, call_id)
    wait_sealed(sidecar, call_id)


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(r.status)


def test_a_call_id_the_server_has_sealed_fails_alone_on_a_fresh_sidecar(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    server = start_server(tmp_path / "data", log_dir=logs)
    rtp = rtp_range()
    first = start_sidecar(server.address, tmp_path / "spool-a", rtp, logs)
    try:
        _record(first, "X1", seed=1)
    finally:
        assert first.stop() == 0
    with Client(server.address) as c:
        sealed_before = c.get_call("X1")
    assert sealed_before.state == "sealed"

    # A restarted sidecar (fresh spool) asked for the same id while the server is up:
    # refused at the start, no ports.
    sidecar = start_sidecar(server.address, tmp_path / "spool-b", rtp, logs)
    try:
        p = run_cli("call", "start", "--sidecar", sidecar.address, "--call-id", "X1", ok=False)
        assert p.returncode == 1 and p.stdout == "", p.stdout + p.stderr
        assert "call X1 already exists on the server (sealed); use a new call id" in p.stderr
        assert list_calls(sidecar) == []

        # The server is down at the start: the sidecar cannot ask and accepts the call;
        # once the server is back it answers for X1, and X1 fails alone.
        server.stop()
        ports = call_start(sidecar, "X1")
        server = start_server(tmp_path / "data", port=server.port, log_dir=logs)
        send_rtp(ports, 1.0, seed=2)
        failed = wait_state(sidecar, "X1", "failed")
        # The server's own refusal: this sidecar's recording_id is not the one X1 was
        # recorded with (a permanent ALREADY_EXISTS, never retried).
        assert failed.reason.startswith(
            "the server refused the call: ALREADY_EXISTS: call X1 already exists (sealed) "
            "and was recorded by another recording"
        ), failed.reason
        assert not list((tmp_path / "spool-b").glob("*X1*")), "the refused call's spool stays"

        # The receiver, new calls and their recordings go on.
        assert sidecar.alive()
        _record(sidecar, "Y1", seed=3)
        stop = run_cli("call", "stop", "--sidecar", sidecar.address, "--call-id", "X1", ok=False)
        assert stop.returncode == 1, stop.stdout + stop.stderr
        out = json.loads(stop.stdout)
        assert out["state"] == "failed" and out["reason"] == failed.reason
        assert stop.stderr.startswith(f"callvault: error: call X1 failed: {failed.reason}")

        ls = run_cli("call", "ls", "--sidecar", sidecar.address, "--json")
        listed = json.loads(ls.stdout)
        assert listed["health"] == "SERVING"
        states = {c["call_id"]: (c["state"], c["reason"]) for c in listed["calls"]}
        assert states == {"X1": ("failed", failed.reason), "Y1": ("sealed", "")}
        assert listed["backlog"] == {"calls": 0, "batches_unacked": 0, "spool_bytes": 0}
        table = run_cli("call", "ls", "--sidecar", sidecar.address).stdout
        assert table.startswith(f"sidecar {sidecar.address}: SERVING; backlog 0 calls"), table
        assert failed.reason in table.splitlines()[2], table

        with Client(server.address) as c:
            assert c.get_call("Y1").state == "sealed"
            assert [r.ok for r in c.verify(["X1", "Y1"])] == [True, True]
            after = c.get_call("X1")
        # What the server sealed first is untouched.
        assert (after.state, after.frames, after.log_index) == (
            sealed_before.state,
            sealed_before.frames,
            sealed_before.log_index,
        )
    finally:
        code = sidecar.stop()
        server.stop()
    log = sidecar.output()
    assert code == 0, log
    assert "Traceback" not in log and "Bad file descriptor" not in log, log
    assert "shutting down" not in log, log
    assert log.count("ERROR call X1 failed") == 1, log


def test_what_the_server_would_refuse_is_refused_at_call_start(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    server = start_server(tmp_path / "data", log_dir=logs)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), logs)
    try:
        with SidecarClient(sidecar.address) as sc:
            for kwargs, message in [
                ({"call_id": "c1", "tenant": "bad tenant"}, "tenant 'bad tenant': use"),
                ({"call_id": "c1", "legs": ["agent", "a b"]}, "leg name 'a b': use"),
                ({"call_id": "bad id"}, "call_id 'bad id': use"),
                ({"call_id": "c1", "legs": ["a", "a"]}, "distinct"),
            ]:
                with pytest.raises(errors.InvalidArgument) as e:
                    sc.start_call(**kwargs)  # type: ignore[arg-type]
                assert message in e.value.message, e.value.message
            assert sc.list_calls() == []
            # A good call afterwards gets the ports the refused ones never took.
            ports = sc.start_call("c1")
            assert len(ports) == 2
            sc.stop_call("c1")
        wait_sealed(sidecar, "c1")
    finally:
        sidecar.stop()
        server.stop()


def test_health_follows_the_spool_directory_and_call_ls_shows_the_backlog(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    spool = tmp_path / "spool"
    server = start_server(tmp_path / "data", log_dir=logs)
    sidecar = start_sidecar(server.address, spool, rtp_range(), logs)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        assert _health(sidecar.address) == serving
        # The server goes away: a call is spooled and waits; call ls shows the backlog.
        server.stop()
        ports = call_start(sidecar, "B1")
        send_rtp(ports, 0.5, seed=4)
        call_stop(sidecar, "B1")
        listed = json.loads(run_cli("call", "ls", "--sidecar", sidecar.address, "--json").stdout)
        backlog = listed["backlog"]
        (b1,) = listed["calls"]
        assert b1["state"] == "forwarding" and b1["batches"] > 0 and b1["acked"] == 0
        assert backlog["calls"] == 1 and backlog["batches_unacked"] == b1["batches"]
        assert backlog["spool_bytes"] == b1["spool_bytes"] > 0
        assert listed["health"] == "SERVING"

        # The spool directory cannot be written (gone, a file in its place): NOT_SERVING,
        # and a new call is refused with the reason; back when it can be written again.
        moved = tmp_path / "spool-moved"
        spool.rename(moved)
        spool.write_bytes(b"")
        deadline = time.monotonic() + 30
        while _health(sidecar.address) != not_serving:
            assert time.monotonic() < deadline, sidecar.output()
            time.sleep(0.1)
        p = run_cli("call", "start", "--sidecar", sidecar.address, "--call-id", "B2", ok=False)
        assert p.returncode == 1 and "cannot be written" in p.stderr, p.stderr
        ls = run_cli("call", "ls", "--sidecar", sidecar.address).stdout
        assert ls.startswith(f"sidecar {sidecar.address}: NOT_SERVING; backlog 1 calls"), ls
        spool.unlink()
        moved.rename(spool)
        while _health(sidecar.address) != serving:
            assert time.monotonic() < deadline, sidecar.output()
            time.sleep(0.1)

        # The server is back: the backlog drains.
        server = start_server(tmp_path / "data", port=server.port, log_dir=logs)
        wait_sealed(sidecar, "B1")
        assert call_state(sidecar, "B1") is not None
        listed = json.loads(run_cli("call", "ls", "--sidecar", sidecar.address, "--json").stdout)
        assert listed["backlog"] == {"calls": 0, "batches_unacked": 0, "spool_bytes": 0}
    finally:
        if not spool.is_dir():
            spool.unlink(missing_ok=True)
            if (tmp_path / "spool-moved").exists():
                shutil.move(tmp_path / "spool-moved", spool)
        sidecar.stop()
        server.stop()
    log = sidecar.output()
    assert log.count("NOT_SERVING: the spool directory") == 1, log


def test_one_empty_datagram_never_keeps_a_call_forwarding(tmp_path: Path) -> None:
    """The issue's adversarial case: one empty UDP datagram to a leg's port. The server
    refuses such a batch for good; the sidecar must not resend it forever: the call
    either never forwards it (the sidecar's own checks count it as invalid and the call
    seals) or ends failed with the server's reason after one stream. Either way its
    spool goes, the log stays quiet and the next call is recorded."""
    logs = tmp_path / "logs"
    spool = tmp_path / "spool"
    server = start_server(tmp_path / "data", log_dir=logs)
    sidecar = start_sidecar(server.address, spool, rtp_range(), logs)
    try:
        ports = call_start(sidecar, "E1")
        send_rtp(ports, 0.5, seed=5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"", ("127.0.0.1", ports["agent"]))
        send_rtp(ports, 0.5, seed=6)
        stop = run_cli("call", "stop", "--sidecar", sidecar.address, "--call-id", "E1", ok=False)
        deadline = time.monotonic() + 60
        while (c := call_state(sidecar, "E1")) is None or c.state not in ("sealed", "failed"):
            assert time.monotonic() < deadline, (c, sidecar.output())
            time.sleep(0.1)
        if c.state == "failed":
            assert c.reason.startswith("the server refused the call: INVALID_ARGUMENT"), c
            stopped = json.loads(stop.stdout)
            assert stop.returncode in (0, 1) and stopped["batches"] > 0
        else:
            assert stop.returncode == 0 and c.invalid_packets >= 1, c
        calls = [p for p in spool.iterdir() if p.is_dir()]  # sidecar.key stays
        assert not calls, calls
        time.sleep(1.0)  # a resend loop would log here every 0.1 s
        _record(sidecar, "E2", seed=7)
    finally:
        sidecar.stop()
        server.stop()
    log = sidecar.output()
    assert log.count("stream lost") == 0, log
    assert "Traceback" not in log, log


def test_metadata_over_the_servers_bounds_is_refused_at_start_call(tmp_path: Path) -> None:
    """StartCall over raw gRPC (no CLI or SDK checks in front) with metadata the server
    would refuse: INVALID_ARGUMENT naming the bound, and no port taken (the range has
    room for one two-leg call, which a good call gets afterwards)."""
    logs = tmp_path / "logs"
    server = start_server(tmp_path / "data", log_dir=logs)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(4), logs)
    try:
        with grpc.insecure_channel(sidecar.address) as ch:
            stub = pbg.SidecarStub(ch)
            for meta, message in [
                (pb.CallMeta(tags=[f"t{i}" for i in range(100_000)]), "100000 tags: at most 32"),
                (pb.CallMeta(customer_number="5" * 100), "customer_number is 100 bytes"),
                (
                    pb.CallMeta(extra={f"k{i}": "v" * 1000 for i in range(30)}),
                    "the call's metadata is 30",
                ),
                (pb.CallMeta(agent="a\0b"), "agent holds a NUL"),
            ]:
                with pytest.raises(grpc.RpcError) as e:
                    stub.StartCall(pb.StartCallRequest(call_id="c1", meta=meta), timeout=30)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
                assert message in (e.value.details() or ""), e.value.details()
            assert list(stub.ListCalls(pb.ListCallsRequest(), timeout=10).calls) == []
            ok = pb.CallMeta(agent="ann", tags=["vip"], customer_number="+15551234567")
            ports = stub.StartCall(pb.StartCallRequest(call_id="c1", meta=ok), timeout=30).ports
            assert len(ports) == 2
            stub.StopCall(pb.StopCallRequest(call_id="c1"), timeout=30)
        wait_sealed(sidecar, "c1")
    finally:
        sidecar.stop()
        server.stop()


def test_call_ls_table_columns_are_separated(tmp_path: Path) -> None:
    """`call ls`'s header used to run its last two words together ("ACKEDREASON"):
    every column, the reason too, is two spaces from the one before it."""
    logs = tmp_path / "logs"
    server = start_server(tmp_path / "data", log_dir=logs)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), logs)
    try:
        ports = call_start(sidecar, "open-1")
        send_rtp(ports, 0.5)
        lines = run_cli("call", "ls", "--sidecar", sidecar.address).stdout.splitlines()
        call_stop(sidecar, "open-1")
    finally:
        sidecar.stop()
        server.stop()
    head = lines[1]
    words = ["CALL", "STATE", "PACKETS", "INVALID", "FOREIGN", "UNSUPPORTED", "BATCHES"]
    assert head.split() == [*words, "ACKED", "REASON"], lines
    assert "  REASON" in head and head.index("REASON") == head.index("ACKED") + len("ACKED") + 2
    rows = {line.split()[0]: line for line in lines[2:]}
    row = rows["default/open-1"]
    assert row.split()[1] == "receiving" and int(row.split()[2]) > 0, lines
    for row in rows.values():
        assert len(row.split()) == len(words) + 1, row  # no reason: nothing after ACKED
        # each value starts under its header word
        for w in ["STATE", "PACKETS", "ACKED"]:
            i = head.index(w)
            assert row[i - 2 : i] == "  " and row[i] != " ", (head, row)

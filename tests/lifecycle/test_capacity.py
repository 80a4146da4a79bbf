"""Capacity watermarks (docs/policy.md "Capacity"): the states with an injected usage
function, relief evicting only calls safe in the archive, oldest first, never a call
that is only local (nor a held one), then reclaiming; at the floor a real server's
Ingest refuses new calls with RESOURCE_EXHAUSTED and the sentence while a call being
recorded goes on; and one end-to-end run of `callvault serve` on a real, small tmpfs
volume filled up (skipped where mounting is not permitted: a stated gap).

Here the archive is a stand-in with the real one's interface (due, archive_call,
evict) that records the archive object through vault.change, as the real one does
after storing and verifying it (only in tests), so that the usage can be injected;
tests/archive/test_capacity_archive.py runs the relief with the real Archive on
SeaweedFS."""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from callvault_client import Client
from callvault_client.errors import ResourceExhausted
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callvault.lifecycle.capacity import (
    CRITICAL,
    HIGH,
    OK,
    Capacity,
    CapacityError,
    Settings,
    Usage,
)
from callvault.server.app import Server
from callvault.server.servicers import Config
from callvault.store.index import CallEntry
from callvault.vault import CallNotFound, Vault
from tests.lifecycle.test_subject import record
from tests.servers import start_server

pytestmark = pytest.mark.timeout(300)
SEGMENT_BYTES = 4 << 10  # small: each call's records fill segments of their own


class StandInArchive:
    """The archive lane's interface; ``due`` = the calls named in ``to_archive``."""

    def __init__(self, vault: Vault, to_archive: list[str]) -> None:
        self.vault = vault
        self.to_archive = list(to_archive)
        self.evicted: list[str] = []

    def due(self, now_us: int) -> list[CallEntry]:
        out = []
        for c in self.to_archive:
            e = self.vault.get_call(c)
            if e.archive is None:
                out.append(e)
        return out

    def archive_call(self, entry: CallEntry) -> CallEntry:
        obj = {"bucket": "test", "key": f"{entry.tenant}/{entry.call_id}", "version": "v1"}
        return self.vault.change(entry.call_id, op="archive", changes={"archive": obj})

    def evict(self, entry: CallEntry) -> CallEntry:
        assert entry.archive is not None, "evicting a call that is only local"
        self.evicted.append(entry.call_id)
        return self.vault.change(entry.call_id, op="evict", changes={"local": False})


def settings(**kw: Any) -> Settings:
    return Settings.parse({"high": 85, "low": 75, "floor": 95, **kw})


def test_settings_are_checked() -> None:
    assert Settings.parse(None) == Settings()
    for bad, what in (
        ({"high": 70, "low": 75}, "0 < low < high <= floor"),
        ({"floor": 80}, "0 < low < high <= floor"),
        ({"high": "85"}, "must be a number"),
        ({"interval_s": 0}, "interval_s"),
        ({"enabled": 1}, "true or false"),
        ({"hihg": 1}, "unknown setting"),
    ):
        with pytest.raises(CapacityError, match=what):
            Settings.parse(bad)


def test_states_and_one_warning_per_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Vault.open(tmp_path / "data") as v:
        used = {"pct": 50.0}
        cap = Capacity(v, settings(), usage=lambda: Usage(int(used["pct"] * 100), 10_000))
        changes: list[tuple[str, str]] = []
        cap.on_state = lambda old, new: changes.append((old, new))
        assert cap.state == "" and cap.admit() is None
        caplog.set_level(logging.INFO, logger="callvault.capacity")
        assert cap.check() == OK
        used["pct"] = 90.0  # above high, no archive: nothing can be freed
        assert cap.check() == HIGH and cap.check() == HIGH
        assert cap.admit() is None  # calls still accepted until the floor
        used["pct"] = 96.0
        assert cap.check() == CRITICAL
        assert cap.admit() == (
            "the data volume is 96% full (floor 95%): no new calls until space is freed"
        )
        assert cap.check() == CRITICAL
        used["pct"] = 60.0
        assert cap.check() == OK and cap.admit() is None
        assert changes == [("", OK), (OK, HIGH), (HIGH, CRITICAL), (CRITICAL, OK)]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2  # one per change into high and into critical
        assert "capacity high" in warnings[0] and "capacity critical" in warnings[1]
        assert cap.stats() == {
            "capacity_used_percent": 60.0,
            "capacity_state": OK,
            "capacity_evicted_calls": 0,
            "capacity_error": "",
        }
        # a failing measure: said, the state kept
        cap.usage = lambda: (_ for _ in ()).throw(OSError(5, "I/O error"))
        assert cap.check() == OK and "I/O error" in cap.error


def _segments_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "segments").iterdir() if p.is_file())


def test_relief_evicts_archived_calls_oldest_first_never_only_local(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        # start times out of id order: "oldest first" is by start, not by name
        starts = {"a5": 5, "a1": 1, "a3": 3, "a2": 2, "a4": 4, "held": 0, "local0": -1}
        for c, k in starts.items():
            w = v.open_call(c, start_us=1_700_000_000_000_000 + k * 1_000_000, agent="ann")
            for first in range(0, 60, 10):
                for leg in (0, 1):
                    w.append(leg, first, np.full(10, 40, dtype=np.int32), bytes(range(40)) * 10)
            w.seal(summary={"legs": []}, frames=60)
        now = v.clock()
        v.change("held", op="hold", changes={"holds": {"CASE-9": {"placed_us": now}}})
        # local0: only local, the oldest of all, retention ended long ago: never evicted
        v.change(
            "local0",
            op="retention",
            changes={"retention": {"until_us": 1, "rule": "r", "mode": "default", "set_us": 0}},
        )
        archive = StandInArchive(v, ["a1", "a2", "a3", "a4", "a5", "held"])
        v._writer.flush()
        total = _segments_bytes(data)
        # the volume: the segments plus a fixed rest, at 90% (above high 85, goal 75%)
        size = int(total / 0.45)
        rest = int(size * 0.45)
        cap = Capacity(
            v,
            settings(),
            usage=lambda: Usage(rest + _segments_bytes(data), size),
            archive=lambda: archive,
        )
        state = cap.check()
        assert {c for c in archive.to_archive if v.get_call(c).archive} == set(
            archive.to_archive
        )  # the due calls were archived first
        evicted = archive.evicted
        assert evicted, "nothing evicted"
        assert evicted == ["a1", "a2", "a3", "a4", "a5"][: len(evicted)]  # oldest first
        assert len(evicted) < 5  # stopped once the goal was met
        assert cap.evicted_calls == len(evicted)
        for c in ("held", "local0"):
            assert v.get_call(c).local is True
        for c in evicted:
            e = v.get_call(c)
            assert (
                e.local is False
                and e.state == "sealed"
                and list(v.index.records("default", c)) == []
            )
        assert _segments_bytes(data) < total  # reclaimed
        assert cap.used_percent < 90.0
        assert state in (OK, HIGH)
        # nothing is due and the archive has no local copy left to drop: a volume kept
        # full by only-local calls stays high, they are never evicted
        cap.usage = lambda: Usage(90, 100)
        before = list(archive.evicted)
        cap.relieve(Usage(90, 100))
        cap.relieve(Usage(100, 100))
        remaining = [c for c in ("a1", "a2", "a3", "a4", "a5") if c not in before]
        assert archive.evicted == before + remaining
        assert cap.check() == HIGH
        assert v.get_call("local0").local is True and v.get_call("held").local is True
        # what stays local verifies after the segment rewrites (reading an evicted
        # call from the archive is the archive lane's)
        for c in ("held", "local0"):
            assert v.verify_call(c) == []


def test_no_archive_nothing_is_evicted(tmp_path: Path) -> None:
    with Vault.open(tmp_path / "data") as v:
        record(v, "c1")
        v.change("c1", op="archive", changes={"archive": {"key": "x"}})  # no archive configured
        cap = Capacity(v, settings(), usage=lambda: Usage(99, 100))
        assert cap.check() == CRITICAL
        assert v.get_call("c1").local is True
        assert cap.evicted_calls == 0


# -- through a real server ---------------------------------------------------------------
def _send_second(rec: Any, t0: int, seq0: int) -> None:
    """One second of mu-law silence per leg (20 ms packets)."""
    for leg in (0, 1):
        pkts = [
            struct.pack("!BBHII", 0x80, 0, seq0 + i, 160 * (seq0 + i), 0x100 + leg) + b"\xff" * 160
            for i in range(50)
        ]
        rec.send(
            leg,
            b"".join(pkts),
            [len(p) for p in pkts],
            [t0 + 20_000 * (seq0 + i + 1) for i in range(50)],
        )


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return int(
            health_pb2_grpc.HealthStub(ch)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            .status
        )


def test_floor_refuses_new_calls_through_a_real_server(tmp_path: Path) -> None:
    vault = Vault.open(tmp_path / "data")
    # checks only when the test says (a long interval): the state is the test's
    server = Server(vault, "127.0.0.1:0", Config(capacity={"interval_s": 3600}))
    used = {"pct": 50.0}
    server.capacity.usage = lambda: Usage(int(used["pct"] * 1000), 100_000)
    server.start()
    address = f"127.0.0.1:{server.port}"
    t0 = 1_800_000_000_000_000
    try:
        with Client(address) as c:
            ongoing = c.record("ongoing", start_us=t0)
            _send_second(ongoing, t0, 0)
            assert ongoing.acks.wait(1, timeout=60)  # started, acknowledged
            used["pct"] = 96.0
            assert server.capacity.check() == CRITICAL
            refused = c.record("new-1", start_us=t0)
            _send_second(refused, t0, 0)
            with pytest.raises(ResourceExhausted) as err:
                refused.end(timeout=60)
            assert (
                "the data volume is 96% full (floor 95%): no new calls until space is freed"
                in str(err.value)
            )
            # the call being recorded goes on, and seals with all it was sent
            _send_second(ongoing, t0, 50)
            sealed = ongoing.end(timeout=60)
            assert sealed.frames == 100
            assert vault.get_call("ongoing").state == "sealed"
            with pytest.raises(CallNotFound):
                vault.get_call("new-1")
            st = c.stats()
            assert st.capacity_state == "critical" and st.capacity_used_percent == 96.0
            ingest = "callvault.v1.Ingest"
            assert _health(address, ingest) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert _health(address, "") == health_pb2.HealthCheckResponse.SERVING
            used["pct"] = 70.0
            assert server.capacity.check() == OK
            assert _health(address, ingest) == health_pb2.HealthCheckResponse.SERVING
            again = c.record("new-1", start_us=t0)
            _send_second(again, t0, 0)
            assert again.end(timeout=60).frames == 50
            assert c.stats().capacity_state == "ok"
    finally:
        server.stop()


def test_bad_capacity_settings_stop_the_server(tmp_path: Path) -> None:
    vault = Vault.open(tmp_path / "data")
    try:
        with pytest.raises(CapacityError, match="low < high"):
            Server(vault, "127.0.0.1:0", Config(capacity={"high": 50, "low": 60}))
    finally:
        vault.close()


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Any:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): no end-to-end floor test")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_floor_end_to_end_on_a_small_volume(tmp_path: Path) -> None:
    """`callvault serve` on a 16 MiB tmpfs: a filler file pushes the volume over the
    floor, the server refuses new calls; removing it, new calls are taken again."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: no end-to-end floor test")
    with _tmpfs(tmp_path / "vol", "16m") as vol:
        data = vol / "data"
        conf = tmp_path / "serve.toml"
        conf.write_text(
            "reclaim_interval_s = 0\n"
            "[capacity]\nhigh = 60\nlow = 50\nfloor = 80\ninterval_s = 0.2\n"
        )
        srv = start_server(data, args=("--config", str(conf)), log_dir=tmp_path / "logs")
        t0 = 1_800_000_000_000_000
        try:
            with Client(srv.address) as c:
                rec = c.record("before", start_us=t0)
                _send_second(rec, t0, 0)
                assert rec.end(timeout=60).frames == 50
                st = os.statvfs(vol)
                free = st.f_bavail * st.f_frsize
                total = (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize
                filler = vol / "filler"
                # leave 10% of the volume free: 90% used, above the floor (80)
                filler.write_bytes(b"\0" * max(0, free - total // 10))
                deadline = time.monotonic() + 60
                while c.stats().capacity_state != "critical":
                    assert time.monotonic() < deadline, srv.output()
                    time.sleep(0.1)
                refused = c.record("after", start_us=t0)
                _send_second(refused, t0, 0)
                with pytest.raises(ResourceExhausted, match=r"floor 80%\): no new calls"):
                    refused.end(timeout=60)
                filler.unlink()
                while c.stats().capacity_state != "ok":
                    assert time.monotonic() < deadline, srv.output()
                    time.sleep(0.1)
                again = c.record("after", start_us=t0)
                _send_second(again, t0, 0)
                assert again.end(timeout=60).frames == 50
            assert "capacity critical" in srv.output()
        finally:
            assert srv.stop() == 0, srv.output()


def test_the_server_relieves_through_its_archive(tmp_path: Path) -> None:
    """The server's capacity part finds the archive the archive part sets
    (``Server.archive``), and Admin.Stats counts the calls it evicted."""
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        for k in range(4):
            record(v, f"c{k}")
    vault = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    server = Server(vault, "127.0.0.1:0", Config(capacity={"interval_s": 3600}))
    server.start()
    try:
        assert server.capacity.check() == OK  # the real volume: far below 85%
        stand_in = StandInArchive(vault, ["c0", "c1", "c2"])
        server.archive = stand_in  # type: ignore[assignment]
        # 15,000 bytes to free: more than the three archived calls' audio
        server.capacity.usage = lambda: Usage(90_000, 100_000)
        assert server.capacity.check() == HIGH  # the usage stays: still high
        assert stand_in.evicted == ["c0", "c1", "c2"]
        assert vault.get_call("c3").local is True  # only local: kept
        with Client(f"127.0.0.1:{server.port}") as c:
            st = c.stats()
            assert st.capacity_evicted_calls == 3 and st.capacity_state == "high"
            assert st.capacity_error == ""
    finally:
        server.stop()


def test_a_failing_archive_is_said_and_eviction_goes_on(tmp_path: Path) -> None:
    with Vault.open(tmp_path / "data") as v:
        record(v, "c1")
        record(v, "c2")
        archive = StandInArchive(v, ["c1"])
        archive.archive_call(v.get_call("c1"))

        def due(now_us: int) -> list[CallEntry]:
            raise OSError("the archive's endpoint is unreachable")

        archive.due = due  # type: ignore[method-assign]
        cap = Capacity(v, settings(), usage=lambda: Usage(90, 100), archive=archive)
        assert cap.check() == HIGH
        assert archive.evicted == ["c1"]
        assert "archiving due calls failed: the archive's endpoint is unreachable" in cap.error

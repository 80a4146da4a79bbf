"""Peak mode end to end through the real sidecar (docs/server.md "Settings":
ingest_codec, compact_workers, compact_paused): `callvault serve --config`, `callvault
sidecar`, calls started with `call start`, paced G.711 RTP from this process, then
the compactor's worker processes turning the raw calls into Opus."""

from __future__ import annotations

import json
import threading
import time
import wave
from pathlib import Path
from typing import Any

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from tests.e2e.sidecar_procs import (
    call_start,
    call_stop,
    cli,
    rtp_range,
    send_rtp,
    start_sidecar,
    wait_sealed,
)
from tests.servers import Proc, run_cli, start_server

pytestmark = pytest.mark.slow
SECONDS = 2.0


def _config(tmp: Path, **settings: Any) -> tuple[str, str]:
    p = tmp / f"config-{len(list(tmp.glob('config-*')))}.json"
    p.write_text(json.dumps(settings))
    return ("--config", str(p))


def _stats(server: Proc) -> pb.StatsReply:
    with grpc.insecure_channel(server.address) as ch:
        return pbg.AdminStub(ch).Stats(pb.StatsRequest(), timeout=10)


def _ls(server: Proc) -> dict[str, dict[str, Any]]:
    p = run_cli("--server", server.address, "ls", "--json")
    return {c["call_id"]: c for c in json.loads(p.stdout)}


def _wav(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def _record(sidecar: Proc, ids: list[str]) -> None:
    """Start the calls, send SECONDS of paced RTP to every leg at once, stop them and
    wait until each is sealed."""
    ports = {cid: call_start(sidecar, cid) for cid in ids}
    senders = [
        threading.Thread(target=send_rtp, args=(ports[cid], SECONDS), kwargs={"seed": i})
        for i, cid in enumerate(ids)
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    time.sleep(0.3)
    for cid in ids:
        call_stop(sidecar, cid)
    for cid in ids:
        wait_sealed(sidecar, cid)


def _wait_compacted(server: Proc, ids: list[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _stats(server)
        calls = _ls(server)
        if s.compact_backlog_calls == 0 and all(
            calls[c]["storage"] in ("compacted", "opus") for c in ids
        ):
            return
        time.sleep(0.3)
    raise AssertionError(f"not compacted after {timeout} s: {_stats(server)}\n{server.output()}")


def test_g711_ingest_then_compaction_through_the_sidecar(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ids = ["peak-1", "peak-2", "peak-3"]
    server = start_server(data, args=_config(tmp_path, ingest_codec="g711", compact_paused=True))
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        _record(sidecar, ids)
        calls = _ls(server)
        assert all(calls[c]["storage"] == "raw" and calls[c]["state"] == "sealed" for c in ids)
        s = _stats(server)
        assert s.compactor_paused and s.compact_backlog_calls == 3
        assert s.compact_backlog_seconds >= 3 * int(SECONDS)
        info = json.loads(run_cli("--server", server.address, "info", "peak-1", "--json").stdout)
        assert info["storage"] == "raw"
        frames = [leg["frames"] for leg in info["legs_detail"]]
        assert frames[0] == frames[1] >= SECONDS * 50  # every frame sent is there
        # a raw call plays, exports and verifies through the server
        run_cli("--server", server.address, "export", "peak-1", "-o", str(tmp_path / "r.wav"))
        run_cli("--server", server.address, "export", "peak-1", "-o", str(tmp_path / "r.ogg"))
        run_cli("--server", server.address, "play", "peak-1", "-o", str(tmp_path / "p.wav"))
        assert _wav(tmp_path / "p.wav") == _wav(tmp_path / "r.wav")  # both: the G.711 decoded
        v = run_cli("--server", server.address, "verify", "peak-1")
        assert "OK" in v.stdout
        run_cli("--server", server.address, "bundle", "peak-2", "-o", str(tmp_path / "b-raw"))
    finally:
        assert sidecar.stop() == 0
        server.stop()
    # the server restarted with the compactor running: it finds the raw calls
    server = start_server(data, args=_config(tmp_path, ingest_codec="g711", compact_workers=2))
    try:
        _wait_compacted(server, ids)
        assert _stats(server).compacted_calls == 3
        info = json.loads(run_cli("--server", server.address, "info", "peak-1", "--json").stdout)
        assert info["storage"] == "compacted" and info["transcode_log_index"] >= 0
        run_cli("--server", server.address, "export", "peak-1", "-o", str(tmp_path / "c.ogg"))
        run_cli("--server", server.address, "bundle", "peak-2", "-o", str(tmp_path / "b-comp"))
        key = run_cli("--server", server.address, "checkpoint", "--public-key").stderr
    finally:
        server.stop()
    p = cli(data, "verify", "--all")
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
    pub = tmp_path / "log.pub"
    pub.write_text([ln for ln in key.splitlines() if "+" in ln][-1].strip() + "\n")
    for b in ("b-raw", "b-comp"):
        p = cli(data, "verify-bundle", str(tmp_path / b), "--public-key", str(pub))
        assert p.returncode == 0, p.stdout + p.stderr
    # the Opus of the compacted call is what the raw call's Ogg export encoded
    from tests.vault.test_compact import _packets

    assert _packets(tmp_path / "c.ogg") == _packets(tmp_path / "r.ogg")


def test_burst_beyond_the_opus_bound_ends_all_in_opus(tmp_path: Path) -> None:
    """The issue's burst, scaled down: ingest_codec auto with a bound of 2 calls in Opus,
    a burst of 4 calls at once (twice that): the calls past the bound are stored as
    G.711; once idle, the compactor leaves every call in Opus, verified, and the raw
    records unreferenced by the index (dead) and their space reclaimed (small segments,
    so that the raw records lie in closed ones), every call verifying after the reclaim
    and after a reindex."""
    data = tmp_path / "data"
    ids = [f"burst-{i}" for i in range(4)]
    server = start_server(
        data,
        args=_config(
            tmp_path,
            ingest_codec="auto",
            auto_opus_calls=2,
            compact_workers=1,
            segment_bytes=64 << 10,
            reclaim_interval_s=0,
        ),
    )
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    try:
        _record(sidecar, ids)
        _wait_compacted(server, ids)
        calls = _ls(server)
        storage = sorted(calls[c]["storage"] for c in ids)
        assert storage == ["compacted", "compacted", "opus", "opus"], storage
    finally:
        assert sidecar.stop() == 0
        server.stop()
    from callvault.vault import Vault

    v = Vault.open(data)
    for cid in ids:
        e = v.get_call(cid)
        assert v.verify_call(cid) == []
        if e.storage == "compacted":
            idx = [i for i, _ in v.index.records("default", cid)]
            assert min(idx) >= e.records  # no raw record is referenced
    # the two raw calls' G.711 (16,000 bytes per second of call, both legs) is counted
    # dead, then freed
    raw = [v.get_call(c) for c in ids if v.get_call(c).storage == "compacted"]
    g711 = sum((e.end_us - e.start_us) * 16_000 // 1_000_000 for e in raw)
    dead = v.reclaimable_bytes()
    assert 0.95 * g711 <= dead <= 1.2 * g711, (dead, g711)
    before = sum(p.stat().st_size for p in (data / "segments").glob("*.seg"))
    done = v.reclaim(threshold=0.01)
    after = sum(p.stat().st_size for p in (data / "segments").glob("*.seg"))
    # all of it but what lies in the segment still open (at most 64 KiB)
    assert done.bytes_freed > 0 and before - after >= dead - (96 << 10), (dead, done)
    assert v.reclaimable_bytes() <= 64 << 10
    for cid in ids:
        assert v.verify_call(cid) == [], cid
    v.close()
    with Vault.open(data, rebuild_index=True) as again:
        assert not again.report.replays and not again.report.damage, again.report
        for cid in ids:
            assert again.get_call(cid).storage in ("opus", "compacted")
            assert again.verify_call(cid) == [], cid


def test_server_sigkilled_while_compacting_loses_nothing(tmp_path: Path) -> None:
    """Raw calls stored (a local import in G.711), then a server whose compactor works
    on them is SIGKILLed at several moments, and restarted: every call ends compacted,
    each verifies, and none was lost or left half compacted."""
    from callvault.media import sample
    from callvault.media.pipeline import Settings
    from callvault.vault import Vault

    cap = tmp_path / "call.pcap"
    agent, customer = sample.dialogue(6.0)
    sample.write_capture(
        cap,
        [
            (agent, sample.LegPlan(ssrc=1, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000))),
            (
                customer,
                sample.LegPlan(law=8, ssrc=2, src=("10.0.0.2", 5002), dst=("10.0.0.1", 4002)),
            ),
        ],
    )
    data = tmp_path / "data"
    ids = [f"k{i}" for i in range(8)]
    v = Vault.open(data)
    for cid in ids:
        v.import_call(cid, [str(cap)], settings=Settings(store_codec="g711"))
    v.close()
    for delay in (0.2, 0.6, 1.0):
        server = start_server(data, args=_config(tmp_path, compact_workers=1))
        time.sleep(delay)
        server.kill()
        v = Vault.open(data)  # recovery: each call raw or compacted, and whole
        for cid in ids:
            assert v.get_call(cid).storage in ("raw", "compacted")
            assert v.verify_call(cid) == [], cid
        v.close()
    server = start_server(data, args=_config(tmp_path, compact_workers=2))
    try:
        _wait_compacted(server, ids)
    finally:
        server.stop()
    v = Vault.open(data)
    for cid in ids:
        e = v.get_call(cid)
        assert e.storage == "compacted" and v.verify_call(cid) == []
        assert min(i for i, _ in v.index.records("default", cid)) >= e.records
    v.close()

"""callvault.sidecar.forwarder and the Sidecar's recovery, in process, against a real
`callvault serve` on loopback: the spool is read as the Recording's batches, a spool
left by an earlier sidecar is forwarded once the server is up, and deleted only
after Sealed."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb

from callvault.media import sample
from callvault.sidecar import Sidecar
from callvault.sidecar.forwarder import SpoolSource
from callvault.sidecar.spool import Spool, spool_name
from tests.servers import start_server

pytestmark = pytest.mark.timeout(300)

T0_US = 1_790_000_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spooled_call(root: Path, call_id: str, seconds: float = 2.0) -> Spool:
    """A stopped call's spool as a sidecar leaves it: two legs of G.711, one batch per
    leg per 5 packets, ended."""
    start = pb.CallStart(call_id=call_id, legs=[pb.LegSpec(name="agent"), pb.LegSpec(name="b")])
    spool = Spool.create(root, spool_name("", call_id), start.SerializeToString(), [0, 0], T0_US)
    spool.set_start_us(T0_US)
    legs = [
        sample.rtp_packets(
            sample.synthetic_speech(seconds, seed=leg),
            sample.LegPlan(ssrc=0x10 + leg, jitter_ms=0),
            t0=T0_US / 1e6,
            seed=leg,
        )
        for leg in (0, 1)
    ]
    for i in range(0, min(len(p) for p in legs), 5):
        for leg, pkts in enumerate(legs):
            chunk = pkts[i : i + 5]
            spool.append(
                leg,
                b"".join(p for _, p in chunk),
                np.array([len(p) for _, p in chunk], np.int32),
                np.array([round(at * 1e6) for at, _ in chunk], np.int64),
            )
    spool.finish()
    return spool


def test_spool_source_reads_the_spool_as_rtp_batches(tmp_path: Path) -> None:
    spool = spooled_call(tmp_path, "c1", seconds=0.5)
    source = SpoolSource(spool)
    assert source.count() == spool.batches > 2
    for seq in (0, spool.batches - 1):
        got, want = source.batch(seq), spool.read(seq)
        assert (got.seq, got.leg, got.packets) == (seq, want.leg, want.packets)
        assert list(got.lengths) == want.lengths.tolist()
        assert list(got.arrival_us) == want.arrival_us.tolist()
    assert source.end() == pb.CallEnd(batches=spool.batches, end_us=0)


def test_recovered_spool_is_forwarded_when_the_server_comes_and_deleted_once_sealed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    batches = spooled_call(root, "rec-1").batches
    port = free_port()
    sidecar = Sidecar(f"127.0.0.1:{port}", "127.0.0.1", 40000, 40009, root)
    sidecar.start()
    server = None
    try:
        time.sleep(1.0)  # no server: the call waits, spooled
        (call,) = sidecar.list_calls()
        assert call.state == "forwarding" and not call.connected and call.batches == batches
        assert (root / spool_name("", "rec-1")).exists()
        server = start_server(tmp_path / "data", port=port)
        deadline = time.monotonic() + 60
        while sidecar.list_calls()[0].state != "sealed" and time.monotonic() < deadline:
            time.sleep(0.05)
        (call,) = sidecar.list_calls()
        assert call.state == "sealed" and not (root / spool_name("", "rec-1")).exists()
        assert call.acked_seq == batches
        with Client(server.address) as c:
            info = c.get_call("rec-1")
            assert info.state == "sealed" and [r.ok for r in c.verify(["rec-1"])] == [True]
    finally:
        sidecar.shutdown()
        if server is not None:
            server.stop()

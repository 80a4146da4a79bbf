"""The sidecar's one multiplexed uplink (Ingest.RecordCalls), with real processes:
`callvault serve`, `callvault sidecar`, RTP over loopback UDP from this process.

Several calls share the sidecar's single stream (Admin.Stats: one RecordCalls stream
carrying every call); the server is SIGKILLed mid-call and restarted, and the network
between sidecar and server is cut (a TCP relay in this process drops every connection
and refuses new ones for a while): the uplink reconnects, starts every call again on
the new stream, resends from each one's resume_from_seq, and every call seals with
every packet that was sent recorded as audio and nothing lost."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from callvault_client import Client

from tests.e2e.sidecar_procs import (
    call_start,
    call_stop,
    list_calls,
    rtp_range,
    send_rtp,
    start_sidecar,
    wait_sealed,
)
from tests.servers import start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CALLS = 4


class Relay:
    """A TCP relay on loopback to ``target``; ``cut()`` drops every connection and
    refuses new ones until ``restore()`` (the network between the two is down)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.down = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.down:
                    c.close()
                    continue
                try:
                    up = socket.create_connection(self.target)
                except OSError:
                    c.close()
                    continue
                self.conns += [c, up]
                self.accepted += 1
            for a, b in ((c, up), (up, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            self.down = True
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        with self.lock:
            self.down = False

    def close(self) -> None:
        self.cut()
        self.listener.close()


class Senders:
    """``seconds`` of paced RTP to every call at once, one continuous stream per leg
    (a thread per call), while the test breaks things; ``join`` gives the packets
    sent per call."""

    def __init__(self, calls: dict[str, dict[str, int]], seconds: float) -> None:
        self.sent: dict[str, int] = {}
        self.threads = [
            threading.Thread(target=self._send, args=(c, p, seconds, i), daemon=True)
            for i, (c, p) in enumerate(calls.items())
        ]
        for t in self.threads:
            t.start()

    def _send(self, call_id: str, ports: dict[str, int], seconds: float, seed: int) -> None:
        self.sent[call_id] = send_rtp(ports, seconds, seed=seed)

    def join(self) -> dict[str, int]:
        for t in self.threads:
            t.join(timeout=120)
        return self.sent


def _check_complete(address: str, call_id: str, packets: int) -> None:
    """Every packet sent to the call is recorded as audio, none lost, the call verifies."""
    with Client(address) as c:
        info = c.get_call(call_id, include_summary=True)
        assert info.state == "sealed"
        legs = json.loads(info.summary_json)["legs"]
        audio = sum(int(leg["rtp"]["audio_packets"]) for leg in legs)
        assert audio == packets, (call_id, audio, packets, legs)
        for leg in legs:
            assert int(leg["lost"]) == 0 and int(leg["rtp"].get("lost_frames", 0)) == 0, leg
        assert [r.ok for r in c.verify([call_id])] == [True]


def _wait_mux(address: str, calls: int, timeout: float = 30.0) -> None:
    """Admin.Stats says one RecordCalls stream carries ``calls`` calls."""
    deadline = time.monotonic() + timeout
    with Client(address) as c:
        while True:
            s = c.stats()
            if (s.mux_streams, s.mux_calls) == (1, calls):
                return
            assert time.monotonic() < deadline, (s.mux_streams, s.mux_calls)
            time.sleep(0.1)


def _stop_all(sidecar: object, ids: list[str]) -> dict[str, int]:
    stopped = {c: call_stop(sidecar, c)["batches"] for c in ids}  # type: ignore[arg-type]
    for c in ids:
        sealed = wait_sealed(sidecar, c)  # type: ignore[arg-type]
        assert sealed.batches == stopped[c]
    return stopped


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_one_uplink_carries_every_call_through_a_server_restart(tmp_path: Path, how: str) -> None:
    """SIGKILL: nothing runs on the server's way out; SIGTERM: it shuts down gracefully
    (its streams end UNAVAILABLE after what every call encoded is stored)."""
    data = tmp_path / "data"
    server = start_server(data)
    sidecar = start_sidecar(server.address, tmp_path / "spool", rtp_range(), tmp_path)
    ids = [f"up-{i}" for i in range(CALLS)]
    try:
        calls = {c: call_start(sidecar, c) for c in ids}
        senders = Senders(calls, 5.0)
        time.sleep(1.0)
        _wait_mux(server.address, CALLS)  # ONE stream for every call
        assert all(c.connected for c in list_calls(sidecar))
        if how == "SIGKILL":
            server.kill()  # while the calls are live
        else:
            assert server.stop() == 0
        time.sleep(1.0)  # spooled while the server is down
        assert not any(c.connected for c in list_calls(sidecar))
        server = start_server(data, port=server.port)
        _wait_mux(server.address, CALLS)  # the new stream took every call back
        sent = senders.join()
        _stop_all(sidecar, ids)
        for c in ids:
            _check_complete(server.address, c, sent[c])
        with Client(server.address) as client:
            assert client.stats().mux_streams == 1  # still the one stream, calls gone
    finally:
        sidecar.stop()
        server.stop()
    out = sidecar.output()
    assert "uplink: stream lost" in out
    # one loss of the stream, logged once, not once per call
    assert out.count("uplink: stream lost") <= 3, out


def test_a_network_cut_is_reconnected_and_every_call_resent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    relay = Relay(("127.0.0.1", server.port))
    sidecar = start_sidecar(f"127.0.0.1:{relay.port}", tmp_path / "spool", rtp_range(), tmp_path)
    ids = [f"cut-{i}" for i in range(CALLS)]
    try:
        calls = {c: call_start(sidecar, c) for c in ids}
        senders = Senders(calls, 5.0)
        time.sleep(1.0)
        _wait_mux(server.address, CALLS)
        before = relay.accepted
        relay.cut()  # the network goes: the server sees the stream end, the sidecar too
        time.sleep(1.5)
        relay.restore()
        _wait_mux(server.address, CALLS)
        assert relay.accepted > before  # a new connection carried the new stream
        sent = senders.join()
        _stop_all(sidecar, ids)
        for c in ids:
            _check_complete(server.address, c, sent[c])
    finally:
        sidecar.stop()
        relay.close()
        server.stop()

"""Workloads sidecar_receive, sidecar_receive_burst: the sidecar's receive path.

What `callvault sidecar` does per RTP packet before forwarding it: 50 calls
(100 legs, one UDP socket each on 127.0.0.1, bound as Sidecar._bind binds
them: SO_RCVBUF = sidecar.RCVBUF, non-blocking, SO_TIMESTAMPNS) receive
172-byte G.711 RTP packets (12-byte header + 160 bytes, 20 ms), which become
one batch per leg every sidecar.FLUSH_MS (the receiver's tick, 100 ms)
appended to the call's spool (real files in a temporary directory,
callvault.sidecar.spool). Driven through the real classes:
callvault.sidecar.Receiver (its thread, its run loop, its tick and flush) over
callvault.sidecar.Call objects on callvault.sidecar.spool.Spool, the calls
added through Receiver.submit as Sidecar.start_call adds them. Left out: the
gRPC control API and the forwarders (on_first_flush does nothing), and the
sidecar's 1 s fsync thread (records are in the OS on append, as in the
sidecar; fsync is I/O, not this path's CPU).

The packets come from a separate process (this file run as
`python -m benchmarks.bench_sidecar send ...`), one connected UDP socket per
leg, sent with callvault._net.send_batch (sendmmsg). A round: fresh sockets,
spools and receiver (untimed), the sender told to go, then the time until
every packet is in a spool; then (untimed) the receiver shut down, the
sender's report read and the spools checked.

    sidecar_receive        real time: every leg sends one packet every 20 ms,
                           150 per leg (3 s, 15,000 packets per round); the
                           legs are spread over the 20 ms in 10 groups (one
                           group every 2 ms), as independent phones are.
    sidecar_receive_burst  as fast as the sender can: the same 15,000 packets,
                           each leg's 150 in one sendmmsg, leg after leg (all
                           of it fits in the socket buffers: nothing may be
                           lost); the receiver reads while they come.
      ours                 Receiver as it is: each tick, every leg socket
                           drained in one C call (callvault._net.MultiRecv:
                           recvmmsg per socket, kernel arrival stamps,
                           sources, the latched-source test), one
                           check_datagrams for all of them, the latch fast
                           path, one spool write per call.
      peer recvfrom        the plain-Python way in the same Receiver (a
                           subclass overriding only Receiver._drain, its one
                           socket read): per leg socket, per datagram
                           sock.recvfrom(RECV_MAX_SIZE) until BlockingIOError,
                           arrival = time.time_ns() per datagram (recvfrom
                           gives no kernel stamp), the source address packed
                           as ours gives it, the latched-source test in numpy;
                           joined into the same tuple MultiRecv.recv gives.
                           Same tick, same checks and source latching, same
                           flush, same spool appends.

The timer is CPU, not wall time: time.process_time of the receiving process
(the pytest process: the receiver thread, plus the main thread polling the
spools' packet counts every 10 ms; the sender is another process and is not
counted). Real time takes 3 s of wall time whatever the receiver does, so the
figure is receiver CPU per packet; ratio = ours median / peer median of the
round's CPU for the same packets. Each round also records (extra_info): wall
time to the last packet spooled, packets/s received, loss, the receiver
thread's own CPU, spool batches, and the sender's duration and lag.

Checked every round: no packet lost, truncated or duplicated; each leg's
spool holds exactly the packets sent to it, byte for byte and in order; every
arrival stamp falls in the round; the call's start_us is set.

Ours and the peer run interleaved, round by round, in one loop per workload
(conftest.Interleaved, from the `interleaved` fixture): a warm-up round of
each, then ROUNDS rounds, the order rotated each round.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import Tag, need
from callvault.timeline import FRAME_MS, FRAME_SAMPLES

HERE = Path(__file__).resolve().parent
# CPU of the receiving process per round is what pytest-benchmark times (see above).
pytestmark = pytest.mark.benchmark(timer=time.process_time)

NAME = "sidecar_receive"
NAME_BURST = "sidecar_receive_burst"
CALLS = 50
LEGS = 2  # per call: agent, customer
PACKETS_PER_LEG = 150  # 3 s of 20 ms packets
PTIME_MS = FRAME_MS
GROUPS = 10  # the legs' send phases within one ptime (one group per 2 ms)
PAYLOAD = FRAME_SAMPLES  # G.711 bytes (one per sample) per 20 ms packet: 172-byte packets
HOST = "127.0.0.1"
ROUNDS = 4
WARMUP = 1
STALL_S = 2.0  # no packet spooled for this long after the sender ended: loss


def packet(leg: int, seq: int) -> bytes:
    """Packet ``seq`` of global leg ``leg``: RTP PCMU, 20 ms, a payload that differs per
    leg and packet (so a misplaced or repeated packet cannot pass the check)."""
    rtppack = need("callvault.media.rtppack")
    payload = bytes((leg * 31 + seq * 7 + i) & 0xFF for i in range(PAYLOAD))
    out: bytes = rtppack.build_packet(
        rtppack.PT_PCMU, 1000 + seq, FRAME_SAMPLES * seq, 0x5EC0_0000 + leg, payload
    )
    return out


# ---------------------------------------------------------------------------
# The sender (a separate process)
# ---------------------------------------------------------------------------


def send(ports: list[int], per_leg: int, paced: bool) -> dict[str, Any]:
    """Send ``per_leg`` packets to each port (one connected socket per leg), paced in
    real time or as fast as sendmmsg goes; wait for "go" on stdin first."""
    net = need("callvault._net")
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((HOST, port))
        socks.append(s)
    legs = [[packet(leg, seq) for seq in range(per_leg)] for leg in range(len(ports))]
    one = np.full(1, len(legs[0][0]), np.int32)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return {"sent": 0}
    sent = 0
    lag_max = 0.0
    t0 = time.monotonic()
    if paced:
        slot = PTIME_MS / 1000 / GROUPS
        for tick in range(per_leg * GROUPS):
            due = t0 + tick * slot
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                lag_max = max(lag_max, now - due)
            seq, group = divmod(tick, GROUPS)
            for leg in range(group, len(socks), GROUPS):
                sent += net.send_batch(socks[leg].fileno(), legs[leg][seq], one)
    else:
        for leg, s in enumerate(socks):
            data = b"".join(legs[leg])
            lengths = np.array([len(p) for p in legs[leg]], np.int32)
            sent += net.send_batch(s.fileno(), data, lengths)
    seconds = time.monotonic() - t0
    for s in socks:
        s.close()
    return {"sent": sent, "seconds": seconds, "lag_max_s": lag_max}


def sender_main(argv: list[str]) -> int:
    mode, per_leg, ports = argv[0], int(argv[1]), [int(p) for p in argv[2].split(",")]
    print(json.dumps(send(ports, per_leg, paced=mode == "paced")), flush=True)
    return 0


# ---------------------------------------------------------------------------
# The receiver side
# ---------------------------------------------------------------------------


def _source(addr: tuple[Any, ...]) -> bytes:
    """A recvfrom address as the 18 bytes _net.recv_batch_from gives per datagram
    (16-byte IPv6 or IPv4-mapped address, 2-byte big-endian port)."""
    ip = ipaddress.ip_address(addr[0])
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed + int(addr[1]).to_bytes(2, "big")


def recvfrom_receiver(sidecar: ModuleType) -> type:
    """The peer: sidecar.Receiver with its one socket read (Receiver._drain) done per
    datagram with sock.recvfrom; the tick, checks, latching, flush and spool are ours."""
    base: Any = sidecar.Receiver
    rx = need("callvault.sidecar.receiver")
    limit = rx.RECV_PACKETS * rx.RECV_ROUNDS

    class RecvfromReceiver(base):
        def _drain(self, watch: Any, rounds: int) -> tuple[Any, ...]:
            chunks: list[bytes] = []
            stamps: list[int] = []
            sources: list[bytes] = []
            counts = np.zeros(len(watch.pairs), np.int32)
            for i, (_, leg) in enumerate(watch.pairs):
                sock: socket.socket = leg.sock
                for _ in range(limit if rounds > 0 else 1 << 30):
                    try:
                        data, addr = sock.recvfrom(sidecar.RECV_MAX_SIZE)
                    except BlockingIOError:
                        break
                    chunks.append(data)
                    stamps.append(time.time_ns() // 1000)
                    sources.append(_source(addr))
                    counts[i] += 1
            n = len(chunks)
            lengths = np.fromiter(map(len, chunks), np.int32, n)
            src = b"".join(sources)
            # the source-latch fast path's test, as MultiRecv.recv makes it
            fd_of = np.repeat(np.arange(len(counts)), counts)
            ssrc = np.array(
                [int.from_bytes(c[8:12], "big") if len(c) >= 12 else -1 for c in chunks],
                np.int64,
            )
            want = np.frombuffer(bytes(watch.source), np.uint8).reshape(-1, 18)[fd_of]
            got = np.frombuffer(src, np.uint8).reshape(n, 18)
            mine = (
                watch.latched[fd_of].astype(bool)
                & (got == want).all(axis=1)
                & (ssrc == watch.ssrc[fd_of])
            )
            zeros = np.zeros(len(counts), np.int32)
            return (
                b"".join(chunks),
                lengths,
                np.array(stamps, np.int64),
                src,
                counts,
                zeros,
                zeros,
                mine,
            )

    return RecvfromReceiver


def bind(sidecar: ModuleType, net: ModuleType) -> socket.socket:
    """A leg's socket as Sidecar._bind makes it (port 0: any free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sidecar.RCVBUF)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    net.enable_timestamps(sock.fileno())
    return sock


def _receive_failed(call: Any, exc: BaseException) -> None:
    raise AssertionError(f"the receiver failed call {call.call_id}: {exc!r}")


@dataclass
class Round:
    root: Path
    receiver: Any
    calls: list[Any]
    sender: subprocess.Popen[bytes]
    expected: int
    go_us: int = 0
    end_us: int = 0
    wall_s: float = 0.0
    thread_cpu_s: float = 0.0
    closed: bool = False


@dataclass
class Side:
    """One side of one workload: how it reads, how the sender sends, what each round saw."""

    name: str
    receiver_class: type
    paced: bool
    root: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)
    made: int = 0

    def setup(self) -> tuple[tuple[Round], dict[str, Any]]:
        sidecar = need("callvault.sidecar")
        spool_mod = need("callvault.sidecar.spool")
        net = need("callvault._net")
        pb = need("callvault_client").pb
        root = self.root / f"round{self.made}"
        self.made += 1
        root.mkdir(parents=True)
        receiver = self.receiver_class(lambda call: None, _receive_failed)
        key = spool_mod.load_sidecar_key(root)  # spools encrypted, as the sidecar's are
        receiver.start()
        calls = []
        for i in range(CALLS):
            socks = [bind(sidecar, net) for _ in range(LEGS)]
            ports = [s.getsockname()[1] for s in socks]
            start = pb.CallStart(
                call_id=f"bench-{i}", legs=[pb.LegSpec(name=n) for n in ("agent", "customer")]
            )
            spool = spool_mod.Spool.create(
                root,
                spool_mod.spool_name("", f"bench-{i}"),
                start.SerializeToString(),
                ports,
                net.now_us(),
                key=key,
            )
            call = sidecar.Call(spool)
            for leg, sock in zip(call.legs, socks, strict=True):
                leg.sock = sock
            receiver.submit(functools.partial(receiver.add, call)).result()
            calls.append(call)
        all_ports = ",".join(str(leg.port) for call in calls for leg in call.legs)
        sender = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_sidecar",
                "send",
                "paced" if self.paced else "burst",
                str(PACKETS_PER_LEG),
                all_ports,
            ],
            cwd=HERE.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert sender.stdout is not None
        line = sender.stdout.readline()
        assert line.strip() == b"ready", f"the sender did not start: {line!r}"
        return (Round(root, receiver, calls, sender, CALLS * LEGS * PACKETS_PER_LEG),), {}

    def finish(self, r: Round) -> None:
        """Untimed: stop the receiver, read the sender's report, check every spool."""
        if r.closed:
            return
        r.closed = True
        try:
            r.receiver.shutdown()
            out, _ = r.sender.communicate(timeout=30)
            report = json.loads(out.decode().splitlines()[-1])
            check(r, report)
            packets = sum(c.packets for c in r.calls)
            self.rounds.append(
                {
                    "packets": packets,
                    "lost": r.expected - packets,
                    "wall_s": r.wall_s,
                    "packets_per_s": packets / r.wall_s if r.wall_s else 0.0,
                    "receiver_thread_cpu_s": r.thread_cpu_s,
                    "spool_batches": sum(c.spool.batches for c in r.calls),
                    "sender_s": report["seconds"],
                    "sender_lag_max_s": report["lag_max_s"],
                }
            )
        finally:
            if r.sender.poll() is None:
                r.sender.kill()
                r.sender.wait()
            for c in r.calls:
                c.spool.close()
            shutil.rmtree(r.root, ignore_errors=True)

    def summary(self) -> dict[str, Any]:
        """The rounds' figures for extra_info (medians, and every round)."""
        rounds = self.rounds[WARMUP:] or self.rounds  # the timed rounds (all if disabled)

        def med(key: str) -> float:
            return statistics.median(x[key] for x in rounds)

        n = rounds[0]["packets"] if rounds else 0
        return {
            "offered": "real time (50 pps per leg)" if self.paced else "as fast as possible",
            "packets_per_round": n,
            "wall_s_median": med("wall_s"),
            "packets_per_s_median": med("packets_per_s"),
            "lost_total": sum(x["lost"] for x in self.rounds),  # warmup included
            "receiver_thread_cpu_us_per_packet_median": med("receiver_thread_cpu_s") / n * 1e6
            if n
            else 0.0,
            "spool_batches_median": med("spool_batches"),
            "rounds_detail": rounds,
        }


def spooled(r: Round) -> int:
    return sum(c.spool.packets for c in r.calls)


def receive(r: Round) -> Round:
    """The timed part: tell the sender to go; wait until every packet is in a spool
    (or nothing more arrives after the sender ended: lost packets, failed in finish)."""
    net = need("callvault._net")
    assert r.sender.stdin is not None
    r.thread_cpu_s = -thread_cpu(r)
    r.go_us = net.now_us()
    t0 = time.perf_counter()
    r.sender.stdin.write(b"go\n")
    r.sender.stdin.flush()
    last, last_t = 0, t0
    while True:
        n = spooled(r)
        now = time.perf_counter()
        if n >= r.expected:
            break
        if n != last:
            last, last_t = n, now
        elif r.sender.poll() is not None and now - last_t > STALL_S:
            break
        time.sleep(0.01)
    r.wall_s = time.perf_counter() - t0
    r.end_us = net.now_us()
    r.thread_cpu_s += thread_cpu(r)
    return r


def thread_cpu(r: Round) -> float:
    """CPU seconds the receiver thread has used so far."""
    return time.clock_gettime(time.pthread_getcpuclockid(r.receiver.ident))


def check(r: Round, report: dict[str, Any]) -> None:
    spool_mod = need("callvault.sidecar.spool")
    assert report["sent"] == r.expected, f"the sender sent {report['sent']} of {r.expected}"
    got = sum(c.packets for c in r.calls)
    assert got == r.expected, f"lost {r.expected - got} of {r.expected} packets"
    assert sum(c.truncated for c in r.calls) == 0
    for ci, call in enumerate(r.calls):
        key = spool_mod.load_sidecar_key(call.spool.directory.parent)
        spool = spool_mod.Spool.open(call.spool.directory, key=key)
        try:
            assert spool.start_us is not None
            assert spool.packets == LEGS * PACKETS_PER_LEG
            per_leg: list[list[bytes]] = [[] for _ in range(LEGS)]
            stamps: list[list[int]] = [[] for _ in range(LEGS)]
            for b in spool.read_from(0):
                per_leg[b.leg] += list(b.run)
                stamps[b.leg] += [int(a) for a in b.arrival_us]
        finally:
            spool.close()
        for li in range(LEGS):
            leg = ci * LEGS + li
            assert per_leg[li] == [packet(leg, s) for s in range(PACKETS_PER_LEG)], (
                f"call {ci} leg {li}: the spool does not hold the packets sent, in order"
            )
            a = np.array(stamps[li])
            assert a.min() >= r.go_us - 1000 and a.max() <= r.end_us + 1000, (
                f"call {ci} leg {li}: arrival stamps outside the round"
            )


@dataclass
class Workload:
    loop: Any  # conftest.Interleaved: ours and recvfrom, round by round
    sides: dict[str, Side]  # each side's rounds and figures, once the loop made it


@pytest.fixture(scope="module")
def workloads(interleaved: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Workload]:
    """Per workload, ours and the recvfrom peer round by round in one loop: a warm-up
    round of each, then ROUNDS rounds, the order rotated each round."""
    out: dict[str, Workload] = {}
    for name, paced in ((NAME, True), (NAME_BURST, False)):
        root = tmp_path_factory.mktemp(name)
        w = Workload(None, {})

        def make(kind: str, paced: bool = paced, root: Path = root, w: Workload = w) -> Any:
            sidecar = need("callvault.sidecar")
            receiver = sidecar.Receiver if kind == "ours" else recvfrom_receiver(sidecar)
            side = w.sides[kind] = Side(kind, receiver, paced, root / kind)
            return interleaved.round(receive, setup=lambda: side.setup()[0], teardown=side.finish)

        w.loop = interleaved(
            {
                "ours": functools.partial(make, "ours"),
                "recvfrom": functools.partial(make, "recvfrom"),
            },
            rounds=ROUNDS,
            warmup_rounds=WARMUP,
        )
        out[name] = w
    return out


def run_side(benchmark: Any, w: Workload, kind: str) -> None:
    r = w.loop.take(kind, benchmark)
    side = w.sides[kind]
    side.finish(r)  # a no-op: every round is finished (checked) untimed after its run
    benchmark.extra_info.update(side.summary())


def _flush_ms() -> int:
    flush_ms: int = need("callvault.sidecar").FLUSH_MS
    return flush_ms


WHAT = {
    NAME: f"{CALLS} calls x {LEGS} legs (UDP sockets), {PACKETS_PER_LEG} G.711 RTP "
    f"packets of {12 + PAYLOAD} bytes per leg in real time (20 ms, 3 s), flushed "
    "every {flush} ms into spool files; time = receiving process CPU",
    NAME_BURST: f"{CALLS} calls x {LEGS} legs (UDP sockets), {PACKETS_PER_LEG} G.711 RTP "
    f"packets of {12 + PAYLOAD} bytes per leg sent as fast as sendmmsg goes, "
    "flushed every {flush} ms into spool files; time = receiving process CPU",
}


def tag_ours(workload: Tag, benchmark: Any, name: str) -> None:
    workload(
        benchmark,
        name,
        "ours",
        units=CALLS * LEGS * PACKETS_PER_LEG,
        unit="packet (CPU)",
        what=WHAT[name].format(flush=_flush_ms()),
    )


def tag_peer(workload: Tag, benchmark: Any, name: str) -> None:
    workload(
        benchmark,
        name,
        "peer",
        units=CALLS * LEGS * PACKETS_PER_LEG,
        unit="packet (CPU)",
        peer="sock.recvfrom per datagram in the same Receiver loop and spool",
        target="none (CPU ratio reported)",
    )


def test_sidecar_receive_ours(
    benchmark: Any, workload: Tag, workloads: dict[str, Workload]
) -> None:
    tag_ours(workload, benchmark, NAME)
    run_side(benchmark, workloads[NAME], "ours")


def test_sidecar_receive_peer_recvfrom(
    benchmark: Any, workload: Tag, workloads: dict[str, Workload]
) -> None:
    tag_peer(workload, benchmark, NAME)
    run_side(benchmark, workloads[NAME], "recvfrom")


def test_sidecar_receive_burst_ours(
    benchmark: Any, workload: Tag, workloads: dict[str, Workload]
) -> None:
    tag_ours(workload, benchmark, NAME_BURST)
    run_side(benchmark, workloads[NAME_BURST], "ours")


def test_sidecar_receive_burst_peer_recvfrom(
    benchmark: Any, workload: Tag, workloads: dict[str, Workload]
) -> None:
    tag_peer(workload, benchmark, NAME_BURST)
    run_side(benchmark, workloads[NAME_BURST], "recvfrom")


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "send":
        print(
            "usage: python -m benchmarks.bench_sidecar send paced|burst PER_LEG PORT,PORT,...",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(sender_main(sys.argv[2:]))

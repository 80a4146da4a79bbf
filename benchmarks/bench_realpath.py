"""The deployment's own benchmark: RTP -> `callvault sidecar` -> `callvault serve`.

    realpath_calls          The largest number N of concurrent dual-track calls
                            recorded in real time through the real path, with
                            every frame stored, every call sealed within
                            SEAL_LIMIT_S of its stop and acknowledgement
                            latency p99 < 1 s.
      ours                  Levels of N calls (ramp 4, 8, 16, ... doubling until
                            a level fails, then bisection to +-2 calls), each on
                            a fresh `callvault serve` (tests/servers.py) and a
                            fresh `callvault sidecar` (tests/e2e/sidecar_procs.py:
                            --server, --rtp with 4N + 16 ports: an even RTP
                            port and its RTCP neighbour per leg, --listen,
                            --spool), both real processes. The N calls are
                            started through the sidecar's control API
                            (callvault_client.SidecarClient.start_call); ONE
                            sender process (benchmarks/rtpsender.py, how it paces
                            and staggers: its docstring) sends 20 ms PCMU RTP,
                            172-byte packets, to both legs' ports of every call
                            for CALL_SECONDS; then every call is stopped
                            (SidecarClient.stop_call) and the benchmark waits
                            until the sidecar reports every call "sealed"
                            (ListCalls: the server acknowledged the seal).
                            A level passes when:
                              - the sender sent every packet (no send error);
                              - every call is sealed on the server, each leg with
                                exactly CALL_SECONDS x 50 packets recorded as
                                audio and nothing lost (GetCall include_summary:
                                legs[].rtp.audio_packets, legs[].lost,
                                legs[].rtp.lost_frames); its frames
                                (legs[].frames, legs[].rtp.frames: its span on
                                the call's 20 ms grid) CALL_SECONDS x 50 or one
                                more, as a leg staggered against the call's
                                first packet straddles one more grid frame;
                              - every call was seen sealed within SEAL_LIMIT_S of
                                its stop_call being sent (ListCalls polled every
                                POLL_S, so to within POLL_S);
                              - the acknowledgement latency p99 < 1 s. Measured
                                from outside, without touching the product:
                                ListCalls is polled every POLL_S from the start
                                of the calls to the last seal; for call c and
                                batch b (1, 2, ...), spooled(b) = the first poll
                                where c's `batches` >= b, acked(b) = the first
                                poll where c's `acked_seq` >= b; latency(b) =
                                acked(b) - spooled(b), over every batch of every
                                call. The resolution is POLL_S (a batch spooled
                                and acked between two polls counts 0); a batch
                                never acked counts as a failure.
                            Figures per level: server and sidecar CPU in cores
                            (utime + stime from /proc/PID/stat over the
                            streaming window / its wall time), each one's CPU ms
                            per dual-track call-second (cores x 1000 / N), calls
                            per core = N / (server + sidecar cores), the
                            sender's lag p99 and CPU cores, the machine's busy
                            cores (/proc/stat) in the same window. One round (the
                            whole search): the figures are in extra_info, its
                            time means nothing.
      ceiling               The Opus-only ceiling, measured in the same run, as
                            bench_server.py's test_server_opus_ceiling (the plain
                            C loop over libopus at the server pipeline's
                            settings; ceiling = cores / (2 x encode s per audio
                            s)).

The machine's cores are shared by the server, the sidecar, the sender and the
pytest process: extra_info says which side ran out (the sender late against its
schedule, or the server and sidecar using the machine).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.bench_server import (
    OPUS_ROUNDS,
    OPUS_SECONDS,
    P99_LIMIT_S,
    TICK,
    Level,
    audio_file,  # noqa: F401  (a fixture: the dialogue's two legs as mu-law)
    cpu_ticks,
    leg_pcm,  # noqa: F401  (a fixture: 10 s of one leg for the ceiling)
    machine_ticks,
    opus_settings,
    percentile,
    ramp_and_bisect,
    record_levels,
    tag,
)
from benchmarks.conftest import OpusLoop, need
from callvault.sidecar.receiver import FLUSH_MS
from callvault.timeline import SAMPLE_RATE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

REALPATH = "realpath_calls"

CALL_SECONDS = 15.0
SEAL_LIMIT_S = 2.0
POLL_S = 0.1
FIRST_LEVEL = 4
MAX_LEVEL = 256
MAX_LEVELS = 8  # ramp + bisection steps
SEARCH_BUDGET_S = 300.0  # no new level once the search has run this long
BISECT_STEP = 2
SEAL_WAIT_S = 60.0  # give up waiting for seals after this (the level fails)


# -- the Opus-only ceiling (the same C loop and settings as bench_server.py) ----------
def test_realpath_opus_ceiling(
    benchmark: Any,
    opus_c_loop: OpusLoop,
    leg_pcm: npt.NDArray[np.int16],  # noqa: F811
) -> None:
    s = opus_settings()
    n = len(leg_pcm)
    out = np.empty(n * 4000, dtype=np.uint8)
    lengths = np.empty(n, dtype=np.int32)
    tag(
        benchmark,
        REALPATH,
        "ceiling",
        audio_seconds=OPUS_SECONDS,
        cores=os.cpu_count() or 1,
        settings=s,
        what=f"plain C loop over libopus, {OPUS_SECONDS:g} s of one leg per round, "
        f"8 kHz mono VoIP 20 ms, {s['bitrate'] // 1000} kb/s, complexity "
        f"{s['complexity']}, DTX {'on' if s['dtx'] else 'off'}",
    )

    def run() -> int:
        return opus_c_loop.encode_into(leg_pcm, s, out, lengths)

    used = benchmark.pedantic(run, rounds=OPUS_ROUNDS, iterations=1, warmup_rounds=1)
    assert used > 0 and int(lengths.sum()) == used
    opus = need("callvault._opus")
    pcm = opus.Decoder(sample_rate=SAMPLE_RATE).decode_frames(out[:used].tobytes(), lengths)
    assert pcm.size == n * len(leg_pcm[0])


# -- polling the sidecar ---------------------------------------------------------------
@dataclass
class Poller:
    """ListCalls every POLL_S in a thread: per call, (t, batches, acked_seq) and the
    first instant it was seen sealed (monotonic clock)."""

    address: str
    series: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    sealed_at: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        from callvault_client import SidecarClient

        with SidecarClient(self.address, timeout=5.0) as sc:
            while not self._stop.is_set():
                due = time.monotonic() + POLL_S
                try:
                    calls = sc.list_calls()
                except Exception:  # noqa: BLE001  (counted: a poll lost is a gap in time)
                    self.errors += 1
                    calls = []
                t = time.monotonic()
                for c in calls:
                    self.series.setdefault(c.call_id, []).append(
                        (t, int(c.batches), int(c.acked_seq))
                    )
                    if c.state == "sealed":
                        self.sealed_at.setdefault(c.call_id, t)
                    elif c.state == "failed":
                        self.failed.setdefault(c.call_id, c.reason)
                self._stop.wait(max(0.0, due - time.monotonic()))

    def ack_latencies(self) -> tuple[list[float], int]:
        """(latency of every batch seen acked, batches spooled but never seen acked)."""
        out: list[float] = []
        never = 0
        for rows in self.series.values():
            a = np.asarray(rows, dtype=np.float64)
            t, batches, acked = a[:, 0], a[:, 1], a[:, 2]
            batches = np.maximum.accumulate(batches)
            acked = np.maximum.accumulate(acked)
            total = int(batches[-1])
            if total == 0:
                continue
            b = np.arange(1, total + 1)
            i_sp = np.searchsorted(batches, b, "left")
            i_ak = np.searchsorted(acked, b, "left")
            ok = i_ak < len(t)
            never += int((~ok).sum())
            out += (t[i_ak[ok]] - t[i_sp[ok]]).tolist()
        return out, never

    def all_sealed(self, ids: list[str]) -> bool:
        return all(c in self.sealed_at or c in self.failed for c in ids)


def leg_complete(leg: dict[str, Any], expected: int) -> bool:
    """A sealed leg holds its whole duration: every packet sent was recorded as audio
    (rtp.audio_packets == ``expected``), nothing lost (lost and rtp.lost_frames 0),
    and the leg spans ``expected`` frames of the call's 20 ms grid, or one more: a
    leg whose packets are not aligned with the call's grid (legs staggered against
    the call's first packet) straddles one more grid frame (rtp.frames, frames)."""
    rtp = leg.get("rtp", {})
    return (
        int(rtp.get("audio_packets", -1)) == expected
        and int(leg["lost"]) == 0
        and int(rtp.get("lost_frames", -1)) == 0
        and expected <= int(rtp.get("frames", -1)) <= expected + 1
        and expected <= int(leg["frames"]) <= expected + 1
    )


# -- one level --------------------------------------------------------------------------
def run_level(
    calls: int, workdir: Path, audio: tuple[Path, int], server_config: dict[str, Any] | None = None
) -> Level:
    """One level: a fresh server and sidecar, ``calls`` calls sent in real time by one
    sender process, stopped, sealed, then checked. ``server_config``: the server's
    --config settings (the G.711 mode's; None: the defaults)."""
    from callvault_client import Client, SidecarClient

    from tests.e2e.sidecar_procs import rtp_range, start_sidecar
    from tests.servers import start_server

    d = workdir / f"level-{calls}"
    d.mkdir(parents=True)
    args: tuple[str, ...] = ()
    if server_config is not None:
        (d / "config.json").write_text(json.dumps(server_config))
        args = ("--config", str(d / "config.json"))
    server = start_server(d / "data", log_dir=d, args=args)
    sidecar = None
    sender: subprocess.Popen[str] | None = None
    poller: Poller | None = None
    try:
        sidecar = start_sidecar(server.address, d / "spool", rtp_range(4 * calls + 16), d)
        ids = [f"real-{calls}-{i:04d}" for i in range(calls)]
        legs: list[list[int]] = []
        with SidecarClient(sidecar.address, timeout=30.0) as sc:
            for i, cid in enumerate(ids):
                ports = sc.start_call(cid)
                legs += [[i, ports["agent"]], [i, ports["customer"]]]
            spec = {
                "host": "127.0.0.1",
                "legs": legs,
                "seconds": CALL_SECONDS,
                "audio": str(audio[0]),
                "leg_bytes": audio[1],
                "seed": calls,
            }
            sp = d / "sender.json"
            sp.write_text(json.dumps(spec))
            with open(d / "sender.log", "w") as log:
                sender = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.rtpsender", str(sp)],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            assert sender.stdout is not None and sender.stdin is not None
            line = sender.stdout.readline()
            if line.strip() != "ready":
                raise AssertionError(f"sender not ready: {line!r}")
            poller = Poller(sidecar.address)
            poller.start()
            start = time.time() + 1.0
            sender.stdin.write(f"{start!r}\n")
            sender.stdin.flush()
            time.sleep(max(0.0, start - time.time()))
            spid, cpid = server.proc.pid, sidecar.proc.pid
            t0, s0, c0, m0 = time.monotonic(), cpu_ticks(spid), cpu_ticks(cpid), machine_ticks()
            time.sleep(CALL_SECONDS + 0.1)
            t1, s1, c1, m1 = time.monotonic(), cpu_ticks(spid), cpu_ticks(cpid), machine_ticks()
            out, _ = sender.communicate(timeout=120)
            if sender.returncode:
                raise AssertionError(f"sender exited with {sender.returncode}")
            sent = json.loads(out.strip().splitlines()[-1])
            # every call's last packet is in flight for at most a few ms: stop them all
            stopped: dict[str, float] = {}
            for cid in ids:
                stopped[cid] = time.monotonic()
                sc.stop_call(cid)
            deadline = time.monotonic() + SEAL_WAIT_S
            while not poller.all_sealed(ids) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            time.sleep(2 * POLL_S)
        poller.stop()
        t2, s2, c2 = time.monotonic(), cpu_ticks(spid), cpu_ticks(cpid)

        expected = int(sent["frames_per_leg"])
        reasons: list[str] = []
        unsent = 2 * calls * expected - sum(sent["sent"])
        if unsent:
            reasons.append(f"the sender could not send {unsent} packets")
        if poller.failed:
            k, why = next(iter(poller.failed.items()))
            reasons.append(f"{len(poller.failed)} calls failed, e.g. {k}: {why}")
        unsealed = [c for c in ids if c not in poller.sealed_at]
        if unsealed:
            reasons.append(f"{len(unsealed)} of {calls} calls not sealed")
        delays = [poller.sealed_at[c] - stopped[c] for c in ids if c in poller.sealed_at]
        late = sum(1 for x in delays if x > SEAL_LIMIT_S)
        if late:
            reasons.append(
                f"{late} calls sealed later than {SEAL_LIMIT_S:g} s after their stop "
                f"(max {max(delays):.3g} s)"
            )
        bad_legs = lost = 0
        with Client(server.address, timeout=30.0) as client:
            for cid in ids:
                if cid not in poller.sealed_at:
                    continue
                info = client.get_call(cid, include_summary=True)
                legs_s = json.loads(info.summary_json)["legs"]
                bad_legs += sum(1 for leg in legs_s if not leg_complete(leg, expected))
                bad_legs += max(0, 2 - len(legs_s))
                lost += sum(int(leg["lost"]) for leg in legs_s)
        if bad_legs:
            reasons.append(f"{bad_legs} legs without exactly {expected} frames")
        if lost:
            reasons.append(f"{lost} frames lost")
        lat, never = poller.ack_latencies()
        if never:
            reasons.append(f"{never} batches never seen acknowledged")
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        if not p99 < P99_LIMIT_S:
            reasons.append(f"ack p99 {p99:.3g} s >= {P99_LIMIT_S:g} s")
        window = t1 - t0
        server_cores = (s1 - s0) / TICK / window
        sidecar_cores = (c1 - c0) / TICK / window
        sender_cores = float(sent["cpu_s"]) / float(sent["wall_s"])
        figures = {
            "calls": calls,
            "frames_per_leg": expected,
            "packets_sent": sum(sent["sent"]),
            "sealed": calls - len(unsealed),
            "bad_legs": bad_legs,
            "lost_frames": lost,
            "batches": len(lat) + never,
            "acked": len(lat),
            "ack_p50_s": p50,
            "ack_p99_s": p99,
            "ack_max_s": max(lat, default=math.inf),
            "poll_s": POLL_S,
            "poll_errors": poller.errors,
            "seal_after_stop_max_s": max(delays, default=math.inf),
            "seal_after_stop_p50_s": percentile(delays, 50),
            "server_cpu_cores": server_cores,
            "sidecar_cpu_cores": sidecar_cores,
            "server_cpu_ms_per_call_s": server_cores * 1000 / calls,
            "sidecar_cpu_ms_per_call_s": sidecar_cores * 1000 / calls,
            "calls_per_core": calls / (server_cores + sidecar_cores)
            if server_cores + sidecar_cores > 0
            else math.inf,
            "server_cpu_s_total": (s2 - s0) / TICK,
            "sidecar_cpu_s_total": (c2 - c0) / TICK,
            # the sender, as bench_server's generators (report.py reads these names)
            "generators": 1,
            "gen_cpu_cores": sender_cores,
            "gen_lag_p99_s": float(sent["lag_p99_s"]),
            "gen_lag_max_s": float(sent["lag_max_s"]),
            "machine_busy_cores": (m1[0] - m0[0]) / TICK / window,
            "machine_cores": os.cpu_count() or 1,
            "level_wall_s": t2 - t0,
        }
        return Level(calls, not reasons, reasons, figures)
    finally:
        if poller is not None:
            poller.stop()
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait()
        if sidecar is not None:
            sidecar.stop()
        server.stop()


def search(
    workdir: Path,
    audio: tuple[Path, int],
    server_config: dict[str, Any] | None = None,
    first: int = FIRST_LEVEL,
) -> list[Level]:
    """Double from ``first`` until a level fails, then bisect between the last pass
    and the first failure to BISECT_STEP calls."""
    levels: list[Level] = []
    began = time.monotonic()

    def level(n: int) -> Level:
        lv = run_level(n, workdir, audio, server_config)
        levels.append(lv)
        f = lv.figures
        print(
            f"\n  level {n}: {'pass' if lv.passed else 'FAIL'}  ack p99 {f['ack_p99_s']:.2f} s"
            f"  server {f['server_cpu_cores']:.2f} + sidecar {f['sidecar_cpu_cores']:.2f} cores"
            f" ({f['calls_per_core']:.1f} calls/core)  sender {f['gen_cpu_cores']:.2f} cores"
            f" lag p99 {f['gen_lag_p99_s'] * 1e3:.1f} ms  machine "
            f"{f['machine_busy_cores']:.2f} busy  seal max {f['seal_after_stop_max_s']:.2f} s"
            + ("" if lv.passed else f"  ({'; '.join(lv.reasons)})"),
            flush=True,
        )
        return lv

    ramp_and_bisect(
        lambda n: level(n).passed,
        first=first,
        max_level=MAX_LEVEL,
        step=lambda good: BISECT_STEP,
        budget_left=lambda: len(levels) < MAX_LEVELS and time.monotonic() - began < SEARCH_BUDGET_S,
    )
    return levels


def test_realpath_calls(
    benchmark: Any,
    tmp_path: Path,
    audio_file: tuple[Path, int],  # noqa: F811
) -> None:
    need("callvault.server.app")
    need("callvault.sidecar")
    tag(
        benchmark,
        REALPATH,
        "capacity",
        path="sidecar",
        call_seconds=CALL_SECONDS,
        batch_ms=FLUSH_MS,  # the sidecar's window: one batch per leg per tick
        p99_limit_s=P99_LIMIT_S,
        seal_limit_s=SEAL_LIMIT_S,
        poll_s=POLL_S,
        cores=os.cpu_count() or 1,
        what=f"concurrent dual-track calls of {CALL_SECONDS:g} s, 20 ms PCMU RTP over UDP "
        "(172-byte packets, legs staggered over 20 ms) from one sender process to a "
        "`callvault sidecar` forwarding to one `callvault serve`",
    )
    levels: list[Level] = benchmark.pedantic(
        search, args=(tmp_path, audio_file), rounds=1, iterations=1
    )
    record_levels(benchmark, levels, FIRST_LEVEL)


# -- peak mode: the same search, the server storing G.711 (issue 10, section 3) --------
REALPATH_G711 = "realpath_calls_g711"
G711_CONFIG = {"ingest_codec": "g711", "compact_paused": True}
G711_FIRST_LEVEL = 16


def test_realpath_calls_g711(
    benchmark: Any,
    tmp_path: Path,
    audio_file: tuple[Path, int],  # noqa: F811
) -> None:
    """realpath_calls with the server in peak mode: --config ingest_codec g711 (each
    leg's de-jittered frames stored as G.711, no Opus encoding at ingest) and the
    compactor paused, so the figures are ingest's alone. Everything else (sender,
    sidecar, pass criteria, figures) is realpath_calls'. Target: >= 400 dual-track
    calls per core."""
    need("callvault.server.app")
    need("callvault.sidecar")
    tag(
        benchmark,
        REALPATH_G711,
        "capacity",
        path="sidecar",
        server_config=G711_CONFIG,
        call_seconds=CALL_SECONDS,
        batch_ms=FLUSH_MS,
        p99_limit_s=P99_LIMIT_S,
        seal_limit_s=SEAL_LIMIT_S,
        poll_s=POLL_S,
        cores=os.cpu_count() or 1,
        what=f"as {REALPATH}, the server storing G.711 (peak mode, compactor paused)",
    )
    levels: list[Level] = benchmark.pedantic(
        search,
        args=(tmp_path, audio_file, G711_CONFIG, G711_FIRST_LEVEL),
        rounds=1,
        iterations=1,
    )
    record_levels(benchmark, levels, G711_FIRST_LEVEL)


def main(argv: list[str] | None = None) -> int:
    """One level by hand, without pytest: ``python -m benchmarks.bench_realpath N
    [--config JSON]`` runs N calls through fresh real processes (as a level of the
    search does) and prints whether it passed, why not, and its figures as JSON."""
    import argparse
    import tempfile

    from callvault import _g711
    from callvault.media import sample

    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_realpath")
    ap.add_argument("calls", type=int)
    ap.add_argument("--config", default=None, help="the server's --config settings, as JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="realpath-") as tmp:
        legs = sample.dialogue(30.0)
        enc = [_g711.encode(np.ascontiguousarray(x), _g711.PCMU) for x in legs]
        path = Path(tmp) / "legs.ulaw"
        path.write_bytes(enc[0] + enc[1])
        config = json.loads(args.config) if args.config else None
        lv = run_level(args.calls, Path(tmp), (path, len(enc[0])), config)
    print(json.dumps({"calls": lv.calls, "passed": lv.passed, "reasons": lv.reasons, **lv.figures}))
    return 0 if lv.passed else 1


if __name__ == "__main__":
    sys.exit(main())

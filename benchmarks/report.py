"""Turn one pytest-benchmark JSON run into benchmarks/RESULTS.md.

    python -m benchmarks.report benchmarks/last-run.json [-o benchmarks/RESULTS.md]

Every benchmark is tagged (benchmarks/conftest.py) with its workload and its
side, "ours" or "peer". For each workload, each peer gets one row: ours'
median and the peer's median from this same run, and their ratio
(ours / peer: below 1 means ours is faster). A peer tagged with max_ratio
carries the workload's target; the row says whether this run met it.
Medians only: the machines are shared and noisy, a single time means little.

Benchmarks tagged with side "sizes" measure bytes, not time: their
extra_info["sizes"] rows (item, bytes, per_hour, note; one row marked
"ours", parts of it marked "part") go to a "Sizes" table, each other row
beside ours as a ratio, and their
time is never printed.

Benchmarks tagged with side "capacity" (a search for the most concurrent
real-time calls one server takes, figures in extra_info, one round whose time
means nothing) and "ceiling" (the C loop over libopus whose median gives the
Opus-only ceiling) go to a "Concurrent real-time calls" section
(benchmarks/bench_server.py): N, the ceiling, N / ceiling, ack latency p99
and server CPU per level, and the playback ratio of the workload the
capacity benchmark names in extra_info["playback"]. A capacity benchmark
tagged path="sidecar" (benchmarks/bench_realpath.py) gets its own section:
N, calls per core, server and sidecar CPU per dual-track call-second, per level.

The offline workloads (benchmarks/bench_transcode.py: offline_transcode_cpu,
offline_import_cpu, offline_transcode_no_dtx_replacement_cpu, each against the
same plain C pipeline) get an "Offline path" section: each ratio against the
target, and the share of the transcode's CPU that the DTX replacement's
second encode takes (the transcode with and without it, same run).

Workloads whose "ours" is tagged cpu_per_call_second (benchmarks/bench_pipeline.py,
timed in CPU seconds) also get a "Per-batch audio path" section: ours and each
peer in CPU ms per dual-track call-second, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CAPACITY_SIDES = ("capacity", "ceiling")


@dataclass
class Bench:
    name: str
    median: float  # seconds per round
    rounds: int
    info: dict[str, Any]


@dataclass
class Workload:
    name: str
    ours: list[Bench] = field(default_factory=list)
    peers: list[Bench] = field(default_factory=list)
    sizes: list[Bench] = field(default_factory=list)  # not timings: bytes (side "sizes")
    capacity: list[Bench] = field(default_factory=list)  # sides "capacity" and "ceiling"


@dataclass
class Row:
    workload: str
    ours: Bench | None
    peer: Bench | None
    ratio: float | None  # ours median / peer median
    target: str
    met: str


def load(path: Path) -> tuple[dict[str, Any], list[Workload]]:
    run = json.loads(path.read_text())
    workloads: dict[str, Workload] = {}
    failed: list[str] = run.setdefault("failed", [])
    for b in run.get("benchmarks", []):
        info = b.get("extra_info", {})
        name = info.get("workload")
        if name is None:  # an untagged benchmark: no pair, no row
            continue
        if info.get("failed"):  # its checks failed (conftest.py): its time means nothing
            failed.append(b["name"])
            continue
        w = workloads.setdefault(name, Workload(name))
        bench = Bench(b["name"], float(b["stats"]["median"]), int(b["stats"]["rounds"]), info)
        side = info.get("side")
        (
            w.ours
            if side == "ours"
            else w.sizes
            if side == "sizes"
            else w.capacity
            if side in CAPACITY_SIDES
            else w.peers
        ).append(bench)
    return run, [workloads[k] for k in sorted(workloads)]


def rows(workloads: list[Workload]) -> list[Row]:
    out: list[Row] = []
    for w in workloads:
        if not w.ours and not w.peers:  # sizes or capacity only: no timing row
            continue
        ours = w.ours[0] if len(w.ours) == 1 else None
        if len(w.ours) > 1:
            raise ValueError(f"workload {w.name}: {len(w.ours)} benchmarks tagged 'ours'")
        if not w.peers:
            out.append(Row(w.name, ours, None, None, "-", "no peer in this run"))
        for p in w.peers:
            target = p.info.get("target", "-")
            max_ratio = p.info.get("max_ratio")
            if ours is None:
                out.append(Row(w.name, None, p, None, target, "ours did not run or failed"))
                continue
            ratio = ours.median / p.median
            if max_ratio is None:
                met = "no target"
            else:
                met = "met" if ratio <= float(max_ratio) else "**not met**"
            out.append(Row(w.name, ours, p, ratio, target, met))
    return out


def seconds(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def amount(x: float) -> str:
    """A throughput: whole numbers with separators from 100 on, else 3 significant digits."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def figure(b: Bench | None) -> str:
    """A median as the workload states it: throughputs, per unit, as a real-time factor,
    or per round."""
    if b is None:
        return "not run"
    info = b.info
    if info.get("rates"):
        rates = ", ".join(f"{amount(float(n) / b.median)} {u}/s" for u, n in info["rates"].items())
        return f"{rates} ({seconds(b.median)})"
    if info.get("call_seconds"):
        rtf = float(info["call_seconds"]) / b.median
        return f"RTF {rtf:.1f}x ({seconds(b.median)})"
    if info.get("units"):
        per = b.median / float(info["units"])
        return f"{seconds(per)}/{info.get('unit', 'unit')} ({seconds(b.median)})"
    return seconds(b.median)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(run: dict[str, Any], workloads: list[Workload], source: str) -> str:
    table = rows(workloads)
    commit = run.get("commit_info", {})
    machine = run.get("machine_info", {})
    libopus = next(
        (b.info["libopus"] for w in workloads for b in w.ours if "libopus" in b.info), None
    )
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m benchmarks.report {source}` from the JSON of one "
        "`make bench` run; do not edit by hand (run `make bench` again). What each workload "
        "does is at the top of its benchmarks/bench_*.py file and in benchmarks/README.md.",
        "",
        f"- date of the run: {run.get('datetime', 'unknown')}",
        f"- commit: {commit.get('id', 'unknown')[:12]}"
        + (" (with local changes)" if commit.get("dirty") else ""),
        f"- machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, "
        f"{machine.get('system', platform.system())} "
        f"{machine.get('release', platform.release())}; shared with other jobs, so expect noise",
        f"- Python {machine.get('python_version', platform.python_version())}"
        + (f", {libopus}" if libopus else ""),
        "",
        "Ratio = ours median / peer median, both from this run (below 1: ours is faster). "
        "Figures per unit are the round's median divided by the work in a round; "
        "RTF = call seconds / wall seconds.",
        "",
        "| workload | ours (median) | peer | peer (median) | ratio ours/peer | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        peer_name = r.peer.info.get("peer", r.peer.name) if r.peer else "-"
        ratio = (
            "-"
            if r.ratio is None
            else f"{r.ratio:.3g} (ours {1 / r.ratio:.3g}x faster)"
            if r.ratio < 1
            else f"{r.ratio:.3g} (ours {r.ratio:.3g}x slower)"
        )
        lines.append(
            f"| {r.workload} | {figure(r.ours)} | {peer_name} | {figure(r.peer)} | "
            f"{ratio} | {r.target} | {r.met} |"
        )
    lines += sizes_table(workloads)
    lines += offline_section(table)
    lines += capacity_section(workloads, table)
    lines += pipeline_section(workloads)
    if run.get("failed"):
        lines += [
            "",
            "Left out because their checks failed: "
            + ", ".join(f"`{n}`" for n in run["failed"])
            + ".",
        ]
    lines += ["", "## Workloads in this run", ""]
    for w in workloads:
        what = next((b.info["what"] for b in w.ours + w.sizes if "what" in b.info), "")
        if w.capacity and not w.ours and not w.peers:
            lines.append(f'- **{w.name}**: see "Concurrent real-time calls" above.')
            continue
        if not w.ours and not w.peers:
            lines.append(f"- **{w.name}**: {what}. Sizes, not timings.")
            continue
        rounds = ", ".join(f"{b.name}: {b.rounds}" for b in w.ours + w.peers)
        how = (
            " (interleaved: each round ran every side once, in turn)"
            if all("interleaved" in b.info for b in w.ours + w.peers)
            else " (one side after the other)"
        )
        lines.append(f"- **{w.name}**: {what}. Rounds{how}: {rounds}.")
        for b in w.ours + w.peers:
            if "fsyncs" in b.info:
                lines.append(f"  `{b.name}`: {b.info['fsyncs']}.")
        for b in w.peers:
            if "command" in b.info:
                lines.append(f"  Peer command: `{b.info['command']}`.")
    return "\n".join(lines) + "\n"


def pipeline_section(workloads: list[Workload]) -> list[str]:
    """The "Per-batch audio path" section (benchmarks/bench_pipeline.py): CPU per
    dual-track call-second of the server's per-leg-batch path and of Opus alone."""
    found = [
        w for w in workloads if w.ours and w.peers and w.ours[0].info.get("cpu_per_call_second")
    ]
    if not found:
        return []
    out = [
        "",
        "## Per-batch audio path (server)",
        "",
        "`LegBatch.checked` and `LiveCall.process` per leg batch from the wire's RtpBatch "
        "(jitter buffer, DTMF, VAD, levels, Opus with the voice/silence bitrates, DTX "
        "replacement, records into a real vault) against the "
        "plain C loop over libopus encoding the same two legs (Opus alone); CPU time of the "
        "process, medians of interleaved rounds (benchmarks/bench_pipeline.py).",
        "",
        "| packets per leg batch | ours, CPU ms per dual-track call-second | Opus alone "
        "(C loop) | ratio |",
        "|---|---|---|---|",
    ]
    for w in found:
        ours = w.ours[0]
        secs = float(ours.info.get("call_seconds") or 1.0)
        for p in w.peers:
            out.append(
                f"| {w.name} | {1000 * ours.median / secs:.2f} | "
                f"{1000 * p.median / secs:.2f} | {ours.median / p.median:.2f}x |"
            )
    return out


def sizes_table(workloads: list[Workload]) -> list[str]:
    """The "Sizes" section: bytes on disk per hour of audio, each row beside ours."""
    benches = [b for w in workloads for b in w.sizes]
    if not benches:
        return []
    lines = [
        "",
        "## Sizes",
        "",
        "Not timings: bytes (sums of file sizes, like `du -b`) from the same run. "
        "MB = 10^6 bytes; kb/s = 1000 bits/s for both legs together. "
        "ours/this below 1: ours is smaller.",
        "",
    ]
    for b in benches:
        info = b.info
        rows_ = info.get("sizes", [])
        ours = next((r for r in rows_ if r.get("ours")), None)
        lines += [
            f"**{info.get('workload', b.name)}**: {info.get('what', '')}.",
            "",
            "| item | bytes measured | MB per dual-track hour | kb/s | ours/this | note |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows_:
            per_hour = float(r["per_hour"])
            measured = "-" if r.get("bytes") is None else f"{int(r['bytes']):,}"
            ratio = (
                "-"
                if ours is None or r is ours or r.get("part") or not per_hour
                else f"{float(ours['per_hour']) / per_hour:.3g}"
            )
            item = f"**{r['item']}**" if r.get("ours") else r["item"]
            lines.append(
                f"| {item} | {measured} | {per_hour / 1e6:.3g} | "
                f"{per_hour * 8 / 3600 / 1000:.3g} | {ratio} | {r.get('note', '')} |"
            )
        for note in info.get("notes", []):
            lines.append(f"\n{note}")
        lines.append("")
    return lines[:-1]


OFFLINE = {
    "offline_transcode_cpu": "`callvault transcode`",
    "offline_import_cpu": "`callvault import` (fresh vault)",
    "offline_transcode_no_dtx_replacement_cpu": "`transcode` without the DTX replacement",
}


def offline_section(table: list[Row]) -> list[str]:
    """The "Offline path" section: import / transcode CPU against the plain C pipeline."""
    by_name = {r.workload: r for r in table if r.workload in OFFLINE and r.ratio is not None}
    if not by_name:
        return []
    out = [
        "",
        "## Offline path against a plain C pipeline (CPU time)",
        "",
        "CPU seconds of this process (time.process_time, every thread) per round, medians "
        "of interleaved rounds; the C pipeline (benchmarks/c/pipeline.c) runs in the same "
        "process through ctypes.",
        "",
    ]
    for name, label in OFFLINE.items():
        r = by_name.get(name)
        if r is None or r.ours is None or r.peer is None:
            out.append(f"- {label}: not measured in this run (or its checks failed).")
            continue
        target = f"; target {r.target}: {r.met}" if r.target != "-" else ""
        out.append(
            f"- {label}: **{r.ours.median:.2f} s** against the C pipeline's "
            f"{r.peer.median:.2f} s = **{r.ratio:.3g}x**{target}."
        )
    full, plain = (
        by_name.get("offline_transcode_cpu"),
        by_name.get("offline_transcode_no_dtx_replacement_cpu"),
    )
    if full is not None and plain is not None and full.ours and plain.ours and full.peer:
        extra = full.ours.median - plain.ours.median
        out.append(
            f"- The DTX replacement (a second encode of the DTX frames, media/pipeline.py): "
            f"{extra:.2f} s, {100 * extra / full.ours.median:.1f} % of the transcode's CPU "
            f"({extra / full.peer.median:.3f}x the C pipeline)."
        )
    c = next((r.peer.info.get("c_pipeline") for r in by_name.values() if r.peer), None)
    if c:
        out.append(
            f"- The C pipeline's last round: {c['legs']} legs of {c['frames']:,} frames, "
            f"{c['placed']:,} of {c['rtp_packets']:,} RTP packets decoded onto the "
            f"timelines, {c['voice_frames']:,} voice frames, {c['opus_packets']:,} Opus "
            f"packets, {c['opus_bytes']:,} bytes ({c['dtx_packets']:,} DTX)."
        )
    return out


def busy(level: dict[str, Any]) -> str:
    """Every CPU's busy time, and what of it was neither the server nor the generators."""
    if "machine_busy_cores" not in level:
        return "-"
    others = level["machine_busy_cores"] - level["server_cpu_cores"] - level["gen_cpu_cores"]
    return (
        f"{level['machine_busy_cores']:.2f} of {level['machine_cores']} "
        f"(others {max(others, 0.0):.2f})"
    )


def saturated(level: dict[str, Any], batch_s: float, who: str = "the load generators") -> str:
    """Which side ran out at a failing level: the senders (``who``) if they sent late by
    more than a batch interval (p99), else the server (with what the machine had left)."""
    if level["gen_lag_p99_s"] > batch_s:
        return (
            f"{who} (late: lag p99 {seconds(level['gen_lag_p99_s'])}"
            f" > the {seconds(batch_s)} batch interval)"
        )
    idle = ""
    if "machine_busy_cores" in level:
        idle = (
            f"; the machine had {level['machine_cores'] - level['machine_busy_cores']:.2f} "
            f"of {level['machine_cores']} cores idle"
        )
    return (
        f"the server ({level['server_cpu_cores']:.2f} cores; {who} kept to their "
        f"schedule, lag p99 {seconds(max(level['gen_lag_p99_s'], 0.0))}{idle})"
    )


def capacity_section(workloads: list[Workload], table: list[Row]) -> list[str]:
    """The "Concurrent real-time calls" section (benchmarks/bench_server.py)."""
    out: list[str] = []
    for w in workloads:
        cap = next((b for b in w.capacity if b.info.get("side") == "capacity"), None)
        ceil = next((b for b in w.capacity if b.info.get("side") == "ceiling"), None)
        if cap is None and ceil is None:
            continue
        via_sidecar = cap is not None and cap.info.get("path") == "sidecar"
        title = "through the sidecar (the real path)" if via_sidecar else "(SDK batches)"
        if cap is not None and cap.info.get("server_config"):  # realpath_calls_g711
            title += f", server --config {json.dumps(cap.info['server_config'])}"
        out += ["", f"## Concurrent real-time calls {title}", ""]
        ceiling = None
        if ceil is not None:
            per_s = ceil.median / float(ceil.info["audio_seconds"])
            cores = int(ceil.info["cores"])
            ceiling = cores / (2 * per_s)
            out.append(
                f"- **Opus-only ceiling: {ceiling:.0f} dual-track calls** = cores / "
                f"(2 legs x encode seconds per audio second) = {cores} / (2 x "
                f"{per_s * 1e3:.2f} ms) (median of {ceil.rounds} rounds of "
                f"{ceil.info['what']}; every core encoding and nothing else)."
            )
        else:
            out.append("- Opus-only ceiling: not measured in this run (or its check failed).")
        if cap is None:
            out.append("- Capacity search: not run in this run (or its check failed).")
            continue
        info = cap.info
        if via_sidecar:
            out += realpath_lines(info, ceiling)
            continue
        levels: list[dict[str, Any]] = info.get("levels", [])
        by_calls = {int(lv["calls"]): lv for lv in levels}
        n = int(info.get("max_calls", 0))
        fail = info.get("first_failing_calls")
        ratio = f"; **N / ceiling = {n / ceiling:.2f}**" if ceiling else ""
        at_n = by_calls.get(n)
        out.append(
            f"- **N = {n}** concurrent dual-track calls, each {info['call_seconds']:g} s "
            f"in real time into one server, every frame stored, ack p99 < "
            f"{info['p99_limit_s']:g} s{ratio}."
        )
        if at_n is not None:
            out.append(
                f"- At N = {n}: ack latency p50 {seconds(at_n['ack_p50_s'])}, p99 "
                f"{seconds(at_n['ack_p99_s'])}; server CPU "
                f"{at_n['server_cpu_cores']:.2f} cores of {info['cores']}."
            )
        if fail is not None and int(fail) in by_calls:
            f = by_calls[int(fail)]
            out.append(
                f"- First failing level, {fail} calls: ack p99 "
                f"{seconds(f['ack_p99_s'])}, server CPU {f['server_cpu_cores']:.2f} "
                f"cores; {'; '.join(f['reasons'])}. Saturated first: "
                f"{saturated(f, float(info.get('batch_ms', 0)) / 1000)}."
            )
        elif n and fail is None:
            out.append("- No level failed within the search's limits: N is a lower bound.")
        play = info.get("playback")
        prow = next((r for r in table if r.workload == play and r.ratio is not None), None)
        if prow is not None and prow.peer is not None:
            out.append(
                f"- Playback ({play}): ours / bare grpcio = **{prow.ratio:.3g}** "
                f"(time ratio of medians; ours {figure(prow.ours)}, bare "
                f"{figure(prow.peer)})."
            )
        out += [
            "",
            f"What: {info.get('what', '')}. Levels in the order run (ramp, then "
            "bisection); server CPU = its utime + stime over the streaming window "
            "(/proc/PID/stat) / wall time; generators = load-generator processes and "
            "their CPU; machine = every CPU's busy time in the same window (server, "
            "generators and any other job on the machine; others = the rest), in cores; "
            "lag = how late the generators sent against the wall-clock schedule.",
            "",
            "| calls | result | ack p50 | ack p99 | server CPU (cores) | generators "
            "(CPU cores) | machine busy (cores) | generator lag p99 | why it failed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for lv in levels:
            out.append(
                f"| {lv['calls']} | {'pass' if lv['passed'] else '**fail**'} | "
                f"{seconds(lv['ack_p50_s'])} | {seconds(lv['ack_p99_s'])} | "
                f"{lv['server_cpu_cores']:.2f} | {lv['generators']} "
                f"({lv['gen_cpu_cores']:.2f}) | {busy(lv)} | "
                f"{seconds(max(lv['gen_lag_p99_s'], 0.0))} | "
                f"{'; '.join(lv['reasons']) or '-'} |"
            )
    return out


def realpath_lines(info: dict[str, Any], ceiling: float | None) -> list[str]:
    """The capacity search through `callvault sidecar` (benchmarks/bench_realpath.py):
    N, calls per core, each process's CPU per dual-track call-second, per level."""
    out: list[str] = []
    levels: list[dict[str, Any]] = info.get("levels", [])
    by_calls = {int(lv["calls"]): lv for lv in levels}
    n = int(info.get("max_calls", 0))
    fail = info.get("first_failing_calls")
    at_n = by_calls.get(n)
    ratio = f"; N / ceiling = {n / ceiling:.2f}" if ceiling else ""
    out.append(
        f"- **N = {n}** concurrent dual-track calls, each {info['call_seconds']:g} s of "
        f"RTP through `callvault sidecar` into `callvault serve`, every frame stored, "
        f"sealed within {info['seal_limit_s']:g} s of the stop, ack p99 < "
        f"{info['p99_limit_s']:g} s{ratio}."
    )
    if at_n is not None:
        per_core = at_n["calls_per_core"]
        per_core_ceiling = ceiling / int(info["cores"]) if ceiling else None
        vs = (
            f" ({per_core / per_core_ceiling:.2f} x the Opus-only ceiling's "
            f"{per_core_ceiling:.0f} per core)"
            if per_core_ceiling
            else ""
        )
        out.append(
            f"- At N = {n}: **{per_core:.1f} calls per core**{vs}; server "
            f"**{at_n['server_cpu_ms_per_call_s']:.1f} ms** and sidecar "
            f"**{at_n['sidecar_cpu_ms_per_call_s']:.1f} ms** of CPU per dual-track "
            f"call-second; ack p99 {seconds(at_n['ack_p99_s'])}; sealed at most "
            f"{seconds(at_n['seal_after_stop_max_s'])} after the stop."
        )
    if fail is not None and int(fail) in by_calls:
        f = by_calls[int(fail)]
        out.append(
            f"- First failing level, {fail} calls: {'; '.join(f['reasons'])}. Saturated "
            f"first: {saturated(f, 0.020, 'the sender process')}."
        )
    elif n and fail is None:
        out.append("- No level failed within the search's limits: N is a lower bound.")
    out += [
        "",
        f"What: {info.get('what', '')}. Levels in the order run (ramp, then bisection). "
        "CPU = utime + stime over the streaming window (/proc/PID/stat) / wall time, in "
        "cores; per call-second = cores x 1000 / N; calls per core = N / (server + "
        "sidecar cores). Ack latency: ListCalls polled every "
        f"{seconds(float(info.get('poll_s', 0.1)))}, per batch the first poll that "
        "shows it acknowledged minus the first that shows it spooled. Sender lag = how "
        "late the sender process sent against its schedule.",
        "",
        "| calls | result | server CPU (cores) | sidecar CPU (cores) | server ms / "
        "call-s | sidecar ms / call-s | calls per core | ack p99 | sealed after stop "
        "(max) | sender lag p99 (CPU cores) | machine busy (cores) | why it failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        out.append(
            f"| {lv['calls']} | {'pass' if lv['passed'] else '**fail**'} | "
            f"{lv['server_cpu_cores']:.2f} | {lv['sidecar_cpu_cores']:.2f} | "
            f"{lv['server_cpu_ms_per_call_s']:.1f} | {lv['sidecar_cpu_ms_per_call_s']:.1f} | "
            f"{lv['calls_per_core']:.1f} | {seconds(lv['ack_p99_s'])} | "
            f"{seconds(lv['seal_after_stop_max_s'])} | "
            f"{seconds(max(lv['gen_lag_p99_s'], 0.0))} ({lv['gen_cpu_cores']:.2f}) | "
            f"{lv['machine_busy_cores']:.2f} of {lv['machine_cores']} | "
            f"{'; '.join(lv['reasons']) or '-'} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("json", nargs="?", default=str(HERE / "last-run.json"))
    p.add_argument("-o", "--output", default=str(HERE / "RESULTS.md"))
    args = p.parse_args(argv)
    src = Path(args.json)
    if not src.exists():
        print(f"report: {src} not found; run `make bench` first", file=sys.stderr)
        return 1
    run, workloads = load(src)
    if not workloads:
        print(f"report: no tagged benchmark in {src}", file=sys.stderr)
        return 1
    text = render(run, workloads, args.json)
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

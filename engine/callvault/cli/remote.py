"""The vault verbs against a server: `callvault --server HOST:PORT <verb>`.

Each verb prints what its local twin in callvault.cli prints, so scripts work
either way; the work happens on the server through the SDK (callvault_client).
`import` reads the inputs here (captures: their RTP as captured; WAV legs:
packetized as 20 ms PCMU RTP paced in real time) and streams them on an
Ingest stream, so the server's jitter buffer, DSP and encoder make the
recording exactly as they make a live call's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from callvault_client import Client, Recording, pb
from callvault_client.errors import CallvaultClientError

from callvault import cli
from callvault.errors import CallvaultError

# Packets per RtpBatch: big enough that per-message overhead is small, small
# enough that acknowledgements come about once a second per leg.
BATCH_PACKETS = 200
# A batch also closes when its packets span this much capture time, so the
# legs' batches interleave in arrival order as a live call's would.
BATCH_SPAN_US = 1_000_000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz


def run(args: argparse.Namespace) -> int:
    """Run ``args.command`` (one of cli.REMOTE_VERBS) against ``args.server``."""
    verbs: dict[str, Callable[[Client, argparse.Namespace], int]] = {
        "import": cmd_import,
        "ls": cmd_ls,
        "info": cmd_info,
        "export": cmd_export,
        "play": cmd_play,
        "verify": cmd_verify,
        "bundle": cmd_bundle,
        "checkpoint": cmd_checkpoint,
        "erase": cmd_erase,
        "reindex": cmd_reindex,
        "rotate-key": cmd_rotate_key,
    }
    verb = verbs.get(args.command)
    if verb is None:
        raise CallvaultError(f"{args.command} does not run against a server (--server)")
    try:
        if bool(getattr(args, "client_cert", None)) != bool(getattr(args, "client_key", None)):
            raise CallvaultError("a client certificate needs both --tls-cert and --tls-key")
        with Client(
            args.server,
            tls_ca=getattr(args, "tls_ca", None),
            tls_cert=getattr(args, "client_cert", None),
            tls_key=getattr(args, "client_key", None),
        ) as client:
            return verb(client, args)
    except CallvaultClientError as e:
        raise CallvaultError(f"{args.server}: {e.message}") from e
    except OSError as e:  # a TLS CA file that cannot be read, an output that cannot be written
        raise CallvaultError(str(e)) from e


# -- import ----------------------------------------------------------------------------

Packet = tuple[int, int, bytes]  # (arrival_us, leg, RTP packet)


def leg_packets(leg_inputs: Sequence[Any], start_us: int) -> tuple[list[Packet], list[pb.LegSpec]]:
    """Every leg's RTP packets with arrival times, merged in arrival order, and the
    legs' specs. WAV legs become 20 ms PCMU packets, the first arriving 20 ms after
    ``start_us`` (when its last sample is in) and one every 20 ms after it."""
    from callvault.media import sample
    from callvault.media.capture import AUDIO_PTS
    from callvault.media.rtppack import PT_PCMU

    packets: list[Packet] = []
    specs: list[pb.LegSpec] = []
    for i, leg in enumerate(leg_inputs):
        if leg.flow is not None:
            flow = leg.flow
            packets.extend(
                (int(at), i, p) for at, p in zip(flow.arrival_us, flow.packets, strict=True)
            )
            specs.append(
                pb.LegSpec(
                    name=leg.name,
                    event_payload_types=list(flow.event_payload_types()),
                    audio_payload_types=sorted(pt for pt in flow.payload_types if pt in AUDIO_PTS),
                )
            )
            continue
        pcm = np.asarray(leg.pcm, dtype=np.int16)
        pad = (-len(pcm)) % FRAME_SAMPLES  # a partial last frame, zero-padded as a local import
        if pad:
            pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
        plan = sample.LegPlan(law=PT_PCMU, ptime_ms=20, ssrc=0x5EED0000 + i, jitter_ms=0.0)
        # rtp_packets delays every packet 10 ms after its send time (sample / 8000 + t0)
        t0 = start_us / 1e6 + 0.020 - 0.010
        packets.extend(
            (round(at * 1e6), i, p) for at, p in sample.rtp_packets(pcm, plan, t0=t0, seed=i)
        )
        specs.append(pb.LegSpec(name=leg.name, audio_payload_types=[PT_PCMU]))
    packets.sort(key=lambda x: (x[0], x[1]))  # stable: each leg keeps its capture order
    return packets, specs


def batches(
    packets: Sequence[Packet],
    legs: int,
    *,
    max_packets: int = BATCH_PACKETS,
    max_span_us: int = BATCH_SPAN_US,
) -> Iterator[tuple[int, list[Packet]]]:
    """(leg, packets) batches in arrival order: each leg's packets accumulate until
    the leg has ``max_packets`` or the window spans ``max_span_us``; then every
    leg's pending packets go out, in leg order."""
    pending: list[list[Packet]] = [[] for _ in range(legs)]
    window_start: int | None = None
    for pkt in packets:
        at, leg, _ = pkt
        if window_start is not None and at - window_start >= max_span_us:
            yield from _flush(pending)
            window_start = None
        if window_start is None:
            window_start = at
        pending[leg].append(pkt)
        if len(pending[leg]) >= max_packets:
            yield from _flush(pending)
            window_start = None
    yield from _flush(pending)


def _flush(pending: list[list[Packet]]) -> Iterator[tuple[int, list[Packet]]]:
    for leg, pkts in enumerate(pending):
        if pkts:
            yield leg, list(pkts)
            pkts.clear()


def send_call(
    rec: Recording,
    packets: Sequence[Packet],
    legs: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send the packets as batches on the recording; returns the batch count."""
    n = 0
    for leg, pkts in batches(packets, legs):
        rec.send(
            leg,
            b"".join(p for _, _, p in pkts),
            [len(p) for _, _, p in pkts],
            [at for at, _, _ in pkts],
        )
        n += 1
        if progress is not None:
            progress(len(pkts))
    return n


def cmd_import(client: Client, args: argparse.Namespace) -> int:
    from callvault.media import pipeline

    meta = cli.parse_meta(args.meta)
    legs = [x.strip() for x in args.legs.split(",")] if args.legs else None
    leg_inputs = pipeline.parse_inputs(args.inputs, legs)
    flows = [leg.flow for leg in leg_inputs if leg.flow is not None]
    # as pipeline.run_call: a capture's call starts with its first captured sample
    capture_start = min(f.first_sample_us() for f in flows) if flows else None
    start_us = meta.pop("start_us", None)
    if start_us is None:
        start_us = capture_start if capture_start is not None else int(time.time() * 1e6)
    packets, specs = leg_packets(leg_inputs, start_us)
    if capture_start is not None and start_us != capture_start:
        # --meta start moves the call, not its audio: shift the arrival times with it
        # (the timeline depends only on arrivals relative to frame 0's instant)
        shift = start_us - capture_start
        packets = [(at + shift, leg, p) for at, leg, p in packets]
    bar = cli._progress(len(packets), "import")
    bar.unit = "pkt"
    rec = client.record(args.call_id, specs, tenant=args.tenant, start_us=start_us, meta=meta)
    try:
        send_call(rec, packets, len(specs), progress=bar.update)
        sealed = rec.end()
    except BaseException:
        rec.cancel()
        raise
    finally:
        bar.close()
    print(f"{args.call_id} sealed {sealed.seal.hex()}")
    return 0


# -- reading ---------------------------------------------------------------------------


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    calls = list(
        client.search(
            tenant=args.tenant,
            since_us=cli._time_arg(args.since) if args.since else 0,
            until_us=cli._time_arg(args.until) if args.until else 0,
            agent=args.agent or "",
            skill_group=args.skill_group or "",
            tag=args.tag or "",
        )
    )
    cli.print_calls(calls, as_json=args.json)
    return 0
    for e in calls:
        secs = f"{(e.end_us - e.start_us) / 1e6:8.1f}s" if e.end_us else "    open "
        print(
            f"{e.call_id:<24} {cli._iso(e.start_us)} {secs} {e.state:<7} {e.agent or '-':<12} "
            f"{','.join(e.tags)}"
        )
    return 0


def cmd_info(client: Client, args: argparse.Namespace) -> int:
    e = client.get_call(
        args.call_id, tenant=args.tenant, include_summary=True, include_customer_number=True
    )
    doc: dict[str, Any] = {
        "call_id": e.call_id,
        "tenant": e.tenant,
        "state": e.state,
        "start": cli._iso(e.start_us),
        "end": cli._iso(e.end_us) if e.end_us else None,
        "direction": e.direction,
        "agent": e.agent,
        "skill_group": e.skill_group,
        "tags": list(e.tags),
        "legs": list(e.legs),
        "records": e.records,
        "chain_head": e.chain_head.hex(),
        "seal": e.seal.hex() or None,
        "log_index": e.log_index if e.log_index >= 0 else None,
    }
    if e.state != "erased":
        doc["customer_number"] = e.customer_number
    if e.seal:
        doc["seconds"] = e.frames / 50
        if e.state != "erased" and e.summary_json:
            doc["legs_detail"] = json.loads(e.summary_json).get("legs", [])
    if e.state == "erased":
        doc["erased"] = {
            "at": cli._iso(int(e.extra["erased_us"])),
            "reason": e.extra["erase_reason"],
        }
    cli.print_info(doc, as_json=args.json)
    return 0


def _byte_bar(desc: str) -> tuple[Any, Callable[[pb.FileChunk], None]]:
    """A byte progress bar (a tty only) and the chunk callback that feeds it."""
    bar = cli._progress(None, desc)
    bar.unit, bar.unit_scale, bar.unit_divisor = "B", True, 1024
    sizes: dict[str, int] = {}

    def on_chunk(chunk: pb.FileChunk) -> None:
        if chunk.name not in sizes:
            sizes[chunk.name] = chunk.size
            bar.total = sum(sizes.values())
            bar.refresh()
        bar.update(len(chunk.data))

    return bar, on_chunk


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".ogg", ".opus", ".wav"):
        raise CallvaultError(f"output {args.output}: name it .ogg or .wav")
    from_s = args.from_s or 0.0
    if args.to_s is not None and args.to_s <= from_s:
        raise CallvaultError(f"--from {from_s} / --to {args.to_s}: empty range")
    to_ms = 0 if args.to_s is None else math.ceil(args.to_s * 1000)
    bar, on_chunk = _byte_bar("export")
    try:
        n = client.export(
            args.call_id,
            args.output,
            tenant=args.tenant,
            format="wav" if suffix == ".wav" else "ogg",
            from_ms=max(0, int(from_s * 1000)),
            to_ms=to_ms,
            progress=on_chunk,
        )
    finally:
        bar.close()
    print(f"wrote {args.output} ({n} bytes)")
    return 0


def cmd_play(client: Client, args: argparse.Namespace) -> int:
    sink = cli.PcmSink(args.output)
    for c in client.play(
        args.call_id,
        tenant=args.tenant,
        format="pcm",
        from_ms=int((args.from_s or 0) * 1000),
        to_ms=int(args.to_s * 1000) if args.to_s else 0,
        follow=args.follow,
    ):
        sink.write([leg.data for leg in c.legs])
    n = sink.close()
    if args.output != "-":
        print(f"wrote {args.output} ({n} bytes)")
    return 0


def cmd_bundle(client: Client, args: argparse.Namespace) -> int:
    d = Path(args.output)
    if d.exists():
        raise CallvaultError(f"{d} exists: a bundle goes into a new directory")
    bar, on_chunk = _byte_bar("bundle")
    try:
        client.get_bundle(args.call_id, d, tenant=args.tenant, progress=on_chunk)
    finally:
        bar.close()
    print(f"wrote bundle {d}; check it anywhere with: callvault verify-bundle {d}")
    return 0


# -- integrity and admin ---------------------------------------------------------------


def cmd_verify(client: Client, args: argparse.Namespace) -> int:
    if not args.call_ids and not args.all:
        raise CallvaultError("name the calls to verify, or --all")
    problems: list[str] = []
    bar = cli._progress(None if args.all else len(args.call_ids), "verify")
    try:
        for r in client.verify(args.call_ids, tenant=args.tenant, all=args.all):
            problems.extend(r.problems)
            if not r.ok and not r.problems:
                problems.append(f"{r.what}: does not verify")
            bar.update(1)
    finally:
        bar.close()
    checked = "every call and segment" if args.all else f"{len(args.call_ids)} call(s)"
    for p in problems:
        print(f"FAILED {p}")
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"OK: {checked} verified")
    return 0


def cmd_checkpoint(client: Client, args: argparse.Namespace) -> int:
    cp = client.get_checkpoint()
    print(cp.note, end="")
    if args.public_key:
        print(cp.verifier_key, file=sys.stderr)
    return 0


def cmd_erase(client: Client, args: argparse.Namespace) -> int:
    client.erase(args.call_id, args.reason, tenant=args.tenant)
    print(f"{args.call_id} erased: its key is destroyed, a tombstone and a log leaf remain")
    return 0


def cmd_reindex(client: Client, args: argparse.Namespace) -> int:
    r = client.reindex(timeout=None)  # as long as the segments take
    print(f"index rebuilt from the segments: {r.records} records")
    return 0


def cmd_rotate_key(client: Client, args: argparse.Namespace) -> int:
    r = client.rotate_key(timeout=None)
    print(
        f"key-encryption key {r.kek_id} active; {r.rewrapped} call key(s) re-wrapped, "
        "no audio rewritten"
    )
    return 0

"""The media verbs: `transcode`, `sample` and `demo` (no vault or server needed,
except that `demo` stores its sample call in an embedded vault)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callvault.cli.common import (
    check_inputs,
    check_output,
    leg_names,
    output_format,
    print_summary,
)
from callvault.errors import CallvaultError


def _settings(args: argparse.Namespace) -> Any:
    from callvault.media.pipeline import Settings

    if not 6000 <= args.bitrate <= 510_000:
        raise CallvaultError(f"--bitrate {args.bitrate}: Opus takes 6000 to 510000 bits/s")
    if not 0 <= args.complexity <= 10:
        raise CallvaultError(f"--complexity {args.complexity}: must be 0 to 10")
    return Settings(
        bitrate=args.bitrate, complexity=args.complexity, mask_dtmf=args.mask_dtmf, fill=args.fill
    )


def transcode(
    inputs: Sequence[str], out: str, settings: Any, *, legs: Sequence[str] | None = None
) -> dict[str, Any]:
    """Run the transcode and return its JSON summary."""
    from callvault.media import pipeline

    wav = output_format(out) == "wav"
    started = time.perf_counter()
    leg_inputs = pipeline.parse_inputs(inputs, legs)
    call = pipeline.run_call(leg_inputs, settings, encode=not wav, keep_pcm=wav)
    if wav:
        size = pipeline.write_wav(out, call)
    else:
        size = pipeline.write_ogg(
            out, call, comments={f"CALLVAULT_CHANNEL_{i}": r.name for i, r in enumerate(call.legs)}
        )
    elapsed = time.perf_counter() - started
    return {
        "output": str(out),
        "format": "wav" if wav else "ogg-opus",
        "channels": [r.name for r in call.legs],
        "seconds": call.seconds,
        "bytes": size,
        "realtime_factor": round(call.seconds / elapsed, 1) if elapsed > 0 else None,
        "legs": [r.summary() for r in call.legs],
    }


def cmd_transcode(args: argparse.Namespace) -> int:
    check_inputs(args.inputs)
    check_output(args.output)
    summary = transcode(args.inputs, args.output, _settings(args), legs=leg_names(args.legs))
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print_summary(summary)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from callvault.media import sample

    check_output(args.output)
    sample.demo_capture(args.output, seconds=args.seconds, pcapng=args.pcapng)
    print(f"wrote {args.output}: a {args.seconds:g} s two-leg G.711 call")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`make run`'s first step: a sample call transcoded and stored in the embedded
    vault, two WAV legs to record through a sidecar, and what to do next."""
    from callvault.media import sample, wav
    from callvault.media.pipeline import Settings

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    cap = data / "sample.pcap"
    sample.demo_capture(cap, seconds=30.0)
    print(
        f"made a sample call: {cap} (agent PCMU 20 ms, customer PCMA 30 ms with an SSRC "
        "change, jitter, losses, two RFC 4733 digits)"
    )
    out = data / "sample.ogg"
    summary = transcode([str(cap)], str(out), Settings())
    print_summary(summary)

    from callvault.vault import Vault

    vault = data / "vault"
    call_id = f"sample-{int(time.time())}"
    with Vault.open(vault) as v:
        entry, seal = v.import_call(call_id, [str(cap)], agent="alex", tags=["demo"])
        problems = v.verify_call(call_id)
    print(
        f"stored in the vault {vault}: call {call_id}, {entry.records} encrypted records, "
        f"seal {seal.hex()[:16]}..., {problems or 'verifies'}"
    )
    agent, customer = sample.dialogue(20.0, seed=7)
    for name, pcm in (("agent", agent), ("customer", customer)):
        wav.write(data / f"{name}.wav", [pcm])
    cv = ".venv/bin/callvault"
    srv = args.listen
    print(f"""
The server starts now on {srv} (Ctrl-C stops it). In another terminal:

  scripts/first-call.sh            # a sidecar, a call from two ffmpeg RTP senders, then
                                   # ls, export, verify and play it (about 30 s)
or by hand:
  {cv} sidecar --server {srv} --rtp 127.0.0.1:40000-40099 \\
      --listen 127.0.0.1:7444 --spool {data}/spool &
  {cv} call start --sidecar 127.0.0.1:7444 --call-id first --meta agent=alex
      # prints {{"agent": PORT_A, "customer": PORT_C}}
  RTP_OUT="-af asetnsamples=160 -c:a pcm_mulaw -payload_type 0 -pkt_size 172 -f rtp"
  ffmpeg -re -i {data}/agent.wav $RTP_OUT rtp://127.0.0.1:PORT_A &   # 20 ms packets
  ffmpeg -re -i {data}/customer.wav $RTP_OUT rtp://127.0.0.1:PORT_C
  {cv} call stop --sidecar 127.0.0.1:7444 --call-id first
  {cv} --server {srv} ls
  {cv} --server {srv} export first -o first.ogg && ffplay -nodisp -autoexit first.ogg
  {cv} --server {srv} verify first
  {cv} --server {srv} info {call_id}
""")
    return 0

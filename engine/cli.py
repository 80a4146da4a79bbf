"""The `callvault` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callvault import __version__
from callvault.errors import CallvaultError


def _settings(args: argparse.Namespace) -> Any:
    from callvault.pipeline import Settings

    if not 6000 <= args.bitrate <= 510_000:
        raise CallvaultError(f"--bitrate {args.bitrate}: Opus takes 6000 to 510000 bits/s")
    if not 0 <= args.complexity <= 10:
        raise CallvaultError(f"--complexity {args.complexity}: must be 0 to 10")
    return Settings(bitrate=args.bitrate, complexity=args.complexity, mask_dtmf=args.mask_dtmf,
                    fill=args.fill)


def transcode(inputs: Sequence[str], out: str, settings: Any, *,
              legs: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the transcode and return its JSON summary."""
    from callvault import pipeline

    suffix = Path(out).suffix.lower()
    if suffix not in (".ogg", ".opus", ".wav"):
        raise CallvaultError(f"output {out}: name it .ogg (dual-track Opus) or .wav (stereo PCM)")
    started = time.perf_counter()
    leg_inputs = pipeline.parse_inputs(inputs, legs)
    call = pipeline.run_call(leg_inputs, settings, encode=suffix != ".wav",
                             keep_pcm=suffix == ".wav")
    if suffix == ".wav":
        size = pipeline.write_wav(out, call)
    else:
        size = pipeline.write_ogg(out, call, comments={
            f"CALLVAULT_CHANNEL_{i}": r.name for i, r in enumerate(call.legs)})
    elapsed = time.perf_counter() - started
    return {
        "output": str(out),
        "format": "wav" if suffix == ".wav" else "ogg-opus",
        "channels": [r.name for r in call.legs],
        "seconds": call.seconds,
        "bytes": size,
        "realtime_factor": round(call.seconds / elapsed, 1) if elapsed > 0 else None,
        "legs": [r.summary() for r in call.legs],
    }


def _print_summary(s: dict[str, Any]) -> None:
    print(f"wrote {s['output']}: {s['format']}, {len(s['channels'])} channel(s) "
          f"({', '.join(s['channels'])}), {s['seconds']:.2f} s, {s['bytes']} bytes")
    for leg in s["legs"]:
        events = leg["telephone_events"] + leg["dtmf"]
        digits = "".join(e["digit"] for e in sorted(events, key=lambda e: e["start_ms"]))
        print(f"  {leg['leg']:<9} frames {leg['frames']}, lost {leg['lost']}, late {leg['late']}, "
              f"duplicates {leg['duplicates']}, gaps {len(leg['gaps'])}, "
              f"DTMF {digits or '-'}, {leg['bytes']} bytes")


def cmd_transcode(args: argparse.Namespace) -> int:
    legs = [x.strip() for x in args.legs.split(",")] if args.legs else None
    summary = transcode(args.inputs, args.output, _settings(args), legs=legs)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        _print_summary(summary)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from callvault import sample

    sample.demo_capture(args.output, seconds=args.seconds, pcapng=args.pcapng)
    print(f"wrote {args.output}: a {args.seconds:g} s two-leg G.711 call")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from callvault import sample
    from callvault.pipeline import Settings

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    cap = data / "sample.pcap"
    sample.demo_capture(cap, seconds=30.0)
    print(f"made a sample call: {cap} (agent PCMU 20 ms, customer PCMA 30 ms with an SSRC "
          "change, jitter, losses, two RFC 4733 digits)")
    out = data / "sample.ogg"
    summary = transcode([str(cap)], str(out), Settings())
    _print_summary(summary)
    print("\nplay it:  ffplay -nodisp -autoexit " + str(out) + "   (or: play " + str(out) + ")")
    print("inspect:  opusinfo " + str(out))
    print("again:    .venv/bin/callvault transcode " + str(cap) + " -o call.ogg --json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callvault", description=__doc__)
    p.add_argument("--version", action="version", version=f"callvault {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("transcode", help="turn a capture or WAV legs into a dual-track recording",
                       description="INPUT is a pcap/pcapng capture of the call's RTP, or "
                                   "LEG=FILE.wav pairs (8 kHz mono PCM16; other rates are "
                                   "resampled).")
    t.add_argument("inputs", nargs="+", metavar="INPUT")
    t.add_argument("-o", "--output", required=True, metavar="OUT.ogg|OUT.wav")
    t.add_argument("--bitrate", type=int, default=12_000, help="Opus bits/s per leg (12000)")
    t.add_argument("--complexity", type=int, default=8, help="Opus complexity 0-10 (8)")
    t.add_argument("--mask-dtmf", action="store_true",
                   help="replace detected in-band DTMF tones with silence (PCI)")
    t.add_argument("--fill", choices=("silence", "conceal"), default="conceal",
                   help="what fills lost packets (conceal: the last 20 ms fading out)")
    t.add_argument("--legs", metavar="NAME,NAME",
                   help="names of the streams in order of appearance (agent,customer)")
    t.add_argument("--json", action="store_true", help="print a JSON summary")
    t.set_defaults(func=cmd_transcode)

    s = sub.add_parser("sample", help="write a sample two-leg RTP capture")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--pcapng", action="store_true")
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="make a sample call and transcode it (make run)")
    d.add_argument("--data", default=".data", help="directory for the demo's files")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CallvaultError as e:
        print(f"callvault: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

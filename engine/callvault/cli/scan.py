"""`callvault scan CALL`: an assessor's check that a stored call holds no DTMF-like
tone energy (PCI). The call's audio is decoded (locally, or played from a server
with ``--server``) and every leg searched by callvault.media.scan, which is more
sensitive than the live detector that masks digits; exit 0 clean, 1 tones found."""

from __future__ import annotations

import argparse
import json

# the thresholds of callvault.media.scan (tests/cli/test_cli_scan.py checks they agree);
# not imported here: the command line starts without numpy
SCAN_DOC = (
    "Decode a stored call and report any DTMF-like tone energy left in its audio: "
    "a check an assessor can run after live masking (PCI). More sensitive than the "
    "live detector: a tone pair counts from -45 dBm0 per tone (live: -35), twist up "
    "to 12 dB either way (live: 8 normal, 4 reverse), the pair holding 0.6 of the "
    "block's energy (live: 0.7), lasting 25 ms (live: 40), "
    "measured by Goertzel filters at the 8 DTMF frequencies over 20 ms blocks every "
    "5 ms. Each hit: leg, position (seconds from the call's start), duration, the two "
    "frequencies and their levels (dBm0). Exit status 0: no tone found; 1: tones found."
)


def cmd_scan(args: argparse.Namespace) -> int:
    import numpy as np

    from callvault.cli.vault import connect
    from callvault.media import scan

    with connect(args) as b:
        info = b.call_detail(args.call_id, tenant=args.tenant)
        parts: list[list[bytes]] = [[] for _ in info.legs]
        for legs in b.play(args.call_id, tenant=args.tenant, from_ms=0, to_ms=None, follow=False):
            for i, data in enumerate(legs):
                parts[i].append(data)
    hits = []
    seconds = 0.0
    for name, chunks in zip(info.legs, parts, strict=True):
        pcm = np.frombuffer(b"".join(chunks), dtype="<i2")
        seconds = max(seconds, len(pcm) / scan.SAMPLE_RATE)
        hits += scan.scan_leg(name, pcm)
    hits.sort(key=lambda h: (h.start_s, h.leg))
    if args.json:
        doc = {
            "call_id": args.call_id,
            "legs": list(info.legs),
            "seconds": seconds,
            "clean": not hits,
            "hits": [h.as_dict() for h in hits],
            "thresholds": {
                "min_dbm0": scan.MIN_DBM0,
                "max_twist_db": scan.MAX_TWIST_DB,
                "min_tone_ratio": scan.MIN_RATIO,
                "min_ms": (scan.BLOCK + (scan.MIN_BLOCKS - 1) * scan.HOP) * 1000 // 8000,
            },
        }
        print(json.dumps(doc, indent=2))
    else:
        for h in hits:
            print(
                f"{h.leg}: {h.start_s:.3f} s, {h.duration_ms} ms, "
                f"{h.low_hz:g} Hz {h.low_dbm0:+.1f} dBm0 + {h.high_hz:g} Hz {h.high_dbm0:+.1f} dBm0"
            )
        print(
            f"{args.call_id}: "
            + (f"{len(hits)} DTMF-like tone(s) found" if hits else "no DTMF-like tone found")
            + f" in {seconds:.2f} s of {len(info.legs)} leg(s)"
        )
    return 1 if hits else 0

"""What the verb modules share: argument helpers and the printers.

Every verb module (and the local and remote backends) imports these from here; this
module imports nothing of callvault.cli, so there is no import circle.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from callvault.errors import CallvaultError


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="seconds")


def leg_names(value: str | None) -> list[str] | None:
    """``--legs NAME,NAME`` as a list (None when not given)."""
    return [x.strip() for x in value.split(",")] if value else None


def output_format(out: str) -> Literal["ogg", "wav"]:
    """What a recording written to ``out`` is, from its name: .ogg/.opus or .wav."""
    suffix = Path(out).suffix.lower()
    if suffix == ".wav":
        return "wav"
    if suffix in (".ogg", ".opus"):
        return "ogg"
    raise CallvaultError(f"output {out}: name it .ogg or .wav (dual-track Opus or PCM)")


def progress(total: int | None, desc: str, unit: str = "rec") -> Any:
    """A progress bar on a terminal, nothing otherwise."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
        leave=False,
    )


# -- printers --------------------------------------------------------------------------


class CallFields(Protocol):
    """What `ls` prints of a call: the vault's CallEntry (local) and the wire's
    CallInfo (remote) both have these, by these names."""

    call_id: str
    start_us: int
    end_us: int
    state: str
    agent: str
    skill_group: str
    direction: str

    @property
    def tags(self) -> Sequence[str]: ...


def print_calls(calls: Sequence[CallFields], *, as_json: bool) -> None:
    """What `ls` prints."""
    if as_json:
        json.dump(
            [
                {
                    "call_id": e.call_id,
                    "start": iso(e.start_us),
                    "start_us": e.start_us,
                    "seconds": max(0, e.end_us - e.start_us) / 1e6 if e.end_us else None,
                    "agent": e.agent,
                    "skill_group": e.skill_group,
                    "direction": e.direction,
                    "tags": list(e.tags),
                    "state": e.state,
                }
                for e in calls
            ],
            sys.stdout,
            indent=2,
        )
        print()
        return
    for e in calls:
        secs = f"{(e.end_us - e.start_us) / 1e6:8.1f}s" if e.end_us else "    open "
        print(
            f"{e.call_id:<24} {iso(e.start_us)} {secs} {e.state:<7} {e.agent or '-':<12} "
            f"{','.join(e.tags)}"
        )


def print_info(doc: dict[str, Any], *, as_json: bool) -> None:
    """What `info` prints."""
    if as_json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    for k, val in doc.items():
        if k == "legs_detail":
            for leg in val:
                print(
                    f"  {leg['leg']}: {leg['frames']} frames, lost {leg['lost']}, "
                    f"gaps {len(leg['gaps'])}, DTMF "
                    f"{''.join(d['digit'] for d in leg['telephone_events'] + leg['dtmf'])}"
                )
        else:
            print(f"{k}: {val}")


def print_summary(s: dict[str, Any]) -> None:
    """What `transcode` (and `demo`) print of a transcode's summary."""
    print(
        f"wrote {s['output']}: {s['format']}, {len(s['channels'])} channel(s) "
        f"({', '.join(s['channels'])}), {s['seconds']:.2f} s, {s['bytes']} bytes"
    )
    for leg in s["legs"]:
        events = leg["telephone_events"] + leg["dtmf"]
        digits = "".join(e["digit"] for e in sorted(events, key=lambda e: e["start_ms"]))
        print(
            f"  {leg['leg']:<9} frames {leg['frames']}, lost {leg['lost']}, late {leg['late']}, "
            f"duplicates {leg['duplicates']}, gaps {len(leg['gaps'])}, "
            f"DTMF {digits or '-'}, {leg['bytes']} bytes"
        )

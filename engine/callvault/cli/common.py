"""What the verb modules share: argument helpers and the printers.

Every verb module (and the local and remote backends) imports these from here; this
module imports nothing of callvault.cli, so there is no import circle.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from callvault import ids
from callvault.errors import CallvaultError, InputError
from callvault.timeline import FRAME_MS


def local_identity() -> dict[str, Any]:
    """Who acts through --data DIR (a LIFECYCLE record's ``by``, a disposition
    report's planner or approver): the operating system's user, as ``local:USER``,
    with the data directory's full powers, as every local verb has."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container)
        user = f"uid{os.getuid()}"
    return {"name": f"local:{user}", "role": "admin", "tenant": None, "via": "local"}


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


# -- times the user gives --------------------------------------------------------------

OFFSET_HELP = "seconds (75.5) or [hh:]mm:ss[.mmm] (1:15.5, 00:01:15.500)"
WHEN_HELP = (
    "ISO 8601 (2026-11-29, 2026-11-29T10:00:00, ...+01:00; UTC when no zone), "
    "unix seconds, or that long ago: N followed by s, m, h, d or w (90m, 1h, 7d)"
)
_CLOCK = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)")
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
# A span ago may reach back before 1970 (calls since then: all of them); nothing later
# than the year 9999 is a time.
MIN_WHEN_US = -(2**62)
MAX_WHEN_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def offset_seconds(value: str) -> float:
    """A position in a call (``--from``/``--to``): seconds, or [hh:]mm:ss[.mmm]. An
    argparse type: a bad value is a usage error saying what is accepted."""
    v = value.strip()
    try:
        secs = float(v)
    except ValueError:
        m = _CLOCK.fullmatch(v)
        if m is None:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a position in the call: give {OFFSET_HELP}"
            ) from None
        h, mm, ss = int(m[1] or 0), int(m[2]), float(m[3])
        if (m[1] is not None and mm >= 60) or ss >= 60:
            raise argparse.ArgumentTypeError(
                f"{value!r}: minutes and seconds run 0 to 59 in [hh:]mm:ss"
            ) from None
        secs = h * 3600 + mm * 60 + ss
    if not secs >= 0 or secs == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value!r}: a position in the call is 0 or more")
    return secs


def when_us(value: str, *, now: float | None = None) -> int:
    """A wall-clock time (``--since``/``--until``) as unix µs: ISO 8601, unix seconds,
    or a span ago (``7d``: seven days before now). An argparse type."""
    v = value.strip()
    m = _AGO.fullmatch(v)
    if m is not None:
        t = time.time() if now is None else now
        us = int((t - float(m[1]) * _UNIT_S[m[2]]) * 1_000_000)
    else:
        try:
            us = ids.parse_time(v[:-1] + "+00:00" if v.endswith(("Z", "z")) else v)
        except (InputError, OverflowError, OSError, ValueError):
            raise argparse.ArgumentTypeError(f"{value!r} is not a time: give {WHEN_HELP}") from None
    if not MIN_WHEN_US <= us <= MAX_WHEN_US:
        raise argparse.ArgumentTypeError(f"{value!r}: give a time between 1970 and 9999")
    return max(us, 0)


# -- files the user names ----------------------------------------------------------------


def check_output(out: str) -> Path:
    """``out`` as a Path when its folder exists; CallvaultError naming the folder
    otherwise (before any work, and never naming a temporary file)."""
    path = Path(out)
    folder = path.parent
    if not folder.exists():
        raise CallvaultError(f"cannot write {out}: folder {folder} does not exist")
    if not folder.is_dir():
        raise CallvaultError(f"cannot write {out}: {folder} is not a folder")
    if path.is_dir():
        raise CallvaultError(f"cannot write {out}: it is a folder")
    return path


def check_inputs(inputs: Sequence[str]) -> None:
    """InputError for an input that cannot be a capture: a WAV file named without
    its leg (``agent=a.wav``)."""
    for item in inputs:
        name, sep, _ = item.partition("=")
        if not sep and Path(item).suffix.lower() == ".wav":
            raise InputError(
                f"{item}: a WAV input names the leg it is, as LEG=FILE.wav "
                f"(e.g. agent={item}); captures (.pcap, .pcapng) are given as they are"
            )


def os_error(e: OSError, what: str) -> CallvaultError:
    """An OSError as our sentence first: "cannot WHAT: reason"."""
    return CallvaultError(f"cannot {what}: {e.strerror or e}")


def refuse_terminal(what: str) -> None:
    """CallvaultError when stdout is a terminal: binary data would garble it."""
    if sys.stdout.isatty():
        raise CallvaultError(
            f"{what} is binary and stdout is a terminal: pipe it into a player or file "
            "(| ffplay ..., > FILE) or give -o FILE"
        )


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

    @property
    def extra(self) -> Mapping[str, Any]: ...


def unsupported_codec(e: Any) -> dict[str, Any] | None:
    """What `ls` says of a sealed call's audio in codecs callvault does not record
    (``pipeline.call_unsupported_codec``, sealed in the manifest): from a CallEntry
    (``unsupported_codec``) or a CallInfo (its ``unsupported_codec`` message)."""
    u = getattr(e, "unsupported_codec", None)
    if u is None or isinstance(u, dict):
        return u
    if not u.legs:  # the message's default: none
        return None
    return {"legs": list(u.legs), "payload_types": list(u.payload_types), "frames": u.frames}


def codec_flag(u: Mapping[str, Any] | None) -> str:
    """The `ls` table's mark of a call with unsupported-codec audio:
    ``!codec agent:PT9`` (each such leg, and the payload types), else ""."""
    if not u:
        return ""
    pts = "+".join(f"PT{p}" for p in u["payload_types"]) or "PT?"
    return f"!codec {','.join(u['legs'])}:{pts}"


def print_calls(
    calls: Sequence[CallFields],
    *,
    as_json: bool,
    unsupported: Mapping[str, dict[str, Any]] | None = None,
) -> None:
    """What `ls` prints. ``unsupported``: call id -> unsupported_codec() of the
    sealed calls that had audio in a codec callvault does not record."""
    unsupported = unsupported or {}
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
                    "extra": {str(k): str(v) for k, v in e.extra.items()},
                    "state": e.state,
                    "unsupported_codec": unsupported.get(e.call_id),
                    # peak mode: "opus", "raw" (G.711, not compacted yet), "compacted"
                    "storage": getattr(e, "storage", "") or None,
                    # retention, holds, lifecycle_changes (docs/format.md 8.14)
                    **_lifecycle(e),
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
        flag = codec_flag(unsupported.get(e.call_id))
        line = (
            f"{e.call_id:<24} {iso(e.start_us)} {secs} {e.state:<7} {e.agent or '-':<12} "
            f"{','.join(e.tags)}"
        )
        print(f"{line}  {flag}" if flag else line)


def _lifecycle(e: Any) -> dict[str, Any]:
    from callvault.cli.tags import lifecycle_doc  # cli.tags imports this module

    return lifecycle_doc(e)


def print_info(doc: dict[str, Any], *, as_json: bool) -> None:
    """What `info` prints: JSON as it is, or one line per field that has a value
    (tags and legs as comma lists, extra metadata as KEY=VALUE) and then each leg
    (see leg_lines)."""
    if as_json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    for k, val in doc.items():
        if k == "legs_detail":
            for leg in val:
                for line in leg_lines(leg):
                    print(line)
        elif k == "paused" and val:  # PCI pauses: silence on every leg, not loss
            spans = [
                f"{_clock(p['start_frame'] * FRAME_MS)}-"
                f"{_clock((p['start_frame'] + p['frames']) * FRAME_MS)} ({p['frames']} frames)"
                for p in val
            ]
            print(f"paused: {', '.join(spans)} (silence on every leg)")
        elif val is None or val == "" or val == [] or val == {}:
            continue  # nothing to say
        elif isinstance(val, list):
            print(f"{k}: {', '.join(str(x) for x in val)}")
        elif isinstance(val, dict):
            print(f"{k}: {', '.join(f'{a}={b}' for a, b in val.items())}")
        else:
            print(f"{k}: {val}")


def _clock(ms: float) -> str:
    """A time in the call as m:ss.mmm (h:mm:ss.mmm past an hour)."""
    ms = max(0, round(ms))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    return f"{h}:{m:02d}:{s:02d}.{milli:03d}" if h else f"{m}:{s:02d}.{milli:03d}"


def leg_lines(leg: dict[str, Any]) -> list[str]:
    """A leg of a sealed call's summary (docs/format.md, the per-leg summary) as
    lines: frames and loss; then, only when there are any, its gaps by reason
    (an unsupported codec loudly: that audio is silence in the recording), the
    timeline's refusals, and DTMF events with their times."""
    out = [f"  {leg['leg']}: {leg['frames']} frames, lost {leg['lost']}"]
    gaps: list[dict[str, Any]] = leg.get("gaps", [])
    unsupported = leg.get("unsupported_codec") or {}
    if unsupported.get("frames") or unsupported.get("packets"):
        pts = ", ".join(str(p) for p in unsupported.get("payload_types", [])) or "?"
        out.append(
            f"    UNSUPPORTED CODEC: {unsupported.get('frames', 0)} frames "
            f"({unsupported.get('packets', 0)} packets, payload type {pts}) recorded as "
            "silence; only PCMU (0) and PCMA (8) audio is recorded"
        )
    for g in gaps:
        start = _clock(g["start_frame"] * FRAME_MS)
        end = _clock((g["start_frame"] + g["frames"]) * FRAME_MS)
        reason = g.get("reason", "lost")
        if reason == "unsupported_codec":
            why = f"UNSUPPORTED CODEC (payload type {g.get('payload_type', '?')})"
        elif reason == "lost":
            why = "lost"
        else:
            why = str(reason)
        out.append(f"    gap {start}-{end} ({g['frames']} frames): {why}")
    rtp = leg.get("rtp") or {}
    refused = {
        "timestamp_jump": "timestamp jumps",
        "event_span": "implausible DTMF event spans",
        "malformed": "malformed",
    }
    counts = [f"{rtp[k]} {what}" for k, what in refused.items() if rtp.get(k)]
    if counts:
        out.append(f"    packets dropped: {', '.join(counts)}")
    events = sorted(
        leg.get("telephone_events", []) + leg.get("dtmf", []), key=lambda e: e["start_ms"]
    )
    if events:
        # digits withheld (digits_kept false, the default): "digit at", never which
        out.append(
            ("    DTMF " if leg.get("digits_kept", True) else "    DTMF (digits not kept) ")
            + ", ".join(
                f"{e.get('digit') or 'digit'} at {_clock(e['start_ms'])}"
                + (f" ({e['duration_ms']} ms)" if e.get("duration_ms") else "")
                for e in events
            )
        )
    return out


def print_summary(s: dict[str, Any]) -> None:
    """What `transcode` (and `demo`) print of a transcode's summary."""
    print(
        f"wrote {s['output']}: {s['format']}, {len(s['channels'])} channel(s) "
        f"({', '.join(s['channels'])}), {s['seconds']:.2f} s, {s['bytes']} bytes"
    )
    for leg in s["legs"]:
        events = leg["telephone_events"] + leg["dtmf"]
        digits = "".join(e.get("digit") or "?" for e in sorted(events, key=lambda e: e["start_ms"]))
        print(
            f"  {leg['leg']:<9} frames {leg['frames']}, lost {leg['lost']}, late {leg['late']}, "
            f"duplicates {leg['duplicates']}, gaps {len(leg['gaps'])}, "
            f"DTMF {digits or '-'}, {leg['bytes']} bytes"
        )


# -- credentials ---------------------------------------------------------------------

TOKEN_ENV = "CALLVAULT_TOKEN"


def resolve_token(args: argparse.Namespace) -> str | None:
    """The API token to send: ``--token``, else the first line of ``--token-file``,
    else $CALLVAULT_TOKEN; None when there is none. CallvaultError for a token file
    that cannot be read (never quoting its contents)."""
    import os

    from callvault_client._channel import valid_token_text

    token = getattr(args, "token", None)
    path = getattr(args, "token_file", None)
    if token:
        token, where = str(token).strip(), "--token"
    elif path:
        try:
            text = Path(path).read_text(errors="replace").strip()
        except OSError as e:
            raise CallvaultError(f"--token-file {path}: {e.strerror or e}") from None
        if not text:
            raise CallvaultError(f"--token-file {path} is empty")
        token, where = text.splitlines()[0].strip(), f"--token-file {path}"
    else:
        token, where = (os.environ.get(TOKEN_ENV) or "").strip(), f"${TOKEN_ENV}"
        if not token:
            return None
    if not valid_token_text(token):
        raise CallvaultError(f"{where}: a token is one word of printable ASCII (cvt_...)")
    return token

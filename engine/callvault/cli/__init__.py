"""The `callvault` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from callvault import __version__
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

    suffix = Path(out).suffix.lower()
    if suffix not in (".ogg", ".opus", ".wav"):
        raise CallvaultError(f"output {out}: name it .ogg (dual-track Opus) or .wav (stereo PCM)")
    started = time.perf_counter()
    leg_inputs = pipeline.parse_inputs(inputs, legs)
    call = pipeline.run_call(
        leg_inputs, settings, encode=suffix != ".wav", keep_pcm=suffix == ".wav"
    )
    if suffix == ".wav":
        size = pipeline.write_wav(out, call)
    else:
        size = pipeline.write_ogg(
            out, call, comments={f"CALLVAULT_CHANNEL_{i}": r.name for i, r in enumerate(call.legs)}
        )
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
    from callvault.media import sample

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
    _print_summary(summary)

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
  ffmpeg -re -i {data}/agent.wav -c:a pcm_mulaw -f rtp rtp://127.0.0.1:PORT_A &
  ffmpeg -re -i {data}/customer.wav -c:a pcm_mulaw -f rtp rtp://127.0.0.1:PORT_C
  {cv} call stop --sidecar 127.0.0.1:7444 --call-id first
  {cv} --server {srv} ls
  {cv} --server {srv} export first -o first.ogg && ffplay -nodisp -autoexit first.ogg
  {cv} --server {srv} verify first
  {cv} --server {srv} info {call_id}
""")
    return 0


# -- vault verbs (`callvault --data DIR <verb>`) ---------------------------------------


def _vault(args: argparse.Namespace) -> Any:
    from callvault.vault import Vault

    if not args.data:
        raise CallvaultError(f"{args.command} needs --data DIR (the vault's data directory)")
    return Vault.open(args.data, key_file=args.key_file)


def _progress(total: int | None, desc: str) -> Any:
    """A progress bar on a terminal, nothing otherwise."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="rec",
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
        leave=False,
    )


def _time_arg(value: str) -> int:
    """Unix seconds or ISO 8601 (UTC when no zone is given) -> microseconds."""
    from datetime import datetime

    try:
        return int(float(value) * 1_000_000)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise CallvaultError(
            f"{value!r} is not a time: give unix seconds or ISO 8601 (2026-11-29T10:00:00)"
        ) from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


def _iso(us: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="seconds")


META_KEYS = ("agent", "skill_group", "direction", "customer_number", "tags", "start")


def parse_meta(items: Sequence[str] | None) -> dict[str, Any]:
    """`--meta KEY=VALUE` items of `import` (KEY in META_KEYS; tags are a,b,c;
    start is a time) as Vault.import_call keywords."""
    meta: dict[str, Any] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        k = k.replace("-", "_")
        if not sep or k not in META_KEYS:
            raise CallvaultError(
                f"--meta {item!r}: expected KEY=VALUE with KEY one of {', '.join(META_KEYS)}"
            )
        if k == "tags":
            meta["tags"] = [t for t in v.split(",") if t]
        elif k == "start":
            meta["start_us"] = _time_arg(v)
        else:
            meta[k] = v
    return meta


def cmd_import(args: argparse.Namespace) -> int:
    meta = parse_meta(args.meta)
    legs = [x.strip() for x in args.legs.split(",")] if args.legs else None
    with _vault(args) as v:
        entry, seal = v.import_call(
            args.call_id, args.inputs, tenant=args.tenant, legs=legs, **meta
        )
    print(f"{entry.call_id} sealed {seal.hex()}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        calls = v.list_calls(
            tenant=args.tenant,
            since_us=_time_arg(args.since) if args.since else 0,
            until_us=_time_arg(args.until) if args.until else 2**63 - 1,
            agent=args.agent,
            skill_group=args.skill_group,
            tag=args.tag,
        )
    print_calls(calls, as_json=args.json)
    return 0


def print_calls(calls: Sequence[Any], *, as_json: bool) -> None:
    """What `ls` prints (local and --server alike): calls are index entries or CallInfo
    messages, which share these fields."""
    if as_json:
        json.dump(
            [
                {
                    "call_id": e.call_id,
                    "start": _iso(e.start_us),
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
            f"{e.call_id:<24} {_iso(e.start_us)} {secs} {e.state:<7} {e.agent or '-':<12} "
            f"{','.join(e.tags)}"
        )


def cmd_info(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        e = v.get_call(args.call_id, tenant=args.tenant)
        doc: dict[str, Any] = {
            "call_id": e.call_id,
            "tenant": e.tenant,
            "state": e.state,
            "start": _iso(e.start_us),
            "end": _iso(e.end_us) if e.end_us else None,
            "direction": e.direction,
            "agent": e.agent,
            "skill_group": e.skill_group,
            "tags": e.tags,
            "legs": e.legs,
            "records": e.records,
            "chain_head": e.chain_head,
            "seal": e.seal or None,
            "log_index": e.log_index if e.log_index >= 0 else None,
        }
        if e.state != "erased":
            doc["customer_number"] = v.customer_number(e.call_id, tenant=e.tenant)
        if e.seal:
            m = v.manifest(e.call_id, tenant=e.tenant)
            doc["seconds"] = m["frames"] / 50
            if e.state != "erased":
                doc["legs_detail"] = v.summary(e.call_id, tenant=e.tenant).get("legs", [])
        if e.state == "erased":
            doc["erased"] = {"at": _iso(e.erased_us), "reason": e.erase_reason}
    print_info(doc, as_json=args.json)
    return 0


def print_info(doc: dict[str, Any], *, as_json: bool) -> None:
    """What `info` prints (local and --server alike)."""
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


def cmd_export(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        n = v.export(
            args.call_id, args.output, tenant=args.tenant, from_s=args.from_s or 0.0, to_s=args.to_s
        )
    print(f"wrote {args.output} ({n} bytes)")
    return 0


class PcmSink:
    """Where `play` writes: raw interleaved s16le on stdout ("-"), or a WAV file."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.parts: list[list[bytes]] = []
        if out != "-" and Path(out).suffix.lower() != ".wav":
            raise CallvaultError(f"play -o {out}: a .wav file, or - for raw PCM on stdout")

    def write(self, legs: Sequence[bytes]) -> None:
        import numpy as np

        chans = [np.frombuffer(d, dtype="<i2") for d in legs]
        if self.out == "-":
            sys.stdout.buffer.write(np.stack(chans, axis=1).astype("<i2").tobytes())
            sys.stdout.buffer.flush()
        else:
            self.parts.append(list(legs))

    def close(self) -> int:
        """Bytes written to the file (0 for stdout)."""
        if self.out == "-":
            return 0
        import numpy as np

        from callvault.media import wav

        nlegs = len(self.parts[0]) if self.parts else 1
        pcm = [np.frombuffer(b"".join(p[g] for p in self.parts), dtype="<i2") for g in range(nlegs)]
        return wav.write(Path(self.out), pcm)


def cmd_play(args: argparse.Namespace) -> int:
    from callvault.server import playback

    if args.follow:
        raise CallvaultError("--follow listens to a call being recorded: it needs --server")
    sink = PcmSink(args.output)
    with _vault(args) as v:
        for c in playback.play(
            v,
            None,
            args.call_id,
            tenant=args.tenant,
            from_ms=int((args.from_s or 0) * 1000),
            to_ms=int(args.to_s * 1000) if args.to_s else None,
            pcm=True,
        ):
            sink.write([d for d, _ in c.legs])
    n = sink.close()
    if args.output != "-":
        print(f"wrote {args.output} ({n} bytes)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.call_ids and not args.all:
        raise CallvaultError("name the calls to verify, or --all")
    with _vault(args) as v:
        if args.all:
            problems = v.verify_all()
            checked = "every call and segment"
        else:
            problems = []
            bar = _progress(len(args.call_ids), "verify")
            for cid in args.call_ids:
                problems += v.verify_call(cid, tenant=args.tenant)
                bar.update(1)
            bar.close()
            checked = f"{len(args.call_ids)} call(s)"
    for p in problems:
        print(f"FAILED {p}")
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"OK: {checked} verified")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from callvault.vault.bundle import write_bundle

    with _vault(args) as v:
        d = write_bundle(v, args.call_id, args.output, tenant=args.tenant)
    print(f"wrote bundle {d}; check it anywhere with: callvault verify-bundle {d}")
    return 0


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    from callvault.integrity.bundle import verify_bundle

    key = Path(args.public_key).read_text().strip() if args.public_key else None
    r = verify_bundle(args.directory, public_key=key)
    for c in r.checked:
        print(f"ok    {c}")
    for f in r.failures:
        print(f"FAIL  {f}")
    print("bundle verifies" if r.ok else "bundle does NOT verify")
    return 0 if r.ok else 1


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        print(v.checkpoint(), end="")
        if args.public_key:
            print(v.signer.verifier_key(), file=sys.stderr)
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        v.erase(args.call_id, reason=args.reason, tenant=args.tenant)
    print(f"{args.call_id} erased: its key is destroyed, a tombstone and a log leaf remain")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        bar = _progress(None, "reindex")
        n = v.reindex(progress=lambda k: bar.update(k - bar.n))
        bar.close()
    print(f"index rebuilt from the segments: {n} records")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        new, n = v.rotate_key()
    print(f"key-encryption key {new} active; {n} call key(s) re-wrapped, no audio rewritten")
    return 0


def _lazy(module: str, name: str) -> Any:
    """A command implemented in another module, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args))

    return run


# The vault verbs that also run against a server (`--server ADDR`, callvault.cli.remote).
REMOTE_VERBS = (
    "import",
    "ls",
    "info",
    "export",
    "play",
    "verify",
    "bundle",
    "checkpoint",
    "erase",
    "reindex",
    "rotate-key",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callvault", description=__doc__)
    p.add_argument("--version", action="version", version=f"callvault {__version__}")
    p.add_argument("--data", metavar="DIR", help="the vault's data directory")
    p.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="run the vault verb against a callvault server instead of --data",
    )
    p.add_argument(
        "--tls-ca", metavar="FILE", help="with --server: TLS, trusting this CA certificate (PEM)"
    )
    p.add_argument(
        "--tls-cert",
        dest="client_cert",
        metavar="FILE",
        help="with --server and --tls-ca: this client certificate chain (PEM)",
    )
    p.add_argument(
        "--tls-key",
        dest="client_key",
        metavar="FILE",
        help="with --tls-cert: its private key (PEM)",
    )
    p.add_argument(
        "--key-file", metavar="FILE", help="the key-encryption key file (default DIR/keys/kek)"
    )
    p.add_argument("--tenant", default="default", help="tenant of the calls (default)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("import", help="store a call from captures or LEG=FILE.wav (sealed)")
    v.add_argument("--call-id", required=True)
    v.add_argument(
        "--meta",
        action="append",
        metavar="KEY=VALUE",
        help=f"call metadata, KEY one of {', '.join(META_KEYS)} (tags: a,b)",
    )
    v.add_argument("--legs", metavar="NAME,NAME")
    v.add_argument("inputs", nargs="+", metavar="INPUT")
    v.set_defaults(func=cmd_import)
    v = sub.add_parser("ls", help="list calls")
    v.add_argument("--since", metavar="T")
    v.add_argument("--until", metavar="T")
    v.add_argument("--agent")
    v.add_argument("--skill-group")
    v.add_argument("--tag")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_ls)
    v = sub.add_parser("info", help="a call's metadata, gaps, DTMF and quality counters")
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_info)
    v = sub.add_parser("export", help="write a call as Ogg Opus (no re-encoding) or WAV")
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument("-o", "--output", required=True, metavar="OUT.ogg|OUT.wav")
    v.add_argument("--from", dest="from_s", type=float, metavar="SECONDS")
    v.add_argument("--to", dest="to_s", type=float, metavar="SECONDS")
    v.set_defaults(func=cmd_export)
    v = sub.add_parser(
        "play",
        help="a call's audio as PCM (8 kHz, one channel per leg): to a "
        "WAV file, or raw to stdout for a player; --follow listens live",
    )
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="OUT.wav|-",
        help="- (default): raw s16le interleaved on stdout, e.g. | ffplay -f s16le "
        "-ar 8000 -ch_layout stereo -i -",
    )
    v.add_argument("--from", dest="from_s", type=float, metavar="SECONDS")
    v.add_argument("--to", dest="to_s", type=float, metavar="SECONDS")
    v.add_argument(
        "--follow",
        action="store_true",
        help="a call still being recorded: keep playing as it is recorded (--server only)",
    )
    v.set_defaults(func=cmd_play)

    v = sub.add_parser("verify", help="check calls' records, chains, seals and log leaves")
    v.add_argument("call_ids", nargs="*", metavar="CALL_ID")
    v.add_argument("--all", action="store_true")
    v.set_defaults(func=cmd_verify)
    v = sub.add_parser("bundle", help="export a sealed call with its proofs")
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument("-o", "--output", required=True, metavar="DIR")
    v.set_defaults(func=cmd_bundle)
    v = sub.add_parser("verify-bundle", help="check a bundle offline")
    v.add_argument("directory", metavar="DIR")
    v.add_argument("--public-key", metavar="FILE", help="the log's verifier key you trust")
    v.set_defaults(func=cmd_verify_bundle)
    v = sub.add_parser("checkpoint", help="print a signed checkpoint of the log")
    v.add_argument(
        "--public-key", action="store_true", help="also print the verifier key (on stderr)"
    )
    v.set_defaults(func=cmd_checkpoint)
    v = sub.add_parser("erase", help="crypto-shred a call (its key is destroyed)")
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument("--reason", required=True)
    v.set_defaults(func=cmd_erase)
    v = sub.add_parser("reindex", help="rebuild the index from the segments")
    v.set_defaults(func=cmd_reindex)
    v = sub.add_parser("rotate-key", help="new key-encryption key; re-wrap every data key")
    v.set_defaults(func=cmd_rotate_key)

    t = sub.add_parser(
        "transcode",
        help="turn a capture or WAV legs into a dual-track recording",
        description="INPUT is a pcap/pcapng capture of the call's RTP, or "
        "LEG=FILE.wav pairs (8 kHz mono PCM16; other rates are "
        "resampled).",
    )
    t.add_argument("inputs", nargs="+", metavar="INPUT")
    t.add_argument("-o", "--output", required=True, metavar="OUT.ogg|OUT.wav")
    t.add_argument("--bitrate", type=int, default=12_000, help="Opus bits/s per leg (12000)")
    t.add_argument("--complexity", type=int, default=8, help="Opus complexity 0-10 (8)")
    t.add_argument(
        "--mask-dtmf",
        action="store_true",
        help="replace detected in-band DTMF tones with silence (PCI)",
    )
    t.add_argument(
        "--fill",
        choices=("silence", "conceal"),
        default="conceal",
        help="what fills lost packets (conceal: the last 20 ms fading out)",
    )
    t.add_argument(
        "--legs",
        metavar="NAME,NAME",
        help="names of the streams in order of appearance (agent,customer)",
    )
    t.add_argument("--json", action="store_true", help="print a JSON summary")
    t.set_defaults(func=cmd_transcode)

    s = sub.add_parser("sample", help="write a sample two-leg RTP capture")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--pcapng", action="store_true")
    s.set_defaults(func=cmd_sample)

    sv = sub.add_parser(
        "serve", help="serve the vault over gRPC (Ingest, Archive, Integrity, Admin)"
    )
    sv.add_argument("--data", required=True, metavar="DIR", help="the vault's data directory")
    sv.add_argument(
        "--listen",
        default="127.0.0.1:7443",
        metavar="HOST:PORT",
        help="address to listen on (127.0.0.1:7443; port 0 picks a free one)",
    )
    sv.add_argument("--config", metavar="FILE", help="server settings (JSON, docs/server.md)")
    sv.add_argument("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM)")
    sv.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM)")
    sv.add_argument(
        "--port-file",
        metavar="FILE",
        help="write the bound port here once serving (for scripts and tests)",
    )
    sv.set_defaults(func=_lazy("callvault.server.app", "cmd_serve"))

    sc = sub.add_parser(
        "sidecar",
        help="receive calls' RTP beside a PBX and forward it to a server (store-and-forward)",
    )
    sc.add_argument("--server", dest="upstream", required=True, metavar="HOST:PORT")
    sc.add_argument(
        "--rtp",
        required=True,
        metavar="HOST:PMIN-PMAX",
        help="address and UDP port range for calls' legs",
    )
    sc.add_argument(
        "--listen",
        default="127.0.0.1:7444",
        metavar="HOST:PORT",
        help="control API address (call start / call stop)",
    )
    sc.add_argument(
        "--spool",
        required=True,
        metavar="DIR",
        help="where received RTP waits until the server has sealed the call",
    )
    sc.add_argument(
        "--port-file", metavar="FILE", help="write the control API's bound port here once serving"
    )
    sc.add_argument(
        "--tls-ca",
        dest="upstream_tls_ca",
        metavar="FILE",
        help="TLS to the server, trusting this CA certificate (PEM)",
    )
    sc.set_defaults(func=_lazy("callvault.sidecar", "cmd_sidecar"))

    ca = sub.add_parser("call", help="start or stop recording a call on a sidecar")
    csub = ca.add_subparsers(dest="call_command", required=True)
    cs = csub.add_parser("start", help="allocate UDP ports for the call's legs; prints JSON")
    cs.add_argument("--sidecar", required=True, metavar="HOST:PORT")
    cs.add_argument("--call-id", required=True)
    cs.add_argument("--legs", default="agent,customer", metavar="NAME,NAME")
    cs.add_argument(
        "--meta",
        action="append",
        metavar="KEY=VALUE",
        help="agent, skill_group, direction, customer_number, tags (a,b) or any "
        "other KEY (kept as extra)",
    )
    cs.set_defaults(func=_lazy("callvault.sidecar", "cmd_call_start"))
    cp = csub.add_parser("stop", help="stop receiving; the sidecar seals the call on the server")
    cp.add_argument("--sidecar", required=True, metavar="HOST:PORT")
    cp.add_argument("--call-id", required=True)
    cp.set_defaults(func=_lazy("callvault.sidecar", "cmd_call_stop"))

    d = sub.add_parser("demo", help="make a sample call and transcode it (make run)")
    d.add_argument("--data", default=".data", help="directory for the demo's files")
    d.add_argument(
        "--listen", default="127.0.0.1:7443", help="the server address the printed commands use"
    )
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "server", None) and args.command in REMOTE_VERBS:
            if args.data:
                raise CallvaultError("give --data DIR or --server ADDR, not both")
            from callvault.cli import remote

            return int(remote.run(args))
        return int(args.func(args))
    except CallvaultError as e:
        print(f"callvault: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The parser of the `callvault` command and its entry point: which verb runs where,
and how errors end it (one line on stderr, exit status 1)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from callvault import __version__, ids
from callvault.cli import media, sidecar, vault
from callvault.errors import CallvaultError


def _serve(args: argparse.Namespace) -> int:
    from callvault.server.app import cmd_serve  # grpc and the server: only when serving

    return int(cmd_serve(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callvault", description="The `callvault` command line.")
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
        help=f"call metadata, KEY one of {', '.join(ids.meta_keys(start=True))} (tags: a,b)",
    )
    v.add_argument("--legs", metavar="NAME,NAME")
    v.add_argument("inputs", nargs="+", metavar="INPUT")
    v.set_defaults(func=vault.cmd_import)
    v = sub.add_parser("ls", help="list calls")
    v.add_argument("--since", metavar="T")
    v.add_argument("--until", metavar="T")
    v.add_argument("--agent")
    v.add_argument("--skill-group")
    v.add_argument("--tag")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=vault.cmd_ls)
    v = sub.add_parser("info", help="a call's metadata, gaps, DTMF and quality counters")
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=vault.cmd_info)
    v = sub.add_parser("export", help="write a call as Ogg Opus (no re-encoding) or WAV")
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument("-o", "--output", required=True, metavar="OUT.ogg|OUT.wav")
    v.add_argument("--from", dest="from_s", type=float, metavar="SECONDS")
    v.add_argument("--to", dest="to_s", type=float, metavar="SECONDS")
    v.set_defaults(func=vault.cmd_export)
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
    v.set_defaults(func=vault.cmd_play)

    v = sub.add_parser("verify", help="check calls' records, chains, seals and log leaves")
    v.add_argument("call_ids", nargs="*", metavar="CALL_ID")
    v.add_argument("--all", action="store_true")
    v.set_defaults(func=vault.cmd_verify)
    v = sub.add_parser("bundle", help="export a sealed call with its proofs")
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument("-o", "--output", required=True, metavar="DIR")
    v.add_argument(
        "--with-customer-number",
        action="store_true",
        help="also ship the key of the call's customer number (without it the bundle"
        " cannot reveal the number)",
    )
    v.set_defaults(func=vault.cmd_bundle)
    v = sub.add_parser("verify-bundle", help="check a bundle offline")
    v.add_argument("directory", metavar="DIR")
    v.add_argument("--public-key", metavar="FILE", help="the log's verifier key you trust")
    v.set_defaults(func=vault.cmd_verify_bundle)
    v = sub.add_parser("checkpoint", help="print a signed checkpoint of the log")
    v.add_argument(
        "--public-key", action="store_true", help="also print the verifier key (on stderr)"
    )
    v.set_defaults(func=vault.cmd_checkpoint)
    v = sub.add_parser("erase", help="crypto-shred a call (its key is destroyed)")
    v.add_argument("call_id", metavar="CALL_ID")
    v.add_argument("--reason", required=True)
    v.set_defaults(func=vault.cmd_erase)
    v = sub.add_parser("reindex", help="rebuild the index from the segments")
    v.set_defaults(func=vault.cmd_reindex)
    v = sub.add_parser("rotate-key", help="new key-encryption key; re-wrap every data key")
    v.set_defaults(func=vault.cmd_rotate_key)

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
    t.set_defaults(func=media.cmd_transcode)

    s = sub.add_parser("sample", help="write a sample two-leg RTP capture")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--pcapng", action="store_true")
    s.set_defaults(func=media.cmd_sample)

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
    sv.set_defaults(func=_serve)

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
    sc.set_defaults(func=sidecar.cmd_sidecar)

    ca = sub.add_parser("call", help="start, stop or list the calls recorded by a sidecar")
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
    cs.set_defaults(func=sidecar.cmd_call_start)
    cp = csub.add_parser("stop", help="stop receiving; the sidecar seals the call on the server")
    cp.add_argument("--sidecar", required=True, metavar="HOST:PORT")
    cp.add_argument("--call-id", required=True)
    cp.set_defaults(func=sidecar.cmd_call_stop)
    cl = csub.add_parser(
        "ls", help="the sidecar's health, spool backlog and calls (state, reason, packets)"
    )
    cl.add_argument("--sidecar", required=True, metavar="HOST:PORT")
    cl.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    cl.set_defaults(func=sidecar.cmd_call_ls)

    d = sub.add_parser("demo", help="make a sample call and transcode it (make run)")
    d.add_argument("--data", default=".data", help="directory for the demo's files")
    d.add_argument(
        "--listen", default="127.0.0.1:7443", help="the server address the printed commands use"
    )
    d.set_defaults(func=media.cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in vault.BACKEND_VERBS and getattr(args, "server", None) and args.data:
            raise CallvaultError("give --data DIR or --server ADDR, not both")
        return int(args.func(args))
    except CallvaultError as e:
        print(f"callvault: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

"""The parser of the `callvault` command and its entry point: which verb runs where,
and how errors end it (one line on stderr, exit status 1)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from callvault import __version__, ids
from callvault.cli import (
    archive,
    audit,
    dispose,
    media,
    sidecar,
    subject,
    tags,
    tenant,
    tokens,
    vault,
    vip,
)
from callvault.cli import holds as holds_cli
from callvault.cli import policy as policy_cli
from callvault.cli import scan as scan_cli
from callvault.cli.common import OFFSET_HELP, WHEN_HELP, offset_seconds, when_us
from callvault.errors import CallvaultError


def _serve(args: argparse.Namespace) -> int:
    from callvault.server.app import cmd_serve  # grpc and the server: only when serving

    return int(cmd_serve(args))


def _threshold(text: str) -> float:
    """--threshold: a fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1] (e.g. 0.5)")
    return value


def _verb(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A verb: ``summary`` in the verb list, ``description`` (default: the summary)
    at the top of `callvault VERB --help`."""
    return sub.add_parser(name, help=summary, description=description or summary + ".")


def _token_flags(parser: argparse.ArgumentParser, what: str, default: object = None) -> None:
    """--token and --token-file (else $CALLVAULT_TOKEN: cli.common.resolve_token).
    ``default`` argparse.SUPPRESS on a sub-verb keeps the value given before it."""
    parser.add_argument("--token", metavar="TOKEN", default=default, help=what)
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=default,
        help="read the token from FILE (its first line); else $CALLVAULT_TOKEN",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callvault",
        # no abbreviations of the global options: a verb's --to would be ambiguous
        # with --token/--token-file (argparse matches prefixes across the whole line)
        allow_abbrev=False,
        description="Record, store, prove and play calls. Vault verbs run on the vault in "
        "--data DIR, or on a server with --server HOST:PORT.",
    )
    p.add_argument("--version", action="version", version=f"callvault {__version__}")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="the vault's data directory (made only by init, import and serve)",
    )
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
    _token_flags(p, "with --server: send this API token (cvt_...)")
    p.add_argument(
        "--key-file", metavar="FILE", help="the key-encryption key file (default DIR/keys/kek)"
    )
    p.add_argument(
        "--tenant",
        metavar="NAME",
        help="tenant of the calls (default: default; with --server, the identity's own)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = _verb(sub, "init", "create an empty vault in --data DIR (nothing changes if one is there)")
    v.set_defaults(func=vault.cmd_init)
    v = _verb(
        sub,
        "import",
        "store a call from captures or LEG=FILE.wav (sealed)",
        "Store a call from pcap/pcapng captures of its RTP, or LEG=FILE.wav pairs, and "
        "seal it. Creates the vault in --data DIR if there is none.",
    )
    v.add_argument("--call-id", required=True, help=f"the new call's id ({ids.CALL_ID_RULE})")
    v.add_argument(
        "--meta",
        action="append",
        metavar="KEY=VALUE",
        help=f"call metadata (repeat): KEY one of {', '.join(ids.meta_keys(start=True))} "
        "(tags: a,b; start: a time) or any other KEY (kept as extra)",
    )
    v.add_argument(
        "--legs", metavar="NAME,NAME", help="names of a capture's streams in order (agent,customer)"
    )
    v.add_argument(
        "--mask-dtmf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PCI: mask in-band DTMF tones in the stored audio, as the server does live "
        "(default: on; --no-mask-dtmf stores them, e.g. to check `scan`); with --data only",
    )
    v.add_argument(
        "--keep-digits",
        action="store_true",
        help="keep the DTMF digits in the call's summary (default: only where DTMF "
        "occurred, never which digits); with --data only",
    )
    v.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="a .pcap/.pcapng capture, or LEG=FILE.wav"
    )
    v.set_defaults(func=vault.cmd_import)
    v = _verb(sub, "ls", "list calls", "List the calls that started in a time range, newest last.")
    v.add_argument(
        "--since", metavar="WHEN", type=when_us, help=f"calls started at or after WHEN: {WHEN_HELP}"
    )
    v.add_argument("--until", metavar="WHEN", type=when_us, help="calls started before WHEN")
    v.add_argument("--agent", help="only this agent's calls")
    v.add_argument("--skill-group", help="only this skill group's calls")
    v.add_argument("--tag", help="only calls with this tag")
    v.add_argument("--json", action="store_true", help="print JSON (with extra metadata)")
    v.add_argument(
        "--decisions",
        action="store_true",
        help="list the calls NOT recorded (the recording policy's decisions, by decision "
        "time) instead of calls",
    )
    v.set_defaults(func=vault.cmd_ls)
    v = _verb(sub, "info", "a call's metadata, gaps, DTMF and quality counters")
    v.add_argument("call_id", metavar="CALL_ID", help="the call")
    v.add_argument("--json", action="store_true", help="print JSON (every summary counter)")
    v.set_defaults(func=vault.cmd_info)
    v = _verb(sub, "scan", "report DTMF-like tones left in a stored call (PCI)", scan_cli.SCAN_DOC)
    v.add_argument("call_id", metavar="CALL_ID", help="the call")
    v.add_argument("--json", action="store_true", help="print JSON (hits and thresholds)")
    v.set_defaults(func=scan_cli.cmd_scan)
    v = _verb(
        sub,
        "export",
        "write a call as Ogg Opus (no re-encoding) or WAV",
        "Write a sealed call (or a range of it) as dual-track Ogg Opus, the stored packets "
        "without re-encoding, or as WAV. The Ogg file names the call (id, tenant, start) in "
        "its comments.",
    )
    v.add_argument("call_id", metavar="CALL_ID", help="the call")
    v.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT.ogg|OUT.wav|-",
        help="the file to write (its folder must exist), or - for stdout",
    )
    v.add_argument(
        "--format",
        choices=("ogg", "wav"),
        help="ogg or wav (default: from the output's name; ogg for -)",
    )
    v.add_argument(
        "--from", dest="from_s", type=offset_seconds, metavar="POS", help=f"start at {OFFSET_HELP}"
    )
    v.add_argument(
        "--to", dest="to_s", type=offset_seconds, metavar="POS", help="end at POS (as --from)"
    )
    v.add_argument(
        "--with-metadata",
        action="store_true",
        help="Ogg: also the call's metadata as comments (agent, tags, ...; personal data)",
    )
    v.add_argument(
        "--with-customer-number",
        action="store_true",
        help="Ogg: also the customer number as a comment (personal data)",
    )
    _access_options(v, approval=True)
    v.set_defaults(func=vault.cmd_export)
    v = _verb(
        sub,
        "play",
        "a call's audio as PCM (8 kHz, one channel per leg): to a "
        "WAV file, or raw to stdout for a player; --follow listens live",
    )
    v.add_argument("call_id", metavar="CALL_ID", help="the call")
    v.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="OUT.wav|-",
        help="- (default): raw s16le interleaved on stdout (never a terminal), e.g. | ffplay "
        "-f s16le -ar 8000 -ch_layout stereo -i -",
    )
    v.add_argument(
        "--from", dest="from_s", type=offset_seconds, metavar="POS", help=f"start at {OFFSET_HELP}"
    )
    v.add_argument(
        "--to", dest="to_s", type=offset_seconds, metavar="POS", help="end at POS (as --from)"
    )
    v.add_argument(
        "--follow",
        action="store_true",
        help="a call still being recorded: keep playing as it is recorded (--server only)",
    )
    _access_options(v, approval=False)
    v.set_defaults(func=vault.cmd_play)

    v = _verb(sub, "verify", "check calls' records, chains, seals and log leaves")
    v.add_argument("call_ids", nargs="*", metavar="CALL_ID", help="the calls to check")
    v.add_argument("--all", action="store_true", help="check every call and segment")
    v.set_defaults(func=vault.cmd_verify)
    v = _verb(sub, "bundle", "export a sealed call with its proofs")
    v.add_argument("call_id", metavar="CALL_ID", help="the call")
    v.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="the bundle's new directory"
    )
    v.add_argument(
        "--with-customer-number",
        action="store_true",
        help="also ship the key of the call's customer number (without it the bundle"
        " cannot reveal the number)",
    )
    _access_options(v, approval=True)
    v.set_defaults(func=vault.cmd_bundle)
    _export_request_verbs(sub)
    v = _verb(sub, "verify-bundle", "check a bundle offline")
    v.add_argument("directory", metavar="DIR", help="the bundle's directory")
    v.add_argument("--public-key", metavar="FILE", help="the log's verifier key you trust")
    v.set_defaults(func=vault.cmd_verify_bundle)
    v = _verb(sub, "checkpoint", "print a signed checkpoint of the log")
    v.add_argument(
        "--public-key", action="store_true", help="also print the verifier key (on stderr)"
    )
    v.set_defaults(func=vault.cmd_checkpoint)
    v = _verb(
        sub,
        "erase",
        "crypto-shred a call (its key is destroyed)",
        "Crypto-shred a call: its key is destroyed, a tombstone and a log leaf stay. A "
        "call under a legal hold is not erased: the erasure is recorded as deferred and "
        "carried out when its last hold is released (docs/policy.md 'Legal holds').",
    )
    v.add_argument("call_id", metavar="CALL_ID", help="the call")
    v.add_argument("--reason", required=True, help="why (kept in the tombstone and the log)")
    v.add_argument(
        "--override-retention",
        action="store_true",
        help="erase before a governance retention end (admins; the tombstone says so); "
        "never a compliance retention or a legal hold (docs/policy.md)",
    )
    v.set_defaults(func=vault.cmd_erase)
    v = _verb(
        sub,
        "compact",
        "turn sealed raw (G.711, peak mode) calls of --data DIR into Opus",
        "Compaction (docs/format.md 8.10) of a local vault's sealed raw calls: the "
        "named ones, or every one; a server compacts its own in the background.",
    )
    v.add_argument("call_ids", nargs="*", metavar="CALL_ID", help="the calls (default: all raw)")
    v.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="encoder processes (CPUs)"
    )
    v.set_defaults(func=vault.cmd_compact)
    v = _verb(sub, "reindex", "rebuild the index from the segments")
    archive.add_reindex_flags(v)  # --from-archive FILE: the catalog from the bucket
    v.set_defaults(func=archive.reindex_or(vault.cmd_reindex))
    v = _verb(
        sub,
        "reclaim",
        "free the space of dead records (erased calls' audio)",
        "Remove the closed segments whose records are all dead (an erased call's "
        "audio, records a compaction dropped) and rewrite those at least THRESHOLD "
        "dead: their live records are copied into a new segment first. Crash-safe; a "
        "server runs it every reclaim_interval_s (docs/format.md 8.11).",
    )
    v.add_argument(
        "--threshold",
        type=_threshold,
        default=0.0,
        help="rewrite a segment at least this fraction dead, in (0, 1] "
        "(default 0.5; a server's reclaim_threshold)",
    )
    v.add_argument(
        "--scan",
        action="store_true",
        help="read every closed segment to find dead records (not only the counted ones)",
    )
    v.add_argument("--json", action="store_true", help="the counters as JSON")
    v.set_defaults(func=vault.cmd_reclaim)
    v = _verb(sub, "rotate-key", "new master key-encryption key; re-wrap the tenants' keys")
    v.set_defaults(func=vault.cmd_rotate_key)
    tenant.add_parser(sub, _verb)
    holds_cli.add_parser(sub, _verb)
    dispose.add_parser(sub, _verb)
    policy_cli.add_parser(sub, _verb)
    tags.add_parser(sub, _verb)
    subject.add_parser(sub, _verb)
    archive.add_parser(sub, _verb)
    v = _verb(
        sub,
        "stats",
        "calls, stored bytes, free disk and log size (a server: also its ingest)",
        "Counters of the vault: computed from --data DIR, or a server's Admin.Stats.",
    )
    v.add_argument("--json", action="store_true", help="print JSON")
    v.set_defaults(func=vault.cmd_stats)
    audit.add_parser(sub, _verb)

    t = _verb(
        sub,
        "transcode",
        "turn a capture or WAV legs into a dual-track recording",
        "INPUT is a pcap/pcapng capture of the call's RTP, or "
        "LEG=FILE.wav pairs (8 kHz mono PCM16; other rates are "
        "resampled).",
    )
    t.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="a .pcap/.pcapng capture, or LEG=FILE.wav"
    )
    t.add_argument(
        "-o", "--output", required=True, metavar="OUT.ogg|OUT.wav", help="the recording to write"
    )
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

    s = _verb(sub, "sample", "write a sample two-leg RTP capture")
    s.add_argument("-o", "--output", required=True, metavar="FILE", help="the capture to write")
    s.add_argument("--seconds", type=float, default=30.0, help="its length (30)")
    s.add_argument("--pcapng", action="store_true", help="pcapng instead of pcap")
    s.set_defaults(func=media.cmd_sample)

    sv = _verb(
        sub,
        "serve",
        "serve the vault over gRPC (Ingest, Archive, Integrity, Admin)",
        "Serve the vault in --data DIR over gRPC (Ingest, Archive, Integrity, Admin); "
        "creates the vault if there is none.",
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
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by this CA (PEM; with --tls-cert)",
    )
    sv.add_argument(
        "--identities",
        metavar="FILE",
        help="map client certificates (CN, SAN DNS or URI) to identities (TOML, "
        "docs/format.md 10.2)",
    )
    sv.add_argument(
        "--insecure-listen",
        action="store_true",
        help="allow a non-loopback --listen without TLS (tokens and audio in clear)",
    )
    sv.add_argument(
        "--port-file",
        metavar="FILE",
        help="write the bound port here once serving (for scripts and tests)",
    )
    sv.set_defaults(func=_serve)

    sc = _verb(
        sub,
        "sidecar",
        "receive calls' RTP beside a PBX and forward it to a server (store-and-forward)",
    )
    sc.add_argument(
        "--server",
        dest="upstream",
        required=True,
        metavar="HOST:PORT",
        help="the callvault server calls are forwarded to",
    )
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
        help="control API address (call start / call stop); loopback unless --insecure-listen",
    )
    sc.add_argument(
        "--insecure-listen",
        action="store_true",
        help="allow a non-loopback control --listen (it has no TLS: control tokens in clear)",
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
    sc.add_argument(
        "--token-file",
        dest="upstream_token_file",
        metavar="FILE",
        help="the server token (role recorder) the sidecar sends; else $CALLVAULT_TOKEN",
    )
    sc.set_defaults(func=sidecar.cmd_sidecar)

    ca = _verb(sub, "call", "start, stop or list the calls recorded by a sidecar")
    csub = ca.add_subparsers(dest="call_command", required=True, metavar="ACTION")
    cs = _verb(csub, "start", "allocate UDP ports for the call's legs; prints JSON")
    cs.add_argument(
        "--sidecar", required=True, metavar="HOST:PORT", help="the sidecar's control API"
    )
    cs.add_argument("--call-id", required=True, help=f"the new call's id ({ids.CALL_ID_RULE})")
    cs.add_argument(
        "--legs", default="agent,customer", metavar="NAME,NAME", help="the legs (agent,customer)"
    )
    cs.add_argument(
        "--meta",
        action="append",
        metavar="KEY=VALUE",
        help=f"call metadata (repeat): KEY one of {', '.join(ids.meta_keys())} (tags: a,b) "
        "or any other KEY (kept as extra)",
    )
    cs.add_argument(
        "--region",
        metavar="NAME",
        help="the call's region: a [regions.NAME] of the server's policy (its default_region)",
    )
    cs.add_argument(
        "--consent",
        choices=("granted", "declined", "unknown"),
        help="what the customer said when asked to be recorded (unknown)",
    )
    _token_flags(cs, "the sidecar's control token", argparse.SUPPRESS)
    cs.set_defaults(func=sidecar.cmd_call_start)
    cp = _verb(csub, "stop", "stop receiving; the sidecar seals the call on the server")
    cp.add_argument(
        "--sidecar", required=True, metavar="HOST:PORT", help="the sidecar's control API"
    )
    cp.add_argument("--call-id", required=True, help="the call")
    _token_flags(cp, "the sidecar's control token", argparse.SUPPRESS)
    cp.set_defaults(func=sidecar.cmd_call_stop)
    for verb, what in (
        ("pause", "PCI pause: from now the call's RTP is discarded and stored as silence"),
        ("resume", "end a PCI pause: RTP arriving from now is recorded again"),
    ):
        cq = _verb(csub, verb, what)
        cq.add_argument(
            "--sidecar", required=True, metavar="HOST:PORT", help="the sidecar's control API"
        )
        cq.add_argument("--call-id", required=True, help="the call")
        _token_flags(cq, "the sidecar's control token", argparse.SUPPRESS)
        cq.set_defaults(func=sidecar.cmd_call_pause, pause=verb == "pause")
    cl = _verb(csub, "ls", "the sidecar's health, spool backlog and calls (state, reason, packets)")
    cl.add_argument(
        "--sidecar", required=True, metavar="HOST:PORT", help="the sidecar's control API"
    )
    cl.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    _token_flags(cl, "the sidecar's control token", argparse.SUPPRESS)
    cl.set_defaults(func=sidecar.cmd_call_ls)
    tokens.add_parser(sub, _verb)

    vp = _verb(
        sub,
        "vip",
        "the VIP customer numbers of the recording rules (stored as keyed hashes)",
        "Add, remove or list the VIP customer numbers that [[recording.rule]] vip = true "
        "matches. Numbers are stored only as keyed hashes (HMAC under the vault's "
        "recording key, DATA/keys/recording.key) in DATA/keys/vip-hashes; a running "
        "server rereads the file when it changes. Needs --data DIR.",
    )
    vsub = vp.add_subparsers(dest="vip_command", required=True, metavar="ACTION")
    for name, what in (("add", "add numbers"), ("rm", "remove numbers")):
        va = _verb(vsub, name, what)
        va.add_argument("numbers", nargs="*", metavar="NUMBER", help="customer numbers")
        va.add_argument(
            "--from",
            dest="from_file",
            metavar="FILE",
            help="read numbers from FILE, one a line ('-': stdin; keeps them out of ps)",
        )
        va.set_defaults(func=vip.cmd_vip)
    vl = _verb(vsub, "ls", "list the stored hashes (numbers are not stored)")
    vl.add_argument("--check", metavar="NUMBER", help="only say whether NUMBER is a VIP")
    vl.set_defaults(func=vip.cmd_vip)

    d = _verb(sub, "demo", "make a sample call and transcode it (make run)")
    d.add_argument("--data", default=".data", help="directory for the demo's files")
    d.add_argument(
        "--listen", default="127.0.0.1:7443", help="the server address the printed commands use"
    )
    d.set_defaults(func=media.cmd_demo)
    return p


def _access_options(v: argparse.ArgumentParser, *, approval: bool) -> None:
    """--reason (and --approval) of the audio verbs (docs/access.md)."""
    v.add_argument(
        "--reason",
        metavar="TEXT",
        help="with --server: why you reach this audio (audited; an admin must give one)",
    )
    if approval:
        v.add_argument(
            "--approval",
            metavar="REQ",
            help="with --server: an approved export request of this call (four-eyes export)",
        )


def _export_request_verbs(sub: Any) -> None:
    """Four-eyes export (docs/access.md): request, approve, list; --server only."""
    from callvault.cli import remote

    v = _verb(
        sub,
        "export-request",
        "ask to export a call (legal): another identity approves it",
        "Ask to export a call, with a reason (the legal role). Prints the request's id; a "
        "different legal or admin identity approves it with export-approve, then export or "
        "bundle the call once with --approval ID. --server only.",
    )
    v.add_argument("call_id", metavar="CALL_ID", help="the call")
    v.add_argument("--reason", required=True, metavar="TEXT", help="why (audited)")
    v.set_defaults(func=remote.cmd_export_request)
    v = _verb(sub, "export-approve", "approve another identity's export request (four eyes)")
    v.add_argument("request_id", metavar="REQ", help="the request's id (xr-...)")
    v.set_defaults(func=remote.cmd_export_approve)
    v = _verb(sub, "export-requests", "list the export requests you may see, oldest first")
    v.add_argument("--json", action="store_true", help="print JSON")
    v.set_defaults(func=remote.cmd_export_requests)


# The exit status when the reader of stdout goes away (`callvault info X | head`): as
# git's, which dies of SIGPIPE (128 + 13), and without a word.
EXIT_BROKEN_PIPE = 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # --help into a closed pipe, too
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    try:
        if args.command in vault.BACKEND_VERBS and getattr(args, "server", None) and args.data:
            raise CallvaultError("give --data DIR or --server ADDR, not both")
        if args.tenant is None:  # a server scopes an empty tenant by the caller's identity
            args.tenant = "" if getattr(args, "server", None) else "default"
        rc = int(args.func(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return rc
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except CallvaultError as e:
        print(f"callvault: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # one we did not expect: still our sentence first, one line
        where = f" ({e.filename})" if e.filename else ""
        print(f"callvault: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush finds no closed
    pipe to complain about."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)

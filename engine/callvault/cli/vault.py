"""The vault verbs: import, ls, info, export, play, verify, bundle, verify-bundle,
checkpoint, erase, reindex, rotate-key.

Each is written once over a backend (callvault.cli.backend): the embedded vault in
``--data DIR`` (callvault.cli.local) or a server at ``--server HOST:PORT``
(callvault.cli.remote), so both print the same and exit the same. `verify-bundle`
needs neither: it checks a bundle directory offline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from callvault import ids
from callvault.cli.backend import Backend
from callvault.cli.common import (
    check_inputs,
    check_output,
    iso,
    leg_names,
    os_error,
    output_format,
    print_calls,
    print_info,
    progress,
    refuse_terminal,
    unsupported_codec,
)
from callvault.errors import CallvaultError
from callvault.timeline import frames_seconds

if TYPE_CHECKING:
    from callvault_client import pb

# The verbs that run on a backend: `--data DIR` or `--server HOST:PORT`.
BACKEND_VERBS = (
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
    "stats",
    "reclaim",
    "scan",
)


def connect(args: argparse.Namespace, *, create: bool = False) -> AbstractContextManager[Backend]:
    """The backend the arguments name: the server of ``--server``, else the vault of
    ``--data`` (a new one only with ``create``); open while the ``with`` block runs."""
    if getattr(args, "server", None):
        from callvault.cli import remote

        return remote.connect(args)
    from callvault.cli import local

    return local.connect(args, create=create)


def cmd_init(args: argparse.Namespace) -> int:
    """A new, empty vault in --data DIR (nothing changes when one is there)."""
    from callvault.cli import local

    if getattr(args, "server", None):
        raise CallvaultError("init makes a vault in --data DIR; a server has its own")
    if not args.data:
        raise CallvaultError("init needs --data DIR (where the new vault goes)")
    existed = local.is_vault(Path(args.data))
    with local.connect(args, create=True):
        pass
    if existed:
        print(f"a vault is already at {args.data}: left as it is")
    else:
        print(f"initialised an empty vault at {args.data}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    ids.check_call_id(args.call_id)
    if args.tenant:
        ids.check_call_id(args.tenant, "tenant")
    meta = ids.parse_meta(args.meta, start=True, extra=True)  # as call start and the SDK
    check_inputs(args.inputs)
    with connect(args, create=True) as b:
        seal = b.import_call(
            args.call_id,
            args.inputs,
            tenant=args.tenant,
            legs=leg_names(args.legs),
            meta=meta,
            mask_dtmf=args.mask_dtmf,
            keep_digits=args.keep_digits,
        )
    print(f"{args.call_id} sealed {seal.hex()}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    since_us = args.since or 0  # when_us made them µs
    until_us = args.until
    if until_us is not None and until_us <= since_us:  # before asking a vault or server
        since = iso(since_us) if args.since is not None else "the beginning (no --since)"
        raise CallvaultError(
            f"--until ({iso(until_us)}) is not after --since ({since}): "
            "ls lists the calls started at or after --since and before --until"
        )
    if args.decisions:
        with connect(args) as b:
            decided = b.list_decisions(tenant=args.tenant, since_us=since_us, until_us=until_us)
        print_decisions(decided, as_json=args.json)
        return 0
    with connect(args) as b:
        calls = b.list_calls(
            tenant=args.tenant,
            since_us=since_us,
            until_us=until_us,
            agent=args.agent,
            skill_group=args.skill_group,
            tag=args.tag,
        )
        # Whether a sealed call had audio in a codec callvault does not record (issue
        # 9 section 2: shown in info and ls) is in its manifest (docs/format.md 8.5),
        # so the index entry and CallInfo carry it: no summary read per call.
        unsupported: dict[str, dict[str, Any]] = {}
        for e in calls:
            u = unsupported_codec(e)
            if u is not None:
                unsupported[e.call_id] = u
    print_calls(calls, as_json=args.json, unsupported=unsupported)
    return 0


def print_decisions(decided: Sequence[pb.CallInfo], *, as_json: bool) -> None:
    """What `ls --decisions` prints: the calls not recorded, by decision time."""
    from callvault.server.decisions import consent_name

    rows = [
        {
            "call_id": i.call_id,
            "decided": iso(i.decision.time_us),
            "decided_us": i.decision.time_us,
            "rule": i.decision.rule,
            "region": i.decision.region,
            "consent": consent_name(i.decision.consent),
            "reason": i.decision.reason,
            "log_index": i.decision.log_index,
        }
        for i in decided
    ]
    if as_json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    for r in rows:
        print(
            f"{r['call_id']:<24} {r['decided']} not-recorded {r['rule']:<12} "
            f"{r['region'] or '-':<8} {r['consent']:<8} {r['reason']}"
        )


def cmd_info(args: argparse.Namespace) -> int:
    with connect(args) as b:
        e = b.call_detail(args.call_id, tenant=args.tenant)
    if e.state == "not_recorded":  # a DECISION entry: no audio, no metadata
        print_info(_decision_doc(e), as_json=args.json)
        return 0
    erased = e.state == "erased"
    doc: dict[str, Any] = {
        "call_id": e.call_id,
        "tenant": e.tenant,
        "state": e.state,
        "start": iso(e.start_us),
        "end": iso(e.end_us) if e.end_us else None,
        "direction": e.direction,
        "agent": e.agent,
        "skill_group": e.skill_group,
        "tags": list(e.tags),
        "extra": dict(e.extra),
        "legs": list(e.legs),
        "records": e.records,
        "chain_head": e.chain_head.hex(),
        "seal": e.seal.hex() or None,
        "log_index": e.log_index if e.log_index >= 0 else None,
        # peak mode: "opus", "raw" (G.711, not compacted yet), "compacted" (then the
        # transcoding leaf's index in the log)
        "storage": e.storage or None,
    }
    if e.storage == "compacted":
        doc["transcode_log_index"] = e.transcode_log_index
    if not erased:
        doc["customer_number"] = e.customer_number
    if e.seal:
        doc["seconds"] = frames_seconds(e.frames)
    if e.state == "sealed":  # PCI (docs/format.md 1.1): pauses, DTMF and its digits
        doc["paused"] = [{"start_frame": p.start_frame, "frames": p.frames} for p in e.paused]
        doc["dtmf_events"] = e.dtmf_events
        doc["digits_kept"] = e.digits_kept
    if e.summary_json:  # a sealed call's, not an erased one's
        doc["legs_detail"] = json.loads(e.summary_json).get("legs", [])
    if erased:
        doc["erased"] = {"at": iso(e.erased_us), "reason": e.erase_reason}
    if e.HasField("decision"):
        doc["decision"] = _decision_doc(e)["decision"]
    if e.HasField("lifecycle"):  # sealed: retention, holds, changes (docs/format.md 8.14)
        from callvault.cli.tags import lifecycle_doc

        doc.update(lifecycle_doc(e))
        v = e.lifecycle.manifest_version
        if v:
            doc["manifest_version"] = v
        if v == 1:  # what verify cannot check of it
            doc["not_sealed"] = ["extra", "recording_id", "decision"]
    print_info(doc, as_json=args.json)
    return 0


def _decision_doc(e: pb.CallInfo) -> dict[str, Any]:
    from callvault.server.decisions import consent_name

    d = e.decision
    out: dict[str, Any] = {
        "recorded": d.recorded,
        "rule": d.rule,
        "reason": d.reason,
        "region": d.region,
        "consent": consent_name(d.consent),
    }
    if not d.recorded:
        out["decided"] = iso(d.time_us)
        out["log_index"] = d.log_index
        return {"call_id": e.call_id, "tenant": e.tenant, "state": e.state, "decision": out}
    return {"decision": out}


def cmd_export(args: argparse.Namespace) -> int:
    to_stdout = args.output == "-"
    fmt: Literal["ogg", "wav"]
    if to_stdout:
        fmt = args.format or "ogg"
        refuse_terminal("export -o -")
    else:
        check_output(args.output)
        fmt = args.format or output_format(args.output)
    with connect(args) as b:
        try:
            n = b.export(
                args.call_id,
                sys.stdout.buffer if to_stdout else args.output,
                tenant=args.tenant,
                fmt=fmt,
                from_s=args.from_s or 0.0,
                to_s=args.to_s,
                metadata=args.with_metadata,
                customer_number=args.with_customer_number,
            )
        except BrokenPipeError:
            raise
        except OSError as e:
            raise os_error(e, f"write {'to stdout' if to_stdout else args.output}") from e
    if not to_stdout:
        print(f"wrote {args.output} ({n} bytes)")
    return 0


class PcmSink:
    """Where `play` writes: raw interleaved s16le on stdout ("-"), or a WAV file."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.parts: list[list[bytes]] = []
        if out == "-":
            refuse_terminal("play's raw PCM")
        elif Path(out).suffix.lower() != ".wav":
            raise CallvaultError(f"play -o {out}: a .wav file, or - for raw PCM on stdout")
        else:
            check_output(out)

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
    sink = PcmSink(args.output)
    with connect(args) as b:
        for legs in b.play(
            args.call_id,
            tenant=args.tenant,
            from_ms=int((args.from_s or 0) * 1000),
            to_ms=math.ceil(args.to_s * 1000) if args.to_s else None,
            follow=args.follow,
        ):
            sink.write(legs)
        try:
            n = sink.close()
        except OSError as e:
            raise os_error(e, f"write {args.output}") from e
    if args.output != "-":
        print(f"wrote {args.output} ({n} bytes)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.call_ids and not args.all:
        raise CallvaultError("name the calls to verify, or --all")
    problems: list[str] = []
    with connect(args) as b:
        bar = progress(None if args.all else len(args.call_ids), "verify")
        try:
            for found in b.verify(args.call_ids, tenant=args.tenant, all=args.all):
                problems += found
                bar.update(1)
        finally:
            bar.close()
        if not args.all:  # calls sealed before every metadata field was (8.14)
            from callvault.cli.tags import coverage_notes

            for note in coverage_notes(b, list(args.call_ids), tenant=args.tenant):
                print(f"note: {note}")
    checked = "every call and segment" if args.all else f"{len(args.call_ids)} call(s)"
    for p in problems:
        print(f"FAILED {p}")
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"OK: {checked} verified")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    d = Path(args.output)
    if d.exists():
        raise CallvaultError(f"{d} exists: a bundle goes into a new directory")
    check_output(args.output)
    with connect(args) as b:
        b.bundle(
            args.call_id, d, tenant=args.tenant, with_customer_number=args.with_customer_number
        )
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
    with connect(args) as b:
        note, verifier_key = b.checkpoint()
    print(note, end="")
    if args.public_key:
        print(verifier_key, file=sys.stderr)
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    with connect(args) as b:
        deferred = b.erase(
            args.call_id,
            tenant=args.tenant,
            reason=args.reason,
            override_retention=getattr(args, "override_retention", False),
        )
    if deferred:  # held: recorded, carried out at the last release
        print(f"{args.call_id}: {deferred}")
        return 0
    print(f"{args.call_id} erased: its key is destroyed, a tombstone and a log leaf remain")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    with connect(args) as b:
        bar = progress(None, "reindex")
        try:
            n = b.reindex(progress=lambda k: bar.update(k - bar.n))
        finally:
            bar.close()
    print(f"index rebuilt from the segments: {n} records")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """`callvault --data DIR compact [CALL_ID...]`: local only (a server compacts
    its own calls; its Admin.Stats shows the backlog)."""
    from callvault.vault import Vault
    from callvault.vault.compact import Compactor, compact_call

    if getattr(args, "server", None):
        raise CallvaultError(
            "compact works on a local vault (--data DIR); a server compacts its raw calls "
            "itself (see `callvault --server ADDR stats`: compact_backlog_calls)"
        )
    if not args.data:
        raise CallvaultError("compact needs --data DIR")
    if args.workers < 1:
        raise CallvaultError("--workers must be at least 1")
    with Vault.open(args.data, key_file=args.key_file, create=False) as v:
        if args.call_ids:
            for cid in args.call_ids:
                r = compact_call(v, cid, tenant=args.tenant)
                print(
                    f"{cid}: compacted, {r.raw_bytes} bytes of G.711 in {r.raw_records} "
                    f"records -> {r.opus_bytes} bytes of Opus in {r.opus_records} records "
                    f"(transcoding leaf {r.log_index})"
                )
            return 0
        c = Compactor(v, workers=args.workers)
        try:
            c.start()
            c.wait_idle(float("inf"))
        finally:
            c.stop()
        print(f"{c.compacted} call(s) compacted, {c.failed} failed")
        if c.failed:
            raise CallvaultError(f"compaction failed: {c.last_error}")
    return 0


def cmd_reclaim(args: argparse.Namespace) -> int:
    with connect(args) as b:
        done = b.reclaim(threshold=args.threshold, scan=args.scan)
    if args.json:
        json.dump(done, sys.stdout, indent=2)
        print()
        return 0
    print(
        f"{done['bytes_freed']} bytes reclaimed: {done['segments_removed']} segment(s) "
        f"removed, {done['segments_rewritten']} rewritten into {done['segments_written']} "
        f"({done['records_moved']} records moved); {done['reclaimable_bytes']} bytes "
        "counted dead remain"
    )
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    with connect(args) as b:
        kek_id, n = b.rotate_key()
    print(
        f"key-encryption key {kek_id} active; {n} wrapped key(s) re-wrapped (the tenants' "
        "keys, and call keys from before per-tenant keys), no audio rewritten"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with connect(args) as b:
        stats = b.stats()
    if args.json:
        json.dump(stats, sys.stdout, indent=2)
        print()
        return 0
    for k, val in stats.items():
        if isinstance(val, dict):
            if val:
                print(f"{k}:")
                for name, n in sorted(val.items()):
                    print(f"  {name}: {n}")
        else:
            print(f"{k}: {val:.1f}" if isinstance(val, float) else f"{k}: {val}")
    return 0

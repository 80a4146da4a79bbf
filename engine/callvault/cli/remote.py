"""The vault verbs' backend on a server: `callvault --server HOST:PORT <verb>`.

The work happens on the server through the SDK (callvault_client); the verbs in
callvault.cli.vault print the same as on a local vault, so scripts work either
way. `import` reads the inputs here (captures: their RTP as captured; WAV legs:
packetized as 20 ms PCMU RTP paced in real time) and streams them on an Ingest
stream, so the server's jitter buffer, DSP and encoder make the recording exactly
as they make a live call's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

from callvault_client import Client, Recording, pb
from callvault_client.errors import CallvaultClientError

from callvault.cli.common import CallFields, progress, resolve_token
from callvault.errors import CallvaultError

# Packets per RtpBatch: big enough that per-message overhead is small, small
# enough that acknowledgements come about once a second per leg.
BATCH_PACKETS = 200
# A batch also closes when its packets span this much capture time, so the
# legs' batches interleave in arrival order as a live call's would.
BATCH_SPAN_US = 1_000_000


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[RemoteBackend]:
    """A client of ``--server`` (TLS with ``--tls-ca``/``--tls-cert``/``--tls-key``;
    a token from ``--token``, ``--token-file`` or $CALLVAULT_TOKEN), open while the
    block runs. The SDK's errors, and OSErrors (a TLS file that cannot
    be read, an output that cannot be written), leave the block as CallvaultError."""
    if bool(getattr(args, "client_cert", None)) != bool(getattr(args, "client_key", None)):
        raise CallvaultError("a client certificate needs both --tls-cert and --tls-key")
    try:
        with Client(
            args.server,
            token=resolve_token(args) or "",
            tls_ca=getattr(args, "tls_ca", None),
            tls_cert=getattr(args, "client_cert", None),
            tls_key=getattr(args, "client_key", None),
            metadata=access_metadata(args),
        ) as client:
            yield RemoteBackend(client, approval=getattr(args, "approval", None) or "")
    except CallvaultClientError as e:
        raise CallvaultError(f"{args.server}: {e.message}") from e
    except BrokenPipeError:
        raise  # stdout's reader went away: main ends quietly
    except OSError as e:  # a TLS file, an output: our sentence, not the OS's repr
        what = f"cannot use {e.filename}" if e.filename else "input/output failed"
        raise CallvaultError(f"{what}: {e.strerror or e}") from e


class RemoteBackend:
    """callvault.cli.backend.Backend on a server's Client."""

    def __init__(self, client: Client, *, approval: str = "") -> None:
        self.client = client
        self.approval = approval  # export/bundle --approval REQ (four-eyes export)

    def import_call(
        self,
        call_id: str,
        inputs: Sequence[str],
        *,
        tenant: str,
        legs: Sequence[str] | None,
        meta: dict[str, Any],
        mask_dtmf: bool = True,
        keep_digits: bool = False,
    ) -> bytes:
        from callvault.media import pipeline

        if not mask_dtmf or keep_digits:
            raise CallvaultError(
                "import --server: DTMF masking and digits are the server's [dtmf] policy "
                "(mask, keep_digits); --no-mask-dtmf and --keep-digits apply to --data only"
            )

        meta = dict(meta)
        leg_inputs = pipeline.parse_inputs(inputs, legs)
        flows = [leg.flow for leg in leg_inputs if leg.flow is not None]
        # as pipeline.run_call: a capture's call starts with its first captured sample
        capture_start = min(f.first_sample_us() for f in flows) if flows else None
        start_us = meta.pop("start_us", None)
        # the start that belongs to the content (given or captured; not the clock's)
        content_start = start_us if start_us is not None else capture_start
        if start_us is None:
            start_us = capture_start if capture_start is not None else int(time.time() * 1e6)
        packets, specs = leg_packets(leg_inputs, start_us)
        if capture_start is not None and start_us != capture_start:
            # --meta start moves the call, not its audio: shift the arrival times with it
            # (the timeline depends only on arrivals relative to frame 0's instant)
            shift = start_us - capture_start
            packets = [(at + shift, leg, p) for at, leg, p in packets]
        bar = progress(len(packets), "import", unit="pkt")
        # The recording_id is a digest of what is imported: the same import again is
        # recognised by the server (resumed, or "sealed before"); a different one
        # under the same call id is refused (ALREADY_EXISTS).
        rid = import_digest(specs, start_us, content_start, meta, packets)
        rec = self.client.record(
            call_id, specs, tenant=tenant, start_us=start_us, meta=meta, recording_id=rid
        )
        try:
            send_call(rec, packets, len(specs), progress=bar.update)
            sealed = rec.end()
        except BaseException:
            rec.cancel()
            raise
        finally:
            bar.close()
        if rec.started is not None and rec.started.sealed_before:
            print(
                f"callvault: call {call_id} is already stored, identical (nothing imported)",
                file=sys.stderr,
            )
        return sealed.seal

    def list_calls(
        self,
        *,
        tenant: str,
        since_us: int,
        until_us: int | None,
        agent: str | None,
        skill_group: str | None,
        tag: str | None,
    ) -> Sequence[CallFields]:
        # pages (Archive.SearchCalls): each a unary call with a deadline and retries
        return list(
            self.client.search_all(
                tenant=tenant,
                since=since_us,
                until=until_us or 0,  # 0: no bound
                agent=agent or "",
                skill_group=skill_group or "",
                tag=tag or "",
                page_size=1000,
            )
        )

    def list_decisions(
        self, *, tenant: str, since_us: int, until_us: int | None
    ) -> Sequence[pb.CallInfo]:
        return list(
            self.client.search(
                tenant=tenant, since_us=since_us, until_us=until_us or 0, decisions=True
            )
        )

    def call_detail(self, call_id: str, *, tenant: str) -> pb.CallInfo:
        return self.client.get_call(
            call_id, tenant=tenant, include_summary=True, include_customer_number=True
        )

    def export(
        self,
        call_id: str,
        out: str | BinaryIO,
        *,
        tenant: str,
        fmt: Literal["ogg", "wav"],
        from_s: float,
        to_s: float | None,
        metadata: bool = False,
        customer_number: bool = False,
    ) -> int:
        if to_s is not None and to_s <= from_s:  # on the wire, to_ms 0 means the end
            raise CallvaultError(f"--from {from_s} / --to {to_s}: empty range")
        from_ms = max(0, int(from_s * 1000))
        to_ms = 0 if to_s is None else math.ceil(to_s * 1000)
        if not isinstance(out, str):  # a stream (stdout): the chunks as they come
            n = 0
            for chunk in self.client.export_chunks(
                call_id,
                tenant=tenant,
                format=fmt,
                from_ms=from_ms,
                to_ms=to_ms,
                include_metadata=metadata,
                include_customer_number=customer_number,
                approval=self.approval,
            ):
                out.write(chunk.data)
                n += len(chunk.data)
            out.flush()
            return n
        bar, on_chunk = _byte_bar("export")
        try:
            return self.client.export(
                call_id,
                out,
                tenant=tenant,
                format=fmt,
                from_ms=from_ms,
                to_ms=to_ms,
                progress=on_chunk,
                include_metadata=metadata,
                include_customer_number=customer_number,
                approval=self.approval,
            )
        finally:
            bar.close()

    def play(
        self, call_id: str, *, tenant: str, from_ms: int, to_ms: int | None, follow: bool
    ) -> Iterator[list[bytes]]:
        for c in self.client.play(
            call_id,
            tenant=tenant,
            format="pcm",
            from_ms=from_ms,
            to_ms=to_ms or 0,
            follow=follow,
        ):
            yield [leg.data for leg in c.legs]

    def verify(self, call_ids: Sequence[str], *, tenant: str, all: bool) -> Iterator[list[str]]:
        for r in self.client.verify(call_ids, tenant=tenant, all=all):
            problems = list(r.problems)
            if not r.ok and not problems:
                problems.append(f"{r.what}: does not verify")
            yield problems

    def bundle(
        self, call_id: str, out: Path, *, tenant: str, with_customer_number: bool = False
    ) -> None:
        bar, on_chunk = _byte_bar("bundle")
        try:
            self.client.get_bundle(
                call_id,
                out,
                tenant=tenant,
                include_customer_number=with_customer_number,
                progress=on_chunk,
                approval=self.approval,
            )
        finally:
            bar.close()

    def checkpoint(self) -> tuple[str, str]:
        cp = self.client.get_checkpoint()
        return cp.note, cp.verifier_key

    def erase(
        self, call_id: str, *, tenant: str, reason: str, override_retention: bool = False
    ) -> str | None:
        r = self.client.erase(call_id, reason, tenant=tenant, override_retention=override_retention)
        return r.deferred_why or "deferred (held)" if r.deferred else None

    def reindex(self, progress: Callable[[int], None]) -> int:
        # the server does not stream its progress; as long as the segments take
        return self.client.reindex(timeout=None).records

    def rotate_key(self) -> tuple[int, int]:
        r = self.client.rotate_key(timeout=None)
        return r.kek_id, r.rewrapped

    def reclaim(self, *, threshold: float, scan: bool) -> dict[str, int]:
        r = self.client.reclaim(threshold=threshold, scan=scan, timeout=None)
        return {f.name: getattr(r, f.name) for f in r.DESCRIPTOR.fields}

    def stats(self) -> dict[str, Any]:
        r = self.client.stats()
        out: dict[str, Any] = {}
        for field in r.DESCRIPTOR.fields:  # every counter the server's version has
            value = getattr(r, field.name)
            out[field.name] = dict(value) if field.message_type is not None else value
        return out


def _byte_bar(desc: str) -> tuple[Any, Callable[[pb.FileChunk], None]]:
    """A byte progress bar (a tty only) and the chunk callback that feeds it."""
    bar = progress(None, desc, unit="B")
    bar.unit_scale, bar.unit_divisor = True, 1024
    sizes: dict[str, int] = {}

    def on_chunk(chunk: pb.FileChunk) -> None:
        if chunk.name not in sizes:
            sizes[chunk.name] = chunk.size
            bar.total = sum(sizes.values())
            bar.refresh()
        bar.update(len(chunk.data))

    return bar, on_chunk


# -- import: captures and WAV legs as an Ingest stream ---------------------------------

Packet = tuple[int, int, bytes]  # (arrival_us, leg, RTP packet)


def leg_packets(leg_inputs: Sequence[Any], start_us: int) -> tuple[list[Packet], list[pb.LegSpec]]:
    """Every leg's RTP packets with arrival times, merged in arrival order, and the
    legs' specs. WAV legs become 20 ms PCMU packets, the first arriving 20 ms after
    ``start_us`` (when its last sample is in) and one every 20 ms after it."""
    from callvault.media.batch import AUDIO_PTS
    from callvault.media.packetize import packetize
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
        wav_packets = packetize(leg.pcm, start_us=start_us, ssrc=0x5EED0000 + i, seed=i)
        packets.extend((at, i, p) for at, p in wav_packets)
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


def import_digest(
    legs: Sequence[pb.LegSpec],
    start_us: int,
    content_start: int | None,
    meta: dict[str, Any],
    packets: Sequence[Packet],
) -> str:
    """An import's recording_id: "import:" and the SHA-256 of its legs, start (when
    given or captured, not taken from the clock), metadata and every packet with its
    leg and arrival time relative to the start (docs/server.md "Call ids")."""
    h = hashlib.sha256()
    head = {"legs": [leg.name for leg in legs], "start_us": content_start, "meta": meta}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for at, leg, p in packets:
        h.update(struct.pack(">qIH", at - start_us, leg, len(p)))
        h.update(p)
    return "import:" + h.hexdigest()


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


# -- access: the caller's stated reason, four-eyes export (docs/access.md) -------------


def access_metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    """What every RPC of this command carries for access control: the stated reason
    (``--reason``: play, export, bundle, erase), metadata ``callvault-reason``."""
    reason = getattr(args, "reason", None)
    return [("callvault-reason", reason)] if reason else []


def _request_row(r: pb.ExportRequestInfo) -> dict[str, Any]:
    return {
        "id": r.id,
        "tenant": r.tenant,
        "call_id": r.call_id,
        "state": r.state,
        "reason": r.reason,
        "requested_by": r.requested_by,
        "requested_us": r.requested_us,
        "approved_by": r.approved_by,
        "approved_us": r.approved_us,
        "expires_us": r.expires_us,
        "used_by": r.used_by,
        "used_us": r.used_us,
        "used_for": r.used_for,
    }


def _utc(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1e6)) if us else "-"


def _server_only(args: argparse.Namespace, verb: str) -> None:
    if not getattr(args, "server", None):
        raise CallvaultError(f"{verb} asks a server: give --server HOST:PORT")


def cmd_export_request(args: argparse.Namespace) -> int:
    """`export-request CALL --reason TEXT`: prints the request's id."""
    _server_only(args, "export-request")
    with connect(args) as b:
        r = b.client.request_export(args.call_id, args.reason, tenant=args.tenant)
    print(r.id)
    print(
        f"callvault: export request {r.id} for call {r.call_id} is pending: another legal or "
        f"admin identity runs `callvault export-approve {r.id}`",
        file=sys.stderr,
    )
    return 0


def cmd_export_approve(args: argparse.Namespace) -> int:
    _server_only(args, "export-approve")
    with connect(args) as b:
        r = b.client.approve_export(args.request_id)
    print(
        f"approved {r.id}: one export of call {r.call_id} by {r.requested_by} until "
        f"{_utc(r.expires_us)} (`callvault export {r.call_id} --approval {r.id} ...`)"
    )
    return 0


def cmd_export_requests(args: argparse.Namespace) -> int:
    _server_only(args, "export-requests")
    with connect(args) as b:
        rows = [_request_row(r) for r in b.client.list_export_requests()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(
            f"{r['id']}  {r['state']:<8}  {r['tenant']}/{r['call_id']}  by {r['requested_by']}"
            f"  {_utc(r['requested_us'])}"
            + (
                f"  approved by {r['approved_by']} until {_utc(r['expires_us'])}"
                if r["approved_by"]
                else ""
            )
            + f"  reason: {r['reason']}"
        )
    return 0

"""The offline verifier of an export bundle: one call with everything it needs.

The bundle's files are docs/format.md 8.9; it is written by
``callvault.vault.bundle``, and the procedure, step by step for other tools, is
docs/verify-bundle.md. `verify_bundle` checks, with nothing else (no vault, no
index, no key file): the checkpoint signature; the chain over the records
(every head) and the seal over head, count and manifest; the leaf from the
seal and its inclusion in the checkpoint's tree; that the packets of
call.ogg are exactly the packets sealed in the records; that call.ogg's
headers (OpusHead, OpusTags) and pages are exactly what the export writer
makes for the sealed call (regenerated here through ``media.ogg.write_call``
from the sealed manifest and records, so a changed gain, pre-skip, input
rate, vendor, comment or end trim is named); and that the bundle holds no
file it does not know.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from callvault.errors import CallvaultError
from callvault.integrity import chain as chainmod
from callvault.integrity import checkpoint, merkle
from callvault.integrity.leaves import LEAF_SEAL, leaf_data, transcode_leaf
from callvault.media import ogg
from callvault.media.packets import PacketRun
from callvault.store import crypto
from callvault.store import records as rec

#: The files a bundle may hold (docs/format.md 8.9); ``records/`` holds 000000, 000001, ...
BUNDLE_FILES = (
    "call.key",
    "call.ogg",  # call.wav instead for a raw (G.711, peak mode) call
    "call.wav",
    "chain.json",
    "checkpoint.txt",
    "customer-number.key",  # only in a bundle asked for with the customer number
    "manifest.json",
    "proof.json",
    "public-key.txt",
    "transcode.json",  # only for a compacted call: its transcoding document
)
_RECORD_NAME = re.compile(r"[0-9]{6}")


def export_comments(manifest: Mapping[str, object]) -> dict[str, str]:
    """The OpusTags the vault's export writes for the sealed call ``manifest``.

    ``ogg.call_comments``, as ``vault/export.py`` passes them to ``ogg.write_call``
    (the verifier regenerates the expected headers from them)."""
    legs = manifest["legs"]
    assert isinstance(legs, list)
    return ogg.call_comments(
        [str(leg) for leg in legs],
        str(manifest["call_id"]),
        str(manifest["tenant"]),
        int(str(manifest["start_us"])),
    )


def unknown_files(d: Path) -> list[str]:
    """Names in bundle ``d`` that a bundle does not hold (or that are not regular files)."""
    bad = []
    for p in sorted(d.iterdir()):
        if p.name == "records" and p.is_dir() and not p.is_symlink():
            for q in sorted(p.iterdir()):
                if not (_RECORD_NAME.fullmatch(q.name) and q.is_file() and not q.is_symlink()):
                    bad.append(f"records/{q.name}")
        elif p.name not in BUNDLE_FILES or not p.is_file() or p.is_symlink():
            bad.append(p.name)
    return bad


def _check_number_key(
    r: BundleReport, d: Path, tenant: str, call_id: str, m: Mapping[str, object]
) -> None:
    """A customer-number.key must open the sealed customer number (and only with it)."""
    p = d / "customer-number.key"
    if not p.exists():
        return
    sealed = m.get("customer_number_sealed")
    if not isinstance(sealed, str) or not sealed.startswith(rec.NUMBER_PREFIX):
        r.fail("customer-number.key is in the bundle, but the call has no number under its own key")
        return
    try:
        crypto.decrypt_blob(
            bytes.fromhex(p.read_text().strip()),
            blob=bytes.fromhex(sealed[len(rec.NUMBER_PREFIX) :]),
            aad=rec.call_aad(tenant, call_id) + rec.NUMBER_AAD,
        )
        r.checked.append("customer-number.key opens the sealed customer number")
    except (ValueError, CallvaultError) as e:
        r.fail(f"customer-number.key does not open the sealed customer number: {e}")


def _pages_without_serial(raw: bytes) -> list[bytes]:
    """The Ogg pages of ``raw`` with serial number and CRC zeroed (both differ per write)."""
    out = []
    pos = 0
    hs = ogg.PAGE_HEADER.size
    while pos + hs <= len(raw):
        nseg = raw[pos + hs - 1]
        end = pos + hs + nseg + sum(raw[pos + hs : pos + hs + nseg])
        page = bytearray(raw[pos:end])
        page[14:18] = bytes(4)  # serial (RFC 3533 6)
        page[22:26] = bytes(4)  # CRC
        out.append(bytes(page))
        pos = end
    return out


def _compare_ogg(
    r: BundleReport,
    raw: bytes,
    got: ogg.OggOpusReader,
    sealed: list[PacketRun],
    m: Mapping[str, object],
) -> None:
    """Fail ``r`` naming each header field of call.ogg that differs from the export the
    writer makes for the sealed call, then any other difference in its pages."""
    codec = m["codec"]
    assert isinstance(codec, dict)
    frames = m["frames"]
    assert isinstance(frames, int)
    buf = io.BytesIO()
    ogg.write_call(
        buf, sealed, pre_skip=int(codec["pre_skip"]), frames=frames, comments=export_comments(m)
    )
    want_raw = buf.getvalue()
    want = ogg.OggOpusReader(io.BytesIO(want_raw))
    before = len(r.failures)
    for name in (
        "version",
        "channels",
        "pre_skip",
        "input_sample_rate",
        "output_gain",
        "mapping_family",
        "stream_count",
        "coupled_count",
        "mapping",
    ):
        g, w = getattr(got.head, name), getattr(want.head, name)
        if g != w:
            extra = ""
            if name == "output_gain":
                extra = f" ({g / 256:+.2f} dB, the export has {w / 256:+.2f} dB)"
            r.fail(f"call.ogg OpusHead {name} is {g}, the sealed call's export has {w}{extra}")
    if got.vendor != want.vendor:
        r.fail(f"call.ogg OpusTags vendor is {got.vendor!r}, the export's is {want.vendor!r}")
    for key in sorted(set(got.comments) | set(want.comments)):
        g_c, w_c = got.comments.get(key), want.comments.get(key)
        if w_c is None:
            r.fail(f"call.ogg OpusTags has comment {key}={g_c!r}, which the export does not write")
        elif g_c is None:
            r.fail(f"call.ogg OpusTags lacks comment {key}={w_c!r}, which the export writes")
        elif g_c != w_c:
            r.fail(f"call.ogg OpusTags comment {key} is {g_c!r}, the export's is {w_c!r}")
    if len(r.failures) == before and got.header_packets != want.header_packets:
        r.fail("call.ogg headers differ in their bytes from the export's (OpusHead or OpusTags)")
    if got.final_granule != want.final_granule:
        r.fail(
            f"call.ogg end granule is {got.final_granule}, the export's is {want.final_granule}"
            " (the playable length was changed)"
        )
    if len(r.failures) == before and _pages_without_serial(raw) != _pages_without_serial(want_raw):
        r.fail("call.ogg pages differ from the export's (page layout, flags or granules)")


@dataclass
class BundleReport:
    ok: bool = True
    checked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.ok = False
        self.failures.append(what)


def _check_transcoding(
    r: BundleReport,
    d: Path,
    cp: checkpoint.Checkpoint,
    tenant: str,
    call_id: str,
    m: Mapping[str, object],
    chain_doc: Mapping[str, object],
    proof: Mapping[str, object],
    bodies: list[bytes],
) -> dict[str, object] | None:
    """A compacted call's lineage (docs/verify-bundle.md step 3b): the seal over the raw
    chain head named by transcode.json, the Opus chain from that head through the
    records, and the transcoding leaf in the signed tree. Returns the document."""
    raw_doc = (d / "transcode.json").read_bytes()
    doc = json.loads(raw_doc)
    raw, opus = doc["raw"], doc["opus"]
    raw_head = bytes.fromhex(raw["head"])
    first, count = int(opus["first_index"]), int(opus["count"])
    manifest = (d / "manifest.json").read_bytes()
    seal = bytes.fromhex(str(chain_doc["seal"]))
    if int(raw["count"]) != m["records"] or raw["seal"] != chain_doc["seal"]:
        r.fail("transcode.json names another raw chain than the manifest and seal")
    if chainmod.seal(raw_head, int(raw["count"]), manifest) != seal:
        r.fail("the seal does not commit to the raw chain head of transcode.json")
    else:
        r.checked.append(f"seal over the raw chain ({raw['count']} records) and the manifest")
    names = sorted(p.name for p in (d / "records").iterdir())
    if names != [f"{i:06d}" for i in range(first, first + len(names))]:
        r.fail(f"records/ is not a gapless sequence from {first:06d}")
    c = chainmod.Chain(tenant, call_id, raw_head, first)
    heads = [str(h) for h in chain_doc["heads"]]  # type: ignore[attr-defined]
    for k, body in enumerate(bodies):
        c.append(body)
        if k >= len(heads) or c.head.hex() != heads[k]:
            r.fail(f"chain: record {first + k} does not match the recorded chain link")
            break
    if len(bodies) != count or c.head.hex() != opus["head"]:
        r.fail("the Opus records do not make the chain transcode.json commits to")
    else:
        r.checked.append(f"Opus chain of {count} records from the raw chain's head")
    t = proof.get("transcode")
    if not isinstance(t, dict):
        r.fail("proof.json has no transcoding leaf")
        return doc
    leaf = transcode_leaf(
        tenant, call_id, raw_head, bytes.fromhex(opus["head"]), raw_doc, int(t["time_us"])
    )
    if bytes.fromhex(t["leaf"]) != leaf:
        r.fail("the transcoding leaf does not commit to this call's chains and settings")
    try:
        merkle.verify_inclusion(
            int(t["leaf_index"]),
            cp.size,
            merkle.leaf_hash(leaf),
            [bytes.fromhex(h) for h in t["inclusion"]],
            cp.root,
        )
        r.checked.append(
            f"transcoding is leaf {t['leaf_index']} of the signed tree "
            f"(encoder {json.dumps(doc['encoder'], sort_keys=True)})"
        )
    except merkle.ProofError as e:
        r.fail(f"transcoding inclusion proof: {e}")
    return doc


def _check_raw_audio(
    r: BundleReport, d: Path, m: Mapping[str, object], bodies: list[bytes], key: bytes
) -> None:
    """A raw call's call.wav must be its G.711 records decoded, byte for byte."""
    import tempfile

    import numpy as np

    from callvault import _g711
    from callvault.media import wav

    if (d / "call.ogg").exists():
        r.fail("call.ogg is in the bundle of a raw call (it has call.wav)")
        return
    legs_doc = m["legs"]
    assert isinstance(legs_doc, list)
    frames = int(str(m["frames"]))
    pcm = [np.zeros(frames * rec.G711_FRAME_BYTES, dtype=np.int16) for _ in legs_doc]
    for body in bodies:
        b = rec.parse(rec.AUDIO, body)
        _, data = b.decrypt_audio(key)
        lo = b.first_frame * rec.G711_FRAME_BYTES
        pcm[b.leg][lo : lo + len(data)] = _g711.decode(data, rec.g711_law(b.codec))[
            : len(pcm[b.leg]) - lo
        ]
    with tempfile.TemporaryDirectory() as tmp:
        want = Path(tmp) / "call.wav"
        wav.write(want, pcm)
        if want.read_bytes() != (d / "call.wav").read_bytes():
            r.fail("call.wav is not the G.711 audio sealed in the records")
            return
    r.checked.append("call.wav is exactly the sealed G.711 audio, decoded")


def verify_bundle(
    directory: str | os.PathLike[str], *, public_key: str | None = None
) -> BundleReport:
    """Check a bundle offline. ``public_key`` (verifier key text) is the one you trust;
    without it the bundle's own public-key.txt is used (and the report says so)."""
    from callvault import _opus

    d = Path(directory)
    r = BundleReport()
    try:
        for name in unknown_files(d):
            r.fail(
                f"unknown file in the bundle: {name} (a bundle holds only the files of"
                " docs/format.md 8.9)"
            )
        key_text = public_key or (d / "public-key.txt").read_text().strip()
        if public_key is None:
            r.checked.append(
                "public key taken from the bundle itself (pass --public-key to "
                "check against a key you trust)"
            )
        cp = checkpoint.verify((d / "checkpoint.txt").read_bytes(), key_text)
        r.checked.append(f"checkpoint signed by {cp.origin}, tree size {cp.size}")
        chain_doc = json.loads((d / "chain.json").read_text())
        tenant, call_id = chain_doc["tenant"], chain_doc["call_id"]
        manifest = (d / "manifest.json").read_bytes()
        m = json.loads(manifest)
        if (m["tenant"], m["call_id"]) != (tenant, call_id):
            r.fail("manifest.json names another call than chain.json")
        files = sorted((d / "records").iterdir())
        bodies = [p.read_bytes() for p in files]
        proof = json.loads((d / "proof.json").read_text())
        tpath = d / "transcode.json"
        tdoc: dict[str, object] | None = None
        if tpath.exists():  # a compacted call: Opus records chained on from the raw head
            tdoc = _check_transcoding(r, d, cp, tenant, call_id, m, chain_doc, proof, bodies)
            if (d / "call.wav").exists():
                r.fail("call.wav is in the bundle of a compacted call (it has call.ogg)")
        else:
            if [p.name for p in files] != [f"{i:06d}" for i in range(len(files))]:
                r.fail("records/ is not a gapless sequence 000000, 000001, ...")
            try:
                chainmod.verify(
                    tenant,
                    call_id,
                    bodies,
                    heads=[bytes.fromhex(h) for h in chain_doc["heads"]],
                    expect_count=int(m["records"]),
                    manifest=manifest,
                    expect_seal=bytes.fromhex(chain_doc["seal"]),
                )
                r.checked.append(f"chain of {len(bodies)} records and the seal")
            except chainmod.ChainError as e:
                r.fail(f"chain: {e}")
        leaf = bytes.fromhex(proof["leaf"])
        want_leaf = leaf_data(
            LEAF_SEAL, tenant, call_id, bytes.fromhex(chain_doc["seal"]), int(m["end_us"])
        )
        if leaf != want_leaf:
            r.fail("the log leaf does not commit to this call's seal")
        if int(proof["tree_size"]) != cp.size:
            r.fail(f"proof is for tree size {proof['tree_size']}, the checkpoint for {cp.size}")
        try:
            merkle.verify_inclusion(
                int(proof["leaf_index"]),
                cp.size,
                merkle.leaf_hash(leaf),
                [bytes.fromhex(h) for h in proof["inclusion"]],
                cp.root,
            )
            r.checked.append(f"seal is leaf {proof['leaf_index']} of the signed tree")
        except merkle.ProofError as e:
            r.fail(f"inclusion proof: {e}")
        key = bytes.fromhex((d / "call.key").read_text().strip())
        _check_number_key(r, d, tenant, call_id, m)
        if (m.get("codec") or {}).get("name") == "g711" and tdoc is None:
            _check_raw_audio(r, d, m, bodies, key)
            return r
        if tdoc is not None:  # the Ogg headers follow the transcoding's codec
            m = {**m, "codec": tdoc["codec"]}
        legs: list[list[tuple[int, PacketRun]]] = [[] for _ in m["legs"]]
        for body in bodies:
            b = rec.parse(rec.AUDIO, body)
            if b.codec != rec.CODEC_OPUS:
                r.fail(f"record {b.chain_index} is not Opus (codec {b.codec})")
                return r
            lengths, packets = b.decrypt_audio(key)
            legs[b.leg].append((b.first_frame, PacketRun(packets, lengths)))
        raw_ogg = (d / "call.ogg").read_bytes()
        reader = ogg.OggOpusReader(io.BytesIO(raw_ogg))
        ogg_legs: list[list[bytes]] = [[] for _ in m["legs"]]
        for pkt in PacketRun(*reader.packets_data()):
            parts = _opus.unpack_multistream(pkt, len(m["legs"])) if len(m["legs"]) > 1 else [pkt]
            for leg, p in enumerate(parts):
                ogg_legs[leg].append(p)
        sealed_runs = []
        for leg, chunks in enumerate(legs):
            sealed = PacketRun.concat(run for _, run in sorted(chunks, key=lambda c: c[0]))
            sealed_runs.append(sealed)
            if sealed != PacketRun.of(ogg_legs[leg]):
                r.fail(f"call.ogg channel {leg} is not the audio sealed in the records")
        if r.ok:
            r.checked.append("call.ogg holds exactly the sealed packets")
            _compare_ogg(r, raw_ogg, reader, sealed_runs, m)
            if r.ok:
                r.checked.append("call.ogg headers (OpusHead, OpusTags) and pages are the export's")
    except (OSError, ValueError, KeyError, CallvaultError) as e:
        r.fail(f"{type(e).__name__}: {e}")
    return r

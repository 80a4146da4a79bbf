"""The offline verifier of an export bundle: one call with everything it needs.

The bundle's files are docs/format.md 8.9; it is written by
``callvault.vault.bundle``, and the procedure, step by step for other tools, is
docs/verify-bundle.md. `verify_bundle` checks, with nothing else (no vault, no
index, no key file): the checkpoint signature; the chain over the records
(every head) and the seal over head, count and manifest; the leaf from the
seal and its inclusion in the checkpoint's tree; and that the packets of
call.ogg are exactly the packets sealed in the records.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from callvault.errors import CallvaultError
from callvault.integrity import chain as chainmod
from callvault.integrity import checkpoint, merkle
from callvault.integrity.leaves import LEAF_SEAL, leaf_data
from callvault.media.packets import PacketRun
from callvault.store import records as rec


@dataclass
class BundleReport:
    ok: bool = True
    checked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.ok = False
        self.failures.append(what)


def verify_bundle(
    directory: str | os.PathLike[str], *, public_key: str | None = None
) -> BundleReport:
    """Check a bundle offline. ``public_key`` (verifier key text) is the one you trust;
    without it the bundle's own public-key.txt is used (and the report says so)."""
    from callvault import _opus
    from callvault.media import ogg

    d = Path(directory)
    r = BundleReport()
    try:
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
        proof = json.loads((d / "proof.json").read_text())
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
        legs: list[list[tuple[int, PacketRun]]] = [[] for _ in m["legs"]]
        for body in bodies:
            b = rec.parse(rec.AUDIO, body)
            lengths, packets = b.decrypt_audio(key)
            legs[b.leg].append((b.first_frame, PacketRun(packets, lengths)))
        reader = ogg.OggOpusReader(d / "call.ogg")
        ogg_legs: list[list[bytes]] = [[] for _ in m["legs"]]
        for pkt in PacketRun(*reader.packets_data()):
            parts = _opus.unpack_multistream(pkt, len(m["legs"])) if len(m["legs"]) > 1 else [pkt]
            for leg, p in enumerate(parts):
                ogg_legs[leg].append(p)
        for leg, chunks in enumerate(legs):
            sealed = PacketRun.concat(run for _, run in sorted(chunks, key=lambda c: c[0]))
            if sealed != PacketRun.of(ogg_legs[leg]):
                r.fail(f"call.ogg channel {leg} is not the audio sealed in the records")
        if r.ok:
            r.checked.append("call.ogg holds exactly the sealed packets")
    except (OSError, ValueError, KeyError, CallvaultError) as e:
        r.fail(f"{type(e).__name__}: {e}")
    return r

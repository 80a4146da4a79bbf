"""Writing an export bundle of a sealed call (docs/format.md 8.9); the offline
verifier is ``callvault.integrity.bundle.verify_bundle``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from callvault.integrity import chain as chainmod
from callvault.integrity import checkpoint
from callvault.integrity.leaves import LEAF_SEAL, leaf_data, transcode_leaf
from callvault.store import records as rec
from callvault.vault.common import VaultError
from callvault.vault.core import Vault


def write_bundle(
    vault: Vault,
    call_id: str,
    out: str | os.PathLike[str],
    *,
    tenant: str = "default",
    with_customer_number: bool = False,
) -> Path:
    """Write the bundle of a sealed call into a new directory ``out``.

    The bundle's ``call.key`` opens the audio, not the customer number; with
    ``with_customer_number`` the number's own key is added (``customer-number.key``).
    A call recorded before the number had its own key (its number is sealed under the
    data key) gets a bundle only with ``with_customer_number``: its call.key would
    reveal the number."""
    d = Path(out)
    e = vault.get_call(call_id, tenant=tenant)
    if not e.seal or e.log_index < 0:
        raise VaultError(f"call {call_id} is not sealed: only sealed calls have bundles")
    if e.state == "erased":
        raise VaultError(f"call {call_id} was erased: its audio is gone")
    number_key = None
    sealed_number = e.customer_number_sealed
    if sealed_number and not sealed_number.startswith(rec.NUMBER_PREFIX):
        if not with_customer_number:
            raise VaultError(
                f"call {call_id} was recorded by an older callvault that sealed its customer"
                " number under the call's data key, which a bundle must carry: its bundle"
                " would reveal the number. Ask for it with the customer number"
                " (bundle --with-customer-number) if the recipient may see it"
            )
    elif sealed_number and with_customer_number:
        number_key = vault.call_keys.get_number(tenant, call_id)
    d.mkdir(parents=True, exist_ok=False)
    (d / "records").mkdir()
    raw_head: bytes | None = None
    first = 0
    transcode: dict[str, object] | None = None
    if e.storage == "compacted":  # the Opus records chain on from the raw chain's head
        tb, tdoc = vault.transcoding(e)
        raw_head = bytes.fromhex(tdoc["raw"]["head"])
        first = int(tdoc["opus"]["first_index"])
        (d / "transcode.json").write_bytes(tb.doc)
        transcode = {"leaf_index": e.transcode_log_index, "time_us": tb.time_us}
        tleaf = transcode_leaf(
            tenant, call_id, raw_head, bytes.fromhex(tdoc["opus"]["head"]), tb.doc, tb.time_us
        )
    bodies = []
    for i, _, raw in vault.stored_records(call_id, tenant=tenant):
        (d / "records" / f"{i:06d}").write_bytes(raw)
        bodies.append(raw)
    c = chainmod.Chain(tenant, call_id, raw_head or b"", first)
    heads = [c.append(b).hex() for b in bodies]
    m = vault.manifest(call_id, tenant=tenant)
    manifest = json.dumps(m, sort_keys=True, separators=(",", ":")).encode()
    (d / "manifest.json").write_bytes(manifest)
    chain_doc: dict[str, object] = {
        "tenant": tenant,
        "call_id": call_id,
        "heads": heads,
        "count": len(bodies),
        "seal": e.seal,
    }
    if raw_head is not None:
        chain_doc.update({"first_index": first, "raw_head": raw_head.hex()})
    (d / "chain.json").write_text(json.dumps(chain_doc, indent=1) + "\n")
    (d / "call.key").write_text(bytes(vault.call_keys.get(tenant, call_id).key).hex() + "\n")
    if number_key is not None:
        (d / "customer-number.key").write_text(number_key.key.hex() + "\n")
    if e.storage == "raw":  # G.711 records: the audio decoded, exactly (format.md 8.9)
        vault.export(call_id, d / "call.wav", tenant=tenant)
    else:
        vault.export(call_id, d / "call.ogg", tenant=tenant)
    note = vault.checkpoint()
    size = checkpoint.parse(note).size
    leaf = leaf_data(LEAF_SEAL, tenant, call_id, bytes.fromhex(e.seal), int(m["end_us"]))
    proof: dict[str, object] = {
        "leaf_index": e.log_index,
        "tree_size": size,
        "leaf": leaf.hex(),
        "inclusion": [h.hex() for h in vault.log.inclusion_proof(e.log_index, size)],
    }
    if transcode is not None:
        transcode["leaf"] = tleaf.hex()
        transcode["inclusion"] = [
            h.hex() for h in vault.log.inclusion_proof(e.transcode_log_index, size)
        ]
        proof["transcode"] = transcode
    (d / "proof.json").write_text(json.dumps(proof, indent=1) + "\n")
    (d / "checkpoint.txt").write_text(note)
    (d / "public-key.txt").write_text(vault.signer.verifier_key() + "\n")
    return d

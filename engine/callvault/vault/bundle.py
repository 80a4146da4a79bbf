"""Writing an export bundle of a sealed call (docs/format.md 8.9); the offline
verifier is ``callvault.integrity.bundle.verify_bundle``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from callvault.integrity import chain as chainmod
from callvault.integrity import checkpoint
from callvault.integrity.leaves import LEAF_SEAL, leaf_data
from callvault.vault.common import VaultError
from callvault.vault.core import Vault


def write_bundle(
    vault: Vault, call_id: str, out: str | os.PathLike[str], *, tenant: str = "default"
) -> Path:
    """Write the bundle of a sealed call into a new directory ``out``."""
    d = Path(out)
    e = vault.get_call(call_id, tenant=tenant)
    if not e.seal or e.log_index < 0:
        raise VaultError(f"call {call_id} is not sealed: only sealed calls have bundles")
    if e.state == "erased":
        raise VaultError(f"call {call_id} was erased: its audio is gone")
    d.mkdir(parents=True, exist_ok=False)
    (d / "records").mkdir()
    bodies = []
    for i, _, raw in vault.stored_records(call_id, tenant=tenant):
        (d / "records" / f"{i:06d}").write_bytes(raw)
        bodies.append(raw)
    c = chainmod.Chain(tenant, call_id)
    heads = [c.append(b).hex() for b in bodies]
    m = vault.manifest(call_id, tenant=tenant)
    manifest = json.dumps(m, sort_keys=True, separators=(",", ":")).encode()
    (d / "manifest.json").write_bytes(manifest)
    (d / "chain.json").write_text(
        json.dumps(
            {
                "tenant": tenant,
                "call_id": call_id,
                "heads": heads,
                "count": len(bodies),
                "seal": e.seal,
            },
            indent=1,
        )
        + "\n"
    )
    (d / "call.key").write_text(bytes(vault.call_keys.get(tenant, call_id).key).hex() + "\n")
    vault.export(call_id, d / "call.ogg", tenant=tenant)
    note = vault.checkpoint()
    size = checkpoint.parse(note).size
    leaf = leaf_data(LEAF_SEAL, tenant, call_id, bytes.fromhex(e.seal), int(m["end_us"]))
    (d / "proof.json").write_text(
        json.dumps(
            {
                "leaf_index": e.log_index,
                "tree_size": size,
                "leaf": leaf.hex(),
                "inclusion": [h.hex() for h in vault.log.inclusion_proof(e.log_index, size)],
            },
            indent=1,
        )
        + "\n"
    )
    (d / "checkpoint.txt").write_text(note)
    (d / "public-key.txt").write_text(vault.signer.verifier_key() + "\n")
    return d

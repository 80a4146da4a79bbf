"""A call's info on the wire (``pb.CallInfo``) from the vault's index entry.

What Archive.Search and Archive.GetCall answer, and what `callvault --data DIR
info` prints from, so that a local vault and a server show a call the same way.
No grpc here: the command line on a local vault imports it without a server.
"""

from __future__ import annotations

import json

from callvault_client._pb import callvault_pb2 as pb

from callvault.store.index import CallEntry
from callvault.vault import Vault


def call_info(e: CallEntry, frames: int) -> pb.CallInfo:
    """The entry's fields, ``frames`` per leg, and of ``extra`` the caller's scalar keys."""
    extra = {str(k): str(v) for k, v in e.extra.items() if not isinstance(v, list | dict)}
    erased = e.state == "erased"
    return pb.CallInfo(
        tenant=e.tenant,
        call_id=e.call_id,
        state=e.state,
        start_us=e.start_us,
        end_us=e.end_us,
        direction=e.direction,
        agent=e.agent,
        skill_group=e.skill_group,
        tags=e.tags,
        legs=e.legs,
        extra=extra,
        frames=frames,
        records=e.records,
        chain_head=bytes.fromhex(e.chain_head),
        seal=bytes.fromhex(e.seal) if e.seal else b"",
        log_index=e.log_index,
        erased_us=e.erased_us if erased else 0,
        erase_reason=e.erase_reason if erased else "",
        erase_log_index=e.erase_log_index if erased else -1,
    )


def call_detail(
    vault: Vault, e: CallEntry, frames: int, *, summary: bool, customer_number: bool
) -> pb.CallInfo:
    """``call_info`` with what GetCall adds on request: a sealed call's summary (JSON)
    and, unless the call is erased, its customer number (decrypted)."""
    info = call_info(e, frames)
    if summary and e.state == "sealed":
        info.summary_json = json.dumps(vault.summary(e.call_id, tenant=e.tenant), sort_keys=True)
    if customer_number and e.state != "erased":
        info.customer_number = vault.customer_number(e.call_id, tenant=e.tenant)
    return info

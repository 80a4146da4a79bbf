"""Lifecycle.Tag: add and remove tags of a sealed call (issue 12 section 2;
docs/server.md "Lifecycle.Tag", docs/policy.md "Tags").

Tenant-scoped like Archive.GetCall: another tenant's call answers NOT_FOUND with
the message of a call that does not exist. Each change is one LIFECYCLE record
(callvault.lifecycle.tags.retag) naming the caller and the request's reason; the
audit trail's entry of the RPC names the call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from callvault_client._pb import callvault_pb2 as pb

from callvault import ids
from callvault.lifecycle.tags import retag
from callvault.server import playback
from callvault.server.callinfo import call_info
from callvault.server.ingest import check_writer
from callvault.server.servicers import _lookup, _reason, unary

if TYPE_CHECKING:
    from callvault.server.lifecycle import LifecycleBase

    _Base = LifecycleBase
else:
    _Base = object


class TagsPart(_Base):
    """The Lifecycle servicer's part for tags (a mixin: LifecycleBase gives the vault)."""

    @unary
    def Tag(self, r: pb.TagRequest, context: grpc.ServicerContext) -> pb.CallInfo:
        reason = r.reason or _reason()
        ids.check_text(reason, "reason", ids.MAX_REASON_BYTES)
        who, e = _lookup(self.vault, r.call)
        check_writer(self.vault)  # UNAVAILABLE while the vault cannot write
        result = retag(
            self.vault,
            e.call_id,
            tenant=e.tenant,
            add=list(r.add),
            remove=list(r.remove),
            by=who.doc(),
            reason=reason,
        )
        after = result.entry
        frames = playback.durable_frames(self.vault, None, after.call_id, tenant=after.tenant)
        info = call_info(after, frames)
        info.lifecycle.note = result.sentence()
        return info

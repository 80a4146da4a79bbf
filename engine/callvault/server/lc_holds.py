"""Lifecycle.PlaceHold, RequestRelease, ApproveRelease and ListHolds: legal holds with
dual control (docs/policy.md "Legal holds", callvault.lifecycle.holds).

Permissions ("hold": legal, admin; "holds-list": legal, auditor, admin) are the
interceptor's. Each call of a request is looked up as the caller may see it: another
tenant's call is NOT_FOUND like one that does not exist, before anything is changed.
A request changes its calls one by one (each a LIFECYCLE record); a call that fails
stops the request with that call's status, the calls before it stay changed and the
error says which they were. The approver of a release must be another identity than
its requester (name and tenant): PERMISSION_DENIED otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
from callvault_client._pb import callvault_pb2 as pb

from callvault import ids
from callvault.access.policy import AccessDenied
from callvault.errors import CallvaultError, InputError
from callvault.lifecycle import holds
from callvault.server.servicers import _lookup, _reason, _who, check_writer, unary
from callvault.store.index import CallEntry
from callvault.vault import Vault

MAX_CALLS = 10_000  # calls in one request


def outcome_pb(o: holds.Outcome) -> pb.HoldOutcome:
    return pb.HoldOutcome(
        call=pb.CallRef(tenant=o.tenant, call_id=o.call_id),
        changed=o.changed,
        note=o.note,
        log_index=o.log_index,
        link=bytes.fromhex(o.link) if o.changed and o.link else b"",
        erased=o.erased,
        erase_log_index=o.entry.erase_log_index if o.erased else -1,
        erase_pending=o.erase_pending,
    )


class HoldsPart:
    """The legal-hold methods of the Lifecycle service (a mixin of LifecycleServicer)."""

    vault: Vault

    def _each(
        self,
        r: pb.HoldRequest,
        change: Callable[[CallEntry, dict[str, Any]], holds.Outcome],
        *,
        reason_required: bool,
    ) -> pb.HoldReply:
        holds.check_name(r.name)
        reason = r.reason or _reason()
        holds.check_reason(reason, required=reason_required)
        if not r.calls:
            raise InputError("calls: name at least one call")
        if len(r.calls) > MAX_CALLS:
            raise InputError(f"calls: at most {MAX_CALLS} in one request")
        entries: list[CallEntry] = []
        who = _who()
        for ref in r.calls:  # every call visible first: nothing changes for a bad one
            entries.append(_lookup(self.vault, ref)[1])
        check_writer(self.vault)
        reply = pb.HoldReply()
        by = who.doc()
        for e in entries:
            try:
                o = change(e, by)
            except CallvaultError as err:
                done = list(reply.call_ids)
                if done:
                    msg = f"{err} (calls changed before it: {', '.join(done)})"
                    raise type(err)(msg) from err
                raise
            reply.outcomes.append(outcome_pb(o))
            if o.changed:
                reply.call_ids.append(o.call_id)
        return reply

    @unary
    def PlaceHold(self, r: pb.HoldRequest, context: grpc.ServicerContext) -> pb.HoldReply:
        reason = r.reason or _reason()
        return self._each(
            r,
            lambda e, by: holds.place(
                self.vault, e.call_id, tenant=e.tenant, name=r.name, reason=reason, by=by
            ),
            reason_required=True,
        )

    @unary
    def RequestRelease(self, r: pb.HoldRequest, context: grpc.ServicerContext) -> pb.HoldReply:
        reason = r.reason or _reason()
        return self._each(
            r,
            lambda e, by: holds.request_release(
                self.vault, e.call_id, tenant=e.tenant, name=r.name, reason=reason, by=by
            ),
            reason_required=True,
        )

    @unary
    def ApproveRelease(self, r: pb.HoldRequest, context: grpc.ServicerContext) -> pb.HoldReply:
        reason = r.reason or _reason()

        def approve(e: CallEntry, by: dict[str, Any]) -> holds.Outcome:
            try:
                return holds.approve_release(
                    self.vault, e.call_id, tenant=e.tenant, name=r.name, by=by, reason=reason
                )
            except holds.DualControl as err:
                raise AccessDenied(str(err)) from err

        return self._each(r, approve, reason_required=False)

    @unary
    def ListHolds(self, r: pb.ListHoldsRequest, context: grpc.ServicerContext) -> pb.ListHoldsReply:
        if r.name:
            holds.check_name(r.name)
        if r.tenant:
            ids.check_call_id(r.tenant, "tenant")
        who = _who()
        tenant: str | None = r.tenant or None
        if who.tenant is not None:
            if tenant is not None and tenant != who.tenant:
                # another tenant's holds: as for a tenant with none (no existence oracle)
                return pb.ListHoldsReply(json=json.dumps(_empty(), sort_keys=True))
            tenant = who.tenant
        doc = holds.holds_of(self.vault, tenant=tenant, name=r.name or None)
        return pb.ListHoldsReply(json=json.dumps(doc, sort_keys=True))


def _empty() -> dict[str, Any]:
    return {
        "holds": [],
        "pending_erasures": [],
        "held_calls": 0,
        "holds_placed": 0,
        "pending_releases": 0,
    }

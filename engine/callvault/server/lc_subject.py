"""Lifecycle.EraseSubject: erasure by data subject (docs/policy.md "Erasure by data
subject"; the library: callvault.lifecycle.subject). Admins only (the "erase-subject"
permission); a tenant's identity acts on its own tenant; ``all_tenants`` is a
platform identity's. The value is never in the reply, the audit entry or a message."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import grpc
from callvault_client._pb import callvault_pb2 as pb

from callvault.access import context as rpcctx
from callvault.access import policy
from callvault.access.policy import AccessDenied
from callvault.lifecycle import subject
from callvault.server.ingest import check_writer
from callvault.server.servicers import _platform_only, _who, unary

if TYPE_CHECKING:
    from callvault.server.servicers import Config
    from callvault.vault import Vault


def settings_of(config: Config) -> tuple[str, ...]:
    """The subject keys of ``[subject]`` (a bad section stops the server at start)."""
    return subject.parse_settings(config.policy.get("subject"))


class SubjectPart:
    """The EraseSubject part of the Lifecycle servicer (a mixin before LifecycleBase)."""

    vault: Vault
    config: Config
    _subject_lock = threading.Lock()  # every server of the process: one erasure at a time
    subject_erased = 0  # since the server started (StatsReply 90-91)
    subject_deferred = 0

    def subject_stats(self) -> dict[str, Any]:
        return {
            "subject_erased_calls": self.subject_erased,
            "subject_deferred_calls": self.subject_deferred,
        }

    @unary
    def EraseSubject(
        self, r: pb.EraseSubjectRequest, context: grpc.ServicerContext
    ) -> pb.EraseSubjectReply:
        who = _who()
        tenant: str | None
        if r.all_tenants:
            _platform_only(who, "erase-subject over every tenant")
            if r.tenant:
                raise subject.SubjectError("give a tenant or all_tenants, not both")
            tenant = None
        else:
            tenant = policy.tenant_of(who, r.tenant)
            if tenant is None:
                raise AccessDenied(
                    f"{who.name} belongs to tenant {who.tenant}: it may not erase the "
                    f"subjects of tenant {r.tenant}"
                )
        if not r.dry_run:
            check_writer(self.vault)
        by = who.doc()
        with self._subject_lock:  # one at a time: a backfill writes lifecycle records
            rep = subject.erase_subject(
                self.vault,
                name=r.key,
                value=r.value,
                reason=r.reason,
                tenant=tenant,
                dry_run=r.dry_run,
                by=by,
            )
            if not r.dry_run:  # instance attributes from here on
                self.subject_erased += len(rep["erased"])
                self.subject_deferred += len(rep["deferred"])
        for e in rep["erased"] + rep["deferred"]:
            rpcctx.note_call(e["tenant"], e["call_id"])
        macs = ", ".join(f"{t} {m[:16]}" for t, m in sorted(rep["subject"]["hmac"].items()))
        rpcctx.note_detail(
            f"erase-subject{' (dry run)' if r.dry_run else ''} {r.key} (HMAC {macs or 'none'}): "
            f"{len(rep['erased'])} erased, {len(rep['deferred'])} deferred"
        )
        return pb.EraseSubjectReply(report_json=json.dumps(rep, sort_keys=True))

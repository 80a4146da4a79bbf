"""The recording policy's decisions on the wire (docs/access.md "Recording rules"):
``pb.CallDecision`` and ``pb.Consent`` from lifecycle.rules' ``Decision``, and a
DECISION entry (a call not recorded) as a ``pb.CallInfo`` of state "not_recorded".
No grpc here: the command line on a local vault prints from it too."""

from __future__ import annotations

from typing import Any

from callvault_client._pb import callvault_pb2 as pb

from callvault.lifecycle.rules import Decision
from callvault.store.index import DecisionEntry

CONSENT_NAMES = {
    pb.CONSENT_UNSPECIFIED: "unknown",
    pb.CONSENT_GRANTED: "granted",
    pb.CONSENT_DECLINED: "declined",
    pb.CONSENT_UNKNOWN: "unknown",
}
CONSENT_VALUES = {
    "granted": pb.CONSENT_GRANTED,
    "declined": pb.CONSENT_DECLINED,
    "unknown": pb.CONSENT_UNKNOWN,
}


def consent_name(value: int) -> str:
    """A wire Consent as the policy's word (an unknown number: "unknown")."""
    return CONSENT_NAMES.get(value, "unknown")  # type: ignore[call-overload]


def consent_value(name: str) -> Any:
    return CONSENT_VALUES.get(name, pb.CONSENT_UNKNOWN)


def decision_pb(d: Decision, *, log_index: int = -1, time_us: int = 0) -> pb.CallDecision:
    return pb.CallDecision(
        recorded=d.recorded,
        rule=d.rule,
        reason=d.reason,
        region=d.region,
        consent=consent_value(d.consent),
        time_us=time_us,
        log_index=log_index,
    )


def doc_pb(doc: dict[str, Any] | None) -> pb.CallDecision | None:
    """A recorded call's decision (its OPEN record's), or None (recorded before)."""
    return None if not doc else decision_pb(Decision.from_doc(doc))


def decision_info(d: DecisionEntry) -> pb.CallInfo:
    """A call not recorded, as Search (decisions) and GetCall answer it."""
    info = pb.CallInfo(
        tenant=d.tenant,
        call_id=d.call_id,
        state="not_recorded",
        call_state=pb.CALL_STATE_NOT_RECORDED,
        start_us=d.time_us,
        log_index=-1,
        erase_log_index=-1,
        transcode_log_index=-1,
    )
    info.decision.CopyFrom(
        decision_pb(Decision.from_doc(d.doc), log_index=d.log_index, time_us=d.time_us)
    )
    return info

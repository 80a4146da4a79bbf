"""The rules of access that depend on the request, not only on the method
(docs/access.md "Rules beside the matrix").

The interceptor's table (server/interceptors.py ``ROLE_PERMISSIONS``) says which
role may call which method at all; what it cannot see is which call a request
names and in what state, whether the caller gave a reason, or holds an approval.
The servicers ask this module, in one place:

- ``tenant_of(identity, requested)``: the tenant a request acts on; a tenant
  identity naming another tenant gets ``None`` (the servicer answers as if nothing
  were there: NOT_FOUND with the message of a call that does not exist, an empty
  search);
- ``visible(identity, entry)``: whether the identity sees that call at all (its
  tenant; an ``agent`` only its own calls: ``entry.agent == identity.name``);
- ``check(identity, method, entry, reason=..., approval=...)``: None if the
  identity may do ``method`` to that call now, else why not (PERMISSION_DENIED).
"""

from __future__ import annotations

from callvault.access.identity import Identity
from callvault.errors import CallvaultError
from callvault.store.index import CallEntry
from callvault.vault import CallNotFound

PLAY = "/callvault.v1.Archive/Play"
EXPORT = "/callvault.v1.Archive/Export"
BUNDLE = "/callvault.v1.Integrity/GetBundle"
AUDIO = (PLAY, EXPORT, BUNDLE)

# roles that play only sealed calls (live listening is the supervisor's, and admin's
# with a reason)
SEALED_ONLY = frozenset({"qa", "legal"})
# roles whose audio needs a stated reason (metadata callvault-reason, `--reason`)
NEEDS_REASON = frozenset({"admin"})
# roles whose Export and GetBundle need an approved export request (four-eyes)
NEEDS_APPROVAL = frozenset({"legal"})


class AccessDenied(CallvaultError):
    """The identity may call the method, but not on this call now: PERMISSION_DENIED."""


def not_found(call_id: str, tenant: str) -> CallNotFound:
    """Exactly the error of a call that does not exist (vault.get_call's): what another
    tenant's call, or another agent's, looks like (no existence oracle)."""
    return CallNotFound(f"no call {call_id} in tenant {tenant}")


def tenant_of(identity: Identity, requested: str) -> str | None:
    """The tenant a request acts on: as requested (empty: the identity's own, or
    "default" for a platform identity); None when a tenant identity names another."""
    if identity.tenant is None:
        return requested or "default"
    if requested and requested != identity.tenant:
        return None
    return identity.tenant


def visible(identity: Identity, entry: CallEntry) -> bool:
    """Whether the identity sees the call at all (else it is NOT_FOUND to it)."""
    if not identity.sees(entry.tenant):
        return False
    return identity.role != "agent" or entry.agent == identity.name


def check(
    identity: Identity,
    method: str,
    entry: CallEntry | None,
    *,
    reason: str = "",
    approval: str = "",
) -> str | None:
    """None if ``identity`` may do ``method`` to the call ``entry`` (None: no call named)
    now, else why not, in words that say what to do. ``approval`` is the export request
    id the request names (checked and used up by access.exports, not here)."""
    if method not in AUDIO:
        return None
    role = identity.role
    live = entry is not None and entry.state == "open"
    if method == PLAY and live and role in SEALED_ONLY:
        return (
            f"{identity.name} (role {role}) plays sealed calls only; listening to a call "
            "being recorded is for supervisors"
        )
    # open mode (no identities configured, loopback only) has no one to hold to account
    if role in NEEDS_REASON and identity.via != "open" and not reason.strip():
        verb = {PLAY: "play", EXPORT: "export", BUNDLE: "bundle"}[method]
        return (
            f"{identity.name} (role {role}) reaches audio only with a stated reason: "
            f"give --reason TEXT (`callvault {verb} CALL ... --reason TEXT`; SDK metadata "
            "callvault-reason), it goes into the audit trail"
        )
    if method != PLAY and role in NEEDS_APPROVAL and not approval:
        return (
            f"{identity.name} (role {role}) exports through four-eyes approval: "
            "`callvault export-request CALL --reason TEXT`, another legal or admin "
            "identity runs `callvault export-approve REQ`, then pass --approval REQ"
        )
    return None

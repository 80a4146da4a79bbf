"""Four-eyes export: requests, approvals, one use each (docs/access.md "Four-eyes
export"; the file: docs/format.md 10.3).

A ``legal`` identity asks to export a call, with a reason (``request``); a
different ``legal`` or ``admin`` identity of the same tenant (or a platform one)
approves it (``approve``), which starts its time limit; the requester then
exports the call once, naming the request (ExportRequest.approval /
GetBundleRequest.approval): ``use`` marks it used before the first byte is
sent. Every change is written to ``DATA/access/export-requests.json`` atomically
before it is answered, so an approval survives a restart and a used one is
never usable again.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from callvault import ids
from callvault.access.identity import Identity
from callvault.access.policy import AccessDenied
from callvault.durable import write_atomic
from callvault.errors import CallvaultError, InputError

FILE = "export-requests.json"
VERSION = 1
DEFAULT_TTL_S = 24 * 3600.0
APPROVERS = frozenset({"legal", "admin"})


class RequestNotFound(CallvaultError):
    """No such export request that this identity may see: NOT_FOUND (the same message
    for another tenant's request as for one that does not exist)."""


@dataclass
class ExportRequest:
    id: str  # "xr-" + 16 hex digits
    tenant: str
    call_id: str
    reason: str
    requested_by: str  # identity name
    requested_us: int
    approved_by: str = ""
    approved_us: int = 0
    expires_us: int = 0  # set on approval: approved_us + the time limit
    used_us: int = 0
    used_by: str = ""
    used_for: str = ""  # "export" or "bundle"

    def state(self, now_us: int) -> str:
        """pending, approved, used or expired."""
        if self.used_us:
            return "used"
        if not self.approved_us:
            return "pending"
        return "expired" if now_us >= self.expires_us else "approved"


def _now_us() -> int:
    return time.time_ns() // 1000


class ExportRequests:
    """The export requests of one vault (``DATA/access/``), thread-safe."""

    def __init__(self, directory: Path, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise InputError("export_approval_s must be positive")
        self.path = Path(directory) / FILE
        self.ttl_us = int(ttl_s * 1e6)
        self.lock = threading.Lock()
        self.items: dict[str, ExportRequest] = {}
        if self.path.exists():
            self.items = _load(self.path)

    def _save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = {"version": VERSION, "requests": [asdict(r) for r in self.items.values()]}
        write_atomic(self.path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())

    def _get(self, identity: Identity, req_id: str) -> ExportRequest:
        r = self.items.get(req_id)
        if r is None or not identity.sees(r.tenant):
            raise RequestNotFound(f"no export request {req_id}")
        return r

    def request(self, identity: Identity, tenant: str, call_id: str, reason: str) -> ExportRequest:
        if not reason.strip():
            raise InputError("an export request needs a reason (--reason TEXT)")
        ids.check_text(reason, "reason", ids.MAX_REASON_BYTES)
        r = ExportRequest(
            id=f"xr-{secrets.token_hex(8)}",
            tenant=tenant,
            call_id=call_id,
            reason=reason,
            requested_by=identity.name,
            requested_us=_now_us(),
        )
        with self.lock:
            self.items[r.id] = r
            self._save()
        return r

    def approve(self, identity: Identity, req_id: str, *, now_us: int = 0) -> ExportRequest:
        now = now_us or _now_us()
        with self.lock:
            r = self._get(identity, req_id)
            if identity.role not in APPROVERS:
                raise AccessDenied(
                    f"{identity.name} (role {identity.role}) may not approve exports"
                )
            if identity.name == r.requested_by:
                raise AccessDenied(
                    f"export request {req_id} was made by {identity.name}: another legal or "
                    "admin identity approves it (four eyes)"
                )
            state = r.state(now)
            if state != "pending":
                raise AccessDenied(f"export request {req_id} is {state}, not pending")
            r.approved_by, r.approved_us, r.expires_us = identity.name, now, now + self.ttl_us
            self._save()
            return r

    def use(
        self,
        identity: Identity,
        req_id: str,
        tenant: str,
        call_id: str,
        what: str,
        *,
        now_us: int = 0,
    ) -> ExportRequest:
        """Spend the approval ``req_id`` on one export (``what``: export, bundle) of
        ``tenant``/``call_id`` by ``identity``; AccessDenied saying why if it may not."""
        now = now_us or _now_us()
        with self.lock:
            try:
                r = self._get(identity, req_id)
            except RequestNotFound as e:
                raise AccessDenied(f"{e}: export with an approved request of yours") from None
            if (r.tenant, r.call_id) != (tenant, call_id):
                raise AccessDenied(
                    f"export request {req_id} is for call {r.call_id}, not {call_id}"
                )
            if r.requested_by != identity.name:
                raise AccessDenied(
                    f"export request {req_id} was made by {r.requested_by}: only they use it"
                )
            state = r.state(now)
            if state == "pending":
                raise AccessDenied(
                    f"export request {req_id} is not approved yet: another legal or admin "
                    f"identity runs `callvault export-approve {req_id}`"
                )
            if state == "used":
                raise AccessDenied(
                    f"export request {req_id} was used already ({r.used_for}): an approval "
                    "allows one export; request again"
                )
            if state == "expired":
                raise AccessDenied(
                    f"export request {req_id} expired (approved for {self.ttl_us // 1_000_000} s): "
                    "request again"
                )
            r.used_us, r.used_by, r.used_for = now, identity.name, what
            self._save()
            return r

    def visible_to(self, identity: Identity) -> list[ExportRequest]:
        with self.lock:
            rs = [r for r in self.items.values() if identity.sees(r.tenant)]
        return sorted(rs, key=lambda r: (r.requested_us, r.id))


def _load(path: Path) -> dict[str, ExportRequest]:
    try:
        body: Any = json.loads(path.read_text())
        if body.get("version") != VERSION:
            raise ValueError(f"version {body.get('version')!r}, this server reads {VERSION}")
        names = {f.name for f in fields(ExportRequest)}
        out = {}
        for item in body["requests"]:
            r = ExportRequest(**{k: v for k, v in item.items() if k in names})
            out[r.id] = r
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CallvaultError(f"cannot read the export requests {path}: {e}") from e

"""The caller of an RPC, as the interceptor found it (docs/access.md).

An ``Identity`` has one role and belongs to one tenant, or to none: a platform
identity (``tenant is None``) acts on every tenant. ``via`` says how it was
authenticated ("token:<token id>", "cert:<subject>", "open": a server with no
identities configured, loopback only). Authenticators turn a call's
credentials into an Identity or raise ``Unauthenticated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import grpc

ROLES = ("recorder", "agent", "qa", "supervisor", "legal", "it", "auditor", "admin")


class Unauthenticated(Exception):
    """The call's credentials are missing, malformed, expired, revoked or unknown:
    the RPC ends with UNAUTHENTICATED and this message (never the token itself)."""


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    tenant: str | None  # None = platform identity: every tenant
    via: str

    def sees(self, tenant: str) -> bool:
        """Whether this identity may see calls of ``tenant`` at all."""
        return self.tenant is None or self.tenant == tenant

    def doc(self) -> dict[str, Any]:
        """Who, as an audit entry and a LIFECYCLE record's ``by`` keep it."""
        return {"name": self.name, "role": self.role, "tenant": self.tenant, "via": self.via}


# The identity of every caller of a server with no identities configured
# (loopback only: docs/access.md "Open mode").
OPEN = Identity("local", "admin", None, "open")


class Authenticator(Protocol):
    def identify(self, context: grpc.ServicerContext) -> Identity:
        """The caller; raises Unauthenticated."""
        ...


class OpenAuthenticator:
    """Open mode: every caller is ``OPEN``."""

    def identify(self, context: grpc.ServicerContext) -> Identity:
        return OPEN

"""Who calls: a call's credentials turned into an ``Identity`` (docs/server.md
"Access", docs/format.md 10).

``CredentialAuthenticator.identify`` looks, in this order, at

1. the metadata ``authorization: Bearer <token>``: the token store decides
   (a token that is given but not good is refused; no fall-back to the
   certificate);
2. a verified TLS client certificate (``serve --tls-client-ca``): its subject
   mapped by the identities file (``serve --identities FILE``, docs/format.md
   10.2); a certificate that maps to nothing is refused, naming its subject;
3. nothing: open mode (``identity.OPEN``, every caller an admin) while no
   identity is configured at all (the token store never had a token and no
   client CA is set), and then only for callers on a loopback address;
   otherwise UNAUTHENTICATED.

The messages never quote a token.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from callvault.access.identity import OPEN, Identity, Unauthenticated
from callvault.access.tokens import TokenStore, check_name, check_role, check_tenant
from callvault.errors import InputError

log = logging.getLogger("callvault.access")

AUTH_KEY = "authorization"  # metadata: "Bearer <token>"
BEARER = "bearer "
SELECTORS = ("cn", "dns", "uri")  # what an identities entry matches on


def bearer_token(context: grpc.ServicerContext) -> str | None:
    """The call's token (metadata ``authorization: Bearer <token>``), or None.
    Unauthenticated when the header is there but is not a bearer token."""
    for key, value in context.invocation_metadata() or ():
        if key != AUTH_KEY:
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        if not text.lower().startswith(BEARER):
            raise Unauthenticated("the authorization metadata is not 'Bearer <token>'")
        return text[len(BEARER) :].strip()
    return None


def is_loopback_peer(peer: str) -> bool:
    """grpc's ``context.peer()`` of a caller on this machine: ipv4:127.x, ipv6:[::1]
    (or an IPv4-mapped 127.x), unix sockets."""
    if peer.startswith("unix:"):
        return True
    if peer.startswith("ipv4:"):
        return peer[5:].startswith("127.")
    if peer.startswith("ipv6:"):
        host = peer[5:].rpartition(":")[0].strip("[]").lower()
        return host == "::1" or host.startswith("::ffff:127.")
    return False


@dataclass(frozen=True)
class CertEntry:
    selector: str  # cn, dns or uri
    value: str
    identity: Identity


@dataclass(frozen=True)
class Subject:
    """What a verified client certificate names: its subject's CN(s), its SAN DNS
    names and URIs."""

    cns: tuple[str, ...]
    dns: tuple[str, ...]
    uris: tuple[str, ...]

    def values(self, selector: str) -> tuple[str, ...]:
        return {"cn": self.cns, "dns": self.dns, "uri": self.uris}[selector]

    def __str__(self) -> str:
        parts = [f"CN={c}" for c in self.cns]
        parts += [f"DNS:{d}" for d in self.dns] + [f"URI:{u}" for u in self.uris]
        return ", ".join(parts) or "(no CN, DNS or URI name)"


def cert_subject(auth_context: Mapping[str, Any]) -> Subject | None:
    """The subject of the call's verified client certificate, None without one."""
    pem = auth_context.get("x509_pem_cert")
    if pem:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate(pem[0])
        cns = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = tuple(san.get_values_for_type(x509.DNSName))
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            dns, uris = (), ()
        return Subject(cns, dns, uris)
    cn = auth_context.get("x509_common_name")
    if cn:
        return Subject(tuple(c.decode(errors="replace") for c in cn), (), ())
    return None


def load_identities(path: str | Path) -> list[CertEntry]:
    """``--identities FILE`` (docs/format.md 10.2): TOML, one ``[[certificate]]``
    table per identity: exactly one of ``cn``, ``dns``, ``uri`` (what to match),
    ``name``, ``role``, and ``tenant = "T"`` or ``platform = true``."""
    try:
        doc: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"--identities {path}: {e}") from None
    unknown = set(doc) - {"certificate"}
    if unknown:
        raise InputError(f"--identities {path}: unknown key(s) {', '.join(sorted(unknown))}")
    entries: list[CertEntry] = []
    items = doc.get("certificate", [])
    if not isinstance(items, list):
        raise InputError(f"--identities {path}: certificate must be [[certificate]] tables")
    for n, item in enumerate(items, 1):
        where = f"--identities {path}: certificate #{n}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: not a table")
        bad = set(item) - {*SELECTORS, "name", "role", "tenant", "platform"}
        if bad:
            raise InputError(f"{where}: unknown key(s) {', '.join(sorted(bad))}")
        sel = [s for s in SELECTORS if s in item]
        if len(sel) != 1 or not isinstance(item[sel[0]], str) or not item[sel[0]]:
            raise InputError(f"{where}: give exactly one of cn, dns, uri (a string)")
        tenant = item.get("tenant")
        platform = item.get("platform", False)
        if (tenant is None) == (platform is not True):
            raise InputError(f'{where}: give tenant = "NAME" or platform = true (not both)')
        try:
            name = check_name(str(item.get("name", "")))
            role = check_role(str(item.get("role", "")))
            check_tenant(tenant)
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        value = item[sel[0]]
        ident = Identity(name, role, tenant, f"cert:{sel[0]}:{value}")
        entries.append(CertEntry(sel[0], value, ident))
    return entries


class CredentialAuthenticator:
    """The server's (and a sidecar control API's) authenticator: tokens, client
    certificates, or open mode (see the module's docstring)."""

    def __init__(
        self,
        store: TokenStore | None,
        certs: list[CertEntry] | None = None,
        *,
        client_ca: bool = False,
        create_hint: str = "callvault --data DIR token create --name NAME --role admin --platform",
    ) -> None:
        self.store = store
        self.certs = certs or []
        self.client_ca = client_ca
        self.create_hint = create_hint
        self._was_open: bool | None = None

    def is_open(self) -> bool:
        """Open mode: no identity configured at all."""
        is_open = not self.client_ca and not self.certs and not self._tokens_configured()
        if self._was_open and not is_open:
            log.warning("open mode ends: identities are configured now (tokens)")
        self._was_open = is_open
        return is_open

    def _tokens_configured(self) -> bool:
        if self.store is None:
            return False
        try:
            return self.store.configured()
        except InputError:
            return True  # a token file we cannot read: never open

    def identify(self, context: grpc.ServicerContext) -> Identity:
        token = bearer_token(context)
        if token is not None:
            if self.store is None:
                raise Unauthenticated("this server takes no tokens")
            try:
                return self.store.verify(token)
            except InputError as e:  # the token file cannot be read: fail closed
                log.error("%s", e)
                raise Unauthenticated(
                    "the server cannot check tokens now (its token file cannot be read: "
                    "see its log)"
                ) from None
        subject = cert_subject(context.auth_context() or {})
        if subject is not None:
            for entry in self.certs:
                if entry.value in subject.values(entry.selector):
                    return entry.identity
            raise Unauthenticated(
                f"the client certificate {subject} maps to no identity (serve --identities)"
            )
        if self.is_open():
            if is_loopback_peer(context.peer() or ""):
                return OPEN
            raise Unauthenticated(
                "this server has no identities configured (open mode) and answers only "
                f"callers on loopback; create a token: {self.create_hint}"
            )
        raise Unauthenticated(
            "no credentials: send a token (metadata authorization: Bearer <token>; "
            "callvault --token or CALLVAULT_TOKEN) or a client certificate"
        )

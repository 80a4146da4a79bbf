"""API tokens: a store of them in a directory (docs/format.md 10.1).

A server keeps its tokens in DATA/access/, a sidecar those of its control API in
SPOOL/access/. A token's text is ``cvt_<id>_<secret>``: ``id`` 16 hex digits
(names the token in ``token ls``, ``token revoke`` and the audit trail; not a
secret), ``secret`` 32 random bytes in URL-safe base64 without padding. The store
keeps only the SHA-256 of ``id:secret`` (the secret is random, so a plain hash
is enough) and compares it in constant time; the token text is printed once,
when it is made, and never stored or logged.

The file ``tokens.json`` is replaced whole (``durable.write_atomic``, mode 0600,
directory 0700); changes hold an exclusive ``flock`` on ``tokens.lock``, so a
local `callvault token create` and a running server (Admin.CreateToken) can
both change it. A reader (``verify``) stats the file on every call and reads it
again when it changed, so a token made or revoked takes effect at once.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callvault.access.identity import ROLES, Identity, Unauthenticated
from callvault.durable import write_atomic
from callvault.errors import InputError

PREFIX = "cvt_"
FILE = "tokens.json"
LOCK = "tokens.lock"
VERSION = 1
SECRET_BYTES = 32
_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
NAME_RULE = "1 to 64 letters, digits and . _ @ : -"
_NAME = re.compile(r"[A-Za-z0-9._@:-]{1,64}")
_TENANT = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SPAN = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="seconds")


def parse_span(text: str) -> int:
    """``--expires``: N followed by s, m, h, d or w (``90d``), as seconds."""
    m = _SPAN.fullmatch(text.strip())
    if m is None or int(m[1]) <= 0:
        raise InputError(f"expiry {text!r}: give N followed by s, m, h, d or w (e.g. 90d)")
    return int(m[1]) * _UNIT_S[m[2]]


@dataclass(frozen=True)
class TokenInfo:
    """One token as the store keeps it (everything but the secret)."""

    id: str
    name: str
    role: str
    tenant: str | None  # None: a platform identity (every tenant)
    created_us: int
    expires_us: int | None  # None: never
    revoked_us: int | None  # None: not revoked
    hash: str  # hex SHA-256 of "id:secret"

    def state(self, now_us: int) -> str:
        if self.revoked_us is not None:
            return "revoked"
        if self.expires_us is not None and now_us >= self.expires_us:
            return "expired"
        return "active"

    def public(self, now_us: int) -> dict[str, Any]:
        """What `token ls --json` shows: everything but the hash."""
        d = asdict(self)
        del d["hash"]
        d["state"] = self.state(now_us)
        return d


def _digest(token_id: str, secret: str) -> str:
    return hashlib.sha256(f"{token_id}:{secret}".encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InputError(f"token name {name[:80]!r}: use {NAME_RULE}")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"role {role[:40]!r}: one of {', '.join(ROLES)}")
    return role


def check_tenant(tenant: str | None) -> str | None:
    if tenant is not None and (not _TENANT.fullmatch(tenant) or tenant in (".", "..")):
        raise InputError(
            f"tenant {tenant[:80]!r}: use 1 to 128 letters, digits and . _ : -, not . or .."
        )
    return tenant


class TokenStore:
    """The tokens in ``directory`` (created 0700 on the first change)."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILE
        self.clock = clock
        self._lock = threading.Lock()
        self._sig: tuple[int, int, int] | None = None
        self._tokens: dict[str, TokenInfo] = {}
        self._ever = False  # configured() was once true (it stays so)

    def now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    # -- reading ------------------------------------------------------------------
    def _read(self) -> dict[str, TokenInfo]:
        """The file's tokens by id (empty when there is no file)."""
        try:
            raw = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as e:  # permissions, I/O: never taken for "no tokens"
            raise InputError(f"the token file {self.path} cannot be read: {e.strerror}") from None
        try:
            doc = json.loads(raw)
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {VERSION}")
            out = {}
            for t in doc["tokens"]:
                info = TokenInfo(**t)
                out[info.id] = info
            return out
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{self.path} is not a callvault token file: {e}") from None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):  # no file, or no directory
            return None
        except OSError as e:
            raise InputError(f"the token file {self.path} cannot be read: {e.strerror}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def tokens(self) -> dict[str, TokenInfo]:
        """The tokens by id, read again when the file changed (one stat per call)."""
        with self._lock:
            sig = self._signature()
            if sig != self._sig or sig is None:
                self._tokens = self._read() if sig is not None else {}
                self._sig = sig
            return self._tokens

    def configured(self) -> bool:
        """Whether the store has ever had a token (revoked and expired ones count:
        revoking the last token never opens a server)."""
        if not self._ever:
            # sticky in this process: a token file that vanishes (deleted, its
            # directory replaced) never opens a running server or sidecar
            self._ever = bool(self.tokens())
        return self._ever

    def list(self) -> builtins.list[TokenInfo]:
        return sorted(self.tokens().values(), key=lambda t: (t.created_us, t.id))

    def verify(self, token: str) -> Identity:
        """The identity of a token; Unauthenticated (never quoting the token) when it
        is malformed, unknown, expired or revoked."""
        if not token.startswith(PREFIX):
            raise Unauthenticated(
                "malformed token: a callvault token starts with cvt_ (cvt_<id>_<secret>)"
            )
        token_id, sep, secret = token[len(PREFIX) :].partition("_")
        if not sep or not _ID.fullmatch(token_id) or not _SECRET.fullmatch(secret):
            raise Unauthenticated(
                "malformed token: expected cvt_<16 hex digits>_<43 characters of URL-safe base64>"
            )
        try:
            info = self.tokens().get(token_id)
        except InputError as e:
            raise Unauthenticated(f"tokens cannot be checked: {e}") from None
        # the digest is compared whatever the id found, in constant time
        expected = info.hash if info is not None else "0" * 64
        if not hmac.compare_digest(_digest(token_id, secret), expected) or info is None:
            raise Unauthenticated(f"unknown token (id {token_id})")
        now = self.now_us()
        if info.revoked_us is not None:
            raise Unauthenticated(
                f"token {token_id} ({info.name}) was revoked at {iso(info.revoked_us)}"
            )
        if info.expires_us is not None and now >= info.expires_us:
            raise Unauthenticated(
                f"token {token_id} ({info.name}) expired at {iso(info.expires_us)}"
            )
        return Identity(info.name, info.role, info.tenant, f"token:{token_id}")

    # -- changing -----------------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, TokenInfo]]:
        """The tokens to change, under the file lock; written back when the block ends."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tokens = dict(self._read())
            yield tokens
            doc = {
                "version": VERSION,
                "tokens": [asdict(t) for t in sorted(tokens.values(), key=lambda t: t.created_us)],
            }
            write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
        finally:
            os.close(fd)  # releases the flock

    def create(
        self, name: str, role: str, tenant: str | None, expires_s: int | None = None
    ) -> tuple[str, TokenInfo]:
        """A new token: (its text, shown once; what the store keeps). A name is
        unique in its tenant (platform tokens: among themselves) among the tokens
        neither revoked nor expired; another tenant's names are not revealed."""
        check_name(name)
        check_role(role)
        check_tenant(tenant)
        if expires_s is not None and expires_s <= 0:
            raise InputError("a token's expiry is a positive number of seconds")
        with self._changing() as tokens:
            now = self.now_us()
            for t in tokens.values():
                if t.name == name and t.tenant == tenant and t.state(now) == "active":
                    raise InputError(
                        f"a token named {name} exists (id {t.id}); revoke it first or "
                        "choose another name"
                    )
            token_id = secrets.token_hex(8)
            while token_id in tokens:
                token_id = secrets.token_hex(8)
            secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES))
            text = secret.decode().rstrip("=")
            info = TokenInfo(
                id=token_id,
                name=name,
                role=role,
                tenant=tenant,
                created_us=now,
                expires_us=None if expires_s is None else now + expires_s * 1_000_000,
                revoked_us=None,
                hash=_digest(token_id, text),
            )
            tokens[token_id] = info
        return f"{PREFIX}{token_id}_{text}", info

    def revoke(
        self, id_or_name: str, *, only_tenant: str | None = None
    ) -> builtins.list[TokenInfo]:
        """Revoke the token with this id, else every unrevoked token with this name;
        the revoked tokens. ``only_tenant``: only that tenant's tokens (a tenant
        admin's view). InputError when there is none."""
        with self._changing() as tokens:
            now = self.now_us()
            visible = [t for t in tokens.values() if only_tenant is None or t.tenant == only_tenant]
            hit = [t for t in visible if t.id == id_or_name]
            if not hit:
                hit = [t for t in visible if t.name == id_or_name and t.revoked_us is None]
            if not hit:
                raise InputError(f"no token {id_or_name[:80]!r} to revoke (token ls lists them)")
            done = []
            for t in hit:
                if t.revoked_us is None:
                    t = TokenInfo(**{**asdict(t), "revoked_us": now})
                    tokens[t.id] = t
                done.append(t)
        return done

"""The token store (callvault.access.tokens): what it keeps, what it refuses and why,
with an injected clock for expiry; two stores on one directory act as a local CLI
and a running server."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from callvault.access.identity import Identity, Unauthenticated
from callvault.access.tokens import TokenStore, parse_span
from callvault.errors import InputError


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_create_then_verify_gives_the_identity(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "access")
    text, info = store.create("ann", "qa", "t1", None)
    assert text.startswith(f"cvt_{info.id}_") and len(text.split("_", 2)[2]) == 43
    assert store.verify(text) == Identity("ann", "qa", "t1", f"token:{info.id}")
    plat, pinfo = store.create("root", "admin", None)
    assert store.verify(plat).tenant is None


def test_the_file_keeps_a_hash_never_the_token_and_is_private(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "access")
    text, info = store.create("ann", "qa", "t1")
    secret = text.split("_", 2)[2]
    raw = (tmp_path / "access" / "tokens.json").read_text()
    assert secret not in raw and text not in raw
    assert json.loads(raw)["tokens"][0]["hash"] == info.hash
    assert stat.S_IMODE((tmp_path / "access").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "access" / "tokens.json").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ann",
        "Bearer cvt_x",
        "cvt_0123456789abcdef",
        "cvt_0123456789ABCDEF_" + "A" * 43,
        "cvt_0123456789abcdef_" + "A" * 42,
        "cvt_0123456789abcdef_" + "A" * 42 + "!",
    ],
)
def test_malformed_tokens_are_refused_without_quoting_them(tmp_path: Path, bad: str) -> None:
    store = TokenStore(tmp_path / "access")
    store.create("ann", "qa", "t1")
    with pytest.raises(Unauthenticated, match="malformed token") as e:
        store.verify(bad)
    assert not bad or bad not in str(e.value)


def test_unknown_id_and_wrong_secret_are_unknown(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "access")
    text, info = store.create("ann", "qa", "t1")
    with pytest.raises(Unauthenticated, match="unknown token \\(id 0123456789abcdef\\)"):
        store.verify("cvt_0123456789abcdef_" + "A" * 43)
    forged = f"cvt_{info.id}_" + ("B" * 43 if not text.endswith("B" * 43) else "C" * 43)
    with pytest.raises(Unauthenticated, match=f"unknown token \\(id {info.id}\\)") as e:
        store.verify(forged)
    assert forged.split("_", 2)[2] not in str(e.value)


def test_expired_says_when(tmp_path: Path) -> None:
    clock = Clock()
    store = TokenStore(tmp_path / "access", clock=clock)
    text, info = store.create("ann", "qa", "t1", parse_span("90d"))
    clock.t += 90 * 86400 - 1
    assert store.verify(text).name == "ann"
    clock.t += 1
    with pytest.raises(Unauthenticated, match=r"\(ann\) expired at 2027-"):
        store.verify(text)
    assert [t.state(store.now_us()) for t in store.list()] == ["expired"]
    # an expired token's name may be given again
    store.create("ann", "qa", "t1")


def test_revoked_by_another_store_takes_effect_at_once(tmp_path: Path) -> None:
    """A server's store sees a local CLI's change on its next verify (stat)."""
    server = TokenStore(tmp_path / "access")
    cli = TokenStore(tmp_path / "access")
    text, info = cli.create("ann", "qa", "t1")
    assert server.verify(text).name == "ann"
    assert [t.id for t in cli.revoke("ann")] == [info.id]
    with pytest.raises(Unauthenticated, match=f"token {info.id} \\(ann\\) was revoked at"):
        server.verify(text)
    # revoking by id again is no error; by name there is nothing left to revoke
    assert cli.revoke(info.id)[0].revoked_us is not None
    with pytest.raises(InputError, match="no token 'ann' to revoke"):
        cli.revoke("ann")


def test_names_roles_tenants_are_checked(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "access")
    store.create("ann", "qa", "t1")
    with pytest.raises(InputError, match="a token named ann exists"):
        store.create("ann", "qa", "t1")
    with pytest.raises(InputError, match="role 'boss': one of recorder"):
        store.create("bob", "boss", "t1")
    with pytest.raises(InputError, match="token name"):
        store.create("bob smith", "qa", "t1")
    with pytest.raises(InputError, match="tenant '..'"):
        store.create("bob", "qa", "..")
    with pytest.raises(InputError, match="expiry"):
        parse_span("soon")
    assert len(store.list()) == 1


def test_revoke_scoped_to_a_tenant(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "access")
    _, a = store.create("ann", "qa", "t1")
    store.create("bob", "qa", "t2")
    with pytest.raises(InputError):
        store.revoke("bob", only_tenant="t1")
    assert [t.id for t in store.revoke("ann", only_tenant="t1")] == [a.id]


def test_configured_stays_true_after_the_last_revoke(tmp_path: Path) -> None:
    """Revoking every token never turns a server back to open mode."""
    store = TokenStore(tmp_path / "access")
    assert not store.configured()
    store.create("ann", "admin", None)
    store.revoke("ann")
    assert store.configured()


def test_a_damaged_file_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "access")
    text, _ = store.create("ann", "qa", "t1")
    (tmp_path / "access" / "tokens.json").write_text("{not json")
    with pytest.raises(Unauthenticated, match="tokens cannot be checked"):
        store.verify(text)
    with pytest.raises(InputError):
        store.configured()


def test_a_vanished_token_file_never_opens_the_store_again(tmp_path: Path) -> None:
    """Once the store held a token, this process stays configured (no open mode) even if
    the file is deleted or its directory replaced by a file; until then a missing
    directory is simply no tokens, never an exception."""
    d = tmp_path / "access"
    store = TokenStore(d)
    assert not store.configured()
    token, _ = store.create("ann", "qa", "t1")
    assert store.configured()
    (d / "tokens.json").unlink()
    assert store.configured()
    with pytest.raises(Unauthenticated):
        store.verify(token)  # the file is gone: the token is unknown now
    shutil.rmtree(d)  # the lock file too
    d.write_bytes(b"")  # a file where the directory was
    fresh = TokenStore(d)
    assert not fresh.configured() and fresh.list() == []
    assert store.configured()

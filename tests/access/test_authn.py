"""The pieces of the authenticator that need no server: loopback peers, the
authorization header, the identities file."""

from __future__ import annotations

from pathlib import Path

import pytest

from callvault.access.authn import is_loopback_peer, load_identities
from callvault.access.identity import Identity
from callvault.errors import InputError


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("ipv4:127.0.0.1:5555", True),
        ("ipv4:127.8.9.10:1", True),
        ("ipv6:[::1]:5555", True),
        ("ipv6:[::ffff:127.0.0.1]:80", True),
        ("unix:/tmp/x.sock", True),
        ("ipv4:192.0.2.2:5555", False),
        ("ipv4:10.127.0.1:5555", False),
        ("ipv6:[2001:db8::1]:5555", False),
        ("ipv6:[::ffff:192.0.2.2]:80", False),
        ("", False),
    ],
)
def test_loopback_peers(peer: str, loopback: bool) -> None:
    assert is_loopback_peer(peer) is loopback


def test_identities_file(tmp_path: Path) -> None:
    f = tmp_path / "ids.toml"
    f.write_text(
        '[[certificate]]\ndns = "pbx1.acme"\nname = "pbx1"\nrole = "recorder"\ntenant = "t1"\n'
        '[[certificate]]\ncn = "root"\nname = "root"\nrole = "admin"\nplatform = true\n'
    )
    a, b = load_identities(f)
    assert (a.selector, a.value, a.identity) == (
        "dns",
        "pbx1.acme",
        Identity("pbx1", "recorder", "t1", "cert:dns:pbx1.acme"),
    )
    assert b.identity.tenant is None and b.selector == "cn"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('[[certificate]]\nname = "a"\nrole = "qa"\ntenant = "t"\n', "exactly one of cn"),
        ('[[certificate]]\ncn = "x"\nname = "a"\nrole = "qa"\n', 'tenant = "NAME" or platform'),
        (
            '[[certificate]]\ncn = "x"\nname = "a"\nrole = "qa"\ntenant = "t"\nplatform = true\n',
            "not both",
        ),
        ('[[certificate]]\ncn = "x"\nname = "a"\nrole = "boss"\ntenant = "t"\n', "role 'boss'"),
        ('[[certificate]]\ncn = "x"\nname = "a"\nrole = "qa"\ntenant = "t"\nx = 1\n', "key(s) x"),
        ("[access]\n", "unknown key(s) access"),
        ("cn = ", "--identities"),
    ],
)
def test_identities_file_errors(tmp_path: Path, body: str, why: str) -> None:
    f = tmp_path / "ids.toml"
    f.write_text(body)
    with pytest.raises(InputError) as e:
        load_identities(f)
    assert why in str(e.value) and str(f) in str(e.value)

"""Client certificates carry the role matrix as tokens do: a real mTLS server
(`callvault serve --tls-client-ca --identities`), one certificate per role mapped
to that role in tenant t1, and every method called with each: the interceptor's
refusal (PERMISSION_DENIED "... may not ...") exactly where authorize() refuses
the role, never UNAUTHENTICATED. (The request-dependent rules are the roles lane's
tests/server/test_access_matrix.py, driven with real tokens.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from callvault.access.identity import ROLES, Identity
from callvault.server.interceptors import PERMISSIONS, authorize
from tests.access.certs import Issued, issue, make_ca
from tests.server.access_fixtures import invoke, request_of
from tests.servers import Proc, spawn


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Issued, Path]]:
    tmp = tmp_path_factory.mktemp("cert-matrix")
    ca = make_ca(tmp)
    srv = issue(tmp, ca, "server", "callvault", server=True)
    ids = tmp / "identities.toml"
    ids.write_text(
        "".join(
            f'[[certificate]]\ndns = "{r}.acme"\nname = "{r}-cert"\nrole = "{r}"\ntenant = "t1"\n'
            for r in ROLES
        )
    )
    argv = [
        "serve",
        "--data",
        str(tmp / "data"),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(srv.cert),
        "--tls-key",
        str(srv.key),
        "--tls-client-ca",
        str(ca.cert),
        "--identities",
        str(ids),
    ]
    proc = spawn("mtls", argv, tmp)
    yield proc, ca, tmp
    proc.stop()


def channel_of(proc: Proc, ca: Issued, tmp: Path, role: str) -> grpc.Channel:
    cert = issue(tmp, ca, f"client-{role}", f"someone {role}", dns=(f"{role}.acme",))
    creds = grpc.ssl_channel_credentials(
        ca.cert.read_bytes(), cert.key.read_bytes(), cert.cert.read_bytes()
    )
    ch = grpc.secure_channel(proc.address, creds)
    grpc.channel_ready_future(ch).result(timeout=30)
    return ch


@pytest.mark.parametrize("role", ROLES)
def test_every_method_as_a_certificate_of_each_role(
    mtls: tuple[Proc, Issued, Path], role: str
) -> None:
    proc, ca, tmp = mtls
    ident = Identity(f"{role}-cert", role, "t1", "cert")
    with channel_of(proc, ca, tmp, role) as ch:
        for method in sorted(PERMISSIONS):
            req = request_of(method)
            streaming_in = method.endswith(("/Record", "/RecordCalls"))
            o = invoke(ch, method, [req] if streaming_in else req, [])
            refused = authorize(ident, method)
            assert o.code != grpc.StatusCode.UNAUTHENTICATED, (method, o.details)
            if refused is not None:
                assert o.code == grpc.StatusCode.PERMISSION_DENIED, (method, o)
                assert o.details == refused
            else:  # past the interceptor (the servicer may still refuse the request)
                assert not o.details.startswith(f"{ident.name} (role {role}) may not"), (
                    method,
                    o.details,
                )

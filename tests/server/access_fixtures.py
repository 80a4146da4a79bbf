"""Identities for the access tests: ONE place that turns (name, role, tenant) into
the credentials a call carries, and the server that accepts them.

Real tokens: ``identities`` mints a token per identity (once, cached) in one token
store shared by every server ``serve`` starts, whose authenticator is the server's
own (callvault.access.authn.CredentialAuthenticator), and the calls send it as the
SDK and the CLI do (metadata ``authorization: Bearer <token>``). The store is
configured from the start (a bootstrap token, revoked), so no server here is ever
in open mode.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb
from google.protobuf import message_factory

from callvault.access.authn import CredentialAuthenticator
from callvault.access.tokens import TokenStore
from callvault.server.app import Server
from callvault.server.servicers import Config
from callvault.vault import Vault

Metadata = list[tuple[str, str]]
MakeIdentity = Callable[[str, str, "str | None"], Metadata]

STORE = TokenStore(Path(tempfile.mkdtemp(prefix="callvault-access-tests-")) / "access")
STORE.create("bootstrap", "admin", None)
STORE.revoke("bootstrap")  # configured for good: never open mode
_minted: dict[tuple[str, str, str | None], str] = {}


def token_for(name: str, role: str, tenant: str | None) -> str:
    """The token of this identity in STORE (made once). A name is unique among active
    tokens: another identity of the same name is revoked first."""
    key = (name, role, tenant)
    if key not in _minted:
        for other in [k for k in _minted if k[0] == name]:
            STORE.revoke(_minted.pop(other).split("_")[1])
        _minted[key], _ = STORE.create(name, role, tenant)
    return _minted[key]


@dataclass
class AccessServer:
    address: str
    data: Path
    server: Server


@pytest.fixture(scope="module")
def identities() -> MakeIdentity:
    """(name, role, tenant | None) -> the metadata a call of that identity carries."""

    return metadata_of


def metadata_of(name: str, role: str, tenant: str | None) -> Metadata:
    """The metadata a call of this identity carries (what ``identities`` gives)."""
    return [("authorization", f"Bearer {token_for(name, role, tenant)}")]


def serve(data: Path, config: Config | None = None) -> Iterator[AccessServer]:
    """A real server on loopback over the vault at ``data``, requiring identities."""
    vault = Vault.open(data)
    server = Server(vault, "127.0.0.1:0", config, auth=CredentialAuthenticator(STORE))
    server.start()
    try:
        yield AccessServer(f"127.0.0.1:{server.port}", data, server)
    finally:
        server.stop()  # closes the vault


# -- a vault with calls of two tenants, and a way to call any method ----------------

AGENT = "agent-1"  # the agent identity's name: the agent of its own calls
CALLS = {
    # (tenant, call_id): agent
    ("t1", "own"): AGENT,
    ("t1", "other"): "someone-else",
    ("t1", "victim"): AGENT,  # erased by the matrix's Erase cell
    ("t2", "foreign"): AGENT,
}
OPEN_CALL = ("t1", "live")  # open (being recorded, as far as the index says)


def populate(data: Path, capture: Path) -> None:
    """CALLS, sealed, from ``capture``; OPEN_CALL open with no audio yet."""
    with Vault.open(data) as v:
        for (tenant, call_id), agent in CALLS.items():
            v.import_call(call_id, [str(capture)], tenant=tenant, agent=agent)
        v.open_call(OPEN_CALL[1], tenant=OPEN_CALL[0], agent=AGENT)


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    replies: list[Any]


def invoke(channel: grpc.Channel, method: str, request: Any, metadata: Metadata) -> Outcome:
    """Call ``method`` ("/callvault.v1.Service/Method") with ``request`` (a message, or
    a list of messages for a client stream) whatever its kind; the status and replies."""
    service, name = method.rsplit("/", 2)[1:]
    md = pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[name]
    out_cls = message_factory.GetMessageClass(md.output_type)
    ser = lambda m: m.SerializeToString()  # noqa: E731
    replies: list[Any] = []
    try:
        if md.client_streaming:
            reqs = iter(request)
            if md.server_streaming:
                replies = list(
                    channel.stream_stream(method, ser, out_cls.FromString)(
                        reqs, metadata=tuple(metadata), timeout=30
                    )
                )
            else:
                replies = [
                    channel.stream_unary(method, ser, out_cls.FromString)(
                        reqs, metadata=tuple(metadata), timeout=30
                    )
                ]
        elif md.server_streaming:
            replies = list(
                channel.unary_stream(method, ser, out_cls.FromString)(
                    request, metadata=tuple(metadata), timeout=30
                )
            )
        else:
            replies = [
                channel.unary_unary(method, ser, out_cls.FromString)(
                    request, metadata=tuple(metadata), timeout=30
                )
            ]
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "", replies)
    return Outcome(grpc.StatusCode.OK, "", replies)


def request_of(method: str) -> Any:
    """An empty request message of ``method``'s input type."""
    service, name = method.rsplit("/", 2)[1:]
    md = pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[name]
    return message_factory.GetMessageClass(md.input_type)()

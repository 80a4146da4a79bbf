"""Identities for the access tests: ONE place that turns (name, role, tenant) into
the credentials a call carries, and the server that accepts them.

STAND-IN: until the identity lane's tokens merge, ``StandInAuthenticator`` reads
the identity from the metadata ``x-callvault-test-identity`` ("name|role|tenant",
tenant empty = platform). After the merge, the coordinator swaps ``identities``
(mint a real token per identity and send it as the SDK/CLI does) and
``access_server`` (the server built with the real authenticator); the tests use
nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb
from google.protobuf import message_factory

from callvault.access.identity import ROLES, Identity, Unauthenticated
from callvault.server.app import Server
from callvault.server.servicers import Config
from callvault.vault import Vault

KEY = "x-callvault-test-identity"
Metadata = list[tuple[str, str]]
MakeIdentity = Callable[[str, str, "str | None"], Metadata]


class StandInAuthenticator:
    """The caller named in metadata KEY; UNAUTHENTICATED without it."""

    def identify(self, context: grpc.ServicerContext) -> Identity:
        for key, value in context.invocation_metadata() or ():
            if key == KEY and isinstance(value, str):
                name, role, tenant = value.split("|")
                if role not in ROLES:
                    raise Unauthenticated(f"unknown role {role}")
                return Identity(name, role, tenant or None, f"test:{name}")
        raise Unauthenticated("no credentials: give a token")


@dataclass
class AccessServer:
    address: str
    data: Path
    server: Server


@pytest.fixture(scope="module")
def identities() -> MakeIdentity:
    """(name, role, tenant | None) -> the metadata a call of that identity carries."""

    def make(name: str, role: str, tenant: str | None) -> Metadata:
        return [(KEY, f"{name}|{role}|{tenant or ''}")]

    return make


def serve(data: Path, config: Config | None = None) -> Iterator[AccessServer]:
    """A real server on loopback over the vault at ``data``, requiring identities."""
    vault = Vault.open(data)
    server = Server(vault, "127.0.0.1:0", config, auth=StandInAuthenticator())
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


def served(method: str) -> bool:
    """Whether this build's proto has ``method``."""
    service, name = method.rsplit("/", 2)[1:]
    svc = pb.DESCRIPTOR.services_by_name.get(service.rsplit(".", 1)[1])
    return svc is not None and name in svc.methods_by_name

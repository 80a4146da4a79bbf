"""Admin.CreateToken, ListTokens and RevokeToken: the server's token store
(callvault.access.tokens) over gRPC. A mixin of the Admin servicer (server/app.py
composes it), so the Admin service stays one registration.

The interceptor has checked the permission ("tokens"); here the caller's tenant
scopes what it sees: an identity of one tenant makes, lists and revokes only its
own tenant's tokens, and never a platform token.
"""

from __future__ import annotations

import grpc
from callvault_client._pb import callvault_pb2 as pb

from callvault.access.context import current_identity, note_detail
from callvault.access.identity import Identity
from callvault.access.tokens import TokenInfo, TokenStore
from callvault.errors import InputError

DEFAULT_TENANT = "default"  # the proto's "" tenant


def token_message(t: TokenInfo, now_us: int) -> pb.TokenInfo:
    return pb.TokenInfo(
        id=t.id,
        name=t.name,
        role=t.role,
        tenant=t.tenant or "",
        platform=t.tenant is None,
        created_us=t.created_us,
        expires_us=t.expires_us or 0,
        revoked_us=t.revoked_us or 0,
        state=t.state(now_us),
    )


def _caller() -> Identity:
    try:
        return current_identity()
    except RuntimeError:  # no interceptor (a unit test's direct call): the platform
        from callvault.access.identity import OPEN

        return OPEN


class TokenAdmin:
    """The token RPCs; ``token_store`` is set by the server."""

    token_store: TokenStore | None = None

    def _store(self, context: grpc.ServicerContext) -> TokenStore:
        if self.token_store is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this server keeps no tokens")
            raise AssertionError  # abort raises
        return self.token_store

    def CreateToken(  # noqa: N802 (gRPC's name)
        self, r: pb.CreateTokenRequest, context: grpc.ServicerContext
    ) -> pb.CreateTokenReply:
        store = self._store(context)
        who = _caller()
        if r.platform and r.tenant:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "a platform token has no tenant: give one"
            )
        tenant = None if r.platform else (r.tenant or DEFAULT_TENANT)
        if who.tenant is not None and tenant != who.tenant:
            what = "platform tokens" if tenant is None else f"tokens of tenant {tenant}"
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who.name} (tenant {who.tenant}) may not make {what}",
            )
        try:
            text, info = store.create(r.name, r.role, tenant, r.expires_s or None)
        except InputError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # abort raises
        note_detail(f"token {info.id} ({info.name}, role {info.role}) created")
        return pb.CreateTokenReply(token=text, info=token_message(info, store.now_us()))

    def ListTokens(  # noqa: N802
        self, r: pb.ListTokensRequest, context: grpc.ServicerContext
    ) -> pb.ListTokensReply:
        store = self._store(context)
        who = _caller()
        now = store.now_us()
        return pb.ListTokensReply(
            tokens=[
                token_message(t, now)
                for t in store.list()
                if who.tenant is None or t.tenant == who.tenant
            ]
        )

    def RevokeToken(  # noqa: N802
        self, r: pb.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> pb.RevokeTokenReply:
        store = self._store(context)
        who = _caller()
        if not r.token:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "token: give a token's id or name")
        try:
            done = store.revoke(r.token, only_tenant=who.tenant)
        except InputError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            raise
        note_detail("revoked token(s) " + ", ".join(t.id for t in done))
        now = store.now_us()
        return pb.RevokeTokenReply(revoked=[token_message(t, now) for t in done])

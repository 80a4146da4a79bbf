"""The channel, deadlines and retries shared by every client class.

Retry policy (docs in clients/README.md):

* Only idempotent RPCs are retried: the read-only ones (Search, GetCall, Play,
  Export, GetCheckpoint, the proofs, GetBundle, Verify, Stats, ListCalls).
  Erase, Reindex, RotateKey, StartCall and StopCall are never retried.
* Only UNAVAILABLE is retried (the server is unreachable, restarting or
  shutting down). DEADLINE_EXCEEDED is not: ``timeout`` is the budget of the
  whole call, all attempts and the pauses between them included, so when the
  deadline passes there is no time left for another attempt.
* Pauses grow exponentially (``backoff_initial`` doubled per attempt up to
  ``backoff_max``) with jitter (a random half of each pause), so clients that
  lost the same server do not come back in lockstep.
* A server stream is retried only before its first message arrived; after
  that a failure is raised (the caller has consumed part of the stream).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from callvault_client import errors

MiB = 1 << 20
# The service's messages stay well below this (file chunks are at most 1 MiB);
# a limit, not a buffer size.
MAX_MESSAGE_BYTES = 16 * MiB

# Keepalive pings every 5 minutes: grpc servers by default refuse pings more
# frequent than that on a connection without data (GOAWAY "too_many_pings"),
# while 5 minutes still finds a silently dead connection (NAT, firewall) on a
# long idle stream such as a live Play.
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Reconnect soon after a server restart (grpc's default starts at 1 s and
    # grows to 120 s; a recorder wants its stream back within seconds).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})

TOKEN_ENV = "CALLVAULT_TOKEN"  # the token when none is given (token=None)
AUTH_KEY = "authorization"  # metadata: "Bearer <token>"

Pem = bytes | str | os.PathLike[str]
Metadata = Sequence[tuple[str, str | bytes]]
_M = TypeVar("_M", bound=Message)


class _Default:
    """Marks "use the client's default timeout" (``None`` means no deadline)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()
Timeout = float | None | _Default


def read_pem(value: Pem | None) -> bytes | None:
    """PEM bytes as given, PEM text, or the contents of a file path."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    return Path(value).read_bytes()


def valid_token_text(token: str) -> bool:
    """Whether ``token`` can travel as metadata: one word of printable ASCII."""
    return bool(token) and token.isascii() and token.isprintable() and " " not in token


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata that carries a token: ``authorization: Bearer <token>``, sent with
    every call. ``token=None`` takes $CALLVAULT_TOKEN (if set); ``""`` sends none.

    Plain metadata rather than grpc call credentials: grpc refuses call credentials
    on an insecure channel, and a server on loopback without TLS takes tokens too.
    Without TLS the token crosses the network in clear: use TLS off loopback."""
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    token = token.strip()
    if not token:
        return ()
    if not valid_token_text(token):
        raise ValueError("a token is one word of printable ASCII characters (cvt_...)")
    return ((AUTH_KEY, f"Bearer {token}"),)


def make_channel(
    address: str,
    *,
    tls_ca: Pem | None = None,
    tls_cert: Pem | None = None,
    tls_key: Pem | None = None,
    tls_server_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """An insecure channel, or a TLS one when any TLS option is given."""
    merged = dict(DEFAULT_OPTIONS)
    merged.update(dict(options))
    if tls_server_name:
        merged["grpc.ssl_target_name_override"] = tls_server_name
    opts = list(merged.items())
    if tls_ca is None and tls_cert is None and tls_key is None:
        return grpc.insecure_channel(address, options=opts)
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together (a client certificate and its key)")
    creds = grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls_ca),
        private_key=read_pem(tls_key),
        certificate_chain=read_pem(tls_cert),
    )
    return grpc.secure_channel(address, creds, options=opts)


class Backoff:
    """Exponential backoff with jitter: attempt n waits in [d/2, d), d = initial * 2**n."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff: need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum

    def delay(self, attempt: int) -> float:
        d = min(self.maximum, self.initial * 2.0 ** min(attempt, 30))
        return d / 2 + random.uniform(0, d / 2)


class Deadline:
    """One call's deadline, all attempts and pauses included: ``budget`` seconds from
    now (None: no deadline)."""

    def __init__(self, budget: float | None) -> None:
        self.budget = budget
        self.at = None if budget is None else time.monotonic() + budget

    def left(self, attempt: int, method: str) -> float | None:
        """Seconds left for the next attempt (None: no deadline); DeadlineExceeded
        once none are, after ``attempt`` attempts."""
        if self.at is None:
            return None
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise errors.DeadlineExceeded(
                f"deadline of {self.budget} s passed after {attempt} attempt(s)", method=method
            )
        return remaining


class Rpc:
    """A channel plus the house rules: metadata, deadlines, retries, typed errors."""

    def __init__(
        self,
        address: str,
        *,
        tls_ca: Pem | None = None,
        tls_cert: Pem | None = None,
        tls_key: Pem | None = None,
        tls_server_name: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: tuple[float, float] = (0.1, 5.0),
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
        token: str | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = Backoff(*backoff)
        self.metadata: tuple[tuple[str, str | bytes], ...] = (
            *token_metadata(token),
            *tuple(metadata),
        )
        self.channel = make_channel(
            address,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_server_name=tls_server_name,
            options=options,
        )
        self._lock = threading.Lock()
        self._callables: dict[tuple[str, str], Any] = {}

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected; Unavailable after ``timeout`` s."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise errors.Unavailable(f"{self.address} not reachable within {timeout} s") from None

    # -- multi-callables, one per method and kind, cached ----------------------------
    def _callable(self, kind: str, method: str, response: type[Message]) -> Any:
        key = (kind, method)
        with self._lock:
            fn = self._callables.get(key)
            if fn is None:
                make = getattr(self.channel, kind)
                fn = make(
                    method, request_serializer=_serialize, response_deserializer=response.FromString
                )
                self._callables[key] = fn
            return fn

    def budget(self, timeout: Timeout, default: float | None) -> float | None:
        return default if isinstance(timeout, _Default) else timeout

    def unary(
        self,
        method: str,
        request: Message,
        response: type[_M],
        *,
        idempotent: bool,
        timeout: Timeout = DEFAULT,
    ) -> _M:
        """Call a unary RPC with the client's deadline and retry rules."""
        deadline = Deadline(self.budget(timeout, self.timeout))
        fn = self._callable("unary_unary", method, response)
        attempt = 0
        while True:
            remaining = deadline.left(attempt, method)
            try:
                result: _M = fn(request, timeout=remaining, metadata=self.metadata)
                return result
            except grpc.RpcError as e:
                if not (idempotent and e.code() in RETRYABLE and attempt < self.retries):
                    raise errors.from_rpc_error(e, method) from e
            self._pause(attempt, deadline)
            attempt += 1

    def stream(
        self,
        method: str,
        request: Message,
        response: type[_M],
        *,
        idempotent: bool,
        timeout: Timeout = None,
    ) -> Iterator[_M]:
        """Iterate a server stream; retried (when idempotent) only before its first message.

        The RPC starts when iteration starts; closing the iterator early cancels it."""
        deadline = Deadline(self.budget(timeout, None))
        fn = self._callable("unary_stream", method, response)
        attempt = 0
        while True:
            remaining = deadline.left(attempt, method)
            call = fn(request, timeout=remaining, metadata=self.metadata)
            got = False
            try:
                for msg in call:
                    got = True
                    yield msg
                return
            except grpc.RpcError as e:
                if got or not (idempotent and e.code() in RETRYABLE and attempt < self.retries):
                    raise errors.from_rpc_error(e, method) from e
            finally:
                call.cancel()  # a no-op once the stream ended; stops it if abandoned
            self._pause(attempt, deadline)
            attempt += 1

    def bidi(self, method: str, requests: Iterator[Message], response: type[_M]) -> Any:
        """Open a bidirectional stream (no deadline, no retry: the caller resumes)."""
        fn = self._callable("stream_stream", method, response)
        return fn(requests, metadata=self.metadata)

    def _pause(self, attempt: int, deadline: Deadline) -> None:
        d = self.backoff.delay(attempt)
        if deadline.at is not None:
            d = min(d, max(0.0, deadline.at - time.monotonic()))
        time.sleep(d)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()

"""callvault_client: the thin Python SDK of the callvault gRPC service.

Needs only grpcio and protobuf::

    from callvault_client import Client, pb

    with Client("127.0.0.1:7443") as c:
        for call in c.search_all(agent="alex", order="newest"):  # page by page
            print(call.call_id, pb.CallState.Name(call.call_state))
        c.export("call-1", "call-1.ogg")

The messages (``pb.CallInfo``, ``pb.PlayChunk``, ...) are generated from
proto/callvault/v1/callvault.proto when the distribution is built.
"""

from callvault_client import errors
from callvault_client._channel import DEFAULT, MAX_MESSAGE_BYTES
from callvault_client._pb import callvault_pb2 as pb
from callvault_client.client import Client, Instant, SidecarClient, make_meta, to_us
from callvault_client.errors import CallvaultClientError
from callvault_client.recording import AckEvent, AckView, BatchSource, Recording

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "MAX_MESSAGE_BYTES",
    "AckEvent",
    "AckView",
    "BatchSource",
    "CallvaultClientError",
    "Client",
    "Instant",
    "Recording",
    "SidecarClient",
    "errors",
    "make_meta",
    "to_us",
    "pb",
]

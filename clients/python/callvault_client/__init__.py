"""callvault_client: the thin Python SDK of the callvault gRPC service.

Needs only grpcio and protobuf::

    from callvault_client import Client

    with Client("127.0.0.1:7443") as c:
        for call in c.search(agent="alex"):
            print(call.call_id, call.state)
        c.export("call-1", "call-1.ogg")

The messages (``pb.CallInfo``, ``pb.PlayChunk``, ...) are generated from
proto/callvault/v1/callvault.proto when the distribution is built.
"""

from callvault_client import errors
from callvault_client._channel import DEFAULT, MAX_MESSAGE_BYTES
from callvault_client._pb import callvault_pb2 as pb
from callvault_client.client import Client, SidecarClient, make_meta
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
    "Recording",
    "SidecarClient",
    "errors",
    "make_meta",
    "pb",
]

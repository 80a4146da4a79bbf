"""The bare grpcio peer of workload play_opus_10min (benchmarks/bench_server.py).

    python -m benchmarks.bare_stream MESSAGES PORT_FILE

A grpcio server on 127.0.0.1 (a free port, written to PORT_FILE once it
serves) with one generic server-streaming method, ``/bench.Bare/Stream``: no
servicer class, no (de)serialization (bytes in, bytes out), whatever the
request, it yields the messages of the file MESSAGES (each a 4-byte big-endian
length and that many bytes), all held in memory. bench_server.py fills the
file with the serialized PlayChunk messages of ours' Play, so both streams
carry the same bytes in the same message sizes. The same channel options as
`callvault serve` (message size limits). Stops on SIGTERM.
"""

from __future__ import annotations

import signal
import struct
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

METHOD = "/bench.Bare/Stream"
MAX_MESSAGE = 8 << 20  # callvault serve's default max_message_bytes


def read_messages(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        (n,) = struct.unpack_from(">I", raw, pos)
        out.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def write_messages(path: Path, messages: list[bytes]) -> None:
    path.write_bytes(b"".join(struct.pack(">I", len(m)) + m for m in messages))


def main() -> int:
    messages = read_messages(Path(sys.argv[1]))

    def stream(_request: bytes, _context: Any) -> Iterator[bytes]:
        yield from messages

    server = grpc.server(
        ThreadPoolExecutor(max_workers=4),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    service, method = METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                service, {method: grpc.unary_stream_rpc_method_handler(stream)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tmp = Path(sys.argv[2] + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.rename(sys.argv[2])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

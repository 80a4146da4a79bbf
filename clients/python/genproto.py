"""Generate the gRPC stubs of proto/callvault/v1/callvault.proto into callvault_client/_pb/.

Run by `make build` (and by this distribution's setup.py when it is built):
the stubs are build products, never edited and never committed. The .proto is
compiled from a copy placed at callvault_client/_pb/callvault.proto inside a
scratch include directory, so the generated grpc module imports
``callvault_client._pb.callvault_pb2`` (grpc_tools writes absolute imports
that follow the .proto's path); the proto package stays ``callvault.v1``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_CANDIDATES = (
    HERE.parent.parent / "proto" / "callvault" / "v1" / "callvault.proto",  # the repository
    HERE / "callvault.proto",  # an sdist carries a copy
)
OUT = HERE / "callvault_client" / "_pb"


def proto_path() -> Path:
    for p in PROTO_CANDIDATES:
        if p.is_file():
            return p
    raise SystemExit(
        "callvault.proto not found (looked in: " + ", ".join(str(p) for p in PROTO_CANDIDATES) + ")"
    )


def generate(out: Path = OUT) -> list[Path]:
    from grpc_tools import protoc  # build-time dependency only

    src = proto_path()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        inc = Path(tmp)
        rel = Path("callvault_client") / "_pb" / "callvault.proto"
        (inc / rel).parent.mkdir(parents=True)
        shutil.copyfile(src, inc / rel)
        target = out.parent.parent  # the directory holding callvault_client/
        well_known = Path(protoc.__file__).parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{inc}",
                f"-I{well_known}",
                f"--python_out={target}",
                f"--pyi_out={target}",
                f"--grpc_python_out={target}",
                str(rel),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed on {src} (exit {rc})")
    (out / "__init__.py").write_text(
        '"""Generated from proto/callvault/v1/callvault.proto at build time: do not edit."""\n'
    )
    return sorted(out.glob("callvault_pb2*"))


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(p)

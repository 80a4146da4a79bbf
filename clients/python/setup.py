"""callvault-client: the stubs are generated from the .proto while building (genproto.py).

The runtime requirements follow the generated code: protobuf's gencode refuses
to load under an older protobuf runtime (or another major version), and grpc's
under an older grpcio, so the wheel requires the versions of the grpcio-tools
that generated its stubs (read from the stubs' headers).
"""

import re
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genproto  # noqa: E402


def runtime_requirements() -> list[str]:
    genproto.generate()
    pb2 = (genproto.OUT / "callvault_pb2.py").read_text()
    grpc_py = (genproto.OUT / "callvault_pb2_grpc.py").read_text()
    pb_version = re.search(r"^# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", pb2, re.M)
    grpc_version = re.search(r"^GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_py, re.M)
    if pb_version is None or grpc_version is None:
        raise SystemExit("cannot read the generated stubs' protobuf/grpc versions")
    major = int(pb_version.group(1))
    return [
        f"grpcio>={grpc_version.group(1)}",
        f"protobuf>={'.'.join(pb_version.groups())},<{major + 1}",
    ]


class BuildWithStubs(build_py):
    def run(self) -> None:
        genproto.generate()
        super().run()


setup(cmdclass={"build_py": BuildWithStubs}, install_requires=runtime_requirements())

"""callvault-client: the stubs are generated from the .proto while building (genproto.py)."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genproto  # noqa: E402


class BuildWithStubs(build_py):
    def run(self) -> None:
        genproto.generate()
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})

"""Build of callvault's Cython extensions (ext/ -> callvault._*).

Set CALLVAULT_ONLY=_rtp,_dsp to build a subset (useful while one module is
being written); `make test` always builds them all.
"""

import os
import shlex
import subprocess

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def pkg_config(flag: str, pkg: str, default: list[str]) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", flag, pkg], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return default
    return shlex.split(out.stdout)


OPUS_CFLAGS = pkg_config("--cflags-only-I", "opus", ["-I/usr/include/opus"])
OPUS_LIBS = pkg_config("--libs", "opus", ["-lopus"])

COMMON = {
    "include_dirs": ["ext", numpy.get_include()],
    "define_macros": [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    "extra_compile_args": ["-O3", "-Wno-unused-function"],
}

EXTENSIONS = {
    "_g711": Extension("callvault._g711", ["ext/_g711.pyx"], **COMMON),
    "_rtp": Extension("callvault._rtp", ["ext/_rtp.pyx"], **COMMON),
    "_dsp": Extension("callvault._dsp", ["ext/_dsp.pyx"], **COMMON),
    "_net": Extension("callvault._net", ["ext/_net.pyx"], **COMMON),
    "_pcap": Extension("callvault._pcap", ["ext/_pcap.pyx"], **COMMON),
    # the leg's whole audio path per batch, in C: cimports the classes of _rtp, _dsp
    # and _opus through their declarations in ext/callvault/*.pxd (Cython finds a
    # module's .pxd under its package name: callvault/_rtp.pxd in an include dir)
    "_leg": Extension(
        "callvault._leg",
        ["ext/_leg.pyx"],
        include_dirs=COMMON["include_dirs"] + [f[2:] for f in OPUS_CFLAGS],
        define_macros=COMMON["define_macros"],
        extra_compile_args=COMMON["extra_compile_args"],
    ),
    "_opus": Extension(
        "callvault._opus",
        ["ext/_opus.pyx"],
        include_dirs=COMMON["include_dirs"] + [f[2:] for f in OPUS_CFLAGS],
        define_macros=COMMON["define_macros"],
        extra_compile_args=COMMON["extra_compile_args"],
        extra_link_args=OPUS_LIBS,
    ),
}

only = [m for m in os.environ.get("CALLVAULT_ONLY", "").split(",") if m]
selected = [EXTENSIONS[m] for m in only] if only else list(EXTENSIONS.values())
selected = [e for e in selected if os.path.exists(e.sources[0])]

setup(
    ext_modules=cythonize(
        selected,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)

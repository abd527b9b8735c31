"""cffi builder (API mode, out of line) for slirp._native.

The cdef is read from native/slirpnet.h, the one header that is the whole ABI,
so the Python side can never drift from the C side.  setup.py names this file
in ``cffi_modules``; ``python native/build.py`` builds in place for development.
"""
import os
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))


def _cdef_from_header(text: str) -> str:
    """The declarations of slirpnet.h without comments and preprocessor lines."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


# Extra flags for sanitizer builds (tools/asan_fuzz.sh): SLIRPNET_CFLAGS="-fsanitize=address,undefined".
EXTRA = os.environ.get("SLIRPNET_CFLAGS", "").split()

ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header((HERE / "slirpnet.h").read_text()))
ffibuilder.set_source(
    "slirp._native",
    '#include "slirpnet.h"',
    sources=SOURCES,
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-fno-strict-aliasing", "-ffp-contract=off"] + EXTRA,
    extra_link_args=EXTRA,
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose=False)

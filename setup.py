"""The one thing pyproject.toml cannot say: the compiled extensions, and that they are optional.

`pip install` (and so `make setup` and the Dockerfile) compiles, with Cython (a build
requirement) and the machine's C compiler, ingest/upstox/_fastdecode.pyx (the frame decoder),
store/_copyrows.pyx (the binary COPY encoder), ingest/channels/_slots.pyx (the published
tables' slot writer) and ingest/_minute_bars.pyx (the forming bars' fold). Where that fails
(no compiler, no Python headers, a big-endian host the decoder's wire walk does not support)
the install goes on without them and tickvault runs on the Python reference paths;
`tickvault run` logs which.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DECODER = Extension(
    "ingest.upstox._fastdecode",
    ["ingest/upstox/_fastdecode.pyx"],
    depends=["ingest/upstox/_instrument_keys.pxi"],  # included by it
    optional=True,
)
COPY_ENCODER = Extension("store._copyrows", ["store/_copyrows.pyx"], optional=True)
SLOT_WRITER = Extension("ingest.channels._slots", ["ingest/channels/_slots.pyx"], optional=True)
MINUTE_BARS = Extension("ingest._minute_bars", ["ingest/_minute_bars.pyx"], optional=True)


class OptionalBuildExt(build_ext):
    """Build what can be built; a failure is a warning, the Python reference stands in."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # Cython missing or failing, no compiler: all optional
            self._skipped(error)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:
            self._skipped(error)

    def _skipped(self, error: Exception) -> None:
        print(
            f"warning: a compiled part of tickvault was not built ({error}); "
            "its Python reference will be used",
            file=sys.stderr,
        )


# The decoder's wire walk reads doubles as they lie in memory: little-endian hosts only.
# The COPY encoder writes big-endian by shifts, the slot writer and the bars native order as
# the published tables are: any host.
ANY_HOST = [COPY_ENCODER, SLOT_WRITER, MINUTE_BARS]
setup(
    ext_modules=[DECODER, *ANY_HOST] if sys.byteorder == "little" else ANY_HOST,
    cmdclass={"build_ext": OptionalBuildExt},
)

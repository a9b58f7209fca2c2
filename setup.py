"""The one thing pyproject.toml cannot say: the compiled decoder, and that it is optional.

`pip install` (and so `make setup` and the Dockerfile) compiles ingest/upstox/_fastdecode.pyx
with Cython (a build requirement) and the machine's C compiler. Where that fails (no compiler,
no Python headers, a big-endian host the wire walk does not support) the install goes on
without it and tickvault runs on the Python reference decoder; `tickvault run` logs which.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DECODER = Extension(
    "ingest.upstox._fastdecode",
    ["ingest/upstox/_fastdecode.pyx"],
    optional=True,
)


class OptionalBuildExt(build_ext):
    """Build what can be built; a failure is a warning, the Python decoder stands in."""

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
            f"warning: tickvault's compiled decoder was not built ({error}); "
            "the Python decoder will be used",
            file=sys.stderr,
        )


# The wire walk reads doubles as they lie in memory: little-endian hosts only.
setup(
    ext_modules=[DECODER] if sys.byteorder == "little" else [],
    cmdclass={"build_ext": OptionalBuildExt},
)

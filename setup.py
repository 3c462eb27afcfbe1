"""Build the Cython kernels from ext/ when a compiler is there; install without them when not.

Packages and package data live here (not in pyproject.toml) because the top-level ``boards/``
and ``systemd/`` folders are mapped into the package as ``edgeagent.board_profiles`` and
``edgeagent.systemd_units`` (what ``edgeagent install-service`` installs).
"""

import os

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

# Flags from our measurements (research/quantized-inference.md §4.1): branch-free loops only
# vectorize with these. The kernels handle NaN and inf explicitly before any arithmetic.
# -ffp-contract=off: GCC fuses a*b+c into one FMA by default on aarch64, which rounds once
# instead of twice and breaks bit-exactness with the NumPy reference (the import self-test
# refuses such a build).
KERNEL_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]


class BuildExtNoStale(build_ext):
    """When an optional extension fails to build, delete the binary an earlier build left in
    build/: setuptools would otherwise package that stale file, so a compiler-less install
    reports COMPILED = True with kernels that may not match the current source."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception:
            stale = self.get_ext_fullpath(ext.name)
            if ext.optional and os.path.exists(stale):
                os.remove(stale)
            raise


def kernel_extensions() -> list[Extension]:
    if os.environ.get("EDGEAGENT_NO_EXT"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    exts = cythonize(
        [Extension("edgeagent.kernels._compiled", ["ext/kernels.pyx"],
                   extra_compile_args=KERNEL_FLAGS)],
        language_level=3,
    )
    # cythonize() drops Extension(optional=True): set it again so a missing compiler is not fatal.
    for ext in exts:
        ext.optional = True
    return exts


setup(
    # Data folders (infer/models, sim/data) are namespace packages so their files install.
    packages=[*find_namespace_packages(include=["edgeagent", "edgeagent.*"],
                                       exclude=["*.__pycache__"]), "edgeagent.board_profiles",
              "edgeagent.systemd_units"],
    package_dir={"edgeagent.board_profiles": "boards", "edgeagent.systemd_units": "systemd"},
    package_data={
        "edgeagent.board_profiles": ["*.toml"],
        "edgeagent.systemd_units": ["*.service", "*.slice", "*.tmpfiles", "*.sysusers", "*.rules",
                                    "*.pkla", "*.toml"],
        "edgeagent.infer.models": ["*.onnx", "*.tflite", "*.npz", "*.md"],
        "edgeagent.sim.data": ["*.csv", "*.md"],
    },
    ext_modules=kernel_extensions(),
    cmdclass={"build_ext": BuildExtNoStale},
)

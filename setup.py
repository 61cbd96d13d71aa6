"""Builds the package. Compiled extensions are added by the build helpers below.

Build settings (environment variables, documented in README.md):
  ATTN_CUDA_ARCHS      semicolon-separated SM versions for attn._cuda (default "80;90")
  ATTN_SKIP_CUDA_BUILD =1 skips attn._cuda even when nvcc is found
  ATTN_SKIP_CPU_BUILD  =1 skips attn._cpu (the "cpu" backend then reports itself unavailable)
  MAX_JOBS             parallel compile jobs
"""
import glob
import os
import sys

from setuptools import setup


def cpu_extension():
    """attn._cpu: C++ CPU kernels (csrc/cpu), OpenMP, no torch headers.

    Every kernels_<isa>.cpp is compiled with the baseline flags; the AVX2 and AVX-512 files
    switch their own target with a pragma and are chosen at run time from the CPU's features,
    so one binary runs on any x86-64 (and the same sources build on aarch64). -ffp-contract=fast
    lets `a * b + c` on vectors become FMA (ISO -std=c++17 would otherwise forbid it).
    """
    if os.environ.get("ATTN_SKIP_CPU_BUILD") == "1":
        return []
    from pybind11.setup_helpers import Pybind11Extension

    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    return [
        Pybind11Extension(
            "attn._cpu",
            sorted(glob.glob("csrc/cpu/*.cpp")),
            depends=sorted(glob.glob("csrc/cpu/*.h") + glob.glob("csrc/cpu/*.inc")),  # rebuild on header edits
            cxx_std=17,
            extra_compile_args=["-O3", "-ffp-contract=fast", "-fno-strict-aliasing", *openmp],
            extra_link_args=openmp,
        )
    ]


setup(ext_modules=[*cpu_extension()])

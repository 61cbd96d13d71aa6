"""Builds the package. Compiled extensions are added by the build helpers below, one per module.

Build settings (environment variables, documented in README.md):
  ATTN_CUDA_ARCHS      semicolon-separated SM versions for attn.cuda._cuda (default "80;90")
  ATTN_SKIP_CUDA_BUILD =1 skips attn.cuda._cuda even when nvcc is found
  ATTN_SKIP_CPU_BUILD  =1 skips attn.cpu._cpu (the "cpu" backend then says it is unavailable)
  MAX_JOBS             parallel compile jobs (default: CPU count)
  CUDA_HOME            CUDA install to take nvcc and cuda_fp16.h from (default: nvcc on PATH,
                       then /usr/local/cuda)
  CXX                  host C++ compiler (default g++)

No torch at build time: the extensions take data pointers, sizes and strides as integers.
A missing toolchain skips its extension with a message (the backend then says why it is
unavailable in attn.available_backends()); a compile error fails the build.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# One file per head dim (and kernel family), so that they compile in parallel.
_KERNEL_SOURCES = [
    "csrc/cuda/fwd_launch.cu", *sorted(str(p) for p in Path("csrc/cuda").glob("fwd_hdim*.cu")),
    "csrc/cuda/decode_launch.cu", *sorted(str(p) for p in Path("csrc/cuda").glob("decode_hdim*.cu")),
]
# The pybind11 module of each extension.
BINDINGS = {
    "attn.cuda._cuda": "csrc/bindings/cuda.cpp",
    "attn.cuda._cuda_sim": "csrc/bindings/cuda_sim.cpp",
    "attn.cpu._cpu": "csrc/bindings/cpu.cpp",
}
# -O2: emulated kernels run on the host, so optimization is test speed; -fno-strict-aliasing:
# kernels reinterpret 16-bit element arrays as 32-bit registers (docs/design.md §5).
HOST_FLAGS = ["-O2", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing", "-Wall"]


def _say(message: str) -> None:
    print(f"attn setup: {message}", file=sys.stderr)


def _cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _cuda_home() -> Path | None:
    """CUDA_HOME, CUDA_PATH, the install that nvcc on PATH belongs to, or /usr/local/cuda:
    the first that holds include/cuda_runtime.h."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append("/usr/local/cuda")
    for candidate in candidates:
        if candidate and (Path(candidate) / "include" / "cuda_runtime.h").exists():
            return Path(candidate)
    return None


def _cuda_headers() -> Path | None:
    """A directory with cuda_fp16.h/cuda_bf16.h: the CUDA install, else a pip-installed
    NVIDIA runtime package (nvidia-cuda-runtime-cu12 and similar) on sys.path."""
    home = _cuda_home()
    candidates = [home / "include"] if home else []
    for entry in sys.path:
        nvidia = Path(entry) / "nvidia"
        if nvidia.is_dir():
            candidates += sorted(nvidia.glob("*/include"))
    for candidate in candidates:
        if (candidate / "cuda_fp16.h").exists() and (candidate / "cuda_bf16.h").exists():
            return candidate
    return None


class CompiledExtension(Extension):
    """An extension whose sources are compiled with `compile_cmd(source)` and linked by the
    host compiler with `link_flags`."""

    def __init__(self, name, sources, compile_cmd, link_flags=()):
        super().__init__(name, sources)
        self.compile_cmd = compile_cmd
        self.link_flags = list(link_flags)


def _python_includes() -> list[str]:
    import pybind11  # from build-system.requires

    return ["-I" + sysconfig.get_paths()["include"], "-I" + pybind11.get_include()]


def cuda_sim_extension() -> Extension | None:
    """attn.cuda._cuda_sim: the CUDA kernel sources compiled by the host compiler against the SIMT
    emulator (csrc/simt), for running the kernels on CPU tensors."""
    cxx, headers = _cxx(), _cuda_headers()
    if cxx is None or headers is None:
        _say("skipping attn.cuda._cuda_sim: " + ("no g++ (set CXX)" if cxx is None else
             "cuda_fp16.h not found (install CUDA or nvidia-cuda-runtime, or set CUDA_HOME)"))
        return None
    _say(f"attn.cuda._cuda_sim: {cxx}, CUDA headers from {headers}")
    sources = [
        "csrc/simt/emulator.cpp", "csrc/simt/fiber.cpp", "csrc/simt/selftest.cpp",
        BINDINGS["attn.cuda._cuda_sim"], *_KERNEL_SOURCES,
    ]

    def compile_cmd(source: str) -> list[str]:
        language = ["-x", "c++"] if source.endswith(".cu") else []
        return [cxx, *HOST_FLAGS, *_python_includes(), f"-I{headers}", *language, "-c", source]

    return CompiledExtension("attn.cuda._cuda_sim", sources, compile_cmd, ["-lpthread"])


def cuda_extension() -> Extension | None:
    """attn.cuda._cuda: the forward and decode kernels compiled by nvcc for ATTN_CUDA_ARCHS."""
    if os.environ.get("ATTN_SKIP_CUDA_BUILD") == "1":
        _say("skipping attn.cuda._cuda: ATTN_SKIP_CUDA_BUILD=1")
        return None
    home, cxx = _cuda_home(), _cxx()
    nvcc = home / "bin" / "nvcc" if home else None
    if nvcc is None or not nvcc.exists() or cxx is None:
        _say("skipping attn.cuda._cuda: " + ("no g++ (set CXX)" if cxx is None else
             "nvcc not found (put it on PATH or set CUDA_HOME)"))
        return None
    archs = [a.strip() for a in os.environ.get("ATTN_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    _say(f"attn.cuda._cuda: {nvcc} for sm_{', sm_'.join(archs)}")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX for newer GPUs
    sources = [BINDINGS["attn.cuda._cuda"], *_KERNEL_SOURCES]

    def compile_cmd(source: str) -> list[str]:
        if source.endswith(".cu"):
            return [str(nvcc), "-O3", "-std=c++17", "--use_fast_math", *gencode,
                    f"-ccbin={cxx}", "-Xcompiler=-fPIC,-fvisibility=hidden", "-c", source]
        return [cxx, *HOST_FLAGS, *_python_includes(), f"-I{home / 'include'}", "-c", source]

    libdir = home / "lib64" if (home / "lib64").exists() else home / "lib"
    return CompiledExtension("attn.cuda._cuda", sources, compile_cmd,
                             [f"-L{libdir}", "-lcudart_static", "-ldl", "-lpthread", "-lrt"])


def cpu_extension() -> Extension | None:
    """attn.cpu._cpu: the C++ CPU kernels (csrc/cpu), OpenMP, no torch headers.

    Every kernels_<isa>.cpp is compiled with the baseline flags; the AVX2 and AVX-512 files
    switch their own target with a pragma and are chosen at run time from the CPU's features,
    so one binary runs on any x86-64 (and the same sources build on aarch64). -O3 because these
    kernels are the speed path; -ffp-contract=fast lets `a * b + c` on vectors become FMA
    (-std=c++17 would otherwise forbid it); no -fopenmp on macOS (Apple clang lacks it: the
    kernels then run on one thread).
    """
    if os.environ.get("ATTN_SKIP_CPU_BUILD") == "1":
        _say("skipping attn.cpu._cpu: ATTN_SKIP_CPU_BUILD=1")
        return None
    cxx = _cxx()
    if cxx is None:
        _say("skipping attn.cpu._cpu: no g++ (set CXX)")
        return None
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    sources = [BINDINGS["attn.cpu._cpu"], *sorted(str(p) for p in Path("csrc/cpu").glob("*.cpp"))]

    def compile_cmd(source: str) -> list[str]:
        return [cxx, *HOST_FLAGS, "-O3", "-ffp-contract=fast", *openmp, *_python_includes(), "-c", source]

    return CompiledExtension("attn.cpu._cpu", sources, compile_cmd, openmp)


class BuildExt(build_ext):
    """Compiles each extension's sources in parallel (MAX_JOBS) and links them."""

    def build_extension(self, ext):
        start = time.perf_counter()
        build_dir = Path(self.build_temp) / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        objects = [str(build_dir / (Path(src).name + ".o")) for src in ext.sources]
        jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)

        headers = [p for p in Path("csrc").rglob("*") if p.suffix in (".h", ".cuh")]
        newest_header = max((p.stat().st_mtime for p in headers), default=0.0)

        def compile_one(pair):
            source, obj = pair
            if Path(obj).exists() and Path(obj).stat().st_mtime > max(Path(source).stat().st_mtime, newest_header):
                return  # up to date (in-place rebuilds while developing)
            subprocess.run([*ext.compile_cmd(source), "-o", obj], check=True)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(compile_one, zip(ext.sources, objects)))
        output = Path(self.get_ext_fullpath(ext.name))
        output.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([_cxx(), "-shared", *objects, "-o", str(output), *ext.link_flags], check=True)
        _say(f"built {ext.name} in {time.perf_counter() - start:.0f} s ({jobs} jobs)")


setup(
    ext_modules=[ext for ext in (cuda_sim_extension(), cuda_extension(), cpu_extension()) if ext is not None],
    cmdclass={"build_ext": BuildExt},
)

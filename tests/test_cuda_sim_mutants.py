"""Mutation test of the emulator's detectors on the real forward kernel (``-m slow``).

Each mutant is fwd_kernel.cuh with one synchronization removed (either __syncthreads or either
cp.async wait of the key loop), compiled by g++ against the emulator into a small module; under
the default schedule and cp.async mode the race checker must report it, and the unmutated kernel
built the same way must pass.
"""
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import attn
from attn.testing import assert_parity, random_tensor

ROOT = Path(__file__).resolve().parent.parent
WAIT_K = "      simt::cp_async_wait<1>();  // K[n] (and Q) landed; V[n] may still be in flight\n"
BARRIER = "      __syncthreads();\n"
WAIT_V = (
    "      if (prefetch) {\n"
    "        simt::cp_async_wait<1>();  // V[n] landed; K[n+1] may still be in flight\n"
    "      } else {\n"
    "        simt::cp_async_wait<0>();\n"
    "      }\n"
)
MUTANTS = {
    "none": [],
    "no_wait_k": [(WAIT_K, "")],
    "no_barrier_k": [(WAIT_K + BARRIER, WAIT_K)],
    "no_wait_v": [(WAIT_V, "")],
    "no_barrier_v": [(WAIT_V + BARRIER, WAIT_V)],
}

BINDING = """
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include "fwd_kernel.cuh"
#include "py_params.h"
PYBIND11_MODULE(MUTANT_NAME, m) {
  m.def("forward", [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
                      const std::array<int64_t, 14>& strides, const std::array<int, 6>& sizes, int dtype,
                      float scale, bool causal, int offset) {
    attn::launch_fwd<64, simt::half>(
        attn::make_fwd_params(q, k, v, out, lse, strides, sizes, dtype, scale, causal, offset), nullptr);
  });
  pybind11::register_exception<simt::Error>(m, "EmulatorError", PyExc_RuntimeError);
}
"""


def _cuda_include() -> Path:
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").exists():
            return Path(home) / "include"
    raise AssertionError("cuda_fp16.h not found: set CUDA_HOME")


def _build(name: str, edits, out_dir: Path):
    import pybind11

    tree = out_dir / name / "csrc"
    shutil.copytree(ROOT / "csrc", tree)
    kernel = tree / "attention" / "fwd_kernel.cuh"
    text = kernel.read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"{name}: the kernel no longer contains the code this mutant removes"
        text = text.replace(old, new)
    kernel.write_text(text)
    module = f"_mutant_{name}"
    (tree / "attention" / "mutant.cpp").write_text(BINDING.replace("MUTANT_NAME", module))
    cuda_include = _cuda_include()
    target = out_dir / name / (module + importlib.machinery.EXTENSION_SUFFIXES[0])
    subprocess.run(
        ["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
         f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}", f"-I{cuda_include}",
         str(tree / "attention" / "mutant.cpp"), str(tree / "simt" / "emulator.cpp"), str(tree / "simt" / "fiber.cpp"),
         "-o", str(target), "-lpthread"],
        check=True,
    )
    spec = importlib.util.spec_from_file_location(module, target)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return name, mod


@pytest.fixture(scope="module")
def mutants(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mutants")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(lambda item: _build(item[0], item[1], out_dir), MUTANTS.items()))


def _forward(mod, q, k, v):
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[0], q.shape[2], q.shape[1])
    strides = [*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *lse.stride()[:2]]
    sizes = [q.shape[0], q.shape[2], k.shape[2], q.shape[1], k.shape[1], q.shape[3]]
    mod.forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), strides, sizes, 0,
                q.shape[3] ** -0.5, True, k.shape[1] - q.shape[1])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MUTANTS))
def test_race_checker_reports_each_removed_synchronization(mutants, name):
    gen = torch.Generator().manual_seed(21)
    q = random_tensor((1, 100, 2, 64), torch.float16, generator=gen)
    k = random_tensor((1, 150, 2, 64), torch.float16, generator=gen)
    v = random_tensor((1, 150, 2, 64), torch.float16, generator=gen)
    if name == "none":
        out = _forward(mutants[name], q, k, v)
        ref = attn.reference.attention(q, k, v, causal=True, dtype=torch.float64)[0]
        pt = attn.reference.attention(q, k, v, causal=True, dtype=torch.float16)[0]
        assert_parity(out, ref, pt)
    else:
        with pytest.raises(RuntimeError, match="race in block"):
            _forward(mutants[name], q, k, v)


def test_mutants_target_code_that_exists():
    """The default run checks that every mutation still applies to the current kernel."""
    text = (ROOT / "csrc" / "attention" / "fwd_kernel.cuh").read_text()
    for name, edits in MUTANTS.items():
        for old, _ in edits:
            assert text.count(old) == 1, name

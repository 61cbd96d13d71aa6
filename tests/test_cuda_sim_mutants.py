"""Mutation tests of the emulator's detectors on the real kernels (``-m slow``).

Each mutant is the kernel source with one synchronization removed, compiled by g++ against the
emulator into a small module:

* the tensor-core key loop (tile_pipeline.cuh, run through the forward kernel) without either
  __syncthreads or either cp.async wait: under the default schedule and cp.async mode the race
  checker must report it;
* the FMA decode kernel (decode_kernel.cuh) without its cp.async wait or one of its three
  barriers: plain shared-memory traffic is not race-checked, so at least one of the eight
  schedule x cp.async emulations must turn it into an error, NaN or a parity failure.

The unmutated sources built the same way must pass. The default run checks that every mutation
still applies to the current sources.
"""
import importlib.machinery
import importlib.util
import itertools
import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from _decode_cases import make_case

import attn
from attn.core.kernel_params import decode_params, forward_params
from attn.core.spec import AttentionSpec
from attn.cuda.emulator import CP_ASYNC_MODES, SCHEDULES
from attn.testing import assert_parity, random_tensor

ROOT = Path(__file__).resolve().parent.parent
PIPELINE, DECODE = "tile_pipeline.cuh", "decode_kernel.cuh"

WAIT_K = "    simt::cp_async_wait<1>();  // K[n] (and Q) landed; V[n] may still be in flight\n"
BARRIER = "    __syncthreads();\n"
WAIT_V = (
    "    if (prefetch) {\n"
    "      simt::cp_async_wait<1>();  // V[n] landed; K[n+1] may still be in flight\n"
    "    } else {\n"
    "      simt::cp_async_wait<0>();\n"
    "    }\n"
)
FMA_WAIT = "      simt::cp_async_wait<0>();  // tile n landed\n"
FMA_BARRIER = "      __syncthreads();           // ...for every thread, and everyone is done with tile n - 1\n"
FMA_SCORES = "      __syncthreads();  // every score written before the softmax reads its row\n"
FMA_PROBS = "      __syncthreads();  // probabilities and rescale factors written before P V reads them\n"

# name -> (file, [(old, new)]); "none" builds the sources as they are.
MUTANTS = {
    "none": (PIPELINE, []),
    "no_wait_k": (PIPELINE, [(WAIT_K, "")]),
    "no_barrier_k": (PIPELINE, [(WAIT_K + BARRIER, WAIT_K)]),
    "no_wait_v": (PIPELINE, [(WAIT_V, "")]),
    "no_barrier_v": (PIPELINE, [(WAIT_V + BARRIER, WAIT_V)]),
    "fma_no_wait": (DECODE, [(FMA_WAIT, "")]),
    "fma_no_barrier_tile": (DECODE, [(FMA_BARRIER, "")]),
    "fma_no_barrier_scores": (DECODE, [(FMA_SCORES, "")]),
    "fma_no_barrier_probs": (DECODE, [(FMA_PROBS, "")]),
}

BINDING = """
#include <pybind11/pybind11.h>
#include "decode_kernel.cuh"
#include "dispatch.cuh"
#include "fwd_kernel.cuh"
#include "../bindings/params.h"
PYBIND11_MODULE(MUTANT_NAME, m) {
  m.def("configure", [](int schedule, bool land_at_wait) {
    simt::options().schedule = static_cast<simt::Schedule>(schedule);
    simt::options().cp_async = land_at_wait ? simt::CpAsyncLanding::kAtWait : simt::CpAsyncLanding::kAtIssue;
  });
  attn::bind_cuda_params(m);
  m.def("forward", [](const attn::FwdParams& p) {
    attn::launch_fwd<64, simt::half>(attn::with_window_widths(p), nullptr);
  });
  m.def("decode", [](const attn::DecodeParams& p) {
    attn::launch_decode<64, simt::half>(attn::with_window_widths(p), nullptr);
  });
  pybind11::register_exception<simt::Error>(m, "EmulatorError", PyExc_RuntimeError);
}
"""


def _cuda_include() -> Path:
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").exists():
            return Path(home) / "include"
    raise AssertionError("cuda_fp16.h not found: set CUDA_HOME")


def _build(name: str, out_dir: Path):
    import pybind11

    target_file, edits = MUTANTS[name]
    tree = out_dir / name / "csrc"
    shutil.copytree(ROOT / "csrc", tree)
    kernel = tree / "cuda" / target_file
    text = kernel.read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"{name}: the kernel no longer contains the code this mutant removes"
        text = text.replace(old, new)
    kernel.write_text(text)
    module = f"_mutant_{name}"
    (tree / "cuda" / "mutant.cpp").write_text(BINDING.replace("MUTANT_NAME", module))
    target = out_dir / name / (module + importlib.machinery.EXTENSION_SUFFIXES[0])
    subprocess.run(
        ["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
         f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}", f"-I{_cuda_include()}",
         str(tree / "cuda" / "mutant.cpp"), str(tree / "simt" / "emulator.cpp"), str(tree / "simt" / "fiber.cpp"),
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
        return dict(pool.map(lambda name: _build(name, out_dir), MUTANTS))


def _forward(mod, q, k, v):
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[0], q.shape[2], q.shape[1])
    mod.forward(forward_params(mod, q, k, v, out, lse, AttentionSpec(q.shape[3] ** -0.5, causal=True, window_right=0)))
    return out


def _decode_case():
    """Three new tokens of one query head per kv head (3 packed rows: the FMA kernel), paged,
    num_splits 1 (no combine kernel)."""
    return make_case(batch=2, seqlen_q=3, n_heads=2, n_kv_heads=2, head_dim=64, seqlens_k=[300, 70], capacity=320,
                     page_size=16, append=False, dtype=torch.float16, device="cpu", seed=4)


def _decode(mod, case):
    q = case.q
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"))
    seqlens = case.seqlens_k.int()
    spec = AttentionSpec(q.shape[3] ** -0.5, causal=True, window_right=0)
    mod.decode(decode_params(mod, q, case.k_cache, case.v_cache, out, lse, seqlens, None, case.block_table, spec))
    return out


def _decode_passes(mod, case) -> bool:
    ref, pt = (attn.reference.attention(case.q, case.k_logical, case.v_logical, causal=True,
                                        seqlens_k=case.seqlens_k, dtype=t)[0] for t in (torch.float64, torch.float16))
    try:
        assert_parity(_decode(mod, case), ref, pt, factor=3)
    except (AssertionError, RuntimeError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, (f, _) in MUTANTS.items() if f == PIPELINE])
def test_race_checker_reports_each_removed_synchronization(mutants, name):
    gen = torch.Generator().manual_seed(21)
    q = random_tensor((1, 100, 2, 64), torch.float16, generator=gen)
    k = random_tensor((1, 150, 2, 64), torch.float16, generator=gen)
    v = random_tensor((1, 150, 2, 64), torch.float16, generator=gen)
    mutants[name].configure(0, False)
    if name == "none":
        out = _forward(mutants[name], q, k, v)
        ref = attn.reference.attention(q, k, v, causal=True, dtype=torch.float64)[0]
        pt = attn.reference.attention(q, k, v, causal=True, dtype=torch.float16)[0]
        assert_parity(out, ref, pt)
    else:
        with pytest.raises(RuntimeError, match="race in block"):
            _forward(mutants[name], q, k, v)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["none", *(n for n, (f, _) in MUTANTS.items() if f == DECODE)])
def test_some_emulation_exposes_each_removed_decode_synchronization(mutants, name):
    results = []
    for schedule, cp_async in itertools.product(range(len(SCHEDULES)), CP_ASYNC_MODES):
        mutants[name].configure(schedule, cp_async == "wait")
        results.append(_decode_passes(mutants[name], _decode_case()))
    assert all(results) if name == "none" else not all(results), results


def test_mutants_target_code_that_exists():
    for name, (target_file, edits) in MUTANTS.items():
        text = (ROOT / "csrc" / "cuda" / target_file).read_text()
        for old, _ in edits:
            assert text.count(old) == 1, name

"""The CUDA kernels compile for real GPUs: every instantiation (csrc/cuda/fwd_hdim*.cu and
decode_hdim*.cu) is built by nvcc for sm_80 and sm_90 with ``-Xptxas -v``, which must report no
spills and no stack frame, and the SASS must use tensor-core mma (HMMA), ldmatrix and cp.async.
Runs without a GPU; needs nvcc."""
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCHS = (80, 90)
DTYPES = ("__half", "__nv_bfloat16")
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("fwd_hdim*.cu")) + sorted(
    (ROOT / "csrc" / "cuda").glob("decode_hdim*.cu"))
# Kernels per dtype and arch in each kind of instantiation file, with their instantiation counts
# (the forward and the decode mma kernel have one without and one with softcap/ALiBi).
KERNELS = {"fwd": {"fwd_kernel": 2},
           "decode": {"decode_mma_kernel": 2, "decode_fma_kernel": 1, "decode_combine_kernel": 1}}


def _nvcc() -> str:
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    assert found, "nvcc not found: set CUDA_HOME or put nvcc on PATH"
    return found


def _cuobjdump(nvcc: str) -> str:
    """CUDA's cuobjdump, else the copy that ships inside the triton package."""
    beside = Path(nvcc).parent / "cuobjdump"
    if beside.exists():
        return str(beside)
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    assert bundled.exists(), "no cuobjdump in the CUDA install or the triton package"
    return str(bundled)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{source name: (ptxas report, object path)}, compiled two at a time."""
    nvcc, out_dir = _nvcc(), tmp_path_factory.mktemp("nvcc")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]

    def build(source: Path):
        obj = out_dir / (source.stem + ".o")
        cmd = [nvcc, "-O3", "-std=c++17", "--use_fast_math", *gencode, "-Xptxas=-v", "-c", str(source), "-o", str(obj)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, f"nvcc failed on {source.name}:\n{run.stderr}"
        return source.name, (run.stdout + run.stderr, obj)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(build, SOURCES))


def ptxas_entries(report: str) -> list[dict]:
    """One dict per (kernel, arch) from ptxas -v output."""
    entries = []
    pattern = re.compile(
        r"Compiling entry function '(?P<name>\w+)' for 'sm_(?P<arch>\d+)'.*?"
        r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads.*?"
        r"Used (?P<regs>\d+) registers",
        re.S,
    )
    for m in pattern.finditer(report):
        entries.append({k: (v if k == "name" else int(v)) for k, v in m.groupdict().items()})
    return entries


def test_every_instantiation_builds_without_spills(compiled, record_property):
    assert [s.name for s in SOURCES] == ["fwd_hdim128.cu", "fwd_hdim256.cu", "fwd_hdim32.cu", "fwd_hdim64.cu",
                                         "decode_hdim128.cu", "decode_hdim256.cu", "decode_hdim32.cu",
                                         "decode_hdim64.cu"]
    for name, (report, _) in compiled.items():
        entries = ptxas_entries(report)
        head_dim = int(re.search(r"\d+", name).group())
        kernels = KERNELS[name.split("_")[0]]
        assert len(entries) == len(ARCHS) * len(DTYPES) * sum(kernels.values()), f"{name}: expected {kernels} " \
            f"per dtype and arch\n{report}"
        for e in entries:
            assert f"ILi{head_dim}E" in e["name"] and any(k in e["name"] for k in kernels), e["name"]
            where = f"{name} {e['name']} sm_{e['arch']}"
            assert (e["stack"], e["stores"], e["loads"]) == (0, 0, 0), f"{where}: stack/spills in\n{report}"
            assert e["regs"] <= 255, where
            record_property(f"registers_d{head_dim}_sm{e['arch']}_{e['name'][-30:]}", e["regs"])


def test_sass_uses_tensor_core_mma(compiled):
    cuobjdump = _cuobjdump(_nvcc())
    for name, (_, obj) in compiled.items():
        for arch in ARCHS:
            sass = subprocess.run([cuobjdump, "-sass", "-arch", f"sm_{arch}", str(obj)], capture_output=True,
                                  text=True, check=True).stdout
            assert "HMMA.16816.F32" in sass, f"{name} sm_{arch}: no HMMA.16816.F32 in SASS"
            assert "LDSM" in sass and "LDGSTS" in sass, f"{name} sm_{arch}: no ldmatrix / cp.async in SASS"

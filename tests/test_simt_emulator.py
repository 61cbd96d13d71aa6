"""The SIMT emulator (csrc/simt) checked on its own, through attn.cuda._cuda_sim.selftest.

Instruction semantics are checked against this file's own reading of the PTX ISA (fragment
layouts of docs/design.md §5), not against the emulator's code: the test builds each lane's
registers, the emulator runs one instruction, the test decodes the lanes' results. Every
detector is shown firing on a kernel with a planted bug.
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attn.cuda.emulator import CP_ASYNC_MODES, SCHEDULES, emulator

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
FULL = [(s, c) for s in SCHEDULES for c in CP_ASYNC_MODES]


def bits16(values: torch.Tensor, dtype: torch.dtype) -> list[int]:
    """16-bit patterns of `values` rounded to `dtype`, as unsigned ints."""
    return [b & 0xFFFF for b in values.to(dtype).view(torch.int16).flatten().tolist()]


def pack(lo: int, hi: int) -> int:
    return lo | hi << 16


def mma_fragments(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, dtype: torch.dtype):
    """Per-lane registers of mma.m16n8k16 (row.col) for A (16x16), B (16x8), C (16x8);
    g = lane // 4, t = lane % 4, lower-indexed element in the low half."""
    abits = torch.tensor(bits16(a, dtype)).view(16, 16)
    bbits = torch.tensor(bits16(b, dtype)).view(16, 8)
    a_regs, b_regs, c_vals = [], [], []
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for row, col in ((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)):
            a_regs.append(pack(int(abits[row, col]), int(abits[row, col + 1])))
        for row in (2 * t, 2 * t + 8):
            b_regs.append(pack(int(bbits[row, g]), int(bbits[row + 1, g])))
        for row, col in ((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)):
            c_vals.append(float(c[row, col]))
    return a_regs, b_regs, c_vals


def decode_accumulators(d: list[float]) -> torch.Tensor:
    out = torch.empty(16, 8, dtype=torch.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i, (row, col) in enumerate(((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1))):
            out[row, col] = d[4 * lane + i]
    return out


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_mma_integer_inputs_bit_exact(dtype):
    gen = torch.Generator().manual_seed(11)
    a = torch.randint(-8, 9, (16, 16), generator=gen).float()
    b = torch.randint(-8, 9, (16, 8), generator=gen).float()
    c = torch.randint(-100, 101, (16, 8), generator=gen).float()
    with emulator() as ext:
        d = ext.selftest.mma(dtype, *mma_fragments(a, b, c, DTYPES[dtype]))
    assert torch.equal(decode_accumulators(d), a @ b + c)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_mma_random_inputs_match_fp64_product(dtype):
    gen = torch.Generator().manual_seed(12)
    a = torch.randn(16, 16, generator=gen).to(DTYPES[dtype])
    b = torch.randn(16, 8, generator=gen).to(DTYPES[dtype])
    c = torch.randn(16, 8, generator=gen)
    with emulator() as ext:
        d = decode_accumulators(ext.selftest.mma(dtype, *mma_fragments(a.float(), b.float(), c, DTYPES[dtype])))
    expected = (a.double() @ b.double() + c.double()).float()
    assert torch.allclose(d, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("matrices", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
def test_ldmatrix_layouts(matrices, trans):
    """Rows of the 8x8 matrices sit at shuffled 16-byte-aligned places in shared memory.
    Plain: lane l gets row l // 4, columns 2(l % 4), +1 of each matrix; .trans: rows
    2(l % 4), +1 of column l // 4."""
    gen = torch.Generator().manual_seed(13)
    n_rows = 8 * matrices
    slots = torch.randperm(2 * n_rows, generator=gen)[:n_rows]  # 16-byte slots
    image = torch.randint(0, 1 << 16, (2 * n_rows * 8,), generator=gen).tolist()
    offsets = [int(slots[lane]) * 16 if lane < n_rows else 0 for lane in range(32)]
    with emulator() as ext:
        regs = ext.selftest.ldmatrix(matrices, trans, image, offsets)

    def element(mat, row, col):
        return image[int(slots[mat * 8 + row]) * 8 + col]

    for lane in range(32):
        g, t = lane // 4, lane % 4
        for mat in range(matrices):
            if trans:
                expected = pack(element(mat, 2 * t, g), element(mat, 2 * t + 1, g))
            else:
                expected = pack(element(mat, g, 2 * t), element(mat, g, 2 * t + 1))
            assert regs[lane * matrices + mat] == expected, f"lane {lane}, matrix {mat}"


def test_missing_syncthreads_is_exposed_by_some_schedule():
    expected = [float((i + 32) % 128 + 1) for i in range(128)]
    for schedule in SCHEDULES:
        with emulator(schedule=schedule, seed=5) as ext:
            assert ext.selftest.exchange(True) == expected, schedule
    wrong = []
    for schedule in SCHEDULES:
        with emulator(schedule=schedule, seed=5) as ext:
            if ext.selftest.exchange(False) != expected:
                wrong.append(schedule)
    assert wrong, "no schedule exposed the missing __syncthreads"


def test_missing_syncwarp_is_exposed_by_some_schedule():
    expected = [float(32 - lane) for lane in range(32)]
    wrong = []
    for schedule in SCHEDULES:
        with emulator(schedule=schedule, seed=6) as ext:
            assert ext.selftest.warp_exchange(True) == expected, schedule
            if ext.selftest.warp_exchange(False) != expected:
                wrong.append(schedule)
    assert wrong, "no schedule exposed the missing __syncwarp"


def test_options_nest_and_restore():
    with emulator(schedule="random", seed=3, cp_async="wait") as ext:
        with emulator(schedule="reverse"):
            assert ext.options()[0] == "reverse"
        assert ext.options()[:3] == ("random", 3, "wait")
    assert ext.options()[:3] == ("warp-first", 0, "issue") and ext.options()[5] is True


def test_missing_cp_async_wait_reads_poison():
    values = torch.randn(256, generator=torch.Generator().manual_seed(14)).tolist()
    expected = [values[4 * ((i + 33) % 64) + c] for i in range(64) for c in range(4)]
    for cp_async in CP_ASYNC_MODES:
        with emulator(cp_async=cp_async) as ext:
            assert ext.selftest.cp_async_exchange(values, True) == pytest.approx(expected, abs=0)
    with emulator(cp_async="wait") as ext:
        unwaited = torch.tensor(ext.selftest.cp_async_exchange(values, False))
    assert torch.isnan(unwaited).any(), "reading an unwaited cp.async destination must see the NaN poison"


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("cp_async", CP_ASYNC_MODES)
def test_racecheck_flags_unordered_cp_async_and_ldmatrix_under_every_schedule(schedule, cp_async):
    """Warps swap 16-byte rows through cp.async + ldmatrix. Dropping the wait, the barrier, or
    the barrier before overwriting rows another warp read is reported whatever the order."""
    expected = []
    for i in range(64):
        warp, lane = divmod(i, 32)
        element = (32 * (1 - warp) + lane // 4) * 8 + 2 * (lane % 4)
        expected.append(pack(element, element + 1))
    with emulator(schedule=schedule, seed=7, cp_async=cp_async) as ext:
        assert ext.selftest.race("ok") == expected
        with pytest.raises(RuntimeError, match="race .*no cp_async_wait has retired yet: a missing cp.async wait"):
            ext.selftest.race("no-wait")
        with pytest.raises(RuntimeError, match="race .*since the last __syncthreads: a missing __syncthreads"):
            ext.selftest.race("no-barrier")
        with pytest.raises(RuntimeError, match="race .*(a missing __syncthreads before the copy|"
                                               "since the last __syncthreads)"):
            ext.selftest.race("overwrite")
    with emulator(schedule=schedule, cp_async=cp_async, racecheck=False) as ext:
        ext.selftest.race("no-barrier")  # without the checker only the data can tell


@pytest.mark.parametrize(
    "kind, message",
    [
        ("early-exit", r"deadlock .*threads 64-127 exited"),
        ("split-warp", r"deadlock .*warp collective.*__syncthreads"),
        ("divergent-barrier", r"divergent __syncthreads .*threads 0-63 wait at __syncthreads \(selftest.cpp:\d+\); "
                              r"threads 64-127 wait at __syncthreads \(selftest.cpp:\d+\)$"),
        ("partial-mask", r"mask 0xffff;"),
        ("mismatched-lanes", r"disagree at a warp collective"),
        ("misaligned-ldmatrix", r"ldmatrix row address .* not 16-byte aligned"),
        ("misaligned-cp-async", r"cp.async destination .* not 16-byte aligned"),
    ],
)
def test_detectors_fire_on_planted_bugs(kind, message):
    with emulator() as ext:
        with pytest.raises(RuntimeError, match=message):
            ext.selftest.misuse(kind)
        assert ext.selftest.exchange(True)[0] == 33.0, "the emulator must recover after an error"


def test_stack_overflow_is_reported():
    stack = 16 * 1024
    with emulator(stack_bytes=stack) as ext:
        ext.selftest.misuse("stack-overflow", stack // 2)  # fits
        with pytest.raises(RuntimeError, match="stack overflow"):
            ext.selftest.misuse("stack-overflow", stack + 1024)


def test_stack_overflow_into_the_guard_page_is_reported(tmp_path):
    """An overflow that jumps past the canary zone hits the guard page: the process dies with
    SIGSEGV after the emulator's message (so it runs in a subprocess)."""
    script = (
        "from attn.cuda.emulator import emulator\n"
        "with emulator(stack_bytes=16 * 1024) as ext:\n"
        "    ext.selftest.misuse('stack-overflow', 256 * 1024)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == -signal.SIGSEGV, run.stderr
    assert "fiber stack overflow" in run.stderr


def test_blocks_on_several_os_threads_and_stats():
    with emulator(os_threads=2) as ext:
        ext.reset_stats()
        assert ext.selftest.mma_loop(10) == 160.0  # 10 x (16 products of 1 x 1)
        assert ext.stats()["mma"] == 4 * 10


def test_emulated_mma_speed(record_property):
    """Records the emulator's cost per warp mma (informational; bounded loosely)."""
    count = 200
    with emulator() as ext:
        ext.selftest.mma_loop(1)
        start = time.perf_counter()
        ext.selftest.mma_loop(count)
        per_mma_us = (time.perf_counter() - start) / (4 * count) * 1e6
    record_property("us_per_emulated_mma", per_mma_us)
    assert per_mma_us < 1000

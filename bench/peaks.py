"""The device's own peaks, measured at start so "% of peak" is against this machine, not a datasheet.

* compute: a large bf16 matmul (8192³: long enough to reach steady clocks, fits any GPU);
* bandwidth: a device-to-device copy of 1 GiB (read + write counted, 2 GiB moved).
"""
from __future__ import annotations

import torch

from bench.timing import median_ms

MATMUL_N = 8192
COPY_BYTES = 1 << 30


def measure_cuda_peaks() -> dict:
    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    ms, _ = median_ms(lambda _: torch.matmul(a, b), [{}], "cuda", warmup=5, reps=20, max_seconds=1.0)
    tflops = 2 * MATMUL_N**3 / (ms * 1e-3) / 1e12
    del a, b
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms, _ = median_ms(lambda _: dst.copy_(src), [{}], "cuda", warmup=5, reps=20, max_seconds=1.0)
    gbps = 2 * COPY_BYTES / (ms * 1e-3) / 1e9
    del src, dst
    torch.cuda.empty_cache()
    return {
        "matmul_bf16_tflops": tflops,
        "copy_gbps": gbps,
        "how": f"bf16 matmul {MATMUL_N}x{MATMUL_N}x{MATMUL_N} (2·N³ FLOPs); copy of {COPY_BYTES >> 20} MiB "
               "(read + write bytes); medians",
    }

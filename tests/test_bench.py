"""The benchmark runner: its formulas, result schema, memory measurement and a whole smoke run."""
import json
import os
import subprocess
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import attn
from attn import reference
from bench import cli, correctness, memory, results, runner, timing
from bench import providers as P
from bench.formulas import attention_flops, decode_bytes
from bench.profiles import CPU, SMOKE, Case, element_size, memory_cases, speed_cases

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- formulas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,heads,seqlen_q,seqlen_k,head_dim", [(2, 3, 64, 64, 32), (1, 4, 48, 80, 16)])
def test_forward_flops_match_torch_flop_counter_on_naive_attention(batch, heads, seqlen_q, seqlen_k, head_dim):
    # the naive provider does exactly the two matmuls the formula counts: Q K^T and P V
    case = Case("forward", batch, heads, heads, head_dim, seqlen_q, seqlen_k, False)
    naive = P.Naive()
    inputs = P.make_inputs(naive, case, torch.float32, "cpu", torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        P.call(naive, case, inputs)
    assert counter.get_total_flops() == attention_flops("forward", batch, heads, seqlen_q, seqlen_k, head_dim, False)


def test_causal_halves_flops_and_half_the_pairs_are_visible():
    seqlen = 256
    full = attention_flops("forward", 2, 4, seqlen, seqlen, 64, False)
    assert attention_flops("forward", 2, 4, seqlen, seqlen, 64, True) == full / 2
    visible = reference.visibility(1, seqlen, seqlen, causal=True).sum().item() / seqlen**2
    assert abs(visible - 0.5) <= 1 / seqlen  # the halving convention is exact to O(1/S)


def test_backward_counts_two_and_a_half_forwards():
    fwd = attention_flops("forward", 1, 2, 128, 128, 64, True)
    assert attention_flops("forward_backward", 1, 2, 128, 128, 64, True) == fwd * 3.5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_bytes_are_the_cache_query_and_output_tensors(dtype):
    case = Case("decode", 3, 8, 2, 32, 1, 100, True)
    inputs = P.make_inputs(P.SDPA(), case, getattr(torch, dtype), "cpu", torch.Generator().manual_seed(0))
    out = P.call(P.SDPA(), case, inputs)
    moved = sum(t.numel() * t.element_size() for t in (inputs["k_cache"], inputs["v_cache"], inputs["q"], out))
    assert decode_bytes(3, 100, 8, 2, 32, element_size(dtype)) == moved


def test_bad_op_is_a_clear_error():
    with pytest.raises(ValueError, match="attention_flops: argument 'op'"):
        attention_flops("backward", 1, 1, 1, 1, 1, False)


# ---- schema and failure rows ------------------------------------------------------------------

class _Exploding(P.Provider):
    name = "exploding"

    def __init__(self, exc):
        self.exc = exc

    def forward(self, q, k, v, causal, scale):
        raise self.exc


@pytest.mark.parametrize("exc,status", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"), "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"), "oom"),
    (NotImplementedError("option 'backward' is not supported"), "unsupported"),
    (P.Unavailable("not implemented yet"), "unavailable"),
    (ValueError("broken"), "error"),
])
def test_failures_become_rows_with_reasons(exc, status):
    case = Case("forward", 1, 1, 1, 16, 16, 16, False)
    row = runner.measure_speed(_Exploding(exc), case, SMOKE, None)
    results.check_row(row)
    assert row["status"] == status and str(exc) in row["reason"] and row["ms"] is None


def test_check_row_rejects_ok_rows_without_numbers_and_failures_without_reasons():
    case = Case("forward", 1, 1, 1, 16, 16, 16, False)
    with pytest.raises(ValueError, match="lacks"):
        results.check_row(results.make_row("speed", case, "sdpa", "cpu", "float32", "ok"))
    with pytest.raises(ValueError, match="no reason"):
        results.check_row(results.make_row("memory", case, "sdpa", "cpu", "float32", "oom"))


def test_emulated_backends_are_never_timed_on_cpu():
    why = P.AttnBackend("triton").status("cpu")
    assert why is not None and "correctness" in why


def test_cpu_decode_sweep_respects_the_kv_cache_cap():
    cases = [c for c in speed_cases(CPU) if c.op == "decode"]
    assert cases and all(2 * c.batch * c.seqlen_k * c.kv_heads * c.head_dim * 4 <= 1 << 30 for c in cases)
    assert {c.batch for c in cases} == {1, 8, 64} and max(c.seqlen_k for c in cases) == 8192


def test_timing_repeats_fast_calls_and_caps_slow_ones():
    calls = []
    run = lambda inputs: calls.append(inputs["i"])  # noqa: E731
    sets = [{"i": i} for i in range(3)]
    _, reps = timing.median_ms(run, sets, "cpu", warmup=1, reps=7, max_seconds=10.0)
    assert reps == 7 and calls == [0, 1, 2, 0, 1, 2, 0, 1]  # inputs rotate through every set

    slow = lambda inputs: time.sleep(0.02)  # noqa: E731
    ms, reps = timing.median_ms(slow, sets, "cpu", warmup=1, reps=25, max_seconds=0.01)
    assert reps == timing.MIN_REPS and ms >= 20.0


def test_timing_clears_gradients_before_every_call():
    x = torch.ones(3, requires_grad=True)
    seen = []

    def run(inputs):
        seen.append(x.grad)
        (x * 2).sum().backward()

    timing.median_ms(run, [{}], "cpu", warmup=1, reps=4, max_seconds=10.0, grad_to_none=[x])
    assert seen == [None] * 5  # no call accumulates into the previous call's gradient


# ---- correctness section ----------------------------------------------------------------------

@pytest.mark.parametrize("case", [c for c in correctness.CASES if c.op != "decode"], ids=lambda c: c.label)
def test_correctness_check_passes_a_correct_backend(case):
    row = correctness._check_case("torch", case, "float16")
    results.check_row(row)
    assert row["status"] == "ok" and row["max_err"] <= row["bound"], row


def test_correctness_check_catches_a_wrong_backend(monkeypatch):
    forward = P.AttnBackend.forward
    monkeypatch.setattr(P.AttnBackend, "forward", lambda self, *args: forward(self, *args) * 1.01)
    row = correctness._check_case("torch", correctness.CASES[0], "float16")
    assert row["status"] == "mismatch" and row["max_err"] > row["bound"] and "out:" in row["reason"]


def _decode_via_reference(q, k_cache, v_cache, cache_seqlens=None, softmax_scale=None, causal=False, backend=None):
    out, _ = reference.attention(q, k_cache, v_cache, softmax_scale=softmax_scale, causal=causal,
                                 seqlens_k=cache_seqlens, dtype=torch.float32)
    return out.to(q.dtype)


def test_decode_paths_run_once_attn_has_decode(monkeypatch):
    # attn.flash_attn_with_kvcache lands later; a stand-in built on the oracle exercises the plumbing
    monkeypatch.setattr(attn, "flash_attn_with_kvcache", _decode_via_reference, raising=False)
    decode = next(c for c in correctness.CASES if c.op == "decode")
    row = correctness._check_case("torch", decode, "float16")
    assert row["status"] == "ok", row
    row = runner.measure_speed(P.AttnBackend("torch"), decode, SMOKE, None)
    results.check_row(row)
    assert row["status"] == "ok" and row["gbps"] > 0


# ---- memory measurement -----------------------------------------------------------------------

def test_cpu_peak_memory_sees_the_naive_score_matrix_and_not_a_fused_one():
    seqlen = 1024
    case = Case("forward", 1, 1, 1, 32, seqlen, seqlen, False)
    scores = seqlen * seqlen * 4  # one fp32 (Sq, Sk) matrix
    # One thread, as the CPU profile runs: torch's fused SDPA keeps a block of scores per thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        naive = memory.cpu_peak_bytes("naive", case, "float32")
        sdpa = memory.cpu_peak_bytes("sdpa", case, "float32")
    finally:
        torch.set_num_threads(threads)
    assert naive[0] == "ok" and sdpa[0] == "ok", (naive, sdpa)
    assert naive[2] >= scores  # scores (and softmax output) are materialized
    assert sdpa[2] < scores / 2  # tiled: a block of scores at a time


# ---- a whole run ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


def test_smoke_run_writes_every_output(smoke_run):
    out, data = smoke_run
    for name in ("results.csv", "summary.md", "speed_forward.png", "speed_forward_backward.png", "speed_decode.png",
                 "memory.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv") as f:
        assert len(f.read().strip().splitlines()) == len(data["rows"]) + 1
    meta = data["meta"]
    assert meta["versions"]["torch"] == torch.__version__ and meta["commit"] and meta["machine"]["summary"]
    assert set(meta["formulas"]) >= {"forward FLOPs", "decode bytes"}


def test_smoke_run_gives_every_provider_numbers_or_a_reason(smoke_run):
    _, data = smoke_run
    rows = data["rows"]
    for row in rows:
        results.check_row(row)
    assert not [r for r in rows if r["status"] in ("error", "mismatch")]
    expected = {("speed", c) for c in speed_cases(SMOKE)} | {("memory", c) for c in memory_cases(SMOKE)}
    for provider in data["meta"]["providers"]:
        got = {(r["section"], Case(*(r[f] for f in Case.__dataclass_fields__))) for r in rows
               if r["provider"] == provider and r["section"] != "correctness"}
        assert got == expected, provider
    ran = {r["provider"] for r in rows if r["status"] == "ok" and r["section"] == "speed"}
    assert {"naive", "sdpa", "attn:torch"} <= ran
    assert "attn:triton" not in ran


def test_smoke_run_executes_emulated_backends_for_correctness(smoke_run):
    _, data = smoke_run
    checked = [r for r in data["rows"] if r["section"] == "correctness" and r["provider"] == "attn:triton"]
    forward = [r for r in checked if r["op"] == "forward"]
    assert forward and all(r["status"] == "ok" and r["max_err"] <= r["bound"] for r in forward)


# ---- gpu_check.sh -----------------------------------------------------------------------------

def test_gpu_check_dry_run_lists_build_tests_and_benchmark(tmp_path):
    proc = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu_check.sh"), "--dry-run", str(tmp_path / "gc")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "build_ext --inplace" in proc.stdout
    assert "-m pytest tests -m 'gpu and not slow'" in proc.stdout
    assert "-m bench --profile gpu-check" in proc.stdout
    assert not (tmp_path / "gc").exists()  # a dry run writes nothing


@pytest.mark.gpu
def test_gpu_run_reports_peaks_percentages_and_memory(tmp_path):
    args = ["--profile", "gpu-check", "--seqlens", "512,1024", "--tokens", "1024", "--decode-batches", "1",
            "--cache-lens", "1024", "--memory-seqlens", "1024", "--reps", "5", "--sections", "speed,memory",
            "--out", str(tmp_path), "--quiet", "--no-plots"]
    assert cli.main(args) == 0
    with open(tmp_path / "results.json") as f:
        data = json.load(f)
    assert data["meta"]["peaks"]["matmul_bf16_tflops"] > 0 and data["meta"]["peaks"]["copy_gbps"] > 0
    sdpa = [r for r in data["rows"] if r["provider"] == "sdpa"]
    assert sdpa and all(r["status"] == "ok" and r["peak_mem_bytes"] is not None for r in sdpa)
    assert all(r["pct_peak"] > 0 for r in sdpa if r["section"] == "speed")
    for row in data["rows"]:
        results.check_row(row)

"""Runs a profile's sections and collects rows (see :mod:`bench.results` for the schema)."""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Optional

import torch
from tqdm import tqdm

from bench import correctness, memory
from bench import providers as P
from bench.formulas import attention_flops, decode_bytes, per_second
from bench.peaks import measure_cuda_peaks
from bench.profiles import Case, Profile, element_size, memory_cases, speed_cases
from bench.results import environment, make_row
from bench.timing import input_sets_needed, median_ms

SEED = 0


def _metrics(case: Case, dtype: str, ms: float, peaks: Optional[dict]) -> dict:
    flops = attention_flops(case.op, case.batch, case.heads, case.seqlen_q, case.seqlen_k, case.head_dim, case.causal)
    values = {"ms": ms, "flops": flops, "tflops": per_second(flops, ms, 1e12)}
    if case.op == "decode":
        moved = decode_bytes(case.batch, case.seqlen_k, case.heads, case.kv_heads, case.head_dim,
                             element_size(dtype))
        values.update(bytes=moved, gbps=per_second(moved, ms, 1e9))
        if peaks:
            values["pct_peak"] = 100.0 * values["gbps"] / peaks["copy_gbps"]
    elif peaks:
        values["pct_peak"] = 100.0 * values["tflops"] / peaks["matmul_bf16_tflops"]
    return values


def _before(case: Case):
    return P.clear_grads if case.op == "forward_backward" else (lambda inputs: None)


def _failure_row(section, case, provider, device, dtype, exc: BaseException) -> dict:
    if isinstance(exc, P.Unavailable):
        return make_row(section, case, provider.name, device, dtype, "unavailable", str(exc))
    if isinstance(exc, NotImplementedError):
        return make_row(section, case, provider.name, device, dtype, "unsupported", str(exc))
    status = "oom" if P.is_oom(exc) else "error"
    return make_row(section, case, provider.name, device, dtype, status, f"{type(exc).__name__}: {exc}")


def measure_speed(provider: P.Provider, case: Case, prof: Profile, peaks: Optional[dict]) -> dict:
    device, dtype_name = prof.device, prof.dtype
    why = provider.status(device)
    if why:
        return make_row("speed", case, provider.name, device, dtype_name, "unavailable", why)
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator(device=device).manual_seed(SEED)
    input_sets = []
    try:
        input_sets.append(P.make_inputs(provider, case, dtype, device, generator))
        for _ in range(input_sets_needed(device, P.input_bytes(input_sets[0])) - 1):
            input_sets.append(P.make_inputs(provider, case, dtype, device, generator))
        run = lambda inputs: P.call(provider, case, inputs)  # noqa: E731
        grads = [t for inputs in input_sets for t in inputs.values() if t.requires_grad]
        ms, reps = median_ms(run, input_sets, device, prof.warmup, prof.reps, prof.max_case_s, grads)
        values = _metrics(case, dtype_name, ms, peaks)
        if device == "cuda":
            values["peak_mem_bytes"] = memory.cuda_peak_bytes(run, input_sets[0], _before(case))
        return make_row("speed", case, provider.name, device, dtype_name, "ok", reps=reps, **values)
    except Exception as exc:  # every failure becomes a row with its reason
        return _failure_row("speed", case, provider, device, dtype_name, exc)
    finally:
        del input_sets
        if device == "cuda":
            torch.cuda.empty_cache()


def measure_memory(provider: P.Provider, case: Case, prof: Profile) -> dict:
    device, dtype_name = prof.device, prof.dtype
    why = provider.status(device)
    if why:
        return make_row("memory", case, provider.name, device, dtype_name, "unavailable", why)
    if device == "cpu":
        status, reason, peak = memory.cpu_peak_bytes(provider.name, case, dtype_name)
        return make_row("memory", case, provider.name, device, dtype_name, status, reason, peak_mem_bytes=peak)
    inputs = None
    try:
        generator = torch.Generator(device=device).manual_seed(SEED)
        inputs = P.make_inputs(provider, case, getattr(torch, dtype_name), device, generator)
        run = lambda inp: P.call(provider, case, inp)  # noqa: E731
        _before(case)(inputs)
        run(inputs)  # warm-up: workspaces and compiled kernels belong to the baseline
        peak = memory.cuda_peak_bytes(run, inputs, _before(case))
        return make_row("memory", case, provider.name, device, dtype_name, "ok", peak_mem_bytes=peak)
    except Exception as exc:  # every failure becomes a row with its reason
        return _failure_row("memory", case, provider, device, dtype_name, exc)
    finally:
        del inputs
        torch.cuda.empty_cache()


@dataclasses.dataclass
class Options:
    providers: Optional[list[str]] = None  # None: all
    sections: tuple[str, ...] = ("speed", "memory", "correctness")
    progress: bool = True


def select_providers(names: Optional[list[str]]) -> list[P.Provider]:
    known = P.discover()
    if names is None:
        return known
    by_name = {p.name: p for p in known}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"select_providers: unknown providers {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]


def run(prof: Profile, opts: Options) -> tuple[dict, list[dict]]:
    """Runs the profile; returns ``(meta, rows)``."""
    threads = torch.get_num_threads()
    if prof.threads:
        torch.set_num_threads(prof.threads)
    try:
        return _run(prof, opts)
    finally:
        torch.set_num_threads(threads)


def _run(prof: Profile, opts: Options) -> tuple[dict, list[dict]]:
    started = time.perf_counter()
    providers = select_providers(opts.providers)
    meta = environment(prof.device)
    meta["profile"] = dataclasses.asdict(prof)
    meta["providers"] = {p.name: p.status(prof.device) or "available" for p in providers}
    meta["command"] = " ".join(sys.argv)
    peaks = measure_cuda_peaks() if prof.device == "cuda" else None
    meta["peaks"] = peaks

    speed = speed_cases(prof) if "speed" in opts.sections else []
    mem = memory_cases(prof) if "memory" in opts.sections else []
    do_correctness = prof.correctness and "correctness" in opts.sections
    total = (len(speed) + len(mem)) * len(providers) + do_correctness
    progress = tqdm(total=total, disable=not opts.progress, unit="case", dynamic_ncols=True)
    rows = []
    seconds = meta["section_seconds"] = {}
    sweeps = (("speed", speed, lambda provider, case: measure_speed(provider, case, prof, peaks)),
              ("memory", mem, lambda provider, case: measure_memory(provider, case, prof)))
    with progress:
        for section, cases, measure in sweeps:
            section_start = time.perf_counter()
            for case in cases:
                for provider in providers:
                    rows.append(measure(provider, case))
                    progress.set_description_str(f"{section} {case.label} {provider.name}: {rows[-1]['status']}",
                                                 refresh=False)
                    progress.update()
            seconds[section] = round(time.perf_counter() - section_start, 1)
        memory.stop_server()
        if do_correctness:
            section_start = time.perf_counter()
            progress.set_description_str("executing emulated backends on CPU for correctness")
            found, meta["correctness_dtype"] = correctness.run(prof.dtype)
            rows.extend(found)
            progress.update()
            seconds["correctness"] = round(time.perf_counter() - section_start, 1)
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    return meta, rows

"""The result schema (one row per section × case × provider), run metadata, CSV/JSON writers.

Every row carries either numbers (``status == "ok"``) or a non-empty ``reason`` saying why not:
``oom``, ``unavailable`` (missing package, wrong device, API not implemented yet),
``unsupported`` (the provider raised NotImplementedError for this op/option), ``error``
(anything else, with the exception text) or, in the correctness section, ``mismatch``.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
from typing import Optional

import torch

from bench.formulas import FORMULAS
from bench.profiles import Case

SCHEMA_VERSION = 1
SECTIONS = ("speed", "memory", "correctness")
STATUSES = ("ok", "oom", "unavailable", "unsupported", "error", "mismatch")

# field -> type of its value when present (None means "not measured in this row")
FIELDS = {
    "section": str, "op": str, "provider": str, "device": str, "dtype": str,
    "batch": int, "heads": int, "kv_heads": int, "head_dim": int, "seqlen_q": int, "seqlen_k": int,
    "causal": bool, "status": str, "reason": str,
    "ms": float, "reps": int, "flops": float, "bytes": int, "tflops": float, "gbps": float, "pct_peak": float,
    "peak_mem_bytes": int, "max_err": float, "bound": float,
}


def make_row(section: str, case: Case, provider: str, device: str, dtype: str, status: str, reason: str = "",
             **values) -> dict:
    row = dict.fromkeys(FIELDS)
    row.update(section=section, op=case.op, provider=provider, device=device, dtype=dtype,
               batch=case.batch, heads=case.heads, kv_heads=case.kv_heads, head_dim=case.head_dim,
               seqlen_q=case.seqlen_q, seqlen_k=case.seqlen_k, causal=case.causal, status=status, reason=reason)
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"make_row: unknown fields {sorted(unknown)}")
    row.update(values)
    return row


def check_row(row: dict) -> None:
    """Raises ValueError when ``row`` breaks the schema (used by tests and before writing)."""
    if set(row) != set(FIELDS):
        raise ValueError(f"row fields {sorted(row)} != schema {sorted(FIELDS)}")
    for name, kind in FIELDS.items():
        value = row[name]
        if value is not None and not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise ValueError(f"row field {name!r} expected {kind.__name__}, got {value!r}")
    if row["section"] not in SECTIONS or row["status"] not in STATUSES:
        raise ValueError(f"row has section {row['section']!r} / status {row['status']!r}")
    if row["status"] == "ok":
        needed = {"speed": ("ms",), "memory": ("peak_mem_bytes",), "correctness": ("max_err", "bound")}
        missing = [f for f in needed[row["section"]] if row[f] is None]
        if missing:
            raise ValueError(f"ok {row['section']} row lacks {missing}: {row}")
    elif not row["reason"]:
        raise ValueError(f"row with status {row['status']!r} has no reason: {row}")


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not found)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> Optional[float]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    except (ValueError, OSError):
        return None


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken install: recorded as absent
        return None


def environment(device: str) -> dict:
    cores = os.cpu_count()
    ram = _ram_gib()
    machine = {
        "cpu": _cpu_model(), "cores": cores, "ram_gib": round(ram, 1) if ram else None,
        "torch_threads": torch.get_num_threads(), "os": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        machine["gpu"] = props.name
        machine["gpu_memory_gib"] = round(props.total_memory / (1 << 30), 1)
        machine["cuda"] = torch.version.cuda
    line = f"{machine['cpu']}, {cores} cores, {machine['ram_gib']} GiB RAM"
    if device == "cuda":
        line = f"{machine['gpu']} ({machine['gpu_memory_gib']} GiB), CUDA {machine['cuda']}; host " + line
    machine["summary"] = line
    return {
        "schema_version": SCHEMA_VERSION,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
                     "flash_attn": _version("flash_attn"), "attn": _version("attn")},
        "commit": _git_commit(),
        "formulas": FORMULAS,
    }


def write(out_dir: str, meta: dict, rows: list[dict]) -> dict[str, str]:
    """Writes ``results.json`` (meta + rows) and ``results.csv`` (rows); returns their paths."""
    for row in rows:
        check_row(row)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "csv": os.path.join(out_dir, "results.csv")}
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(FIELDS))
        writer.writeheader()
        writer.writerows(rows)
    return paths

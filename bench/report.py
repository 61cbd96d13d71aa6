"""Tables for the terminal and for a README-ready ``summary.md``, from result rows."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterable, Optional

MiB = 1 << 20
_NOT_RUN = ("unavailable", "unsupported")


def fmt(x: float) -> str:
    """Three significant digits without scientific notation for the usual ranges."""
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _title(text: str, markdown: bool) -> str:
    return f"**{text}**" if markdown else text


def table(headers: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
        return lines + ["| " + " | ".join(r) + " |" for r in body]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in body]


def _providers(rows: Iterable[dict]) -> list[str]:
    return list(OrderedDict.fromkeys(r["provider"] for r in rows))


def _shown(rows: list[dict]) -> list[str]:
    """Providers with at least one row that ran (ok, oom or error): they get a column."""
    return [p for p in _providers(rows) if any(r["provider"] == p and r["status"] not in _NOT_RUN for r in rows)]


def _notes(rows: list[dict], shown: list[str], skip: set[str]) -> list[str]:
    """Why a provider has no column, and what went wrong in cells that say error/OOM.

    ``skip``: reasons already given once in the header (providers that cannot run on this device)."""
    notes = OrderedDict()
    for r in rows:
        if r["provider"] not in shown and r["status"] in _NOT_RUN and r["reason"] not in skip:
            notes.setdefault((r["provider"], r["status"], r["reason"]), None)
        elif r["status"] in ("error", "oom"):
            notes.setdefault((r["provider"], r["status"], r["reason"]), None)
    lines = [f"- {p}: {status}: {reason}" for p, status, reason in notes]
    return [""] + lines if lines else []


def _cell(r: Optional[dict], value: str) -> str:
    if r is None:
        return ""
    if r["status"] == "ok":
        return value
    return {"oom": "OOM", "error": "error"}.get(r["status"], "—")


def _speed_cell(r: Optional[dict]) -> str:
    if r is None or r["status"] != "ok":
        return _cell(r, "")
    rate = fmt(r["gbps"]) if r["op"] == "decode" else fmt(r["tflops"])
    if r["pct_peak"] is not None:
        rate += f", {r['pct_peak']:.0f}%"
    return f"{fmt(r['ms'])} ({rate})"


def _grid(rows: list[dict], key, row_label, cell, markdown: bool) -> list[str]:
    shown = _shown(rows)
    keys = list(OrderedDict.fromkeys(key(r) for r in rows))
    index = {(key(r), r["provider"]): r for r in rows}
    body = [[row_label(k)] + [cell(index.get((k, p))) for p in shown] for k in keys]
    return table([""] + shown, body, markdown) if shown else []


def speed_tables(rows: list[dict], markdown: bool, peaks: bool, skip: set[str]) -> list[str]:
    out = []
    unit = "median ms (TFLOP/s" + (", % of measured matmul peak)" if peaks else ")")
    for op in ("forward", "forward_backward"):
        op_rows = [r for r in rows if r["section"] == "speed" and r["op"] == op]
        groups = list(OrderedDict.fromkeys((r["head_dim"], r["causal"], r["heads"]) for r in op_rows))
        for head_dim, causal, heads in groups:
            g = [r for r in op_rows if (r["head_dim"], r["causal"], r["heads"]) == (head_dim, causal, heads)]
            out += ["", _title(f"{op}, head dim {head_dim}, {heads} heads, "
                               f"{'causal' if causal else 'not causal'} — {unit}", markdown), ""]
            out += _grid(g, lambda r: (r["batch"], r["seqlen_q"]), lambda k: f"B={k[0]} S={k[1]}",
                         _speed_cell, markdown)
        if op_rows:
            out += _notes(op_rows, _shown(op_rows), skip)
    dec = [r for r in rows if r["section"] == "speed" and r["op"] == "decode"]
    if dec:
        r0 = dec[0]
        unit = "median ms (GB/s" + (", % of measured copy bandwidth)" if peaks else ")")
        out += ["", _title(f"decode, {r0['heads']} query / {r0['kv_heads']} KV heads, head dim {r0['head_dim']} "
                           f"— {unit}", markdown), ""]
        out += _grid(dec, lambda r: (r["batch"], r["seqlen_k"]), lambda k: f"B={k[0]} L={k[1]}",
                     _speed_cell, markdown)
        out += _notes(dec, _shown(dec), skip)
    return out


def memory_tables(rows: list[dict], markdown: bool, skip: set[str]) -> list[str]:
    out = []
    for op in ("forward", "forward_backward"):
        m = [r for r in rows if r["section"] == "memory" and r["op"] == op]
        if not m:
            continue
        r0 = m[0]
        out += ["", _title(f"peak memory above inputs, {op}, B={r0['batch']} H={r0['heads']} D={r0['head_dim']} "
                           "— MiB", markdown), ""]
        out += _grid(m, lambda r: r["seqlen_q"], lambda k: f"S={k}",
                     lambda r: _cell(r, fmt(r["peak_mem_bytes"] / MiB) if r else ""), markdown)
        out += _notes(m, _shown(m), skip)
    return out


def correctness_table(rows: list[dict], markdown: bool, dtype: Optional[str]) -> list[str]:
    c = [r for r in rows if r["section"] == "correctness"]
    if not c:
        return []
    out = ["", _title(f"Executed on CPU for correctness (emulated backends, {dtype}; times are emulation, "
                      "not speed)", markdown), ""]
    body = []
    for r in c:
        shape = (f"B={r['batch']} L={r['seqlen_k']} H={r['heads']}/{r['kv_heads']}" if r["op"] == "decode"
                 else f"B={r['batch']} S={r['seqlen_q']} H={r['heads']}{' causal' if r['causal'] else ''}")
        if r["status"] in ("ok", "mismatch"):
            body.append([r["provider"], r["op"], f"{shape} D={r['head_dim']}", f"{r['max_err']:.2e}",
                         f"{r['bound']:.2e}", "pass" if r["status"] == "ok" else "FAIL", fmt(r["ms"])])
        else:
            body.append([r["provider"], r["op"], f"{shape} D={r['head_dim']}", "", "", r["status"], ""])
    out += table(["backend", "op", "shape", "max err", "bound", "parity", "emulated ms"], body, markdown)
    reasons = OrderedDict.fromkeys(f"- {r['provider']} {r['op']}: {r['status']}: {r['reason']}" for r in c
                                   if r["status"] not in ("ok",))
    return out + ([""] + list(reasons) if reasons else [])


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def ratios(rows: list[dict]) -> list[str]:
    """Memory naive/fused at the largest size; speed of each provider relative to SDPA."""
    out = []
    for op in ("forward", "forward_backward"):
        m = [r for r in rows if r["section"] == "memory" and r["op"] == op and r["status"] == "ok"]
        if not m:
            continue
        top = max(r["seqlen_q"] for r in m)
        at = {r["provider"]: r["peak_mem_bytes"] for r in m if r["seqlen_q"] == top}
        naive = at.get("naive")
        if naive:
            parts = [f"naive/{p} = {naive / b:.1f}x" for p, b in at.items() if p != "naive" and b > 0]
            out.append(f"- memory, {op}, S={top}: " + ", ".join(parts))
    ok = [r for r in rows if r["section"] == "speed" and r["status"] == "ok"]
    groups = list(OrderedDict.fromkeys((r["op"], r["causal"]) for r in ok))
    if groups:
        out.append("- speed vs sdpa (geometric mean over sizes of sdpa time / provider time; >1 is faster):")
    for op, causal in groups:
        s = [r for r in ok if (r["op"], r["causal"]) == (op, causal)]
        sdpa = {_case_key(r): r["ms"] for r in s if r["provider"] == "sdpa"}
        parts = []
        for p in _providers(s):
            pairs = [sdpa[_case_key(r)] / r["ms"] for r in s if r["provider"] == p and _case_key(r) in sdpa]
            if p != "sdpa" and pairs:
                parts.append(f"{p} {_geomean(pairs):.2f}x")
        if parts:
            mask = "" if op == "decode" else (", causal" if causal else ", not causal")
            out.append(f"  - {op}{mask}: " + ", ".join(parts))
    return out


def _case_key(r: dict) -> tuple:
    return (r["op"], r["batch"], r["heads"], r["kv_heads"], r["head_dim"], r["seqlen_q"], r["seqlen_k"], r["causal"])


def header(meta: dict) -> list[str]:
    prof, v = meta["profile"], meta["versions"]
    lines = [
        f"attn benchmark — profile {prof['name']}, {prof['dtype']} on {prof['device']}",
        f"machine: {meta['machine']['summary']}, {meta['machine']['torch_threads']} torch thread(s) "
        f"(load average at start {_load(meta)})",
        f"torch {v['torch']}, triton {v['triton']}, flash_attn {v['flash_attn']}, attn {v['attn']}, "
        f"commit {meta['commit']}; run took {meta.get('duration_s', '?')} s ("
        + ", ".join(f"{k} {v} s" for k, v in meta.get("section_seconds", {}).items()) + ")",
    ]
    if meta.get("peaks"):
        pk = meta["peaks"]
        lines.append(f"measured peaks: {pk['matmul_bf16_tflops']:.0f} TFLOP/s bf16 matmul, "
                     f"{pk['copy_gbps']:.0f} GB/s copy ({pk['how']})")
    load, cores = meta["machine"].get("load_average"), meta["machine"].get("cores")
    if load and cores and load[0] > 0.5 * cores:
        lines.append(f"note: load average {load[0]:.1f} on {cores} cores at start — other work shared the CPUs, "
                     "so timings are noisy (memory figures are not affected)")
    unavailable = {p: why for p, why in meta.get("providers", {}).items() if why != "available"}
    if unavailable:
        lines.append("not run on this device: " + "; ".join(f"{p} ({why})" for p, why in unavailable.items()))
    lines.append("formulas: " + "; ".join(f"{k} = {f}" for k, f in meta["formulas"].items()))
    return lines


def _load(meta: dict) -> str:
    load = meta["machine"].get("load_average")
    return f"{load[0]:.1f}" if load else "unknown"


def render(meta: dict, rows: list[dict], markdown: bool, plots: Optional[dict] = None) -> str:
    peaks = bool(meta.get("peaks"))
    skip = {why for why in meta.get("providers", {}).values() if why != "available"}
    lines = header(meta)
    if markdown:
        lines = [_title(lines[0], markdown), ""] + [f"- {line}" for line in lines[1:]]
    lines += speed_tables(rows, markdown, peaks, skip)
    lines += memory_tables(rows, markdown, skip)
    summary = ratios(rows)
    if summary:
        lines += ["", _title("Ratios", markdown), ""] + summary
    lines += correctness_table(rows, markdown, meta.get("correctness_dtype"))
    if markdown and plots:
        lines += [""] + [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"

"""PNG plots: speed vs sequence length per op, decode bandwidth vs cache length, memory vs length.

Needs matplotlib (``pip install attn[bench]``); without it the run still writes tables, CSV and JSON.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional


def _series(rows, x_field, y_field):
    """provider -> (xs, ys) over ok rows, sorted by x."""
    out = OrderedDict()
    for r in rows:
        if r["status"] == "ok" and r[y_field] is not None:
            out.setdefault(r["provider"], []).append((r[x_field], r[y_field]))
    return {p: tuple(zip(*sorted(pts))) for p, pts in out.items()}


def _tick(x: int) -> str:
    return f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x)


def _panel(ax, rows, x_field, y_field, title, xlabel, ylabel, log_y=False):
    from matplotlib.ticker import NullLocator

    ticks = set()
    for provider, (xs, ys) in _series(rows, x_field, y_field).items():
        ax.plot(xs, ys, marker="o", label=provider)
        ticks.update(xs)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [_tick(x) for x in sorted(ticks)])
    ax.xaxis.set_minor_locator(NullLocator())  # only the measured lengths are labelled
    if log_y:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def write(out_dir: str, meta: dict, rows: list[dict]) -> tuple[dict[str, str], Optional[str]]:
    """Writes the plots; returns ``({name: file name in out_dir}, None)`` or ``({}, why not)``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return {}, f"plots skipped: matplotlib is not installed ({exc}); pip install 'attn[bench]'"
    prof = meta["profile"]
    subtitle = f"{prof['dtype']}, {meta['machine']['summary']}"
    written = {}

    def grid(n, width=4.6, height=3.6):
        """n panels, at most two per row (readable at README width)."""
        cols = min(n, 2)
        rows_ = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows_, cols, figsize=(width * cols, height * rows_ + 0.6), squeeze=False)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        return fig, axes.flat

    def save(fig, name, title):
        fig.suptitle(f"{title}\n{subtitle}", fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name + ".png"), dpi=110)
        plt.close(fig)
        written[name] = name + ".png"

    for op in ("forward", "forward_backward"):
        op_rows = [r for r in rows if r["section"] == "speed" and r["op"] == op]
        groups = list(OrderedDict.fromkeys((r["head_dim"], r["causal"]) for r in op_rows))
        if not groups:
            continue
        fig, axes = grid(len(groups))
        for ax, (head_dim, causal) in zip(axes, groups):
            g = [r for r in op_rows if (r["head_dim"], r["causal"]) == (head_dim, causal)]
            _panel(ax, g, "seqlen_q", "tflops", f"head dim {head_dim}, {'causal' if causal else 'not causal'}",
                   "sequence length (batch = tokens / seqlen)", "TFLOP/s")
        save(fig, f"speed_{op}", f"{op} speed")

    dec = [r for r in rows if r["section"] == "speed" and r["op"] == "decode"]
    batches = list(OrderedDict.fromkeys(r["batch"] for r in dec))
    if batches:
        fig, axes = grid(len(batches))
        for ax, batch in zip(axes, batches):
            _panel(ax, [r for r in dec if r["batch"] == batch], "seqlen_k", "gbps", f"batch {batch}",
                   "cache length", "GB/s")
        save(fig, "speed_decode", "decode bandwidth")

    mem_ops = [op for op in ("forward", "forward_backward")
               if any(r["section"] == "memory" and r["op"] == op for r in rows)]
    if mem_ops:
        fig, axes = grid(len(mem_ops))
        for ax, op in zip(axes, mem_ops):
            m = [dict(r, mib=r["peak_mem_bytes"] / (1 << 20) if r["peak_mem_bytes"] else None)
                 for r in rows if r["section"] == "memory" and r["op"] == op]
            r0 = m[0]
            _panel(ax, m, "seqlen_q", "mib", f"{op}, B={r0['batch']} H={r0['heads']} D={r0['head_dim']}",
                   "sequence length", "MiB above inputs (log)", log_y=True)
        save(fig, "memory", "peak memory above inputs")
    return written, None

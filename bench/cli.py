"""``python -m bench``: argument parsing and output files."""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Optional

import torch

from bench.formulas import OPS
from bench.profiles import PROFILES
from bench.results import SECTIONS

DEFAULT_OUT = "bench_results"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(allowed):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(x for x in text.split(",") if x)
        bad = [x for x in values if x not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {list(allowed)}, got {text!r}")
        return values
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Speed and memory of attn's backends next to naive attention, torch SDPA and flash-attn.",
    )
    p.add_argument("--profile", choices=sorted(PROFILES),
                   help="sweep to run (default: gpu with a CUDA device, else cpu)")
    p.add_argument("--ops", type=_names(OPS), help=f"subset of {','.join(OPS)}")
    p.add_argument("--providers", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated provider names (see --list); default: all")
    p.add_argument("--seqlens", type=_ints, help="speed sweep sequence lengths")
    p.add_argument("--tokens", type=int, help="speed sweep batch × seqlen (batch = tokens / seqlen)")
    p.add_argument("--hidden", type=int, help="speed sweep heads × head dim")
    p.add_argument("--head-dims", type=_ints, help="speed sweep head dims")
    p.add_argument("--causal", choices=("both", "yes", "no"), help="speed sweep masking")
    p.add_argument("--decode-batches", type=_ints)
    p.add_argument("--cache-lens", type=_ints, help="decode cache lengths")
    p.add_argument("--memory-seqlens", type=_ints, help="memory sweep sequence lengths (batch 1)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--reps", type=int, help="timed calls per case (at most)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the profile's, else torch's)")
    p.add_argument("--sections", type=_names(SECTIONS), default=SECTIONS,
                   help=f"subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--link-prefix", default="",
                   help="prefix for image links in summary.md (e.g. docs/bench/ when pasted into the README)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--list", action="store_true", help="list providers and whether they run here, then exit")
    return p


def _profile(args):
    name = args.profile or ("gpu" if torch.cuda.is_available() else "cpu")
    prof = PROFILES[name]
    if prof.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"python -m bench: profile {name!r} needs a CUDA device and torch.cuda.is_available() is "
                         "False; use --profile cpu")
    overrides = {
        "ops": args.ops, "seqlens": args.seqlens, "tokens": args.tokens, "hidden": args.hidden,
        "head_dims": args.head_dims, "decode_batches": args.decode_batches, "cache_lens": args.cache_lens,
        "memory_seqlens": args.memory_seqlens, "dtype": args.dtype, "reps": args.reps, "threads": args.threads,
        "causal": {"both": (False, True), "yes": (True,), "no": (False,), None: None}[args.causal],
    }
    return dataclasses.replace(prof, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    from bench import plots, report, results, runner

    prof = _profile(args)
    try:
        if args.list:
            for provider in runner.select_providers(args.providers):
                print(f"{provider.name}: {provider.status(prof.device) or 'runs here'}")
            return 0
        meta, rows = runner.run(prof, runner.Options(providers=args.providers, sections=args.sections,
                                                     progress=not args.quiet))
    except ValueError as exc:  # an unknown provider name
        raise SystemExit(f"python -m bench: argument --providers: {exc}") from None
    os.makedirs(args.out, exist_ok=True)
    written, why_no_plots = ({}, "plots skipped (--no-plots)") if args.no_plots else plots.write(args.out, meta, rows)
    meta["plots"] = written or why_no_plots
    paths = results.write(args.out, meta, rows)
    summary = os.path.join(args.out, "summary.md")
    with open(summary, "w") as f:
        links = {name: args.link_prefix + path for name, path in written.items()}
        f.write(report.render(meta, rows, markdown=True, plots=links))
    print(report.render(meta, rows, markdown=False))
    print(f"wrote {paths['csv']}, {paths['json']}, {summary}"
          + "".join(f", {os.path.join(args.out, p)}" for p in written.values()))
    if why_no_plots and not written:
        print(why_no_plots)
    return 0

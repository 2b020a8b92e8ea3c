#!/usr/bin/env python
"""The Galerkin neural operator's speed on one CPU thread: ours against the authors' SRNO and our previous code.

Two settings, each with the same weights in every implementation:

- `paper`: the paper's operator (EDSR 16 x 64, width 256, 16 heads) with the authors' parameter layout filled with
  random values (`tests/reference_srno.py`'s `random_official_state_dict`), loaded into ours with
  `GalerkinNeuralOperator.from_official_state_dict`; a `--paper_lr` px LR image to twice its size.
- `embedded`: the embedded model's operator (the package's trained weights, or `--model`), its weights renamed to the
  authors' layout for their code; one scene window, a `--embedded_lr` px LR image to twice its size. Beside it, the
  embedded model's UNet (one forward pass at the window's output size), as a yardstick of what the CPU does with a
  float32 network on the same thread.

The implementations: `authors` is `tests/reference_srno.py`, a literal implementation of the authors' operator that
computes the whole output at once as they do; `previous` is this package's operator as it was before its tiled
token layout (read from git at `--previous_revision`, skipped where git or that revision is not there); `ours` is the
installed package. Each is run once under `torch.utils.flop_counter.FlopCounterMode` (its own floating-point
operations: matrix products and convolutions; that run is also the warm-up and gives the outputs compared for
parity), then timed in `--repeats` interleaved rounds, so that a busy period of a shared machine hits every
implementation alike. The table gives the best time of the rounds (the median is in the JSON) and GFLOP/s = the
implementation's own FLOPs / its best time; `vs authors` is ours' time over the authors'. Parity is the largest
absolute difference from the authors' output, also relative to the largest absolute value of that output.

Example (the README's figures, about 4 minutes on a busy 2-core machine):

    python benchmarks/operator.py --output operator.json
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import neurop_diff_diffusers
from neurop_diff_diffusers import GalerkinNeuralOperator
from neurop_diff_diffusers.utils import atomic_write_json, package_versions

REPO_ROOT = Path(__file__).resolve().parents[1]
OPERATOR_MODULE = "src/neurop_diff_diffusers/models/neural_operator.py"
#: The last revision with the operator computed per layer on (B, C, H, W) tensors, before the tiled token layout.
PREVIOUS_REVISION = "258bfaeef247d88949c1e9506116d203226cf54e"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper_lr", type=int, default=128, help="LR side of the paper setting (output: twice it)")
    parser.add_argument("--embedded_lr", type=int, default=288, help="LR side of the embedded window (output: x2)")
    parser.add_argument("--model", default=None, help="pipeline folder of the embedded model (default: the package's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of every implementation")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--settings", nargs="+", default=["paper", "embedded"], choices=["paper", "embedded"])
    parser.add_argument("--previous_revision", default=PREVIOUS_REVISION, help="git revision of the previous code")
    parser.add_argument("--skip_previous", action="store_true", help="do not run the previous implementation")
    parser.add_argument("--output", required=True, help="JSON file to write")
    return parser


def _check(args: argparse.Namespace) -> None:
    for name in ("paper_lr", "embedded_lr"):
        if not 8 <= getattr(args, name) <= 1024:
            raise ValueError(f"`{name}` must be in [8, 1024], got {getattr(args, name)}.")
    if not 1 <= args.repeats <= 100:
        raise ValueError(f"`repeats` must be in [1, 100], got {args.repeats}.")
    if not 1 <= args.threads <= 256:
        raise ValueError(f"`threads` must be in [1, 256], got {args.threads}.")


def load_reference() -> types.ModuleType:
    """`tests/reference_srno.py`, imported by path."""
    spec = importlib.util.spec_from_file_location("reference_srno", REPO_ROOT / "tests" / "reference_srno.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_previous(revision: str) -> tuple[type | None, str]:
    """The operator class of ``revision`` (read with git), or ``None`` and why not."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{revision}:{OPERATOR_MODULE}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"git show {revision} failed: {type(err).__name__}"
    source = re.sub(
        r"^from \.\.coordinates import .*$",
        "from neurop_diff_diffusers.coordinates import make_cell, make_coord",
        source,
        flags=re.MULTILINE,
    )
    module = types.ModuleType("previous_neural_operator")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:{OPERATOR_MODULE}", "exec"), module.__dict__)
    return module.GalerkinNeuralOperator, f"git {revision}"


def _lr(side: int) -> torch.Tensor:
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _count(fn: Callable[[], torch.Tensor]) -> tuple[int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out


def measure(runs: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, dict[str, Any]]:
    """FLOPs and output of each run (one call each), then ``repeats`` interleaved timed rounds."""
    results: dict[str, dict[str, Any]] = {}
    outputs = {}
    for name, fn in runs.items():
        flops, outputs[name] = _count(fn)
        results[name] = {"flops": flops, "seconds": []}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            results[name]["seconds"].append(time.perf_counter() - start)
    for name, row in results.items():
        row["best_seconds"] = min(row["seconds"])
        row["median_seconds"] = statistics.median(row["seconds"])
        row["gflops_per_second"] = row["flops"] / 1e9 / row["best_seconds"]
        if "authors" in outputs and name != "unet":
            ref = outputs["authors"]
            diff = (outputs[name].float() - ref.float()).abs().max().item()
            row["max_abs_diff_vs_authors"] = diff
            row["max_rel_diff_vs_authors"] = diff / max(ref.abs().max().item(), 1e-12)
    return results


def _operator_runs(
    ours: GalerkinNeuralOperator,
    official: dict[str, torch.Tensor],
    previous: Any,
    reference: types.ModuleType,
    lr: int,
) -> dict[str, Callable[[], torch.Tensor]]:
    x = _lr(lr)
    size = (2 * lr, 2 * lr)
    heads = ours.config.num_heads
    runs = {"authors": lambda: reference.reference_srno(official, x, *size, heads=heads)}
    if previous is not None:
        runs["previous"] = lambda: previous(x, size).sample
    runs["ours"] = lambda: ours(x, size).sample
    return runs


def run(args: argparse.Namespace) -> dict[str, Any]:
    _check(args)
    saved = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:  # the caller's thread count back afterwards (a test in the same process must not inherit one thread)
        return _measure(args)
    finally:
        torch.set_num_threads(saved)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    reference = load_reference()
    previous_cls, previous_source = (None, "skipped") if args.skip_previous else load_previous(args.previous_revision)
    model_dir = Path(args.model) if args.model else Path(neurop_diff_diffusers.__file__).parent / "weights"
    if not args.model:
        model_dir = model_dir / "neurop-diff-ucmerced"
    report: dict[str, Any] = {
        "config": vars(args),
        "environment": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "versions": package_versions(),
        },
        "previous": previous_source,
        "settings": {},
    }
    with torch.inference_mode():
        if "paper" in args.settings:
            official = reference.random_official_state_dict()
            ours = GalerkinNeuralOperator.from_official_state_dict(official).eval()
            previous = previous_cls.from_official_state_dict(official).eval() if previous_cls else None
            runs = _operator_runs(ours, official, previous, reference, args.paper_lr)
            report["settings"]["paper"] = {
                "lr": args.paper_lr,
                "output": 2 * args.paper_lr,
                "results": measure(runs, args.repeats),
            }
        if "embedded" in args.settings:
            from diffusers import UNet2DModel

            ours = GalerkinNeuralOperator.from_pretrained(model_dir / "neural_operator").eval()
            official = ours.to_official_state_dict()
            previous = previous_cls.from_pretrained(model_dir / "neural_operator").eval() if previous_cls else None
            runs = _operator_runs(ours, official, previous, reference, args.embedded_lr)
            unet = UNet2DModel.from_pretrained(model_dir / "unet").eval()
            side = 2 * args.embedded_lr
            sample = torch.randn(1, unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(1))
            timestep = torch.tensor([500])
            runs["unet"] = lambda: unet(sample, timestep).sample
            report["settings"]["embedded"] = {
                "lr": args.embedded_lr,
                "output": side,
                "results": measure(runs, args.repeats),
            }
    for setting in report["settings"].values():
        results = setting["results"]
        setting["ours_time_over_authors"] = results["ours"]["best_seconds"] / results["authors"]["best_seconds"]
        if "previous" in results:
            setting["ours_time_over_previous"] = results["ours"]["best_seconds"] / results["previous"]["best_seconds"]
        if "unet" in results:
            setting["ours_gflops_over_unet"] = (
                results["ours"]["gflops_per_second"] / results["unet"]["gflops_per_second"]
            )
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"threads: {report['environment']['threads']}; previous: {report['previous']}",
        "| setting | implementation | GFLOP | best s | median s | GFLOP/s | max abs diff vs authors (relative) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, setting in report["settings"].items():
        label = f"{name} {setting['lr']} -> {setting['output']} px"
        for impl, row in setting["results"].items():
            diff = (
                f"{row['max_abs_diff_vs_authors']:.2e} ({row['max_rel_diff_vs_authors']:.1e})"
                if "max_abs_diff_vs_authors" in row
                else ""
            )
            lines.append(
                f"| {label} | {impl} | {row['flops'] / 1e9:.1f} | {row['best_seconds']:.3f} | "
                f"{row['median_seconds']:.3f} | {row['gflops_per_second']:.1f} | {diff} |"
            )
        ratios = [f"ours / authors time {setting['ours_time_over_authors']:.2f}"]
        if "ours_time_over_previous" in setting:
            ratios.append(f"ours / previous time {setting['ours_time_over_previous']:.2f}")
        if "ours_gflops_over_unet" in setting:
            ratios.append(f"ours / UNet GFLOP/s {setting['ours_gflops_over_unet']:.2f}")
        lines.append(f"{name}: " + "; ".join(ratios))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    report = run(args)
    print(format_table(report))
    atomic_write_json(Path(args.output), report)
    return report


if __name__ == "__main__":
    main()

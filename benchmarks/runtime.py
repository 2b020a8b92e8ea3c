#!/usr/bin/env python
"""Seconds per image of NeurOp-Diff at T = 30, 50, 100 denoising steps (the paper's Table 2), three ways:

- `prior_once`: the pipeline as it is: the neural-operator prior computed once per image;
- `authors`: the authors' way: the prior recomputed at every denoising step (`recompute_prior_every_step=True`, same
  output, slower);
- `sr3`: the SR3-style baseline: the same UNet with a bicubic prior (no operator).

All three run in the same process on the same input, one image (batch 1) of `--size` px from an LR of
`size / scale`, after a warm-up call of each, in `--repeats` rounds over every (T, mode), so that a slow period of a
shared machine hits all modes alike; the best time of each is reported (every time is kept in the JSON) and the ratios
are computed from these measurements. The component times (one prior,
one UNet step) are measured too, and `--estimate_only` reports `P + T * U` / `T * (P + U)` / `T * U` from them instead
of the full runs (for sizes or presets too slow to run on a CPU; the table then says "estimated").

CPU by default; `--device cuda --fp16` on a GPU. Example (CPU, a few minutes):

    python benchmarks/runtime.py --pipeline preset:tiny --size 256 --output runtime_tiny.json
    python benchmarks/runtime.py --pipeline preset:paper --size 256 --estimate_only --output runtime_paper_est.json
    python benchmarks/runtime.py --pipeline preset:paper --device cuda --fp16 --output runtime_paper_gpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from neurop_diff_diffusers.evaluation import as_sr3_pipeline
from neurop_diff_diffusers.loading import load_pipeline
from neurop_diff_diffusers.scheduling import noise_level
from neurop_diff_diffusers.utils import atomic_write_json, package_versions

MODES = ("prior_once", "authors", "sr3")
MODE_LABELS = {"prior_once": "prior once", "authors": "authors (prior every step)", "sr3": "SR3 (bicubic prior)"}


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--pipeline", default="preset:tiny", help="preset:tiny, preset:paper, a folder or a hub id")
    parser.add_argument("--size", type=int, default=256, help="output (HR) side in px (the paper: 256)")
    parser.add_argument("--scale", type=float, default=4.0, help="LR side = round(size / scale)")
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 50, 100], help="denoising steps T")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds over all (T, mode); the best time of each is reported"
    )
    parser.add_argument("--estimate_only", action="store_true", help="time the components only and extrapolate")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--fp16", action="store_true", help="float16 models (CUDA only)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", default="runtime.json", help="JSON file to write")
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.size < 16:
        raise ValueError(f"`size` must be >= 16, got {args.size}.")
    if not args.scale >= 1:
        raise ValueError(f"`scale` must be >= 1, got {args.scale}.")
    if not args.steps or min(args.steps) < 1:
        raise ValueError(f"`steps` must be positive ints, got {args.steps}.")
    if args.repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {args.repeats}.")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device`={args.device!r} but CUDA is not available.")
    if args.fp16 and device.type != "cuda":
        raise ValueError("`fp16` needs `--device cuda`.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"`threads` must be >= 1, got {args.threads}.")
    if Path(args.output).is_dir():
        raise ValueError(f"`output` must be a file path, got the folder {args.output!r}.")


def _once(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of one call of `fn` (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Best (minimum) wall-clock seconds of `fn` over `repeats` calls."""
    return min(_once(fn, device) for _ in range(repeats))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and return the report (see the module docstring)."""
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.fp16 else None
    pipeline = load_pipeline(args.pipeline, device=device, torch_dtype=dtype)
    if pipeline.neural_operator is None and ("prior_once" in args.modes or "authors" in args.modes):
        raise ValueError(f"`pipeline` {args.pipeline!r} has no neural operator: only the sr3 mode applies.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the operator is ignored": intended here
        sr3 = as_sr3_pipeline(pipeline)
    lr_side = max(1, round(args.size / args.scale))
    generator = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, lr_side, lr_side, generator=generator)
    size = (args.size, args.size)

    def call(pipe: Any, steps: int, recompute: bool) -> None:
        pipe(
            lr,
            output_size=size,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            recompute_prior_every_step=recompute,
        )

    # Warm-up (allocator, kernels) of every mode, then the components: one prior, one UNet step (best of at least 5
    # calls each).
    call(pipeline, 2, False)
    call(pipeline, 2, True)
    call(sr3, 2, False)
    component_repeats = max(5, args.repeats)
    lr_model = (lr * 2 - 1).to(device)
    prior_seconds = _timed(lambda: pipeline.compute_prior(lr_model, size), device, component_repeats)
    bicubic_seconds = _timed(lambda: sr3.compute_prior(lr_model, size), device, component_repeats)
    unet_dtype = pipeline.unet.dtype
    pad = (-args.size) % pipeline.downsampling_factor
    unet_input = torch.zeros(1, 6, args.size + pad, args.size + pad, device=device, dtype=unet_dtype)
    level = noise_level(pipeline.scheduler.alphas_cumprod.cpu(), 500).to(device=device, dtype=unet_dtype).reshape(1)
    with torch.no_grad():
        unet_seconds = _timed(lambda: pipeline.unet(unet_input, level), device, component_repeats)
    components = {
        "prior_seconds": prior_seconds,
        "bicubic_prior_seconds": bicubic_seconds,
        "unet_step_seconds": unet_seconds,
    }

    estimate = {
        "prior_once": lambda t: prior_seconds + t * unet_seconds,
        "authors": lambda t: t * (prior_seconds + unet_seconds),
        "sr3": lambda t: bicubic_seconds + t * unet_seconds,
    }
    # Rounds: every (T, mode) once per round, so that a slow period of a shared machine hits all modes alike; the
    # best (minimum) time over the rounds is reported, like `timeit`, with every measurement kept in the JSON.
    times: dict[tuple[int, str], list[float]] = {(t, m): [] for t in args.steps for m in args.modes}
    if not args.estimate_only:
        for round_index in range(args.repeats):
            for steps in args.steps:
                for mode in args.modes:
                    pipe = sr3 if mode == "sr3" else pipeline
                    seconds = _once(lambda p=pipe, s=steps, m=mode: call(p, s, m == "authors"), device)
                    times[(steps, mode)].append(seconds)
                    print(
                        f"round {round_index + 1}/{args.repeats} T={steps:4d} {mode:10s} {seconds:9.3f} s", flush=True
                    )
    rows = []
    for steps in args.steps:
        for mode in args.modes:
            measured = times[(steps, mode)]
            rows.append(
                {
                    "steps": steps,
                    "mode": mode,
                    "seconds_per_image": min(measured) if measured else estimate[mode](steps),
                    "all_seconds": measured,
                    "estimated_seconds_per_image": estimate[mode](steps),
                    "measured": bool(measured),
                }
            )

    by = {(r["steps"], r["mode"]): r["seconds_per_image"] for r in rows}
    ratios = []
    for steps in args.steps:
        entry: dict[str, Any] = {"steps": steps}
        if (steps, "prior_once") in by:
            if (steps, "authors") in by:
                entry["authors_over_prior_once"] = by[(steps, "authors")] / by[(steps, "prior_once")]
            if (steps, "sr3") in by:
                entry["prior_once_over_sr3"] = by[(steps, "prior_once")] / by[(steps, "sr3")]
        ratios.append(entry)
    return {
        "benchmark": "runtime",
        "command": " ".join(["python", *sys.argv]),
        "pipeline": args.pipeline,
        "size": args.size,
        "lr_size": lr_side,
        "scale": args.scale,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "dtype": str(pipeline.unet.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "estimate_only": args.estimate_only,
        "scheduler": type(pipeline.scheduler).__name__,
        "versions": package_versions(),
        "components": components,
        "results": rows,
        "ratios": ratios,
    }


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: seconds per image per T and mode, then the ratios."""
    steps = sorted({r["steps"] for r in report["results"]})
    modes = [m for m in MODES if any(r["mode"] == m for r in report["results"])]
    by = {(r["steps"], r["mode"]): r["seconds_per_image"] for r in report["results"]}
    kind = "estimated from components" if report["estimate_only"] else "measured"
    lines = [
        f"{report['pipeline']} at {report['size']}x{report['size']} (LR {report['lr_size']}), {report['device']} "
        f"{report['dtype']}, {report['threads']} threads, seconds per image ({kind})",
        f"components: prior {report['components']['prior_seconds']:.3f} s, UNet step "
        f"{report['components']['unet_step_seconds']:.3f} s, bicubic prior "
        f"{report['components']['bicubic_prior_seconds']:.4f} s",
        "| T | " + " | ".join(MODE_LABELS[m] for m in modes) + " | authors / prior once | prior once / SR3 |",
        "| --- |" + " --- |" * (len(modes) + 2),
    ]
    for t, ratio in zip(steps, report["ratios"]):
        cells = [f"{by[(t, m)]:.3f}" for m in modes]
        a = ratio.get("authors_over_prior_once")
        b = ratio.get("prior_once_over_sr3")
        cells += ["-" if a is None else f"{a:.2f}x", "-" if b is None else f"{b:.2f}x"]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse, validate (ValueError before any work), measure, print the table and write the JSON."""
    args = build_parser().parse_args(argv)
    _check(args)
    report = run(args)
    print(format_table(report))
    atomic_write_json(Path(args.output), report)
    print(f"Wrote {args.output}")
    return report


if __name__ == "__main__":
    main()

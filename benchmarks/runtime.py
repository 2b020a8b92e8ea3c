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

`--versus_authors` measures instead, in one process, a faithful re-implementation of the authors' sampling loop
([`authors_sample`]: the operator recomputed at every step, float32 contiguous models, DDIM with eta 0 over a
uniform sub-sequence of the 2000 steps) at each `--steps`, beside this package's pipeline in each `--configs`
setting `SAMPLER:STEPS[:DTYPE[:cl]]` (e.g. `ddim:50:bfloat16:cl`: DDIM, 50 steps, a bfloat16 UNet in channels-last
memory; `:compile` adds `torch.compile`, its compilation timed apart); the table gives seconds per image and the
ratio to the authors' time at the same T and at T = 50 (the paper's default: time to the paper's quality).

CPU by default; `--device cuda --fp16` on a GPU. Example (CPU, a few minutes):

    python benchmarks/runtime.py --pipeline preset:tiny --size 256 --output runtime_tiny.json
    python benchmarks/runtime.py --pipeline preset:paper --size 256 --estimate_only --output runtime_paper_est.json
    python benchmarks/runtime.py --pipeline preset:paper --device cuda --fp16 --output runtime_paper_gpu.json
    python benchmarks/runtime.py --pipeline preset:paper --versus_authors --steps 50 --repeats 1 \\
        --configs ddim:50 ddim:50:float32:cl ddim:50:bfloat16:cl unipc:20:bfloat16:cl --output versus_authors.json
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

from neurop_diff_diffusers.evaluation.run import as_sr3_pipeline
from neurop_diff_diffusers.pipelines.scheduling import make_scheduler, noise_level
from neurop_diff_diffusers.runtime.loading import load_pipeline
from neurop_diff_diffusers.runtime.optimization import optimize_pipeline, parse_setting
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
    parser.add_argument(
        "--versus_authors",
        action="store_true",
        help="the authors' sampling loop (at each --steps) beside this package in each --configs setting",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["ddim:50", "ddim:50:float32:cl", "ddim:50:bfloat16:cl"],
        help="with --versus_authors: settings SAMPLER:STEPS[:DTYPE[:cl]]",
    )
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
    for text in args.configs:
        setting = parse_setting(text)
        if setting["dtype"] == "float16" and device.type == "cpu":
            raise ValueError(f"`configs`: {text!r} asks float16, which needs `--device cuda`.")
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


@torch.no_grad()
def authors_sample(
    pipeline: Any, lr: torch.Tensor, size: tuple[int, int], steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The authors' sampling loop, written from the method's description: from `y_T ~ N(0, I)`, DDIM with eta 0 over
    the uniform sub-sequence `0, k, 2k, ...` (`k = 2000 // steps`) of the training steps, feeding `sqrt(gamma_t)` as
    the noise level, and **the operator prior recomputed at every step**. Plain tensor arithmetic, no diffusers
    scheduler; the pipeline's modules as they are (call it with a float32, contiguous pipeline for the authors'
    setting). For an epsilon-predicting, non-residual pipeline (the paper's) its output equals
    `pipeline(lr, output_size=size, num_inference_steps=steps, eta=0, output_type="pt")` up to float rounding (a test).

    Args:
        pipeline ([`NeurOpDiffPipeline`]): with a neural operator, `prediction_type` epsilon, not residual.
        lr (`torch.Tensor`): `(B, 3, h, w)` in `[0, 1]`.
        size (`tuple[int, int]`): the output `(height, width)`, multiples of the UNet's downsampling factor.
        steps (`int`): denoising steps T.
        generator (`torch.Generator`, *optional*): the noise's (CPU) generator.

    Returns:
        `torch.Tensor`: `(B, 3, *size)` in `[0, 1]`, float32.
    """
    config = pipeline.scheduler.config
    if pipeline.neural_operator is None or config.prediction_type != "epsilon" or pipeline.residual:
        raise ValueError("`pipeline` must have a neural operator, epsilon prediction and no residual (the paper's).")
    if size[0] % pipeline.downsampling_factor or size[1] % pipeline.downsampling_factor:
        raise ValueError(f"`size` must be multiples of {pipeline.downsampling_factor}, got {size}.")
    device = pipeline.unet.device
    alphas_cumprod = pipeline.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    stride = config.num_train_timesteps // steps
    timesteps = [i * stride for i in range(steps)][::-1]
    lr_model = (lr * 2.0 - 1.0).to(device)
    x = torch.randn((lr.shape[0], 3, *size), generator=generator).to(device)
    for i, t in enumerate(timesteps):
        prior = pipeline.compute_prior(lr_model, size)  # every step, as the authors' code does
        gamma = alphas_cumprod[t]
        gamma_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones_like(gamma)
        eps = pipeline.unet(torch.cat([x, prior], dim=1), gamma.sqrt().expand(x.shape[0])).sample
        x0 = (x - (1 - gamma).sqrt() * eps) / gamma.sqrt()
        x = gamma_prev.sqrt() * x0 + (1 - gamma_prev).sqrt() * eps
    return ((x.clamp(-1, 1) + 1) / 2).float()


def run_versus_authors(args: argparse.Namespace) -> dict[str, Any]:
    """`--versus_authors`: the authors' loop at each `--steps` and this package in each `--configs` setting, one
    process, the same input, `--repeats` rounds over everything (the best time of each kept)."""
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = [parse_setting(c) for c in args.configs]
    authors = load_pipeline(args.pipeline, device=device)  # float32, contiguous: the authors' setting
    lr_side = max(1, round(args.size / args.scale))
    lr = torch.rand(1, 3, lr_side, lr_side, generator=torch.Generator().manual_seed(0))
    size = (args.size, args.size)

    # One pipeline per (precision, memory format, compiled): the same weights, converted once.
    pipelines: dict[tuple, Any] = {}
    compile_seconds: dict[str, float] = {}
    for setting in settings:
        key = (setting["dtype"], setting["channels_last"], setting["compile"])
        if key not in pipelines:
            pipe = load_pipeline(args.pipeline, device=device)
            optimize_pipeline(pipe, dtype=setting["dtype"], channels_last=setting["channels_last"], compile=key[2])
            pipelines[key] = pipe
        setting["pipeline"] = pipelines[key]
        # Built once here, not in the timed calls; pipelines shared by several settings get theirs at each call.
        setting["sampler"] = make_scheduler(setting["scheduler"], pipelines[key].scheduler)

    def ours(setting: dict[str, Any], steps: int | None = None) -> None:
        pipe = setting["pipeline"]
        pipe.scheduler = setting["sampler"]
        pipe(
            lr,
            output_size=size,
            num_inference_steps=steps or setting["steps"],
            eta=0.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )

    def theirs(steps: int) -> None:
        authors_sample(authors, lr, size, steps, torch.Generator().manual_seed(0))

    # Warm-up: 2 steps of each (for a compiled UNet: the compilation, timed).
    theirs(2)
    for setting in settings:
        seconds = _once(lambda s=setting: ours(s, 2), device)
        if setting["compile"] and setting["name"] not in compile_seconds:
            compile_seconds[setting["name"]] = seconds
    jobs = [(f"authors:{t}", lambda t=t: theirs(t)) for t in args.steps]
    jobs += [(s["name"], lambda s=s: ours(s)) for s in settings]
    times: dict[str, list[float]] = {name: [] for name, _ in jobs}
    for round_index in range(args.repeats):
        for name, job in jobs:
            seconds = _once(job, device)
            times[name].append(seconds)
            print(f"round {round_index + 1}/{args.repeats} {name:28s} {seconds:9.3f} s", flush=True)
    authors_best = {t: min(times[f"authors:{t}"]) for t in args.steps}
    reference_steps = 50 if 50 in authors_best else max(authors_best)
    rows = [
        {
            "name": f"authors:{t}",
            "implementation": "authors",
            "scheduler": "ddim",
            "steps": t,
            "dtype": "float32",
            "channels_last": False,
            "compile": False,
            "seconds_per_image": authors_best[t],
            "all_seconds": times[f"authors:{t}"],
        }
        for t in args.steps
    ]
    for s in settings:
        rows.append(
            {
                "name": s["name"],
                "implementation": "neurop_diff_diffusers",
                **{k: s[k] for k in ("scheduler", "steps", "dtype", "channels_last")},
                "compile": s["compile"],
                "seconds_per_image": min(times[s["name"]]),
                "all_seconds": times[s["name"]],
            }
        )
    for row in rows:
        same = authors_best.get(row["steps"]) if row["scheduler"] == "ddim" else None
        row["ratio_to_authors_same_steps"] = None if same is None else row["seconds_per_image"] / same
        row["ratio_to_authors_reference"] = row["seconds_per_image"] / authors_best[reference_steps]
    return {
        **_header("runtime_versus_authors", args, device, lr_side),
        "reference": f"authors:{reference_steps}",
        "compile_seconds": compile_seconds,
        "versions": package_versions(),
        "results": rows,
    }


def _header(name: str, args: argparse.Namespace, device: torch.device, lr_side: int) -> dict[str, Any]:
    """The fields every runtime report starts with: what ran, on which machine."""
    cpu_name, cpu_flags = _cpu_info()
    return {
        "benchmark": name,
        "command": " ".join(["python", *sys.argv]),
        "pipeline": args.pipeline,
        "size": args.size,
        "lr_size": lr_side,
        "scale": args.scale,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name,
        "cpu_flags": cpu_flags,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
    }


def _cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and the vector extensions that matter for bfloat16 (from `/proc/cpuinfo` on Linux;
    `platform.processor()` and no flags elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor(), []

    def field(name: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(name)), "")

    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}
    return field("model name"), sorted(f for f in field("flags").split() if f in wanted)


def format_versus_table(report: dict[str, Any]) -> str:
    """A Markdown table of `--versus_authors`: seconds per image and the ratios to the authors' loop."""
    reference = report["reference"]
    lines = [
        f"{report['pipeline']} at {report['size']}x{report['size']} (LR {report['lr_size']}), {report['device']} "
        f"({report['device_name']}), {report['threads']} threads, best of {report['repeats']}; reference "
        f"`{reference}`",
        "",
        "| implementation | sampler | steps | precision | s / image | / authors (same T) | / authors "
        f"({reference.split(':')[1]} steps) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        precision = (
            r["dtype"] + (" + channels-last" if r["channels_last"] else "") + (" + compile" if r["compile"] else "")
        )
        same = r["ratio_to_authors_same_steps"]
        lines.append(
            f"| {'authors (prior every step)' if r['implementation'] == 'authors' else 'ours (prior once)'} | "
            f"{r['scheduler']} | {r['steps']} | {precision} | {r['seconds_per_image']:.2f} | "
            f"{'-' if same is None else f'{same:.3f}x'} | {r['ratio_to_authors_reference']:.3f}x |"
        )
    if report["compile_seconds"]:
        lines.append("")
        lines.append(
            "torch.compile, first call (compilation): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in report["compile_seconds"].items())
        )
    return "\n".join(lines)


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
        **_header("runtime", args, device, lr_side),
        "dtype": str(pipeline.unet.dtype).replace("torch.", ""),
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
    report = run_versus_authors(args) if args.versus_authors else run(args)
    print(format_versus_table(report) if args.versus_authors else format_table(report))
    atomic_write_json(Path(args.output), report)
    print(f"Wrote {args.output}")
    return report


if __name__ == "__main__":
    main()

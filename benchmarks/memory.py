#!/usr/bin/env python
"""Peak memory of the neural operator and of the pipeline at output sizes from 256 to 2560 px, chunked / unchunked.

Every configuration runs in a fresh Python process, so that one run's peak cannot hide another's:

- CPU: the child's peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) before the run (imports,
  weights, input) and after it; the table shows the increase due to the run and the process's total peak.
- CUDA: `torch.cuda.max_memory_allocated` during the run, minus what was allocated before it (weights, input).

`chunked` uses the operator's streamed evaluation with `--chunk_size` output pixels per chunk (default: the library's
`DEFAULT_CHUNK_SIZE`); `unchunked` evaluates all output pixels at once (`chunk_size = H * W`), which needs memory in
proportion to the output and is only run up to `--max_unchunked_size`. The pipeline runs one denoising step (memory
does not grow with the number of steps). LR side = `round(size / scale)`.

The CPU defaults finish in a few minutes on 2 cores: the paper-size operator at 256, 512 and 1024 px (unchunked up to
512) and the tiny pipeline at 256 and 512 px. On a GPU (`--device cuda`) the defaults are the paper operator and the
paper pipeline at 256 to 2560 px. Examples:

    python benchmarks/memory.py --output memory_cpu.json
    python benchmarks/memory.py --device cuda --fp16 --output memory_gpu.json
    python benchmarks/memory.py --targets operator --sizes 256 2560 --output memory_2560.json   # CPU: ~20 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurop_diff_diffusers.runtime.presets import PRESETS
from neurop_diff_diffusers.utils import atomic_write_json

TARGETS = ("operator", "pipeline")
CPU_DEFAULTS = {"operator": [256, 512, 1024], "pipeline": [256, 512], "max_unchunked_size": 512}
GPU_DEFAULTS = {
    "operator": [256, 512, 1024, 1536, 2048, 2560],
    "pipeline": [256, 512, 1024, 1536, 2048, 2560],
    "max_unchunked_size": 1024,
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="output sides (default: per device)")
    parser.add_argument("--operator_preset", default="paper", choices=("paper", "tiny"), help="operator size")
    parser.add_argument(
        "--pipeline", default=None, help="pipeline: preset:tiny (CPU default), preset:paper (GPU default), a folder"
    )
    parser.add_argument("--scale", type=float, default=4.0, help="LR side = round(size / scale)")
    parser.add_argument("--chunk_size", type=int, default=None, help="output pixels per chunk (default: library's)")
    parser.add_argument(
        "--max_unchunked_size", type=int, default=None, help="largest size run unchunked (default: per device)"
    )
    parser.add_argument(
        "--tile_size", type=int, default=None, help="pipeline tile size (default: the library's; 0 = never tile)"
    )
    parser.add_argument(
        "--pipeline_operator",
        default=None,
        choices=sorted(PRESETS),
        help="replace the pipeline's operator by a preset one (e.g. paper: the paper-size operator with a small UNet)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--fp16", action="store_true", help="float16 models (CUDA only)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per configuration")
    parser.add_argument("--output", default="memory.json", help="JSON file to write")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one configuration, as JSON
    return parser


def _child(config: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this (fresh) process and measure its peak memory."""
    import resource

    import torch

    from neurop_diff_diffusers.runtime.loading import load_pipeline
    from neurop_diff_diffusers.runtime.presets import build_neural_operator

    device = torch.device(config["device"])
    dtype = torch.float16 if config["fp16"] else torch.float32
    size = (config["size"], config["size"])
    lr_side = max(1, round(config["size"] / config["scale"]))
    lr = torch.rand(1, 3, lr_side, lr_side, generator=torch.Generator().manual_seed(0))
    chunk = config["size"] ** 2 if config["mode"] == "unchunked" else config["chunk_size"]
    if config["target"] == "operator":
        model = build_neural_operator(config["operator_preset"]).to(device=device, dtype=dtype).eval()
        x = (lr * 2 - 1).to(device=device, dtype=dtype)

        def work(out_size: tuple[int, int] = size) -> None:
            with torch.no_grad():
                model(x, out_size, chunk_size=chunk)

    else:
        pipeline = load_pipeline(config["pipeline"], device=device, torch_dtype=dtype if config["fp16"] else None)
        if config.get("pipeline_operator"):
            operator = build_neural_operator(config["pipeline_operator"]).to(device=device, dtype=dtype).eval()
            pipeline.register_modules(neural_operator=operator)
        tiles = {} if config.get("tile_size") is None else {"tile_size": config["tile_size"] or None}

        def work(out_size: tuple[int, int] = size) -> None:
            pipeline(lr, output_size=out_size, num_inference_steps=1, output_type="pt", chunk_size=chunk, **tiles)

    work((16, 16))  # warm-up: one-time allocations (kernels, thread pools) are not part of the measurement

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    baseline = rss_mib()
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "baseline_rss_mib": baseline, "peak_rss_mib": rss_mib()}
    result["rss_increase_mib"] = result["peak_rss_mib"] - baseline
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        result.update({"cuda_before_mib": before, "cuda_peak_mib": peak, "cuda_increase_mib": peak - before})
    return result


def _configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    from neurop_diff_diffusers.models import DEFAULT_CHUNK_SIZE

    cuda = args.device.startswith("cuda")
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    max_unchunked = args.max_unchunked_size or defaults["max_unchunked_size"]
    pipeline = args.pipeline or ("preset:paper" if cuda else "preset:tiny")
    configs = []
    for target in args.targets:
        for size in args.sizes or defaults[target]:
            for mode in ("chunked", "unchunked"):
                if mode == "unchunked" and size > max_unchunked:
                    continue
                configs.append(
                    {
                        "target": target,
                        "size": size,
                        "mode": mode,
                        "chunk_size": args.chunk_size or DEFAULT_CHUNK_SIZE,
                        "scale": args.scale,
                        "operator_preset": args.operator_preset,
                        "pipeline": pipeline,
                        "device": args.device,
                        "fp16": args.fp16,
                        "tile_size": args.tile_size,
                        "pipeline_operator": args.pipeline_operator,
                    }
                )
    return configs


def _check(args: argparse.Namespace) -> None:
    if args.sizes is not None and min(args.sizes) < 16:
        raise ValueError(f"`sizes` must be >= 16, got {args.sizes}.")
    if not args.scale >= 1:
        raise ValueError(f"`scale` must be >= 1, got {args.scale}.")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {args.chunk_size}.")
    if args.max_unchunked_size is not None and args.max_unchunked_size < 0:
        raise ValueError(f"`max_unchunked_size` must be >= 0, got {args.max_unchunked_size}.")
    if args.fp16 and not args.device.startswith("cuda"):
        raise ValueError("`fp16` needs `--device cuda`.")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"`device`={args.device!r} but CUDA is not available.")
    elif args.device != "cpu":
        raise ValueError(f"`device` must be cpu or cuda[:i], got {args.device!r}.")
    if args.timeout <= 0:
        raise ValueError(f"`timeout` must be > 0, got {args.timeout}.")
    if Path(args.output).is_dir():
        raise ValueError(f"`output` must be a file path, got the folder {args.output!r}.")


def _run_child(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
        return {"error": tail[0] + killed}
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the measurements."""
    cuda = report["device"].startswith("cuda")
    unit = "CUDA peak increase MiB" if cuda else "RSS increase MiB (process peak)"
    lines = [
        f"device {report['device']} ({report['dtype']}), chunk_size {report['chunk_size']}, scale {report['scale']:g}",
        f"| target | size | mode | {unit} | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["results"]:
        name = row["target"] + (f" ({row['model']})")
        if "error" in row:
            value = f"failed: {row['error']}"
            seconds = "-"
        elif cuda:
            value = f"{row['cuda_increase_mib']:.0f}"
            seconds = f"{row['seconds']:.2f}"
        else:
            value = f"{row['rss_increase_mib']:.0f} ({row['peak_rss_mib']:.0f})"
            seconds = f"{row['seconds']:.2f}"
        lines.append(f"| {name} | {row['size']} | {row['mode']} | {value} | {seconds} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse, validate (ValueError before any work), run every configuration, print the table, write the JSON."""
    args = build_parser().parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))))
        return {}
    _check(args)
    from neurop_diff_diffusers.utils import package_versions

    configs = _configurations(args)
    rows = []
    for config in configs:
        if config["target"] == "operator":
            model = f"{config['operator_preset']} operator"
        else:
            model = config["pipeline"]
            if config["pipeline_operator"]:
                model += f" + {config['pipeline_operator']} operator"
            if config["tile_size"] is not None:
                model += f", tile {config['tile_size'] or 'none'}"
        measured = _run_child(config, args.timeout)
        row = {"target": config["target"], "model": model, "size": config["size"], "mode": config["mode"]}
        row["lr_size"] = max(1, round(config["size"] / config["scale"]))
        row.update(measured)
        rows.append(row)
        status = measured.get("error") or f"{measured.get('rss_increase_mib', 0):.0f} MiB RSS increase"
        print(f"{config['target']:8s} {config['size']:5d} {config['mode']:9s} {status}", flush=True)
    report = {
        "benchmark": "memory",
        "command": " ".join(["python", *sys.argv]),
        "device": args.device,
        "dtype": "float16" if args.fp16 else "float32",
        "chunk_size": configs[0]["chunk_size"] if configs else args.chunk_size,
        "scale": args.scale,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "method": "CUDA max_memory_allocated (increase over weights + input)"
        if args.device.startswith("cuda")
        else "peak RSS (ru_maxrss) of a fresh process per configuration; increase over imports + weights + input",
        "versions": package_versions(),
        "results": rows,
    }
    print(format_table(report))
    atomic_write_json(Path(args.output), report)
    print(f"Wrote {args.output}")
    return report


if __name__ == "__main__":
    main()

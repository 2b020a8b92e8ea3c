#!/usr/bin/env python
"""Time to quality: PSNR / SSIM / NIQE / HF ratio against sampler, steps, precision and seconds per image.

Each configuration `SAMPLER:STEPS[:DTYPE[:cl]]` (e.g. `ddim:50`, `unipc:20:bfloat16:cl`) is one run of the project's
evaluation (`neurop-diff evaluate`, method `neurop_diff` only, so every number comes from the same code as the
README's quality tables) on the same images, scale and seeds; its `results.json` goes to `OUTPUT_DIR/<config>/`. The
table compares each configuration with the first one (the reference, by default DDIM at 50 steps in float32) and
marks those within `--max_psnr_drop` dB PSNR and `--max_ssim_drop` SSIM of it; the fastest of these is the
recommended fast setting. Seconds per image are the evaluation's own (the whole pipeline call, prior included).

Example (the README's table; 2-core CPU, about 40 minutes):

    python benchmarks/samplers.py --data_dir ../shared/data/UCMerced_LandUse \\
        --images_from model_cards/ucmerced_val_21.txt --output_dir ../runs/samplers
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurop_diff_diffusers.cli.evaluate import main as evaluate_main
from neurop_diff_diffusers.runtime.loading import DEFAULT_MODEL_PATH
from neurop_diff_diffusers.runtime.optimization import parse_setting
from neurop_diff_diffusers.utils import atomic_write_json, atomic_write_text

DEFAULT_CONFIGS = (
    "ddim:50",
    "ddim:50:bfloat16:cl",
    "ddim:30",
    "ddim:20",
    "ddim:10",
    "dpm++2m:30",
    "dpm++2m:20",
    "dpm++2m:10",
    "dpm++2m-sde:20",
    "dpm++2m-sde:10",
    "unipc:30",
    "unipc:20",
    "unipc:10",
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--pipeline", default=str(DEFAULT_MODEL_PATH), help="a folder or a hub id (the embedded model)"
    )
    parser.add_argument("--data_dir", required=True, help="a local image folder (one sub-folder per class)")
    parser.add_argument("--images_from", default=None, help="a list of file names to evaluate (else --split)")
    parser.add_argument("--split", default="test", choices=("train", "test", "all"), help="without --images_from")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="SAMPLER:STEPS[:DTYPE[:cl]]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_psnr_drop", type=float, default=0.1, help="dB below the first configuration")
    parser.add_argument("--max_ssim_drop", type=float, default=0.002, help="SSIM below the first configuration")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output_dir", required=True, help="one sub-folder per configuration, summary.{json,md}")
    return parser


def _row(config: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    (result,) = [r for r in report["results"] if r["method"] == "neurop_diff"]
    keys = ("psnr", "ssim", "lpips", "niqe", "hf_ratio", "seconds_per_image", "n_images")
    return {**config, **{k: result.get(k) for k in keys}}


def summarize(rows: list[dict[str, Any]], max_psnr_drop: float, max_ssim_drop: float) -> dict[str, Any]:
    """Differences to the first row, which rows are within the tolerances, and the fastest of them."""
    reference = rows[0]
    for row in rows:
        row["psnr_diff"] = row["psnr"] - reference["psnr"]
        row["ssim_diff"] = row["ssim"] - reference["ssim"]
        row["speedup"] = reference["seconds_per_image"] / row["seconds_per_image"]
        row["within"] = row["psnr_diff"] >= -max_psnr_drop and row["ssim_diff"] >= -max_ssim_drop
    candidates = [r for r in rows[1:] if r["within"]]
    fastest = min(candidates, key=lambda r: r["seconds_per_image"]) if candidates else None
    return {"reference": reference["name"], "recommended": fastest["name"] if fastest else None}


def format_table(rows: list[dict[str, Any]], summary: dict[str, Any], tolerances: tuple[float, float]) -> str:
    """A Markdown table of the rows (the reference first)."""

    def cell(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        f"Reference: `{summary['reference']}`; within: PSNR >= reference - {tolerances[0]:g} dB and SSIM >= "
        f"reference - {tolerances[1]:g}; recommended (fastest within): `{summary['recommended']}`.",
        "",
        "| sampler | steps | precision | PSNR (dB) | SSIM | NIQE | HF ratio | s / image | speed-up | within |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        precision = r["dtype"] + (" + channels-last" if r["channels_last"] else "")
        lines.append(
            f"| {r['scheduler']} | {r['steps']} | {precision} | {r['psnr']:.2f} ({r['psnr_diff']:+.2f}) | "
            f"{r['ssim']:.4f} ({r['ssim_diff']:+.4f}) | {cell(r['niqe'], 2)} | {cell(r['hf_ratio'], 3)} | "
            f"{r['seconds_per_image']:.2f} | {r['speedup']:.1f}x | {'yes' if r['within'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate every configuration (before any work), run them in order, write `summary.json` / `summary.md`."""
    args = build_parser().parse_args(argv)
    configs = [parse_setting(c) for c in args.configs]
    if any(c["compile"] for c in configs):
        raise ValueError("`configs`: ':compile' is measured by benchmarks/runtime.py, not here (quality is the same).")
    if len({c["name"] for c in configs}) != len(configs):
        raise ValueError(f"`configs` has duplicates: {args.configs}.")
    output_dir = Path(args.output_dir)
    rows = []
    for config in configs:
        run_dir = output_dir / config["name"].replace(":", "_")
        results = run_dir / "results.json"
        if results.is_file():  # resume: a finished configuration is not run again
            report = json.loads(results.read_text())
        else:
            argv_eval = [
                *("--pipeline", args.pipeline, "--data_dir", args.data_dir, "--scales", f"{args.scale:g}"),
                *("--methods", "neurop_diff", "--num_inference_steps", str(config["steps"])),
                *("--scheduler", config["scheduler"], "--dtype", config["dtype"], "--seed", str(args.seed)),
                *("--device", args.device, "--no_lpips", "--no_figures", "--no_progress"),
                *(["--channels_last"] if config["channels_last"] else []),
                *(["--images_from", args.images_from] if args.images_from else ["--split", args.split]),
                *("--output_dir", str(run_dir)),
            ]
            report = evaluate_main(argv_eval, prog="neurop-diff evaluate")
        rows.append(_row(config, report))
        print(
            f"{config['name']:24s} {rows[-1]['psnr']:.3f} dB {rows[-1]['ssim']:.4f} "
            f"{rows[-1]['seconds_per_image']:.2f} s/image",
            flush=True,
        )
    summary = summarize(rows, args.max_psnr_drop, args.max_ssim_drop)
    table = format_table(rows, summary, (args.max_psnr_drop, args.max_ssim_drop))
    print(table)
    report = {
        "benchmark": "samplers",
        "command": " ".join(["python", *sys.argv])
        if argv is None
        else "python benchmarks/samplers.py " + " ".join(argv),
        "scale": args.scale,
        "rows": rows,
        **summary,
    }
    atomic_write_json(output_dir / "summary.json", report)
    atomic_write_text(output_dir / "summary.md", table)
    return report


if __name__ == "__main__":
    main()

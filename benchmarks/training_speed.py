#!/usr/bin/env python
"""Training throughput and loss under reduced precision: each training script run with each `--settings` entry.

A setting is Accelerate's `--mixed_precision` (`no`, `bf16`, `fp16`), optionally `:cl` for `--channels_last`. Every
run uses the same seed, data and schedule, so the runs see the same batches and noise: their loss curves are
compared step by step. Throughput is steps per second from the median time of one step after the `--skip`-th (the
wall times of the TensorBoard log: start-up, saving and validation are left out, and a short slow period of a shared
machine does not count; the plain mean from the `--skip`-th step to the last is in the JSON too). "Within noise"
means: the mean loss over each block of `--block` steps differs from the reference's (the first setting) by less than
2 standard errors of that block's reference losses.

Example (2-core CPU, about 20 minutes; the README's training-speed table):

    python benchmarks/training_speed.py --stage 2 --steps 500 --settings no bf16:cl --output_dir ../runs/train-speed
    python benchmarks/training_speed.py --stage 1 --steps 150 --settings no bf16:cl --output_dir ../runs/train-speed

Other arguments are passed on to the training script (e.g. `--lr_patch 8 --num_queries 64` for a small stage 1).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurop_diff_diffusers.runtime.loading import DEFAULT_MODEL_PATH
from neurop_diff_diffusers.utils import atomic_write_json, package_versions

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("no", "bf16", "fp16")


def parse_training_setting(text: str) -> dict[str, Any]:
    """`PRECISION[:cl]` as a dict.

    Example:
        >>> parse_training_setting("bf16:cl")
        {'name': 'bf16:cl', 'mixed_precision': 'bf16', 'channels_last': True}
    """
    parts = text.split(":")
    if parts[0] not in PRECISIONS or len(parts) > 2 or (len(parts) == 2 and parts[1] != "cl"):
        raise ValueError(f"`settings` entries are PRECISION[:cl] with PRECISION in {list(PRECISIONS)}, got {text!r}.")
    return {"name": text, "mixed_precision": parts[0], "channels_last": len(parts) == 2}


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2, help="1: the operator; 2: the diffusion UNet")
    parser.add_argument("--preset", default="small", choices=("paper", "small", "tiny"))
    parser.add_argument("--settings", nargs="+", default=["no", "bf16", "bf16:cl"], help="PRECISION[:cl]")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--skip", type=int, default=20, help="steps left out of the throughput (warm-up)")
    parser.add_argument("--block", type=int, default=50, help="steps per block of the loss comparison")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "UCMerced_LandUse"))
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--neural_operator_path", default=str(DEFAULT_MODEL_PATH / "neural_operator"))
    parser.add_argument("--batch_size", type=int, default=None, help="default: 16 (stage 1), 8 (stage 2)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--crop_size", type=int, default=64, help="stage 2: HR crop side")
    parser.add_argument("--output_dir", required=True, help="one run folder per setting, training_speed.json")
    return parser


def training_command(args: argparse.Namespace, setting: dict[str, Any], output_dir: Path) -> list[str]:
    """The training script's command line for one setting."""
    common = [
        *("--train_data_dir", args.data_dir, "--output_dir", str(output_dir), "--preset", args.preset),
        *("--max_train_steps", str(args.steps), "--mixed_precision", setting["mixed_precision"], "--seed", "0"),
        *("--report_to", "tensorboard", "--checkpointing_steps", "0", "--validation_steps", "0"),
        *("--num_validation_images", "1", "--resolution", str(args.resolution), "--dataloader_num_workers", "0"),
        *(["--channels_last"] if setting["channels_last"] else []),
        *(["--max_train_samples", str(args.max_train_samples)] if args.max_train_samples else []),
    ]
    if args.stage == 1:
        batch = args.batch_size or 16
        script = ROOT / "training" / "train_neural_operator.py"
        extra = ["--train_batch_size", str(batch), "--learning_rate", "4e-4", "--lr_scheduler", "cosine"]
    else:
        batch = args.batch_size or 8
        script = ROOT / "training" / "train_neurop_diff.py"
        extra = [
            *("--neural_operator_path", args.neural_operator_path, "--crop_size", str(args.crop_size)),
            *("--train_batch_size", str(batch), "--learning_rate", "2e-4", "--validation_inference_steps", "2"),
        ]
    return [sys.executable, str(script), *common, *extra, *args.script_args]


def read_losses(run_dir: Path) -> tuple[list[int], list[float], list[float]]:
    """Steps, `train_loss` values and wall times from a run's TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard log under {run_dir}")
    events = []
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "train_loss" in accumulator.Tags()["scalars"]:
            events += accumulator.Scalars("train_loss")
    events.sort(key=lambda e: e.step)
    return [e.step for e in events], [e.value for e in events], [e.wall_time for e in events]


def compare(reference: list[float], other: list[float], block: int) -> list[dict[str, float]]:
    """Per block of `block` steps: both means, their difference and 2 standard errors of the reference's."""
    blocks = []
    for start in range(0, min(len(reference), len(other)) - block + 1, block):
        ref, oth = reference[start : start + block], other[start : start + block]
        mean_ref, mean_oth = sum(ref) / block, sum(oth) / block
        std = math.sqrt(sum((v - mean_ref) ** 2 for v in ref) / (block - 1))
        blocks.append(
            {
                "steps": f"{start + 1}-{start + block}",
                "reference": mean_ref,
                "mean": mean_oth,
                "difference": mean_oth - mean_ref,
                "two_standard_errors": 2 * std / math.sqrt(block),
            }
        )
    return blocks


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate, run every setting (a finished run is read back, not redone), compare, print and write JSON."""
    args, args.script_args = build_parser().parse_known_args(argv)
    settings = [parse_training_setting(s) for s in args.settings]
    if args.steps <= args.skip + 1:
        raise ValueError(f"`steps` must exceed `skip` + 1 = {args.skip + 1}, got {args.steps}.")
    if args.block < 2:
        raise ValueError(f"`block` must be >= 2, got {args.block}.")
    output_dir = Path(args.output_dir)
    rows = []
    for setting in settings:
        run_dir = output_dir / f"stage{args.stage}-{args.preset}-{setting['name'].replace(':', '_')}"
        command = training_command(args, setting, run_dir)
        done = run_dir / ("neural_operator/config.json" if args.stage == 1 else "model_index.json")
        if not done.is_file():
            print(" ".join(command), flush=True)
            subprocess.run(command, check=True, cwd=ROOT)
        steps, losses, walls = read_losses(run_dir)
        first = steps.index(args.skip) if args.skip in steps else 0
        rows.append(
            {
                **setting,
                "command": " ".join(command),
                "steps_per_second": 1.0
                / statistics.median(
                    (w1 - w0) / (s1 - s0)
                    for s0, s1, w0, w1 in zip(steps[first:], steps[first + 1 :], walls[first:], walls[first + 1 :])
                ),
                "steps_per_second_overall": (steps[-1] - steps[first]) / (walls[-1] - walls[first]),
                "mean_loss_last_block": sum(losses[-args.block :]) / len(losses[-args.block :]),
                "losses": losses,
            }
        )
    for row in rows:
        row["speedup"] = row["steps_per_second"] / rows[0]["steps_per_second"]
        row["blocks"] = compare(rows[0]["losses"], row["losses"], args.block)
        row["within_noise"] = all(abs(b["difference"]) <= b["two_standard_errors"] for b in row["blocks"])
    lines = [
        f"stage {args.stage}, preset {args.preset}, {args.steps} steps, {platform.processor() or platform.machine()}",
        "",
        f"| setting | steps / s | speed-up | mean loss, last {args.block} steps | loss within noise of the first |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['steps_per_second']:.3f} | {row['speedup']:.2f}x | "
            f"{row['mean_loss_last_block']:.4f} | {'yes' if row['within_noise'] else 'no'} |"
        )
    print("\n".join(lines))
    report = {
        "benchmark": "training_speed",
        "command": " ".join(["python", "benchmarks/training_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "stage": args.stage,
        "preset": args.preset,
        "steps": args.steps,
        "versions": package_versions(),
        "rows": rows,
        "table": "\n".join(lines),
    }
    atomic_write_json(output_dir / f"training_speed_stage{args.stage}_{args.preset}.json", report)
    return report


if __name__ == "__main__":
    main()

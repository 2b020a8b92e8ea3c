#!/usr/bin/env python
"""The command's defaults (``--preset fast``) against the paper's settings (``--steps 50 --dtype float32``): the wall
time of ``neurop-diff upscale IMG -o OUT --scale S`` for each, alternating in one run, and the outputs' difference.

Each command runs in its own process, as a user runs it (model loading included); the runs alternate so that a
machine shared with other work slows both alike. Prints a table and writes JSON.

Example:
    python benchmarks/defaults.py --image assets/samples/airplane30.png --size 128 --scale 2 --repeats 3 \\
        --output defaults.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SETTINGS = {
    "defaults (--preset fast)": [],
    "--steps 50 --dtype float32": ["--steps", "50", "--dtype", "float32"],
}


def run(image: Path, out: Path, scale: float, flags: list[str], model: str | None) -> float:
    command = [sys.executable, "-m", "neurop_diff_diffusers.cli", "upscale", str(image), "--scale", str(scale)]
    command += [*flags, *([] if model is None else ["--model", model]), "-o", str(out), "--overwrite"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=Path("assets/samples/airplane30.png"))
    parser.add_argument("--size", type=int, default=128, help="the input is resized to SIZE x SIZE first")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="a pipeline folder or preset:NAME (default: the embedded model)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        image = folder / "in.png"
        Image.open(args.image).convert("RGB").resize((args.size, args.size), Image.BICUBIC).save(image)
        times: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(args.repeats):
            for k, (name, flags) in enumerate(SETTINGS.items()):
                times[name].append(run(image, folder / f"out{k}.png", args.scale, flags, args.model))
        outputs = {name: np.asarray(Image.open(folder / f"out{k}.png")) for k, name in enumerate(SETTINGS)}
    fast, paper = (statistics.median(times[name]) for name in SETTINGS)
    a, b = (outputs[name].astype(np.float64) for name in SETTINGS)
    mse = float(np.mean((a - b) ** 2))
    report = {
        "image": str(args.image),
        "size": args.size,
        "scale": args.scale,
        "repeats": args.repeats,
        "seconds": times,
        "median_seconds": {name: statistics.median(values) for name, values in times.items()},
        "ratio_fast_to_paper": fast / paper,
        "psnr_between_outputs_db": float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf"),
    }
    print("| setting | median s | runs |\n| --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"ratio (defaults / paper settings): {report['ratio_fast_to_paper']:.3f}")
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

"""Upscale a sample image shipped in the repo and write the result (the README's first set-up command).

Until the embedded trained model exists, this runs the *untrained* tiny preset: the pipeline, its sizes and its
outputs are real, but the pixels are noise-like. The neural-operator prior alone (`--prior-only`) is also untrained.

Example:
    python examples/demo.py --scale 3.7 --steps 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import PIL.Image
import torch

from neurop_diff_diffusers.cli import save_image_atomic
from neurop_diff_diffusers.presets import build_pipeline

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=REPO / "assets" / "samples" / "airplane30.png")
    parser.add_argument("--scale", type=float, default=3.7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=REPO / "outputs" / "demo.png")
    args = parser.parse_args()

    print("NOTE: this is the randomly initialised 'tiny' preset (untrained): the output shows the pipeline works,")
    print("      not what a trained NeurOp-Diff model produces.")
    pipe = build_pipeline("tiny", seed=0)
    lr = PIL.Image.open(args.input).convert("RGB")
    lr = lr.resize((lr.width // 4, lr.height // 4), PIL.Image.BICUBIC)  # a low-resolution input
    start = time.perf_counter()
    image = pipe(
        lr, scale=args.scale, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed)
    )
    elapsed = time.perf_counter() - start
    save_image_atomic(image.images[0], args.output)
    out = image.images[0]
    print(f"{args.input.name}: {lr.width}x{lr.height} -> x{args.scale} = {out.width}x{out.height}")
    print(f"wrote {args.output} in {elapsed:.2f} s ({args.steps} steps, CPU)")


if __name__ == "__main__":
    main()

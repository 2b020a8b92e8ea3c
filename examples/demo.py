"""Super-resolve a sample UCMerced image with the embedded model and write the result (the README's first command).

The sample (a 256 x 256 image of the UCMerced validation split, USGS public domain) is degraded by the scale with
the paper's bicubic degradation; the embedded NeurOp-Diff model (``load_default_pipeline()``, shipped inside the
package, no download) restores it to 256 x 256. The script writes the LR input, the result and a side-by-side
comparison (bicubic | neural-operator prior | NeurOp-Diff | HR), and prints PSNR / SSIM against the original.

Example:
    python examples/demo.py                      # x4, 25 DDIM steps, the fast precision, outputs/
    python examples/demo.py --dtype float32      # the paper's precision
    python examples/demo.py --scale 3.7 --input assets/samples/harbor31.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import PIL.Image
import torch

from neurop_diff_diffusers import bicubic_prior, load_default_pipeline, optimize_pipeline
from neurop_diff_diffusers.data import bicubic_degrade, pil_to_tensor, preprocess_hr, tensor_to_pil
from neurop_diff_diffusers.defaults import DEFAULT_SETTINGS
from neurop_diff_diffusers.evaluation.figures import make_figure
from neurop_diff_diffusers.metrics.quality import image_metrics, quantize_8bit
from neurop_diff_diffusers.pipelines.scheduling import strength_steps
from neurop_diff_diffusers.utils import save_image_atomic

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=REPO / "assets" / "samples" / "airplane30.png")
    parser.add_argument("--scale", type=float, default=4.0, help="degradation / super-resolution factor (> 1)")
    parser.add_argument("--steps", type=int, default=DEFAULT_SETTINGS["steps"], help="DDIM steps (the fast preset's)")
    parser.add_argument("--strength", type=float, default=None, help="default: the model's default_strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="the UNet's precision (auto: the fastest computed natively here, with channels-last weights, as the "
        "command's default; float32: the paper's)",
    )
    parser.add_argument("--output_dir", type=Path, default=REPO / "outputs")
    args = parser.parse_args()
    if not args.scale > 1:
        parser.error(f"--scale must be > 1, got {args.scale}")

    pipe = load_default_pipeline()
    optimize_pipeline(pipe, dtype=args.dtype, channels_last=args.dtype != "float32")  # the operator stays float32
    pipe.set_progress_bar_config(leave=False)
    hr_image = preprocess_hr(PIL.Image.open(args.input).convert("RGB"), 256)
    hr = pil_to_tensor(hr_image)[None]  # [-1, 1]
    lr = bicubic_degrade(hr, args.scale)  # [-1, 1], on 8-bit levels
    lr01 = (lr + 1) / 2  # the pipeline takes images in [0, 1]
    size = tuple(hr.shape[-2:])

    start = time.perf_counter()
    sr = pipe(
        lr01,
        output_size=size,
        num_inference_steps=args.steps,
        strength=args.strength,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pt",
    ).images
    elapsed = time.perf_counter() - start
    strength = pipe.config.default_strength if args.strength is None else args.strength
    kept = strength_steps(strength, args.steps)
    prior = pipe(lr01, output_size=size, prior_only=True, output_type="pt").images
    bicubic = (bicubic_prior(lr, size) + 1) / 2

    stem = f"{args.input.stem}_x{args.scale:g}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    save_image_atomic(tensor_to_pil(lr[0]), args.output_dir / f"{stem}_lr.png")
    save_image_atomic(tensor_to_pil(sr[0] * 2 - 1), args.output_dir / f"{stem}_neurop_diff.png")

    target = (hr + 1) / 2
    panels = []
    print(f"{args.input.name}: LR {lr.shape[-1]}x{lr.shape[-2]} -> {size[1]}x{size[0]} (x{args.scale:g})")
    for name, image in (("Bicubic", bicubic), ("Neural operator", prior), ("NeurOp-Diff", sr)):
        image = quantize_8bit(image) / 255.0  # evaluated as the 8-bit file it would be written to
        metrics = image_metrics(image, target)
        psnr, ssim = metrics["psnr"].item(), metrics["ssim"].item()
        print(f"  {name:<16} PSNR {psnr:6.2f} dB   SSIM {ssim:.4f}")
        panels.append(
            (f"{name}\n{psnr:.2f} dB / {ssim:.4f}", (image[0].permute(1, 2, 0) * 255).round().byte().numpy())
        )
    panels.append(("HR", (target[0].permute(1, 2, 0) * 255).round().byte().numpy()))
    figure = make_figure(
        panels, title=f"{args.input.stem}  x{args.scale:g}  ({kept} of {args.steps} DDIM steps, strength {strength:g})"
    )
    save_image_atomic(figure, args.output_dir / f"{stem}_comparison.png")
    print(
        f"NeurOp-Diff: {kept} of {args.steps} DDIM steps (strength {strength:g}) in {elapsed:.1f} s on {pipe.device}"
    )
    print(f"wrote {args.output_dir / (stem + '_neurop_diff.png')} and {args.output_dir / (stem + '_comparison.png')}")


if __name__ == "__main__":
    main()

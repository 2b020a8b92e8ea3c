"""The README's "Can I trust the detail?" figure: output | uncertainty | error | classification | HR.

The image is degraded by the scale (the paper's bicubic degradation); the embedded model draws `--samples` seeded
samples (`pipe(..., num_samples=N, flip_samples=True)`); the panels are their mean, the uncertainty map (std over the
samples, pooled as the pipeline does by default), the real error `mean_c |mean - HR|` (both painted by
`uncertainty_heatmap` up to their 99th percentile), and the per-pixel improvement (green) /
omission (blue) / hallucination (red) classification of `trust_metrics.correctness`. Prints the Spearman correlation
between the uncertainty and the error.

Example:
    python examples/trust_figure.py    # parkinglot33, x4, 25 steps, 4 samples: ~2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from scipy.stats import spearmanr

from neurop_diff_diffusers import load_default_pipeline, uncertainty_heatmap, uncertainty_scale
from neurop_diff_diffusers.data import bicubic_degrade, pil_to_tensor, preprocess_hr, to_uint8_levels
from neurop_diff_diffusers.defaults import DEFAULT_SETTINGS
from neurop_diff_diffusers.evaluation.figures import make_figure
from neurop_diff_diffusers.evaluation.methods import image_seed
from neurop_diff_diffusers.metrics.trust import correctness, correctness_map_image, upsample_lr
from neurop_diff_diffusers.utils import save_image_atomic

REPO = Path(__file__).resolve().parents[1]


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = REPO.parent / "shared" / "data" / "UCMerced_LandUse" / "parkinglot" / "parkinglot33.tif"
    parser.add_argument("--input", type=Path, default=default)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=DEFAULT_SETTINGS["steps"], help="the fast preset's")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flip-samples", action="store_true", help="seeded samples only (flip_samples=False)")
    parser.add_argument("--output", type=Path, default=Path("outputs/trust_figure.png"))
    args = parser.parse_args()

    with PIL.Image.open(args.input) as image:
        hr = pil_to_tensor(preprocess_hr(image.convert("RGB"), 256)).unsqueeze(0)
    lr = bicubic_degrade(hr, args.scale)
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(image_seed(args.seed, args.input.name, args.scale))
    out = pipe(to_uint8_levels(lr), output_size=(256, 256), num_inference_steps=args.steps,
               num_samples=args.samples, flip_samples=not args.no_flip_samples, generator=generator,
               output_type="pt")  # fmt: skip
    mean = (out.images[0] * 255).round() / 255
    hr01 = (hr[0] + 1) / 2
    error = (mean - hr01).abs().mean(0).numpy()
    spread = out.uncertainty[0].numpy()
    result = correctness(mean, hr01, upsample_lr(((lr[0] + 1) / 2).double(), (256, 256)))
    top_spread, top_error = uncertainty_scale(spread), uncertainty_scale(error)
    shares = " / ".join(f"{100 * v:.0f}%" for v in result.fractions.values())
    panels = [
        (f"NeurOp-Diff x{args.scale:g}\nmean of {args.samples} samples", _to_uint8(mean)),
        (f"uncertainty (std)\n0 .. {top_spread:.3f}", uncertainty_heatmap(spread, top_spread)),
        (f"error |mean - HR|\n0 .. {top_error:.3f}", uncertainty_heatmap(error, top_error)),
        (f"impr / omis / hall\n{shares}", correctness_map_image(result, hr01)),
        ("HR", _to_uint8(hr01)),
    ]
    title = f"{args.input.stem}, x{args.scale:g}, {args.steps} steps, seed {args.seed}"
    save_image_atomic(make_figure(panels, title=title), args.output)
    rho = float(spearmanr(spread.ravel(), error.ravel()).statistic)
    print(f"wrote {args.output}; Spearman(uncertainty, error) = {rho:.3f}; classification {result.fractions}")


if __name__ == "__main__":
    main()

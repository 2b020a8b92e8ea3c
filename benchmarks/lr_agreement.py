#!/usr/bin/env python
"""Agreement of the outputs with their LR, with and without back-projection; the uncertainty map against baselines.

For each image: HR = `preprocess_hr(image, 256)`, LR = `bicubic_degrade(HR, scale)` (the evaluation's protocol); the
bicubic upsampling, the operator's prior and the pipeline's output without back-projection (the paper; noise seeded by
`image_seed(seed, file name, scale)`), then each of them back-projected onto the LR for each `--back_projection` count
(`data_consistency.back_project` of the 8-bit output; for the pipeline, what `pipe(..., data_consistency_steps=K)`
does, up to the clamping of the unrounded sample). Each is scored on 8-bit levels: LR agreement (`lr_l1_255`: mean
|downsampled output - LR| on 0..255, the training degradation), PSNR / SSIM, HF ratio, NIQE (when scikit-video is
installed) and the trust metrics (`trust_metrics.trust_metrics`). With `--uncertainty N`: also `pipe(...,
num_samples=N)` (same seed, the pipeline's default back-projection; with `--uncertainty_modes seeds flips` also with
`flip_samples=True`) and the Spearman correlation between its uncertainty map, pooled at each sigma of `SIGMAS`, and
its per-pixel error `mean_c |mean - HR|` (how well the map predicts the real error), beside three baselines that
need no sampling (`|output - bicubic|`, the output's gradient magnitude, `|operator's prior - output|`, each pooled
like the map), and the coverage of the model's calibrated 90 % bound (`uncertainty_calibration`) where it applies.
Bicubic rows are floors (their figures hold by construction), and so is the training-kernel LR agreement of any
back-projected row; `lr_l1_255_bilinear` measures the agreement with an independent kernel.

    python benchmarks/lr_agreement.py --data_dir ../shared/data/UCMerced_LandUse \\
        --images_from model_cards/ucmerced_val_21.txt --output lr_agreement.json     # ~15 min on 2 CPU cores

The held-out UCMerced split (`<class>28`-`34`, 147 images) is `--images_from model_cards/ucmerced_val_147.txt`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from neurop_diff_diffusers.data import bicubic_degrade, pil_to_tensor, preprocess_hr, to_uint8_levels
from neurop_diff_diffusers.evaluation.methods import image_seed
from neurop_diff_diffusers.file_safety import MAX_JSON_BYTES, read_text_no_follow
from neurop_diff_diffusers.metrics.quality import hf_energy_ratio, niqe, niqe_available, psnr, ssim, to_unit_levels
from neurop_diff_diffusers.metrics.trust import lr_agreement, trust_metrics
from neurop_diff_diffusers.pipelines import bicubic_prior
from neurop_diff_diffusers.pipelines.data_consistency import back_project, check_back_projection_steps
from neurop_diff_diffusers.pipelines.uncertainty import DEFAULT_UNCERTAINTY_SIGMA, pool_uncertainty
from neurop_diff_diffusers.pipelines.uncertainty_calibration import ERROR_BOUND_KEY, bound_coverage, error_bound_factor
from neurop_diff_diffusers.runtime.loading import load_pipeline
from neurop_diff_diffusers.utils import atomic_write_json

#: The pooling sigmas (output pixels) at which the uncertainty map is scored; 2.0 is the pipeline's default.
SIGMAS = (0.0, 1.0, 2.0, 3.0)
COLUMNS = ("lr_l1_255", "lr_l1_255_bilinear", "shift", "psnr", "ssim", "hf_ratio", "niqe", "spectral_angle",
           "synthesis", "classified", "improvement", "omission", "hallucination", "hallucination_all")  # fmt: skip
#: Rows whose figures hold by construction, printed as floors: bicubic (all omission, synthesis 0) and anything
#: back-projected (its training-kernel LR agreement is what back-projection minimises; lr_l1_255_bilinear is not).
FLOORS = ("bicubic",)
#: The maps the uncertainty map must beat at predicting the error (each pooled like the map).
BASELINES = ("abs_output_minus_bicubic", "output_gradient", "abs_prior_minus_output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=None, help="folder, hub id or preset:NAME (default: the embedded model)")
    parser.add_argument("--data_dir", required=True, help="the folder the image list is relative to")
    parser.add_argument("--images_from", required=True, help="a text file, one image path per line")
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--back_projection", type=int, nargs="+", default=[10], help="iteration counts to compare")
    parser.add_argument("--uncertainty", type=int, default=None, help="samples of the uncertainty map (2-64)")
    parser.add_argument(
        "--uncertainty_modes",
        nargs="+",
        choices=("seeds", "flips"),
        default=["seeds"],
        help="seeds: N seeded samples; flips: also flip_samples=True (sample k on the input flipped by k %% 4)",
    )
    parser.add_argument("--output", required=True, help="the JSON file written")
    return parser


def _score(x: torch.Tensor, lr: torch.Tensor, hr_unit: torch.Tensor, scale: float, with_niqe: bool) -> dict:
    unit = to_unit_levels(x)
    trust = trust_metrics(unit[0], to_unit_levels(lr)[0], hr_unit[0])
    return {
        "lr_l1_255": lr_agreement(unit * 2 - 1, lr),
        "psnr": float(psnr(unit, hr_unit)[0]),
        "ssim": float(ssim(unit, hr_unit)[0]),
        "hf_ratio": hf_energy_ratio(unit[0], hr_unit[0], scale),
        "niqe": niqe(unit[0]) if with_niqe else None,
        **{k: trust[k] for k in COLUMNS if k in trust and k != "lr_l1_255"},
    }


def _uncertainty(pipe: Any, lr: torch.Tensor, hr: torch.Tensor, args: argparse.Namespace, name: str) -> dict:
    """Per sampling mode: the Spearman correlation of the map (pooled at each of `SIGMAS`) with `mean_c |mean - HR|`,
    the map's mean and the mean's PSNR."""
    from scipy.stats import spearmanr

    rows = {}
    for mode in args.uncertainty_modes:
        generator = torch.Generator().manual_seed(image_seed(args.seed, name, args.scale))
        out = pipe(to_uint8_levels(lr), output_size=tuple(hr.shape[-2:]), num_inference_steps=args.steps,
                   num_samples=args.uncertainty, flip_samples=mode == "flips", uncertainty_sigma=0,
                   generator=generator, output_type="pt")  # fmt: skip
        hr_unit = (hr[0] + 1) / 2
        mean = out.images[0]
        error = (mean - hr_unit).abs().mean(0).flatten().numpy()
        maps = {sigma: pool_uncertainty(out.uncertainty, sigma)[0].flatten().numpy() for sigma in SIGMAS}
        size = tuple(hr.shape[-2:])
        bicubic = ((bicubic_prior(lr, size)[0] + 1) / 2).clamp(0, 1)
        prior = ((pipe.compute_prior(lr, size)[0] + 1) / 2).clamp(0, 1)
        gy, gx = torch.gradient(mean, dim=(-2, -1))
        raw = {
            "abs_output_minus_bicubic": (mean - bicubic).abs().mean(0),
            "output_gradient": (gy.square() + gx.square()).sqrt().mean(0),
            "abs_prior_minus_output": (prior - mean).abs().mean(0),
        }
        baselines = {
            name: float(spearmanr(pool_uncertainty(m[None], DEFAULT_UNCERTAINTY_SIGMA)[0].flatten(), error).statistic)
            for name, m in raw.items()
        }
        factor = error_bound_factor(pipe.config.get(ERROR_BOUND_KEY), args.uncertainty, args.scale, args.steps)
        default_map = maps[DEFAULT_UNCERTAINTY_SIGMA]
        rows[mode] = {
            "spearman": {str(sigma): float(spearmanr(spread, error).statistic) for sigma, spread in maps.items()},
            "spearman_baselines": baselines,
            "coverage_90": None if factor is None else bound_coverage(error, default_map, factor),
            "mean": float(maps[0].mean()),
            "psnr": float(psnr(to_unit_levels(out.images * 2 - 1), hr_unit[None])[0]),
        }
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    for count in args.back_projection:
        check_back_projection_steps(count, "back_projection")
    if args.steps < 1 or args.scale <= 1:
        raise ValueError(f"`steps` must be >= 1 and `scale` > 1, got {args.steps} and {args.scale}.")
    listing = read_text_no_follow(args.images_from, MAX_JSON_BYTES, "`images_from`")  # budgeted, no link / FIFO
    names = [line.strip() for line in listing.splitlines() if line.strip()]
    files = [Path(args.data_dir) / name for name in names][: args.max_images]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"`images_from` names files that do not exist: {missing[:3]}")
    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    with_niqe = niqe_available() and args.resolution >= 192
    rows = []
    for file in files:
        with PIL.Image.open(file) as image:
            hr = pil_to_tensor(preprocess_hr(image.convert("RGB"), args.resolution)).unsqueeze(0)
        lr, hr_unit, size = bicubic_degrade(hr, args.scale), to_unit_levels(hr), tuple(hr.shape[-2:])
        start = time.perf_counter()
        prior = pipe.compute_prior(lr, size).clamp(-1, 1)
        generator = torch.Generator().manual_seed(image_seed(args.seed, file.name, args.scale))
        out = pipe(to_uint8_levels(lr), output_size=size, num_inference_steps=args.steps, generator=generator,
                   data_consistency_steps=0, output_type="pt").images * 2 - 1  # fmt: skip
        variants = {"bicubic": bicubic_prior(lr, size).clamp(-1, 1), "operator": prior, "pipeline": out}
        for name in ("bicubic", "operator", "pipeline"):
            variants.update({f"{name}+bp{k}": back_project(variants[name], lr, k) for k in args.back_projection})
        row = {"image": file.name, "seconds": time.perf_counter() - start}
        row.update({name: _score(x, lr, hr_unit, args.scale, with_niqe) for name, x in variants.items()})
        if args.uncertainty is not None:
            row["uncertainty"] = _uncertainty(pipe, lr, hr, args, file.name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    methods = [k for k in rows[0] if k not in ("image", "seconds", "uncertainty")]
    summary = {}
    for method in methods:
        summary[method] = {}
        for column in COLUMNS:
            values = [r[method][column] for r in rows if r[method][column] is not None]
            summary[method][column] = sum(values) / len(values) if values else None
    print(f"| {len(rows)} images, x{args.scale:g}, {args.steps} steps | " + " | ".join(COLUMNS) + " |")
    for method, values in summary.items():
        cells = ["n/a" if v is None else f"{v:.4f}" for v in values.values()]
        floor = " (floor: by construction)" if method.split("+")[0] in FLOORS else ""
        print(f"| {method}{floor} | " + " | ".join(cells) + " |")
    print("lr_l1_255 of a +bp row is what back-projection minimises (by construction); lr_l1_255_bilinear is not.")
    if args.uncertainty is not None:
        summary["uncertainty"] = {}
        for mode in args.uncertainty_modes:
            entry = summary["uncertainty"][mode] = {}
            for sigma in map(str, SIGMAS):
                rhos = [r["uncertainty"][mode]["spearman"][sigma] for r in rows]
                entry[f"sigma_{sigma}"] = {"spearman_mean": sum(rhos) / len(rhos), "spearman_min": min(rhos)}
            entry["psnr_of_mean"] = sum(r["uncertainty"][mode]["psnr"] for r in rows) / len(rows)
            entry["baselines"] = {
                name: sum(r["uncertainty"][mode]["spearman_baselines"][name] for r in rows) / len(rows)
                for name in BASELINES
            }
            covered = [r["uncertainty"][mode]["coverage_90"] for r in rows]
            entry["coverage_90"] = None if None in covered else sum(covered) / len(covered)
            print(f"uncertainty ({mode}, N = {args.uncertainty}): Spearman with |mean - HR| by pooling sigma: {entry}")
    report = {"config": vars(args), "summary": summary, "per_image": rows}
    atomic_write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Calibrate the uncertainty map into a 90 % error bound, and check it on held-out images (not in the paper).

Three steps (see `neurop_diff_diffusers.pipelines.uncertainty_calibration`):

- ``collect``: for each image of a list and each scale, HR = the centre ``--crop`` px of `preprocess_hr(image, 256)`,
  LR = `bicubic_degrade(HR, scale)` (the evaluation's protocol), ``pipe(LR, num_samples=N, uncertainty_sigma=0)``
  (the model's defaults otherwise: flips, back-projection; noise seeded by `image_seed(seed, name, scale)`), and one
  ``.npz`` per image and scale: the raw spread, the error ``mean_c |mean - HR|``, and the three baselines a map must
  beat (``|output - bicubic|``, the output's gradient magnitude, ``|operator's prior - output|``). Resumable: files
  already there are kept.
- ``fit``: the split-conformal factor of the maps (pooled at ``--sigma``) over the pixels of the collected training
  images, per scale; with ``--write_model_index FOLDER`` it is stored in that model's ``model_index.json``.
- ``evaluate``: on collected held-out images, the coverage of ``k * map`` (overall, per class, per scale) and the
  Spearman correlation of the map and of each baseline with the error (per image, then averaged).

    python training/calibrate_uncertainty.py collect --data_dir ../shared/data/UCMerced_LandUse \\
        --images_from model_cards/ucmerced_train_21.txt --scales 2 3 4 --out runs/calibration/train
    python training/calibrate_uncertainty.py fit --collected runs/calibration/train --output fit.json \\
        --write_model_index src/neurop_diff_diffusers/weights/neurop-diff-ucmerced
    python training/calibrate_uncertainty.py collect ... --images_from model_cards/ucmerced_val_147.txt --scales 4 \\
        --out runs/calibration/val
    python training/calibrate_uncertainty.py evaluate --collected runs/calibration/val --output coverage.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from neurop_diff_diffusers.data import bicubic_degrade, pil_to_tensor, preprocess_hr, to_uint8_levels
from neurop_diff_diffusers.defaults import DEFAULT_SETTINGS, DTYPE_CHOICES
from neurop_diff_diffusers.evaluation.methods import image_seed
from neurop_diff_diffusers.file_safety import MAX_JSON_BYTES, read_text_no_follow
from neurop_diff_diffusers.pipelines import bicubic_prior
from neurop_diff_diffusers.pipelines.uncertainty import DEFAULT_UNCERTAINTY_SIGMA, pool_uncertainty
from neurop_diff_diffusers.pipelines.uncertainty_calibration import (
    BOUND_COVERAGE,
    ERROR_BOUND_KEY,
    bound_coverage,
    check_error_bound,
    conformal_factor,
    merge_calibration,
    pixel_error,
)
from neurop_diff_diffusers.runtime.loading import load_pipeline
from neurop_diff_diffusers.runtime.optimization import optimize_pipeline
from neurop_diff_diffusers.utils import atomic_write, atomic_write_json

#: The maps compared with the error: the uncertainty map and the three baselines.
MAPS = ("uncertainty", "abs_output_minus_bicubic", "output_gradient", "abs_prior_minus_output")


def _channel_mean_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean(dim=0)


def _gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` -> ``(H, W)``: the channel mean of the central-difference gradient's magnitude."""
    gy, gx = torch.gradient(x, dim=(-2, -1))
    return (gy.square() + gx.square()).sqrt().mean(dim=0)


def _file_key(name: str, scale: float) -> str:
    return f"{name.replace('/', '__')}_x{scale:g}.npz"


def collect(args: argparse.Namespace) -> None:
    listing = read_text_no_follow(args.images_from, MAX_JSON_BYTES, "`images_from`")  # budgeted, no link / FIFO
    names = [line.strip() for line in listing.splitlines() if line.strip()]
    names = names[: args.max_images]
    files = [Path(args.data_dir) / name for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"`images_from` names files that do not exist: {missing[:3]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = optimize_pipeline(load_pipeline(args.pipeline), dtype=args.dtype, channels_last=args.channels_last)
    pipe.set_progress_bar_config(disable=True)
    settings = {
        "num_samples": args.num_samples,
        "num_inference_steps": args.steps,
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "channels_last": args.channels_last,
        "flip_samples": True,
        "data_consistency_steps": pipe.config.get("default_data_consistency_steps", 0),
        "crop": args.crop,
        "seed": args.seed,
    }
    atomic_write_json(out / "settings.json", settings)
    for scale in args.scales:
        for name, file in zip(names, files):
            target = out / _file_key(name, scale)
            if target.exists():
                continue
            start = time.perf_counter()
            with PIL.Image.open(file) as image:
                hr = pil_to_tensor(preprocess_hr(image.convert("RGB"), 256)).unsqueeze(0)
            top = (hr.shape[-2] - args.crop) // 2
            left = (hr.shape[-1] - args.crop) // 2
            hr = hr[..., top : top + args.crop, left : left + args.crop]
            lr = bicubic_degrade(hr, scale)
            size = tuple(hr.shape[-2:])
            generator = torch.Generator().manual_seed(image_seed(args.seed, name, scale))
            result = pipe(to_uint8_levels(lr), output_size=size, num_inference_steps=args.steps,
                          num_samples=args.num_samples, uncertainty_sigma=0, generator=generator,
                          output_type="pt")  # fmt: skip
            output = result.images[0].double()
            hr_unit = (hr[0].double() + 1) / 2
            bicubic = ((bicubic_prior(lr, size)[0].double() + 1) / 2).clamp(0, 1)
            prior = ((pipe.compute_prior(lr, size)[0].double() + 1) / 2).clamp(0, 1)
            arrays = {
                "error": pixel_error(output, hr_unit).astype(np.float32),
                "uncertainty": result.uncertainty[0].numpy().astype(np.float32),
                "abs_output_minus_bicubic": _channel_mean_abs(output, bicubic).numpy().astype(np.float32),
                "output_gradient": _gradient_magnitude(output).numpy().astype(np.float32),
                "abs_prior_minus_output": _channel_mean_abs(prior, output).numpy().astype(np.float32),
            }
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            data = buffer.getvalue()
            atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))  # noqa: B023 (called at once)
            seconds = time.perf_counter() - start
            print(json.dumps({"image": name, "scale": scale, "seconds": round(seconds, 1)}), flush=True)


def _load(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob("*.npz")):
        stem = path.name[: -len(".npz")]
        name, scale = stem.rsplit("_x", 1)
        with np.load(path) as data:
            records.append({"image": name.replace("__", "/"), "scale": float(scale), **{k: data[k] for k in data}})
    if not records:
        raise ValueError(f"`collected` {folder} holds no collected .npz file.")
    return records


def _pooled(array: np.ndarray, sigma: float) -> np.ndarray:
    return pool_uncertainty(torch.from_numpy(array)[None].float(), sigma)[0].double().numpy()


def fit(args: argparse.Namespace) -> dict[str, Any]:
    records = _load(Path(args.collected))
    settings = json.loads((Path(args.collected) / "settings.json").read_text())
    by_scale: dict[float, list[dict[str, Any]]] = {}
    for record in records:
        by_scale.setdefault(record["scale"], []).append(record)
    per_scale = {}
    for scale, rows in sorted(by_scale.items()):
        errors = np.concatenate([r["error"].ravel() for r in rows])
        maps = np.concatenate([_pooled(r["uncertainty"], args.sigma).ravel() for r in rows])
        per_scale[scale] = {"factor": conformal_factor(errors, maps), "images": len(rows), "pixels": errors.size}
    scales = sorted(per_scale)
    # One range per calibrated scale: its upper end the midpoint to the next one (the last: the scale itself + 0.5).
    bounds = [1.0] + [(a + b) / 2 for a, b in zip(scales, scales[1:])] + [scales[-1] + 0.5]
    entry = {
        "coverage": BOUND_COVERAGE,
        "num_samples": settings["num_samples"],
        "uncertainty_sigma": args.sigma,
        "flip_samples": settings["flip_samples"],
        "num_inference_steps": settings["num_inference_steps"],
        "factors": [
            {"scales": [bounds[i], bounds[i + 1]], "factor": round(per_scale[s]["factor"], 4)}
            for i, s in enumerate(scales)
        ],
        "fitted_on": args.fitted_on,
    }
    check_error_bound(entry)
    report = {"entry": entry, "per_scale": {f"{s:g}": v for s, v in per_scale.items()}, "settings": settings}
    print(json.dumps(report, indent=1))
    if args.output:
        atomic_write_json(args.output, report)
    if args.write_model_index:
        index_path = Path(args.write_model_index) / "model_index.json"
        index = json.loads(index_path.read_text())
        index[ERROR_BOUND_KEY] = merge_calibration(index.get(ERROR_BOUND_KEY), entry)
        atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2) + "\n"))
    return report


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from neurop_diff_diffusers.pipelines.uncertainty_calibration import error_bound_factor

    records = _load(Path(args.collected))
    settings = json.loads((Path(args.collected) / "settings.json").read_text())
    if args.fit:
        entry = json.loads(Path(args.fit).read_text())["entry"]
    else:
        entry = load_pipeline(args.pipeline).config.get(ERROR_BOUND_KEY)
    entry = check_error_bound(entry)
    if isinstance(entry, list):  # the model's calibration for these maps' N and steps, else its first
        pair = (settings["num_samples"], settings["num_inference_steps"])
        entry = next((e for e in entry if (e["num_samples"], e["num_inference_steps"]) == pair), entry[0])
    if entry is None:
        raise ValueError("no calibration: give --fit FIT.json or a pipeline with one in its model_index.json")
    if settings["num_inference_steps"] != entry["num_inference_steps"]:  # a transfer check: say so, apply k anyway
        print(f"note: the maps use {settings['num_inference_steps']} steps, the factor was fitted at "
              f"{entry['num_inference_steps']}: coverage measures how far it carries")  # fmt: skip
    sigma = float(entry["uncertainty_sigma"])
    per_image = []
    for record in records:
        factor = error_bound_factor(entry, settings["num_samples"], record["scale"], entry["num_inference_steps"])
        uncertainty = _pooled(record["uncertainty"], sigma)
        row = {
            "image": record["image"],
            "class": record["image"].split("/")[0],
            "scale": record["scale"],
            "factor": factor,
            "coverage": None if factor is None else bound_coverage(record["error"], uncertainty, factor),
            "pixels": int(record["error"].size),
            "spearman": {"uncertainty": _spearman(uncertainty, record["error"])},
        }
        for name in MAPS[1:]:
            row["spearman"][name] = _spearman(_pooled(record[name], sigma), record["error"])
            row["spearman"][name + "_unpooled"] = _spearman(record[name], record["error"])
        row["spearman"]["uncertainty_unpooled"] = _spearman(record["uncertainty"], record["error"])
        per_image.append(row)

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        covered = [r for r in rows if r["coverage"] is not None]
        pixels = sum(r["pixels"] for r in covered)
        result = {
            "images": len(rows),
            "coverage": sum(r["coverage"] * r["pixels"] for r in covered) / pixels if pixels else None,
            "coverage_min": min((r["coverage"] for r in covered), default=None),
            "coverage_max": max((r["coverage"] for r in covered), default=None),
        }
        for name in rows[0]["spearman"]:
            values = [r["spearman"][name] for r in rows if math.isfinite(r["spearman"][name])]
            result[f"spearman_{name}"] = sum(values) / len(values) if values else None
        return result

    scales = sorted({r["scale"] for r in per_image})
    report: dict[str, Any] = {"entry": entry, "settings": settings, "per_scale": {}, "per_class": {}}
    for scale in scales:
        rows = [r for r in per_image if r["scale"] == scale]
        report["per_scale"][f"{scale:g}"] = summary(rows)
        classes = sorted({r["class"] for r in rows})
        report["per_class"][f"{scale:g}"] = {c: summary([r for r in rows if r["class"] == c]) for c in classes}
    report["per_image"] = per_image
    print(json.dumps({"per_scale": report["per_scale"]}, indent=1))
    for scale in scales:
        print(f"x{scale:g}: class | images | coverage (min-max) | Spearman map / |out-bic| / grad / |prior-out|")
        for c, s in report["per_class"][f"{scale:g}"].items():
            print(
                f"| {c} | {s['images']} | {s['coverage']:.3f} ({s['coverage_min']:.2f}-{s['coverage_max']:.2f}) | "
                f"{s['spearman_uncertainty']:.2f} / {s['spearman_abs_output_minus_bicubic']:.2f} / "
                f"{s['spearman_output_gradient']:.2f} / {s['spearman_abs_prior_minus_output']:.2f} |"
            )
    if args.output:
        atomic_write_json(args.output, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="run the pipeline and save the maps and errors")
    c.add_argument("--pipeline", default=None, help="folder, hub id or preset:NAME (default: the embedded model)")
    c.add_argument("--data_dir", required=True)
    c.add_argument("--images_from", required=True, help="a text file, one image path per line")
    c.add_argument("--max_images", type=int, default=None)
    c.add_argument("--scales", type=float, nargs="+", default=[4.0])
    c.add_argument("--steps", type=int, default=DEFAULT_SETTINGS["steps"], help="default: the fast preset's")
    c.add_argument("--dtype", choices=DTYPE_CHOICES, default=DEFAULT_SETTINGS["dtype"], help="the UNet's precision")
    c.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=DEFAULT_SETTINGS["channels_last"])
    c.add_argument("--num_samples", type=int, default=4)
    c.add_argument("--crop", type=int, default=256, help="the HR's centre crop (px) after preprocess_hr(image, 256)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True)
    f = sub.add_parser("fit", help="the split-conformal factor per scale")
    f.add_argument("--collected", required=True)
    f.add_argument("--sigma", type=float, default=DEFAULT_UNCERTAINTY_SIGMA)
    f.add_argument("--fitted_on", default="UCMerced training images (model_cards/ucmerced_train_21.txt)")
    f.add_argument("--output", default=None)
    f.add_argument("--write_model_index", default=None, help="a model folder whose model_index.json gets the entry")
    e = sub.add_parser("evaluate", help="coverage and Spearman on held-out images")
    e.add_argument("--collected", required=True)
    e.add_argument("--fit", default=None, help="a fit's JSON (default: the pipeline's model_index.json entry)")
    e.add_argument("--pipeline", default=None)
    e.add_argument("--output", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> Any:
    args = build_parser().parse_args(argv)
    return {"collect": collect, "fit": fit, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    main()

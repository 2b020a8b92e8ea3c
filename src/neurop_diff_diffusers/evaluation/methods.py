"""The methods and metrics of the evaluation, as registries: a new method or metric is one entry.

[`~neurop_diff_diffusers.evaluation.run.evaluate`] runs every method of [`EVALUATION_METHODS`] that the user asks for
on every image and scale (its step 2) and scores each output with every metric of [`EVALUATION_METRICS`] (its step 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..metrics.quality import hf_energy_ratio, niqe, protocol_kwargs, psnr, ssim
from ..pipelines import NeurOpDiffPipeline, bicubic_prior
from ..utils import derive_seed


@dataclass
class EvaluationRun:
    """The checked arguments of one [`~neurop_diff_diffusers.evaluation.run.evaluate`] call (its step 1)."""

    pipeline: NeurOpDiffPipeline
    sr3: NeurOpDiffPipeline | None
    items: list[tuple[str | int, Any]]
    scales: list[float]
    methods: list[str]
    num_inference_steps: int
    strength: float
    eta: float
    seed: int
    resolution: int
    protocol: str
    chunk_size: int | None
    figure_image: list[int] | None
    data_consistency_steps: int = 0


@dataclass
class EvaluationScoring:
    """What the metrics need beyond the images: the protocol, the LPIPS network, whether NIQE runs (and why not)."""

    protocol: str
    lpips_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    lpips_reason: str
    niqe_enabled: bool
    niqe_reason: str
    trust_cache: dict[str, Any] = field(default_factory=dict)


def sync_device(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA runs asynchronously): a method's time then includes its kernels.

    Args:
        device (`torch.device`): the pipeline's device; nothing to wait for on the CPU.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.evaluation.methods import sync_device
        >>> sync_device(torch.device("cpu"))
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        >>> from neurop_diff_diffusers.evaluation.methods import image_seed
        >>> image_seed(0, "forest/forest30.tif", 4.0) == image_seed(0, "forest/forest30.tif", 4)
        True
    """
    key = key if isinstance(key, (str, int)) and not isinstance(key, bool) else str(key)
    return derive_seed(int(seed), key, float(scale))


# --------------------------------------------------------------------------------------------------------------------
# Step 2: the methods (a new method is one entry of EVALUATION_METHODS)


@dataclass(frozen=True)
class EvaluationMethod:
    """One method of the evaluation.

    Args:
        label (`str`): its name in tables and figures.
        run (`Callable`): ``run(run, lr, hr_size, key, scale)``: the output in ``[-1, 1]`` at ``hr_size`` for the LR
            batch ``lr`` (``[-1, 1]``, on 8-bit levels); ``key`` and ``scale`` seed the noise of diffusion methods.
        unavailable (`Callable`): ``unavailable(pipeline, sr3_pipeline)``: why the method cannot run with these
            pipelines, or ``None`` when it can.
    """

    label: str
    run: Callable[[EvaluationRun, torch.Tensor, tuple[int, int], Any, float], torch.Tensor]
    unavailable: Callable[[Any, Any], str | None] = lambda pipeline, sr3_pipeline: None


def _run_bicubic(
    run: EvaluationRun, lr: torch.Tensor, hr_size: tuple[int, int], key: Any, scale: float
) -> torch.Tensor:
    return bicubic_prior(lr, hr_size)


def _run_operator(
    run: EvaluationRun, lr: torch.Tensor, hr_size: tuple[int, int], key: Any, scale: float
) -> torch.Tensor:
    return run.pipeline.compute_prior(lr.to(run.pipeline.device), hr_size, chunk_size=run.chunk_size)


def _diffusion(pipe: Callable[[EvaluationRun], NeurOpDiffPipeline]) -> Callable[..., torch.Tensor]:
    """A diffusion method: the pipeline given by ``pipe(run)``, its noise seeded by ``(seed, key, scale)``."""
    from ..data import to_uint8_levels

    def run_method(
        run: EvaluationRun, lr: torch.Tensor, hr_size: tuple[int, int], key: Any, scale: float
    ) -> torch.Tensor:
        pipeline = pipe(run)
        out = pipeline(
            to_uint8_levels(lr).to(pipeline.device),
            output_size=hr_size,
            num_inference_steps=run.num_inference_steps,
            strength=run.strength,
            eta=run.eta,
            generator=torch.Generator().manual_seed(image_seed(run.seed, key, scale)),
            output_type="pt",
            chunk_size=run.chunk_size,
            data_consistency_steps=run.data_consistency_steps,
        ).images
        return out * 2.0 - 1.0

    return run_method


def _no_operator(pipeline: Any, sr3_pipeline: Any) -> str | None:
    return "`pipeline` has no neural operator" if getattr(pipeline, "neural_operator", None) is None else None


def _no_sr3(pipeline: Any, sr3_pipeline: Any) -> str | None:
    return "no `sr3_pipeline` is given" if sr3_pipeline is None else None


#: The methods, in table order (see this module's docstring for what each computes).
EVALUATION_METHODS: dict[str, EvaluationMethod] = {
    "bicubic": EvaluationMethod("Bicubic", _run_bicubic),
    "neural_operator": EvaluationMethod("Neural operator", _run_operator, _no_operator),
    "neurop_diff": EvaluationMethod("NeurOp-Diff", _diffusion(lambda run: run.pipeline)),
    "sr3": EvaluationMethod("SR3 (bicubic prior)", _diffusion(lambda run: run.sr3), _no_sr3),
}
METHODS: tuple[str, ...] = tuple(EVALUATION_METHODS)
METHOD_LABELS: dict[str, str] = {name: method.label for name, method in EVALUATION_METHODS.items()}


# --------------------------------------------------------------------------------------------------------------------
# Step 3: the metrics (a new metric is one entry of EVALUATION_METRICS)


@dataclass(frozen=True)
class EvaluationMetric:
    """One metric of the evaluation, computed per image on 8-bit-level outputs in ``[0, 1]``.

    Args:
        compute (`Callable`): ``compute(scoring, output, hr, scale)`` for ``(1, 3, H, W)`` tensors: a number, or
            ``None`` where the metric is not available (e.g. LPIPS without local weights).
        skip_undefined (`bool`): average over the images where it is defined and finite (NIQE, the HF ratio);
            otherwise one undefined value makes the mean undefined (PSNR of a perfect output is infinite).
    """

    compute: Callable[[EvaluationScoring, torch.Tensor, torch.Tensor, float], float | None]
    skip_undefined: bool = False


def trust_row(scoring: EvaluationScoring, output: torch.Tensor, hr: torch.Tensor, scale: float) -> dict[str, Any]:
    """The [`~neurop_diff_diffusers.metrics.trust.trust_metrics`] of one output (``(1, 3, H, W)`` in ``[0, 1]``)
    against the LR the evaluation made from `hr` at `scale`, computed once per output (the metrics share it).

    Args:
        scoring ([`EvaluationScoring`]): holds the cache: the last output, its HR and scale (held, so that another
            tensor cannot take their place at the same address) and its row.
        output (`torch.Tensor`): the method's output on 8-bit levels in ``[0, 1]``.
        hr (`torch.Tensor`): the HR, same form.
        scale (`float`): the scale.

    Returns:
        `dict[str, Any]`: ``lr_l1_255``, ``spectral_angle``, ``shift``, ``synthesis``, ``improvement``, ``omission``,
        ``hallucination``.
    """
    from ..data import bicubic_degrade
    from ..metrics.trust import trust_metrics

    cache = scoring.trust_cache
    if not (cache.get("output") is output and cache.get("hr") is hr and cache.get("scale") == float(scale)):
        lr = (bicubic_degrade(hr * 2.0 - 1.0, scale) + 1.0) / 2.0
        row = trust_metrics(output[0], lr[0], hr[0])
        cache.update(output=output, hr=hr, scale=float(scale), row=row)
    return cache["row"]


def _trust_metric(name: str, skip_undefined: bool = False) -> EvaluationMetric:
    return EvaluationMetric(lambda sc, out, hr, s: trust_row(sc, out, hr, s)[name], skip_undefined)


#: The trust metrics (see [`~neurop_diff_diffusers.metrics.trust`]): LR agreement in levels, spectral angle in degrees,
#: synthesis, and the fractions of the classified pixels that are improvement / omission / hallucination.
TRUST_METRICS: tuple[str, ...] = (
    "lr_l1_255",
    "spectral_angle",
    "synthesis",
    "improvement",
    "omission",
    "hallucination",
)

#: Trust figures kept per image and summarised beside the results rows (``trust_summary``): LR agreement under an
#: independent (bilinear) kernel, the phase-correlation shift, the classed fraction and each class's share of all
#: pixels.
TRUST_EXTRAS: tuple[str, ...] = (
    "lr_l1_255_bilinear",
    "shift",
    "classified",
    "improvement_all",
    "omission_all",
    "hallucination_all",
)


def trust_extras(scoring: EvaluationScoring, output: torch.Tensor) -> dict[str, float | None]:
    """The [`TRUST_EXTRAS`] of `output` from the trust row its metrics computed (``None`` where there is none).

    Args:
        scoring ([`EvaluationScoring`]): holds the row of the last output scored ([`trust_row`]).
        output (`torch.Tensor`): that output.

    Returns:
        `dict[str, float | None]`.
    """
    cache = scoring.trust_cache
    row = cache.get("row", {}) if cache.get("output") is output else {}
    return {name: row.get(name) for name in TRUST_EXTRAS}


#: The metrics, in column order; results rows hold one value of each (``None`` where undefined).
EVALUATION_METRICS: dict[str, EvaluationMetric] = {
    "psnr": EvaluationMetric(lambda sc, out, hr, s: float(psnr(out, hr, **protocol_kwargs(sc.protocol, s))[0])),
    "ssim": EvaluationMetric(lambda sc, out, hr, s: float(ssim(out, hr, **protocol_kwargs(sc.protocol, s))[0])),
    "lpips": EvaluationMetric(
        lambda sc, out, hr, s: float(sc.lpips_fn(out, hr)[0]) if sc.lpips_fn is not None else None, True
    ),
    "niqe": EvaluationMetric(lambda sc, out, hr, s: niqe(out[0]) if sc.niqe_enabled else None, True),
    "hf_ratio": EvaluationMetric(lambda sc, out, hr, s: hf_energy_ratio(out[0], hr[0], s), True),
    **{name: _trust_metric(name, name in ("improvement", "omission", "hallucination")) for name in TRUST_METRICS},
}


__all__ = [
    "EVALUATION_METHODS",
    "EVALUATION_METRICS",
    "METHODS",
    "METHOD_LABELS",
    "TRUST_EXTRAS",
    "TRUST_METRICS",
    "EvaluationMethod",
    "EvaluationMetric",
    "EvaluationRun",
    "EvaluationScoring",
    "image_seed",
    "sync_device",
    "trust_extras",
    "trust_row",
]

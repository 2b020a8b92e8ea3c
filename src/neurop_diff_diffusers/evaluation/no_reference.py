"""No-reference evaluation: one image without an HR, taken as the LR; each method upscales it and is scored by the
trust metrics that need no HR (``neurop-diff evaluate --input``; the example is [`evaluate_no_reference`]'s).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..metrics.quality import to_unit_levels
from ..pipelines import NeurOpDiffPipeline
from ..utils import package_versions
from .methods import EVALUATION_METHODS, EvaluationRun, sync_device
from .settings import EvaluationSettings, resolve_methods


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
    the trust metrics that need no HR ([`~neurop_diff_diffusers.metrics.trust.consistency`] of the output against
    `lr`, [`~neurop_diff_diffusers.metrics.trust.synthesis`] against its bicubic upsampling).

    Args:
        pipeline ([`NeurOpDiffPipeline`]): gives the `neural_operator` and `neurop_diff` methods.
        lr (`torch.Tensor`): the image, ``(1, 3, h, w)`` or ``(3, h, w)`` floats in ``[0, 1]``; it is rounded to
            8-bit levels (the methods' input).
        scales (`Sequence[float]`, defaults to ``(4.0,)``): numbers > 1; the output is ``round(h * s) x round(w *
            s)``.
        key (`str`, defaults to `"input"`): the image's name (its noise seed, see
            [`~neurop_diff_diffusers.evaluation.methods.image_seed`]).
        methods (`Sequence[str]`, *optional*): among bicubic, neural_operator and neurop_diff (default: those the
            pipeline allows).
        num_inference_steps (`int`, defaults to 50): denoising steps.
        strength (`float`, *optional*): as in [`~neurop_diff_diffusers.evaluation.run.evaluate`].
        eta (`float`, *optional*): as in [`~neurop_diff_diffusers.evaluation.run.evaluate`].
        seed (`int`, defaults to 0): the run's seed.
        chunk_size (`int`, *optional*): output pixels per chunk of the neural operator.
        command (`str`, *optional*): the command line to record.

    Returns:
        `dict`: ``no_reference`` (True), ``image``, ``command``, ``config`` and ``results``: one row per method and
        scale with ``lr_l1_255``, ``spectral_angle``, ``shift`` (LR pixels), ``synthesis`` and ``seconds``.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.evaluation.no_reference import evaluate_no_reference
        >>> from neurop_diff_diffusers.runtime.loading import load_pipeline
        >>> report = evaluate_no_reference(load_pipeline("preset:tiny"), torch.rand(1, 3, 16, 16), [2],
        ...                                num_inference_steps=1)
        >>> [(r["method"], r["lr_l1_255"] >= 0) for r in report["results"]]
        [('bicubic', True), ('neural_operator', True), ('neurop_diff', True)]
    """
    settings = EvaluationSettings(
        scales=scales,
        methods=methods,
        num_inference_steps=num_inference_steps,
        strength=strength,
        eta=eta,
        seed=seed,
        chunk_size=chunk_size,
        figure_image=None,
    )
    return evaluate_no_reference_with_settings(pipeline, lr, settings, key=key, command=command)


def evaluate_no_reference_with_settings(
    pipeline: NeurOpDiffPipeline,
    lr: torch.Tensor,
    settings: EvaluationSettings,
    *,
    key: str = "input",
    command: str | None = None,
) -> dict[str, Any]:
    """[`evaluate_no_reference`] with its settings already checked (the command line builds them once). Of the
    settings, it uses the scales, methods, sampling (`num_inference_steps`, `strength`, `eta`, `seed`) and
    `chunk_size`; the others concern the evaluation against an HR.

    Args:
        pipeline ([`NeurOpDiffPipeline`]): as in [`evaluate_no_reference`].
        lr (`torch.Tensor`): as in [`evaluate_no_reference`].
        settings ([`~neurop_diff_diffusers.evaluation.settings.EvaluationSettings`]): the settings.
        key (`str`, defaults to `"input"`): the image's name.
        command (`str`, *optional*): the command line to record.

    Returns:
        `dict`: the report, as [`evaluate_no_reference`]'s.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.evaluation import EvaluationSettings, evaluate_no_reference_with_settings
        >>> from neurop_diff_diffusers.runtime.loading import load_pipeline
        >>> settings = EvaluationSettings(scales=[2], methods=["bicubic"])
        >>> report = evaluate_no_reference_with_settings(load_pipeline("preset:tiny"), torch.rand(3, 8, 8), settings)
        >>> [(r["method"], r["scale"]) for r in report["results"]]
        [('bicubic', 2.0)]
    """
    from ..data import to_uint8_levels

    if not isinstance(settings, EvaluationSettings):
        raise ValueError(f"`settings` must be an EvaluationSettings, got {type(settings).__name__}.")
    if not isinstance(pipeline, NeurOpDiffPipeline):
        raise ValueError(f"`pipeline` must be a NeurOpDiffPipeline, got {type(pipeline).__name__}.")
    lr = _check_lr(lr)
    if settings.methods is not None and "sr3" in settings.methods:
        raise ValueError("`methods`: sr3 is not available in the no-reference evaluation.")
    sampling = settings.sampling(pipeline)
    run = EvaluationRun(
        pipeline=pipeline,
        sr3=None,
        items=[(key, None)],
        scales=list(settings.scales),
        methods=resolve_methods(settings.methods, pipeline, None),
        num_inference_steps=settings.num_inference_steps,
        strength=sampling["strength"],
        eta=sampling["eta"],
        seed=settings.seed,
        resolution=0,
        protocol="rgb",
        chunk_size=settings.chunk_size,
        figure_image=None,
    )
    pipeline.set_progress_bar_config(disable=True)
    lr_model = to_uint8_levels(lr.clamp(0, 1), (0.0, 1.0)).float() / 127.5 - 1.0
    results = [row for scale in run.scales for row in _score_scale(run, lr_model, key, scale)]
    return {
        "no_reference": True,
        "image": key,
        "command": command,
        "versions": package_versions(),
        "config": {
            "methods": run.methods,
            "scales": run.scales,
            "num_inference_steps": run.num_inference_steps,
            "strength": run.strength,
            "eta": run.eta,
            "seed": run.seed,
            "lr_size": list(lr.shape[-2:]),
        },
        "results": results,
    }


def _check_lr(lr: Any) -> torch.Tensor:
    """The image as ``(1, 3, h, w)`` floats, or a ValueError naming `lr`."""
    if not isinstance(lr, torch.Tensor) or not lr.is_floating_point() or lr.dim() not in (3, 4):
        raise ValueError("`lr` must be a float tensor (3, h, w) or (1, 3, h, w) in [0, 1].")
    lr = lr.unsqueeze(0) if lr.dim() == 3 else lr
    if lr.shape[0] != 1 or lr.shape[1] != 3 or not torch.isfinite(lr).all():
        raise ValueError(f"`lr` must be one finite RGB image (1, 3, h, w), got {tuple(lr.shape)}.")
    return lr


def _score_scale(run: EvaluationRun, lr_model: torch.Tensor, key: str, scale: float) -> list[dict[str, Any]]:
    """Each method's output at one scale, scored against the LR (its rows of the report)."""
    from ..metrics.trust import consistency, synthesis, upsample_lr
    from ..pipelines.image_processing import resolve_output_size

    lr_unit = (lr_model[0].double() + 1.0) / 2.0
    size = resolve_output_size(tuple(lr_model.shape[-2:]), scale, None)
    up = upsample_lr(lr_unit, size)
    rows = []
    for method in run.methods:
        start = time.perf_counter()
        out = to_unit_levels(EVALUATION_METHODS[method].run(run, lr_model, size, key, scale))
        sync_device(run.pipeline.device)
        seconds = time.perf_counter() - start
        agreement = consistency(out[0], lr_unit)
        rows.append(
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
    return rows


__all__ = ["evaluate_no_reference", "evaluate_no_reference_with_settings"]

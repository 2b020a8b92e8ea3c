"""Validation during training: fixed validation pairs, the operator's and the pipeline's figures (scored with the
evaluation's code, [`~neurop_diff_diffusers.metrics.quality.image_metrics`] on 8-bit levels) and an image grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import PIL.Image
import torch
from diffusers.utils import make_image_grid

from ..data import bicubic_degrade, pil_to_tensor, preprocess_hr, tensor_to_pil, to_uint8_levels
from ..metrics.quality import to_unit_levels
from ..models.neural_operator import GalerkinNeuralOperator
from ..pipelines.pipeline_neurop_diff import bicubic_prior
from ..utils import seeded_generator


@dataclass
class ValidationSet:
    """Fixed validation pairs: HR images and their bicubic LR at one scale, tensors in ``[-1, 1]``.

    Args:
        hr (`torch.Tensor`): ``(N, 3, R, R)`` HR images.
        lr (`torch.Tensor`): ``(N, 3, r, r)`` their LR images (``r = round(R / scale)``).
        scale (`float`): the downscaling factor.
        names (`list[str]`, *optional*): one name per image (file names where known).
    """

    hr: torch.Tensor
    lr: torch.Tensor
    scale: float
    names: list[str] = field(default_factory=list)

    @classmethod
    def from_images(cls, images: Any, *, resolution: int, scale: float, num_images: int = 4) -> ValidationSet | None:
        """Build the set from the first images of a dataset spread evenly over it (``None`` if it is empty).

        HR images are prepared with [`~neurop_diff_diffusers.data.preprocess_hr`] at `resolution` and degraded with
        [`~neurop_diff_diffusers.data.bicubic_degrade`], as in training.

        Args:
            images (`Any`): a ``datasets.Dataset`` with ``image`` (and optionally ``file_name``) columns, or PIL
                images.
            resolution (`int`): the HR side.
            scale (`float`): the downscaling factor (``>= 1``).
            num_images (`int`, defaults to `4`): how many images (at most the dataset's size).
        """
        n = len(images)
        k = min(int(num_images), n)
        if k <= 0:
            return None
        indices = sorted({int(i * n / k) for i in range(k)})
        hrs, names = [], []
        for i in indices:
            item = images[i]
            image = item["image"] if isinstance(item, dict) else item
            hrs.append(pil_to_tensor(preprocess_hr(image, resolution)))
            name = item.get("file_name") if isinstance(item, dict) else None
            names.append(name or f"#{i}")
        hr = torch.stack(hrs)
        return cls(hr=hr, lr=bicubic_degrade(hr, scale), scale=float(scale), names=names)


@dataclass
class ValidationResult:
    """Figures and picture of one validation.

    Args:
        metrics (`dict[str, float]`): mean figures, e.g. ``{"psnr": ..., "ssim": ..., "psnr_prior": ...,
            "psnr_bicubic": ...}``.
        grid (`PIL.Image.Image`): the image grid, one row per image: ``LR | bicubic | prior | (output |) HR``.
        columns (`list[str]`): the column titles of the grid.
    """

    metrics: dict[str, float]
    grid: PIL.Image.Image
    columns: list[str]


def _figures(pred01: torch.Tensor, hr01: torch.Tensor, suffix: str) -> dict[str, float]:
    """Mean PSNR / SSIM with the evaluation's code (``image_metrics``, ``"rgb"`` protocol) on 8-bit-level images."""
    from ..metrics.quality import (  # imported here: torchmetrics (SSIM) is needed only for validation
        image_metrics,
        psnr,
    )

    if min(hr01.shape[-2:]) <= 11:  # no room for the 11 x 11 SSIM window: PSNR alone
        return {f"psnr{suffix}": float(psnr(pred01, hr01).mean())}
    values = image_metrics(pred01, hr01, protocol="rgb")
    return {f"psnr{suffix}": float(values["psnr"].mean()), f"ssim{suffix}": float(values["ssim"].mean())}


def _grid(columns: list[torch.Tensor], size: tuple[int, int]) -> PIL.Image.Image:
    """Rows of ``[-1, 1]`` images; LR columns are shown enlarged with nearest-neighbour pixels."""
    images = []
    for row in range(columns[0].shape[0]):
        for column in columns:
            image = tensor_to_pil(column[row])
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), PIL.Image.NEAREST)
            images.append(image)
    return make_image_grid(images, rows=columns[0].shape[0], cols=len(columns))


def _names(val: ValidationSet) -> list[str]:
    """The images' names (their positions where the set has none)."""
    return val.names if len(val.names) == val.lr.shape[0] else [f"#{i}" for i in range(val.lr.shape[0])]


@torch.no_grad()
def validate_operator(operator: GalerkinNeuralOperator, val: ValidationSet) -> ValidationResult:
    """PSNR / SSIM of the operator's output (and of bicubic upsampling) against the HR images, and a grid.

    Scored as in the evaluation: images rounded to 8-bit levels,
    [`~neurop_diff_diffusers.metrics.quality.image_metrics`].
    Keys: ``psnr``, ``ssim`` (the operator), ``psnr_bicubic``, ``ssim_bicubic``.

    Args:
        operator (`GalerkinNeuralOperator`): the neural operator (evaluated as is: call ``.eval()`` first).
        val (`ValidationSet`): the validation pairs.
    """
    size = tuple(val.hr.shape[-2:])
    param = next(operator.parameters())
    prior = operator(val.lr.to(device=param.device, dtype=param.dtype), size).sample.float().cpu()
    bicubic = bicubic_prior(val.lr, size)
    hr01 = to_unit_levels(val.hr)
    metrics = {**_figures(to_unit_levels(prior), hr01, ""), **_figures(to_unit_levels(bicubic), hr01, "_bicubic")}
    grid = _grid([val.lr, bicubic, prior.clamp(-1, 1), val.hr], size)
    return ValidationResult(metrics, grid, ["LR", "bicubic", "neural operator", "HR"])


@torch.no_grad()
def validate_pipeline(
    pipeline: Any, val: ValidationSet, *, num_inference_steps: int = 50, seed: int = 0
) -> ValidationResult:
    """Super-resolve the validation LR images with the pipeline (DDIM by default) and measure them.

    Keys of the metrics: ``psnr`` / ``ssim`` (the output), ``psnr_prior`` / ``ssim_prior`` (the conditioning prior
    alone), ``psnr_bicubic`` / ``ssim_bicubic``. As in [`~neurop_diff_diffusers.evaluation.run.evaluate`], the input is
    the LR on 8-bit levels, every output is rounded to 8-bit levels before it is scored, and the noise of an image is
    seeded with ``derive_seed(seed, name, scale)``: every validation of a run sees the same noise.

    Args:
        pipeline (`Any`): a [`~neurop_diff_diffusers.NeurOpDiffPipeline`].
        val (`ValidationSet`): the validation pairs.
        num_inference_steps (`int`, defaults to `50`): denoising steps.
        seed (`int`, defaults to `0`): seed of the initial noise.
    """
    size = tuple(val.hr.shape[-2:])
    device = pipeline.device
    generators = [seeded_generator(int(seed), str(name), float(val.scale)) for name in _names(val)]
    output = (
        pipeline(
            to_uint8_levels(val.lr),
            output_size=size,
            num_inference_steps=num_inference_steps,
            generator=generators,
            output_type="pt",
        )
        .images.float()
        .cpu()
    )
    prior = pipeline.compute_prior(val.lr.to(device), size).float().cpu()
    bicubic = bicubic_prior(val.lr, size)
    hr01 = to_unit_levels(val.hr)
    metrics = {
        **_figures(to_unit_levels(output * 2.0 - 1.0), hr01, ""),
        **_figures(to_unit_levels(prior), hr01, "_prior"),
        **_figures(to_unit_levels(bicubic), hr01, "_bicubic"),
    }
    grid = _grid([val.lr, bicubic, prior.clamp(-1, 1), output * 2.0 - 1.0, val.hr], size)
    return ValidationResult(metrics, grid, ["LR", "bicubic", "prior", "output", "HR"])

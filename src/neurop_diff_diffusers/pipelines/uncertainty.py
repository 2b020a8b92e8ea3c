"""Several seeded samples per image: their mean and a per-pixel uncertainty map (``pipe(..., num_samples=N)``).

The pipeline draws ``N`` samples of each image from ``N`` generators derived from the caller's ([`sample_seeds`]), by
default sample ``k`` on the input flipped by [`flip`] code ``k % 4`` and flipped back (``flip_samples``), denoises them
as one batch with the prior computed once (per flip), and returns the mean of the samples (on the output's ``[0, 1]``
scale, after clamping, so it equals the mean of ``N`` separate calls) and the standard deviation over the samples
(``ddof=1``, before clamping: [`reduce_samples`]) averaged over the channels
([`NeurOpDiffPipelineOutput.uncertainty`]), by default pooled over a small Gaussian neighbourhood
([`pool_uncertainty`]): with a few samples the variance of one pixel is a noisy estimate, and the pooled one predicts
the real error better (README, "Can I trust the detail?"). A calibrated factor turns the map into a 90 % error bound
([`~neurop_diff_diffusers.pipelines.uncertainty_calibration`]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ImagePipelineOutput

#: Most samples one call may draw per image (each costs one full denoising, batched).
MAX_NUM_SAMPLES = 64
#: The default Gaussian sigma (output pixels) over which the samples' variance is pooled; 0 keeps each pixel's own.
DEFAULT_UNCERTAINTY_SIGMA = 2.0
#: Largest accepted sigma.
MAX_UNCERTAINTY_SIGMA = 16.0
_SEED_HIGH = 2**62


@dataclass
class NeurOpDiffPipelineOutput(ImagePipelineOutput):
    """The output of [`NeurOpDiffPipeline`]: the images and, with ``num_samples=N``, the uncertainty map.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the outputs (with ``num_samples``: the
            per-pixel mean of the samples), in the requested ``output_type``.
        uncertainty (`np.ndarray` or `torch.Tensor`, *optional*): ``(B, H, W)`` float32, the standard deviation over
            the samples (sample standard deviation, ``ddof=1``, taken before the samples are clamped to ``[0, 1]``:
            [`reduce_samples`]) of each pixel on the output's ``[0, 1]`` scale, averaged over the channels, its
            variance pooled over a Gaussian of the call's ``uncertainty_sigma`` ([`pool_uncertainty`];
            ``0``: each pixel's own); a `torch.Tensor` for ``output_type="pt"``, else a numpy array. ``None``
            without ``num_samples``.
    """

    uncertainty: np.ndarray | torch.Tensor | None = None


def check_num_samples(value: Any) -> int | None:
    """``None`` or an int in ``[2, MAX_NUM_SAMPLES]``; one sample has no spread, so ``1`` is refused.

    Args:
        value (`Any`): the `num_samples` argument.

    Returns:
        `int` or `None`.

    Raises:
        ValueError: naming `num_samples` and the allowed range.

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty import check_num_samples
        >>> check_num_samples(4), check_num_samples(None)
        (4, None)
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or not 2 <= value <= MAX_NUM_SAMPLES:
        raise ValueError(
            f"`num_samples` must be None (one sample, no uncertainty map) or an int in [2, {MAX_NUM_SAMPLES}], got "
            f"{value!r}."
        )
    return int(value)


def sample_seeds(
    generator: torch.Generator | list[torch.Generator] | None, batch_size: int, num_samples: int
) -> list[int]:
    """The seeds of the ``batch_size * num_samples`` samples (image-major: image 0's samples first).

    Each is drawn from the caller's generator(s) with ``torch.randint``: one generator gives all the seeds in order,
    a list gives each image's from its own generator, ``None`` draws from torch's global generator. The sample ``k``
    of image ``b`` is the output of a separate call with ``generator=torch.Generator().manual_seed(seeds[b * N +
    k])`` (on the caller's generator's device).

    Args:
        generator (`torch.Generator`, `list[torch.Generator]` or `None`): the caller's generator(s).
        batch_size (`int`): images in the batch.
        num_samples (`int`): samples per image.

    Returns:
        `list[int]`: the seeds, each in ``[0, 2**62)``.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.pipelines.uncertainty import sample_seeds
        >>> seeds = sample_seeds(torch.Generator().manual_seed(0), 1, 3)
        >>> seeds == sample_seeds(torch.Generator().manual_seed(0), 1, 3), len(seeds)
        (True, 3)
    """
    if isinstance(generator, list):
        return [
            int(seed)
            for g in generator
            for seed in torch.randint(0, _SEED_HIGH, (num_samples,), generator=g, device=g.device).tolist()
        ]
    device = generator.device if generator is not None else "cpu"
    seeds = torch.randint(0, _SEED_HIGH, (batch_size * num_samples,), generator=generator, device=device)
    return [int(seed) for seed in seeds.tolist()]


def sample_generators(
    generator: torch.Generator | list[torch.Generator] | None, batch_size: int, num_samples: int
) -> list[torch.Generator]:
    """One generator per sample, seeded with [`sample_seeds`] (on the caller's generator's device, else the CPU).

    Args:
        generator (`torch.Generator`, `list[torch.Generator]` or `None`): the caller's generator(s).
        batch_size (`int`): images in the batch.
        num_samples (`int`): samples per image.

    Returns:
        `list[torch.Generator]`: ``batch_size * num_samples`` generators, image-major.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.pipelines.uncertainty import sample_generators
        >>> len(sample_generators(torch.Generator().manual_seed(0), 2, 3))
        6
    """
    devices = [g.device for g in generator] if isinstance(generator, list) else None
    seeds = sample_seeds(generator, batch_size, num_samples)
    out = []
    for i, seed in enumerate(seeds):
        if devices is not None:
            device = devices[i // num_samples]
        else:
            device = generator.device if generator is not None else torch.device("cpu")
        out.append(torch.Generator(device=device).manual_seed(seed))
    return out


def reduce_samples(sample: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (back on ``[-1, 1]``) and the uncertainty map of ``(B * N, C, H, W)`` samples in ``[-1, 1]``.

    The mean is taken on the output's ``[0, 1]`` scale after clamping (what a single call returns), so it equals the
    mean of the separate outputs. The spread is taken *before* clamping: clamping shrinks the differences between
    samples that leave ``[0, 1]`` (two samples at 1.2 and 1.4 both become 1, spread 0), so a spread of clamped samples
    would call a pixel certain exactly where the model overshoots. It is the sample standard deviation (``ddof=1``,
    Bessel's correction: its square is an unbiased estimate of the variance whatever ``N``, so maps made with
    different ``N`` are comparable; ``ddof=0`` would shrink them by ``sqrt((N - 1) / N)``, 0.71 at ``N = 2``).

    Args:
        sample (`torch.Tensor`): the samples, image-major.
        num_samples (`int`): ``N``.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the mean ``(B, C, H, W)`` in ``[-1, 1]`` and the uncertainty ``(B, H, W)``
        float32.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.pipelines.uncertainty import reduce_samples
        >>> mean, spread = reduce_samples(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1), 2)
        >>> mean.item(), round(spread.item(), 6)  # 0 and 1 on [0, 1]: sample standard deviation sqrt(0.5)
        (0.0, 0.707107)
    """
    unit = (sample.float() / 2 + 0.5).unflatten(0, (-1, num_samples))
    uncertainty = unit.std(dim=1, correction=1).mean(dim=1)
    return unit.clamp(0, 1).mean(dim=1) * 2 - 1, uncertainty


def flip(x: torch.Tensor, code: int) -> torch.Tensor:
    """``x`` flipped by the flip ``code % 4``: 0 none, 1 left-right, 2 up-down, 3 both (each is its own inverse).

    Args:
        x (`torch.Tensor`): ``(..., H, W)``.
        code (`int`): the flip.

    Returns:
        `torch.Tensor`: the flipped tensor (``x`` itself for 0).

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.pipelines.uncertainty import flip
        >>> flip(torch.tensor([[1, 2], [3, 4]]), 3).tolist()
        [[4, 3], [2, 1]]
    """
    dims = {0: (), 1: (-1,), 2: (-2,), 3: (-2, -1)}[code % 4]
    return x.flip(dims) if dims else x


def flip_each(x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Each sample of ``(B * N, ...)`` image-major samples flipped by its index among its image's: sample ``k`` by
    [`flip`] code ``k % 4``. Applied twice it is the identity.

    Args:
        x (`torch.Tensor`): ``(B * N, C, H, W)``.
        num_samples (`int`): ``N``.

    Returns:
        `torch.Tensor`: the flipped samples.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.pipelines.uncertainty import flip_each
        >>> x = torch.arange(4.0).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
        >>> flip_each(x, 2)[1, 0].tolist(), torch.equal(flip_each(flip_each(x, 2), 2), x)
        ([[1.0, 0.0], [3.0, 2.0]], True)
    """
    return torch.stack([flip(sample, k % num_samples) for k, sample in enumerate(x)])


def check_uncertainty_sigma(value: Any) -> float:
    """A finite real in ``[0, MAX_UNCERTAINTY_SIGMA]`` or a ValueError naming `uncertainty_sigma`.

    Args:
        value (`Any`): the `uncertainty_sigma` argument.

    Returns:
        `float`.

    Example:
        >>> from neurop_diff_diffusers.pipelines.uncertainty import check_uncertainty_sigma
        >>> check_uncertainty_sigma(2)
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= MAX_UNCERTAINTY_SIGMA:
        raise ValueError(
            f"`uncertainty_sigma` must be a number in [0, {MAX_UNCERTAINTY_SIGMA:g}] (output pixels; 0: no pooling), "
            f"got {value!r}."
        )
    return float(value)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def pool_uncertainty(uncertainty: torch.Tensor, sigma: float = DEFAULT_UNCERTAINTY_SIGMA) -> torch.Tensor:
    """The standard deviation map with its variance pooled over a Gaussian neighbourhood: ``sqrt(G_sigma * u^2)``.

    The Gaussian is truncated at ``3 sigma`` and the map mirrored at its borders (reflect; replicated where the map
    is narrower than the Gaussian), so a constant map stays constant. With ``N`` samples a pixel's variance has a
    relative standard error of about ``sqrt(2 / N)``; pooling it over neighbouring pixels trades resolution for a
    steadier estimate. ``sigma=0`` returns the map unchanged.

    Args:
        uncertainty (`torch.Tensor`): ``(B, H, W)`` standard deviations (>= 0).
        sigma (`float`, defaults to `DEFAULT_UNCERTAINTY_SIGMA`): the Gaussian's sigma in pixels, in ``[0, 16]``.

    Returns:
        `torch.Tensor`: ``(B, H, W)`` float32.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.pipelines.uncertainty import pool_uncertainty
        >>> spike = torch.zeros(1, 9, 9)
        >>> spike[0, 4, 4] = 1.0
        >>> pooled = pool_uncertainty(spike, 1.0)
        >>> round(float((pooled**2).sum()), 4), bool(pooled[0, 4, 4] < 1)  # the variance is spread, not lost
        (1.0, True)
    """
    sigma = check_uncertainty_sigma(sigma)
    if sigma == 0:
        return uncertainty
    variance = uncertainty.float().square().unsqueeze(1)
    kernel = _gaussian_kernel(sigma).to(variance.device)
    radius = kernel.numel() // 2
    for dim, weight, pad in ((-1, kernel.view(1, 1, 1, -1), (radius, radius, 0, 0)),
                             (-2, kernel.view(1, 1, -1, 1), (0, 0, radius, radius))):  # fmt: skip
        mode = "reflect" if variance.shape[dim] > radius else "replicate"  # reflect needs more pixels than the pad
        variance = F.conv2d(F.pad(variance, pad, mode=mode), weight)
    return variance.clamp_min(0).sqrt().squeeze(1)


__all__ = [
    "DEFAULT_UNCERTAINTY_SIGMA",
    "MAX_NUM_SAMPLES",
    "NeurOpDiffPipelineOutput",
    "check_num_samples",
    "check_uncertainty_sigma",
    "flip",
    "flip_each",
    "pool_uncertainty",
    "reduce_samples",
    "sample_generators",
    "sample_seeds",
]

"""Several seeded samples per image: their mean and a per-pixel uncertainty map (``pipe(..., num_samples=N)``).

The pipeline draws ``N`` samples of each image from ``N`` generators derived from the caller's ([`sample_seeds`]),
denoises them as one batch with the prior computed once, and returns the mean of the samples (on the output's ``[0,
1]`` scale, after clamping, so it equals the mean of ``N`` separate calls) and the standard deviation over the samples
averaged over the channels ([`NeurOpDiffPipelineOutput.uncertainty`]).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
import torch
from diffusers import ImagePipelineOutput

#: Most samples one call may draw per image (each costs one full denoising, batched).
MAX_NUM_SAMPLES = 64
_SEED_HIGH = 2**62


@dataclass
class NeurOpDiffPipelineOutput(ImagePipelineOutput):
    """The output of [`NeurOpDiffPipeline`]: the images and, with ``num_samples=N``, the uncertainty map.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the outputs (with ``num_samples``: the
            per-pixel mean of the samples), in the requested ``output_type``.
        uncertainty (`np.ndarray` or `torch.Tensor`, *optional*): ``(B, H, W)`` float32, the standard deviation over
            the samples (population, ``ddof=0``) of each pixel on the output's ``[0, 1]`` scale, averaged over the
            channels; a `torch.Tensor` for ``output_type="pt"``, else a numpy array. ``None`` without
            ``num_samples``.
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

    Both are taken on the output's ``[0, 1]`` scale after clamping (what a single call returns), so the mean equals
    the mean of the separate outputs.

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
        >>> mean.item(), spread.item()
        (0.0, 0.5)
    """
    unit = (sample.float() / 2 + 0.5).clamp(0, 1).unflatten(0, (-1, num_samples))
    uncertainty = unit.std(dim=1, correction=0).mean(dim=1)
    return unit.mean(dim=1) * 2 - 1, uncertainty


__all__ = [
    "MAX_NUM_SAMPLES",
    "NeurOpDiffPipelineOutput",
    "check_num_samples",
    "reduce_samples",
    "sample_generators",
    "sample_seeds",
]

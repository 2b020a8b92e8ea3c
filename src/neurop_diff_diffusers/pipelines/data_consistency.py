"""Agreement of an output with its LR: iterative back-projection onto the images whose downsampling is the LR.

The degradation is the project's ([`~neurop_diff_diffusers.data.bicubic_degrade`], antialiased bicubic, here in
floating point so the step is linear). One back-projection step is ``x <- x + up(LR - down(x))`` (Irani and Peleg
1991) with ``up`` the bicubic upsampling of the evaluation's baseline; repeated, it moves the output's content below
the LR Nyquist frequency towards the LR's and leaves the detail above it (what the diffusion added) as it is.

Example:
    >>> import torch
    >>> from neurop_diff_diffusers.pipelines.data_consistency import back_project
    >>> from neurop_diff_diffusers.metrics.trust import lr_agreement
    >>> from neurop_diff_diffusers.data import bicubic_degrade
    >>> g = torch.Generator().manual_seed(0)
    >>> hr = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    >>> lr = bicubic_degrade(hr, 4, quantize=False)
    >>> off = (hr + 0.1).clamp(-1, 1)
    >>> lr_agreement(back_project(off, lr, 10), lr) < lr_agreement(off, lr)
    True
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F

#: Most back-projection iterations a call accepts.
MAX_BACK_PROJECTION_STEPS = 100


def check_back_projection_steps(value: Any, name: str = "data_consistency_steps") -> int:
    """An int in ``[0, MAX_BACK_PROJECTION_STEPS]`` or a ValueError naming `name`.

    Args:
        value (`Any`): the number of back-projection iterations.
        name (`str`, defaults to `"data_consistency_steps"`): the argument's name for the error.

    Returns:
        `int`: the value.

    Example:
        >>> from neurop_diff_diffusers.pipelines.data_consistency import check_back_projection_steps
        >>> check_back_projection_steps(5)
        5
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value <= MAX_BACK_PROJECTION_STEPS:
        raise ValueError(f"`{name}` must be an int in [0, {MAX_BACK_PROJECTION_STEPS}], got {value!r}.")
    return int(value)


def _down(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def back_project(x: torch.Tensor, lr: torch.Tensor, steps: int = 10, clamp: bool = True) -> torch.Tensor:
    """Iterative back-projection of `x` onto the images whose antialiased-bicubic downsampling is `lr`.

    Args:
        x (`torch.Tensor`): the output, ``(B, C, H, W)`` floats in ``[-1, 1]``.
        lr (`torch.Tensor`): its LR, ``(B, C, h, w)`` in ``[-1, 1]`` with ``h <= H``, ``w <= W``.
        steps (`int`, defaults to 10): iterations (0 returns `x`).
        clamp (`bool`, defaults to `True`): clamp to ``[-1, 1]`` after each iteration.

    Returns:
        `torch.Tensor`: the projected output, same shape and dtype as `x` (computed in float32 at least).

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.pipelines.data_consistency import back_project
        >>> x = torch.zeros(1, 3, 32, 32)
        >>> back_project(x, torch.full((1, 3, 8, 8), 0.5), steps=3).mean().item() > 0.45
        True
    """
    steps = check_back_projection_steps(steps, "steps")
    if x.dim() != 4 or lr.dim() != 4 or x.shape[:2] != lr.shape[:2]:
        raise ValueError(
            f"`x` and `lr` must be (B, C, H, W) and (B, C, h, w), got {tuple(x.shape)} and {tuple(lr.shape)}."
        )
    if lr.shape[-2] > x.shape[-2] or lr.shape[-1] > x.shape[-1]:
        raise ValueError(f"`lr` {tuple(lr.shape[-2:])} must be no larger than `x` {tuple(x.shape[-2:])}.")
    if steps == 0:
        return x
    work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = x.to(work_dtype)
    target = lr.to(device=x.device, dtype=work_dtype)
    lr_size, hr_size = tuple(lr.shape[-2:]), tuple(x.shape[-2:])
    for _ in range(steps):
        out = out + _up(target - _down(out, lr_size), hr_size)
        if clamp:
            out = out.clamp(-1.0, 1.0)
    return out.to(x.dtype)


__all__ = ["MAX_BACK_PROJECTION_STEPS", "back_project", "check_back_projection_steps"]

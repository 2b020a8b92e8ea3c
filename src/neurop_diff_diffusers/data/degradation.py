"""Bicubic degradation (HR -> LR), shared by training, evaluation and the demos.

The authors made their LR images with PIL: ``Image.resize(size, Image.BICUBIC)`` on 8-bit images. PIL's bicubic is
antialiased (the kernel is widened by the downscaling factor, Keys' cubic with ``a = -0.5``) and it works in two
separable 8-bit passes: the image is rounded to integers between the horizontal and the vertical pass.
``torch.nn.functional.interpolate(..., mode="bicubic", antialias=True)`` follows the same algorithm when it is given
``uint8`` tensors, so [`bicubic_degrade`] quantises to 8-bit levels by default. Measured against Pillow 13 on the 1,245
real images of ``../shared/data`` at scales 1.5, 2.5, 4, 7.3 and 8: 99.7% of the LR values are identical, the others
1 level apart, except at most 3 values of an image 2 levels apart (only at scale 1.5). The floating-point path
(``quantize=False``) is up to 13 levels away near sharp edges (mean absolute difference 0.11 level).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..pipelines.image_processing import check_scale, round_half_up

DEFAULT_VALUE_RANGE: tuple[float, float] = (-1.0, 1.0)


def degraded_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Size of the LR image made from an HR image of ``size = (H, W)`` by the factor `scale`.

    Each side is ``floor(side / scale + 0.5)`` (``side / scale`` rounded half up, not Python's half-to-even ``round``),
    and at least 1 pixel.

    Args:
        size (`tuple[int, int]`): ``(height, width)`` of the HR image.
        scale (`float`): downscaling factor, a finite number ``>= 1``.

    Returns:
        ``(h, w)`` of the LR image.

    Example:
        >>> degraded_size((256, 256), 1.5)
        (171, 171)
        >>> degraded_size((256, 256), 2.5)
        (102, 102)
    """
    scale = check_scale(scale)
    h, w = (int(v) for v in size)
    return max(1, round_half_up(h / scale)), max(1, round_half_up(w / scale))


def to_uint8_levels(x: torch.Tensor, value_range: tuple[float, float] = DEFAULT_VALUE_RANGE) -> torch.Tensor:
    """Map a float tensor in `value_range` to 8-bit levels (``uint8``, rounded to nearest, clamped to 0..255).

    Args:
        x (`torch.Tensor`): float tensor with values in `value_range` (``[-1, 1]`` for the model tensors).
        value_range (`tuple[float, float]`, defaults to `DEFAULT_VALUE_RANGE`): ``(low, high)`` mapped to levels 0 and
            255.

    Example:
        >>> to_uint8_levels(torch.tensor([-1.0, 0.0, 1.0])).tolist()
        [0, 128, 255]
    """
    low, high = value_range
    return ((x - low) * (255.0 / (high - low))).round().clamp(0, 255).to(torch.uint8)


def from_uint8_levels(
    x: torch.Tensor, value_range: tuple[float, float] = DEFAULT_VALUE_RANGE, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Map 8-bit levels (0..255) to floats in `value_range`, the inverse of [`to_uint8_levels`].

    Args:
        x (`torch.Tensor`): integer tensor with values in 0..255.
        value_range (`tuple[float, float]`, defaults to `DEFAULT_VALUE_RANGE`): ``(low, high)`` that levels 0 and 255
            map to.
        dtype (`torch.dtype`, defaults to `torch.float32`): floating dtype of the result.

    Example:
        >>> from_uint8_levels(torch.tensor([0, 255], dtype=torch.uint8)).tolist()
        [-1.0, 1.0]
    """
    low, high = value_range
    return x.to(dtype) * ((high - low) / 255.0) + low


def _check_value_range(value_range: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in value_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"`value_range` must be two finite numbers (low, high) with low < high, got {value_range}.")
    return low, high


def _check_size(size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise TypeError(f"`size` must be a pair of ints (height, width), got {size!r}.")
    if not all(1 <= v <= limit for v, limit in zip(size, input_size)):
        raise ValueError(f"`size` must lie between (1, 1) and the input size {tuple(input_size)}, got {tuple(size)}.")
    return int(size[0]), int(size[1])


def bicubic_degrade(
    hr: torch.Tensor,
    scale: float | None = None,
    *,
    size: tuple[int, int] | None = None,
    quantize: bool = True,
    value_range: tuple[float, float] = DEFAULT_VALUE_RANGE,
) -> torch.Tensor:
    """Downsample an HR image with antialiased bicubic interpolation, as PIL's ``Image.resize(..., BICUBIC)`` does.

    The output size is either [`degraded_size`] of the input (``round(H / scale) x round(W / scale)``, rounded half
    up) or the explicit `size`. When the output size equals the input size (for example ``scale=1``) the input is
    returned unchanged, as PIL does.

    Quantisation: the authors degraded 8-bit images with PIL. With ``quantize=True`` (the default) the input is rounded
    to 8-bit levels, resized in ``uint8`` (PIL's two-pass algorithm with its 8-bit intermediate: at most 2 levels
    away from PIL, 99.7% of the values identical, see the module docstring) and the LR comes back on 8-bit levels.
    With ``quantize=False`` the resize runs in floating point (no intermediate rounding) and the result is only
    clamped to `value_range`; it then differs from PIL by a few levels near sharp edges.

    Args:
        hr (`torch.Tensor`): float HR image, ``(C, H, W)`` or ``(B, C, H, W)``, values in `value_range` (``[-1, 1]``
            for the models).
        scale (`float | None`, *optional*): downscaling factor, a finite number ``>= 1``. Give either `scale` or
            `size`.
        size (`tuple[int, int] | None`, *optional*): explicit output ``(h, w)``, each between 1 and the input side.
        quantize (`bool`, defaults to `True`): emulate PIL on 8-bit images (see above). The ``uint8`` resize runs on
            the CPU; the result is moved back to the input's device and dtype.
        value_range (`tuple[float, float]`, defaults to `DEFAULT_VALUE_RANGE`): ``(low, high)`` of the input values,
            mapped to levels 0 and 255 when quantising.

    Returns:
        The LR image, same layout, device and dtype as `hr`.

    Example:
        >>> hr = torch.rand(3, 256, 256) * 2 - 1
        >>> bicubic_degrade(hr, 2.5).shape
        torch.Size([3, 102, 102])
        >>> bicubic_degrade(hr, size=(48, 48)).shape
        torch.Size([3, 48, 48])
    """
    if not isinstance(hr, torch.Tensor) or not hr.is_floating_point():
        raise TypeError(f"`hr` must be a floating-point torch.Tensor, got {type(hr).__name__}.")
    if hr.dim() not in (3, 4):
        raise ValueError(f"`hr` must have shape (C, H, W) or (B, C, H, W), got {tuple(hr.shape)}.")
    if (scale is None) == (size is None):
        raise ValueError("Give exactly one of `scale` (a number >= 1) and `size` (a pair of ints).")
    low, high = _check_value_range(value_range)
    input_size = (hr.shape[-2], hr.shape[-1])
    out_size = degraded_size(input_size, scale) if size is None else _check_size(tuple(size), input_size)
    if out_size == input_size:
        return hr

    x = hr.unsqueeze(0) if hr.dim() == 3 else hr
    if quantize:
        levels = to_uint8_levels(x.detach().cpu(), (low, high)).contiguous()
        lr_levels = F.interpolate(levels, size=out_size, mode="bicubic", antialias=True, align_corners=False)
        lr = from_uint8_levels(lr_levels, (low, high), dtype=hr.dtype).to(hr.device)
    else:
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        lr = F.interpolate(work, size=out_size, mode="bicubic", antialias=True, align_corners=False)
        lr = lr.clamp(low, high).to(hr.dtype)
    return lr.squeeze(0) if hr.dim() == 3 else lr

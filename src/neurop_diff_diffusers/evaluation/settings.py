"""The evaluation protocol's settings: the scales of the paper's tables, the training distribution's range, and the
checks of the settings (one ValueError naming the argument, before any work).

Example:
    >>> from neurop_diff_diffusers.evaluation.settings import DEFAULT_SCALES, MAX_IN_DISTRIBUTION_SCALE
    >>> [s for s in DEFAULT_SCALES if s > MAX_IN_DISTRIBUTION_SCALE]
    [9.0, 10.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

from ..metrics.quality import PROTOCOLS
from .methods import EVALUATION_METHODS, METHODS

#: Scales of the paper's continuous-SR table (Table 3): 2 to 8 in the training distribution, 9 and 10 out of it.
DEFAULT_SCALES: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0)
#: Largest scale of the training distribution (docs/method.md section 1: `s ~ U(1, 8]`).
MAX_IN_DISTRIBUTION_SCALE = 8.0
_MIN_RESOLUTION = 16
#: Smallest LR side of the protocol (the antialiased bicubic degradation needs 2 px).
_MIN_LR_SIDE = 2


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
    """The settings of [`~neurop_diff_diffusers.evaluation.run.evaluate`] that need neither a pipeline nor images,
    checked and normalised; the command line calls it before loading anything, `evaluate` again.

    Args:
        scales (`Any`): a non-empty list of distinct finite numbers > 1.
        num_inference_steps (`Any`, defaults to 50): an int >= 1.
        seed (`Any`, defaults to 0): an int >= 0.
        resolution (`Any`, defaults to 256): the HR side, large enough for the SSIM window after the protocol's shave.
        protocol (`Any`, defaults to `"rgb"`): a key of [`~neurop_diff_diffusers.metrics.quality.PROTOCOLS`].
        max_images (`Any`, *optional*): `None` or an int >= 1.
        chunk_size (`Any`, *optional*): `None` or an int >= 1.
        figure_image (`Any`, *optional*, defaults to 0): `None`, an int >= 0 or a non-empty list of distinct ones.

    Returns:
        `dict[str, Any]`: the same names, with `scales` as a list of floats, the ints as `int` and `figure_image` as
        `None` or a list of ints.

    Raises:
        ValueError: naming the first argument that is wrong and what it must be.

    Example:
        >>> from neurop_diff_diffusers.evaluation.settings import check_settings
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
        >>> from neurop_diff_diffusers.evaluation.settings import spread_positions
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

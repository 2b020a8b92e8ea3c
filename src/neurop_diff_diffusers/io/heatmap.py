"""The uncertainty map as a picture: a colour ramp, its scale and the overlay on the output (numpy only).

The web app shows the map of ``pipe(..., num_samples=N)`` / ``neurop-diff upscale --uncertainty N`` this way. The
ramp goes from black (the samples agree) through purple, crimson and orange to pale yellow (they differ most); its
luminance rises all along it, so it reads the same in grey. A map is scaled by [`uncertainty_scale`] (by default
its 99th percentile: one odd pixel does not wash the rest out): values from 0 to the scale spread over the ramp,
larger ones take its top colour.

Example:
    >>> import numpy as np
    >>> from neurop_diff_diffusers.io.heatmap import overlay, uncertainty_heatmap
    >>> heat = uncertainty_heatmap(np.array([[0.0, 0.1]], np.float32), vmax=0.1)
    >>> heat.tolist()
    [[[0, 0, 0], [255, 255, 200]]]
    >>> overlay(np.full((1, 2, 3), 100, np.uint8), heat, 0.5).tolist()
    [[[50, 50, 50], [178, 178, 150]]]
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np

#: The ramp's anchors: position in ``[0, 1]`` and sRGB colour; linear in between. Black, deep purple, crimson,
#: orange, pale yellow: the luminance rises from one anchor to the next.
HEATMAP_RAMP: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0, 0, 0)),
    (0.25, (60, 15, 110)),
    (0.5, (180, 40, 80)),
    (0.75, (245, 140, 20)),
    (1.0, (255, 255, 200)),
)
#: The percentile of the map that takes the ramp's top colour, unless a scale is given.
DEFAULT_PERCENTILE = 99.0


def ramp_colours(t: Any) -> np.ndarray:
    """The colours of [`HEATMAP_RAMP`] at positions ``t`` (clipped to ``[0, 1]``).

    Args:
        t (`array-like`): positions, any shape.

    Returns:
        `np.ndarray`: uint8, ``t``'s shape plus a last axis of 3 (RGB).

    Example:
        >>> ramp_colours([0.0, 0.5, 1.0]).tolist()
        [[0, 0, 0], [180, 40, 80], [255, 255, 200]]
    """
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    positions = [p for p, _ in HEATMAP_RAMP]
    channels = [np.interp(t, positions, [c[k] for _, c in HEATMAP_RAMP]) for k in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def _check_map(uncertainty: Any) -> np.ndarray:
    if not isinstance(uncertainty, np.ndarray) or uncertainty.ndim != 2 or uncertainty.size == 0:
        shape = getattr(uncertainty, "shape", None)
        raise ValueError(f"`uncertainty` must be a non-empty 2-D (height, width) numpy array, got shape {shape}")
    if not np.issubdtype(uncertainty.dtype, np.floating):
        raise TypeError(f"`uncertainty` must be a float array, got {uncertainty.dtype}")
    if not np.isfinite(uncertainty).all():
        raise ValueError("`uncertainty` holds NaN or infinite values; a map of standard deviations must be finite")
    if (uncertainty < 0).any():
        raise ValueError(f"`uncertainty` must be >= 0 (standard deviations), got a minimum {uncertainty.min():g}")
    return uncertainty


def uncertainty_scale(uncertainty: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The value that takes the ramp's top colour: the map's ``percentile``-th percentile.

    Args:
        uncertainty (`np.ndarray`): the map, ``(H, W)`` float, finite, >= 0.
        percentile (`float`, defaults to 99): in ``(0, 100]``; 100 is the map's maximum.

    Returns:
        `float`: the scale (0 for a map of zeros).

    Raises:
        ValueError: a map that is not 2-D, empty, negative or not finite, or a percentile out of range.
        TypeError: a map that is not a float array.

    Example:
        >>> uncertainty_scale(np.arange(101, dtype=np.float32).reshape(1, 101))
        99.0
    """
    _check_map(uncertainty)
    if isinstance(percentile, bool) or not isinstance(percentile, Real) or not 0 < percentile <= 100:
        raise ValueError(f"`percentile` must be a number in (0, 100], got {percentile!r}")
    return float(np.percentile(uncertainty.astype(np.float64), percentile))


def uncertainty_heatmap(uncertainty: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """The map painted with [`HEATMAP_RAMP`]: 0 black, ``vmax`` and above pale yellow, linear in between.

    Args:
        uncertainty (`np.ndarray`): the map, ``(H, W)`` float, finite, >= 0 (e.g.
            [`~neurop_diff_diffusers.pipelines.uncertainty.NeurOpDiffPipelineOutput.uncertainty`]).
        vmax (`float`, *optional*): the value of the top colour, > 0; ``None``: [`uncertainty_scale`] (the 99th
            percentile). A map whose scale is 0 (all zeros) is all black.

    Returns:
        `np.ndarray`: ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: a map that is not 2-D, empty, negative or holds NaN / infinite values, or a ``vmax`` that is not
            a finite number > 0.
        TypeError: a map that is not a float array.

    Example:
        >>> uncertainty_heatmap(np.zeros((2, 3), np.float32)).shape
        (2, 3, 3)
    """
    _check_map(uncertainty)
    if vmax is None:
        vmax = uncertainty_scale(uncertainty)
        if vmax == 0.0:
            return ramp_colours(np.zeros(uncertainty.shape))
    elif isinstance(vmax, bool) or not isinstance(vmax, Real) or not np.isfinite(vmax) or vmax <= 0:
        raise ValueError(f"`vmax` must be a finite number > 0 or None (the 99th percentile), got {vmax!r}")
    return ramp_colours(uncertainty.astype(np.float64) / float(vmax))


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """Alpha-blend a heat-map over an image: ``round((1 - alpha) * rgb + alpha * heat)``.

    Args:
        rgb (`np.ndarray`): the image, ``(H, W, 3)`` uint8.
        heat (`np.ndarray`): the heat-map ([`uncertainty_heatmap`]), the same shape, uint8.
        alpha (`float`): the heat-map's opacity in ``[0, 1]``: 0 gives ``rgb``, 1 gives ``heat``.

    Returns:
        `np.ndarray`: ``(H, W, 3)`` uint8.

    Raises:
        ValueError: arrays of other shapes or dtypes, or an ``alpha`` outside ``[0, 1]``.

    Example:
        >>> overlay(np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8), 0.25).tolist()
        [[[64, 64, 64]]]
    """
    for name, array in (("rgb", rgb), ("heat", heat)):
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", type(array).__name__)
            raise ValueError(f"`{name}` must be a (height, width, 3) uint8 array, got shape {shape} and {dtype}")
    if rgb.shape != heat.shape:
        raise ValueError(f"`rgb` {rgb.shape} and `heat` {heat.shape} must have the same shape")
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * heat.astype(np.float64)
    return np.rint(blended).astype(np.uint8)


__all__ = ["DEFAULT_PERCENTILE", "HEATMAP_RAMP", "overlay", "ramp_colours", "uncertainty_heatmap", "uncertainty_scale"]

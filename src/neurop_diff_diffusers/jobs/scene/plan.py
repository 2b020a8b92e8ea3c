"""The window plan: a scene cut into cores of at most ``window`` LR px, each read with a ``halo`` of context.

A window computes every output pixel whose centre falls inside its LR crop, and each output pixel keeps the
coordinate it has in the whole scene: output row ``i`` of an ``H -> H_out`` scene is centred at LR row
``(i + 0.5) * H / H_out``. Overlapping window outputs are blended with separable raised-cosine weights that ramp across
each overlap (never 0), so there are no seams.

Example:
    >>> plan = ScenePlan.create((1000, 700), (2000, 1400), window=256, halo=16)
    >>> plan.grid, len(plan.windows())
    ((4, 3), 12)
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...io.rasters import RasterHeader, check_header, inspect_raster, open_raster
from .statistics import SceneStatistics, ValueRange, scene_statistics

#: LR pixels of a window's core, a side (measured: README "Whole scenes").
DEFAULT_WINDOW = 256
#: LR pixels of context added on every side of a core (also the half-overlap of neighbouring windows).
DEFAULT_HALO = 16


def output_start(position: int, size: int, out_size: int) -> int:
    """The first output pixel whose centre lies at or after LR position ``position`` (an LR pixel edge).

    Output pixel ``i`` is centred at ``(i + 0.5) * size / out_size`` in LR pixels; exact integer arithmetic.

    Args:
        position (`int`): an LR pixel edge in ``[0, size]``.
        size (`int`): the LR side.
        out_size (`int`): the output side.

    Example:
        >>> output_start(0, 10, 25), output_start(4, 10, 25), output_start(10, 10, 25)
        (0, 10, 25)
    """
    return max(0, -((size - 2 * position * out_size) // (2 * size)))


def core_bounds(size: int, window: int) -> list[int]:
    """Edges of the fewest equal cores of at most ``window`` px covering ``[0, size)``.

    Example:
        >>> core_bounds(1000, 256)
        [0, 250, 500, 750, 1000]
    """
    n = max(1, math.ceil(size / window))
    return [round(k * size / n) for k in range(n + 1)]


def ramp_weights(length: int, before: int, after: int) -> np.ndarray:
    """1-D blending weights: a raised-cosine ramp over the first ``before`` and last ``after`` entries, 1 elsewhere.

    Never 0, so every output pixel has a positive total weight.

    Example:
        >>> np.round(ramp_weights(6, 2, 0), 3).tolist()
        [0.146, 0.854, 1.0, 1.0, 1.0, 1.0]
    """
    w = np.ones(length, dtype=np.float64)
    for n, flip in ((before, False), (after, True)):
        n = min(max(n, 0), length)
        if n > 0:
            r = (1 - np.cos(np.pi * (np.arange(n) + 0.5) / n)) / 2
            if flip:
                w[length - n :] = np.minimum(w[length - n :], r[::-1])
            else:
                w[:n] = np.minimum(w[:n], r)
    return w


def check_window(window: int, halo: int) -> None:
    """Refuse a ``window`` below 8 LR px or a ``halo`` outside ``[0, window]``.

    Raises:
        ValueError: naming the argument and its allowed range.

    Example:
        >>> check_window(256, 300)
        Traceback (most recent call last):
        ...
        ValueError: `halo` must be an int in [0, window = 256] (LR pixels), got 300.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 8:
        raise ValueError(f"`window` must be an int >= 8 (LR pixels), got {window!r}.")
    if isinstance(halo, bool) or not isinstance(halo, int) or not 0 <= halo <= window:
        raise ValueError(f"`halo` must be an int in [0, window = {window}] (LR pixels), got {halo!r}.")


@dataclass(frozen=True)
class SceneWindow:
    """One window of a [`ScenePlan`]: its index, LR crop and output region (``[start, stop)`` pairs)."""

    index: int
    row: int
    col: int
    lr_rows: tuple[int, int]
    lr_cols: tuple[int, int]
    out_rows: tuple[int, int]
    out_cols: tuple[int, int]

    @property
    def out_shape(self) -> tuple[int, int]:
        """The output region's ``(height, width)``."""
        return self.out_rows[1] - self.out_rows[0], self.out_cols[1] - self.out_cols[0]


@dataclass(frozen=True)
class ScenePlan:
    """The windows of a scene: LR size, output size, window and halo.

    Args:
        size (`tuple[int, int]`): LR ``(height, width)``.
        out_size (`tuple[int, int]`): output ``(height, width)``.
        window (`int`): LR pixels of a core, a side.
        halo (`int`): LR pixels of context on every side.
    """

    size: tuple[int, int]
    out_size: tuple[int, int]
    window: int
    halo: int

    @classmethod
    def create(cls, size: tuple[int, int], out_size: tuple[int, int], window: int, halo: int) -> "ScenePlan":
        """A plan, with ``window`` and ``halo`` checked ([`check_window`])."""
        check_window(window, halo)
        return cls(tuple(size), tuple(out_size), window, halo)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, columns)`` of windows."""
        return len(core_bounds(self.size[0], self.window)) - 1, len(core_bounds(self.size[1], self.window)) - 1

    def _axis(self, axis: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        size, out = self.size[axis], self.out_size[axis]
        bounds = core_bounds(size, self.window)
        spans = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            lr = (max(0, a - self.halo), min(size, b + self.halo))
            spans.append((lr, (output_start(lr[0], size, out), output_start(lr[1], size, out))))
        return spans

    def windows(self) -> list[SceneWindow]:
        """Every window, row of windows by row of windows (the index order)."""
        rows, cols = self._axis(0), self._axis(1)
        return [
            SceneWindow(i * len(cols) + j, i, j, r[0], c[0], r[1], c[1])
            for i, r in enumerate(rows)
            for j, c in enumerate(cols)
        ]

    def weights(self, axis: int) -> list[np.ndarray]:
        """Per window row (``axis=0``) or column (``axis=1``): the 1-D blending weights of its output span."""
        spans = [o for _, o in self._axis(axis)]
        out = []
        for k, (a, b) in enumerate(spans):
            before = spans[k - 1][1] - a if k > 0 else 0
            after = b - spans[k + 1][0] if k + 1 < len(spans) else 0
            out.append(ramp_weights(b - a, before, after))
        return out

    def finished_rows(self, row: int) -> int:
        """Output rows below this one are final once window row ``row`` is blended."""
        spans = [o for _, o in self._axis(0)]
        return spans[row + 1][0] if row + 1 < len(spans) else self.out_size[0]

    def strip_rows(self) -> int:
        """The tallest output span of a window row (the strip accumulator's height)."""
        return max(b - a for _, (a, b) in self._axis(0))


@dataclass(frozen=True)
class RasterPlan:
    """An input GeoTIFF whose header was read and checked once ([`plan_raster`]), and optionally its statistics
    ([`RasterPlan.scan`]): hand it to the scene engine instead of the path and neither is done again.

    Args:
        path (`Path`): the input.
        header (`RasterHeader`): its header ([`~neurop_diff_diffusers.io.rasters.inspect_raster`]).
        notes (`tuple[str, ...]`): the header's warnings, one line each
            ([`~neurop_diff_diffusers.io.rasters.check_header`]: a palette expanded to RGB, a 32 / 64-bit type).
        stats (`SceneStatistics | None`, *optional*): the statistics pass of ``value_range``, or ``None``.
        value_range (`ValueRange | None`, *optional*): the value range of ``stats``.
    """

    path: Path
    header: RasterHeader
    notes: tuple[str, ...] = ()
    stats: SceneStatistics | None = None
    value_range: ValueRange | None = None

    def scan(self, value_range: ValueRange) -> RasterPlan:
        """This plan with the statistics pass of ``value_range`` done: every block of the input read once (the damage
        scan too: ``ValueError("not a readable raster (...)")``), before any model is loaded.

        Args:
            value_range (`ValueRange`): from [`~neurop_diff_diffusers.jobs.scene.statistics.parse_value_range`] (the
                engine reuses the statistics only for the same value range).
        """
        with open_raster(self.path) as src:
            stats = scene_statistics(src, value_range)
        return dataclasses.replace(self, stats=stats, value_range=value_range)

    def statistics(self, value_range: ValueRange) -> SceneStatistics:
        """The statistics of ``value_range``: those of [`scan`] when it was done with it, else a statistics pass."""
        return (
            self.stats if self.stats is not None and self.value_range == value_range else self.scan(value_range).stats
        )


def plan_raster(path: str | os.PathLike | RasterPlan) -> RasterPlan:
    """Read an input GeoTIFF's header and check it, once; no pixel is read.

    The header is read through [`~neurop_diff_diffusers.io.rasters.open_raster`] (a local regular file, the GTiff
    driver only, no sidecar files) and checked by [`~neurop_diff_diffusers.io.rasters.check_header`]: no pixels,
    complex or unsupported data types, mixed data types, a colour table on anything but one uint8 / uint16 band, and 2
    bands are refused. A budget check ([`~neurop_diff_diffusers.io.rasters.check_budget`]) can follow on
    ``plan.header`` before any pixel is read.

    Args:
        path (`str | os.PathLike | RasterPlan`): the input (a plan is returned as it is).

    Returns:
        [`RasterPlan`]: the path, the header and its warnings (``notes``).

    Raises:
        ValueError: one line: a name that is not a local file, a file no allowed driver opens, or a header refused.

    Example:
        >>> raster = plan_raster("scene.tif")  # doctest: +SKIP
        >>> upscale_geotiff(pipe, raster, "scene_x2.tif", scale=2)  # doctest: +SKIP
    """
    if isinstance(path, RasterPlan):
        return path
    header = inspect_raster(path)
    notes = check_header(header)
    return RasterPlan(Path(path), header, tuple(notes))

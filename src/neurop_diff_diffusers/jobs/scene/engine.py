"""Whole scenes out of core: a GeoTIFF streamed window by window from disk to disk, in parallel, resumable, COG out.

The scene engine behind [`upscale_geotiff`] and ``neurop-diff upscale scene.tif``:

- **Windows.** The LR scene is cut into a grid of cores of at most ``window`` px a side; each window is its core
  plus a ``halo`` of LR pixels on every side (clipped at the scene's border), read with a windowed read. The halo is
  context for the encoder and the operator and the overlap in which neighbouring windows are blended.
- **Coordinates.** A window computes every output pixel whose centre falls inside its LR crop, and each output pixel
  keeps the coordinate it has in the whole scene: output row ``i`` of an ``H -> H_out`` scene is centred at LR row
  ``(i + 0.5) * H / H_out``, expressed relative to the crop in the operator's ``[-1, 1]`` convention
  (``coordinates.py``), with the scene's cell. A window that covers the whole scene is the whole-scene pass.
- **Blending.** Overlapping window outputs are averaged with separable raised-cosine weights that ramp across each
  overlap (never 0), so there are no seams.
- **Streaming.** Windows are done row of windows by row of windows; output rows that no later window touches are
  final and written at once. Peak memory is the model, the windows in flight and a strip accumulator of
  ``(bands + 1) x (window + 2 halo) * scale_y rows x output width`` float32 values: it depends on the window size
  and the output *width*, never on the scene's area.
- **Deterministic.** Window ``k`` draws its noise from ``derive_seed(seed, "scene-window", k)`` and every window is
  computed with one intra-op thread on the CPU (several windows run at once in worker threads), so the output does
  not depend on the number of processes or workers, their order, or a restart.
- **Resume.** Each finished window's output is saved (atomically) in a work folder beside the output,
  ``.<name>.neurop-diff-scene/``, with ``journal.json`` recording the settings (model fingerprint, output size,
  steps, sampler, dtype, seed, strength, prior only, samples, window, halo, value range, input file). The same call
  after a crash or SIGKILL continues from the windows done; a journal of other settings is never mixed in
  (``ValueError`` naming the differences; ``restart=True`` / ``--restart`` discards it). The folder is removed when
  the output is committed.
- **Parallel.** Under ``accelerate launch`` the windows left to do are split between the processes; the main process
  assembles the output when all are done: one file, bit-identical to one process.
- **Output.** A tiled (512 px), DEFLATE-compressed, pixel-interleaved Cloud-Optimized GeoTIFF with internal
  overviews (the input's factors when it has some), BigTIFF when the size needs it, with the input's CRS,
  georeferencing (transform, GCPs, RPCs on the output grid:
  [`~neurop_diff_diffusers.io.rasters.output_georeferencing`]), nodata / mask and band metadata (as ``geo.py``
  describes).
- **Inputs.** Checked from the header first ([`~neurop_diff_diffusers.io.rasters.check_header`]); read by
  [`read_block`]: a palette raster expanded to RGB, 32 / 64-bit values kept for a float64 stretch, NaN / infinite
  values invalid (one warning when undeclared; masked in the output). An alpha band is upscaled with nearest
  neighbour; a window whose model output holds NaN / inf raises ``NonFiniteOutputError`` (nothing written).
- **Values.** ``value_range``: ``"minmax"`` (default: ``uint8`` 0..255, other dtypes the per-band min-max over valid
  pixels, today's behaviour), a fixed range ``"0,10000"``, or a per-band percentile stretch ``"p2,p98"`` (from a
  histogram pass over the valid pixels, never loading the scene). The output is mapped back to the input's units;
  input values outside the stretch are clipped and counted in a warning.
- **Uncertainty.** With ``num_samples=N`` (CLI ``--uncertainty N``) every window is sampled ``N`` times (the seeds
  drawn from the window's own, [`~neurop_diff_diffusers.pipelines.uncertainty.sample_seeds`]): the window's output is
  the samples' mean and its uncertainty map the standard deviation over the samples (``ddof=0``) averaged over the
  model's three channels (by default over flipped inputs and pooled over a small Gaussian), as ``pipe(...,
  num_samples=N, prior=...)`` returns them for the window's prior (flipped with the window, not recomputed). The maps
  are saved with each window (one more plane in its file, so a resumed run gives the same bytes), blended with the
  image's weights and written as a second COG, [`uncertainty_path`] (``<output stem>.uncertainty.tif``): float32, one
  band, georeferenced exactly like the output, committed just before it (a failed run leaves neither). The map is on
  the model's ``[0, 1]`` scale, i.e. the value range (the ``NEUROP_DIFF_STRETCH`` tag: ``low`` -> 0, ``high`` -> 1, per
  band) mapped to 0..1: a value ``u`` is ``u * (high - low)`` in the input's units of a band.

Example:
    >>> plan = ScenePlan.create((1000, 700), (2000, 1400), window=256, halo=16)
    >>> plan.grid, len(plan.windows())
    ((4, 3), 12)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...io.geo import (
    STRETCH_TAG,
    BandStretch,
    as_rgb,
    avoid_nodata,
    band_metadata,
    band_stretch,
    copy_band_metadata,
    require_rasterio,
)
from ...io.paths import uncertainty_path
from ...io.rasters import (
    RasterHeader,
    build_output_overviews,
    check_header,
    expand_palette,
    gdal_safe_env,
    inspect_raster,
    open_raster,
    output_georeferencing,
    output_overviews,
    palette_table,
)
from ...pipelines.image_processing import check_finite_output, resolve_output_size
from ...pipelines.uncertainty import check_num_samples
from ...utils import atomic_write, atomic_write_json, derive_seed

#: LR pixels of a window's core, a side (measured: README "Whole scenes").
DEFAULT_WINDOW = 256
#: LR pixels of context added on every side of a core (also the half-overlap of neighbouring windows).
DEFAULT_HALO = 16
#: Version of the journal format; a journal of another version is never mixed in.
JOURNAL_VERSION = 1
#: Tags written into the output: the stretch (``geo.STRETCH_TAG``) and the value range asked for.
VALUE_RANGE_TAG = "NEUROP_DIFF_VALUE_RANGE"
_COG_OPTIONS = {"COMPRESS": "DEFLATE", "BLOCKSIZE": "512", "BIGTIFF": "IF_SAFER", "OVERVIEWS": "AUTO"}
_GDAL_CACHE_MB = 64  # bounds GDAL's block cache while the output is assembled and copied to a COG
_STATS_PIXELS = 4_000_000  # input pixels per block of the statistics passes


# ------------------------------------------------------------------------------------------------------------------
# The window plan
# ------------------------------------------------------------------------------------------------------------------
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
        """A plan, with ``window`` and ``halo`` checked (``ValueError`` naming the argument)."""
        if isinstance(window, bool) or not isinstance(window, int) or window < 8:
            raise ValueError(f"`window` must be an int >= 8 (LR pixels), got {window!r}.")
        if isinstance(halo, bool) or not isinstance(halo, int) or not 0 <= halo <= window:
            raise ValueError(f"`halo` must be an int in [0, window = {window}] (LR pixels), got {halo!r}.")
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


# ------------------------------------------------------------------------------------------------------------------
# Value ranges and the statistics pass
# ------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValueRange:
    """How input values map to the model's ``[0, 1]``: ``minmax``, ``fixed`` (``low``, ``high``) or ``percentile``.

    Args:
        kind (`str`): ``"minmax"``, ``"fixed"`` or ``"percentile"``.
        low (`float`): the fixed value or the percentile mapped to 0 (unused for ``minmax``).
        high (`float`): the fixed value or the percentile mapped to 1.
    """

    kind: str = "minmax"
    low: float = 0.0
    high: float = 1.0

    def __str__(self) -> str:
        if self.kind == "minmax":
            return "minmax"
        if self.kind == "fixed":
            return f"{self.low:g},{self.high:g}"
        return f"p{self.low:g},p{self.high:g}"


def parse_value_range(text: str | ValueRange | None) -> ValueRange:
    """``"minmax"`` (or ``None``), ``"LOW,HIGH"`` (e.g. ``"0,10000"``) or ``"pLOW,pHIGH"`` (e.g. ``"p2,p98"``).

    Raises:
        ValueError: naming ``value_range`` and the allowed forms.

    Example:
        >>> parse_value_range("p2,p98"), parse_value_range("0,4095").high
        (ValueRange(kind='percentile', low=2.0, high=98.0), 4095.0)
    """
    if text is None or isinstance(text, ValueRange):
        return text or ValueRange()
    if not isinstance(text, str):
        raise ValueError(f"`value_range` must be a string, got {type(text).__name__}.")
    spec = text.strip().lower()
    if spec == "minmax":
        return ValueRange()
    number = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*"
    fixed = re.fullmatch(number + "," + number, spec)
    if fixed:
        low, high = float(fixed.group(1)), float(fixed.group(2))
        if math.isfinite(low) and math.isfinite(high) and low < high:
            return ValueRange("fixed", low, high)
    percent = re.fullmatch(r"\s*p" + number + r",\s*p" + number, spec)
    if percent:
        low, high = float(percent.group(1)), float(percent.group(2))
        if 0 <= low < high <= 100:
            return ValueRange("percentile", low, high)
    raise ValueError(
        f"`value_range` must be 'minmax', 'LOW,HIGH' with LOW < HIGH (e.g. '0,10000') or 'pLOW,pHIGH' with "
        f"0 <= LOW < HIGH <= 100 (e.g. 'p2,p98'), got {text!r}."
    )


@dataclass
class SceneStatistics:
    """Per band, over the valid pixels of the whole scene: the stretch, the fill value of invalid pixels (in
    ``[0, 1]``), and the valid pixels clipped by the stretch."""

    stretch: BandStretch
    fill: tuple[float, ...]
    clipped: tuple[int, ...]
    valid: tuple[int, ...]
    nonfinite: int = 0


def read_block(src: Any, window: Any, table: Any = None) -> tuple[np.ndarray, np.ndarray, int]:
    """One window of an open raster as the engine sees it: the bands' values, their validity, undeclared NaN / inf.

    A palette raster (``table`` from [`~neurop_diff_diffusers.io.rasters.palette_table`]) is expanded to RGB through
    its colour table. Values keep their dtype (32 / 64-bit types are stretched in float64 by
    [`~neurop_diff_diffusers.io.geo.BandStretch`]). NaN / infinite values are invalid whether or not a nodata value or
    mask declares them.

    Args:
        src (`Any`): an open rasterio dataset.
        window (`Any`): a rasterio ``Window``.
        table (`Any`, *optional*): the palette's lookup table, or ``None``.

    Returns:
        ``(values, valid, nonfinite)``: ``(bands, h, w)`` values, their ``(bands, h, w)`` bool validity, and the
        number of NaN / infinite values that the file's masks called valid.
    """
    if table is not None:
        values = expand_palette(src.read(1, window=window), table)
        return values, np.repeat(src.read_masks(1, window=window)[None] > 0, 3, axis=0), 0
    values = src.read(window=window)
    valid = src.read_masks(window=window) > 0
    if not np.issubdtype(values.dtype, np.floating):
        return values, valid, 0
    finite = valid & np.isfinite(values)
    return values, finite, int(np.count_nonzero(valid & ~finite))


def _row_blocks(height: int, width: int) -> Iterator[tuple[int, int]]:
    rows = max(1, min(height, _STATS_PIXELS // max(width, 1)))
    for top in range(0, height, rows):
        yield top, min(rows, height - top)


def _exact_histogram_dtype(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2


def _percentile_from_counts(counts: np.ndarray, values: np.ndarray, q: float) -> float:
    total = counts.sum()
    target = q / 100.0 * total
    cumulative = np.cumsum(counts)
    k = int(np.searchsorted(cumulative, max(target, 1e-12), side="left"))
    return float(values[min(k, len(values) - 1)])


def scene_statistics(src: Any, value_range: ValueRange) -> SceneStatistics:
    """The stretch of an open raster from one streaming pass (two for float percentiles), never the whole scene.

    Args:
        src (`Any`): an open rasterio dataset ([`~neurop_diff_diffusers.io.rasters.open_raster`]).
        value_range (`ValueRange`): see [`parse_value_range`].

    Raises:
        ValueError: a scene without valid pixels.
    """
    table = palette_table(src)  # a palette raster is expanded to RGB through its colour table
    bands, height, width = (src.count if table is None else 3), src.height, src.width
    dtype = np.dtype(src.dtypes[0] if table is None else "uint8")
    nonfinite = 0
    exact = _exact_histogram_dtype(dtype)
    offset = int(np.iinfo(dtype).min) if exact else 0
    lows = np.full(bands, np.inf)
    highs = np.full(bands, -np.inf)
    sums = np.zeros(bands)
    counts = np.zeros(bands, dtype=np.int64)
    hist = [np.zeros(1 << (8 * dtype.itemsize), np.int64) for _ in range(bands)] if exact else None
    from rasterio.windows import Window

    for top, rows in _row_blocks(height, width):
        window = Window(0, top, width, rows)
        data, masks, bad = read_block(src, window, table)
        nonfinite += bad
        for b in range(bands):
            values = data[b][masks[b]]
            if values.size == 0:
                continue
            lows[b] = min(lows[b], float(values.min()))
            highs[b] = max(highs[b], float(values.max()))
            sums[b] += float(values.sum(dtype=np.float64))
            counts[b] += values.size
            if exact:
                hist[b] += np.bincount((values.astype(np.int64) - offset), minlength=len(hist[b]))
    if not counts.any():
        raise ValueError(f"`{src.name}` has no valid pixels (everything is nodata).")
    lows[counts == 0], highs[counts == 0] = 0.0, 1.0
    if value_range.kind == "minmax":
        stretch = band_stretch(lows, highs, dtype.name)
    elif value_range.kind == "fixed":
        stretch = BandStretch((value_range.low,) * bands, (value_range.high,) * bands, dtype.name)
    else:
        edges = None if exact else [np.linspace(lows[b], highs[b], 65537) for b in range(bands)]
        if not exact:  # float or 32-bit bands: a 65536-bin histogram between the band's min and max
            hist = [np.zeros(65536, np.int64) for _ in range(bands)]
            for top, rows in _row_blocks(height, width):
                window = Window(0, top, width, rows)
                data, masks, _ = read_block(src, window, table)
                for b in range(bands):
                    hist[b] += np.histogram(data[b][masks[b]], bins=edges[b])[0]
        low, high = [], []
        for b in range(bands):
            values = np.arange(len(hist[b])) + offset if exact else edges[b][1:]
            lo = _percentile_from_counts(hist[b], values if exact else edges[b][:-1], value_range.low)
            hi = _percentile_from_counts(hist[b], values, value_range.high)
            low.append(lo)
            high.append(hi if hi > lo else lo + 1.0)
        stretch = BandStretch(tuple(low), tuple(high), dtype.name)
    clipped = [0] * bands
    if value_range.kind != "minmax":
        if exact:
            for b in range(bands):
                values = np.arange(len(hist[b])) + offset
                clipped[b] = int(hist[b][(values < stretch.low[b]) | (values > stretch.high[b])].sum())
        else:
            for top, rows in _row_blocks(height, width):
                window = Window(0, top, width, rows)
                data, masks, _ = read_block(src, window, table)
                for b in range(bands):
                    values = data[b][masks[b]]
                    clipped[b] += int(((values < stretch.low[b]) | (values > stretch.high[b])).sum())
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    fill = tuple(
        float(np.clip(stretch.forward(np.array([means[b]]), b)[0], 0.0, 1.0)) if counts[b] else 0.0
        for b in range(bands)
    )
    return SceneStatistics(stretch, fill, tuple(clipped), tuple(int(c) for c in counts), nonfinite)


# ------------------------------------------------------------------------------------------------------------------
# One window through the model
# ------------------------------------------------------------------------------------------------------------------
def window_coordinates(plan: ScenePlan, window: SceneWindow) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's output pixel centres relative to its LR crop (operator convention) and the scene's cell.

    Returns:
        ``(coord, cell)``: ``(1, n_rows, n_cols, 2)`` (row, column) in float32 and ``(1, 2)``.
    """
    axes, cells = [], []
    for axis, (lr, out) in enumerate(((window.lr_rows, window.out_rows), (window.lr_cols, window.out_cols))):
        size, out_size = plan.size[axis], plan.out_size[axis]
        crop = lr[1] - lr[0]
        centres = (np.arange(out[0], out[1], dtype=np.float64) + 0.5) * size / out_size  # LR pixels, scene frame
        axes.append(torch.from_numpy(-1.0 + 2.0 * (centres - lr[0]) / crop).float())
        cells.append(2.0 * size / out_size / crop)
    coord = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).unsqueeze(0)
    return coord, torch.tensor([cells], dtype=torch.float32)


def _is_neurop_pipeline(pipe: Any) -> bool:
    return hasattr(pipe, "compute_prior") and hasattr(pipe, "neural_operator") and hasattr(pipe, "unet")


def window_prior(
    pipe: Any, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, chunk_size: Any
) -> torch.Tensor:
    """The pipeline's prior of an LR window (``(1, 3, h, w)`` in ``[-1, 1]``) at scene coordinates ``coord``."""
    operator = pipe.neural_operator
    if operator is None:  # the bicubic prior, sampled at the same coordinates
        return F.grid_sample(lr, coord.flip(-1), mode="bicubic", padding_mode="border", align_corners=False)
    lr = lr.to(device=operator.device, dtype=operator.dtype)
    return operator.query(lr, coord.to(lr), cell.to(lr), chunk_size=chunk_size).float()


def window_seed(seed: int, index: int) -> int:
    """The seed of window ``index``'s noise: ``derive_seed(seed, "scene-window", index)``."""
    return derive_seed(seed, "scene-window", index)


@torch.no_grad()
def _run_window(
    pipe: Any,
    src: Any,
    plan: ScenePlan,
    window: SceneWindow,
    stats: SceneStatistics,
    model_bands: list[int],
    seed: int,
    pipe_kwargs: dict[str, Any],
    alpha_bands: tuple[int, ...] = (),
) -> np.ndarray:
    """One window: read, stretch, fill, through the model; returns the output bands in ``[0, 1]`` float32.

    Bands outside ``model_bands`` are bicubic, except the 0-based ``alpha_bands`` (masks): nearest neighbour, the
    LR pixel under each output pixel's centre, the same in every window that covers it. With ``num_samples`` in
    ``pipe_kwargs`` the bands are the samples' mean and one more plane follows them: the window's uncertainty map
    (``(bands + 1, h, w)``).
    """
    from rasterio.windows import Window

    (r0, r1), (c0, c1) = window.lr_rows, window.lr_cols
    crop = Window(c0, r0, c1 - c0, r1 - r0)
    data, valid, _ = read_block(src, crop, palette_table(src))
    count = data.shape[0]
    unit = np.empty(data.shape, dtype=np.float32)
    for b in range(count):
        unit[b] = stats.stretch.forward(data[b], b)
        unit[b][~valid[b]] = stats.fill[b]
    np.clip(unit, 0.0, 1.0, out=unit)
    del data
    out_h, out_w = window.out_shape
    rgb = torch.from_numpy(unit[model_bands]).unsqueeze(0)
    coord, cell = window_coordinates(plan, window)
    kwargs = dict(pipe_kwargs)
    sampled = kwargs.get("num_samples") is not None  # prepare_scene refuses it with prior_only
    called = None
    if _is_neurop_pipeline(pipe):
        device = pipe._execution_device
        prior = window_prior(pipe, (rgb * 2.0 - 1.0).to(device), coord.to(device), cell, kwargs.get("chunk_size"))
        if kwargs.pop("prior_only", False):  # NaN / inf refused as the pipeline's own prior-only output is
            output = ((check_finite_output(prior[0].float().cpu()) + 1.0) / 2.0).clamp(0, 1)
        else:
            generator = torch.Generator(device="cpu").manual_seed(window_seed(seed, window.index))
            called = pipe(
                rgb, output_size=(out_h, out_w), output_type="pt", generator=generator, prior=prior, **kwargs
            )
    else:  # any callable with the pipeline's signature (e.g. a test double): the window at its own output size
        called = pipe(rgb, output_size=(out_h, out_w), output_type="pt", **kwargs)
    if called is not None:
        output = called.images[0]
    spread = getattr(called, "uncertainty", None) if sampled else None
    if sampled and spread is None:
        raise ValueError(f"`num_samples` needs a pipeline that returns `.uncertainty`; {type(pipe).__name__} does not")
    output = check_finite_output(output.float().cpu())  # never blended into a scene, never written
    others = [b for b in range(count) if b not in model_bands and b not in alpha_bands]
    masks = [b for b in range(count) if b not in model_bands and b in alpha_bands]
    result = np.empty((count + int(sampled), out_h, out_w), dtype=np.float32)
    if sampled:  # the map: the samples' spread on the [0, 1] scale, averaged over the model's channels
        result[count] = check_finite_output(spread[0].float().cpu()).numpy()
    if count == 1:
        result[0] = output.mean(dim=0).numpy()
    else:
        for b in model_bands:
            result[b] = output[model_bands.index(b)].numpy()
    if others:  # bands without the model: bicubic of their stretched values, at the same coordinates
        extra = torch.from_numpy(unit[others]).unsqueeze(0)
        if (out_h, out_w) == plan.out_size:  # the whole scene: exactly the whole-scene interpolation
            up = F.interpolate(extra, size=(out_h, out_w), mode="bicubic")
        else:
            up = F.grid_sample(extra, coord.flip(-1), mode="bicubic", padding_mode="border", align_corners=False)
        result[others] = up[0].clamp(0, 1).numpy()
    if masks:  # alpha: nearest, at the output pixel centre (exact integer arithmetic in the scene's frame)
        (height, width), (scene_h, scene_w) = plan.size, plan.out_size
        rows = (2 * np.arange(*window.out_rows, dtype=np.int64) + 1) * height // (2 * scene_h) - r0
        cols = (2 * np.arange(*window.out_cols, dtype=np.int64) + 1) * width // (2 * scene_w) - c0
        result[masks] = unit[masks][:, rows][:, :, cols]
    return result


# ------------------------------------------------------------------------------------------------------------------
# Journal
# ------------------------------------------------------------------------------------------------------------------
def work_folder(dst_path: str | os.PathLike) -> Path:
    """The folder beside the output holding the journal and the finished windows: ``.<name>.neurop-diff-scene``."""
    dst = Path(dst_path)
    return dst.parent / f".{dst.name}.neurop-diff-scene"


def _public_config(config: Any) -> str:
    """A config as canonical JSON without diffusers' private entries (e.g. ``_use_default_values``, whose order
    changes from one process to the next)."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)


def model_fingerprint(pipe: Any) -> str:
    """A SHA-256 of the pipeline's weights and configuration (what makes two runs' windows interchangeable)."""
    digest = hashlib.sha256()
    if not _is_neurop_pipeline(pipe):
        digest.update(f"{type(pipe).__module__}.{getattr(pipe, '__qualname__', type(pipe).__qualname__)}".encode())
        return digest.hexdigest()
    for name in ("unet", "neural_operator"):
        module = getattr(pipe, name)
        if module is None:
            digest.update(f"{name}:none".encode())
            continue
        digest.update(_public_config(module.config).encode())
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(_public_config(pipe.config).encode())
    return digest.hexdigest()


def scene_settings(
    pipe: Any,
    src_path: Path,
    plan: ScenePlan,
    seed: int,
    value_range: ValueRange,
    model_bands: list[int],
    pipe_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Everything a window's output depends on: two runs mix windows only when these are equal.

    ``num_samples`` (the uncertainty map's samples) is its own entry, present only when set: a run with other
    samples, or with / without a map, is refused by name, and a journal of a run without a map written before the
    entry existed still resumes.
    """
    stat = src_path.stat()
    pipeline = {k: pipe_kwargs[k] for k in sorted(pipe_kwargs) if k != "num_samples"}
    samples = {} if pipe_kwargs.get("num_samples") is None else {"num_samples": pipe_kwargs["num_samples"]}
    scheduler = getattr(pipe, "scheduler", None)
    unet = getattr(pipe, "unet", None)
    return {
        "version": JOURNAL_VERSION,
        "input": {"path": str(src_path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "model": model_fingerprint(pipe),
        "sampler": None
        if scheduler is None
        else {
            "class": type(scheduler).__name__,
            "config": json.loads(_public_config(scheduler.config)),
        },
        "dtype": str(getattr(unet, "dtype", None)),
        "size": list(plan.size),
        "out_size": list(plan.out_size),
        "window": plan.window,
        "halo": plan.halo,
        "seed": seed,
        "value_range": str(value_range),
        "model_bands": model_bands,
        "pipeline": pipeline,
        **samples,
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def _window_file(folder: Path, index: int) -> Path:
    return folder / f"w{index:06d}.npy"


def _save_window(folder: Path, index: int, array: np.ndarray) -> None:
    def write(temp: str) -> None:
        with open(temp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(_window_file(folder, index), write)


def _load_window(folder: Path, window: SceneWindow, planes: int) -> np.ndarray:
    """A saved window: ``planes`` = the bands, plus one for the uncertainty map when the run draws samples."""
    array = np.load(_window_file(folder, window.index), allow_pickle=False)
    shape = (planes, *window.out_shape)
    if array.shape != shape or array.dtype != np.float32:
        raise ValueError(f"window file {_window_file(folder, window.index)} is damaged; rerun with --restart")
    return array


def done_windows(folder: Path, windows: list[SceneWindow]) -> set[int]:
    """Indices of the windows whose output is saved in ``folder``."""
    return {w.index for w in windows if _window_file(folder, w.index).is_file()}


# ------------------------------------------------------------------------------------------------------------------
# Assembly
# ------------------------------------------------------------------------------------------------------------------
def output_layout(
    src: Any, header: RasterHeader, out_size: tuple[int, int], nonfinite: int = 0
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """The output's creation profile, band metadata and whether it carries a dataset mask instead of a nodata value.

    As ``geo.py`` describes: the input's dtype and bands (a palette raster: 3 ``uint8`` RGB bands), nodata, band
    meaning, georeferencing mapped to the output grid ([`~neurop_diff_diffusers.io.rasters.output_georeferencing`]:
    transform, GCPs, RPCs; no transform invented for a raster without one), pixel-interleaved.

    Args:
        src (`Any`): the input, open.
        header (`RasterHeader`): its header ([`~neurop_diff_diffusers.io.rasters.inspect_raster`]).
        out_size (`tuple[int, int]`): the output ``(height, width)``.
        nonfinite (`int`, defaults to `0`): undeclared NaN / infinite input values (they are masked in the output).

    Returns:
        ``(profile, metadata, mask_only)``.
    """
    out_h, out_w = out_size
    info = {
        "profile": {"count": src.count, "dtype": src.dtypes[0], "nodata": src.nodata},
        "has_nodata_value": src.nodata is not None,
        "has_mask": _has_mask(src) or (nonfinite > 0 and src.nodata is None),
        "metadata": band_metadata(src),
    }
    if header.has_palette:
        as_rgb(info)
    profile = info["profile"]
    # interleave: pixel-interleaved (PlanarConfiguration=1), which every TIFF reader (Pillow too) opens
    profile.update(driver="GTiff", width=out_w, height=out_h, BIGTIFF="IF_SAFER", interleave="pixel")
    profile.update(output_georeferencing(header, out_size))  # transform, or GCPs; RPCs: on the output grid
    return profile, info["metadata"], info["has_mask"] and not info["has_nodata_value"]


def _has_mask(src: Any) -> bool:
    from rasterio.enums import MaskFlags

    return any(MaskFlags.per_dataset in f or MaskFlags.nodata in f for f in src.mask_flag_enums)


def _write_rows(
    dst: Any,
    src: Any,
    plan: ScenePlan,
    stats: SceneStatistics,
    unit: np.ndarray,
    top: int,
    mask_only: bool,
    nodata: float | None,
    table: Any = None,
) -> None:
    """Write output rows ``[top, top + len)`` from their blended ``[0, 1]`` values, with nodata / mask as geo.py."""
    from rasterio.windows import Window

    count, rows, out_w = unit.shape
    (height, width), (out_h, _) = plan.size, plan.out_size
    src_rows = (np.arange(top, top + rows, dtype=np.int64) * height) // out_h  # nearest, as F.interpolate
    src_cols = (np.arange(out_w, dtype=np.int64) * width) // out_w
    first = int(src_rows[0])
    _, masks, _ = read_block(src, Window(0, first, width, int(src_rows[-1]) - first + 1), table)
    out_valid = masks[:, src_rows - first][:, :, src_cols]  # (bands, rows, out_w)
    block = np.empty((count, rows, out_w), dtype=stats.stretch.dtype)
    for b in range(count):
        block[b] = stats.stretch.inverse(unit[b], b)
        if nodata is not None:
            reference = unit[b] * (stats.stretch.high[b] - stats.stretch.low[b]) + stats.stretch.low[b]
            avoid_nodata(block[b], out_valid[b], nodata, reference)
            block[b][~out_valid[b]] = nodata
    window = Window(0, top, out_w, rows)
    dst.write(block, window=window)
    if mask_only:
        dst.write_mask(np.where(out_valid.all(axis=0), 255, 0).astype("uint8"), window=window)


def assemble_scene(
    src: Any,
    plan: ScenePlan,
    stats: SceneStatistics,
    folder: Path,
    dst: Any,
    mask_only: bool,
    nodata: float | None = None,
    uncertainty_dst: Any = None,
) -> None:
    """Blend the saved windows row of windows by row of windows and write each output row once it is final.

    Memory: one strip accumulator of ``bands x strip_rows x out_width`` float32 values (one plane more with the
    uncertainty map) and its weights, allocated once and shifted in place, and one window's output at a time.

    Args:
        src (`Any`): the input, open.
        plan (`ScenePlan`): the windows.
        stats (`SceneStatistics`): the stretch.
        folder (`Path`): the work folder holding the windows.
        dst (`Any`): the output, open for writing.
        mask_only (`bool`): the output carries a dataset mask instead of a nodata value.
        nodata (`float | None`, *optional*): the output's nodata value.
        uncertainty_dst (`Any`, *optional*): the uncertainty map (one float32 band), open for writing, when the
            windows were sampled with ``num_samples``: their maps are blended with the image's weights into it.
    """
    from rasterio.windows import Window

    table = palette_table(src)
    count = len(stats.stretch.low)
    planes = count + int(uncertainty_dst is not None)
    windows = plan.windows()
    n_rows, n_cols = plan.grid
    wy, wx = plan.weights(0), plan.weights(1)
    out_w = plan.out_size[1]
    strip = plan.strip_rows()
    acc = np.zeros((planes, strip, out_w), dtype=np.float32)
    norm = np.zeros((strip, out_w), dtype=np.float32)
    top = 0  # first output row not yet written; row r of the output is row r - top of the strip
    for i in range(n_rows):
        a, b = windows[i * n_cols].out_rows
        for window in windows[i * n_cols : (i + 1) * n_cols]:
            weight = (wy[i][:, None] * wx[window.col][None, :]).astype(np.float32)
            rows, cols = slice(a - top, b - top), slice(*window.out_cols)
            acc[:, rows, cols] += _load_window(folder, window, planes) * weight
            norm[rows, cols] += weight
        done = plan.finished_rows(i)
        if done > top:
            n = done - top
            unit = acc[:, :n]
            unit /= norm[None, :n]
            _write_rows(dst, src, plan, stats, unit[:count], top, mask_only, nodata, table)
            if uncertainty_dst is not None:
                uncertainty_dst.write(unit[count:], window=Window(0, top, out_w, n))
            carry = b - done  # rows already blended that the next window row also touches
            if carry > 0:
                acc[:, :carry] = acc[:, n : n + carry].copy()
                norm[:carry] = norm[n : n + carry].copy()
            acc[:, max(carry, 0) :] = 0.0
            norm[max(carry, 0) :] = 0.0
            top = done


def _write_cog(assembled: str, target: str, resampling: str | None = None) -> None:
    """Copy the assembled GeoTIFF to a Cloud-Optimized GeoTIFF (tiled, DEFLATE, overviews, BigTIFF if needed).

    The assembled file's overviews (the input's factors) are kept; without any, GDAL makes them down to one block
    with ``resampling``: ``None`` GDAL's default (cubic), ``"NEAREST"`` (an alpha band is a mask) or ``"AVERAGE"`` (an
    uncertainty map stays >= 0, which cubic would not keep).
    """
    import rasterio
    import rasterio.shutil

    with gdal_safe_env(), rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB, GDAL_NUM_THREADS="1"):
        with rasterio.open(assembled) as tmp:
            predictor = "2" if np.issubdtype(np.dtype(tmp.dtypes[0]), np.integer) else "3"
            options = _COG_OPTIONS if resampling is None else dict(_COG_OPTIONS, RESAMPLING=resampling)
            rasterio.shutil.copy(tmp, target, driver="COG", PREDICTOR=predictor, **options)


# ------------------------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class SceneJob:
    """A scene planned by [`prepare_scene`]: what [`run_scene`] and the dry run need."""

    src_path: Path
    dst_path: Path
    plan: ScenePlan
    stats: SceneStatistics
    model_bands: list[int]
    seed: int
    value_range: ValueRange
    pipe_kwargs: dict[str, Any]
    folder: Path
    header: RasterHeader | None = None

    @property
    def num_samples(self) -> int | None:
        """Samples per window (``num_samples``), or ``None``: one sample, no uncertainty map."""
        return self.pipe_kwargs.get("num_samples")

    @property
    def uncertainty_path(self) -> Path | None:
        """Where the uncertainty map goes (``<output stem>.uncertainty.tif``), or ``None`` without samples."""
        return None if self.num_samples is None else uncertainty_path(self.dst_path)

    @property
    def planes(self) -> int:
        """Planes of a window's file and of the strip accumulator: the bands, plus the map with samples."""
        return len(self.stats.stretch.low) + int(self.num_samples is not None)

    def describe(self) -> str:
        """The window plan, in a few lines."""
        plan = self.plan
        rows, cols = plan.grid
        bands = len(self.stats.stretch.low)
        strip = plan.strip_rows()
        planes = f"{bands} + 1 map" if self.num_samples is not None else f"{bands}"
        lines = [
            f"scene {plan.size[0]}x{plan.size[1]} px ({bands} bands) -> {plan.out_size[0]}x{plan.out_size[1]} px "
            "(height x width)",
            f"windows: {rows} x {cols} = {rows * cols} (core <= {plan.window} px + halo {plan.halo} px, LR)",
            f"strip accumulator: ({planes} + 1) x {strip} x {plan.out_size[1]} float32 = "
            f"{_mb(strip_bytes(plan, self.planes)):.0f} MB",
            f"value range: {self.value_range} "
            f"(low {_fmt(self.stats.stretch.low)}, high {_fmt(self.stats.stretch.high)})",
        ]
        if self.num_samples is not None:
            out_h, out_w = plan.out_size
            lines.append(
                f"uncertainty map: {self.uncertainty_path} ({out_h}x{out_w} px, 1 band float32 = "
                f"{_mb(out_h * out_w * 4):.0f} MB before compression; {self.num_samples} samples per window, on the "
                "model's 0..1 scale)"
            )
        return "\n".join(lines)


def _fmt(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:g}" for v in values)


def _mb(n: float) -> float:
    return n / 2**20


def strip_bytes(plan: ScenePlan, bands: int) -> int:
    """Bytes of the strip accumulator and its weights (the part of the memory bound that grows with the width).

    Args:
        plan (`ScenePlan`): the windows.
        bands (`int`): planes accumulated: the output's bands, plus one for an uncertainty map.
    """
    return (bands + 1) * plan.strip_rows() * plan.out_size[1] * 4


def _model_bands(count: int, rgb_bands: tuple[int, ...], src_path: Any) -> list[int]:
    if count == 1:
        return [0, 0, 0]
    if count >= 3:
        if len(rgb_bands) != 3 or not all(
            isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= count for b in rgb_bands
        ):
            raise ValueError(f"`rgb_bands` must be three band numbers in [1, {count}], got {rgb_bands!r}.")
        return [b - 1 for b in rgb_bands]
    raise ValueError(f"`{src_path}` has {count} bands: the model needs 1 (grey) or at least 3 (RGB).")


def _alpha_bands(job: SceneJob) -> tuple[int, ...]:
    return job.header.alpha_bands if job.header is not None else ()


def prepare_scene(
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    scale: float | None = None,
    output_size: tuple[int, int] | None = None,
    rgb_bands: tuple[int, int, int] = (1, 2, 3),
    window: int = DEFAULT_WINDOW,
    halo: int = DEFAULT_HALO,
    value_range: str | ValueRange | None = None,
    seed: int = 0,
    **pipe_kwargs: Any,
) -> SceneJob:
    """Check a scene and plan its windows (one statistics pass over the input; nothing is written).

    Args:
        src_path (`str | os.PathLike`): the input GeoTIFF.
        dst_path (`str | os.PathLike`): the output (``.tif`` / ``.tiff``).
        scale (`float | None`, *optional*): the upscaling factor (exactly one of ``scale`` / ``output_size``).
        output_size (`tuple[int, int] | None`, *optional*): ``(height, width)`` of the output.
        rgb_bands (`tuple[int, int, int]`, defaults to `(1, 2, 3)`): the 1-based bands that go through the model.
        window (`int`, defaults to `DEFAULT_WINDOW`): LR pixels of a window's core, a side.
        halo (`int`, defaults to `DEFAULT_HALO`): LR pixels of context on every side of a core.
        value_range (`str | ValueRange | None`, *optional*): see [`parse_value_range`] (default ``minmax``).
        seed (`int`, defaults to `0`): the seed of the windows' noise.
        pipe_kwargs (`Any`): the pipeline call's other keyword arguments (``num_inference_steps``, ...);
            ``num_samples=N`` (2 to 64) also writes the uncertainty map ([`uncertainty_path`]; not with
            ``prior_only``).

    Raises:
        ValueError: a bad argument or input, before any work.
    """
    dst = Path(dst_path)
    if dst.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"A georeferenced output must be a .tif/.tiff file, got `{dst}`.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, got {seed!r}.")
    if check_num_samples(pipe_kwargs.get("num_samples")) is not None:
        if pipe_kwargs.get("prior_only"):
            raise ValueError("`num_samples` needs diffusion samples; it cannot go with `prior_only=True`.")
        if _same_file(uncertainty_path(dst), Path(src_path)):
            raise ValueError(f"The uncertainty map `{uncertainty_path(dst)}` would replace the input `{src_path}`.")
    vr = parse_value_range(value_range)
    header = inspect_raster(src_path)
    check_header(header)  # complex, 2 bands, mixed dtypes, odd colour tables: one line, from the header
    if len({*header.dtypes}) != 1:
        raise ValueError(f"`{src_path}` mixes band dtypes {header.dtypes}; convert it to one dtype first.")
    if header.height == 0 or header.width == 0:
        raise ValueError(f"`{src_path}` has no pixels.")
    model_bands = _model_bands(header.working_bands, rgb_bands, src_path)  # a palette is read as RGB
    out_size = resolve_output_size((header.height, header.width), scale, output_size)
    plan = ScenePlan.create((header.height, header.width), out_size, window, halo)
    with open_raster(src_path) as src:
        stats = scene_statistics(src, vr)
    if stats.nonfinite:
        warnings.warn(
            f"`{src_path}` has {stats.nonfinite} NaN or infinite band values that no nodata value marks; they are "
            "treated as nodata (masked in the output).",
            UserWarning,
            stacklevel=2,
        )
    pipe_kwargs = {k: v for k, v in pipe_kwargs.items() if v is not None or k in ("strength",)}
    return SceneJob(Path(src_path), dst, plan, stats, model_bands, seed, vr, pipe_kwargs, work_folder(dst), header)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _clip_warning(job: SceneJob) -> None:
    clipped = sum(job.stats.clipped)
    if clipped:
        total = sum(job.stats.valid)
        per_band = ", ".join(f"band {b + 1}: {c}" for b, c in enumerate(job.stats.clipped) if c)
        warnings.warn(
            f"`value_range` {job.value_range}: {clipped} of {total} valid input values "
            f"({100 * clipped / total:.2f} %) "
            f"lie outside the stretch and were clipped ({per_band}).",
            UserWarning,
            stacklevel=3,
        )


class _Threads:
    """One intra-op thread while windows run (CPU results then do not depend on the thread count); restored after."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.saved = torch.get_num_threads()

    def __enter__(self) -> int:
        if self.cpu:
            torch.set_num_threads(1)
            return self.saved
        return 1

    def __exit__(self, *exc: Any) -> None:
        if self.cpu:
            torch.set_num_threads(self.saved)


def _worker_pipes(pipe: Any, workers: int) -> list[Any]:
    """One pipeline per worker thread: the same modules, an own scheduler (schedulers keep state between steps)."""
    if not _is_neurop_pipeline(pipe):
        return [pipe]
    pipes = []
    for _ in range(workers):
        clone = copy.copy(pipe)
        object.__setattr__(clone, "scheduler", copy.deepcopy(pipe.scheduler))
        clone.set_progress_bar_config(disable=True)
        pipes.append(clone)
    return pipes


def _on_cpu(pipe: Any) -> bool:
    if not _is_neurop_pipeline(pipe):
        return True
    return pipe._execution_device.type == "cpu"


def compute_windows(
    pipe: Any,
    job: SceneJob,
    indices: list[int],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Compute and save the windows ``indices`` of ``job`` (skipping those already saved).

    Args:
        pipe (`Any`): the pipeline.
        job (`SceneJob`): from [`prepare_scene`].
        indices (`list[int]`): window indices of this process.
        workers (`int | None`, *optional*): windows computed at once in threads (CPU); ``None``: torch's intra-op
            thread count (one window per core, each single-threaded).
        progress (`Callable[[int], None] | None`, *optional*): called with 1 after each window.

    Returns:
        `float`: seconds spent.
    """
    start = time.perf_counter()
    windows = job.plan.windows()
    todo = [windows[i] for i in indices if not _window_file(job.folder, i).is_file()]
    with _Threads(_on_cpu(pipe)) as threads:
        n = max(1, min(workers or threads, len(todo))) if _on_cpu(pipe) else 1
        pipes = _worker_pipes(pipe, n)

        def one(k: int) -> None:
            worker_pipe = pipes[k % len(pipes)]
            window = todo[k]
            with open_raster(job.src_path) as src:
                values = _run_window(
                    worker_pipe, src, job.plan, window, job.stats, job.model_bands, job.seed, job.pipe_kwargs,
                    _alpha_bands(job),
                )  # fmt: skip
            _save_window(job.folder, window.index, values)
            if progress is not None:
                progress(1)

        if len(pipes) == 1:
            for k in range(len(todo)):
                one(k)
        else:
            # each worker thread takes windows k, k + n, ... with its own pipeline copy
            def lane(w: int) -> None:
                for k in range(w, len(todo), n):
                    one(k)

            with ThreadPoolExecutor(max_workers=n) as pool:
                for future in [pool.submit(lane, w) for w in range(n)]:
                    future.result()
    return time.perf_counter() - start


def _open_journal(job: SceneJob, settings: dict[str, Any], restart: bool, is_main: bool, barrier: Callable) -> None:
    """Validate (all processes) and create (main process) the journal; a journal of other settings is refused."""
    journal = job.folder / "journal.json"
    old = None
    if journal.is_file():
        try:
            old = json.loads(journal.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
    stale = old is not None and old.get("settings") != settings
    if stale and not restart:
        diff = ", ".join(_differences(old.get("settings", {}), settings)) or "format"
        raise ValueError(
            f"`{job.folder}` holds the windows of a run of `{job.dst_path}` with other settings ({diff}); "
            "they are never mixed in: pass restart=True (CLI: --restart) to discard them and start again."
        )
    barrier()
    if is_main:
        if stale or (restart and job.folder.exists()):
            shutil.rmtree(job.folder, ignore_errors=True)
        if not journal.is_file():
            job.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(journal, {"settings": settings, "windows": len(job.plan.windows())})
    barrier()


def _process_state(cpu: bool) -> Any:
    """Accelerate's process state when several processes run (``None`` for one process, without Accelerate)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return state if state.num_processes > 1 else None


def tqdm_progress(total: int, done: int) -> Any:
    """A tqdm progress bar over windows with ETA (the CLI's): pass as ``progress`` to [`upscale_scene`]."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="windows", unit="window", dynamic_ncols=True)


def run_scene(
    pipe: Any,
    job: SceneJob,
    overwrite: bool = False,
    restart: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    distributed: bool = False,
) -> Path:
    """Compute the windows of ``job`` (this process's share), then (main process) assemble and commit the COG (and
    the uncertainty map's, with ``num_samples``).

    Args:
        pipe (`Any`): the pipeline.
        job (`SceneJob`): from [`prepare_scene`].
        overwrite (`bool`, defaults to `False`): replace an existing output (atomically).
        restart (`bool`, defaults to `False`): discard a journal of other settings instead of refusing.
        workers (`int | None`, *optional*): see [`compute_windows`].
        progress (`Callable[[int, int], Any] | None`, *optional*): ``progress(total, done)`` is called once on the
            main process and returns an object with ``update(n)`` (windows just finished) and ``close()``, e.g.
            [`tqdm_progress`].
        distributed (`bool`, defaults to `False`): under ``accelerate launch``, split the windows between the
            processes (every process must make the same call); ``False``: this process does every window.

    Returns:
        `Path`: the output.
    """
    state = _process_state(_on_cpu(pipe)) if distributed else None
    is_main = state is None or state.is_main_process
    barrier = state.wait_for_everyone if state is not None else (lambda: None)
    dst = job.dst_path
    for path in (dst, job.uncertainty_path):
        if path is not None and os.path.lexists(path) and not overwrite:
            raise FileExistsError(f"`{path}` exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    settings = scene_settings(
        pipe, job.src_path, job.plan, job.seed, job.value_range, job.model_bands, job.pipe_kwargs
    )
    _open_journal(job, settings, restart, is_main, barrier)
    windows = job.plan.windows()
    pending = sorted(set(range(len(windows))) - done_windows(job.folder, windows))
    if state is not None:
        with state.split_between_processes(pending) as share:
            mine = list(share)
    else:
        mine = pending
    bar = progress(len(windows), len(windows) - len(pending)) if (progress is not None and is_main) else None
    update = None if bar is None else bar.update
    if update is not None and state is not None:  # the main process counts its share times the processes
        update = lambda n: bar.update(min(n * state.num_processes, bar.total - bar.n))  # noqa: E731
    try:
        compute_windows(pipe, job, mine, workers=workers, progress=update)
    except BaseException:
        if is_main and not done_windows(job.folder, windows):  # nothing to resume from: leave nothing behind
            shutil.rmtree(job.folder, ignore_errors=True)
        raise
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    barrier()
    if is_main:
        missing = sorted(set(range(len(windows))) - done_windows(job.folder, windows))
        if missing:
            raise RuntimeError(f"windows {missing[:10]} of `{dst}` were not computed; rerun the same command")
        _clip_warning(job)
        try:
            assemble_and_commit(job, overwrite)
        except FileExistsError:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        shutil.rmtree(job.folder, ignore_errors=True)
    barrier()
    return dst


def assemble_and_commit(job: SceneJob, overwrite: bool) -> Path:
    """Blend the saved windows into the output COG (and the uncertainty map's) and commit it atomically.

    With an uncertainty map, the map is committed first and the output right after it; if the output cannot be
    committed the map just written is removed: a run leaves both files or neither.
    """
    import rasterio

    assembled = job.folder / "assembled.tif"
    assembled_map = job.folder / "assembled.uncertainty.tif"
    map_path = job.uncertainty_path
    for path in (assembled, assembled_map):
        path.unlink(missing_ok=True)
    header = job.header if job.header is not None else inspect_raster(job.src_path)
    out_size = job.plan.out_size
    factors = output_overviews(header, out_size)
    tags = {STRETCH_TAG: job.stats.stretch.to_json(), VALUE_RANGE_TAG: str(job.value_range)}
    try:
        with open_raster(job.src_path) as src, contextlib.ExitStack() as stack:
            profile, metadata, mask_only = output_layout(src, header, out_size, job.stats.nonfinite)
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB, GDAL_TIFF_INTERNAL_MASK="YES"))
            dst = stack.enter_context(rasterio.open(assembled, "w", **profile))
            copy_band_metadata(dst, metadata)
            dst.update_tags(**tags)
            spread = None
            if map_path is not None:
                spread = stack.enter_context(rasterio.open(assembled_map, "w", **uncertainty_profile(profile)))
                spread.set_band_description(1, "uncertainty")
                spread.update_tags(**tags, **{UNCERTAINTY_TAG: uncertainty_description(job.num_samples)})
            assemble_scene(src, job.plan, job.stats, job.folder, dst, mask_only, profile.get("nodata"), spread)
            # the input's internal overviews (a COG's), rebuilt; the COG copy keeps them
            build_output_overviews(dst, factors, header)
            if spread is not None and factors:
                from rasterio.enums import Resampling

                spread.build_overviews(factors, Resampling.average)
        resampling = "NEAREST" if header.alpha_bands else None
        if map_path is not None:
            atomic_write(map_path, lambda temp: _write_cog(str(assembled_map), temp, "AVERAGE"), overwrite=overwrite)
        try:
            return atomic_write(
                job.dst_path, lambda temp: _write_cog(str(assembled), temp, resampling), overwrite=overwrite
            )
        except BaseException:
            if map_path is not None:  # never a map without its output
                map_path.unlink(missing_ok=True)
            raise
    finally:
        assembled.unlink(missing_ok=True)
        assembled_map.unlink(missing_ok=True)


#: The tag of an uncertainty map that says what its values are.
UNCERTAINTY_TAG = "NEUROP_DIFF_UNCERTAINTY"


def uncertainty_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """The creation profile of the uncertainty map of an output whose profile is ``profile``: one float32 band, no
    nodata, the output's size and georeferencing (transform and CRS, GCPs, RPCs) exactly.

    Args:
        profile (`dict[str, Any]`): the output's profile ([`output_layout`]).

    Example:
        >>> uncertainty_profile({"driver": "GTiff", "width": 4, "height": 3, "count": 4, "dtype": "uint16",
        ...                      "nodata": 0, "crs": "EPSG:4326"})["count"]
        1
    """
    keep = ("driver", "width", "height", "BIGTIFF", "transform", "crs", "gcps", "rpcs")
    return {**{k: profile[k] for k in keep if k in profile}, "count": 1, "dtype": "float32", "nodata": None}


def uncertainty_description(num_samples: int | None) -> str:
    """The ``NEUROP_DIFF_UNCERTAINTY`` tag of a map: the samples and what the values are (JSON).

    Example:
        >>> json.loads(uncertainty_description(4))["samples"]
        4
    """
    return json.dumps(
        {
            "samples": num_samples,
            "statistic": "standard deviation over the samples (ddof=0), averaged over the model's 3 channels, its "
            "variance pooled over a Gaussian of uncertainty_sigma output pixels (default 2); by default sample k is "
            "drawn on the window flipped by k % 4 (flip_samples)",
            "scale": "the model's 0..1 scale: per band, NEUROP_DIFF_STRETCH low -> 0 and high -> 1",
        }
    )


def upscale_scene(
    pipe: Any,
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    scale: float | None = None,
    output_size: tuple[int, int] | None = None,
    rgb_bands: tuple[int, int, int] = (1, 2, 3),
    overwrite: bool = False,
    window: int = DEFAULT_WINDOW,
    halo: int = DEFAULT_HALO,
    value_range: str | ValueRange | None = None,
    seed: int | None = None,
    restart: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    distributed: bool = False,
    **pipe_kwargs: Any,
) -> Path:
    """Upscale a GeoTIFF window by window (see the module docstring): out of core, resumable, parallel, COG out.

    Args:
        pipe (`Any`): a [`NeurOpDiffPipeline`] (or any callable with its signature and ``output_type="pt"``).
        src_path (`str | os.PathLike`): the input GeoTIFF.
        dst_path (`str | os.PathLike`): the output COG (``.tif`` / ``.tiff``; written atomically).
        scale (`float | None`, *optional*): the upscaling factor (exactly one of ``scale`` / ``output_size``).
        output_size (`tuple[int, int] | None`, *optional*): ``(height, width)`` of the output.
        rgb_bands (`tuple[int, int, int]`, defaults to `(1, 2, 3)`): the 1-based bands through the model.
        overwrite (`bool`, defaults to `False`): replace an existing output.
        window (`int`, defaults to `DEFAULT_WINDOW`): LR pixels of a window's core, a side.
        halo (`int`, defaults to `DEFAULT_HALO`): LR pixels of context on every side.
        value_range (`str | ValueRange | None`, *optional*): ``"minmax"``, ``"0,10000"`` or ``"p2,p98"``.
        seed (`int | None`, *optional*): the seed of the windows' noise; ``None``: the ``generator``'s initial seed
            if one is given in ``pipe_kwargs``, else 0.
        restart (`bool`, defaults to `False`): discard a journal of other settings instead of refusing.
        workers (`int | None`, *optional*): windows computed at once in threads (CPU).
        progress (`Callable[[int, int], Any] | None`, *optional*): see [`run_scene`].
        distributed (`bool`, defaults to `False`): split the windows between ``accelerate launch`` processes.
        pipe_kwargs (`Any`): the pipeline call's other keyword arguments; with ``num_samples=N`` (2 to 64) each
            window is the mean of ``N`` samples and their spread is written beside the output as
            [`uncertainty_path`] (``<output stem>.uncertainty.tif``: float32, one band, georeferenced like the
            output, on the model's ``[0, 1]`` scale, i.e. the value range mapped to 0..1; see the module docstring).

    Example:
        >>> from neurop_diff_diffusers import build_pipeline
        >>> pipe = build_pipeline("tiny")
        >>> upscale_scene(pipe, "scene.tif", "scene_x2.tif", scale=2, prior_only=True)  # doctest: +SKIP
        >>> upscale_scene(pipe, "scene.tif", "scene_x4.tif", scale=4, num_samples=4)  # doctest: +SKIP
    """
    generator = pipe_kwargs.pop("generator", None)
    if seed is None:
        seed = int(generator.initial_seed()) if isinstance(generator, torch.Generator) else 0
    dst = Path(dst_path)
    for path in (dst, uncertainty_path(dst) if pipe_kwargs.get("num_samples") is not None else None):
        if path is not None and os.path.lexists(path) and not overwrite:
            raise FileExistsError(f"`{path}` exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    job = prepare_scene(
        src_path, dst_path, scale, output_size, rgb_bands, window, halo, value_range, seed, **pipe_kwargs
    )
    return run_scene(
        pipe, job, overwrite=overwrite, restart=restart, workers=workers, progress=progress, distributed=distributed
    )


def dry_run(pipe: Any, job: SceneJob, workers: int | None = None) -> dict[str, Any]:
    """Time one window (the largest) and estimate the whole run's time and peak memory; nothing is written.

    With ``num_samples`` the window is timed with its samples, and the report names the uncertainty map and its size.

    Returns:
        `dict[str, Any]`: ``windows``, ``window_seconds``, ``estimated_seconds``, ``estimated_peak_mb``,
        ``workers`` and ``text`` (a report for people).
    """
    import resource

    windows = job.plan.windows()
    largest = max(windows, key=lambda w: w.out_shape[0] * w.out_shape[1])
    largest_h, largest_w = largest.out_shape
    cpu = _on_cpu(pipe)
    with _Threads(cpu) as threads:
        n = max(1, min(workers or threads, len(windows))) if cpu else 1
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        with open_raster(job.src_path) as src:
            _run_window(_worker_pipes(pipe, 1)[0], src, job.plan, largest, job.stats, job.model_bands, job.seed,
                        job.pipe_kwargs, _alpha_bands(job))  # fmt: skip
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    window_bytes = job.planes * largest_h * largest_w
    per_window = max(after - before, 0) + window_bytes * 4
    peak = after + (n - 1) * per_window + strip_bytes(job.plan, job.planes) + window_bytes * 4
    estimate = seconds * len(windows) / n
    text = "\n".join(
        [
            job.describe(),
            f"one window ({largest_h}x{largest_w} output px): {seconds:.2f} s; {n} window(s) at once",
            f"estimated time: {_duration(estimate)} for {len(windows)} windows (plus assembly)",
            f"estimated peak memory: {_mb(peak):.0f} MB",
            f"work folder (journal, finished windows): {job.folder}",
        ]
    )
    return {
        "windows": len(windows),
        "window_seconds": seconds,
        "estimated_seconds": estimate,
        "estimated_peak_mb": _mb(peak),
        "workers": n,
        "text": text,
    }


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = [
    "DEFAULT_HALO",
    "DEFAULT_WINDOW",
    "SceneJob",
    "ScenePlan",
    "SceneStatistics",
    "SceneWindow",
    "ValueRange",
    "dry_run",
    "parse_value_range",
    "prepare_scene",
    "run_scene",
    "scene_statistics",
    "upscale_scene",
    "tqdm_progress",
    "uncertainty_path",
    "work_folder",
]


def upscale_geotiff(
    pipe: Any,
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    scale: float | None = None,
    output_size: tuple[int, int] | None = None,
    rgb_bands: tuple[int, int, int] = (1, 2, 3),
    overwrite: bool = False,
    **pipe_kwargs: Any,
) -> Path:
    """Upscale a GeoTIFF with a NeurOp-Diff pipeline, keeping CRS, origin, nodata, band count and dtype.

    Args:
        pipe (`Any`): a [`NeurOpDiffPipeline`].
        src_path (`str | os.PathLike`): the input raster.
        dst_path (`str | os.PathLike`): the output GeoTIFF (written atomically).
        scale (`float | None`, *optional*): the upscaling factor (exactly one of ``scale`` / ``output_size``).
        output_size (`tuple[int, int] | None`, *optional*): ``(height, width)`` of the output.
        rgb_bands (`tuple[int, int, int]`, defaults to `(1, 2, 3)`): the 1-based bands that go through the model
            (others are upscaled bicubically).
        overwrite (`bool`, defaults to `False`): replace an existing ``dst_path`` (atomically); without it an existing
            file, or one that appears while the scene is being upscaled, is never replaced (``FileExistsError``).
        pipe_kwargs (`Any`): passed to the pipeline (``num_inference_steps``, ``generator``, ``tile_size``,
            ``prior_only``...) and the scene engine (``window``, ``halo``, ``value_range``, ...: see
            [`~neurop_diff_diffusers.jobs.scene.upscale_scene`]); ``num_samples=N`` writes the mean of ``N`` samples
            and their uncertainty map ``<output stem>.uncertainty.tif`` (float32, one band, georeferenced like the
            output, on the model's ``[0, 1]`` scale: the value range mapped to 0..1).

    Example:
        >>> from neurop_diff_diffusers import build_pipeline
        >>> upscale_geotiff(build_pipeline("tiny"), "scene.tif", "scene_x2.5.tif", scale=2.5)  # doctest: +SKIP
    """
    require_rasterio()
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():  # a plain (non-georeferenced) 16-bit TIFF is fine: no warning about it
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return _upscale_geotiff(pipe, src_path, dst_path, scale, output_size, rgb_bands, overwrite, **pipe_kwargs)


def _upscale_geotiff(
    pipe: Any,
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    scale: float | None,
    output_size: tuple[int, int] | None,
    rgb_bands: tuple[int, int, int],
    overwrite: bool,
    **pipe_kwargs: Any,
) -> Path:
    return upscale_scene(pipe, src_path, dst_path, scale, output_size, rgb_bands, overwrite, **pipe_kwargs)

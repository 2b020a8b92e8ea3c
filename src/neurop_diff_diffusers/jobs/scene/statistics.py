"""Value ranges and the statistics pass: how a scene's values map to the model's ``[0, 1]``, from streamed blocks.

``value_range``: ``"minmax"`` (default: ``uint8`` 0..255, other dtypes the per-band min-max over valid pixels), a
fixed range ``"0,10000"``, or a per-band percentile stretch ``"p2,p98"`` (from a histogram over the valid pixels,
never loading the scene). NaN / infinite values are invalid whether or not a nodata value or mask declares them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...io.geo import UNIT_LIMIT, BandStretch, band_stretch, stretch_bounds, unreadable_raster
from ...io.rasters import expand_palette, palette_table

_STATS_PIXELS = 4_000_000  # input pixels per block of the statistics passes


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


def _bin_edges(low: float, high: float) -> np.ndarray:
    """65537 histogram edges from ``low`` to ``high``, in halves: a range wider than float64 holds stays finite."""
    return np.linspace(low * 0.5, high * 0.5, 65537) * 2.0


def _check_reach(
    stretch: BandStretch, value_range: ValueRange, lows: np.ndarray, highs: np.ndarray, counts: np.ndarray
) -> None:
    """Refuse a stretch that a band's valid extremes lie more than ``UNIT_LIMIT`` widths outside of: the stretch
    holds such a value at that limit, so it could be neither clipped exactly nor added back."""
    for b in range(len(counts)):
        if not counts[b]:
            continue
        extremes = np.array([lows[b], highs[b]])
        far = extremes[stretch.beyond_limit(extremes, b)]
        if far.size:
            raise ValueError(
                f"`value_range` {value_range} is too narrow for band {b + 1}: its value {far[-1]:g} lies more than "
                f"{UNIT_LIMIT:g} range widths outside [{stretch.low[b]:g}, {stretch.high[b]:g}] (more than the "
                f"stretch holds); every valid value must lie within {UNIT_LIMIT:g} x (HIGH - LOW) of the range: "
                "choose a wider range or 'minmax'."
            )


def scene_statistics(src: Any, value_range: ValueRange) -> SceneStatistics:
    """The stretch of an open raster from one streaming pass, never the whole scene; the pass is also the damage scan.

    Every block of values and masks is read once (a float or 32-bit percentile stretch reads the scene twice more: its
    histogram needs the bands' range first, and its clipped count the stretch), so a file that cannot be read fails
    here, before any window runs, as [`~neurop_diff_diffusers.io.geo.check_raster`] fails.

    Args:
        src (`Any`): an open rasterio dataset ([`~neurop_diff_diffusers.io.rasters.open_raster`]).
        value_range (`ValueRange`): see [`parse_value_range`].

    Raises:
        ValueError: a scene without valid pixels, a block that cannot be read (``not a readable raster (...)``,
            one line), or a ``value_range`` so narrow that a valid value lies more than ``UNIT_LIMIT`` (1e30) widths
            of the stretch outside it.
    """
    from rasterio.errors import RasterioError

    try:
        return _statistics(src, value_range)
    except (RasterioError, OSError) as err:
        raise unreadable_raster(err) from err


def _statistics(src: Any, value_range: ValueRange) -> SceneStatistics:
    table = palette_table(src)  # a palette raster is expanded to RGB through its colour table
    bands, height, width = (src.count if table is None else 3), src.height, src.width
    dtype = np.dtype(src.dtypes[0] if table is None else "uint8")
    nonfinite = 0
    exact = _exact_histogram_dtype(dtype)
    offset = int(np.iinfo(dtype).min) if exact else 0
    scale = 2.0**-64 if dtype == np.float64 else 1.0  # float64 sums scaled (exactly) so that 1e308s never overflow
    lows = np.full(bands, np.inf)
    highs = np.full(bands, -np.inf)
    sums = np.zeros(bands)
    counts = np.zeros(bands, dtype=np.int64)
    hist = [np.zeros(1 << (8 * dtype.itemsize), np.int64) for _ in range(bands)] if exact else None
    fixed = value_range.kind == "fixed"  # the stretch is known: values outside it are counted in this pass
    clipped = [0] * bands
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
            sums[b] += float((values * scale if scale != 1.0 else values).sum(dtype=np.float64))
            counts[b] += values.size
            if exact:
                hist[b] += np.bincount((values.astype(np.int64) - offset), minlength=len(hist[b]))
            if fixed:
                clipped[b] += int(((values < value_range.low) | (values > value_range.high)).sum())
    if not counts.any():
        raise ValueError(f"`{src.name}` has no valid pixels (everything is nodata).")
    lows[counts == 0], highs[counts == 0] = 0.0, 1.0
    if value_range.kind == "minmax":
        stretch = band_stretch(lows, highs, dtype.name)
    elif value_range.kind == "fixed":
        stretch = BandStretch((value_range.low,) * bands, (value_range.high,) * bands, dtype.name)
    else:
        edges = None if exact else [_bin_edges(lows[b], highs[b]) for b in range(bands)]
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
            lo, hi = stretch_bounds(lo, hi)
            low.append(lo)
            high.append(hi)
        stretch = BandStretch(tuple(low), tuple(high), dtype.name)
    _check_reach(stretch, value_range, lows, highs, counts)
    if value_range.kind == "percentile":
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
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0) / scale
    fill = tuple(
        float(np.clip(stretch.forward(np.array([means[b]]), b)[0], 0.0, 1.0)) if counts[b] else 0.0
        for b in range(bands)
    )
    return SceneStatistics(stretch, fill, tuple(clipped), tuple(int(c) for c in counts), nonfinite)

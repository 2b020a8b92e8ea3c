"""Strip blending and nodata rows: the saved windows blended row of windows by row of windows into the output.

Output rows that no later window touches are final and written at once, so peak memory is a strip accumulator of
``(bands + 1) x strip rows x output width`` float32 values: it depends on the window size and the output *width*,
never on the scene's area. Nodata / mask follow the input as ``io/geo.py`` describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...io.geo import as_rgb, avoid_nodata, band_metadata
from ...io.rasters import RasterHeader, output_georeferencing, palette_table
from .journal import load_window
from .plan import ScenePlan
from .statistics import SceneStatistics, read_block

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
            "statistic": "sample standard deviation over the samples (ddof=1, before clamping), averaged over the "
            "model's 3 channels, its variance pooled over a Gaussian of uncertainty_sigma output pixels (default 2); "
            "by default sample k is drawn on the window flipped by k % 4 (flip_samples); NEUROP_DIFF_ERROR_BOUND_90, "
            "when present, is the factor k such that k x the map bounds the per-pixel error on about 90 % of pixels",
            "scale": "the model's 0..1 scale: per band, NEUROP_DIFF_STRETCH low -> 0 and high -> 1",
        }
    )


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
            reference = stats.stretch.unrounded(unit[b], b)
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
            acc[:, rows, cols] += load_window(folder, window, planes) * weight
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

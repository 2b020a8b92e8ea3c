"""GeoTIFF in, GeoTIFF out: upscale a georeferenced scene and keep its georeferencing (rasterio, extra ``[geo]``).

What happens to a scene:

- **Georeferencing.** The output has the input's CRS and a transform with the same origin whose pixel size is
  divided by the actual scale of each axis (``W_in / W_out`` and ``H_in / H_out``); GCPs and RPCs are mapped to the
  output grid ([`~neurop_diff_diffusers.io.rasters.output_georeferencing`]). Inputs are opened and checked from their
  header by [`~neurop_diff_diffusers.io.rasters`] (complex rasters refused, palette rasters expanded to RGB).
- **Values.** The model works on ``[0, 1]``. ``uint8`` bands are divided by 255. Other dtypes (``uint16``,
  ``int16``, ``float32``, ...) get a linear min-max stretch per band over the valid pixels,
  ``(x - low) / (high - low)``; ``low`` / ``high`` are written into the output's tags (``NEUROP_DIFF_STRETCH``). The
  output is mapped back with the inverse and written in the input's dtype (rounded and clipped for integer types), so
  a model that returned its input would give back the input values exactly.
- **Nodata.** Pixels marked invalid (the nodata value or the dataset mask, band by band) are filled with the band's
  mean before the model sees them. Each band's mask is upscaled with nearest neighbour, and exactly the output pixels
  whose source pixel was invalid get the nodata value again (or the output's dataset mask, when the input used a
  mask instead of a value): the output mask is the nearest-upscaled input mask. A *valid* output pixel that the
  model maps onto the nodata value (e.g. a dark speckle undershooting to 0 with nodata 0) is nudged to the nearest
  representable valid value (``nodata + 1`` for integers, the next float for floats; ``nodata - 1`` at the top of
  the type's range), so that no valid pixel is turned into "no data".
- **Metadata.** Colour interpretation, band descriptions, scales / offsets, units and the dataset and per-band tags
  are copied from the input: e.g. the fourth band of an R, G, B, NIR scene stays what the input says (grey /
  undefined), never alpha.
- **Bands.** Bands ``rgb_bands`` (default 1, 2, 3) go through the model. Every other band (e.g. NIR of an RGB+NIR
  scene) is upscaled with bicubic interpolation of its stretched values, *without* the model, and written at its
  place: no band is dropped. An alpha band is upscaled with nearest neighbour (a mask). A single-band scene is run
  through the model as grey RGB and the mean of the three output channels written.
- **Memory.** [`upscale_geotiff`] runs the scene engine ([`~neurop_diff_diffusers.jobs.scene`]): LR windows with a
halo,
  blended, streamed from disk to disk; peak memory depends on the window size and the output width, not on the
  scene's area. The output is a pixel-interleaved Cloud-Optimized GeoTIFF (with the input's internal overview
  factors when it has some). ([`read_scene`] still reads a whole scene into memory.)
- **Files.** The output is written under a temporary name beside the target and renamed at the end: never a partial
  file. Without ``overwrite`` an output file that appears meanwhile is never replaced (``FileExistsError``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..file_safety import printable
from .rasters import (
    WIDE_DTYPES,
    expand_palette,
    inspect_raster,
    needs_raster_path,
    open_raster,
    palette_table,
)

STRETCH_TAG = "NEUROP_DIFF_STRETCH"
_ROWS_PER_WINDOW = 512


def require_rasterio():
    try:
        import rasterio
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("GeoTIFF support needs rasterio: pip install 'neurop-diff-diffusers[geo]'") from err
    return rasterio


def is_georeferenced(path: str | os.PathLike) -> bool:
    """True for a TIFF that must take the GeoTIFF path ([`~neurop_diff_diffusers.io.rasters.needs_raster_path`]).

    A CRS, a non-identity transform, GCPs, RPCs, nodata, non-8-bit or palette bands, or a band layout other than
    grey / RGB / RGBA: such files take the GeoTIFF path of the CLI; plain 8-bit grey / RGB / RGBA TIFFs are ordinary
    images. ``False`` when rasterio is not installed.

    Args:
        path (`str | os.PathLike`): the file to inspect.
    """
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return False
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return needs_raster_path(inspect_raster(path))


#: The largest magnitude a stretched value takes (on the model's ``[0, 1]`` scale): values further out than this many
#: stretch widths (only with a ``value_range`` far narrower than the data) are held at it, so that float32 holds them.
#: Such a value could not be added back to the output: a scene's statistics pass refuses the range ([`beyond_limit`]).
UNIT_LIMIT = 1e30


@dataclass(frozen=True)
class BandStretch:
    """A per-band linear map between a raster's values and ``[0, 1]``: ``(x - low) / (high - low)``.

    The map is computed in float64 and never overflows: a width ``high - low`` beyond float64's range (a float64 band
    from -1e308 to 1e308) is taken in halves, a stretched value is held within [`UNIT_LIMIT`], and [`inverse`] keeps
    its result within the dtype's finite range (a float32 band near 3.4e38 never turns into infinity).

    Args:
        low (`tuple[float, ...]`): per-band value mapped to 0.
        high (`tuple[float, ...]`): per-band value mapped to 1 (``> low``: see [`stretch_bounds`]).
        dtype (`str`): the raster's dtype, used by [`inverse`] for rounding and clipping.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    dtype: str

    def forward(self, values: np.ndarray, band: int) -> np.ndarray:
        """Values of band ``band`` (0-based) to ``[0, 1]`` (float32; values outside the stretch fall outside it, held
        within ``+-UNIT_LIMIT``)."""
        return np.clip(self._unit64(values, band), -UNIT_LIMIT, UNIT_LIMIT).astype(np.float32)

    def beyond_limit(self, values: np.ndarray, band: int) -> np.ndarray:
        """Which of ``values`` (band ``band``) lie more than [`UNIT_LIMIT`] stretch widths outside the stretch:
        [`forward`] holds them at that limit, so their excess over it is lost.

        Example:
            >>> BandStretch((0.0,), (1e-40,), "float32").beyond_limit(np.array([0.5, 1e-20]), 0).tolist()
            [True, False]
        """
        return np.abs(self._unit64(np.asarray(values), band)) > UNIT_LIMIT

    def _unit64(self, values: np.ndarray, band: int) -> np.ndarray:
        low, high = self.low[band], self.high[band]
        # halves: exactly (x - low) / (high - low) (scaling by 2 is exact), but neither difference can overflow; the
        # quotient may (a width of 1e-310): it is beyond UNIT_LIMIT then, so float64's overflow is no news
        with np.errstate(over="ignore"):
            return (values.astype(np.float64) * 0.5 - low * 0.5) / (high * 0.5 - low * 0.5)

    def unrounded(self, unit: np.ndarray, band: int) -> np.ndarray:
        """``[0, 1]`` values back to band ``band``'s units in float64, before rounding (infinite beyond float64)."""
        low, high = self.low[band], self.high[band]
        unit = unit.astype(np.float64)
        width = high - low
        if np.isfinite(width):
            return unit * width + low
        with np.errstate(over="ignore"):
            return (unit * (high * 0.5 - low * 0.5) + low * 0.5) * 2.0

    def inverse(self, unit: np.ndarray, band: int) -> np.ndarray:
        """``[0, 1]`` values back to band ``band``'s dtype: rounded and clipped to the type's range for integers,
        clipped to the finite range for floats."""
        values = self.unrounded(unit, band)
        dtype = np.dtype(self.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            values = np.rint(values)
            top = float(info.max)  # 2**63 / 2**64 for 64-bit types: one more than the largest value
            ceiling = top if int(top) <= info.max else float(np.nextafter(top, 0.0))
            out = np.clip(values, info.min, ceiling).astype(dtype)
            if ceiling != top:
                out[values >= top] = info.max
            return out
        info = np.finfo(dtype)
        return np.clip(values, info.min, info.max).astype(dtype)

    def to_json(self) -> str:
        return json.dumps({"low": list(self.low), "high": list(self.high), "dtype": self.dtype})


def stretch_bounds(low: float, high: float) -> tuple[float, float]:
    """``(low, high)`` of a band's stretch with ``high > low`` also for a constant band, which maps to a constant.

    A constant band (``high <= low``) gets the width ``max(1, |low| / 2**20)``, which float64 resolves at any value
    (``low + 1`` equals ``low`` beyond 2**53, e.g. a constant ``uint64`` band at its maximum); at the top of float64's
    range the width is taken below ``low``.

    Example:
        >>> stretch_bounds(3.0, 3.0), stretch_bounds(2.0**64, 2.0**64)[1] > 2.0**64
        ((3.0, 4.0), True)
    """
    low, high = float(low), float(high)
    if high > low:
        return low, high
    width = max(1.0, abs(low) * 2.0**-20)
    if np.isfinite(low + width):
        return low, low + width
    return low - width, low


def band_stretch(minimum: np.ndarray, maximum: np.ndarray, dtype: str) -> BandStretch:
    """The stretch of a raster given its per-band valid minimum / maximum (``uint8``: the fixed 0..255 map).

    Args:
        minimum (`np.ndarray`): per-band minimum over valid pixels.
        maximum (`np.ndarray`): per-band maximum over valid pixels.
        dtype (`str`): the raster's dtype.

    Example:
        >>> s = band_stretch(np.array([100.0]), np.array([300.0]), "uint16")
        >>> float(s.forward(np.array([200]), 0)[0]), int(s.inverse(np.array([0.5]), 0)[0])
        (0.5, 200)
    """
    if dtype == "uint8":
        n = len(minimum)
        return BandStretch((0.0,) * n, (255.0,) * n, dtype)
    bounds = [stretch_bounds(lo, hi) for lo, hi in zip(minimum, maximum)]
    return BandStretch(tuple(lo for lo, _ in bounds), tuple(hi for _, hi in bounds), dtype)


def _row_windows(height: int, width: int, rows: int = _ROWS_PER_WINDOW):
    from rasterio.windows import Window

    for top in range(0, height, rows):
        yield Window(0, top, width, min(rows, height - top))


def read_scene(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, BandStretch, dict[str, Any]]:
    """Read a raster window by window into ``[0, 1]`` float32 ``(bands, H, W)``, with its valid mask and profile.

    Invalid pixels are filled with their band's mean over the band's valid pixels; the stretch of a band is computed
    over its valid pixels. NaN / infinite values are invalid too (a ``UserWarning`` when no nodata value or mask
    declares them; the output then masks them).

    Args:
        path (`str | os.PathLike`): a raster rasterio can read (GeoTIFF).

    Returns:
        ``(unit, valid, stretch, info)``: the stretched bands, a ``(H, W)`` bool mask of the pixels valid in every
        band, the [`BandStretch`] used, and ``info`` (``profile``, ``has_nodata_value``, ``has_mask``,
        ``band_valid``: the ``(bands, H, W)`` per-band masks, ``metadata``: see [`copy_band_metadata`]).
    """
    rasterio = require_rasterio()
    with open_raster(path) as src:
        if len({*src.dtypes}) != 1:
            raise ValueError(f"`{path}` mixes band dtypes {src.dtypes}; convert it to one dtype first.")
        bands, height, width = src.count, src.height, src.width
        if height == 0 or width == 0:
            raise ValueError(f"`{path}` has no pixels.")
        table = palette_table(src)  # a palette raster is expanded to RGB through its colour table
        bands, dtype = (bands, src.dtypes[0]) if table is None else (3, "uint8")
        unit = np.empty((bands, height, width), dtype=np.float32)
        band_valid = np.empty((bands, height, width), dtype=bool)
        has_mask = any(
            rasterio.enums.MaskFlags.per_dataset in flags or rasterio.enums.MaskFlags.nodata in flags
            for flags in src.mask_flag_enums
        )
        # 32 / 64-bit types: read natively, range and stretch in float64, then float32 (a second read)
        wide = src.dtypes[0] in WIDE_DTYPES
        lows, highs = np.full(bands, np.inf), np.full(bands, -np.inf)
        undeclared = 0  # NaN / infinite pixels that no nodata value or mask marks invalid
        for window in _row_windows(height, width):
            rows = slice(window.row_off, window.row_off + window.height)
            if table is not None:
                values = expand_palette(src.read(1, window=window), table).astype(np.float32)
                ok = band_valid[:, rows] = np.repeat(src.read_masks(1, window=window)[None] > 0, 3, axis=0)
            else:
                values = src.read(window=window) if wide else src.read(window=window, out_dtype="float32")
                masked = src.read_masks(window=window) > 0
                if np.issubdtype(values.dtype, np.floating):
                    ok = masked & np.isfinite(values)
                    undeclared += int(np.count_nonzero(masked & ~ok))
                else:
                    ok = masked
                band_valid[:, rows] = ok
            for b in np.flatnonzero(ok.reshape(bands, -1).any(axis=1)):
                lows[b] = min(lows[b], float(values[b][ok[b]].min()))
                highs[b] = max(highs[b], float(values[b][ok[b]].max()))
            if not wide:
                unit[:, rows] = values  # one window at a time
        if undeclared:
            warnings.warn(
                f"`{path}` has {undeclared} NaN or infinite band values that no nodata value marks; they are treated "
                "as nodata (masked in the output).",
                UserWarning,
                stacklevel=2,
            )
            has_mask = has_mask or src.nodata is None
        valid = band_valid.all(axis=0)
        if not band_valid.any():
            raise ValueError(f"`{path}` has no valid pixels (everything is nodata).")
        lows[np.isinf(lows)], highs[np.isinf(highs)] = 0.0, 1.0  # bands without a valid pixel
        stretch = band_stretch(lows, highs, dtype)
        for window in _row_windows(height, width) if wide else ():
            rows = slice(window.row_off, window.row_off + window.height)
            values = src.read(window=window)
            unit[:, rows] = np.stack([stretch.forward(values[b], b) for b in range(bands)])
        for b in range(bands):
            if not wide:
                unit[b] = stretch.forward(unit[b], b)
            unit[b][~band_valid[b]] = unit[b][band_valid[b]].mean() if band_valid[b].any() else 0.0
        info = {
            "profile": src.profile.copy(),
            "has_nodata_value": src.nodata is not None,
            "has_mask": has_mask,
            "band_valid": band_valid,
            "metadata": band_metadata(src),
        }
        if table is not None:
            as_rgb(info)
    return unit, valid, stretch, info


def as_rgb(info: dict[str, Any]) -> None:
    """Make the ``info`` of a palette raster describe the RGB scene it was expanded to (in place)."""
    from rasterio.enums import ColorInterp

    profile = info["profile"]
    profile.update(count=3, dtype="uint8", photometric="RGB")
    nodata = profile.get("nodata")
    if nodata is not None and not 0 <= nodata <= 255:  # a uint16 index: the mask says where, not a value
        profile["nodata"], info["has_nodata_value"], info["has_mask"] = None, False, True
    metadata = info["metadata"]
    metadata.update(
        colorinterp=(ColorInterp.red, ColorInterp.green, ColorInterp.blue),
        descriptions=(None,) * 3,
        scales=(1.0,) * 3,
        offsets=(0.0,) * 3,
        units=(None,) * 3,
        band_tags=[{}] * 3,
    )


def band_metadata(src: Any) -> dict[str, Any]:
    """What [`copy_band_metadata`] copies: colour interpretation, descriptions, scales, offsets, units, tags."""
    return {
        "colorinterp": tuple(src.colorinterp),
        "descriptions": tuple(src.descriptions),
        "scales": tuple(src.scales),
        "offsets": tuple(src.offsets),
        "units": tuple(src.units),
        "tags": src.tags(),
        "band_tags": [src.tags(b) for b in range(1, src.count + 1)],
    }


def copy_band_metadata(dst: Any, metadata: dict[str, Any]) -> None:
    """Give an open (writable) rasterio dataset the band meaning of its input.

    Args:
        dst (`Any`): the output dataset, open for writing, with the input's band count.
        metadata (`dict[str, Any]`): ``info["metadata"]`` of [`read_scene`]: colour interpretation, band descriptions,
            scales, offsets, units, dataset tags and per-band tags.
    """
    dst.colorinterp = metadata["colorinterp"]
    for b, description in enumerate(metadata["descriptions"], start=1):
        if description:
            dst.set_band_description(b, description)
    dst.scales = metadata["scales"]
    dst.offsets = metadata["offsets"]
    if any(metadata["units"]):
        dst.units = tuple(u or "" for u in metadata["units"])
    if metadata["tags"]:
        dst.update_tags(**metadata["tags"])
    for b, tags in enumerate(metadata["band_tags"], start=1):
        if tags:
            dst.update_tags(b, **tags)


def avoid_nodata(values: np.ndarray, valid: np.ndarray, nodata: float, reference: np.ndarray | None = None) -> None:
    """Move valid pixels that hold the nodata value to the nearest valid value of their dtype (in place).

    The nearest value is ``nodata + 1`` / ``nodata - 1`` for integers and the next representable float for floats,
    on the side of ``reference`` (the unrounded value; upwards when equal or not given, downwards at the top of the
    dtype's range).

    Args:
        values (`np.ndarray`): one band's output values (any numeric dtype).
        valid (`np.ndarray`): bool mask of the pixels that must not read as nodata (same shape).
        nodata (`float`): the nodata value (``NaN``: nothing to do, a finite value never equals it).
        reference (`np.ndarray | None`, *optional*): the values before rounding, to pick the side (same shape), or
            ``None``.

    Example:
        >>> v = np.array([0, 0, 7], np.uint8)
        >>> avoid_nodata(v, np.array([True, False, True]), 0)
        >>> v.tolist()
        [1, 0, 7]
    """
    if nodata is None or np.isnan(nodata):
        return
    hit = valid & (values == nodata)
    if not hit.any():
        return
    dtype = values.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        up, down = (nodata + 1 if nodata < info.max else None), (nodata - 1 if nodata > info.min else None)
    else:
        up, down = (
            np.nextafter(dtype.type(nodata), dtype.type(np.inf)),
            np.nextafter(dtype.type(nodata), dtype.type(-np.inf)),
        )
    downwards = np.zeros_like(hit) if reference is None else reference < nodata
    if up is None:
        downwards = np.ones_like(hit)
    elif down is None:
        downwards = np.zeros_like(hit)
    if up is not None:
        values[hit & ~downwards] = up
    if down is not None:
        values[hit & downwards] = down


def check_raster(path: str | os.PathLike) -> tuple[int, int, int]:
    """Open a raster and read every block of it (values and masks), so that a damaged file fails now, not later.

    Args:
        path (`str | os.PathLike`): the raster.

    Returns:
        ``(bands, height, width)``.

    Raises:
        ValueError: with a one-line reason, if rasterio cannot open or read the file.
    """
    require_rasterio()
    from rasterio.errors import RasterioError

    try:
        with open_raster(path) as src:
            shape = (src.count, src.height, src.width)
            for window in _row_windows(src.height, src.width):
                src.read(window=window)
                src.read_masks(window=window)
    except (RasterioError, OSError) as err:
        raise unreadable_raster(err) from err
    return shape


def unreadable_raster(err: BaseException) -> ValueError:
    """The one-line error of a raster whose blocks cannot be read: ``not a readable raster (<first line>)``.

    Example:
        >>> unreadable_raster(OSError("TIFFReadEncodedTile() failed"))
        ValueError('not a readable raster (TIFFReadEncodedTile() failed)')
    """
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ValueError(f"not a readable raster ({printable(reason)})")

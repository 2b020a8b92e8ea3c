"""The COG out and the commit of two files: the blended output copied to a Cloud-Optimized GeoTIFF and committed
atomically, with its uncertainty map (both files, or neither).

The output is a tiled (512 px), DEFLATE-compressed, pixel-interleaved COG with internal overviews (the input's factors
when it has some), BigTIFF when the size needs it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ...file_safety import gdal_path
from ...io.geo import STRETCH_TAG, copy_band_metadata
from ...io.rasters import build_output_overviews, gdal_safe_env, inspect_raster, open_raster, output_overviews
from ...pipelines.uncertainty_calibration import uncertainty_tags
from ...utils import atomic_write
from .assemble import UNCERTAINTY_TAG, assemble_scene, output_layout, uncertainty_description, uncertainty_profile
from .job import SceneJob

#: Tags written into the output: the stretch (``geo.STRETCH_TAG``), the value range asked for, and what became of the
#: values outside it: ``clipped`` (``clip=True``, ``--clip``) or ``added back`` (their part outside the range upscaled
#: bicubically and added to the model's output, the default).
VALUE_RANGE_TAG = "NEUROP_DIFF_VALUE_RANGE"
OUTSIDE_RANGE_TAG = "NEUROP_DIFF_OUTSIDE_RANGE"
_COG_OPTIONS = {"COMPRESS": "DEFLATE", "BLOCKSIZE": "512", "BIGTIFF": "IF_SAFER", "OVERVIEWS": "AUTO"}
_GDAL_CACHE_MB = 64  # bounds GDAL's block cache while the output is assembled and copied to a COG


def write_cog(assembled: str, target: str, resampling: str | None = None) -> None:
    """Copy the assembled GeoTIFF to a Cloud-Optimized GeoTIFF (tiled, DEFLATE, overviews, BigTIFF if needed).

    The assembled file's overviews (the input's factors) are kept; without any, GDAL makes them down to one block
    with ``resampling``: ``None`` GDAL's default (cubic), ``"NEAREST"`` (an alpha band is a mask) or ``"AVERAGE"`` (an
    uncertainty map stays >= 0, which cubic would not keep). Both names are local files, handed to GDAL as absolute
    paths ([`~neurop_diff_diffusers.file_safety.gdal_path`]: a name like ``GTIFF_DIR:1:x.tif`` stays a file).
    """
    import rasterio
    import rasterio.shutil

    with gdal_safe_env(), rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB, GDAL_NUM_THREADS="1"):
        with rasterio.open(gdal_path(assembled)) as tmp:
            predictor = "2" if np.issubdtype(np.dtype(tmp.dtypes[0]), np.integer) else "3"
            options = _COG_OPTIONS if resampling is None else dict(_COG_OPTIONS, RESAMPLING=resampling)
            rasterio.shutil.copy(tmp, gdal_path(target), driver="COG", PREDICTOR=predictor, **options)


def assemble_and_commit(job: SceneJob, overwrite: bool, error_bound: float | None = None) -> Path:
    """Blend the saved windows into the output COG (and the uncertainty map's) and commit it atomically.

    With an uncertainty map, the map is committed first and the output right after it; if the output cannot be
    committed the map just written is removed: a run leaves both files or neither. Both commits go through
    [`~neurop_diff_diffusers.utils.atomic_write`]'s checks (a link, folder, device or FIFO at either name is refused,
    never replaced) and GDAL is handed absolute local names only. The map's tags say its samples and what the spread
    is, and ``error_bound``, the model's calibrated 90 % error-bound factor where it applies to the run (the engine
    passes it): [`~neurop_diff_diffusers.pipelines.uncertainty_calibration.uncertainty_tags`].
    """
    import rasterio

    assembled = job.folder / "assembled.tif"
    assembled_map = job.folder / "assembled.uncertainty.tif"
    map_path = None if job.uncertainty_path is None else Path(gdal_path(job.uncertainty_path))
    dst_path = Path(gdal_path(job.dst_path))
    for path in (assembled, assembled_map):
        path.unlink(missing_ok=True)
    header = job.header if job.header is not None else inspect_raster(job.src_path)
    out_size = job.plan.out_size
    factors = output_overviews(header, out_size)
    tags = {
        STRETCH_TAG: job.stats.stretch.to_json(),
        VALUE_RANGE_TAG: str(job.value_range),
        OUTSIDE_RANGE_TAG: "clipped" if job.options.clip else "added back",
    }
    try:
        with open_raster(job.src_path) as src, contextlib.ExitStack() as stack:
            profile, metadata, mask_only = output_layout(src, header, out_size, job.stats.nonfinite)
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB, GDAL_TIFF_INTERNAL_MASK="YES"))
            dst = stack.enter_context(rasterio.open(gdal_path(assembled), "w", **profile))
            copy_band_metadata(dst, metadata)
            dst.update_tags(**tags)
            spread = None
            if map_path is not None:
                spread = stack.enter_context(
                    rasterio.open(gdal_path(assembled_map), "w", **uncertainty_profile(profile))
                )
                spread.set_band_description(1, "uncertainty")
                own = {UNCERTAINTY_TAG: uncertainty_description(job.num_samples)}
                spread.update_tags(**tags, **own, **uncertainty_tags(job.num_samples, error_bound))
            assemble_scene(src, job.plan, job.stats, job.folder, dst, mask_only, profile.get("nodata"), spread)
            # the input's internal overviews (a COG's), rebuilt; the COG copy keeps them
            build_output_overviews(dst, factors, header)
            if spread is not None and factors:
                from rasterio.enums import Resampling

                spread.build_overviews(factors, Resampling.average)
        resampling = "NEAREST" if header.alpha_bands else None
        if map_path is not None:
            write_map = lambda temp: write_cog(str(assembled_map), temp, "AVERAGE")  # noqa: E731
            atomic_write(map_path, write_map, overwrite=overwrite, what="uncertainty map")
        try:
            atomic_write(dst_path, lambda temp: write_cog(str(assembled), temp, resampling), overwrite=overwrite)
            return job.dst_path
        except BaseException:
            if map_path is not None:  # never a map without its output
                map_path.unlink(missing_ok=True)
            raise
    finally:
        assembled.unlink(missing_ok=True)
        assembled_map.unlink(missing_ok=True)

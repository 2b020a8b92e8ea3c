"""Names of what a job writes: the output of an input, and the uncertainty map beside an output.

Example:
    >>> from pathlib import Path
    >>> from neurop_diff_diffusers.io.paths import output_path, uncertainty_path
    >>> uncertainty_path(output_path(Path("a/scene.png"), 4, None, None, None)).as_posix()
    'a/scene_x4.uncertainty.tif'
"""

from __future__ import annotations

from pathlib import Path


def _scale_tag(scale: float | None, size: tuple[int, int] | None) -> str:
    if size is not None:
        return f"{size[0]}x{size[1]}"
    return "x" + (f"{scale:g}")


def output_path(
    input_path: Path, scale: float | None, size: tuple[int, int] | None, out: Path | None, out_dir: Path | None
) -> Path:
    """Where ``upscale`` writes the result of ``input_path``: ``-o``, else ``<dir>/<stem>_x<scale><suffix>``.

    The suffix is the input's, except for a TIFF under another name (a GeoTIFF renamed ``.png`` still takes the
    GeoTIFF path, whose output must be a TIFF): ``.tif``.

    Args:
        input_path: the input file.
        scale: the scale (or ``None`` with ``size``).
        size: the explicit ``(height, width)`` (or ``None``).
        out: the ``-o`` path, if given.
        out_dir: the ``--out-dir`` folder, if given (default: the input's folder).

    Example:
        >>> output_path(Path("a/scene.png"), 3.7, None, None, None).as_posix()
        'a/scene_x3.7.png'
    """
    if out is not None:
        return out
    folder = out_dir if out_dir is not None else input_path.parent
    suffix = input_path.suffix
    if suffix.lower() not in (".tif", ".tiff"):
        from .rasters import is_tiff_content

        try:
            suffix = ".tif" if input_path.is_file() and is_tiff_content(input_path) else suffix
        except OSError:  # unreadable, missing, a FIFO (never opened): reading the input reports it
            pass
    return folder / f"{input_path.stem}_{_scale_tag(scale, size)}{suffix}"


def uncertainty_path(dst: Path) -> Path:
    """Where ``upscale --uncertainty N`` writes the map of the output ``dst``: ``<dst stem>.uncertainty.tif``.

    The same for a plain image, a GeoTIFF and every output of a batch.

    Args:
        dst: the output file.

    Example:
        >>> from pathlib import Path
        >>> uncertainty_path(Path("out/scene_x4.png")).as_posix()
        'out/scene_x4.uncertainty.tif'
    """
    return dst.with_name(f"{dst.stem}.uncertainty.tif")

"""Open rasters safely: the one place where the package hands a file name to GDAL (through rasterio).

GDAL chooses a driver from a file's *content*, not its name: a VRT (XML) named ``x.tif`` would be opened as a VRT,
whose sources may name any local file or a ``/vsicurl/`` URL, and GDAL looks beside a file for sidecars
(``.aux.xml``, ``.ovr``, ``.msk``, world files) that add metadata, overviews or masks from outside the input. So every
raster read by the CLI, batch mode, the web app and the scene engine goes through [`open_raster`], which

- accepts only a local regular file (no ``/vsi...`` prefix, no URL, no ``driver:`` syntax, no folder),
- lets GDAL try only the drivers of [`ALLOWED_DRIVERS`] (an allow-list; GTiff, which also reads COGs and BigTIFF),
  and checks the driver of the opened dataset again,
- switches off GDAL's sidecar look-ups (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``) and its ``.aux.xml``
  persistence (``GDAL_PAM_ENABLED=NO``) for as long as the file is open.

Example:
    >>> with open_raster("scene.tif") as src:  # doctest: +SKIP
    ...     print(src.driver, src.count, src.height, src.width)
    GTiff 4 723 934
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The GDAL drivers an input raster may be opened with. GTiff reads GeoTIFF, BigTIFF and Cloud-Optimized GeoTIFF.
ALLOWED_DRIVERS: tuple[str, ...] = ("GTiff",)

_DRIVER = "GTiff"  # the one driver GDAL may try (rasterio takes a single name)

#: GDAL configuration in force while an input is open: no sidecar files read, no ``.aux.xml`` written.
SAFE_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".neurop-diff-none",
    "GDAL_HTTP_MAX_RETRY": "0",
}

# Names GDAL would interpret as something else than a local file: virtual file systems, URLs, `DRIVER:name` syntax.
_SPECIAL_NAME = re.compile(r"^(/vsi|\\vsi|[a-z][a-z0-9+.-]*://|[A-Za-z0-9_]{2,}:)", re.IGNORECASE)


def check_raster_name(path: str | os.PathLike) -> Path:
    """The local regular file ``path`` names, or one ``ValueError`` if GDAL could read it as something else.

    Args:
        path (`str | os.PathLike`): the input's name.

    Returns:
        `Path`: the path, unchanged.

    Raises:
        TypeError: ``path`` is not a string or path.
        ValueError: a ``/vsi`` virtual file, a URL or a ``DRIVER:`` name, or not a regular file.

    Example:
        >>> check_raster_name("/vsicurl/x.tif")
        Traceback (most recent call last):
        ...
        ValueError: `/vsicurl/x.tif`: only local files are read (no /vsi prefix, URL or DRIVER: name)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise TypeError("`path` must be a str or os.PathLike of str, got bytes.")
    if _SPECIAL_NAME.match(text) or "\x00" in text:
        raise ValueError(f"`{text}`: only local files are read (no /vsi prefix, URL or DRIVER: name)")
    if not os.path.isfile(text):
        raise ValueError(f"`{text}`: not a regular file")
    return Path(text)


@contextmanager
def gdal_safe_env() -> Iterator[None]:
    """A ``rasterio.Env`` with [`SAFE_GDAL_OPTIONS`] (no sidecar reads, no ``.aux.xml`` writes, no network)."""
    import rasterio

    with rasterio.Env(**SAFE_GDAL_OPTIONS):
        yield


@contextmanager
def open_raster(path: str | os.PathLike) -> Iterator[Any]:
    """Open a local raster for reading with an allow-list of GDAL drivers and no sidecar files.

    Args:
        path (`str | os.PathLike`): a local GeoTIFF (see [`ALLOWED_DRIVERS`]).

    Yields:
        the open ``rasterio.DatasetReader`` (read it inside the ``with`` block: the safe GDAL settings hold there).

    Raises:
        ValueError: a name GDAL would not read as a local file, or a file no allowed driver opens (e.g. a VRT named
            ``.tif``), with a one-line reason.
        ImportError: rasterio is not installed (extra ``[geo]``).
    """
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioError
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("GeoTIFF support needs rasterio: pip install 'neurop-diff-diffusers[geo]'") from err
    name = check_raster_name(path)
    with gdal_safe_env():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                src = rasterio.open(name, driver=_DRIVER)
        except RasterioError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"`{name}`: not a raster of an allowed format ({', '.join(ALLOWED_DRIVERS)}): {first}"
            ) from err
        with src:
            if src.driver not in ALLOWED_DRIVERS:  # defence in depth: GDAL must have honoured the allow-list
                raise ValueError(f"`{name}`: opened by GDAL's {src.driver} driver, which is not allowed")
            yield src

"""Open rasters safely: the one place where the package hands a file name to GDAL (through rasterio).

GDAL chooses a driver from a file's *content*, not its name: a VRT (XML) named ``x.tif`` would be opened as a VRT,
whose sources may name any local file or a ``/vsicurl/`` URL, and GDAL looks beside a file for sidecars
(``.aux.xml``, ``.ovr``, ``.msk``, world files) that add metadata, overviews or masks from outside the input. So every
raster read by the CLI, batch mode, the web app and the scene engine goes through [`open_raster`], which

- accepts only a local regular file (no ``/vsi...`` prefix, no URL, no ``driver:`` syntax, no folder),
- lets GDAL try only the drivers of [`ALLOWED_DRIVERS`] (an allow-list; GTiff, which also reads COGs and BigTIFF),
  and checks the driver of the opened dataset again,
- checks the TIFF header's budgets (images, tags, metadata bytes and items) before GDAL parses it
  ([`~neurop_diff_diffusers.io.tiff_header.check_tiff_header`]),
- switches off GDAL's sidecar look-ups (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``) and its ``.aux.xml``
  persistence (``GDAL_PAM_ENABLED=NO``) for as long as the file is open.

It also reads a raster's header without its pixels ([`inspect_raster`] -> [`RasterHeader`]) so that everything
is decided before any pixel is read: which path a TIFF takes ([`route_tiff`], [`needs_raster_path`]), what is
refused ([`check_header`]: complex types, 2 bands, mixed types), the memory budget counted as bands x pixels x bytes
for every stage ([`check_budget`]), and the output's georeferencing (transform, GCPs, RPCs mapped to the output grid:
[`output_georeferencing`]) and overviews ([`output_overviews`]). Palette rasters are expanded to RGB
([`palette_table`], [`expand_palette`]).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..file_safety import gdal_path, printable
from .tiff_header import check_tiff_header

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

    GDAL is always handed the file's absolute name ([`~neurop_diff_diffusers.file_safety.gdal_path`]), which no
    ``DRIVER:`` or URL reading applies to: a real local file whose name merely looks like one (``./GTIFF_DIR:1:x.tif``,
    which ``Path`` prints as ``GTIFF_DIR:1:x.tif``) is read as the file it is. A name of that form that is not a local
    file, and any name whose absolute form starts with ``/vsi``, is refused.

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
    special = _SPECIAL_NAME.match(text) and not os.path.isfile(text)
    if special or "\x00" in text or _SPECIAL_NAME.match(gdal_path(text)):
        raise ValueError(f"`{printable(text)}`: only local files are read (no /vsi prefix, URL or DRIVER: name)")
    if not os.path.isfile(text):
        raise ValueError(f"`{printable(text)}`: not a regular file")
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
    shown = printable(name)
    try:
        check_tiff_header(name)  # the header's budgets, before GDAL parses any tag
    except ValueError as err:
        raise ValueError(f"`{shown}`: {err}") from None
    with gdal_safe_env():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                src = rasterio.open(gdal_path(name), driver=_DRIVER)  # absolute: never a DRIVER: or URL reading
        except RasterioError as err:
            first = printable(str(err).splitlines()[0] if str(err) else type(err).__name__)
            raise ValueError(
                f"`{shown}`: not a raster of an allowed format ({', '.join(ALLOWED_DRIVERS)}): {first}"
            ) from err
        with src:
            if src.driver not in ALLOWED_DRIVERS:  # defence in depth: GDAL must have honoured the allow-list
                raise ValueError(f"`{shown}`: opened by GDAL's {src.driver} driver, which is not allowed")
            yield src


# ---- the header of an input: read without reading any pixel ----

#: TIFF and BigTIFF signatures (little- and big-endian): the content a ``.tif`` / ``.tiff`` input must have.
TIFF_SIGNATURES: tuple[bytes, ...] = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: The band data types read (GDAL names as rasterio spells them); complex types are refused (see [`check_header`]).
ALLOWED_DTYPES: tuple[str, ...] = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "float64",
)

#: Data types wider than float32's 24-bit mantissa: the model sees them in float32 (a warning says so).
WIDE_DTYPES: tuple[str, ...] = ("uint32", "int32", "uint64", "int64", "float64")

#: The TIFF tags that carry georeferencing (GeoTIFF: ModelPixelScale, ModelTiepoint (also GCPs), ModelTransformation,
#: GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams; RPCCoefficient; GDAL's nodata and metadata).
GEO_TIFF_TAGS: dict[int, str] = {
    33550: "ModelPixelScale",
    33922: "ModelTiepoint",
    34264: "ModelTransformation",
    34735: "GeoKeyDirectory",
    34736: "GeoDoubleParams",
    34737: "GeoAsciiParams",
    50844: "RPCCoefficient",
    42113: "GDAL_NODATA",
}

#: Bytes per band and pixel a stage holds: the float32 working value and a one-byte validity mask.
BYTES_PER_SAMPLE = 5
#: A pixel limit (``--max-pixels``, the app's limits) allows that many pixels of up to this many bands (RGB + NIR).
BUDGET_BANDS = 4


@dataclass(frozen=True)
class RasterHeader:
    """What a raster's header says, read by [`inspect_raster`] without reading its pixels.

    Args:
        path (`str`): the file.
        driver (`str`): the GDAL driver that opened it (one of [`ALLOWED_DRIVERS`]).
        bands (`int`): the band count.
        height (`int`): rows.
        width (`int`): columns.
        dtypes (`tuple[str, ...]`): each band's data type.
        nodata (`float | None`): the nodata value.
        colorinterp (`tuple[str, ...]`): each band's colour interpretation (``red``, ``alpha``, ``palette``, ...).
        photometric (`str | None`): the TIFF photometric interpretation (``RGB``, ``MINISBLACK``, ``PALETTE``, ...).
        crs (`str | None`): the CRS of the transform, as WKT.
        transform (`tuple[float, ...]`): the affine transform ``(a, b, c, d, e, f)``.
        gcp_count (`int`): ground control points.
        gcp_crs (`str | None`): the CRS of the GCPs, as WKT.
        has_rpcs (`bool`): whether the file has rational polynomial coefficients.
        overviews (`tuple[int, ...]`): the internal overviews' decimation factors (band 1).
        block_shapes (`tuple[tuple[int, int], ...]`): each band's ``(rows, columns)`` block.
        compression (`str | None`): the compression (``deflate``, ``lzw``, ...).
        interleave (`str | None`): ``pixel`` or ``band``.
        has_mask (`bool`): whether the file has a dataset mask or a nodata value.
    """

    path: str
    driver: str
    bands: int
    height: int
    width: int
    dtypes: tuple[str, ...]
    nodata: float | None
    colorinterp: tuple[str, ...]
    photometric: str | None
    crs: str | None
    transform: tuple[float, ...]
    gcp_count: int
    gcp_crs: str | None
    has_rpcs: bool
    overviews: tuple[int, ...]
    block_shapes: tuple[tuple[int, int], ...]
    compression: str | None
    interleave: str | None
    has_mask: bool

    @property
    def pixels(self) -> int:
        """``height * width``."""
        return self.height * self.width

    @property
    def has_palette(self) -> bool:
        """Whether a band is a colour-table index (palette)."""
        return "palette" in self.colorinterp or (self.photometric or "").upper() == "PALETTE"

    @property
    def is_georeferenced(self) -> bool:
        """Whether the file places its pixels on the Earth: a CRS, a non-identity transform, GCPs or RPCs."""
        identity = tuple(self.transform) == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        return self.crs is not None or not identity or self.gcp_count > 0 or self.has_rpcs

    @property
    def working_bands(self) -> int:
        """The bands the GeoTIFF path holds: 3 for a palette raster (expanded to RGB), else ``bands``."""
        return 3 if self.has_palette else self.bands

    @property
    def alpha_bands(self) -> tuple[int, ...]:
        """The 0-based bands whose colour interpretation is alpha (a mask: upscaled with nearest neighbour)."""
        return tuple(b for b, c in enumerate(self.colorinterp) if c == "alpha")


def inspect_raster(path: str | os.PathLike) -> RasterHeader:
    """Read a raster's header through [`open_raster`] (allowed drivers, no sidecars): no pixel is read.

    Args:
        path (`str | os.PathLike`): a local GeoTIFF / TIFF.

    Returns:
        [`RasterHeader`].

    Raises:
        ValueError: the file is not a raster of an allowed format (one line).
    """
    with open_raster(path) as src:
        gcps, gcp_crs = src.gcps
        structure = src.tags(ns="IMAGE_STRUCTURE")
        compression = src.compression.value.lower() if src.compression is not None else None
        photometric = src.photometric.name if src.photometric is not None else None
        interleave = src.interleaving.value.lower() if src.interleaving is not None else None
        return RasterHeader(
            path=str(path),
            driver=src.driver,
            bands=src.count,
            height=src.height,
            width=src.width,
            dtypes=tuple(src.dtypes),
            nodata=src.nodata,
            colorinterp=tuple(c.name for c in src.colorinterp),
            photometric=photometric or structure.get("PHOTOMETRIC"),
            crs=src.crs.to_wkt() if src.crs is not None else None,
            transform=tuple(src.transform)[:6],
            gcp_count=len(gcps),
            gcp_crs=gcp_crs.to_wkt() if gcp_crs is not None else None,
            has_rpcs=src.rpcs is not None,
            overviews=tuple(src.overviews(1)) if src.count else (),
            block_shapes=tuple(tuple(s) for s in src.block_shapes),
            compression=compression,
            interleave=interleave,
            has_mask=src.nodata is not None or any(f != [_all_valid()] for f in src.mask_flag_enums),
        )


def _all_valid() -> Any:
    from rasterio.enums import MaskFlags

    return MaskFlags.all_valid


def check_header(header: RasterHeader) -> list[str]:
    """Refuse what the GeoTIFF path cannot handle faithfully, from the header; return the warnings to show.

    Refused (one ``ValueError`` each): no pixels; 2 bands (the model needs 1 grey or at least 3 RGB); bands of
    different data types; complex data types (the imaginary part has no meaning for the model); a colour table on
    anything but one uint8 / uint16 band. A palette raster is accepted and expanded to RGB ([`palette_table`]), with
    a warning.

    Args:
        header (`RasterHeader`): from [`inspect_raster`].

    Returns:
        `list[str]`: warnings, one line each (a palette expanded to RGB, a 32 / 64-bit data type seen by the model
        in float32).

    Raises:
        ValueError: with a one-line reason.
    """
    if header.height == 0 or header.width == 0 or header.bands == 0:
        raise ValueError(f"has no pixels ({header.bands} bands of {header.height}x{header.width})")
    complex_types = sorted({d for d in header.dtypes if d.startswith("complex")})
    if complex_types:
        raise ValueError(
            f"complex bands ({', '.join(complex_types)}) are refused: the model reads real intensities; "
            "write the amplitude (or the real part) to a real-valued GeoTIFF first"
        )
    other = sorted({d for d in header.dtypes if d not in ALLOWED_DTYPES})
    if other:
        raise ValueError(f"band data type {', '.join(other)} is not supported (allowed: {', '.join(ALLOWED_DTYPES)})")
    if len(set(header.dtypes)) != 1:
        raise ValueError(f"mixes band data types {', '.join(header.dtypes)}; convert it to one data type first")
    if header.has_palette and (header.bands != 1 or header.dtypes[0] not in ("uint8", "uint16")):
        raise ValueError(
            f"is a palette raster of {header.bands} {header.dtypes[0]} bands; a colour table needs one uint8 or "
            "uint16 band (expand it first: gdal_translate -expand rgb in.tif out.tif)"
        )
    if header.bands == 2:
        raise ValueError("has 2 bands; the model needs 1 (grey) or at least 3 (RGB)")
    warnings_: list[str] = []
    if header.has_palette:
        warnings_.append(
            "palette (colour-table) raster: expanded to RGB through its colour table; the output is an RGB "
            "GeoTIFF (3 uint8 bands, no colour table)"
        )
    if header.dtypes[0] in WIDE_DTYPES:
        warnings_.append(
            f"{header.dtypes[0]} bands: each band is stretched to [0, 1] in float64 but the model works in float32, "
            "so the output resolves about 1/16,777,216 of each band's value range"
        )
    return warnings_


def stage_bytes(header: RasterHeader, out_size: tuple[int, int] | None) -> dict[str, int]:
    """The memory each stage of the GeoTIFF path needs: bands x pixels x [`BYTES_PER_SAMPLE`] (a palette raster
    counts 3 bands: it is expanded to RGB).

    Stages: ``input`` (every band read as float32, with its validity mask) and, when ``out_size`` is given,
    ``output`` (every band at the output size, float32, with its mask). The scene engine
    ([`~neurop_diff_diffusers.jobs.scene`]) holds neither whole; the CLI counts the input stage only (a bound on bands
    x pixels from the header), the web app both (its server limits).

    Args:
        header (`RasterHeader`): from [`inspect_raster`].
        out_size (`tuple[int, int] | None`): the output ``(height, width)``, or ``None`` for the input stage only.

    Example:
        >>> h = RasterHeader("a.tif", "GTiff", 2000, 1024, 1024, ("uint8",) * 2000, None, (), None, None,
        ...                  (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 0, None, False, (), (), None, None, False)
        >>> stage_bytes(h, (2048, 2048))["output"]
        41943040000
    """
    bands = header.working_bands
    stages = {"input": bands * header.pixels * BYTES_PER_SAMPLE}
    if out_size is not None:
        stages["output"] = bands * out_size[0] * out_size[1] * BYTES_PER_SAMPLE
    return stages


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} bytes"


def check_budget(
    header: RasterHeader,
    out_size: tuple[int, int] | None,
    max_pixels: int,
    limit_name: str = "--max-pixels",
    advice: str = "raise it",
) -> None:
    """Refuse, from the header and before any pixel is read, a raster whose stages need more memory than allowed.

    ``max_pixels`` allows that many pixels of up to [`BUDGET_BANDS`] bands at every stage (see [`stage_bytes`]):
    a budget of ``max_pixels * BUDGET_BANDS * BYTES_PER_SAMPLE`` bytes. A scene with more bands needs
    proportionally fewer pixels: 2,000 bands of 1024 x 1024 need 10.5 GB to be read.

    Args:
        header (`RasterHeader`): from [`inspect_raster`].
        out_size (`tuple[int, int] | None`): the output ``(height, width)``; ``None``: check the input stage only.
        max_pixels (`int`): the pixel limit the budget derives from.
        limit_name (`str`, defaults to ``"--max-pixels"``): how the message names the limit.
        advice (`str`, defaults to ``"raise it"``): what the message ends with (empty: nothing).

    Raises:
        ValueError: one line naming the stage, its size, the limit and how to raise it.
    """
    budget = max_pixels * BUDGET_BANDS * BYTES_PER_SAMPLE
    for stage, need in stage_bytes(header, out_size).items():
        if need > budget:
            rows, cols = (header.height, header.width) if stage == "input" else out_size
            raise ValueError(
                f"the {stage} needs {header.working_bands} bands x {rows}x{cols} pixels x {BYTES_PER_SAMPLE} bytes = "
                f"{_size(need)}, over {limit_name} {max_pixels} (which allows {max_pixels} pixels x {BUDGET_BANDS} "
                f"bands x {BYTES_PER_SAMPLE} bytes = {_size(budget)})" + (f"; {advice}" if advice else "")
            )


def is_tiff_content(path: str | os.PathLike) -> bool:
    """Whether a file starts with a TIFF / BigTIFF signature (its content, whatever its name)."""
    with open(path, "rb") as f:
        return f.read(4) in TIFF_SIGNATURES


def tiff_geo_tags(path: str | os.PathLike) -> list[str]:
    """The georeferencing tags of a TIFF's first image, read with PIL (works without rasterio).

    Args:
        path (`str | os.PathLike`): a TIFF file.

    Returns:
        `list[str]`: the names of the [`GEO_TIFF_TAGS`] present (empty when none, or PIL cannot read the header).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            tags = getattr(image, "tag_v2", {})
            return [name for tag, name in GEO_TIFF_TAGS.items() if tag in tags]
    except Exception:  # not a TIFF PIL parses: no tags to lose
        return []


def needs_raster_path(header: RasterHeader) -> bool:
    """Whether a TIFF must take the GeoTIFF path (rasterio) rather than the plain-image path (PIL).

    The plain-image path keeps only 8-bit grey / RGB / RGBA pixels (and expands an 8-bit palette to RGB, as for a
    PNG); anything else it would lose or misread goes through rasterio: georeferencing (CRS, transform, GCPs,
    RPCs), a nodata value, other data types than uint8, and band layouts other than 1 (grey), 3 (RGB) or 4 with an
    alpha fourth band (e.g. RGB + NIR, which PIL would call alpha).

    Args:
        header (`RasterHeader`): from [`inspect_raster`].
    """
    plain_layout = header.bands in (1, 3) or (header.bands == 4 and header.colorinterp[3] == "alpha")
    return (
        header.is_georeferenced
        or header.nodata is not None
        or any(d != "uint8" for d in header.dtypes)
        or not plain_layout
    )


def route_tiff(path: str | os.PathLike) -> bool:
    """Whether an input takes the GeoTIFF path; refuse a ``.tif`` that is no TIFF, or a georeferenced one without
    rasterio.

    A file named ``.tif`` / ``.tiff``, or whose content is a TIFF, is inspected; other files are plain images.

    Args:
        path (`str | os.PathLike`): the input file.

    Returns:
        `bool`: ``True`` for the GeoTIFF path ([`needs_raster_path`]); ``False`` for the plain-image path (also when
        GDAL cannot open a TIFF at all: PIL then reports why).

    Raises:
        ValueError: a ``.tif`` / ``.tiff`` name whose content is not a TIFF (e.g. a GDAL VRT: refused, never opened
            by GDAL or PIL); a TIFF with georeferencing tags while rasterio is not installed or that GDAL cannot
            open. One line, without the file's name (the caller names it).
    """
    named_tiff = Path(path).suffix.lower() in (".tif", ".tiff")
    tiff = is_tiff_content(path)
    if named_tiff and not tiff:
        raise ValueError("not a TIFF file (a .tif / .tiff input must be a TIFF or GeoTIFF; other formats are refused)")
    if not tiff:
        return False
    check_tiff_header(path)  # before GDAL or PIL parse its tags: refused here, never handed to PIL instead
    try:
        import rasterio  # noqa: F401
    except ImportError:
        tags = tiff_geo_tags(path)
        if tags:
            raise ValueError(
                f"has georeferencing ({', '.join(tags)}) that only the GeoTIFF path keeps, and rasterio is not "
                "installed: pip install 'neurop-diff-diffusers[geo]'"
            ) from None
        return False
    try:
        header = inspect_raster(path)
    except ValueError as err:
        tags = tiff_geo_tags(path)
        if tags:  # never hand a GeoTIFF to PIL, which would drop its georeferencing
            reason = str(err).split(": ", 2)[-1]
            raise ValueError(f"a GeoTIFF ({', '.join(tags)}) that GDAL cannot open: {reason}") from None
        return False  # PIL says why it cannot read it, or reads a plain TIFF GDAL does not
    return needs_raster_path(header)


# ---- palettes ----


def palette_table(src: Any) -> Any:
    """The RGB lookup table of a palette raster's colour table, or ``None`` for other rasters.

    Args:
        src (`Any`): an open rasterio dataset (from [`open_raster`]).

    Returns:
        ``np.ndarray`` of shape ``(256, 3)`` (``uint8`` band) or ``(65536, 3)`` (``uint16`` band), ``uint8``: entry
        ``i`` is the colour of index ``i`` (black where the table has no entry; the entries' alpha is not used), or
        ``None``.
    """
    import numpy as np

    if src.count != 1 or src.colorinterp[0].name != "palette":
        return None
    table = np.zeros((256 if src.dtypes[0] == "uint8" else 65536, 3), dtype=np.uint8)
    for index, colour in src.colormap(1).items():
        table[index] = colour[:3]
    return table


def expand_palette(indices: Any, table: Any) -> Any:
    """Colour-table indices ``(H, W)`` to RGB ``(3, H, W)`` ``uint8`` through [`palette_table`]'s ``table``.

    Example:
        >>> import numpy as np
        >>> table = np.zeros((256, 3), np.uint8); table[1] = (255, 128, 0)
        >>> expand_palette(np.array([[0, 1]], np.uint8), table)[:, 0, 1].tolist()
        [255, 128, 0]
    """
    return table[indices].transpose(2, 0, 1)


# ---- the output's georeferencing and layout ----


def output_georeferencing(header: RasterHeader, out_size: tuple[int, int]) -> dict[str, Any]:
    """The georeferencing of the output grid, as ``rasterio.open(..., "w")`` keyword arguments.

    - transform: the same origin, the pixel size divided by the actual scale of each axis (none when the input has
      none: an identity transform is not scaled into a meaningless one);
    - GCPs: pixel / line (corner convention) multiplied by the scale of their axis, ground coordinates unchanged;
    - RPCs: ``LINE_OFF`` / ``SAMP_OFF`` and ``LINE_SCALE`` / ``SAMP_SCALE`` mapped to the output grid. RPC image
      coordinates put 0 at the *centre* of the first pixel, so ``off' = (off + 0.5) * s - 0.5`` and
      ``scale' = scale * s``, with ``s`` the axis's scale: an output pixel maps to the ground point of the input
      position it covers.

    Args:
        header (`RasterHeader`): the input's header (its file is read again for the GCPs / RPCs).
        out_size (`tuple[int, int]`): the output ``(height, width)``.

    Returns:
        `dict[str, Any]`: ``transform`` and ``crs``, or ``gcps`` and ``crs`` (each only when the input has it), plus
        ``rpcs`` when the input has them.
    """
    from rasterio.control import GroundControlPoint
    from rasterio.transform import Affine

    sy, sx = out_size[0] / header.height, out_size[1] / header.width
    with open_raster(header.path) as src:
        gcps, gcp_crs = src.gcps
        rpcs = src.rpcs
        transform, crs = src.transform, src.crs
    result: dict[str, Any] = {}
    if gcps:
        result["gcps"] = [
            GroundControlPoint(row=g.row * sy, col=g.col * sx, x=g.x, y=g.y, z=g.z, id=g.id, info=g.info) for g in gcps
        ]
        if gcp_crs is not None:  # GCPs without a CRS are kept as they are
            result["crs"] = gcp_crs
    elif not transform.is_identity:  # an identity transform is "none": scaling it would invent georeferencing
        result["transform"] = transform @ Affine.scale(1 / sx, 1 / sy)
        result["crs"] = crs
    elif crs is not None:
        result["crs"] = crs
    if rpcs is not None:
        data = rpcs.to_dict()
        data["line_off"] = (data["line_off"] + 0.5) * sy - 0.5
        data["samp_off"] = (data["samp_off"] + 0.5) * sx - 0.5
        data["line_scale"] *= sy
        data["samp_scale"] *= sx
        result["rpcs"] = type(rpcs)(**data)
    return result


def output_overviews(header: RasterHeader, out_size: tuple[int, int]) -> list[int]:
    """The overview factors to build in the output: the input's internal ones (a COG's), where the output has room.

    Args:
        header (`RasterHeader`): the input's header.
        out_size (`tuple[int, int]`): the output ``(height, width)``.
    """
    return [f for f in header.overviews if f > 1 and min(out_size) // f >= 1]


def build_output_overviews(dst: Any, factors: list[int], header: RasterHeader) -> None:
    """Build internal overviews in an output open for writing (after its pixels are written).

    Average resampling (nearest when the input has an alpha band: a mask keeps its values).

    Args:
        dst (`Any`): the output dataset, open for writing.
        factors (`list[int]`): from [`output_overviews`]; nothing is built when empty.
        header (`RasterHeader`): the input's header.
    """
    if not factors:
        return
    from rasterio.enums import Resampling

    dst.build_overviews(factors, Resampling.nearest if header.alpha_bands else Resampling.average)
    dst.update_tags(ns="rio_overview", resampling="nearest" if header.alpha_bands else "average")

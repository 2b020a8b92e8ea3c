"""One image file in, one upscaled file out: the file-level job of ``neurop-diff upscale`` and the web app.

Read and validate the input, plan the output, run the pipeline and write the result atomically; a georeferenced TIFF
takes the GeoTIFF path ([`~neurop_diff_diffusers.jobs.scene.upscale_geotiff`]) and keeps its georeferencing. Every
failure is one line naming the file ([`InputFailed`]).

Importing this module loads neither torch, diffusers, numpy nor PIL (the command line answers at once): each function
imports what it needs when called.

Example:
    >>> from pathlib import Path
    >>> output_path(Path("a/scene.png"), 2.5, None, None, Path("out")).as_posix()
    'out/scene_x2.5.png'
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..io.paths import output_path, uncertainty_path  # noqa: F401 (the job names its outputs with them)

#: The input and output file types (PNG, JPEG, TIFF; a georeferenced TIFF is a GeoTIFF).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


class InputFailed(CLIError):
    """A problem with one input or its output: reported as one line, that input is skipped, the others go on."""


class UpscaleJob(NamedTuple):
    """One input checked and planned by [`prepare_job`], ready for [`run_job`].

    Args:
        src: the input file.
        dst: the output file.
        geo: whether the input takes the GeoTIFF path.
        out_size: the output's ``(height, width)``.
    """

    src: Path
    dst: Path
    geo: bool
    out_size: tuple[int, int]


#: Python argument names in library messages -> the flags that set them.
_FLAG_NAMES = {
    "`num_inference_steps`": "--steps",
    "`tile_size`": "--tile-size",
    "`tile_overlap`": "--tile-overlap",
    "`max_output_pixels`": "--max-pixels",
    "pass a larger `max_output_pixels=` to the pipeline call to allow it": "raise --max-pixels to allow it",
    "`output_size`": "--size",
    "`scale`": "--scale",
    "`strength`": "--strength",
    "`device`": "--device",
    "overwrite=True (CLI: --overwrite)": "--overwrite",
}


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when empty), with Python argument names as CLI flags.

    Args:
        err: the exception.

    Example:
        >>> one_line(ValueError("`num_inference_steps` must be >= 1\\nmore"))
        '--steps must be >= 1'
    """
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for name, flag in _FLAG_NAMES.items():
        text = text.replace(name, flag)
    return text


def os_reason(err: OSError) -> str:
    """``Permission denied`` rather than ``[Errno 13] Permission denied: '/x'`` (the caller names the file itself).

    Args:
        err: the operating-system error.
    """
    return err.strerror or one_line(err)


def check_input_file(path: Path) -> None:
    """Refuse, with one line naming ``path``, an input that is missing, a folder, unreadable, empty or not an image.

    Only the file system is consulted (no decoding, no torch).

    Args:
        path: the input.

    Raises:
        InputFailed: with the reason.
    """
    if not os.path.lexists(path):
        raise InputFailed(f"input not found: {path}")
    if path.is_dir():
        raise InputFailed(f"{path}: is a directory, not an image file")
    if not path.exists():
        raise InputFailed(f"{path}: broken symbolic link")
    if not path.is_file():
        raise InputFailed(f"{path}: not a regular file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputFailed(f"{path}: unsupported input, use PNG, JPEG or TIFF ({', '.join(IMAGE_SUFFIXES)})")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as err:
        raise InputFailed(f"{path}: cannot read it ({os_reason(err)})") from err
    if empty:
        raise InputFailed(f"{path}: empty file")


#: Characters that the temporary file of an atomic write adds to the output's name (``.<stem>.XXXXXXXX<suffix>``).
_TEMPORARY_NAME_EXTRA = 10


def check_output_name(path: Path) -> None:
    """Refuse an output whose name (or its temporary name) is longer than the file system allows (255 bytes on most).

    Args:
        path: the output file.

    Raises:
        InputFailed: naming the length and the limit.
    """
    folder = path.absolute().parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        limit = 255
    limit -= _TEMPORARY_NAME_EXTRA
    length = len(os.fsencode(path.name))
    if length > limit:
        raise InputFailed(
            f"{path.name[:40]}...{path.suffix}: the output name is {length} bytes long; this file system allows "
            f"{limit} (with the temporary name of the write): rename the input (or give a shorter -o)"
        )


def check_output_location(path: Path, overwrite: bool) -> None:
    """Refuse, with one line naming ``path``, an output that could not be written; nothing is created.

    The output must not be a folder, must not exist unless ``overwrite``, and its folder must exist as a writable
    folder or be creatable (the nearest existing folder above it is writable, no file stands where a folder is
    needed), and its name must fit the file system ([`check_output_name`]). Writability is probed by creating and
    removing a temporary file, which also catches read-only and special file systems (``/sys``, ``/proc``).

    Args:
        path: the output file.
        overwrite: whether an existing file may be replaced.

    Raises:
        InputFailed: with the reason.
    """
    check_output_name(path)
    if path.is_dir():
        raise InputFailed(f"{path}: the output is a directory; give a file name or use --out-dir")
    if os.path.lexists(path) and not overwrite:
        raise InputFailed(f"{path} exists; pass --overwrite to replace it")
    folder = path.absolute().parent
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputFailed(f"{path}: cannot create the folder {folder}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".neurop-diff-probe.", dir=existing)
    except OSError as err:
        raise InputFailed(f"{path}: cannot write in {existing} ({os_reason(err)})") from err
    os.close(handle)
    os.unlink(probe)


def save_image_atomic(image: Any, path: Path, overwrite: bool = True) -> None:
    """[`~neurop_diff_diffusers.utils.save_image_atomic`], imported when called (the CLI's imports stay light).

    Args:
        image: the PIL image.
        path: the output file.
        overwrite: whether an existing file may be replaced.
    """
    from ..utils import save_image_atomic as save

    save(image, path, overwrite=overwrite)


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Every failure to decode ``path`` as one line naming it ([`InputFailed`])."""
    from PIL import Image, UnidentifiedImageError

    from ..io.image_files import UnsupportedImageError

    try:
        yield
    except Image.DecompressionBombError as err:
        raise InputFailed(f"{path}: refused as a possible decompression bomb ({one_line(err)})") from err
    except UnidentifiedImageError as err:
        raise InputFailed(f"{path}: not an image PIL can read (PNG, JPEG or TIFF expected)") from err
    except UnsupportedImageError as err:
        raise InputFailed(one_line(err)) from err
    except OSError as err:
        if err.errno is not None:
            raise InputFailed(f"{path}: cannot read it ({os_reason(err)})") from err
        raise InputFailed(f"{path}: damaged image ({one_line(err)})") from err
    except (SyntaxError, ValueError, EOFError, struct.error, IndexError, MemoryError) as err:
        own = f"`{path}`"
        if isinstance(err, ValueError) and own in str(err):  # a check of ours (mode, range, pixels) naming the file
            raise InputFailed(one_line(err).replace(own, str(path))) from err
        raise InputFailed(f"{path}: damaged image ({one_line(err)})") from err


def read_image_file(path: Path) -> Any:
    """Open and fully decode an image file with PIL ([`~neurop_diff_diffusers.io.image_files.open_image`]: PNG, JPEG
    and TIFF decoders only, one frame, EXIF orientation applied); every failure is one line naming ``path``.

    Args:
        path: a PNG, JPEG or TIFF file.

    Returns:
        The decoded PIL image, upright (any mode; a 16-bit colour PNG shows its high bytes).

    Raises:
        InputFailed: not a PNG / JPEG / TIFF, several frames or pages, truncated / damaged, a decompression bomb,
            unreadable.
    """
    from ..io.image_files import open_image

    with _decoding(path):
        return open_image(path)


def read_image_array(path: Path, warn: bool) -> Any:
    """Decode ``path`` to the model's input and what its output keeps
    ([`~neurop_diff_diffusers.io.image_files.read_plain_image`]).

    Args:
        path: a PNG, JPEG or TIFF file.
        warn: print the decoding's warnings (e.g. an ICC profile that cannot be kept) on stderr, one line each.

    Returns:
        The [`~neurop_diff_diffusers.io.image_files.PlainImage`]: ``.rgb`` is the ``(H, W, 3)`` array the pipeline
        takes (its first field), with ``.grey``, ``.bits``, ``.alpha`` and ``.icc_profile`` for the output.

    Raises:
        InputFailed: the file cannot be decoded or is not a usable image.
    """
    from ..io.image_files import read_plain_image

    with warnings.catch_warnings(record=True) as caught, _decoding(path):
        warnings.simplefilter("always")
        image = read_plain_image(path)
    if warn:
        for warning in caught:
            print(f"neurop-diff: warning: {str(warning.message).replace(f'`{path}`', str(path))}", file=sys.stderr)
    return image


def file_identities(paths: Iterable[Path]) -> dict[tuple[int, int], Path]:
    """``(device, inode) -> path`` of the files among ``paths`` that exist (symbolic links followed).

    Args:
        paths: the files.
    """
    identities = {}
    for path in paths:
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            continue
        identities.setdefault((info.st_dev, info.st_ino), path)
    return identities


def check_not_an_input(src: Path, dst: Path, inputs: dict[tuple[int, int], Path]) -> None:
    """Refuse an output that is one of the inputs: the same name, another path to it (``./a.png``, a symbolic link, a
    hard link), or the file an input links to. Checked before any work: ``--overwrite`` would replace the input.

    Args:
        src: the input whose output ``dst`` is.
        dst: the output file.
        inputs: every input's [`file_identities`].

    Raises:
        InputFailed: naming the input.
    """
    try:
        info = os.stat(dst)
    except (OSError, ValueError):
        return
    other = inputs.get((info.st_dev, info.st_ino))
    if other is None:
        return
    if (info.st_dev, info.st_ino) in file_identities([src]):
        raise InputFailed(f"{src}: the output {dst} is this input itself (the same file); choose another output")
    raise InputFailed(f"{src}: the output {dst} is the input {other} (the same file); choose another output")


def probe_geo(path: Path) -> bool:
    """Whether a file takes the GeoTIFF path ([`~neurop_diff_diffusers.io.rasters.route_tiff`]).

    A TIFF (by name or content) whose header shows anything the plain-image path would lose: georeferencing (CRS,
    transform, GCPs, RPCs), nodata, non-8-bit or palette bands, a band layout other than grey / RGB / RGBA.
    ``False`` for other files and when GDAL cannot open a TIFF (PIL then reports why).

    Args:
        path: the input file.

    Raises:
        InputFailed: a ``.tif`` / ``.tiff`` whose content is not a TIFF (e.g. a VRT), or a georeferenced TIFF while
            rasterio is missing; one line naming ``path``.
    """
    from ..io.rasters import route_tiff

    try:
        return route_tiff(path)
    except ValueError as err:
        raise InputFailed(f"{path}: {one_line(err)}") from None
    except OSError as err:
        raise InputFailed(f"{path}: cannot read it ({os_reason(err)})") from err


def prepare_job(
    src: Path,
    dst: Path,
    scale: float | None,
    size: tuple[int, int] | None,
    max_pixels: int,
    cap_geo_output: bool = False,
) -> UpscaleJob:
    """Decode and validate one input before the model loads, and plan its output.

    Args:
        src: the input file (already accepted by [`check_input_file`]).
        dst: the output file (a ``.tif`` / ``.tiff`` for a georeferenced input).
        scale: the scale (or ``None`` with ``size``).
        size: the explicit output ``(height, width)`` (or ``None``); not smaller than the input.
        max_pixels: the largest output, in pixels (``height * width``); for a georeferenced input, the budget of
            [`~neurop_diff_diffusers.io.rasters.check_budget`] (the input from its header, e.g. 2,000 bands refused).
        cap_geo_output: also cap a georeferenced input's output (the web app's server limit); ``False`` (the CLI):
            the scene engine streams it window by window, so only the input stage is counted.

    Returns:
        The [`UpscaleJob`] for [`run_job`].

    Raises:
        InputFailed: with a one-line message naming ``src``.
    """
    from ..pipelines.image_processing import resolve_output_size

    check_not_an_input(src, dst, file_identities([src]))
    geo = probe_geo(src)
    if geo and dst.suffix.lower() not in (".tif", ".tiff"):
        raise InputFailed(f"{src} is georeferenced: its output must be a .tif/.tiff, not {dst.name}")
    if geo:  # the header only, here: the budget is checked before any pixel is read
        from ..io.rasters import check_header, inspect_raster

        try:
            header = inspect_raster(src)
            notes = check_header(header)
        except ValueError as err:
            raise InputFailed(f"{src}: {one_line(err)}") from err
        for note in notes:
            print(f"neurop-diff: warning: {src}: {note}", file=sys.stderr)
        height, width = header.height, header.width
    else:
        from ..io.image_files import output_losses

        image = read_image_array(src, warn=True)
        height, width = image.rgb.shape[:2]
        for loss in output_losses(image, dst.suffix):
            print(f"neurop-diff: warning: {src}: {loss} in {dst}", file=sys.stderr)
        del image
    if size is not None and (size[0] < height or size[1] < width):
        raise InputFailed(
            f"{src}: --size {size[0]}x{size[1]} is smaller than the input {height}x{width} (height x width); "
            "neurop-diff only upscales"
        )
    out_size = resolve_output_size((height, width), scale, size)
    if (cap_geo_output or not geo) and out_size[0] * out_size[1] > max_pixels:  # the CLI's GeoTIFF: by windows
        raise InputFailed(
            f"{src}: the output {out_size[0]}x{out_size[1]} (height x width) exceeds --max-pixels {max_pixels}; "
            "raise it"
        )
    if geo:
        from ..io.geo import check_raster
        from ..io.rasters import check_budget

        try:
            # bands x pixels x bytes of the input, from the header (e.g. 2,000 bands are refused before any read);
            # the output is not held whole: the scene engine streams it window by window (scene.py)
            check_budget(header, out_size if cap_geo_output else None, max_pixels)
            check_raster(src)  # then every block read: a damaged file fails now
        except ValueError as err:
            raise InputFailed(f"{src}: {one_line(err)}") from err
    return UpscaleJob(src, dst, geo, out_size)


def load_job_pipeline(spec: str | None, device: str) -> Any:
    """Load the pipeline that runs the jobs, with its progress bar shown (and cleared when done).

    Args:
        spec: a pipeline folder, hub id or ``preset:NAME``; ``None``: the embedded model
            (see [`~neurop_diff_diffusers.runtime.loading.load_pipeline`]).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        CLIError: the model cannot be loaded, with a one-line message.
    """
    from ..runtime.loading import load_pipeline

    try:
        pipe = load_pipeline(spec, device=device)
    except (FileNotFoundError, OSError, ValueError, TypeError) as err:
        raise CLIError(one_line(err).replace("`pipeline`", "--model")) from err
    pipe.set_progress_bar_config(disable=False, leave=False)
    return pipe


def run_job(pipe: Any, job: UpscaleJob, seed: int, overwrite: bool, pipe_kwargs: dict[str, Any]) -> None:
    """Upscale one input and commit its output (atomically; never over a file that appeared meanwhile).

    A georeferenced input is written by [`~neurop_diff_diffusers.jobs.scene.upscale_geotiff`]; a plain image by
    [`~neurop_diff_diffusers.io.image_files.write_plain_image`] (grey stays grey, alpha upscaled with nearest, 16 bits
    kept in PNG / TIFF, ICC profile copied).

    Args:
        pipe: the loaded pipeline ([`load_job_pipeline`]).
        job: the job from [`prepare_job`].
        seed: the seed of the noise (a CPU generator: the same output on any device).
        overwrite: whether an existing output may be replaced.
        pipe_kwargs: the pipeline call's other keyword arguments (``num_inference_steps``, ``strength``, ...);
            with ``num_samples`` the output is the samples' mean and their spread is written to
            [`uncertainty_path`] as a float32 one-band TIFF (for a georeferenced input: a COG georeferenced like the
            output, from the scene engine's windows, see [`~neurop_diff_diffusers.jobs.scene`]).

    Raises:
        InputFailed: the input cannot be decoded any more.
        FileExistsError: the output exists and ``overwrite`` is off.
        OSError: the output cannot be written.
        ValueError: the pipeline refuses the job, or its output holds NaN / infinite values
            ([`~neurop_diff_diffusers.pipelines.image_processing.NonFiniteOutputError`]; nothing is written).
    """
    import numpy as np
    import torch
    from PIL import Image

    from ..io.image_files import write_plain_image

    src, dst, geo, out_size = job
    generator = torch.Generator(device="cpu").manual_seed(seed)
    map_path = uncertainty_path(dst) if pipe_kwargs.get("num_samples") else None
    if map_path is not None:
        check_output_location(map_path, overwrite)
    if geo:  # with num_samples the scene engine writes the map too (both files, or neither)
        from .scene import upscale_geotiff

        with warnings.catch_warnings(record=True) as caught:  # e.g. undeclared NaN: one line each
            warnings.simplefilter("always", UserWarning)
            upscale_geotiff(
                pipe, src, dst, output_size=out_size, overwrite=overwrite, generator=generator, **pipe_kwargs
            )
        for warning in caught:
            print(f"neurop-diff: warning: {str(warning.message).replace(f'`{src}`', str(src))}", file=sys.stderr)
        return
    image = read_image_array(src, warn=False)
    output = pipe(image.rgb, output_size=out_size, generator=generator, output_type="np", **pipe_kwargs)
    if map_path is not None:  # the map first: an output is never left without the map it was asked with
        save_image_atomic(
            Image.fromarray(np.asarray(output.uncertainty[0], dtype=np.float32), mode="F"), map_path, overwrite
        )
    write_plain_image(output.images[0], image, dst, overwrite=overwrite)

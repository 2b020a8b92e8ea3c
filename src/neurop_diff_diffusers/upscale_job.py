"""One image file in, one upscaled file out: the file-level job of ``neurop-diff upscale`` and the web app.

Read and validate the input, plan the output, run the pipeline and write the result atomically; a georeferenced TIFF
takes the GeoTIFF path ([`~neurop_diff_diffusers.geo.upscale_geotiff`]) and keeps its georeferencing. Every failure
is one line naming the file ([`InputFailed`]).

Importing this module loads neither torch, diffusers, numpy nor PIL (the command line answers at once): each function
imports what it needs when called.

Example:
    >>> from pathlib import Path
    >>> output_path(Path("a/scene.png"), 2.5, None, None, Path("out")).as_posix()
    'out/scene_x2.5.png'
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

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


def _scale_tag(scale: float | None, size: tuple[int, int] | None) -> str:
    if size is not None:
        return f"{size[0]}x{size[1]}"
    return "x" + (f"{scale:g}")


def output_path(
    input_path: Path, scale: float | None, size: tuple[int, int] | None, out: Path | None, out_dir: Path | None
) -> Path:
    """Where ``upscale`` writes the result of ``input_path``: ``-o``, else ``<dir>/<stem>_x<scale><suffix>``.

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
    return folder / f"{input_path.stem}_{_scale_tag(scale, size)}{input_path.suffix}"


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


def check_output_location(path: Path, overwrite: bool) -> None:
    """Refuse, with one line naming ``path``, an output that could not be written; nothing is created.

    The output must not be a folder, must not exist unless ``overwrite``, and its folder must exist as a writable
    folder or be creatable (the nearest existing folder above it is writable, no file stands where a folder is
    needed). Writability is probed by creating and removing a temporary file, which also catches read-only and
    special file systems (``/sys``, ``/proc``).

    Args:
        path: the output file.
        overwrite: whether an existing file may be replaced.

    Raises:
        InputFailed: with the reason.
    """
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
    from .utils import save_image_atomic as save

    save(image, path, overwrite=overwrite)


def read_image_file(path: Path) -> Any:
    """Open and fully decode an image file with PIL; every failure is one line naming ``path``.

    Args:
        path: a PNG, JPEG or TIFF file.

    Returns:
        The decoded PIL image (any mode; [`pil_to_array`] validates it).

    Raises:
        InputFailed: not an image, truncated / damaged, a decompression bomb, unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except Image.DecompressionBombError as err:
        raise InputFailed(f"{path}: refused as a possible decompression bomb ({one_line(err)})") from err
    except UnidentifiedImageError as err:
        raise InputFailed(f"{path}: not an image PIL can read (PNG, JPEG or TIFF expected)") from err
    except OSError as err:
        if err.errno is not None:
            raise InputFailed(f"{path}: cannot read it ({os_reason(err)})") from err
        raise InputFailed(f"{path}: damaged image ({one_line(err)})") from err
    except (SyntaxError, ValueError, EOFError, struct.error, IndexError, MemoryError) as err:
        raise InputFailed(f"{path}: damaged image ({one_line(err)})") from err
    return image


def read_image_array(path: Path, warn: bool) -> tuple[Any, bool]:
    """Decode ``path`` to an ``(H, W, 3)`` array through the API's validation ([`pil_to_array`]).

    Args:
        path: a PNG, JPEG or TIFF file.
        warn: print the conversion's warnings (e.g. an alpha channel dropped) on stderr, one line each.

    Returns:
        ``(array, high_bit_grey)``: the array and whether the file was 16-bit greyscale.

    Raises:
        InputFailed: the file cannot be decoded or is not a usable image.
    """
    from .image_processing import HIGH_BIT_DEPTH_MODES, pil_to_array

    image = read_image_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            array = pil_to_array(image, name=str(path))
        except (ValueError, TypeError) as err:
            raise InputFailed(one_line(err).replace(f"`{path}`", str(path))) from err
    if warn:
        for warning in caught:
            print(f"neurop-diff: warning: {str(warning.message).replace(f'`{path}`', str(path))}", file=sys.stderr)
    return array, image.mode in HIGH_BIT_DEPTH_MODES


def probe_geo(path: Path) -> bool:
    """Whether a file takes the GeoTIFF path: a georeferenced TIFF that rasterio opens.

    ``False`` for other files and when rasterio cannot open it (PIL then reports why).

    Args:
        path: the input file.
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    from .geo import is_georeferenced

    try:
        return is_georeferenced(path)
    except Exception:  # rasterio / GDAL errors: not a raster rasterio can read; PIL gives the message
        return False


def prepare_job(
    src: Path, dst: Path, scale: float | None, size: tuple[int, int] | None, max_pixels: int
) -> UpscaleJob:
    """Decode and validate one input before the model loads, and plan its output.

    Args:
        src: the input file (already accepted by [`check_input_file`]).
        dst: the output file (a ``.tif`` / ``.tiff`` for a georeferenced input).
        scale: the scale (or ``None`` with ``size``).
        size: the explicit output ``(height, width)`` (or ``None``); not smaller than the input.
        max_pixels: the largest output, in pixels (``height * width``).

    Returns:
        The [`UpscaleJob`] for [`run_job`].

    Raises:
        InputFailed: with a one-line message naming ``src``.
    """
    from .image_processing import resolve_output_size

    geo = probe_geo(src)
    if geo and dst.suffix.lower() not in (".tif", ".tiff"):
        raise InputFailed(f"{src} is georeferenced: its output must be a .tif/.tiff, not {dst.name}")
    if geo:
        from .geo import check_raster

        try:
            count, height, width = check_raster(src)
        except ValueError as err:
            raise InputFailed(f"{src}: {one_line(err)}") from err
        if count == 2:
            raise InputFailed(f"{src}: has 2 bands; the model needs 1 (grey) or at least 3 (RGB)")
    else:
        array, _ = read_image_array(src, warn=True)
        height, width = array.shape[:2]
        del array
    if size is not None and (size[0] < height or size[1] < width):
        raise InputFailed(
            f"{src}: --size {size[0]}x{size[1]} is smaller than the input {height}x{width} (height x width); "
            "neurop-diff only upscales"
        )
    out_size = resolve_output_size((height, width), scale, size)
    if not geo and out_size[0] * out_size[1] > max_pixels:  # a GeoTIFF goes window by window (scene.py)
        raise InputFailed(
            f"{src}: the output {out_size[0]}x{out_size[1]} (height x width) exceeds --max-pixels {max_pixels}; "
            "raise it"
        )
    return UpscaleJob(src, dst, geo, out_size)


def load_job_pipeline(spec: str | None, device: str) -> Any:
    """Load the pipeline that runs the jobs, with its progress bar shown (and cleared when done).

    Args:
        spec: a pipeline folder, hub id or ``preset:NAME``; ``None``: the embedded model
            (see [`~neurop_diff_diffusers.loading.load_pipeline`]).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        CLIError: the model cannot be loaded, with a one-line message.
    """
    from .loading import load_pipeline

    try:
        pipe = load_pipeline(spec, device=device)
    except (FileNotFoundError, OSError, ValueError) as err:
        raise CLIError(one_line(err)) from err
    pipe.set_progress_bar_config(disable=False, leave=False)
    return pipe


def run_job(pipe: Any, job: UpscaleJob, seed: int, overwrite: bool, pipe_kwargs: dict[str, Any]) -> None:
    """Upscale one input and commit its output (atomically; never over a file that appeared meanwhile).

    A georeferenced input is written by [`~neurop_diff_diffusers.geo.upscale_geotiff`]; a 16-bit greyscale input
    written as PNG or TIFF gives a 16-bit greyscale output.

    Args:
        pipe: the loaded pipeline ([`load_job_pipeline`]).
        job: the job from [`prepare_job`].
        seed: the seed of the noise (a CPU generator: the same output on any device).
        overwrite: whether an existing output may be replaced.
        pipe_kwargs: the pipeline call's other keyword arguments (``num_inference_steps``, ``strength``, ...).

    Raises:
        InputFailed: the input cannot be decoded any more.
        FileExistsError: the output exists and ``overwrite`` is off.
        OSError: the output cannot be written.
        ValueError: the pipeline refuses the job.
    """
    import numpy as np
    import torch
    from PIL import Image

    src, dst, geo, out_size = job
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if geo:
        from .geo import upscale_geotiff

        upscale_geotiff(pipe, src, dst, output_size=out_size, overwrite=overwrite, generator=generator, **pipe_kwargs)
        return
    array, high_bit_grey = read_image_array(src, warn=False)
    sixteen_bit_out = high_bit_grey and dst.suffix.lower() in (".png", ".tif", ".tiff")
    output_type = "np" if sixteen_bit_out else "pil"
    result = pipe(array, output_size=out_size, generator=generator, output_type=output_type, **pipe_kwargs).images[0]
    del array
    if sixteen_bit_out:  # 16-bit grey in, 16-bit grey out (the mean of the model's three channels)
        result = Image.fromarray(np.rint(result.mean(axis=-1) * 65535.0).astype(np.uint16))
    save_image_atomic(result, dst, overwrite=overwrite)

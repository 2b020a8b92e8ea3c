"""One image file in, one upscaled file out: the file-level job of ``neurop-diff upscale`` and the web app.

[`plan_file`] checks the input and its outputs and plans the job with its [`JobOptions`] (the command, its batch mode
and the web app plan every file with it); [`run_job`] runs the pipeline and writes the result atomically; a
georeferenced TIFF takes the GeoTIFF path ([`~neurop_diff_diffusers.jobs.scene.upscale_geotiff`]) and keeps its
georeferencing. Every failure is one line naming the file ([`InputFailed`]).

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
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..defaults import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_SETTINGS, DEFAULT_TILE_SIZE
from ..file_safety import check_file_target, check_local_name, printable
from ..io.paths import output_path, uncertainty_path  # noqa: F401 (the job names its outputs with them)
from .messages import one_line, os_reason, print_warning  # noqa: F401 (re-exported: the command line uses them)
from .stopping import check_stop_flag, raise_if_stopped, step_callback

#: The input and output file types (PNG, JPEG, TIFF; a georeferenced TIFF is a GeoTIFF).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


class InputFailed(CLIError):
    """A problem with one input or its output: reported as one line, that input is skipped, the others go on."""


@dataclass(frozen=True)
class JobOptions:
    """How a file is upscaled: the per-file settings of ``neurop-diff upscale`` (one file or ``--input-dir``) and of
    the web app, in one object ([`plan_file`] plans with it, [`run_job`] runs with it).

    Args:
        steps: denoising steps (``--steps``).
        strength: the fraction of the steps run (``--strength``; ``None``: the model's ``default_strength``).
        seed: the seed of the noise (``--seed``; a CPU generator: the same output on any device).
        prior_only: the neural operator's prior alone, no diffusion (``--prior-only``).
        tile_size: outputs larger than this are denoised in tiles (``--tile-size``).
        tile_overlap: the tiles' overlap in pixels (``--tile-overlap``; ``None``: the pipeline's default).
        max_pixels: the largest output in pixels (``--max-pixels``); for a GeoTIFF the input's budget (see
            [`prepare_job`]).
        num_samples: ``--uncertainty N``: the output is the mean of ``N`` samples and their spread is written to
            [`uncertainty_path`] (``None``: off).
        data_consistency_steps: ``--data-consistency N`` (``None``: the model's default).
        window: a GeoTIFF's windows, LR pixels of a core's side (``--window``; the scene engine's ``DEFAULT_WINDOW``).
        halo: LR pixels of context around each window (``--halo``; the scene engine's ``DEFAULT_HALO``).
        value_range: a GeoTIFF's values to the model's range (``--value-range``: ``minmax``, ``LOW,HIGH`` or
            ``pLOW,pHIGH``).
        clip: write values outside the value range clipped to it (``--clip``); by default the model sees them
            clipped and their part outside the range is upscaled bicubically and added back.
        workers: a GeoTIFF's windows computed at once on the CPU (``--workers``; ``None``: one per thread); the
            output does not depend on it.
        restart: discard the saved windows of an interrupted GeoTIFF run with other settings (``--restart``).

    Example:
        >>> options = JobOptions(steps=20, num_samples=4)
        >>> options.pipe_kwargs()["num_inference_steps"], options.pipe_kwargs()["num_samples"]
        (20, 4)
        >>> options.scene_kwargs()["window"]
        256
    """

    steps: int = int(DEFAULT_SETTINGS["steps"])  # the fast preset's
    strength: float | None = None
    seed: int = 0
    prior_only: bool = False
    tile_size: int = DEFAULT_TILE_SIZE
    tile_overlap: int | None = None
    max_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    num_samples: int | None = None
    data_consistency_steps: int | None = None
    window: int = 256
    halo: int = 16
    value_range: str = "minmax"
    clip: bool = False
    workers: int | None = None
    restart: bool = False

    def pipe_kwargs(self) -> dict[str, Any]:
        """The pipeline call's keyword arguments (``num_samples`` and ``data_consistency_steps`` only when set)."""
        return {
            "num_inference_steps": self.steps,
            "strength": self.strength,
            "prior_only": self.prior_only,
            "tile_size": self.tile_size,
            "tile_overlap": self.tile_overlap,
            "max_output_pixels": self.max_pixels,
            **({"num_samples": self.num_samples} if self.num_samples is not None else {}),
            **(
                {"data_consistency_steps": self.data_consistency_steps}
                if self.data_consistency_steps is not None
                else {}
            ),
        }

    def scene_kwargs(self) -> dict[str, Any]:
        """The scene engine's options of a GeoTIFF ([`~neurop_diff_diffusers.jobs.scene.upscale_scene`])."""
        return {
            "window": self.window,
            "halo": self.halo,
            "value_range": self.value_range,
            "clip": self.clip,
            "restart": self.restart,
            "workers": self.workers,
        }


class UpscaleJob(NamedTuple):
    """One input decoded and validated by [`prepare_job`], its output's size planned.

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

    The output must be a local name (no ``/vsi`` prefix, URL or ``DRIVER:`` form), must not be a folder, must not
    exist unless ``overwrite`` and then be a regular file (never a link, device or FIFO), and its folder must exist as
    a writable folder or be creatable (the nearest existing folder above it is writable, no file stands where a folder
    is needed), and its name must fit the file system ([`check_output_name`]). Writability is probed by creating and
    removing a temporary file, which also catches read-only and special file systems (``/sys``, ``/proc``).

    Args:
        path: the output file.
        overwrite: whether an existing file may be replaced.

    Raises:
        InputFailed: with the reason.
    """
    try:
        check_local_name(path, "output")  # /vsimem/o.tif would be written into GDAL's memory, not a file
    except ValueError as err:
        raise InputFailed(str(err)) from None
    check_output_name(path)
    if path.is_dir():
        raise InputFailed(f"{path}: the output is a directory; give a file name or use --out-dir")
    if os.path.lexists(path) and not overwrite:
        raise InputFailed(f"{path} exists; pass --overwrite to replace it")
    try:
        check_file_target(path, "output")  # a link, device or FIFO is never replaced, even with --overwrite
    except ValueError as err:
        raise InputFailed(str(err)) from None
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
            print_warning(str(warning.message).replace(f"`{path}`", str(path)))
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
    """Decode and validate one input before the model loads, and plan its output's size (the step of [`plan_file`]
    that reads the input).

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
        The [`UpscaleJob`].

    Raises:
        InputFailed: with a one-line message naming ``src``.
    """
    geo, out_size, _ = _plan_output(src, dst, scale, size, max_pixels, cap_geo_output)
    return UpscaleJob(src, dst, geo, out_size)


def geotiff_header(src: Path) -> Any:
    """The scene engine's plan of a georeferenced input, its header read and checked once: the one place where a
    file job inspects a GeoTIFF (its checks and warnings included).

    Args:
        src: the input (a TIFF that takes the GeoTIFF path, see [`probe_geo`]).

    Returns:
        The [`~neurop_diff_diffusers.jobs.scene.RasterPlan`] (its ``header``; no pixel read yet).

    Raises:
        InputFailed: a header that the reader refuses, one line naming ``src``.
    """
    from .scene import plan_raster

    try:
        raster = plan_raster(src)
    except ValueError as err:
        raise InputFailed(f"{src}: {one_line(err)}") from err
    for note in raster.notes:
        print_warning(f"{src}: {note}")
    return raster


def _plan_output(
    src: Path,
    dst: Path,
    scale: float | None,
    size: tuple[int, int] | None,
    max_pixels: int,
    cap_geo_output: bool,
    value_range: str = "minmax",
) -> tuple[bool, tuple[int, int], Any]:
    """[`prepare_job`]'s work: ``(geo, out_size, raster)`` (``raster``: a GeoTIFF's scanned
    [`~neurop_diff_diffusers.jobs.scene.RasterPlan`], else ``None``)."""
    from ..pipelines.image_processing import resolve_output_size

    check_not_an_input(src, dst, file_identities([src]))
    geo = probe_geo(src)
    if geo and dst.suffix.lower() not in (".tif", ".tiff"):
        raise InputFailed(f"{src} is georeferenced: its output must be a .tif/.tiff, not {dst.name}")
    raster = None
    if geo:  # the header only, here: the budget is checked before any pixel is read
        raster = geotiff_header(src)
        height, width = raster.header.height, raster.header.width
    else:
        from ..io.image_files import output_losses

        image = read_image_array(src, warn=True)
        height, width = image.rgb.shape[:2]
        for loss in output_losses(image, dst.suffix):
            print_warning(f"{src}: {loss} in {dst}")
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
        from ..io.rasters import check_budget
        from .scene import parse_value_range

        try:
            # bands x pixels x bytes of the input, from the header (e.g. 2,000 bands are refused before any read);
            # the output is not held whole: the scene engine streams it window by window
            check_budget(raster.header, out_size if cap_geo_output else None, max_pixels)
            # then the statistics pass, which is also the damage scan: every block read once, now (a damaged file
            # fails before the model loads), and the engine reuses the statistics instead of reading it again
            raster = raster.scan(parse_value_range(value_range))
        except ValueError as err:
            raise InputFailed(f"{src}: {one_line(err).replace('`value_range`', '--value-range')}") from err
    return geo, out_size, raster


@dataclass(frozen=True)
class FileJob:
    """One file planned by [`plan_file`]: its input checked and decoded, its outputs checked, its options; ready for
    [`run_job`].

    Args:
        src: the input file.
        dst: the output file.
        geo: whether the input takes the GeoTIFF path.
        out_size: the output's ``(height, width)``.
        options: the [`JobOptions`].
        uncertainty: the uncertainty map's file (with ``options.num_samples``), else ``None``.
        raster: a GeoTIFF's plan ([`geotiff_header`]: its header checked and its statistics scanned once, which
            the scene engine reuses), else ``None``.
    """

    src: Path
    dst: Path
    geo: bool
    out_size: tuple[int, int]
    options: JobOptions
    uncertainty: Path | None = None
    raster: Any = None

    @property
    def outputs(self) -> list[Path]:
        """The files the job writes: the output, and the uncertainty map when asked for."""
        return [self.dst] if self.uncertainty is None else [self.dst, self.uncertainty]


def plan_file(
    src: Path,
    dst: Path,
    scale: float | None,
    size: tuple[int, int] | None,
    options: JobOptions,
    overwrite: bool = False,
    inputs: dict[tuple[int, int], Path] | None = None,
    claimed: dict[Path, Path] | None = None,
    cap_geo_output: bool = False,
) -> FileJob:
    """Check and plan one file before the model loads: the one plan of ``neurop-diff upscale``, its ``--input-dir``
    mode and the web app.

    In order: the input ([`check_input_file`]); each output (``dst``, and its [`uncertainty_path`] with
    ``options.num_samples``) is not an input ([`check_not_an_input`]), can be written ([`check_output_location`]),
    is a PNG / JPEG / TIFF file and is no other input's output (``claimed``); then the input is decoded, or a
    GeoTIFF's header read once ([`geotiff_header`]), and the output's size planned ([`prepare_job`]).

    Args:
        src: the input file.
        dst: its output file.
        scale: the scale (or ``None`` with ``size``).
        size: the explicit output ``(height, width)`` (or ``None``).
        options: the job's [`JobOptions`] (``max_pixels`` bounds the output).
        overwrite: whether existing outputs may be replaced (a batch that owns its folder passes ``True``).
        inputs: every input's [`file_identities`] (default: ``src``'s): no output may be one of them.
        claimed: the outputs planned so far (resolved path -> its input), updated with this job's: two inputs
            never write one file.
        cap_geo_output: also cap a GeoTIFF's output at ``options.max_pixels`` (the web app), see [`prepare_job`].

    Returns:
        The [`FileJob`].

    Raises:
        InputFailed: one line naming the file; nothing is written.

    Example:
        >>> from pathlib import Path
        >>> plan_file(Path("missing.png"), Path("out.png"), 2.0, None, JobOptions())
        Traceback (most recent call last):
        ...
        neurop_diff_diffusers.jobs.upscale_file.InputFailed: input not found: missing.png
    """
    check_input_file(src)
    spread = None if options.num_samples is None else uncertainty_path(dst)
    written = [dst] if spread is None else [dst, spread]
    identities = file_identities([src]) if inputs is None else inputs
    for path in written:
        check_not_an_input(src, path, identities)
        check_output_location(path, overwrite)
    if dst.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputFailed(f"unsupported output {dst}: use PNG, JPEG or TIFF ({', '.join(IMAGE_SUFFIXES)})")
    if claimed is not None:
        keys = [path.absolute().resolve() for path in written]
        for path, key in zip(written, keys):
            if key in claimed:
                raise InputFailed(f"{src}: its output {path} is also an output of {claimed[key]}")
        claimed.update((key, src) for key in keys)
    geo, out_size, raster = _plan_output(
        src, dst, scale, size, options.max_pixels, cap_geo_output, options.value_range
    )
    return FileJob(src, dst, geo, out_size, options, spread, raster)


def describe_job(pipe: Any, job: FileJob) -> str:
    """``--dry-run``'s report of one job (nothing is written): a GeoTIFF's window plan, memory and time (estimated
    from one denoising step per worker, [`~neurop_diff_diffusers.jobs.scene.dry_run`]), or one line for a plain
    image.

    Args:
        pipe: the loaded pipeline.
        job: the [`FileJob`].
    """
    height, width = job.out_size
    if not job.geo:
        spread = "" if job.uncertainty is None else f"; uncertainty map {job.uncertainty}"
        names = f"{printable(job.src)} -> {printable(job.dst)}"
        return f"{names} ({height}x{width}, height x width): one image, no windows{spread}"
    from .scene import dry_run, prepare_scene

    options = job.options
    scene_job = prepare_scene(
        job.raster if job.raster is not None else job.src,
        job.dst,
        output_size=job.out_size,
        window=options.window,
        halo=options.halo,
        value_range=options.value_range,
        clip=options.clip,
        seed=options.seed,
        **options.pipe_kwargs(),
    )
    return f"{printable(job.src)} -> {printable(job.dst)}\n{dry_run(pipe, scene_job, workers=options.workers)['text']}"


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


def run_job(
    pipe: Any,
    job: FileJob,
    overwrite: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    distributed: bool = False,
    stop: Any = None,
) -> None:
    """Upscale one planned file and commit its output (atomically; never over a file that appeared meanwhile).

    A georeferenced input is written by [`~neurop_diff_diffusers.jobs.scene.upscale_geotiff`] with the options'
    windows, halo, value range and workers; a plain image by
    [`~neurop_diff_diffusers.io.image_files.write_plain_image`] (grey stays grey, alpha upscaled with nearest, 16 bits
    kept in PNG / TIFF, ICC profile copied). With ``num_samples`` the output is the samples' mean and their spread is
    written to the job's uncertainty map, a float32 one-band TIFF (for a georeferenced input: a COG georeferenced like
    the output, from the scene engine's windows, see [`~neurop_diff_diffusers.jobs.scene`]), before the output.

    Args:
        pipe: the loaded pipeline ([`load_job_pipeline`]).
        job: the [`FileJob`] from [`plan_file`].
        overwrite: whether an existing output may be replaced.
        progress: a GeoTIFF's progress bar over its denoising steps, windows x steps (see
            [`~neurop_diff_diffusers.jobs.scene.run_scene`]).
        distributed: split a GeoTIFF's windows between ``accelerate launch`` processes (every process makes the
            same call); ``False``: this process does the whole file.
        stop: a stop flag (``is_set()``, e.g. ``threading.Event``) checked after every denoising step: once set the
            job ends within the step in flight and raises [`~neurop_diff_diffusers.jobs.stopping.RunStopped`],
            writing no output (a GeoTIFF's finished windows stay in its work folder: the same job resumes).

    Raises:
        InputFailed: the input cannot be decoded any more.
        FileExistsError: the output exists and ``overwrite`` is off.
        OSError: the output cannot be written.
        ValueError: the pipeline refuses the job, or its output holds NaN / infinite values
            ([`~neurop_diff_diffusers.pipelines.image_processing.NonFiniteOutputError`]; nothing is written).
        RunStopped: ``stop`` was set.
    """
    import numpy as np
    import torch

    from ..io.image_files import write_plain_image

    src, dst, map_path = job.src, job.dst, job.uncertainty
    generator = torch.Generator(device="cpu").manual_seed(job.options.seed)
    pipe_kwargs = job.options.pipe_kwargs()
    if map_path is not None:
        check_output_location(map_path, overwrite)
    if job.geo:  # with num_samples the scene engine writes the map too (both files, or neither)
        from .scene import upscale_geotiff

        with warnings.catch_warnings(record=True) as caught:  # e.g. undeclared NaN: one line each
            warnings.simplefilter("always", UserWarning)
            upscale_geotiff(
                pipe,
                job.raster if job.raster is not None else src,
                dst,
                output_size=job.out_size,
                overwrite=overwrite,
                generator=generator,
                progress=progress,
                distributed=distributed,
                stop=check_stop_flag(stop),
                **job.options.scene_kwargs(),
                **pipe_kwargs,
            )
        for warning in caught:
            print_warning(str(warning.message).replace(f"`{src}`", str(src)))
        return
    raise_if_stopped(check_stop_flag(stop))
    image = read_image_array(src, warn=False)
    if stop is not None and not job.options.prior_only:
        pipe_kwargs["callback_on_step_end"] = step_callback(stop)
    output = pipe(image.rgb, output_size=job.out_size, generator=generator, output_type="np", **pipe_kwargs)
    if map_path is None:
        write_plain_image(output.images[0], image, dst, overwrite=overwrite)
        return
    # the map first: an output is never left without the map it was asked with; and if the output then cannot be
    # written (a full disk, a file that appeared meanwhile), the map just written is removed: never a map alone
    spread = np.asarray(output.uncertainty[0], dtype=np.float32)
    _save_map(pipe, spread, image.rgb.shape[0], job, map_path, overwrite)
    written = os.lstat(map_path)
    try:
        write_plain_image(output.images[0], image, dst, overwrite=overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            current = os.lstat(map_path)
            if (current.st_dev, current.st_ino) == (written.st_dev, written.st_ino):  # ours, not a newcomer
                os.unlink(map_path)
        raise


def _save_map(pipe: Any, spread: Any, input_height: int, job: FileJob, path: Path, overwrite: bool) -> None:
    """A plain image's uncertainty map: a float32 one-band TIFF whose description (TIFF tag 270) holds the map's tags
    as JSON (its samples, what the spread is, the calibrated 90 % error-bound factor where it applies), as a GeoTIFF's
    map carries them as GDAL tags."""
    import json

    from PIL import Image, TiffImagePlugin

    from ..pipelines.uncertainty_calibration import call_error_bound, uncertainty_tags
    from ..utils import atomic_write

    samples = job.options.num_samples
    factor = call_error_bound(getattr(pipe, "config", {}), samples, job.out_size[0] / input_height, job.options.steps)
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[270] = json.dumps(uncertainty_tags(samples, factor))
    image = Image.fromarray(spread, mode="F")
    atomic_write(path, lambda temp: image.save(temp, format="TIFF", tiffinfo=info), overwrite, what="uncertainty map")

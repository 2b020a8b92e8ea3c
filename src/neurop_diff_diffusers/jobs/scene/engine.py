"""The scene engine: a scene prepared (header, plan, statistics), its windows computed (split between ``accelerate
launch`` processes), assembled and committed, or stopped; [`upscale_geotiff`], the GeoTIFF entry point.

See the package docstring ([`~neurop_diff_diffusers.jobs.scene`]) for what a run does.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from ...file_safety import check_file_target, gdal_path
from ...io.geo import require_rasterio
from ...io.paths import uncertainty_path
from ...pipelines.image_processing import resolve_output_size
from ...pipelines.uncertainty_calibration import call_error_bound
from .cog import assemble_and_commit
from .job import SceneJob
from .journal import done_windows, hold_work_folder, open_journal, scene_settings, work_folder
from .options import SceneOptions
from .plan import RasterPlan, ScenePlan, plan_raster
from .workers import compute_windows, on_cpu, window_steps


def _model_bands(count: int, rgb_bands: tuple[int, ...], src_path: Any) -> list[int]:
    if count == 1:
        return [0, 0, 0]
    if count >= 3:
        if not all(1 <= b <= count for b in rgb_bands):  # ints >= 1, three of them: SceneOptions
            raise ValueError(f"`rgb_bands` must be three band numbers in [1, {count}], got {rgb_bands!r}.")
        return [b - 1 for b in rgb_bands]
    raise ValueError(f"`{src_path}` has {count} bands: the model needs 1 (grey) or at least 3 (RGB).")


#: The fields of [`SceneOptions`] that [`run_scene`] reads.
_RUN_FIELDS = ("restart", "workers", "progress", "distributed", "stop")


def prepare_scene(
    src_path: str | os.PathLike | RasterPlan,
    dst_path: str | os.PathLike,
    scale: float | None = None,
    output_size: tuple[int, int] | None = None,
    *,
    options: SceneOptions | None = None,
    **kwargs: Any,
) -> SceneJob:
    """Check a scene and plan its windows (one statistics pass over the input; nothing is written).

    Args:
        src_path (`str | os.PathLike | RasterPlan`): the input GeoTIFF, or its [`plan_raster`] (its header then is
            not read again, nor its statistics when [`RasterPlan.scan`] did them for the same value range).
        dst_path (`str | os.PathLike`): the output (``.tif`` / ``.tiff``).
        scale (`float | None`, *optional*): the upscaling factor (exactly one of ``scale`` / ``output_size``).
        output_size (`tuple[int, int] | None`, *optional*): ``(height, width)`` of the output.
        options (`SceneOptions | None`, *optional*): how the scene is run (window, halo, value range, seed, bands,
            samples, pipeline arguments, ...).
        kwargs (`Any`): instead of (or on top of) ``options``: its fields and the pipeline call's other keyword
            arguments ([`SceneOptions.from_kwargs`]), e.g. ``window=128, value_range="p2,p98", num_samples=4``.

    Raises:
        ValueError: a bad argument or input, before any work.
    """
    options = _scene_options(options, kwargs)
    src = src_path.path if isinstance(src_path, RasterPlan) else Path(src_path)
    check_file_target(dst_path, "output")  # as given: `./GTIFF_DIR:1:x.tif` is a local name, `/vsimem/o.tif` not
    dst = Path(dst_path)
    if dst.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"A georeferenced output must be a .tif/.tiff file, got `{dst}`.")
    if options.num_samples is not None:
        check_file_target(gdal_path(uncertainty_path(dst)), "uncertainty map")  # named after the output
        if _same_file(uncertainty_path(dst), src):
            raise ValueError(f"The uncertainty map `{uncertainty_path(dst)}` would replace the input `{src}`.")
    raster = plan_raster(src_path)  # read and checked here unless the caller did: one line, from the header
    header = raster.header
    model_bands = _model_bands(header.working_bands, options.rgb_bands, src)  # a palette is read as RGB
    out_size = resolve_output_size((header.height, header.width), scale, output_size)
    plan = ScenePlan.create((header.height, header.width), out_size, options.window, options.halo)
    stats = raster.statistics(options.value_range)  # every block read once: the damage scan too
    if stats.nonfinite:
        warnings.warn(
            f"`{src}` has {stats.nonfinite} NaN or infinite band values that no nodata value marks; they are "
            "treated as nodata (masked in the output).",
            UserWarning,
            stacklevel=2,
        )
    return SceneJob(src, dst, plan, stats, model_bands, options, work_folder(dst), header)


def _scene_options(options: SceneOptions | None, kwargs: dict[str, Any]) -> SceneOptions:
    """``options`` with ``kwargs`` on top, or the options ``kwargs`` describe."""
    if options is None:
        return SceneOptions.from_kwargs(**kwargs)
    if not isinstance(options, SceneOptions):
        raise TypeError(f"`options` must be a SceneOptions or None, got {type(options).__name__}.")
    return options.updated(**kwargs) if kwargs else options


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _clip_warning(job: SceneJob) -> None:
    clipped = sum(job.stats.clipped)
    if clipped:
        total = sum(job.stats.valid)
        per_band = ", ".join(f"band {b + 1}: {c}" for b, c in enumerate(job.stats.clipped) if c)
        warnings.warn(
            f"`value_range` {job.value_range}: {clipped} of {total} valid input values "
            f"({100 * clipped / total:.2f} %) "
            f"lie outside the stretch ({per_band}): "
            + (
                "they were clipped (clip=True)."
                if job.options.clip
                else "the model saw them clipped; their part outside it was upscaled bicubically and added back."
            ),
            UserWarning,
            stacklevel=3,
        )


def _process_state(cpu: bool) -> Any:
    """Accelerate's process state when several processes run (``None`` for one process, without Accelerate)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return state if state.num_processes > 1 else None


def tqdm_progress(total: int, done: int) -> Any:
    """A tqdm progress bar over the scene's denoising steps (windows x steps per window) with an ETA from the first
    finished steps (the CLI's and the web app's): pass as ``progress`` to [`upscale_scene`].

    Args:
        total (`int`): the scene's steps.
        done (`int`): the steps of the windows already saved (a resumed run).
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="denoising steps", unit="step", dynamic_ncols=True, smoothing=0.1)


def run_scene(pipe: Any, job: SceneJob, overwrite: bool = False, **options: Any) -> Path:
    """Compute the windows of ``job`` (this process's share), then (main process) assemble and commit the COG (and
    the uncertainty map's, with ``num_samples``).

    Args:
        pipe (`Any`): the pipeline.
        job (`SceneJob`): from [`prepare_scene`]; its [`SceneOptions`] say how: ``restart`` (discard a journal of
            other settings instead of refusing), ``workers`` (see [`compute_windows`]), ``progress``
            (``progress(total, done)`` is called once on the main process, in denoising steps: windows x
            [`window_steps`]; it returns an object with ``update(n)``, steps just done, and ``close()``, e.g.
            [`tqdm_progress`]), ``distributed`` (under ``accelerate launch``, split the windows between the
            processes, every process making the same call; ``False``: this process does every window) and ``stop``
            (a stop flag checked after every denoising step).
        overwrite (`bool`, defaults to `False`): replace an existing output (atomically).
        options (`Any`): fields of the job's options to replace for this run (e.g. ``restart=True``, ``workers=2``).

    Returns:
        `Path`: the output.

    Raises:
        RunStopped: the ``stop`` flag was set: the finished windows stay in the work folder (the same call resumes
            from them), no output is written.
    """
    if options:
        job = dataclasses.replace(job, options=dataclasses.replace(job.options, **options))
    with hold_work_folder(job, _main_process(job.options.distributed)):  # claimed and locked for the whole run
        return _run_scene(pipe, job, overwrite)


def _error_bound(pipe: Any, job: SceneJob) -> float | None:
    """The model's calibrated 90 % error-bound factor for this run's uncertainty map, where it applies."""
    if job.num_samples is None:
        return None
    scale = job.plan.out_size[0] / job.plan.size[0]
    steps = int(job.pipe_kwargs.get("num_inference_steps") or 50)
    return call_error_bound(getattr(pipe, "config", {}), job.num_samples, scale, steps)


def _main_process(distributed: bool) -> bool:
    """Whether this process holds the work folder: the only one, or the main one of a distributed run."""
    return not distributed or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0"


def _run_scene(pipe: Any, job: SceneJob, overwrite: bool) -> Path:
    """[`run_scene`] once the work folder is held."""
    restart, workers, progress, distributed, stop = (getattr(job.options, k) for k in _RUN_FIELDS)
    state = _process_state(on_cpu(pipe)) if distributed else None
    is_main = state is None or state.is_main_process
    barrier = state.wait_for_everyone if state is not None else (lambda: None)
    dst = job.dst_path
    for path in (dst, job.uncertainty_path):
        if path is not None and os.path.lexists(path) and not overwrite:
            raise FileExistsError(f"`{path}` exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    settings = scene_settings(
        pipe, job.src_path, job.plan, job.seed, job.value_range, job.model_bands, job.pipe_kwargs, job.options.clip
    )
    open_journal(job, settings, restart, is_main, barrier)
    windows = job.plan.windows()
    pending = sorted(set(range(len(windows))) - done_windows(job.folder, windows))
    if state is not None:
        with state.split_between_processes(pending) as share:
            mine = list(share)
    else:
        mine = pending
    steps = window_steps(pipe, job)
    bar = None
    if progress is not None and is_main:
        bar = progress(len(windows) * steps, (len(windows) - len(pending)) * steps)
    update = None if bar is None else bar.update
    if update is not None and state is not None:  # the main process counts its share times the processes
        update = lambda n: bar.update(min(n * state.num_processes, bar.total - bar.n))  # noqa: E731
    try:
        compute_windows(pipe, job, mine, workers=workers, progress=update, stop=stop)
    except BaseException:
        if is_main and not done_windows(job.folder, windows):  # nothing to resume from: leave nothing behind
            shutil.rmtree(job.folder, ignore_errors=True)
        raise
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    barrier()
    if is_main:
        missing = sorted(set(range(len(windows))) - done_windows(job.folder, windows))
        if missing:
            raise RuntimeError(f"windows {missing[:10]} of `{dst}` were not computed; rerun the same command")
        _clip_warning(job)
        try:
            assemble_and_commit(job, overwrite, _error_bound(pipe, job))
        except FileExistsError:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        shutil.rmtree(job.folder, ignore_errors=True)
    barrier()
    return dst


def upscale_scene(
    pipe: Any,
    src_path: str | os.PathLike | RasterPlan,
    dst_path: str | os.PathLike,
    scale: float | None = None,
    output_size: tuple[int, int] | None = None,
    *,
    overwrite: bool = False,
    options: SceneOptions | None = None,
    **kwargs: Any,
) -> Path:
    """Upscale a GeoTIFF window by window (see the package docstring): out of core, resumable, parallel, COG out.

    Args:
        pipe (`Any`): a [`NeurOpDiffPipeline`] (or any callable with its signature and ``output_type="pt"``).
        src_path (`str | os.PathLike | RasterPlan`): the input GeoTIFF, or its [`plan_raster`] (header read and
            checked once, by the caller).
        dst_path (`str | os.PathLike`): the output COG (``.tif`` / ``.tiff``; written atomically).
        scale (`float | None`, *optional*): the upscaling factor (exactly one of ``scale`` / ``output_size``).
        output_size (`tuple[int, int] | None`, *optional*): ``(height, width)`` of the output.
        overwrite (`bool`, defaults to `False`): replace an existing output.
        options (`SceneOptions | None`, *optional*): how the scene is run, checked once.
        kwargs (`Any`): instead of (or on top of) ``options``, its fields by name: ``rgb_bands`` (default
            ``(1, 2, 3)``), ``window`` (``DEFAULT_WINDOW``), ``halo`` (``DEFAULT_HALO``), ``value_range``
            (``"minmax"``, ``"0,10000"`` or ``"p2,p98"``), ``seed`` (``None``: the ``generator``'s initial seed if
            one is given, else 0), ``restart``, ``workers``, ``progress`` (see [`run_scene`]), ``distributed``,
            ``stop`` (a flag checked after every denoising step); and the pipeline call's other keyword arguments.
            With ``num_samples=N`` (2 to 64) each window is the mean of ``N`` samples and their spread is written
            beside the output as [`uncertainty_path`] (``<output stem>.uncertainty.tif``: float32, one band,
            georeferenced like the output, on the model's ``[0, 1]`` scale, i.e. the value range mapped to 0..1; see
            the package docstring).

    Example:
        >>> from neurop_diff_diffusers import build_pipeline
        >>> pipe = build_pipeline("tiny")
        >>> upscale_scene(pipe, "scene.tif", "scene_x2.tif", scale=2, prior_only=True)  # doctest: +SKIP
        >>> upscale_scene(pipe, "scene.tif", "scene_x4.tif", scale=4, num_samples=4)  # doctest: +SKIP
        >>> fast = SceneOptions(window=512, workers=4, pipe_kwargs={"num_inference_steps": 10})
        >>> upscale_scene(pipe, "scene.tif", "scene_x3.tif", scale=3, options=fast)  # doctest: +SKIP
    """
    options = _scene_options(options, kwargs)
    dst = Path(dst_path)
    for path in (dst, uncertainty_path(dst) if options.num_samples is not None else None):
        if path is not None and os.path.lexists(path) and not overwrite:
            raise FileExistsError(f"`{path}` exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    job = prepare_scene(src_path, dst_path, scale, output_size, options=options)  # the name as given
    return run_scene(pipe, job, overwrite=overwrite)


def upscale_geotiff(
    pipe: Any,
    src_path: str | os.PathLike | RasterPlan,
    dst_path: str | os.PathLike,
    scale: float | None = None,
    output_size: tuple[int, int] | None = None,
    rgb_bands: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """Upscale a GeoTIFF with a NeurOp-Diff pipeline, keeping CRS, origin, nodata, band count and dtype.

    Args:
        pipe (`Any`): a [`NeurOpDiffPipeline`].
        src_path (`str | os.PathLike | RasterPlan`): the input raster, or its [`plan_raster`].
        dst_path (`str | os.PathLike`): the output GeoTIFF (written atomically).
        scale (`float | None`, *optional*): the upscaling factor (exactly one of ``scale`` / ``output_size``).
        output_size (`tuple[int, int] | None`, *optional*): ``(height, width)`` of the output.
        rgb_bands (`tuple[int, int, int] | None`, *optional*): the 1-based bands that go through the model (others
            are upscaled bicubically); ``None``: ``(1, 2, 3)``, or those of ``options``.
        overwrite (`bool`, defaults to `False`): replace an existing ``dst_path`` (atomically); without it an existing
            file, or one that appears while the scene is being upscaled, is never replaced (``FileExistsError``).
        kwargs (`Any`): passed to the pipeline (``num_inference_steps``, ``generator``, ``tile_size``,
            ``prior_only``...) and the scene engine (``options``, ``window``, ``halo``, ``value_range``, ...: see
            [`~neurop_diff_diffusers.jobs.scene.upscale_scene`]); ``num_samples=N`` writes the mean of ``N`` samples
            and their uncertainty map ``<output stem>.uncertainty.tif`` (float32, one band, georeferenced like the
            output, on the model's ``[0, 1]`` scale: the value range mapped to 0..1).

    Example:
        >>> from neurop_diff_diffusers import build_pipeline
        >>> upscale_geotiff(build_pipeline("tiny"), "scene.tif", "scene_x2.5.tif", scale=2.5)  # doctest: +SKIP
    """
    require_rasterio()
    from rasterio.errors import NotGeoreferencedWarning

    if rgb_bands is not None:
        kwargs["rgb_bands"] = rgb_bands
    with warnings.catch_warnings():  # a plain (non-georeferenced) 16-bit TIFF is fine: no warning about it
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return upscale_scene(pipe, src_path, dst_path, scale, output_size, overwrite=overwrite, **kwargs)

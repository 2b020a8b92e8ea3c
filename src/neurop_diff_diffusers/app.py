"""The web app (Gradio, extra ``[app]``): upscale an image in the browser with the CLI's own code
([`~neurop_diff_diffusers.jobs.upscale_file`]).

``neurop-diff serve`` runs it on 127.0.0.1:7860; ``app.py`` at the repository root runs it as a Hugging Face Space.
An upload is validated (type, size from the header, full decode) before any model work, with the CLI's checks; a
bad one gives one message in the page and the server goes on. With 2 to 8 uncertainty samples the output is their
mean (``upscale --uncertainty N``) and the page overlays the per-pixel uncertainty map as a heat-map
([`~neurop_diff_diffusers.io.heatmap`]), switched on and off without running the model again. Every request works in
its
own folder under one temporary folder, which the app removes when it closes (and Gradio's cache of the results lives
there too).

Example:
    >>> from neurop_diff_diffusers.app import AppConfig, build_app
    >>> demo = build_app(AppConfig(model="preset:tiny"))  # doctest: +SKIP
    >>> demo.launch()  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_SETTINGS, DTYPE_CHOICES, SCHEDULER_CHOICES
from .jobs.stopping import RunStopped
from .jobs.upscale_file import (
    IMAGE_SUFFIXES,
    InputFailed,
    JobOptions,
    check_input_file,
    load_job_pipeline,
    one_line,
    plan_file,
    probe_geo,
    read_image_array,
    read_image_file,
    run_job,
)
from .pipelines.scheduling import make_scheduler, scheduler_name
from .runtime.optimization import optimize_pipeline

#: Largest input the app decodes, in pixels (height x width), unless configured otherwise.
DEFAULT_MAX_INPUT_PIXELS = 1024 * 1024
#: Largest output the app computes, in pixels (the pipeline's pixel budget), unless configured otherwise.
DEFAULT_MAX_OUTPUT_PIXELS = 2048 * 2048
#: Largest upload accepted by the server, in bytes.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: Seconds a request's files are kept (for the downloads); older ones are removed when a new request comes.
REQUEST_LIFETIME = 3600
#: The scale range offered by the page.
MIN_SCALE, MAX_SCALE = 1.0, 10.0
#: Most uncertainty samples a request may ask for (each costs one more denoising of the whole output).
MAX_APP_SAMPLES = 8
#: The heat-map's opacity over the output when the page opens.
DEFAULT_OVERLAY_ALPHA = 0.6


@dataclass
class AppConfig:
    """What ``neurop-diff serve`` configures.

    Args:
        model: a pipeline folder, hub id or ``preset:NAME``; ``None``: the embedded model.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        max_input_pixels: larger uploads are refused (read from the header, before decoding).
        max_output_pixels: larger outputs are refused before any work (the pipeline's ``max_output_pixels``).
        concurrency: requests computed at the same time; the others wait in the queue.
        max_queue: requests waiting at most (more are refused with a message).
        default_steps: the steps the page starts with (the fast preset's; the paper's recipe takes 50).
        dtype: the UNet's precision, ``auto`` (default: the fastest computed natively on the device), ``float32``
            (the paper's), ``bfloat16`` (CPUs with bfloat16 units, GPUs) or ``float16`` (GPUs); see
            [`~neurop_diff_diffusers.runtime.optimization.optimize_pipeline`].
        channels_last: the UNet's weights in channels-last memory (default: faster convolutions).
    """

    model: str | None = None
    device: str = "cpu"
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    concurrency: int = 1
    max_queue: int = 16
    default_steps: int = int(DEFAULT_SETTINGS["steps"])  # the fast preset's (--preset fast)
    dtype: str = str(DEFAULT_SETTINGS["dtype"])
    channels_last: bool = bool(DEFAULT_SETTINGS["channels_last"])

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"`dtype` must be one of {list(DTYPE_CHOICES)}, got {self.dtype!r}")
        if self.dtype == "float16" and self.device.startswith("cpu"):
            raise ValueError("`dtype` float16 needs a GPU device; on a CPU use bfloat16")
        for name in ("max_input_pixels", "max_output_pixels", "concurrency", "max_queue", "default_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")


def validate_upload(path: str | os.PathLike, max_input_pixels: int) -> tuple[int, int]:
    """Check an uploaded file before any work: a PNG / JPEG / TIFF / GeoTIFF, not empty, at most ``max_input_pixels``
    (read from the header, before decoding), and a plain image decodable to the end (a GeoTIFF's pixels are read
    once, by the job's plan, before the model runs).

    Args:
        path: the uploaded file.
        max_input_pixels: the largest ``height * width`` accepted.

    Returns:
        ``(height, width)``.

    Raises:
        InputFailed: with a one-line message naming the file by its base name.
    """
    path = Path(path)
    name = path.name
    try:
        check_input_file(path)
        if probe_geo(path):
            from .io.rasters import check_budget, check_header, inspect_raster

            header = inspect_raster(path)  # the header only: refusals come before any pixel is read
            check_header(header)
            height, width = header.height, header.width
            _check_pixels(height, width, max_input_pixels)
            check_budget(header, None, max_input_pixels, "this server's input limit", advice="")
            # no pixel read here: the job's plan (plan_file) reads every block once, its statistics pass being the
            # damage scan, before the model runs, and the scene engine reuses that plan
            return height, width
        from PIL import Image, UnidentifiedImageError

        from .io.image_files import PIL_FORMATS

        try:
            with Image.open(path, formats=list(PIL_FORMATS)) as image:  # the header only, PNG / JPEG / TIFF decoders
                width, height = image.size
        except Image.DecompressionBombError as err:
            raise InputFailed(f"{path}: refused as a possible decompression bomb ({one_line(err)})") from err
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise InputFailed(f"{path}: not an image PIL can read (PNG, JPEG or TIFF expected)") from err
        _check_pixels(height, width, max_input_pixels)
        read_image_file(path)
        return height, width
    except InputFailed as err:
        raise InputFailed(str(err).replace(str(path), name)) from err
    except ValueError as err:
        raise InputFailed(f"{name}: {err}") from err


def _check_pixels(height: int, width: int, limit: int) -> None:
    if height * width > limit:
        raise InputFailed(
            f"the image is {height}x{width} (height x width) = {height * width} pixels; this server accepts at most "
            f"{limit} pixels"
        )


def check_app_samples(value: Any, prior_only: bool) -> int:
    """The number of uncertainty samples of a request: 0 (off, also for ``None``) or a whole number in
    ``[2, MAX_APP_SAMPLES]``, and not with the prior alone.

    Args:
        value: the page's setting (an int, or a float such as ``2.0`` from a slider).
        prior_only: whether the request asks for the prior alone.

    Returns:
        `int`: 0 or the number of samples.

    Raises:
        InputFailed: with one line naming the allowed values.

    Example:
        >>> check_app_samples(2.0, False), check_app_samples(None, False)
        (2, 0)
    """
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0):
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise InputFailed(
            f"the uncertainty samples must be 0 (off) or a whole number in [2, {MAX_APP_SAMPLES}], got {value!r}"
        )
    if not 2 <= value <= MAX_APP_SAMPLES:
        raise InputFailed(
            f"the uncertainty samples must be 0 (off) or a whole number in [2, {MAX_APP_SAMPLES}], got {value:g}"
            + (" (one sample has no spread)" if value == 1 else "")
        )
    if prior_only:
        raise InputFailed(
            'the uncertainty map needs diffusion samples; it cannot go with "Prior only" (set the samples to 0)'
        )
    return int(value)


def _check_sample_budget(out_size: tuple[int, int], samples: int, limit: int) -> None:
    """``samples`` outputs of ``out_size`` are denoised (one batch): their pixels must fit the server's limit."""
    height, width = out_size
    if samples > 1 and samples * height * width > limit:
        raise InputFailed(
            f"{samples} uncertainty samples of the output {height}x{width} (height x width) are {samples} x "
            f"{height * width} = {samples * height * width} pixels of work, over the server's limit {limit}; use "
            "fewer samples or a smaller output"
        )


def uncertainty_legend(uncertainty: Any, samples: int, vmax: float, error_bound: float | None = None) -> str:
    """The heat-map's legend (Markdown): what the map is, the colours' scale and the map's range.

    Args:
        uncertainty: the map, ``(H, W)`` float32.
        samples: the number of samples it was computed from.
        vmax: the value of the ramp's top colour ([`~neurop_diff_diffusers.io.heatmap.uncertainty_scale`]).
        error_bound: the model's calibrated 90 % error-bound factor for this request, if any: one more sentence
            says how to read the map as an error bound
            ([`~neurop_diff_diffusers.pipelines.uncertainty_calibration.error_bound_legend`]).

    Example:
        >>> import numpy as np
        >>> uncertainty_legend(np.zeros((2, 2), np.float32), 2, 0.0)
        'Uncertainty over **2 samples**: they agree everywhere (the map is 0).'
    """
    from .pipelines.uncertainty_calibration import error_bound_legend

    if vmax == 0.0:
        return f"Uncertainty over **{samples} samples**: they agree everywhere (the map is 0)."
    text = (
        f"Uncertainty over **{samples} samples** (their standard deviation per pixel on the 0..1 scale, averaged over "
        f"the channels and pooled over a few pixels; the output is their mean): black = 0, pale yellow = "
        f"**{vmax:.3g}** or more (the map's 99th percentile); largest {float(uncertainty.max()):.3g}, mean "
        f"{float(uncertainty.mean()):.3g}."
    )
    bound = error_bound_legend(error_bound, vmax)
    return text if not bound else f"{text} {bound}"


def uncertainty_view(state: dict[str, Any] | None, show: bool, alpha: float) -> Any:
    """What the uncertainty view shows for the last result, from the arrays kept in the page's state (no model run).

    Args:
        state: ``{"output": (H, W, 3) uint8, "heat": (H, W, 3) uint8}`` of the last request, or ``None`` (no map).
        show: the heat-map blended over the output (``True``) or the plain output.
        alpha: the heat-map's opacity in ``[0, 1]`` ([`~neurop_diff_diffusers.io.heatmap.overlay`]).

    Returns:
        A PIL RGB image, or ``None`` without a map.
    """
    from PIL import Image

    from .io.heatmap import overlay

    if state is None:
        return None
    if not show:
        return Image.fromarray(state["output"])
    return Image.fromarray(overlay(state["output"], state["heat"], float(alpha)))


def _read_map(path: Path, geo: bool) -> Any:
    """The float32 ``(H, W)`` uncertainty map written by [`run_job`] (a GeoTIFF's with rasterio)."""
    import numpy as np

    if geo:
        import rasterio

        with rasterio.open(path) as src:
            return src.read(1).astype(np.float32)
    from PIL import Image

    with Image.open(path, formats=["TIFF"]) as image:
        return np.asarray(image, dtype=np.float32)


def _remove_old_requests(workdir: Path, age: float) -> None:
    """Remove the request folders of ``workdir`` older than ``age`` seconds."""
    limit = time.time() - age
    for folder in workdir.glob("request-*"):
        try:
            if folder.stat().st_mtime < limit:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            pass


def _to_rgb_preview(path: Path, geo: bool) -> Any:
    """The output as an 8-bit RGB PIL image (a GeoTIFF's model bands, stretched per band; 16-bit grey scaled)."""
    import numpy as np
    from PIL import Image

    if geo:
        bands = _model_bands(path)
        return Image.fromarray(np.rint(bands.transpose(1, 2, 0).clip(0, 1) * 255).astype(np.uint8))
    image = read_image_file(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64) / 65535.0
        return Image.fromarray(np.rint(array.clip(0, 1) * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


class Upscaler:
    """The model and the request handling of the app, independent of Gradio (the page calls [`run`]).

    Args:
        config: the [`AppConfig`].
        workdir: the folder each request writes in (one sub-folder per request).
    """

    def __init__(self, config: AppConfig, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.pipe = load_job_pipeline(config.model, config.device)
        optimize_pipeline(self.pipe, dtype=config.dtype, channels_last=config.channels_last)
        self.pipe.set_progress_bar_config(disable=False, leave=False)
        self.max_steps = int(getattr(self.pipe.scheduler.config, "num_train_timesteps", 1000))
        self.default_strength = float(self.pipe.config.get("default_strength", 1.0))
        self._stops: dict[str, set[threading.Event]] = {}  # the stop flags of each page session's running requests
        self._stops_lock = threading.Lock()

    @contextlib.contextmanager
    def session_stop(self, session: str | None) -> Iterator[threading.Event]:
        """A stop flag for one request of the page session ``session``, set by [`stop_session`] while inside."""
        flag = threading.Event()
        key = session or ""
        with self._stops_lock:
            self._stops.setdefault(key, set()).add(flag)
        try:
            yield flag
        finally:
            with self._stops_lock:
                flags = self._stops.get(key, set())
                flags.discard(flag)
                if not flags:
                    self._stops.pop(key, None)

    def stop_session(self, session: str | None) -> int:
        """Stop the running requests of the page session ``session`` (its Stop button, or the page closed): each ends
        within its denoising step in flight, writing nothing. Returns how many were told to stop."""
        with self._stops_lock:
            flags = list(self._stops.get(session or "", ()))
        for flag in flags:
            flag.set()
        return len(flags)

    def run(
        self,
        upload: str | os.PathLike,
        mode: str = "scale",
        scale: float = 4.0,
        height: int | None = None,
        width: int | None = None,
        steps: int = int(DEFAULT_SETTINGS["steps"]),
        strength: float | None = None,
        seed: int = 0,
        prior_only: bool = False,
        sampler: str | None = None,
        uncertainty_samples: int | float | None = 0,
        stop: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Validate and upscale one upload.

        Args:
            upload: the uploaded file.
            mode: ``"scale"`` (use ``scale``) or ``"size"`` (use ``height`` x ``width``).
            scale: the factor, in [1, 10].
            height: the output height (``mode="size"``).
            width: the output width (``mode="size"``).
            steps: denoising steps.
            strength: the pipeline's ``strength`` (``None``: the model's default).
            seed: the seed of the noise.
            prior_only: the neural operator's prior alone, no diffusion.
            sampler: a name of [`~neurop_diff_diffusers.pipelines.scheduling.SCHEDULERS`] (e.g. ``"dpm++2m-sde"``; the
                README's "Speed" measures them), or ``None`` for the model's own. Each request samples
                with its own scheduler object, so that requests running at the same time do not share one.
            uncertainty_samples: 0 (off) or 2 to [`MAX_APP_SAMPLES`] samples ([`check_app_samples`]): the output is
                their mean and their spread is written next to it as ``<output stem>.uncertainty.tif``, as
                ``neurop-diff upscale --uncertainty N`` does; ``N`` outputs' pixels must fit the server's limit.
            stop: a stop flag ([`session_stop`]), checked after every denoising step: once set, the request ends
                with ``InputFailed`` and its folder is removed.

        Returns:
            ``{"output": PIL image, "bicubic": PIL image, "prior": PIL image, "png": path, "geotiff": path or
            None, "uncertainty": (H, W) float32 array or None, "uncertainty_tif": path or None, "samples": int,
            "size": (height, width), "seconds": float}``.

        Raises:
            InputFailed: a bad upload or setting, with a one-line message for the page.
        """
        start = time.perf_counter()
        if upload is None:
            raise InputFailed("upload an image first (PNG, JPEG, TIFF or GeoTIFF)")
        size = None
        if mode == "size":
            if not all(isinstance(v, (int, float)) and v >= 1 and float(v).is_integer() for v in (height, width)):
                raise InputFailed(f"the output size must be two whole numbers >= 1, got {height} x {width}")
            size = (int(height), int(width))
            scale = None
        elif not (isinstance(scale, (int, float)) and MIN_SCALE <= scale <= MAX_SCALE):
            raise InputFailed(f"the scale must be a number in [{MIN_SCALE:g}, {MAX_SCALE:g}], got {scale}")
        if not (isinstance(steps, (int, float)) and 1 <= steps <= self.max_steps and float(steps).is_integer()):
            raise InputFailed(f"steps must be a whole number in [1, {self.max_steps}], got {steps}")
        if strength is not None and not 0.0 < strength <= 1.0:
            raise InputFailed(f"strength must be in (0, 1], got {strength}")
        if sampler is not None and sampler not in SCHEDULER_CHOICES:
            raise InputFailed(f"the sampler must be one of {', '.join(SCHEDULER_CHOICES)}, got {sampler!r}")
        samples = check_app_samples(uncertainty_samples, bool(prior_only))
        upload = Path(upload)
        validate_upload(upload, self.config.max_input_pixels)

        _remove_old_requests(self.workdir, REQUEST_LIFETIME)
        folder = Path(tempfile.mkdtemp(prefix="request-", dir=self.workdir))
        src = folder / ("input" + upload.suffix.lower())
        shutil.copyfile(upload, src)
        geo = probe_geo(src)
        stem = upload.stem or "image"
        tag = f"x{scale:g}" if size is None else f"{size[0]}x{size[1]}"
        dst = folder / f"{stem}_{tag}{'.tif' if geo else '.png'}"
        options = JobOptions(
            steps=int(steps),
            strength=strength,
            seed=int(seed),
            prior_only=bool(prior_only),
            max_pixels=self.config.max_output_pixels,
            num_samples=samples or None,
        )
        try:  # the CLI's own plan of a file; a GeoTIFF's output is capped too (the server's limit)
            job = plan_file(src, dst, scale, size, options, cap_geo_output=True)
        except InputFailed as err:
            shutil.rmtree(folder, ignore_errors=True)
            message = str(err).replace(str(src), upload.name).replace(f"{folder}{os.sep}", "")
            message = message.replace("--size", "the output size")
            raise InputFailed(
                message.replace("--max-pixels", "the server's limit").replace("; raise it", "")
            ) from None
        out_size = job.out_size
        try:  # N samples are N outputs' work: refused before any
            _check_sample_budget(out_size, samples, self.config.max_output_pixels)
        except InputFailed:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        pipe = copy.copy(self.pipe)  # the same models with a scheduler of this request's own
        own = self.pipe.scheduler
        pipe.scheduler = type(own).from_config(own.config) if sampler is None else make_scheduler(sampler, own)
        from .jobs.scene import tqdm_progress  # a GeoTIFF's bar over its denoising steps (the page's progress)

        try:  # the CLI's own job: a PNG, or a GeoTIFF that keeps its georeferencing
            run_job(pipe, job, progress=tqdm_progress, stop=stop)
        except RunStopped:
            shutil.rmtree(folder, ignore_errors=True)
            raise InputFailed("stopped: the upscaling was cancelled") from None
        except InputFailed as err:  # the CLI's words, and the request folder's path, made the page's
            shutil.rmtree(folder, ignore_errors=True)
            message = str(err).replace(str(src), upload.name).replace("--uncertainty", "the uncertainty map")
            raise InputFailed(message) from None
        except (ValueError, OSError, RuntimeError) as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise InputFailed(f"{upload.name}: {one_line(err)}") from err
        output = _to_rgb_preview(dst, geo)
        png = dst if not geo else dst.with_suffix(".png")
        if geo:
            output.save(png)
        lr = _model_input(src, geo)
        prior = output if prior_only else self.pipe(lr, output_size=out_size, prior_only=True).images[0]
        bicubic = _bicubic(lr, out_size)
        map_path = job.uncertainty
        bound = None
        if map_path is not None:  # the model's calibrated 90 % error-bound factor, where it applies to this request
            from .pipelines.uncertainty_calibration import call_error_bound

            bound = call_error_bound(self.pipe.config, samples, out_size[0] / lr.shape[-2 if geo else 0], int(steps))
        return {
            "output": output,
            "bicubic": bicubic,
            "prior": prior,
            "png": png,
            "geotiff": dst if geo else None,
            "uncertainty": _read_map(map_path, geo) if map_path else None,
            "uncertainty_tif": map_path,
            "samples": samples,
            "error_bound": bound,
            "size": out_size,
            "seconds": time.perf_counter() - start,
        }


def _model_input(src: Path, geo: bool) -> Any:
    """The image the pipeline sees for ``src``: the CLI's decoded array, or a GeoTIFF's stretched model bands."""
    if not geo:
        return read_image_array(src, warn=False)[0]
    import torch

    return torch.from_numpy(_model_bands(src)).clamp(0, 1)


def _model_bands(path: Path) -> Any:
    """A raster's bands 1-3 (one band repeated), stretched to ``[0, 1]`` as [`upscale_geotiff`] does: (3, H, W)."""
    import numpy as np

    from .io.geo import read_scene

    unit = read_scene(path)[0]
    return np.ascontiguousarray(unit[:3] if unit.shape[0] >= 3 else np.repeat(unit[:1], 3, axis=0))


def _bicubic(lr: Any, out_size: tuple[int, int]) -> Any:
    """The "before" view: bicubic upsampling (the SR3 conditioner [`bicubic_prior`]) as a PIL image."""
    from .pipelines import bicubic_prior
    from .pipelines.image_processing import postprocess_images, preprocess_images

    image = preprocess_images(lr) * 2.0 - 1.0
    return postprocess_images(bicubic_prior(image, out_size), "pil")[0]


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While inside: Ctrl-C (SIGINT) and SIGTERM stop the server the same way, its temporary folder removed.

    SIGINT gets Python's own handler back (``KeyboardInterrupt``) whatever the process inherited: a background job of
    a non-interactive shell, ``nohup`` or a service manager may start it with SIGINT ignored, and Ctrl-C or
    ``kill -INT`` would then never stop it. SIGTERM (``kill``, systemd, docker) raises ``SystemExit(143)``, so that
    the server closes and the exit handlers remove the temporary folder (by default SIGTERM kills the process with
    no cleanup); a second SIGTERM during that shutdown is ignored. Outside the main thread nothing is changed. The
    previous handlers come back on leaving.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the shutdown runs once
        raise SystemExit(128 + signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _request_handler(upscaler: Upscaler, own_sampler: str) -> Any:
    """The page's "Upscale" callback: the controls' values in, the results panel's values out (a bad upload or
    setting becomes one ``gr.Error`` message)."""
    import gradio as gr

    tracker = gr.Progress(track_tqdm=True)  # follows the pipeline's or the scene's bar: denoising steps

    def upscale(
        upload,
        mode,
        scale,
        height,
        width,
        steps,
        strength,
        seed,
        prior_only,
        sampler,
        samples,
        show_overlay,
        alpha,
        progress=tracker,
        request=None,
    ):
        session = getattr(request, "session_hash", None)
        try:
            with upscaler.session_stop(session) as stop:  # the page's Stop, or the page closed, sets it
                result = upscaler.run(
                    upload,
                    "size" if mode == "output size" else "scale",
                    scale,
                    height,
                    width,
                    steps,
                    strength,
                    seed,
                    prior_only,
                    None if sampler == own_sampler else sampler,
                    samples,
                    stop=stop,
                )
        except InputFailed as err:
            raise gr.Error(str(err), print_exception=False) from None
        height_out, width_out = result["size"]
        info = f"**{height_out} x {width_out}** (height x width) in **{result['seconds']:.1f} s**"
        downloads = [str(result["png"])] + ([str(result["geotiff"])] if result["geotiff"] else [])
        state = None
        if result["uncertainty"] is not None:
            import numpy as np

            from .io.heatmap import uncertainty_heatmap, uncertainty_scale

            vmax = uncertainty_scale(result["uncertainty"])
            heat = uncertainty_heatmap(result["uncertainty"], vmax if vmax > 0 else None)
            state = {"output": np.asarray(result["output"].convert("RGB")), "heat": heat}
            info += "\n\n" + uncertainty_legend(result["uncertainty"], result["samples"], vmax, result["error_bound"])
            downloads.append(str(result["uncertainty_tif"]))
        view = uncertainty_view(state, show_overlay, alpha)
        return (result["bicubic"], result["output"]), result["prior"], info, downloads, view, state

    upscale.__annotations__["request"] = gr.Request  # Gradio passes the request (its page session) here
    return upscale


def _stop_handler(upscaler: Upscaler) -> Any:
    """The page's "Stop" and its unload (the page closed or reloaded): stops the session's running requests."""
    import gradio as gr

    def stop(request=None) -> None:
        upscaler.stop_session(getattr(request, "session_hash", None))

    stop.__annotations__["request"] = gr.Request
    return stop


def _settings_panel(config: AppConfig, upscaler: Upscaler, own_sampler: str) -> dict[str, Any]:
    """The left column: the upload and the request's settings (inside a ``gr.Column``); the components by name."""
    import gradio as gr

    panel = {
        "upload": gr.File(
            label="Image (PNG / JPEG / TIFF / GeoTIFF)", file_types=list(IMAGE_SUFFIXES), elem_id="upload"
        ),
        "mode": gr.Radio(["scale", "output size"], value="scale", label="Upscale by", elem_id="mode"),
        "scale": gr.Number(
            value=4.0, minimum=MIN_SCALE, maximum=MAX_SCALE, step=0.1, label="Scale (1-10)", elem_id="scale"
        ),
    }
    with gr.Row():
        panel["height"] = gr.Number(value=512, precision=0, minimum=1, label="Output height", elem_id="height")
        panel["width"] = gr.Number(value=512, precision=0, minimum=1, label="Output width", elem_id="width")
    panel["steps"] = gr.Slider(
        1, min(upscaler.max_steps, 200), value=config.default_steps, step=1, label="Denoising steps", elem_id="steps"
    )
    panel["strength"] = gr.Slider(
        0.05, 1.0, value=upscaler.default_strength, step=0.05, label="Strength", elem_id="strength"
    )
    panel["sampler"] = gr.Dropdown(
        [own_sampler, *SCHEDULER_CHOICES],
        value=own_sampler,
        label='Sampler (the README\'s "Speed" compares them; the embedded model is best with its own)',
        elem_id="sampler",
    )
    panel["seed"] = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
    panel["prior_only"] = gr.Checkbox(
        value=False, label="Prior only (the neural operator alone, no diffusion)", elem_id="prior-only"
    )
    panel["samples"] = gr.Slider(
        0,
        MAX_APP_SAMPLES,
        value=0,
        step=1,
        label=(
            f"Uncertainty map: samples (0 = off; 2-{MAX_APP_SAMPLES}, each one more denoising run; the "
            "output is their mean; not with the prior only)"
        ),
        elem_id="uncertainty-samples",
    )
    with gr.Row():
        panel["run"] = gr.Button("Upscale", variant="primary", elem_id="run")
        panel["stop"] = gr.Button("Stop", variant="stop", elem_id="stop")
    return panel


def _results_panel() -> dict[str, Any]:
    """The right column: the comparison, the prior, the timing, the uncertainty view and the downloads (inside a
    ``gr.Column``); the components by name."""
    import gradio as gr

    panel = {
        "compare": gr.ImageSlider(
            label="Bicubic | NeurOp-Diff", type="pil", format="png", elem_id="compare", buttons=["fullscreen"]
        ),
        "prior": gr.Image(
            label="Prior (neural operator)", type="pil", format="png", elem_id="prior", buttons=["fullscreen"]
        ),
        "info": gr.Markdown(elem_id="info"),
    }
    with gr.Row():
        panel["show_overlay"] = gr.Checkbox(value=True, label="Show uncertainty overlay", elem_id="show-overlay")
        panel["alpha"] = gr.Slider(
            0.0,
            1.0,
            value=DEFAULT_OVERLAY_ALPHA,
            step=0.05,
            label="Overlay opacity (1 = the heat-map alone)",
            elem_id="overlay-alpha",
        )
    panel["uncertainty"] = gr.Image(
        label="Uncertainty heat-map over the output (with uncertainty samples >= 2)",
        type="pil",
        format="png",
        elem_id="uncertainty",
        buttons=["fullscreen"],
    )
    panel["files"] = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
    return panel


_GRADIO_TEMP_DIR: str | None = None


def build_app(config: AppConfig | None = None, workdir: str | os.PathLike | None = None) -> Any:
    """The Gradio app (a ``gr.Blocks`` with its queue set), ready for ``launch()``.

    Args:
        config: the [`AppConfig`] (default: the embedded model on the CPU, the default limits).
        workdir: the folder the requests write in (default: a new temporary folder, removed at exit). Gradio's cache
            of results and uploads is placed there too unless ``GRADIO_TEMP_DIR`` is set.

    Example:
        >>> demo = build_app(AppConfig(model="preset:tiny"))  # doctest: +SKIP
        >>> demo.launch(server_name="127.0.0.1", server_port=7860)  # doctest: +SKIP
    """
    config = config or AppConfig()
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="neurop-diff-app-")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    workdir = Path(workdir)
    global _GRADIO_TEMP_DIR
    if os.environ.get("GRADIO_TEMP_DIR") in (None, _GRADIO_TEMP_DIR):  # Gradio's cache too, unless the user set one
        _GRADIO_TEMP_DIR = os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
    import gradio as gr

    upscaler = Upscaler(config, workdir)
    own_sampler = f"model's own ({scheduler_name(upscaler.pipe.scheduler)})"

    with gr.Blocks(title="NeurOp-Diff super-resolution", delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# NeurOp-Diff: continuous super-resolution of remote-sensing images\n"
            "Upload a PNG, JPEG, TIFF or GeoTIFF, pick any scale from 1 to 10 (e.g. 3.7) or an output size, and run. "
            f"Limits of this server: {config.max_input_pixels} input pixels, {config.max_output_pixels} output pixels."
        )
        with gr.Row():
            with gr.Column():
                settings = _settings_panel(config, upscaler, own_sampler)
            with gr.Column():
                results = _results_panel()
        last = gr.State(None)  # the last result's output and heat-map: the toggle redraws from them, no model run
        inputs = ["upload", "mode", "scale", "height", "width", "steps", "strength", "seed", "prior_only", "sampler"]
        running = settings["run"].click(
            _request_handler(upscaler, own_sampler),
            [*(settings[name] for name in [*inputs, "samples"]), results["show_overlay"], results["alpha"]],
            [*(results[name] for name in ("compare", "prior", "info", "files", "uncertainty")), last],
            api_name="upscale",
            concurrency_limit=config.concurrency,
        )
        gr.on(
            [results["show_overlay"].change, results["alpha"].release],
            uncertainty_view,
            [last, results["show_overlay"], results["alpha"]],
            results["uncertainty"],
            api_name="uncertainty_view",
            queue=False,
        )
        # Stop, or the page closed: the running request ends within its denoising step (a flag the job checks);
        # cancelling Gradio's event alone would leave the computation running in its thread
        settings["stop"].click(_stop_handler(upscaler), None, None, cancels=[running], queue=False)
        demo.unload(_stop_handler(upscaler))
    demo.queue(max_size=config.max_queue, default_concurrency_limit=config.concurrency)
    demo.neurop_diff_workdir = workdir
    return demo

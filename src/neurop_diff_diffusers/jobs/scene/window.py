"""One window through the model: read, stretch, fill, at the scene's coordinates, with the window's own seed.

Window ``k`` draws its noise from ``derive_seed(seed, "scene-window", k)``, so its output does not depend on the
order, the workers or the processes that compute the windows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ...io.rasters import palette_table
from ...pipelines.image_processing import check_finite_output
from ...utils import derive_seed
from .job import SceneJob
from .plan import ScenePlan, SceneWindow
from .statistics import read_block


def window_coordinates(plan: ScenePlan, window: SceneWindow) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's output pixel centres relative to its LR crop (operator convention) and the scene's cell.

    Returns:
        ``(coord, cell)``: ``(1, n_rows, n_cols, 2)`` (row, column) in float32 and ``(1, 2)``.
    """
    axes, cells = [], []
    for axis, (lr, out) in enumerate(((window.lr_rows, window.out_rows), (window.lr_cols, window.out_cols))):
        size, out_size = plan.size[axis], plan.out_size[axis]
        crop = lr[1] - lr[0]
        centres = (np.arange(out[0], out[1], dtype=np.float64) + 0.5) * size / out_size  # LR pixels, scene frame
        axes.append(torch.from_numpy(-1.0 + 2.0 * (centres - lr[0]) / crop).float())
        cells.append(2.0 * size / out_size / crop)
    coord = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).unsqueeze(0)
    return coord, torch.tensor([cells], dtype=torch.float32)


def is_neurop_pipeline(pipe: Any) -> bool:
    return hasattr(pipe, "compute_prior") and hasattr(pipe, "neural_operator") and hasattr(pipe, "unet")


def window_prior(
    pipe: Any, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, chunk_size: Any
) -> torch.Tensor:
    """The pipeline's prior of an LR window (``(1, 3, h, w)`` in ``[-1, 1]``) at scene coordinates ``coord``."""
    operator = pipe.neural_operator
    if operator is None:  # the bicubic prior, sampled at the same coordinates
        return F.grid_sample(lr, coord.flip(-1), mode="bicubic", padding_mode="border", align_corners=False)
    lr = lr.to(device=operator.device, dtype=operator.dtype)
    return operator.query(lr, coord.to(lr), cell.to(lr), chunk_size=chunk_size).float()


def window_seed(seed: int, index: int) -> int:
    """The seed of window ``index``'s noise: ``derive_seed(seed, "scene-window", index)``."""
    return derive_seed(seed, "scene-window", index)


class WindowInput(NamedTuple):
    """A window read and prepared for the model ([`window_input`]).

    Args:
        unit (`np.ndarray`): every band stretched to ``[0, 1]``, nodata filled, ``(bands, h, w)`` float32.
        rgb (`torch.Tensor`): the model's bands, ``(1, 3, h, w)`` in ``[0, 1]``.
        coord (`torch.Tensor`): the output pixel centres ([`window_coordinates`]).
        cell (`torch.Tensor`): the scene's cell.
        outside (`np.ndarray | None`): the part of each stretched value outside ``[0, 1]`` (the input minus its
            clipped stretch; ``unit`` holds the clipped values the model sees), ``None`` with ``clip``.
    """

    unit: np.ndarray
    rgb: torch.Tensor
    coord: torch.Tensor
    cell: torch.Tensor
    outside: np.ndarray | None = None


def window_input(src: Any, job: SceneJob, window: SceneWindow) -> WindowInput:
    """Read the window's LR crop, stretch it to ``[0, 1]``, fill nodata: the model's input and coordinates."""
    from rasterio.windows import Window

    (r0, r1), (c0, c1) = window.lr_rows, window.lr_cols
    data, valid, _ = read_block(src, Window(c0, r0, c1 - c0, r1 - r0), palette_table(src))
    unit = np.empty(data.shape, dtype=np.float32)
    for b in range(data.shape[0]):
        unit[b] = job.stats.stretch.forward(data[b], b)
        unit[b][~valid[b]] = job.stats.fill[b]
    del data
    # the model sees the stretch clipped; unless `clip`, what lies outside it is added back to the output bicubically
    outside = None if job.options.clip else unit - np.clip(unit, 0.0, 1.0)
    np.clip(unit, 0.0, 1.0, out=unit)
    rgb = torch.from_numpy(unit[job.model_bands]).unsqueeze(0)
    coord, cell = window_coordinates(job.plan, window)
    return WindowInput(unit, rgb, coord, cell, outside)


def sample_window(
    pipe: Any,
    job: SceneJob,
    window: SceneWindow,
    rgb: torch.Tensor,
    prior: torch.Tensor,
    callback: Callable[..., Any] | None = None,
) -> Any:
    """The pipeline's denoising of one window from its ``prior``, with the window's own noise; ``callback`` is
    called after each denoising step (composed with a ``callback_on_step_end`` of the job's pipeline arguments)."""
    kwargs = job.pipe_kwargs
    kwargs.pop("prior_only", None)
    if callback is not None:
        inner = kwargs.get("callback_on_step_end")
        kwargs["callback_on_step_end"] = callback if inner is None else _chain(inner, callback)
    generator = torch.Generator(device="cpu").manual_seed(window_seed(job.seed, window.index))
    out_h, out_w = window.out_shape
    return pipe(rgb, output_size=(out_h, out_w), output_type="pt", generator=generator, prior=prior, **kwargs)


def _chain(first: Callable[..., Any], then: Callable[..., Any]) -> Callable[..., Any]:
    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        outputs = first(pipe, step, timestep, tensors)
        then(pipe, step, timestep, tensors)
        return outputs

    return callback


@torch.no_grad()
def run_window(
    pipe: Any,
    src: Any,
    job: SceneJob,
    window: SceneWindow,
    callback: Callable[..., Any] | None = None,
) -> np.ndarray:
    """One window: read, stretch, fill, through the model; returns the output bands in ``[0, 1]`` float32.

    Bands outside the job's ``model_bands`` are bicubic, except its 0-based ``alpha_bands`` (masks): nearest
    neighbour, the LR pixel under each output pixel's centre, the same in every window that covers it. With
    ``num_samples`` the bands are the samples' mean and one more plane follows them: the window's uncertainty map
    (``(bands + 1, h, w)``).

    Args:
        pipe (`Any`): the pipeline (a worker's copy).
        src (`Any`): the input, open ([`~neurop_diff_diffusers.io.rasters.open_raster`]).
        job (`SceneJob`): the scene: plan, statistics, bands, seed and pipeline arguments.
        window (`SceneWindow`): the window.
        callback (`Callable | None`, *optional*): the pipeline's ``callback_on_step_end`` for this window (e.g.
            [`~neurop_diff_diffusers.jobs.stopping.step_callback`]: progress and the stop flag, after each denoising
            step); not passed to a pipeline that is not a NeurOp-Diff one.
    """
    plan, model_bands, alpha_bands = job.plan, job.model_bands, job.alpha_bands
    unit, rgb, coord, cell, outside = window_input(src, job, window)
    count = unit.shape[0]
    out_h, out_w = window.out_shape
    kwargs = job.pipe_kwargs
    sampled = kwargs.get("num_samples") is not None  # prepare_scene refuses it with prior_only
    called = None
    if is_neurop_pipeline(pipe):
        device = pipe._execution_device
        prior = window_prior(pipe, (rgb * 2.0 - 1.0).to(device), coord.to(device), cell, kwargs.get("chunk_size"))
        if kwargs.get("prior_only", False):  # NaN / inf refused as the pipeline's own prior-only output is
            output = ((check_finite_output(prior[0].float().cpu()) + 1.0) / 2.0).clamp(0, 1)
        else:
            called = sample_window(pipe, job, window, rgb, prior, callback)
    else:  # any callable with the pipeline's signature (e.g. a test double): the window at its own output size
        called = pipe(rgb, output_size=(out_h, out_w), output_type="pt", **kwargs)
    if called is not None:
        output = called.images[0]
    spread = getattr(called, "uncertainty", None) if sampled else None
    if sampled and spread is None:
        raise ValueError(f"`num_samples` needs a pipeline that returns `.uncertainty`; {type(pipe).__name__} does not")
    output = check_finite_output(output.float().cpu())  # never blended into a scene, never written
    others = [b for b in range(count) if b not in model_bands and b not in alpha_bands]
    masks = [b for b in range(count) if b not in model_bands and b in alpha_bands]
    result = np.empty((count + int(sampled), out_h, out_w), dtype=np.float32)
    if sampled:  # the map: the samples' spread on the [0, 1] scale, averaged over the model's channels
        result[count] = check_finite_output(spread[0].float().cpu()).numpy()
    if count == 1:
        result[0] = output.mean(dim=0).numpy()
    else:
        for b in model_bands:
            result[b] = output[model_bands.index(b)].numpy()
    if others:  # bands without the model: bicubic of their stretched values, at the same coordinates
        result[others] = _bicubic(unit[others], plan, coord).clamp(0, 1).numpy()
    if masks:  # alpha: nearest, at the output pixel centre (exact integer arithmetic in the scene's frame)
        (height, width), (scene_h, scene_w) = plan.size, plan.out_size
        r0, c0 = window.lr_rows[0], window.lr_cols[0]
        rows = (2 * np.arange(*window.out_rows, dtype=np.int64) + 1) * height // (2 * scene_h) - r0
        cols = (2 * np.arange(*window.out_cols, dtype=np.int64) + 1) * width // (2 * scene_w) - c0
        result[masks] = unit[masks][:, rows][:, :, cols]
        if outside is not None:
            result[masks] += outside[masks][:, rows][:, :, cols]
    beyond = [] if outside is None else [b for b in range(count) if b not in masks and outside[b].any()]
    if beyond:  # the part outside the stretch, bicubic like the bands without the model, blended like the rest
        result[beyond] += _bicubic(outside[beyond], plan, coord).numpy()
    return result


def _bicubic(planes: np.ndarray, plan: ScenePlan, coord: torch.Tensor) -> torch.Tensor:
    """Bicubic of ``(n, h, w)`` LR planes at the window's output coordinates: ``(n, out_h, out_w)``."""
    extra = torch.from_numpy(np.ascontiguousarray(planes)).unsqueeze(0)
    if tuple(coord.shape[1:3]) == tuple(plan.out_size):  # the whole scene: exactly the whole-scene interpolation
        return F.interpolate(extra, size=tuple(plan.out_size), mode="bicubic")[0]
    return F.grid_sample(extra, coord.flip(-1), mode="bicubic", padding_mode="border", align_corners=False)[0]

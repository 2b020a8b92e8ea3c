"""The dry run: a scene's time and peak memory estimated in seconds from one denoising step, never a whole window.

Each worker (the windows the run computes at once) probes the largest window at the same time as the others, so the
figures carry the workers' contention for the cores: the window's read and stretch, one pass of the neural operator
(its prior), **one** denoising step (the pipeline stops after its first step, through ``callback_on_step_end``) and
the serialisation of the window's output. The estimate extrapolates from the plan::

    one window = read + operator + steps per window x one step + write
    estimated time = ceil(windows / workers) x one window

The report gives that basis (per-step and per-window figures, the workers assumed). Nothing is written: the write is
timed into memory. A pipeline that is not a NeurOp-Diff one (e.g. a test double) has no steps to time: its whole
window call is timed instead.

Example:
    >>> print(_duration(42.0), _duration(600.0), _duration(9000.0))
    42 s 10.0 min 2.5 h
"""

from __future__ import annotations

import io
import math
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ...io.rasters import open_raster
from ..stopping import RunStopped
from .job import SceneJob, megabytes, strip_bytes
from .plan import SceneWindow
from .window import is_neurop_pipeline, sample_window, window_input, window_prior
from .workers import WindowThreads, on_cpu, window_steps, worker_pipes


class _FirstStepDone(RunStopped):
    """Raised by the dry run's step callback after the first denoising step."""


def _stop_after_first_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    raise _FirstStepDone("the dry run times one step")


@torch.no_grad()
def probe_window(pipe: Any, job: SceneJob, window: SceneWindow) -> dict[str, float]:
    """Time one window's phases without running its whole sampler.

    Args:
        pipe (`Any`): the pipeline (a worker's copy).
        job (`SceneJob`): the scene.
        window (`SceneWindow`): the window to probe.

    Returns:
        `dict[str, float]`: seconds of ``read`` (read and stretch), ``operator`` (the prior), ``step`` (one
        denoising step, with the sampler's set-up; 0 for the prior alone) and ``write`` (the window's output
        serialised); for a pipeline that is not a NeurOp-Diff one, ``operator`` is its whole call and ``step`` 0.
    """
    start = time.perf_counter()
    with open_raster(job.src_path) as src:
        unit, rgb, coord, cell, _ = window_input(src, job, window)
    read = time.perf_counter()
    kwargs = job.pipe_kwargs
    step = read
    if is_neurop_pipeline(pipe):
        device = pipe._execution_device
        prior = window_prior(pipe, (rgb * 2.0 - 1.0).to(device), coord.to(device), cell, kwargs.get("chunk_size"))
        operator = step = time.perf_counter()
        if not kwargs.get("prior_only"):
            try:
                sample_window(pipe, job, window, rgb, prior, _stop_after_first_step)
            except _FirstStepDone:
                pass
            step = time.perf_counter()
    else:
        pipe(rgb, output_size=window.out_shape, output_type="pt", **kwargs)
        operator = step = time.perf_counter()
    planes = unit.shape[0] + int(job.num_samples is not None)
    np.save(io.BytesIO(), np.zeros((planes, *window.out_shape), dtype=np.float32), allow_pickle=False)
    write = time.perf_counter()
    return {"read": read - start, "operator": operator - read, "step": step - operator, "write": write - step}


def dry_run(pipe: Any, job: SceneJob, workers: int | None = None) -> dict[str, Any]:
    """Estimate the whole run's time and peak memory from one denoising step per worker; nothing is written.

    With ``num_samples`` the step is timed with its samples (one batch), and the report names the uncertainty map
    and its size.

    Args:
        pipe (`Any`): the pipeline.
        job (`SceneJob`): from [`prepare_scene`], with its [`SceneOptions`].
        workers (`int | None`, *optional*): windows at once for the estimate; ``None``: the options' ``workers``.

    Returns:
        `dict[str, Any]`: ``windows``, ``steps_per_window``, ``step_seconds`` (one denoising step of the largest
        window), ``read_seconds``, ``operator_seconds``, ``write_seconds``, ``window_seconds`` (one window
        extrapolated), ``estimated_seconds``, ``estimated_peak_mb``, ``workers`` and ``text`` (a report for people).
    """
    windows = job.plan.windows()
    largest = max(windows, key=lambda w: w.out_shape[0] * w.out_shape[1])
    largest_h, largest_w = largest.out_shape
    cpu = on_cpu(pipe)
    workers = job.options.workers if workers is None else workers
    steps = window_steps(pipe, job)
    with WindowThreads(cpu) as threads:
        n = max(1, min(workers or threads, len(windows))) if cpu else 1
        pipes = worker_pipes(pipe, n)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if n == 1:
            probes = [probe_window(pipes[0], job, largest)]
        else:  # every worker at once, as in the run: the figures carry their contention for the cores
            with ThreadPoolExecutor(max_workers=n) as pool:
                probes = list(pool.map(lambda p: probe_window(p, job, largest), pipes))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    phase = {k: float(np.mean([p[k] for p in probes])) for k in probes[0]}
    window_seconds = phase["read"] + phase["operator"] + steps * phase["step"] + phase["write"]
    rounds = math.ceil(len(windows) / n)
    estimate = rounds * window_seconds
    window_bytes = job.planes * largest_h * largest_w * 4
    # the workers' activations (measured with all of them at once) and their saved outputs, the strip accumulator
    peak = after + n * window_bytes + strip_bytes(job.plan, job.planes) + window_bytes
    neurop = is_neurop_pipeline(pipe) and not job.pipe_kwargs.get("prior_only")
    basis = (
        f"one denoising step {phase['step']:.2f} s x {steps} steps + operator {phase['operator']:.2f} s + read "
        f"{phase['read']:.2f} s + write {phase['write']:.2f} s"
        if neurop
        else f"the model {phase['operator']:.2f} s + read {phase['read']:.2f} s + write {phase['write']:.2f} s"
    )
    text = "\n".join(
        [
            job.describe(),
            f"one window ({largest_h}x{largest_w} output px): {window_seconds:.2f} s = {basis}",
            f"timed with {n} worker(s) at once (each window single-threaded); the run computes {n} window(s) at once",
            f"estimated time: {_duration(estimate)} = {rounds} round(s) of {n} window(s) x {window_seconds:.2f} s, "
            f"{len(windows)} windows (plus assembly)",
            f"estimated peak memory: {megabytes(peak):.0f} MB (probe peak {megabytes(max(after, before)):.0f} MB)",
            f"work folder (journal, finished windows): {job.folder}",
        ]
    )
    return {
        "windows": len(windows),
        "steps_per_window": steps,
        "step_seconds": phase["step"],
        "read_seconds": phase["read"],
        "operator_seconds": phase["operator"],
        "write_seconds": phase["write"],
        "window_seconds": window_seconds,
        "estimated_seconds": estimate,
        "estimated_peak_mb": megabytes(peak),
        "workers": n,
        "text": text,
    }


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

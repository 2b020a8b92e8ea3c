"""Threads: windows computed at once in worker threads, each window with one intra-op thread on the CPU (so the
output does not depend on the number of workers), each worker with its own pipeline copy."""

from __future__ import annotations

import copy
import inspect
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import torch

from ...io.rasters import open_raster
from ...pipelines.scheduling import strength_steps
from ..stopping import RunStopped, raise_if_stopped, step_callback
from .job import SceneJob
from .journal import save_window, window_file
from .window import is_neurop_pipeline, run_window


class WindowThreads:
    """One intra-op thread while windows run (CPU results then do not depend on the thread count); restored after."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.saved = torch.get_num_threads()

    def __enter__(self) -> int:
        if self.cpu:
            torch.set_num_threads(1)
            return self.saved
        return 1

    def __exit__(self, *exc: Any) -> None:
        if self.cpu:
            torch.set_num_threads(self.saved)


def worker_pipes(pipe: Any, workers: int) -> list[Any]:
    """One pipeline per worker thread: the same modules, an own scheduler (schedulers keep state between steps)."""
    if not is_neurop_pipeline(pipe):
        return [pipe]
    pipes = []
    for _ in range(workers):
        clone = copy.copy(pipe)
        object.__setattr__(clone, "scheduler", copy.deepcopy(pipe.scheduler))
        clone.set_progress_bar_config(disable=True)
        pipes.append(clone)
    return pipes


def on_cpu(pipe: Any) -> bool:
    if not is_neurop_pipeline(pipe):
        return True
    return pipe._execution_device.type == "cpu"


class _Halt:
    """Set when the run's stop flag is set or a worker failed (``is_set()``)."""

    def __init__(self, stop: Any):
        self.stop = stop
        self.failed = threading.Event()

    def is_set(self) -> bool:
        return self.failed.is_set() or (self.stop is not None and bool(self.stop.is_set()))


def window_steps(pipe: Any, job: SceneJob) -> int:
    """The denoising steps of one window (the pipeline's step callbacks: ``num_inference_steps`` cut by
    ``strength``, times the sampler's order); 1 for the prior alone or a pipeline that is not a NeurOp-Diff one (the
    window counts as one step).

    Args:
        pipe (`Any`): the pipeline.
        job (`SceneJob`): the scene and its pipeline arguments.
    """
    kwargs = job.pipe_kwargs
    if not is_neurop_pipeline(pipe) or kwargs.get("prior_only"):
        return 1
    steps = kwargs.get("num_inference_steps")
    if steps is None:  # the pipeline's own default
        steps = inspect.signature(type(pipe).__call__).parameters["num_inference_steps"].default
    steps = int(steps)
    strength = kwargs.get("strength")
    strength = float(pipe.config.get("default_strength", 1.0) if strength is None else strength)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps, device="cpu")
    total = len(scheduler.timesteps)
    if strength < 1.0:
        total = min(total, strength_steps(strength, steps) * scheduler.order)
    return max(1, total)


def compute_windows(
    pipe: Any,
    job: SceneJob,
    indices: list[int],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    stop: Any = None,
) -> float:
    """Compute and save the windows ``indices`` of ``job`` (skipping those already saved).

    Args:
        pipe (`Any`): the pipeline.
        job (`SceneJob`): from [`prepare_scene`].
        indices (`list[int]`): window indices of this process.
        workers (`int | None`, *optional*): windows computed at once in threads (CPU); ``None``: torch's intra-op
            thread count (one window per core, each single-threaded).
        progress (`Callable[[int], None] | None`, *optional*): called with the denoising steps just done: 1 after
            each step, and a window's remaining steps ([`window_steps`] in all) when it is saved.
        stop (`Any`, *optional*): a stop flag (``is_set()``, e.g. ``threading.Event``), checked after every
            denoising step and before every window: once set, every worker ends within its current step and
            [`~neurop_diff_diffusers.jobs.stopping.RunStopped`] is raised; the windows saved so far stay.

    Returns:
        `float`: seconds spent.

    Raises:
        RunStopped: ``stop`` was set.
    """
    start = time.perf_counter()
    windows = job.plan.windows()
    todo = [windows[i] for i in indices if not window_file(job.folder, i).is_file()]
    per_window = window_steps(pipe, job)
    lock = threading.Lock()  # the progress bar is updated from the worker threads
    halt = _Halt(stop)  # the stop flag, or a worker's error: the other workers end at their next step

    def advance(n: int) -> None:
        if progress is not None and n > 0:
            with lock:
                progress(n)

    with WindowThreads(on_cpu(pipe)) as threads:
        n = max(1, min(workers or threads, len(todo))) if on_cpu(pipe) else 1
        pipes = worker_pipes(pipe, n)

        def one(k: int) -> None:
            raise_if_stopped(halt)
            worker_pipe = pipes[k % len(pipes)]
            window = todo[k]
            counted = [0]

            def on_step() -> None:
                if counted[0] < per_window:
                    counted[0] += 1
                    advance(1)

            callback = step_callback(halt, on_step)
            with open_raster(job.src_path) as src:
                values = run_window(worker_pipe, src, job, window, callback)
            save_window(job.folder, window.index, values)
            advance(per_window - counted[0])

        if len(pipes) == 1:
            for k in range(len(todo)):
                one(k)
        else:
            # each worker thread takes windows k, k + n, ... with its own pipeline copy
            def lane(w: int) -> None:
                try:
                    for k in range(w, len(todo), n):
                        one(k)
                except BaseException:
                    halt.failed.set()
                    raise

            with ThreadPoolExecutor(max_workers=n) as pool:
                futures = [pool.submit(lane, w) for w in range(n)]
                wait(futures)
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:  # a worker's own error first, else the stop
                raise next((e for e in errors if not isinstance(e, RunStopped)), errors[0])
    return time.perf_counter() - start

"""Threads: windows computed at once in worker threads, each window with one intra-op thread on the CPU (so the
output does not depend on the number of workers), each worker with its own pipeline copy."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ...io.rasters import open_raster
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


def compute_windows(
    pipe: Any,
    job: SceneJob,
    indices: list[int],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Compute and save the windows ``indices`` of ``job`` (skipping those already saved).

    Args:
        pipe (`Any`): the pipeline.
        job (`SceneJob`): from [`prepare_scene`].
        indices (`list[int]`): window indices of this process.
        workers (`int | None`, *optional*): windows computed at once in threads (CPU); ``None``: torch's intra-op
            thread count (one window per core, each single-threaded).
        progress (`Callable[[int], None] | None`, *optional*): called with 1 after each window.

    Returns:
        `float`: seconds spent.
    """
    start = time.perf_counter()
    windows = job.plan.windows()
    todo = [windows[i] for i in indices if not window_file(job.folder, i).is_file()]
    with WindowThreads(on_cpu(pipe)) as threads:
        n = max(1, min(workers or threads, len(todo))) if on_cpu(pipe) else 1
        pipes = worker_pipes(pipe, n)

        def one(k: int) -> None:
            worker_pipe = pipes[k % len(pipes)]
            window = todo[k]
            with open_raster(job.src_path) as src:
                values = run_window(worker_pipe, src, job, window)
            save_window(job.folder, window.index, values)
            if progress is not None:
                progress(1)

        if len(pipes) == 1:
            for k in range(len(todo)):
                one(k)
        else:
            # each worker thread takes windows k, k + n, ... with its own pipeline copy
            def lane(w: int) -> None:
                for k in range(w, len(todo), n):
                    one(k)

            with ThreadPoolExecutor(max_workers=n) as pool:
                for future in [pool.submit(lane, w) for w in range(n)]:
                    future.result()
    return time.perf_counter() - start

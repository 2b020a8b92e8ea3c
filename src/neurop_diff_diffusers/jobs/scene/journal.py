"""The journal and the fingerprint: what lets a run resume from the windows of an earlier one, and only of one with
the same settings.

Each finished window's output is saved (atomically) in a work folder beside the output,
``.<name>.neurop-diff-scene/``, with ``journal.json`` recording the settings (model fingerprint, output size, steps,
sampler, dtype, seed, strength, prior only, samples, window, halo, value range, clip, input file). A journal of other
settings is never mixed in (``ValueError`` naming the differences; ``restart=True`` discards it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...utils import atomic_write, atomic_write_json
from .plan import ScenePlan, SceneWindow
from .statistics import ValueRange
from .window import is_neurop_pipeline

if TYPE_CHECKING:
    from .job import SceneJob

#: Version of the journal format; a journal of another version is never mixed in.
JOURNAL_VERSION = 1


def work_folder(dst_path: str | os.PathLike) -> Path:
    """The folder beside the output holding the journal and the finished windows: ``.<name>.neurop-diff-scene``."""
    dst = Path(dst_path)
    return dst.parent / f".{dst.name}.neurop-diff-scene"


def _public_config(config: Any) -> str:
    """A config as canonical JSON without diffusers' private entries (e.g. ``_use_default_values``, whose order
    changes from one process to the next)."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)


def model_fingerprint(pipe: Any) -> str:
    """A SHA-256 of the pipeline's weights and configuration (what makes two runs' windows interchangeable)."""
    digest = hashlib.sha256()
    if not is_neurop_pipeline(pipe):
        digest.update(f"{type(pipe).__module__}.{getattr(pipe, '__qualname__', type(pipe).__qualname__)}".encode())
        return digest.hexdigest()
    for name in ("unet", "neural_operator"):
        module = getattr(pipe, name)
        if module is None:
            digest.update(f"{name}:none".encode())
            continue
        digest.update(_public_config(module.config).encode())
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tensor.dtype).encode())
            # flattened first: a channels-last (N, C, 1, 1) weight counts as contiguous with a stride of C on its
            # last axis, which no byte view accepts; the bytes are those of the logical order, any memory format
            digest.update(tensor.detach().cpu().flatten().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(_public_config(pipe.config).encode())
    return digest.hexdigest()


def scene_settings(
    pipe: Any,
    src_path: Path,
    plan: ScenePlan,
    seed: int,
    value_range: ValueRange,
    model_bands: list[int],
    pipe_kwargs: dict[str, Any],
    clip: bool = False,
) -> dict[str, Any]:
    """Everything a window's output depends on: two runs mix windows only when these are equal.

    ``num_samples`` (the uncertainty map's samples) is its own entry, present only when set: a run with other
    samples, or with / without a map, is refused by name, and a journal of a run without a map written before the
    entry existed still resumes.
    """
    stat = src_path.stat()
    pipeline = {k: pipe_kwargs[k] for k in sorted(pipe_kwargs) if k != "num_samples"}
    samples = {} if pipe_kwargs.get("num_samples") is None else {"num_samples": pipe_kwargs["num_samples"]}
    scheduler = getattr(pipe, "scheduler", None)
    unet = getattr(pipe, "unet", None)
    return {
        "version": JOURNAL_VERSION,
        "input": {"path": str(src_path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "model": model_fingerprint(pipe),
        "sampler": None
        if scheduler is None
        else {
            "class": type(scheduler).__name__,
            "config": json.loads(_public_config(scheduler.config)),
        },
        "dtype": str(getattr(unet, "dtype", None)),
        "size": list(plan.size),
        "out_size": list(plan.out_size),
        "window": plan.window,
        "halo": plan.halo,
        "seed": seed,
        "value_range": str(value_range),
        "clip": clip,
        "model_bands": model_bands,
        "pipeline": pipeline,
        **samples,
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def window_file(folder: Path, index: int) -> Path:
    return folder / f"w{index:06d}.npy"


def save_window(folder: Path, index: int, array: np.ndarray) -> None:
    def write(temp: str) -> None:
        with open(temp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(window_file(folder, index), write)


def load_window(folder: Path, window: SceneWindow, planes: int) -> np.ndarray:
    """A saved window: ``planes`` = the bands, plus one for the uncertainty map when the run draws samples."""
    array = np.load(window_file(folder, window.index), allow_pickle=False)
    shape = (planes, *window.out_shape)
    if array.shape != shape or array.dtype != np.float32:
        raise ValueError(f"window file {window_file(folder, window.index)} is damaged; rerun with --restart")
    return array


def done_windows(folder: Path, windows: list[SceneWindow]) -> set[int]:
    """Indices of the windows whose output is saved in ``folder``."""
    return {w.index for w in windows if window_file(folder, w.index).is_file()}


def open_journal(job: SceneJob, settings: dict[str, Any], restart: bool, is_main: bool, barrier: Callable) -> None:
    """Validate (all processes) and create (main process) the journal; a journal of other settings is refused."""
    journal = job.folder / "journal.json"
    old = None
    if journal.is_file():
        try:
            old = json.loads(journal.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
    stale = old is not None and old.get("settings") != settings
    if stale and not restart:
        diff = ", ".join(_differences(old.get("settings", {}), settings)) or "format"
        raise ValueError(
            f"`{job.folder}` holds the windows of a run of `{job.dst_path}` with other settings ({diff}); "
            "they are never mixed in: pass restart=True (CLI: --restart) to discard them and start again."
        )
    barrier()
    if is_main:
        if stale or (restart and job.folder.exists()):
            shutil.rmtree(job.folder, ignore_errors=True)
        if not journal.is_file():
            job.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(journal, {"settings": settings, "windows": len(job.plan.windows())})
    barrier()

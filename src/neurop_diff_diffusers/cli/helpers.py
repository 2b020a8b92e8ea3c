"""Helpers shared by the ``neurop-diff`` commands: one-line errors, the device, the loaded model's flags.

Example:
    >>> from neurop_diff_diffusers.cli.options import build_parser
    >>> job_options(build_parser().parse_args(["upscale", "a.tif", "--scale", "2", "--window", "64"])).window
    64
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from ..file_safety import printable
from ..jobs.upscale_file import CLIError, JobOptions, one_line


def report_error(message: str) -> None:
    """Print ``neurop-diff: error: MESSAGE`` on stderr: one line, a newline in a file name escaped, never a second."""
    print(f"neurop-diff: error: {printable(message)}", file=sys.stderr)


def check_device_flag(device: str) -> str:
    """``--device``, refused in one line when it is not available here.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    """
    from ..utils import check_device

    try:
        check_device(device, name="--device")
    except ValueError as err:
        raise CLIError(one_line(err)) from err
    return device


def warn_dtype(dtype: str, device: str) -> None:
    """One line on stderr, before any work, when ``--dtype bfloat16`` is emulated on this CPU (4.5x-72x slower)."""
    from ..runtime.hardware import slow_precision_warning

    message = slow_precision_warning(dtype, device)
    if message is not None:
        print(f"neurop-diff: warning: --dtype {message.replace('use dtype', 'use --dtype')}", file=sys.stderr)


def apply_optimizations(pipe: Any, args: argparse.Namespace) -> None:
    """``--dtype``, ``--channels-last`` and ``--scheduler`` applied to the loaded model."""
    from ..runtime.hardware import SlowPrecisionWarning
    from ..runtime.optimization import optimize_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # said once already, before any work
        optimize_pipeline(pipe, dtype=args.dtype, channels_last=args.channels_last, scheduler=args.scheduler)


def check_model_flags(pipe: Any, args: argparse.Namespace) -> None:
    """The flags that depend on the loaded model."""
    factor = int(getattr(pipe, "downsampling_factor", 1))
    if args.tile_size % factor:
        raise CLIError(
            f"--tile-size must be a multiple of the model's downsampling factor {factor}, got {args.tile_size}"
        )
    scheduler = getattr(pipe, "scheduler", None)
    limit = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if isinstance(limit, int) and args.steps > limit:
        raise CLIError(f"--steps must be in [1, {limit}] for this model, got {args.steps}")


def job_options(args: argparse.Namespace) -> JobOptions:
    """The [`~neurop_diff_diffusers.jobs.upscale_file.JobOptions`] of ``upscale``'s per-file flags: the same for one
    file and for every file of ``--input-dir``.

    Args:
        args: the parsed ``upscale`` flags (already checked by
            [`~neurop_diff_diffusers.cli.options.check_upscale_flags`]).

    Raises:
        CLIError: a bad ``--value-range``.
    """
    from ..jobs.scene import parse_value_range

    try:
        parse_value_range(args.value_range)
    except ValueError as err:
        raise CLIError(one_line(err).replace("`value_range`", "--value-range")) from err
    return JobOptions(
        steps=args.steps,
        strength=args.strength,
        seed=args.seed,
        prior_only=args.prior_only,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        max_pixels=args.max_pixels,
        num_samples=args.uncertainty,
        data_consistency_steps=args.data_consistency,
        window=args.window,
        halo=args.halo,
        value_range=args.value_range,
        clip=args.clip,
        workers=args.workers,
        restart=args.restart,
    )


def is_main_process() -> bool:
    """Whether this is the main process (always, without ``accelerate launch``)."""
    return os.environ.get("RANK", "0") == "0"


def batch_device(device: str) -> str:
    """``--device`` of a batch; starts Accelerate's process state (gloo between CPU processes, NCCL between GPUs).

    ``cuda`` means each process's own GPU when several processes run.
    """
    from accelerate import PartialState

    state = PartialState(cpu=device.startswith("cpu"))
    if device == "cuda" and state.num_processes > 1:
        device = f"cuda:{state.local_process_index}"
    return check_device_flag(device)


def scene_device(device: str) -> str:
    """``--device``; under ``accelerate launch`` (several processes) Accelerate's process state is started first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return batch_device(device)
    return check_device_flag(device)

"""Helpers shared by the ``neurop-diff`` commands: one-line errors, the device, the loaded model's flags.

Example:
    >>> from neurop_diff_diffusers.cli.options import build_parser
    >>> job_options(build_parser().parse_args(["upscale", "a.tif", "--scale", "2", "--window", "64"])).window
    64
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
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


class SignalStop(threading.Event):
    """The stop flag of a command's run, set by SIGINT or SIGTERM ([`stop_on_signals`]); ``signum`` is the signal.

    Example:
        >>> flag = SignalStop()
        >>> flag.is_set(), flag.exit_code
        (False, 130)
    """

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None

    @property
    def exit_code(self) -> int:
        """``128 + signal``: 130 after SIGINT (Ctrl-C), 143 after SIGTERM."""
        return 128 + (self.signum or signal.SIGINT)


#: Said once on the first SIGINT / SIGTERM.
STOPPING = (
    "neurop-diff: stopping after the denoising steps in flight (finished windows are kept: the same command "
    "resumes); Ctrl-C again to quit at once"
)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[SignalStop]:
    """While inside, SIGINT (Ctrl-C) and SIGTERM set the yielded [`SignalStop`] instead of raising: the run passed it
    ends within the denoising steps in flight, keeps its finished windows and raises
    [`~neurop_diff_diffusers.jobs.stopping.RunStopped`]. A second signal exits the process at once (``128 + signal``,
    nothing more computed or cleaned up; the windows saved so far stay). The previous handlers come back on leaving.
    Outside the main thread nothing is changed (the flag is never set).
    """
    flag = SignalStop()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            print("neurop-diff: stopped at once", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        flag.signum = signum
        flag.set()
        print(STOPPING, file=sys.stderr, flush=True)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def stopped_message(src: Any, dst: Any, geo: bool) -> str:
    """The line said when a run was stopped: what was kept and how to resume."""
    if not geo:
        return f"stopped: {src} -> {dst} was not written"
    from ..jobs.scene import work_folder

    return (
        f"stopped: {dst} was not written; the finished windows of {src} are kept in {work_folder(dst)}: run the same "
        "command to resume"
    )

"""``neurop-diff upscale --input-dir IN --out-dir OUT``: every image of a folder, resumable, in any number of
processes (``accelerate launch``); the manifest, the lock and the split between processes are
[`~neurop_diff_diffusers.jobs.batch`].

Example:
    neurop-diff upscale --input-dir scenes/ --out-dir out/ --scale 4
    accelerate launch --multi_gpu --num_processes 2 -m neurop_diff_diffusers.cli upscale --input-dir scenes/ \\
        --out-dir out/ --scale 2
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from ..jobs.stopping import RunStopped
from ..jobs.upscale_file import CLIError, load_job_pipeline, one_line, plan_file, print_warning
from .helpers import (
    apply_optimizations,
    batch_device,
    check_model_flags,
    is_main_process,
    job_options,
    report_error,
    stop_on_signals,
)


def check_batch_flags(args: argparse.Namespace) -> None:
    """The flags of ``upscale --input-dir`` (torch-free).

    Args:
        args: the parsed ``upscale`` flags.

    Raises:
        CLIError: naming the flag.
    """
    if args.inputs:
        raise CLIError("give either INPUT files or --input-dir DIR, not both")
    if args.output is not None:
        raise CLIError("-o/--output takes one input; with --input-dir use --out-dir DIR")
    if args.out_dir is None:
        raise CLIError("--input-dir needs --out-dir DIR (where the outputs and manifest.jsonl go)")
    if not Path(args.input_dir).is_dir():
        raise CLIError(f"--input-dir {args.input_dir} is not a folder")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise CLIError(f"--out-dir {args.out_dir} exists and is not a folder")
    inputs, outputs = Path(args.input_dir).resolve(), args.out_dir.resolve()
    if inputs == outputs:
        raise CLIError(
            f"--out-dir {args.out_dir} is --input-dir itself: its outputs would be read as inputs by the next run; "
            "choose another --out-dir (a sub-folder works)"
        )
    if inputs.is_relative_to(outputs):
        raise CLIError(
            f"--input-dir {args.input_dir} lies inside --out-dir {args.out_dir}, whose files are never inputs; "
            "choose another --out-dir"
        )
    from ..jobs.batch import MANIFEST_NAME, check_glob, check_manifest

    try:
        check_glob(args.glob)
        check_manifest(args.out_dir / MANIFEST_NAME)
    except ValueError as err:
        raise CLIError(one_line(err)) from err


def cmd_upscale_dir(args: argparse.Namespace, scale: float | None, size: tuple[int, int] | None) -> int:
    """``neurop-diff upscale --input-dir IN --out-dir OUT``: every image of a folder, resumable, in any number of
    processes (``accelerate launch``); one ``manifest.jsonl`` line per input.

    Every file is planned and run as a single file with the same flags is (every per-file flag applies, see
    [`~neurop_diff_diffusers.jobs.upscale_file.JobOptions`]). Outputs are named as single files name them
    (``OUT/<sub-folder>/<stem>_x<scale><suffix>``). An output that exists and decodes at the expected size is kept (a
    re-run resumes; ``--overwrite`` redoes it). Every file uses the same ``--seed``, and on the CPU each process
    computes with one thread, so the files do not depend on how the inputs were split between processes: bit for bit
    the outputs of one process.

    Args:
        args: the parsed ``upscale`` flags.
        scale: ``--scale`` (or ``None`` with ``size``).
        size: ``--size`` parsed (or ``None``).
    """
    from ..jobs.batch import FolderJob, batch_settings, find_inputs

    check_batch_flags(args)
    options = job_options(args)
    input_dir, out_dir = Path(args.input_dir), args.out_dir
    with warnings.catch_warnings(record=True) as caught:  # links out of the folder, skipped: one line
        warnings.simplefilter("always", UserWarning)
        sources = find_inputs(input_dir, args.recursive, args.glob, exclude=out_dir)
    for warning in caught if is_main_process() else ():
        print_warning(str(warning.message))
    if not sources:
        raise CLIError(f"no input files in {input_dir} (glob {args.glob or 'PNG / JPEG / TIFF'})")
    settings = batch_settings(args.model, scale, size, options, args.dtype, args.scheduler)
    folder = FolderJob(input_dir, out_dir, scale, size, options, args.overwrite, settings)
    planned = folder.planned(sources)
    device = batch_device(args.device)
    import torch

    threads = torch.get_num_threads()
    if device.startswith("cpu"):
        torch.set_num_threads(1)  # CPU kernels split reductions by thread count: one thread, the same bits anywhere
    try:
        if args.dry_run:
            return _dry_run(args, folder, sources, device)
        return _upscale_dir(args, folder, sources, planned, device)
    finally:
        torch.set_num_threads(threads)


def _load(args: argparse.Namespace, device: str) -> Any:
    """The model of a batch, in every process (a bad ``--model`` stops them all alike), checked and optimized."""
    pipe = load_job_pipeline(args.model, device)
    pipe.set_progress_bar_config(disable=True)
    check_model_flags(pipe, args)
    apply_optimizations(pipe, args)
    return pipe


def _dry_run(args: argparse.Namespace, folder: Any, sources: list[Path], device: str) -> int:
    """``--dry-run`` with ``--input-dir``: each file's plan, as for single files; nothing is written (no folder, no
    manifest)."""
    from accelerate import PartialState

    from ..jobs.upscale_file import InputFailed, describe_job, file_identities

    if not PartialState().is_main_process:
        return 0
    pipe = _load(args, device)
    inputs, failed = file_identities(sources), 0
    for src in sources:
        try:
            job = plan_file(src, folder.output(src), folder.scale, folder.size, folder.options, True, inputs)
            print(describe_job(pipe, job))
        except (InputFailed, ValueError) as err:
            report_error(str(err) if isinstance(err, InputFailed) else f"{src}: {one_line(err)}")
            failed += 1
    return 2 if failed else 0


def _upscale_dir(
    args: argparse.Namespace, folder: Any, sources: list[Path], planned: dict[str, str], device: str
) -> int:
    """[`cmd_upscale_dir`] once the inputs and the device are known: the output folder claimed by the main process
    (locked against a second run, its manifest and earlier settings checked), then the model in every process, then
    the files."""
    from accelerate import PartialState

    from ..jobs.batch import claim_out_dir, on_main_process_first, unlock_folder, upscale_folder

    held: list[int | None] = []  # the main process's lock, held until this run ends
    problem = on_main_process_first(
        lambda: held.append(claim_out_dir(folder.out_dir, planned, folder.settings, folder.overwrite))
    )
    if problem is not None:
        if PartialState().is_main_process:
            raise CLIError(problem)
        return 2
    try:
        pipe = _load(args, device)
        with stop_on_signals() as stop:  # SIGINT / SIGTERM: ends within the denoising steps in flight
            try:
                records = upscale_folder(pipe, sources, folder, report_error, stop=stop)
            except RunStopped:
                report_error(f"stopped; the files done are in {folder.manifest}: run the same command to resume")
                return stop.exit_code
    finally:
        for handle in held:
            unlock_folder(folder.out_dir, handle)
    failed = sum(r["status"] != "ok" for r in records)
    resumed = sum(bool(r.get("resumed")) for r in records)
    if PartialState().is_main_process:
        print(
            f"neurop-diff: {len(records)} inputs: {len(records) - failed - resumed} written, {resumed} already "
            f"complete, {failed} failed; manifest {folder.manifest}",
            file=sys.stderr if failed else sys.stdout,
        )
    return 2 if failed else 0

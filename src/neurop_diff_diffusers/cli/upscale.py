"""``neurop-diff upscale INPUT...``: one or more image files, each planned and checked before the model loads.

Example:
    neurop-diff upscale scene.png --scale 3.7 --model preset:tiny --steps 20
    neurop-diff upscale scene.tif --scale 2.5            # a GeoTIFF keeps its georeferencing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..file_safety import printable
from ..jobs.stopping import RunStopped
from ..jobs.upscale_file import (
    CLIError,
    InputFailed,
    describe_job,
    file_identities,
    load_job_pipeline,
    one_line,
    os_reason,
    output_path,
    plan_file,
    run_job,
)
from .batch import cmd_upscale_dir
from .helpers import (
    apply_optimizations,
    check_model_flags,
    is_main_process,
    job_options,
    report_error,
    scene_device,
    stop_on_signals,
    stopped_message,
    warn_dtype,
)
from .options import check_upscale_flags, parse_size


def cmd_upscale(args: argparse.Namespace) -> int:
    """``neurop-diff upscale``: validate everything, then load the model once and upscale each input.

    Every input is planned first ([`~neurop_diff_diffusers.jobs.upscale_file.plan_file`]: its checks, its outputs
    and their checks, the input decoded), before the model loads. A problem with one input (unreadable, damaged,
    output not writable, ...) is reported on one line and that input skipped; the others are still written, and the
    exit code is 2 if any failed. SIGINT (Ctrl-C) or SIGTERM ends the run within the denoising steps in flight: no
    output is written, a GeoTIFF's finished windows are kept (the same command resumes), exit code 130 / 143; a
    second signal quits at once.

    Args:
        args: the parsed ``upscale`` flags.
    """
    size = parse_size(args.size) if args.size is not None else None
    check_upscale_flags(args)
    warn_dtype(args.dtype, args.device)
    if args.input_dir is not None:
        return cmd_upscale_dir(args, args.scale, size)
    if not args.inputs:
        raise CLIError("give INPUT files or --input-dir DIR")
    if args.recursive or args.glob is not None:
        raise CLIError("--recursive and --glob go with --input-dir DIR")
    options = job_options(args)
    failed = 0
    jobs = []
    claimed: dict[Path, Path] = {}
    inputs = file_identities(Path(raw) for raw in args.inputs)
    for raw in args.inputs:
        src = Path(raw)
        dst = output_path(src, args.scale, size, args.output, args.out_dir)
        try:
            jobs.append(plan_file(src, dst, args.scale, size, options, args.overwrite, inputs, claimed))
        except InputFailed as err:
            report_error(str(err))
            failed += 1
    if not jobs:
        return 2

    # The device and the model, once; then each input.
    pipe = load_job_pipeline(args.model, scene_device(args.device))
    check_model_flags(pipe, args)
    apply_optimizations(pipe, args)
    if args.dry_run:
        for job in jobs:
            print(describe_job(pipe, job))
        return 2 if failed else 0
    from ..jobs.scene import tqdm_progress

    with stop_on_signals() as stop:  # SIGINT / SIGTERM: the run ends within the denoising steps in flight
        for job in jobs:
            src, dst, (height, width) = job.src, job.dst, job.out_size
            try:
                run_job(pipe, job, args.overwrite, progress=tqdm_progress, distributed=True, stop=stop)
            except RunStopped:
                report_error(stopped_message(src, dst, job.geo))
                return stop.exit_code
            except InputFailed as err:
                report_error(str(err))
            except FileExistsError:
                report_error(f"{dst} appeared while {src} was being upscaled; it was not replaced (pass --overwrite)")
            except OSError as err:
                report_error(f"{src} -> {dst}: {os_reason(err) if err.errno else one_line(err)}")
            except ValueError as err:
                report_error(f"{src}: {one_line(err)}")
            else:
                if is_main_process():
                    print(f"{printable(src)} -> {printable(dst)} ({height}x{width}, height x width)")
                continue
            failed += 1
    if failed and len(args.inputs) > 1:
        print(f"neurop-diff: {failed} of {len(args.inputs)} inputs failed; the others were written", file=sys.stderr)
    return 2 if failed else 0

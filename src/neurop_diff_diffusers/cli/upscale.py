"""``neurop-diff upscale INPUT...``: one or more image files, each planned and checked before the model loads.

Example:
    neurop-diff upscale scene.png --scale 3.7 --model preset:tiny --steps 20
    neurop-diff upscale scene.tif --scale 2.5            # a GeoTIFF keeps its georeferencing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..jobs.upscale_file import (
    IMAGE_SUFFIXES,
    CLIError,
    InputFailed,
    check_input_file,
    check_not_an_input,
    check_output_location,
    file_identities,
    load_job_pipeline,
    one_line,
    os_reason,
    output_path,
    prepare_job,
    run_job,
    uncertainty_path,
)
from .batch import cmd_upscale_dir
from .helpers import (
    apply_optimizations,
    check_model_flags,
    is_main_process,
    pipe_kwargs,
    report_error,
    scene_device,
    warn_dtype,
)
from .options import check_upscale_flags, parse_size


def cmd_upscale(args: argparse.Namespace) -> int:
    """``neurop-diff upscale``: validate everything, then load the model once and upscale each input.

    A problem with one input (unreadable, damaged, output not writable, ...) is reported on one line and that input
    skipped; the others are still written, and the exit code is 2 if any failed.
    """
    # 1. Flags and file-system checks, torch-free.
    size = parse_size(args.size) if args.size is not None else None
    scale = args.scale
    check_upscale_flags(args)
    warn_dtype(args.dtype, args.device)
    if args.input_dir is not None:
        return cmd_upscale_dir(args, scale, size)
    if not args.inputs:
        raise CLIError("give INPUT files or --input-dir DIR")
    if args.recursive or args.glob is not None:
        raise CLIError("--recursive and --glob go with --input-dir DIR")
    failed = 0
    planned: list[tuple[Path, Path]] = []
    targets: dict[Path, Path] = {}
    inputs = file_identities(Path(raw) for raw in args.inputs)
    for raw in args.inputs:
        src = Path(raw)
        dst = output_path(src, scale, size, args.output, args.out_dir)
        try:
            check_input_file(src)
            written = [dst] if args.uncertainty is None else [dst, uncertainty_path(dst)]  # the map too
            for path in written:
                check_not_an_input(src, path, inputs)
                check_output_location(path, args.overwrite)
            if dst.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputFailed(f"unsupported output {dst}: use PNG, JPEG or TIFF ({', '.join(IMAGE_SUFFIXES)})")
            keys = [path.absolute().resolve() for path in written]
            for path, key in zip(written, keys):
                if key in targets:
                    raise InputFailed(f"{src}: its output {path} is also an output of {targets[key]}")
            targets.update((key, src) for key in keys)
        except InputFailed as err:
            report_error(str(err))
            failed += 1
            continue
        planned.append((src, dst))

    # 2. The device, then each input decoded and validated, before the model loads.
    options = scene_options(args)
    device = scene_device(args.device) if planned else args.device
    jobs = []
    for src, dst in planned:
        try:
            jobs.append(prepare_job(src, dst, scale, size, args.max_pixels))
        except InputFailed as err:
            report_error(str(err))
            failed += 1
    if not jobs:
        return 2

    # 3. The model, once; then each input.
    pipe = load_job_pipeline(args.model, device)
    check_model_flags(pipe, args)
    apply_optimizations(pipe, args)
    common = pipe_kwargs(args)
    if args.dry_run:
        return dry_run_plans(pipe, jobs, args, common, options) or (2 if failed else 0)
    for job in jobs:
        src, dst, _, out_size = job
        try:
            run_job(pipe, job, args.seed, args.overwrite, {**common, **options} if job.geo else common)
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
                print(f"{src} -> {dst} ({out_size[0]}x{out_size[1]}, height x width)")
            continue
        failed += 1
    if failed and len(args.inputs) > 1:
        print(f"neurop-diff: {failed} of {len(args.inputs)} inputs failed; the others were written", file=sys.stderr)
    return 2 if failed else 0


def scene_options(args: argparse.Namespace) -> dict[str, Any]:
    """The scene engine's options of a GeoTIFF input (window, halo, value range, resume, progress bar, processes)."""
    from ..jobs.scene import parse_value_range, tqdm_progress

    try:
        value_range = parse_value_range(args.value_range)
    except ValueError as err:
        raise CLIError(one_line(err).replace("`value_range`", "--value-range")) from err
    return {
        "window": args.window,
        "halo": args.halo,
        "value_range": value_range,
        "restart": args.restart,
        "workers": args.workers,
        "distributed": True,
        "progress": tqdm_progress,
    }


def dry_run_plans(
    pipe: Any, jobs: list[Any], args: argparse.Namespace, common: dict[str, Any], options: dict[str, Any]
) -> int:
    """``--dry-run``: the plan of each input (windows, memory, time from one window); nothing is written."""
    from ..jobs.scene import dry_run, prepare_scene

    for job in jobs:
        src, dst, geo, out_size = job
        if not geo:
            spread = "" if args.uncertainty is None else f"; uncertainty map {uncertainty_path(dst)}"
            print(f"{src} -> {dst} ({out_size[0]}x{out_size[1]}, height x width): one image, no windows{spread}")
            continue
        scene_job = prepare_scene(
            src,
            dst,
            output_size=out_size,
            window=options["window"],
            halo=options["halo"],
            value_range=options["value_range"],
            seed=args.seed,
            **common,
        )
        print(f"{src} -> {dst}\n{dry_run(pipe, scene_job, workers=options['workers'])['text']}")
    return 0

"""The evaluation's command line: ``training/evaluate.py`` and ``neurop-diff evaluate``.

It checks the evaluation's settings once, before anything is loaded
([`~neurop_diff_diffusers.evaluation.settings.EvaluationSettings`]), selects the images (a dataset split, a recorded
list), loads the pipelines ([`~neurop_diff_diffusers.runtime.loading`]), runs
[`~neurop_diff_diffusers.evaluation.run.evaluate_with_settings`] and writes the report
([`~neurop_diff_diffusers.evaluation.report.save_results`]).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation.methods import METHODS
from ..evaluation.report import results_paths, results_to_markdown, save_results
from ..evaluation.run import LazyRow, evaluate_with_settings
from ..evaluation.settings import DEFAULT_SCALES, EvaluationSettings, spread_positions
from ..file_safety import MAX_JSON_BYTES, loads_bounded, printable, read_text_no_follow
from ..metrics.quality import PROTOCOLS
from ..pipelines.scheduling import SCHEDULERS
from ..runtime.loading import load_pipeline
from ..runtime.optimization import AUTO_DTYPE, DTYPES, optimize_pipeline, resolve_dtype


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `training/evaluate.py` (and `neurop-diff evaluate`).

    Args:
        prog (`str`, *optional*): the program name shown in the help.

    Returns:
        `argparse.ArgumentParser`.

    Example:
        >>> from neurop_diff_diffusers.cli.evaluate import build_parser
        >>> args = build_parser().parse_args(["--pipeline", "preset:tiny", "--data_dir", "img", "--output_dir", "out"])
        >>> args.scales, args.split, args.num_inference_steps
        ([2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0], 'test', 50)
    """
    from ..data import add_split_arguments

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate NeurOp-Diff, its neural-operator prior, bicubic and (optionally) SR3 at several scales "
        "under the paper's protocol; writes results.json, results.md and one figure per scale.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--pipeline",
        default=None,
        help="a folder, a hub id, or preset:tiny / preset:paper (default: the embedded model, as `upscale`)",
    )
    parser.add_argument(
        "--sr3_pipeline", default=None, help="an SR3 pipeline (UNet trained on the bicubic prior): adds the sr3 method"
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_name", default=None, help="ucmerced / aid / rsscn7 or a hub dataset id")
    source.add_argument("--data_dir", default=None, help="a local folder of images, one sub-folder per class")
    source.add_argument(
        "--input",
        default=None,
        help="no-reference mode: one image or GeoTIFF (no HR) taken as the LR; each method upscales it and is "
        "scored by the trust metrics that need no HR (LR agreement, spectral angle, shift, synthesis)",
    )
    data.add_argument("--split", default="test", choices=("train", "test", "all"), help="which part to evaluate")
    add_split_arguments(data, "--data_dir")
    data.add_argument(
        "--images_from",
        default=None,
        help="replay an evaluation's image list: a results.json of an earlier run, or a text file with one file "
        "name (or index) per line; overrides --split",
    )
    data.add_argument("--max_images", type=int, default=None, help="evaluate only the first N images")
    data.add_argument("--resolution", type=int, default=256, help="HR side (the paper: 256)")
    data.add_argument("--cache_dir", default=None, help="datasets cache folder")
    run = parser.add_argument_group("evaluation")
    run.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), help="any numbers > 1")
    run.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="default: all available")
    run.add_argument("--num_inference_steps", type=int, default=50, help="denoising steps")
    run.add_argument(
        "--strength",
        type=float,
        default=None,
        help="fraction of the steps run, from the diffused prior (1.0, the paper: from pure noise; default: the "
        "pipeline's default_strength)",
    )
    run.add_argument(
        "--eta", type=float, default=None, help="DDIM's eta in [0, 1] (default: the pipeline's default_eta)"
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the per-image noise")
    run.add_argument(
        "--protocol",
        default="rgb",
        choices=sorted(PROTOCOLS),
        help="rgb: the paper's (RGB, no shave); y: BT.601 Y channel, border shave ceil(scale)",
    )
    run.add_argument("--no_lpips", action="store_true", help="skip LPIPS even when its weights are available")
    run.add_argument(
        "--no_niqe",
        action="store_true",
        help="skip NIQE (otherwise computed when scikit-video is installed and --resolution is at least 192)",
    )
    run.add_argument("--chunk_size", type=int, default=None, help="output pixels per chunk of the neural operator")
    run.add_argument(
        "--data_consistency_steps",
        type=int,
        default=None,
        help="back-projection iterations of the diffusion outputs onto their LR (0: off, the paper; default: the "
        "pipeline's default_data_consistency_steps; see the README, 'Can I trust the detail?')",
    )
    run.add_argument(
        "--figure_image",
        type=int,
        nargs="+",
        default=None,
        help="which evaluated images (positions) the figures show, one row each (default: 3 spread over the "
        "selection, i.e. of different classes)",
    )
    run.add_argument("--no_figures", action="store_true", help="write no figures")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    run.add_argument("--fp16", action="store_true", help="run the models in float16 (GPU); same as --dtype float16")
    run.add_argument(
        "--dtype",
        default=None,
        choices=(AUTO_DTYPE, *DTYPES),
        help="the UNet's precision (default: the pipeline's; auto: the fastest on the device)",
    )
    run.add_argument("--channels_last", action="store_true", help="channels-last UNet weights (faster kernels)")
    run.add_argument("--scheduler", default=None, choices=SCHEDULERS, help="the sampler (default: the pipeline's own)")
    parser.add_argument("--output_dir", required=True, help="where results.json, results.md and figures go")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def _read_image_list(path: str) -> list[Any]:
    """``--images_from``: a results.json (its ``images``), a JSON list, or a text file of one name or index a line,
    read like every file from outside: within the JSON budgets, never through a link."""
    file = Path(path)
    text = read_text_no_follow(file, MAX_JSON_BYTES, "`images_from`")
    if file.suffix == ".json":
        data = loads_bounded(text, f"`images_from` {printable(path)!r}")
        entries = data.get("images") if isinstance(data, dict) else data
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"`images_from` {path!r} has no non-empty 'images' list.")
        return entries
    return [int(e) if e.isdigit() else e for e in (line.strip() for line in text.splitlines()) if e]


def _select_images(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The evaluated rows of the dataset and a description of the selection (for the report)."""
    from ..data import load_full_dataset, split_parts, split_to_indices, unique_file_names

    source = args.data_dir if args.data_dir is not None else args.dataset_name
    full = load_full_dataset(source, cache_dir=args.cache_dir)
    description: dict[str, Any] = {
        "data": {"dataset_name": args.dataset_name, "data_dir": args.data_dir, "n_dataset": len(full)}
    }
    if args.images_from is not None:
        indices = split_to_indices(full, _read_image_list(args.images_from))
        description["data"]["split"] = {"images_from": str(args.images_from)}
    elif args.split == "all":
        indices = list(range(len(full)))
        description["data"]["split"] = {"split": "all"}
    else:
        parts, chosen = split_parts(
            full,
            args.split_method,
            data_dir=args.data_dir,
            test_fraction=args.test_fraction,
            seed=args.split_seed,
            split_file=args.split_file,
        )
        indices = parts[args.split]
        description["data"]["split"] = {"split": args.split, **chosen}
    if not indices:
        raise ValueError(_empty_selection_message(args, description["data"].get("split", {})))
    if args.max_images is not None:
        indices = indices[: args.max_images]
    names = unique_file_names(full)
    # Keys that replay the selection: file names when the dataset has distinct ones, else indices into the whole
    # dataset (not positions in the selection).
    items = [(names[i] if names is not None else i, LazyRow(full, i)) for i in indices]
    description["data"]["indices"] = indices
    return items, description


def _empty_selection_message(args: argparse.Namespace, chosen: dict[str, Any]) -> str:
    """Why the selection is empty and how to choose one (one line)."""
    message = f"The selection (`split`={args.split!r}) is empty"
    if args.images_from is not None:
        return message + f": no entry of `images_from` {args.images_from!r} names an image of the dataset."
    if "ucmerced" in str(chosen.get("method", "")):
        source = args.data_dir or args.dataset_name
        return (
            message + f": `split_method` {args.split_method!r} applied the UCMerced convention (files <class>00-27 "
            f"train, 28-34 test) to {source!r}, whose file numbers do not fall in that part. Choose another split: "
            "`--split_method fraction` (a stratified random split, `--test_fraction`), `--split all`, "
            "`--split_file` or `--images_from`."
        )
    return message + ": choose another `--split`, `--split_method`, `--split_file` or `--images_from`."


def _check_args(args: argparse.Namespace) -> EvaluationSettings:
    """Validation of the command line before any work (one ValueError naming the argument): the evaluation's
    settings, checked once here and passed on, then what only the command line has (files, device, precision)."""
    settings = EvaluationSettings(
        scales=args.scales,
        methods=args.methods,
        num_inference_steps=args.num_inference_steps,
        strength=args.strength,
        eta=args.eta,
        seed=args.seed,
        resolution=args.resolution,
        protocol=args.protocol,
        max_images=args.max_images,
        chunk_size=args.chunk_size,
        figure_image=None if args.no_figures else args.figure_image,
        data_consistency_steps=args.data_consistency_steps,
        compute_lpips=not args.no_lpips,
        compute_niqe=not args.no_niqe,
    )
    if not 0.0 < args.test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {args.test_fraction}.")
    if args.methods is not None and "sr3" in args.methods and args.sr3_pipeline is None:
        raise ValueError("`methods` includes sr3 but no `sr3_pipeline` is given.")
    if args.input is not None and not Path(args.input).is_file():
        raise ValueError(f"`input` must be an existing image file, got {args.input!r}.")
    if args.input is not None and args.methods is not None and "sr3" in args.methods:
        raise ValueError("`methods` sr3 is not available with `input` (no-reference mode).")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"`data_dir` must be an existing folder, got {args.data_dir!r}.")
    for flag in ("images_from", "split_file"):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_file():
            raise ValueError(f"`{flag}` must be an existing file, got {value!r}.")
    results_paths(args.output_dir, settings.scales)  # the folder and every file it will get, before any work
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise ValueError(f"`device` is not a torch device: {args.device!r} ({error}).") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"`device`={args.device!r} but CUDA is not available.")
    if args.fp16 and args.dtype not in (None, "float16"):
        raise ValueError(f"`fp16` and `dtype`={args.dtype!r} contradict each other; pass one of them.")
    on_cpu = args.device is None and not torch.cuda.is_available() or (args.device or "").startswith("cpu")
    if (args.fp16 or args.dtype == "float16") and on_cpu:
        raise ValueError(
            "`fp16` / `dtype` float16 needs a CUDA device (float16 on the CPU is slow and inaccurate; use `dtype` "
            "bfloat16 there)."
        )
    return settings


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """Run an evaluation from command-line arguments, write the results, print the Markdown table.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments (default: `sys.argv[1:]`).
        prog (`str`, *optional*): the program name for the help and the recorded command.

    Returns:
        `dict`: the report of [`evaluate`] (with `"paths"`: the files written).

    Example:
        >>> from neurop_diff_diffusers.cli.evaluate import main
        >>> main(["--pipeline", "preset:tiny", "--data_dir", "../shared/data/UCMerced_LandUse",
        ...       "--max_images", "3", "--scales", "2", "4", "--output_dir", "/tmp/eval"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    settings = _check_args(args)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype("float16" if args.fp16 else args.dtype, device, "dtype")

    if args.input is not None:
        return _main_no_reference(args, settings, argv, prog, device, dtype)
    images, selection = _select_images(args)
    if args.figure_image is None and not args.no_figures:  # the default: a few images that differ
        settings = dataclasses.replace(settings, figure_image=spread_positions(len(images)))
    speed = {"channels_last": args.channels_last, "scheduler": args.scheduler}
    pipeline = optimize_pipeline(load_pipeline(args.pipeline, device=device, torch_dtype=dtype), **speed)
    sr3 = None
    if args.sr3_pipeline:
        sr3 = optimize_pipeline(load_pipeline(args.sr3_pipeline, device=device, torch_dtype=dtype), **speed)
    command = _command(argv, prog)
    selection["cwd"] = os.getcwd()
    selection["pipeline"] = args.pipeline
    selection["sr3_pipeline"] = args.sr3_pipeline
    report = evaluate_with_settings(
        pipeline,
        images,
        settings,
        sr3_pipeline=sr3,
        progress=not args.no_progress,
        command=command,
        extra=selection,
    )
    paths = save_results(report, args.output_dir)
    print(results_to_markdown(report))
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report


def _command(argv: list[str], prog: str | None) -> str:
    program = prog or (sys.argv[0] if sys.argv and sys.argv[0] else "evaluate")
    program = f"python {shlex.quote(program)}" if program.endswith(".py") else program
    return " ".join([program, *(shlex.quote(a) for a in argv)])


def _read_input(path: str) -> torch.Tensor:
    """The `--input` image as ``(1, 3, h, w)`` in ``[0, 1]``: a GeoTIFF by [`~neurop_diff_diffusers.io.geo.read_scene`]
    (its first three bands, or its one band repeated), other images through the API's validation."""
    from ..jobs.upscale_file import InputFailed, check_input_file, probe_geo, read_image_array

    file = Path(path)
    try:
        check_input_file(file)
        if probe_geo(file):
            from ..io.geo import check_raster, read_scene

            count, _, _ = check_raster(file)
            if count == 2:
                raise ValueError(f"`input` {path!r} has 2 bands; 1 (grey) or at least 3 (RGB) are needed.")
            unit, _, _, _ = read_scene(file)
            bands = torch.from_numpy(unit[:3] if count >= 3 else unit[:1].repeat(3, axis=0))
            return bands.unsqueeze(0).float()
        rgb = read_image_array(file, warn=True).rgb  # uint8, or float32 in [0, 1] for 16-bit / float sources
    except InputFailed as err:
        raise ValueError(f"`input`: {err}") from None
    unit = torch.tensor(rgb).float() / (255.0 if rgb.dtype == np.uint8 else 1.0)
    return unit.permute(2, 0, 1).unsqueeze(0)


def _main_no_reference(
    args: argparse.Namespace,
    settings: EvaluationSettings,
    argv: list[str],
    prog: str | None,
    device: torch.device,
    dtype: Any,
) -> dict[str, Any]:
    """`--input`: each method upscales one image (no HR); consistency and synthesis per method and scale."""
    from ..evaluation.no_reference import evaluate_no_reference_with_settings
    from ..evaluation.report import no_reference_to_markdown
    from ..utils import atomic_write_text

    lr = _read_input(args.input)
    speed = {"channels_last": args.channels_last, "scheduler": args.scheduler}
    pipeline = optimize_pipeline(load_pipeline(args.pipeline, device=device, torch_dtype=dtype), **speed)
    report = evaluate_no_reference_with_settings(
        pipeline, lr, settings, key=Path(args.input).name, command=_command(argv, prog)
    )
    targets = results_paths(args.output_dir, ())
    paths = {"json": targets["json"], "markdown": targets["markdown"]}
    text = no_reference_to_markdown(report)
    atomic_write_text(paths["markdown"], text)
    atomic_write_text(paths["json"], json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(text)
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report


__all__ = ["build_parser", "main"]

"""The evaluation's command line: ``training/evaluate.py`` and ``neurop-diff evaluate``.

It selects the images (a dataset split, a recorded list), loads the pipelines ([`~neurop_diff_diffusers.loading`]),
runs [`~neurop_diff_diffusers.evaluation.evaluate`] and writes the report
([`~neurop_diff_diffusers.evaluation_report.save_results`]).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .evaluation import DEFAULT_SCALES, LazyRow, check_settings, evaluate
from .evaluation_methods import METHODS
from .evaluation_report import results_to_markdown, save_results
from .loading import load_pipeline
from .metrics import PROTOCOLS
from .optimization import AUTO_DTYPE, DTYPES, optimize_pipeline, resolve_dtype
from .scheduling import SCHEDULERS, check_eta, check_strength


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `training/evaluate.py` (and `neurop-diff evaluate`).

    Args:
        prog (`str`, *optional*): the program name shown in the help.

    Returns:
        `argparse.ArgumentParser`.

    Example:
        >>> from neurop_diff_diffusers.evaluation_cli import build_parser
        >>> args = build_parser().parse_args(["--pipeline", "preset:tiny", "--data_dir", "img", "--output_dir", "out"])
        >>> args.scales, args.split, args.num_inference_steps
        ([2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0], 'test', 50)
    """
    from .data import add_split_arguments

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate NeurOp-Diff, its neural-operator prior, bicubic and (optionally) SR3 at several scales "
        "under the paper's protocol; writes results.json, results.md and one figure per scale.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pipeline", required=True, help="a folder, a hub id, or preset:tiny / preset:paper")
    parser.add_argument(
        "--sr3_pipeline", default=None, help="an SR3 pipeline (UNet trained on the bicubic prior): adds the sr3 method"
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_name", default=None, help="ucmerced / aid / rsscn7 or a hub dataset id")
    source.add_argument("--data_dir", default=None, help="a local folder of images, one sub-folder per class")
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
    run.add_argument("--figure_image", type=int, default=0, help="which evaluated image the figures show")
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
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"`images_from` {path!r} is not valid JSON: {error}.") from None
        entries = data.get("images") if isinstance(data, dict) else data
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"`images_from` {path!r} has no non-empty 'images' list.")
        return entries
    return [int(e) if e.isdigit() else e for e in (line.strip() for line in text.splitlines()) if e]


def _select_images(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The evaluated rows of the dataset and a description of the selection (for the report)."""
    from .data import load_full_dataset, split_parts, split_to_indices, unique_file_names

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
        raise ValueError(f"The selection (`split`={args.split!r}) is empty.")
    if args.max_images is not None:
        indices = indices[: args.max_images]
    names = unique_file_names(full)
    # Keys that replay the selection: file names when the dataset has distinct ones, else indices into the whole
    # dataset (not positions in the selection).
    items = [(names[i] if names is not None else i, LazyRow(full, i)) for i in indices]
    description["data"]["indices"] = indices
    return items, description


def _check_args(args: argparse.Namespace) -> None:
    """Validation of the command line before any work (one ValueError naming the argument)."""
    check_settings(
        args.scales,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
        resolution=args.resolution,
        protocol=args.protocol,
        max_images=args.max_images,
        chunk_size=args.chunk_size,
        figure_image=args.figure_image,
    )
    if args.strength is not None:
        check_strength(args.strength)
    if args.eta is not None:
        check_eta(args.eta, "--eta")
    if args.max_images is not None and args.figure_image >= args.max_images and not args.no_figures:
        raise ValueError(f"`figure_image`={args.figure_image} must be below `max_images`={args.max_images}.")
    if not 0.0 < args.test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {args.test_fraction}.")
    if args.methods is not None and "sr3" in args.methods and args.sr3_pipeline is None:
        raise ValueError("`methods` includes sr3 but no `sr3_pipeline` is given.")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"`data_dir` must be an existing folder, got {args.data_dir!r}.")
    for flag in ("images_from", "split_file"):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_file():
            raise ValueError(f"`{flag}` must be an existing file, got {value!r}.")
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"`output_dir` must be a folder, got the file {args.output_dir!r}.")
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


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    """Run an evaluation from command-line arguments, write the results, print the Markdown table.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments (default: `sys.argv[1:]`).
        prog (`str`, *optional*): the program name for the help and the recorded command.

    Returns:
        `dict`: the report of [`evaluate`] (with `"paths"`: the files written).

    Example:
        >>> from neurop_diff_diffusers.evaluation_cli import main
        >>> main(["--pipeline", "preset:tiny", "--data_dir", "../shared/data/UCMerced_LandUse",
        ...       "--max_images", "3", "--scales", "2", "4", "--output_dir", "/tmp/eval"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    _check_args(args)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype("float16" if args.fp16 else args.dtype, device, "dtype")

    images, selection = _select_images(args)
    speed = {"channels_last": args.channels_last, "scheduler": args.scheduler}
    pipeline = optimize_pipeline(load_pipeline(args.pipeline, device=device, torch_dtype=dtype), **speed)
    sr3 = None
    if args.sr3_pipeline:
        sr3 = optimize_pipeline(load_pipeline(args.sr3_pipeline, device=device, torch_dtype=dtype), **speed)
    program = prog or (sys.argv[0] if sys.argv and sys.argv[0] else "evaluate")
    program = f"python {shlex.quote(program)}" if program.endswith(".py") else program
    command = " ".join([program, *(shlex.quote(a) for a in argv)])
    selection["cwd"] = os.getcwd()
    selection["pipeline"] = args.pipeline
    selection["sr3_pipeline"] = args.sr3_pipeline
    report = evaluate(
        pipeline,
        images,
        args.scales,
        sr3_pipeline=sr3,
        methods=args.methods,
        num_inference_steps=args.num_inference_steps,
        strength=args.strength,
        eta=args.eta,
        seed=args.seed,
        resolution=args.resolution,
        protocol=args.protocol,
        chunk_size=args.chunk_size,
        compute_lpips=not args.no_lpips,
        compute_niqe=not args.no_niqe,
        figure_image=None if args.no_figures else args.figure_image,
        progress=not args.no_progress,
        command=command,
        extra=selection,
    )
    paths = save_results(report, args.output_dir)
    print(results_to_markdown(report))
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report


__all__ = ["build_parser", "main"]

"""The ``neurop-diff`` command line's options: the argument parser and the checks of ``upscale``'s flags, torch-free
(a bad flag answers at once).

Example:
    >>> args = build_parser().parse_args(["upscale", "a.png", "--scale", "2.5", "--steps", "20"])
    >>> args.command, args.scale, args.steps
    ('upscale', 2.5, 20)
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_SETTING_PRESET, DTYPE_CHOICES, SCHEDULER_CHOICES, SETTING_PRESETS
from ..jobs.upscale_file import CLIError

#: The largest ``--seed``: ``torch.Generator.manual_seed`` takes 64-bit unsigned seeds.
MAX_SEED = 2**64 - 1


def parse_size(text: str) -> tuple[int, int]:
    """``--size HEIGHTxWIDTH`` as ``(height, width)``.

    Args:
        text: the flag's value.

    Raises:
        CLIError: not two positive integers.

    Example:
        >>> parse_size("512x768")
        (512, 768)
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise CLIError(f"--size must be HEIGHTxWIDTH with positive integers, e.g. 512x768; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _add_preset_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(SETTING_PRESETS),
        default=DEFAULT_SETTING_PRESET,
        help=f"fast (default): {SETTING_PRESETS['fast']['steps']} steps, --dtype auto, --channels-last, the model's "
        f"back-projection; paper: the paper's recipe, {SETTING_PRESETS['paper']['steps']} steps, float32, no "
        "back-projection; explicit flags win",
    )


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left unset (``None``) from ``--preset``: explicit flags win over the preset.

    Args:
        args: the parsed flags of ``upscale`` or ``serve`` (other commands are returned unchanged).

    Example:
        >>> args = apply_preset(build_parser().parse_args(["upscale", "a.png", "--scale", "2", "--steps", "30"]))
        >>> args.steps, args.dtype, args.channels_last
        (30, 'auto', True)
        >>> args = apply_preset(build_parser().parse_args(["upscale", "a.png", "--scale", "2", "--preset", "paper"]))
        >>> args.steps, args.dtype, args.channels_last, args.data_consistency
        (50, 'float32', False, 0)
    """
    preset = getattr(args, "preset", None)
    if preset is None:
        return args
    for name, value in SETTING_PRESETS[preset].items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, value)
    return args


def check_upscale_flags(args: argparse.Namespace) -> None:
    """The numeric flags of ``upscale`` (torch-free, so that bad flags answer at once).

    Args:
        args: the parsed ``upscale`` flags.

    Raises:
        CLIError: naming the flag and its allowed range.
    """
    if args.max_pixels < 1:
        raise CLIError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale >= 1.0):
        raise CLIError(f"--scale must be a finite number >= 1 (neurop-diff only upscales), got {args.scale:g}")
    if args.scale is not None and args.scale > math.sqrt(args.max_pixels):
        raise CLIError(
            f"--scale must be in [1, {math.sqrt(args.max_pixels):.6g}]: a larger scale exceeds --max-pixels "
            f"{args.max_pixels} even for a 1x1 input; got {args.scale:.6g}"
        )
    if not 0 <= args.seed <= MAX_SEED:
        raise CLIError(f"--seed must be an integer in [0, 2**64 - 1 = {MAX_SEED}], got {args.seed}")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.strength is not None and not (math.isfinite(args.strength) and 0.0 < args.strength <= 1.0):
        raise CLIError(f"--strength must be a number in (0, 1], got {args.strength}")
    if args.tile_size < 1:
        raise CLIError(f"--tile-size must be >= 1, got {args.tile_size}")
    if args.dtype == "float16" and args.device.startswith("cpu"):
        raise CLIError("--dtype float16 needs a GPU (--device cuda or mps); on a CPU use --dtype bfloat16")
    if args.tile_overlap is not None and not 0 <= args.tile_overlap <= args.tile_size // 2:
        raise CLIError(
            f"--tile-overlap must be in [0, --tile-size / 2 = {args.tile_size // 2}], got {args.tile_overlap}"
        )
    if args.output is not None and len(args.inputs) > 1:
        raise CLIError("-o/--output takes one input; use --out-dir DIR for several")
    if args.window < 8:
        raise CLIError(f"--window must be >= 8 (LR pixels), got {args.window}")
    if not 0 <= args.halo <= args.window:
        raise CLIError(f"--halo must be in [0, --window = {args.window}], got {args.halo}")
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    if args.uncertainty is not None and not 2 <= args.uncertainty <= 64:
        raise CLIError(f"--uncertainty must be a number of samples in [2, 64], got {args.uncertainty}")
    if args.uncertainty is not None and args.prior_only:
        raise CLIError("--uncertainty needs diffusion samples; it cannot go with --prior-only")
    if args.data_consistency is not None and not 0 <= args.data_consistency <= 100:
        raise CLIError(f"--data-consistency must be a number of iterations in [0, 100], got {args.data_consistency}")


#: Flags whose value may start with ``-`` without being a plain negative number (``--value-range -100,3000``: argparse
#: would take the value for an unknown flag and answer "expected one argument").
DASH_VALUE_FLAGS = ("--value-range",)


def join_dash_values(argv: list[str]) -> list[str]:
    """``argv`` with each of [`DASH_VALUE_FLAGS`] joined to a following value that starts with one ``-``
    (``--value-range -100,3000`` -> ``--value-range=-100,3000``), so that a negative LOW parses as the user meant
    (a following ``--flag`` is left alone: the missing value is still reported).

    Example:
        >>> join_dash_values(["upscale", "dem.tif", "--value-range", "-100,3000", "--scale", "2"])
        ['upscale', 'dem.tif', '--value-range=-100,3000', '--scale', '2']
    """
    joined: list[str] = []
    position = 0
    while position < len(argv):
        token = argv[position]
        if token == "--":
            return joined + argv[position:]
        following = argv[position + 1] if position + 1 < len(argv) else None
        if token in DASH_VALUE_FLAGS and following and following[0] == "-" and not following.startswith("--"):
            joined.append(f"{token}={following}")
            position += 2
            continue
        joined.append(token)
        position += 1
    return joined


def build_parser() -> argparse.ArgumentParser:
    """The ``neurop-diff`` argument parser; ``args.command`` names the command (``evaluate`` forwards its arguments to
    the evaluation parser, see [`~neurop_diff_diffusers.cli.commands.main`]).

    Example:
        >>> build_parser().parse_args(["upscale", "a.png", "--scale", "2"]).window
        256
    """
    parser = argparse.ArgumentParser(prog="neurop-diff", description="NeurOp-Diff continuous super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_upscale_parser(sub)
    _add_serve_parser(sub)

    sub.add_parser("evaluate", help="the paper's tables (see `neurop-diff evaluate --help`)", add_help=False)

    sub.add_parser("info", help="versions, device and the embedded model")

    export = sub.add_parser("export", help="write a (hub-ready) pipeline folder")
    export.add_argument("output_dir")
    export.add_argument("--model", default=None, help="pipeline folder, hub id or preset:NAME (default: embedded)")
    export.add_argument("--plain", action="store_true", help="the plain diffusers layout (no remote code)")
    export.add_argument("--overwrite", action="store_true")
    return parser


def _add_upscale_parser(sub: Any) -> None:
    """The ``upscale`` command's flags."""
    from ..defaults import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_TILE_SIZE

    up = sub.add_parser("upscale", help="upscale PNG / JPEG / TIFF / GeoTIFF images")
    up.add_argument("inputs", nargs="*", metavar="INPUT")
    how = up.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=float, help="upscaling factor, any real >= 1 (e.g. 3.7)")
    how.add_argument("--size", help="output size HEIGHTxWIDTH, e.g. 512x768")
    where = up.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, help="output file (one input only)")
    where.add_argument("--out-dir", type=Path, help="output folder (default: beside each input)")
    _add_preset_flag(up)
    up.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's, 20 or 50)")
    up.add_argument(
        "--strength",
        type=float,
        default=None,
        help="fraction of the steps run, from the diffused prior (default: the model's default_strength)",
    )
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--model", default=None, help="pipeline folder, hub id or preset:tiny (default: embedded model)")
    up.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    up.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_CHOICES,
        help="the UNet's precision (default: the preset's, auto or float32; auto: the fastest here, see `neurop-diff "
        "info`; bfloat16: CPUs with bf16 units (avx512_bf16 / amx_bf16) and GPUs; float16: GPUs)",
    )
    up.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last UNet weights, faster kernels (default: the preset's, on with fast)",
    )
    up.add_argument(
        "--scheduler",
        default=None,
        choices=SCHEDULER_CHOICES,
        help="the sampler (default: the model's own, DDIM for the embedded model)",
    )
    up.add_argument("--prior-only", action="store_true", help="the neural-operator prior alone (no diffusion)")
    up.add_argument(
        "--uncertainty",
        type=int,
        default=None,
        metavar="N",
        help="draw N seeded samples (2-64): write their mean as the output and their per-pixel spread as "
        "<output without suffix>.uncertainty.tif (float32, one band, the model's 0..1 scale; for a GeoTIFF a COG "
        "georeferenced like the output, on the --value-range mapped to 0..1); also with --input-dir",
    )
    up.add_argument(
        "--data-consistency",
        type=int,
        default=None,
        metavar="N",
        help="back-project the output onto its input N times (0-100; 0: off, the paper and --preset paper; default: "
        "the model's default_data_consistency_steps, 10 for the embedded model), so that its downsampling agrees with "
        "the input",
    )
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    up.add_argument(
        "--tile-size", type=int, default=DEFAULT_TILE_SIZE, help="denoise outputs larger than this in tiles"
    )
    up.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default tile/4, <=64)")
    up.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_OUTPUT_PIXELS,
        help=f"refuse larger outputs (default {DEFAULT_MAX_OUTPUT_PIXELS:,})",
    )
    scene = up.add_argument_group("whole scenes (GeoTIFF; also under `accelerate launch`, windows split)")
    scene.add_argument("--dry-run", action="store_true", help="print the window plan, memory and time; write nothing")
    scene.add_argument("--window", type=int, default=256, help="LR pixels of a window's core, a side (default 256)")
    scene.add_argument("--halo", type=int, default=16, help="LR pixels of context around each window (default 16)")
    scene.add_argument(
        "--value-range",
        default="minmax",
        help="input values to the model's range: minmax (default), LOW,HIGH (e.g. 0,10000) or pLOW,pHIGH (p2,p98)",
    )
    scene.add_argument(
        "--clip",
        action="store_true",
        help="write values outside --value-range clipped to it (default: the model sees them clipped, and their part "
        "outside the range is upscaled bicubically and added back, so the output keeps the input's extremes)",
    )
    scene.add_argument("--restart", action="store_true", help="discard the windows of a run with other settings")
    scene.add_argument("--workers", type=int, default=None, help="windows at once on the CPU (default: threads)")
    batch = up.add_argument_group("folders (also under `accelerate launch`, split between the processes)")
    batch.add_argument("--input-dir", type=Path, help="every PNG / JPEG / TIFF in this folder (needs --out-dir)")
    batch.add_argument("--recursive", action="store_true", help="with --input-dir: sub-folders too (mirrored)")
    batch.add_argument("--glob", default=None, help="with --input-dir: only files matching this pattern, e.g. '*.tif'")


def _add_serve_parser(sub: Any) -> None:
    """The ``serve`` command's flags."""
    serve = sub.add_parser("serve", help="the web app (Gradio; pip install 'neurop-diff-diffusers[app]')")
    serve.add_argument("--model", default=None, help="pipeline folder, hub id or preset:NAME (default: embedded)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    serve.add_argument("--concurrency", type=int, default=1, help="requests run at once; others queue (default 1)")
    serve.add_argument("--max-input-pixels", type=int, default=1024 * 1024, help="refuse larger inputs (1024^2)")
    serve.add_argument(
        "--max-output-pixels", type=int, default=2048 * 2048, help="refuse larger outputs (default 2048^2)"
    )
    _add_preset_flag(serve)
    serve.add_argument(
        "--dtype", default=None, choices=DTYPE_CHOICES, help="the UNet's precision (default: the preset's)"
    )
    serve.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last UNet weights (default: the preset's)",
    )

"""The ``neurop-diff`` command: ``upscale``, ``evaluate``, ``info`` and ``export``.

Example:
    neurop-diff upscale scene.png --scale 3.7 --model preset:tiny --steps 20
    neurop-diff upscale scene.tif --scale 2.5            # a GeoTIFF keeps its georeferencing
    neurop-diff info
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise CLIError(f"--size must be HEIGHTxWIDTH with positive integers, e.g. 512x768; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _scale_tag(scale: float | None, size: tuple[int, int] | None) -> str:
    if size is not None:
        return f"{size[0]}x{size[1]}"
    return "x" + (f"{scale:g}")


def output_path(
    input_path: Path, scale: float | None, size: tuple[int, int] | None, out: Path | None, out_dir: Path | None
) -> Path:
    """Where ``upscale`` writes the result of ``input_path``: ``-o``, else ``<dir>/<stem>_x<scale><suffix>``.

    Args:
        input_path: the input file.
        scale: the scale (or ``None`` with ``size``).
        size: the explicit ``(height, width)`` (or ``None``).
        out: the ``-o`` path, if given.
        out_dir: the ``--out-dir`` folder, if given (default: the input's folder).

    Example:
        >>> output_path(Path("a/scene.png"), 3.7, None, None, None).as_posix()
        'a/scene_x3.7.png'
    """
    if out is not None:
        return out
    folder = out_dir if out_dir is not None else input_path.parent
    return folder / f"{input_path.stem}_{_scale_tag(scale, size)}{input_path.suffix}"


def save_image_atomic(image: Any, path: Path) -> None:
    """Save a PIL image to ``path`` through a temporary file and a rename: never a partial file.

    Args:
        image: a PIL image.
        path: the target file; its suffix picks the format.
    """
    from .utils import atomic_write

    atomic_write(path, image.save)


def _load_model(spec: str | None, device: str) -> Any:
    from .default_model import load_default_pipeline
    from .evaluation import load_pipeline

    try:
        if spec is None:
            pipe = load_default_pipeline(device=device)
        else:
            pipe = load_pipeline(spec, device=device)
    except (FileNotFoundError, OSError, ValueError) as err:
        raise CLIError(str(err).splitlines()[0]) from err
    pipe.set_progress_bar_config(disable=False, leave=False)
    return pipe


def _check_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def cmd_upscale(args: argparse.Namespace) -> int:
    """``neurop-diff upscale``: validate everything, then load the model once and upscale each input."""
    from PIL import Image

    from .geo import is_georeferenced, upscale_geotiff
    from .image_processing import check_scale, resolve_output_size
    from .scheduling import check_strength

    # 1. Everything that can be checked is checked before the model loads or any file is written.
    size = _parse_size(args.size) if args.size is not None else None
    scale = None
    if args.scale is not None:
        try:
            scale = check_scale(args.scale)
        except (TypeError, ValueError) as err:
            raise CLIError(f"--scale: {err}") from err
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.strength is not None:
        try:
            check_strength(args.strength)
        except ValueError as err:
            raise CLIError(f"--strength: {err}") from err
    if args.output is not None and len(args.inputs) > 1:
        raise CLIError("-o/--output takes one input; use --out-dir DIR for several")
    device = _check_device(args.device)
    jobs = []
    targets = set()
    for raw in args.inputs:
        src = Path(raw)
        if not src.is_file():
            raise CLIError(f"input not found: {src}")
        if src.suffix.lower() not in IMAGE_SUFFIXES:
            raise CLIError(f"unsupported input {src}: use PNG, JPEG or TIFF ({', '.join(IMAGE_SUFFIXES)})")
        geo = is_georeferenced(src)
        dst = output_path(src, scale, size, args.output, args.out_dir)
        if dst.suffix.lower() not in IMAGE_SUFFIXES:
            raise CLIError(f"unsupported output {dst}: use PNG, JPEG or TIFF ({', '.join(IMAGE_SUFFIXES)})")
        if geo and dst.suffix.lower() not in (".tif", ".tiff"):
            raise CLIError(f"{src} is georeferenced: its output must be a .tif/.tiff, not {dst.name}")
        if dst.exists() and not args.overwrite:
            raise CLIError(f"{dst} exists; pass --overwrite to replace it")
        if dst.resolve() in targets:
            raise CLIError(f"two inputs would write the same output {dst}")
        targets.add(dst.resolve())
        try:
            if geo:
                import rasterio

                with rasterio.open(src) as ds:
                    in_size = (ds.height, ds.width)
            else:
                with Image.open(src) as im:
                    in_size = (im.height, im.width)
            out_size = resolve_output_size(in_size, scale, size)
        except (OSError, ValueError) as err:
            raise CLIError(f"{src}: {err}") from err
        if out_size[0] * out_size[1] > args.max_pixels:
            raise CLIError(
                f"{src}: the output {out_size[0]}x{out_size[1]} exceeds --max-pixels {args.max_pixels}; raise it"
            )
        jobs.append((src, dst, geo, out_size))

    # 2. The model, once.
    import torch

    pipe = _load_model(args.model, device)
    common = {
        "num_inference_steps": args.steps,
        "strength": args.strength,
        "prior_only": args.prior_only,
        "tile_size": args.tile_size,
        "tile_overlap": args.tile_overlap,
        "max_output_pixels": args.max_pixels,
    }
    for src, dst, geo, out_size in jobs:
        generator = torch.Generator(device="cpu").manual_seed(args.seed)
        if geo:
            upscale_geotiff(pipe, src, dst, output_size=out_size, overwrite=True, generator=generator, **common)
        else:
            with Image.open(src) as im:
                image = im.convert("RGB")
            result = pipe(image, output_size=out_size, generator=generator, **common).images[0]
            save_image_atomic(result, dst)
        print(f"{src} -> {dst} ({out_size[1]}x{out_size[0]})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``neurop-diff info``: versions, devices and the embedded model."""
    import json

    import diffusers
    import torch

    from . import __version__
    from .default_model import DEFAULT_MODEL_PATH, has_default_model

    print(f"neurop-diff-diffusers {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    cuda = torch.cuda.is_available()
    print(f"device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if cuda else 'cpu only'}")
    try:
        import rasterio

        print(f"GeoTIFF support: rasterio {rasterio.__version__}")
    except ImportError:
        print("GeoTIFF support: not installed (pip install 'neurop-diff-diffusers[geo]')")
    if has_default_model():
        print(f"default model: {DEFAULT_MODEL_PATH}")
        for component in ("neural_operator", "unet"):
            config = json.loads((DEFAULT_MODEL_PATH / component / "config.json").read_text())
            public = {k: v for k, v in config.items() if not k.startswith("_")}
            print(f"  {component}: {json.dumps(public, sort_keys=True)}")
    else:
        print(f"default model: none shipped in this version ({DEFAULT_MODEL_PATH} is absent); use --model")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``neurop-diff export``: write a pipeline folder, hub-ready (remote-code layout) by default."""
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"{out} is not empty; pass --overwrite to write into it")
    pipe = _load_model(args.model, "cpu")
    pipe.save_pretrained(out, hub_ready=not args.plain)
    print(f"wrote {'plain' if args.plain else 'hub-ready'} pipeline folder {out}")
    return 0


def cmd_evaluate(argv: Sequence[str]) -> int:
    """``neurop-diff evaluate``: the evaluation command (same options as ``training/evaluate.py``)."""
    from .evaluation import main as evaluate_main

    evaluate_main(list(argv), prog="neurop-diff evaluate")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``neurop-diff`` argument parser (``evaluate`` forwards its arguments to the evaluation parser)."""
    parser = argparse.ArgumentParser(prog="neurop-diff", description="NeurOp-Diff continuous super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale PNG / JPEG / TIFF / GeoTIFF images")
    up.add_argument("inputs", nargs="+", metavar="INPUT")
    how = up.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=float, help="upscaling factor, any real >= 1 (e.g. 3.7)")
    how.add_argument("--size", help="output size HEIGHTxWIDTH, e.g. 512x768")
    where = up.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, help="output file (one input only)")
    where.add_argument("--out-dir", type=Path, help="output folder (default: beside each input)")
    up.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    up.add_argument(
        "--strength",
        type=float,
        default=None,
        help="fraction of the steps run, from the diffused prior (default: the model's default_strength)",
    )
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--model", default=None, help="pipeline folder, hub id or preset:tiny (default: embedded model)")
    up.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    up.add_argument("--prior-only", action="store_true", help="the neural-operator prior alone (no diffusion)")
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    up.add_argument("--tile-size", type=int, default=512, help="denoise outputs larger than this in tiles")
    up.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default tile/4, <=64)")
    up.add_argument("--max-pixels", type=int, default=4096 * 4096, help="refuse larger outputs (default 4096^2)")
    up.set_defaults(func=cmd_upscale)

    sub.add_parser("evaluate", help="the paper's tables (see `neurop-diff evaluate --help`)", add_help=False)

    info = sub.add_parser("info", help="versions, device and the embedded model")
    info.set_defaults(func=cmd_info)

    export = sub.add_parser("export", help="write a (hub-ready) pipeline folder")
    export.add_argument("output_dir")
    export.add_argument("--model", default=None, help="pipeline folder, hub id or preset:NAME (default: embedded)")
    export.add_argument("--plain", action="store_true", help="the plain diffusers layout (no remote code)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neurop-diff`` console script; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "evaluate":
            return cmd_evaluate(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (CLIError, ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
        print(f"neurop-diff: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neurop-diff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

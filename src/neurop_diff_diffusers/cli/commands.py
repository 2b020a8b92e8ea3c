"""The ``neurop-diff`` command: ``upscale``, ``serve``, ``evaluate``, ``info`` and ``export``, and its entry point
[`main`] (the options are [`~neurop_diff_diffusers.cli.options`]; ``upscale`` is [`~neurop_diff_diffusers.cli.upscale`]
and, with ``--input-dir``, [`~neurop_diff_diffusers.cli.batch`]).

Example:
    neurop-diff upscale scene.png --scale 3.7 --model preset:tiny --steps 20
    neurop-diff upscale scene.tif --scale 2.5            # a GeoTIFF keeps its georeferencing
    neurop-diff upscale --input-dir scenes/ --out-dir out/ --scale 4  # a folder; also under `accelerate launch`
    neurop-diff serve                                    # the web app on http://127.0.0.1:7860
    neurop-diff info
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..defaults import SETTING_PRESETS
from ..jobs.upscale_file import CLIError, InputFailed, check_output_location, load_job_pipeline, one_line, os_reason
from .helpers import check_device_flag, report_error, warn_dtype
from .options import apply_preset, build_parser, join_dash_values
from .upscale import cmd_upscale


def cmd_serve(args: argparse.Namespace) -> int:
    """``neurop-diff serve``: the web app (Gradio, extra ``[app]``) on ``--host`` (127.0.0.1) and ``--port`` (7860)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # not imported here: the app first points its cache elsewhere
        raise CLIError("the web app needs Gradio: pip install 'neurop-diff-diffusers[app]'")
    from ..app import MAX_UPLOAD_BYTES, AppConfig, build_app, stop_signals

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535], got {args.port}")
    try:
        config = AppConfig(
            model=args.model,
            device=str(check_device_flag(args.device)),
            max_input_pixels=args.max_input_pixels,
            max_output_pixels=args.max_output_pixels,
            concurrency=args.concurrency,
            dtype=args.dtype,
            channels_last=args.channels_last,
            default_steps=int(SETTING_PRESETS[args.preset]["steps"]),
        )
    except ValueError as err:
        raise CLIError(one_line(err)) from err
    warn_dtype(args.dtype, config.device)
    from ..runtime.hardware import SlowPrecisionWarning

    with stop_signals():  # Ctrl-C and SIGTERM stop it and remove its temporary folder, whatever was inherited
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SlowPrecisionWarning)  # said once already, before any work
            demo = build_app(config)
        try:
            demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES)
        finally:
            demo.close()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``neurop-diff info``: versions, devices and the embedded model."""
    import json

    import diffusers
    import torch

    from .. import __version__
    from ..runtime.loading import DEFAULT_MODEL_PATH, has_default_model

    print(f"neurop-diff-diffusers {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    cuda = torch.cuda.is_available()
    print(f"device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if cuda else 'cpu only'}")
    print(_auto_line("cpu"))
    if cuda:
        print(_auto_line("cuda"))
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


def _auto_line(device: str) -> str:
    """``info``'s line: what ``--dtype auto`` picks on ``device`` here, and why."""
    from ..runtime.hardware import auto_dtype

    choice = auto_dtype(device)
    return f"--dtype auto on {device}: {choice.dtype}; {choice.reason}"


def cmd_export(args: argparse.Namespace) -> int:
    """``neurop-diff export``: write a pipeline folder, hub-ready (remote-code layout) by default.

    The folder holds no path of the exporting machine (``_name_or_path`` is dropped from its JSON files).
    """
    from ..pipelines.hub import remove_local_paths

    out = Path(args.output_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"{out} is not empty; pass --overwrite to write into it")
    try:
        check_output_location(out / "model_index.json", overwrite=True)
    except InputFailed as err:
        raise CLIError(str(err)) from err
    pipe = load_job_pipeline(args.model, "cpu")
    try:
        pipe.save_pretrained(out, hub_ready=not args.plain)
        remove_local_paths(out)
    except OSError as err:
        raise CLIError(f"{out}: cannot write the pipeline folder ({os_reason(err)})") from err
    print(f"wrote {'plain' if args.plain else 'hub-ready'} pipeline folder {out}")
    return 0


def cmd_evaluate(argv: Sequence[str]) -> int:
    """``neurop-diff evaluate``: the evaluation command (same options as ``training/evaluate.py``)."""
    from .evaluate import main as evaluate_main

    evaluate_main(list(argv), prog="neurop-diff evaluate")
    return 0


#: The commands that the parser names (``args.command``); ``evaluate`` parses its own arguments.
COMMANDS = {"upscale": cmd_upscale, "serve": cmd_serve, "info": cmd_info, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neurop-diff`` console script; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "evaluate":
            return cmd_evaluate(argv[1:])
        args = apply_preset(build_parser().parse_args(join_dash_values(argv)))
        return COMMANDS[args.command](args)
    except (CLIError, ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
        report_error(one_line(err))
        return 2
    except KeyboardInterrupt:
        print("neurop-diff: interrupted", file=sys.stderr)
        return 130

#!/usr/bin/env python
"""`neurop-diff upscale --dtype auto --channels-last` against `--dtype float32` on this CPU, per image and per step.

Each setting `DTYPE[:cl]` (`auto:cl` = `--dtype auto --channels-last`) is the real command line, each run in a fresh
process, as a user runs it:

    neurop-diff upscale IN -o OUT --scale 2 --steps STEPS --dtype DTYPE [--channels-last] --model MODEL

timed from the start of the process to its end (so the seconds per image include starting Python, loading the model
and writing the output); the seconds per denoising step are read from the command's own progress bar (its final
rate), as a user sees them. Because a 4-step command is short and a shared machine noisy, the UNet's step is also
timed in one process per kind (`--unet_rounds` interleaved rounds over the settings after a warm-up call of each, at
the output size; the median is reported): the precision's own cost, with no start-up in it. Two kinds of CPU can be
measured on one machine (`--kinds`):

- `native`: this CPU as it is;
- `emulated`: this CPU with its bfloat16 units out of reach of torch (`ONEDNN_MAX_CPU_ISA=AVX2` and
  `ATEN_CPU_CAPABILITY=avx2`: oneDNN and ATen limited to AVX2), the behaviour of a CPU without AVX512-BF16 / AMX.
  On such a CPU bfloat16 is emulated and slow (add `bfloat16:cl` to `--settings` to see it).

What `--dtype auto` picks under each kind is read from `neurop-diff info` run with the same environment. The runs are
interleaved (a round is every kind x setting once, `--repeats` rounds) and the median of each is reported, so
that a busy period of a shared machine hits every setting alike; all times are kept in the JSON. The table gives the
ratio of each setting to the first (`float32` by default); "auto no slower" holds when `auto:cl`'s median per image
is at most float32's.

Example (the README's table, the embedded model on a 128 px crop of a UCMerced harbour, about 10 minutes on 2 cores):

    python benchmarks/cpu_dtype.py --kinds native emulated --settings float32 auto:cl float32:cl bfloat16:cl \\
        --output cpu_dtype.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurop_diff_diffusers.runtime.hardware import read_cpuinfo
from neurop_diff_diffusers.utils import atomic_write_json, package_versions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO / "assets" / "samples" / "harbor31.png"
#: The environment of each kind of CPU (added to this process's environment).
KINDS = {
    "native": {},
    "emulated": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
DTYPES = ("auto", "float32", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--input", default=str(DEFAULT_INPUT), help="an image (default: a shipped UCMerced harbour)")
    parser.add_argument("--size", type=int, default=128, help="the input's top-left crop side in px (0: all of it)")
    parser.add_argument("--model", default=None, help="--model of the command (default: the embedded model)")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per image")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["float32", "auto:cl"],
        help="DTYPE[:cl] with DTYPE in auto, float32, bfloat16; the first is the reference",
    )
    parser.add_argument("--kinds", nargs="+", default=["native"], choices=tuple(KINDS), help="kinds of CPU")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (the median of each is reported)")
    parser.add_argument(
        "--unet_rounds", type=int, default=5, help="in-process rounds of one UNet step per setting (0: none)"
    )
    parser.add_argument("--output", default="cpu_dtype.json", help="JSON file to write")
    return parser


def parse_setting(text: str) -> tuple[str, bool]:
    """``DTYPE[:cl]`` as ``(dtype, channels_last)``; ValueError naming the allowed values."""
    dtype, _, flag = text.partition(":")
    if dtype not in DTYPES or flag not in ("", "cl"):
        raise ValueError(f"`settings` are DTYPE[:cl] with DTYPE in {list(DTYPES)}, got {text!r}.")
    return dtype, flag == "cl"


def _check(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {args.steps}.")
    if args.unet_rounds < 0:
        raise ValueError(f"`unet_rounds` must be >= 0, got {args.unet_rounds}.")
    if args.repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {args.repeats}.")
    if args.size < 0:
        raise ValueError(f"`size` must be >= 0, got {args.size}.")
    if not Path(args.input).is_file():
        raise ValueError(f"`input` {args.input!r} is not a file.")
    for text in args.settings:
        parse_setting(text)
    if len(set(args.settings)) != len(args.settings) or len(set(args.kinds)) != len(args.kinds):
        raise ValueError("`settings` and `kinds` must not repeat.")
    if Path(args.output).is_dir():
        raise ValueError(f"`output` must be a file path, got the folder {args.output!r}.")


def _env(kind: str) -> dict[str, str]:
    env = {**os.environ, **KINDS[kind]}
    env["TQDM_MININTERVAL"] = "0"  # every step refreshes the progress bar, so its last rate is always printed
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _auto_choice(kind: str) -> str:
    """``neurop-diff info``'s line on what ``--dtype auto`` picks on the CPU under ``kind``."""
    done = subprocess.run(
        [sys.executable, "-m", "neurop_diff_diffusers.cli", "info"],
        env=_env(kind),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("--dtype auto on cpu:")]
    return line.removeprefix("--dtype auto on cpu:").strip()


def _command(args: argparse.Namespace, image: Path, out: Path, setting: str, steps: int) -> list[str]:
    dtype, channels_last = parse_setting(setting)
    command = [sys.executable, "-m", "neurop_diff_diffusers.cli", "upscale", str(image), "-o", str(out)]
    command += ["--scale", f"{args.scale:g}", "--steps", str(steps), "--dtype", dtype, "--overwrite"]
    command += ["--channels-last"] if channels_last else []
    command += ["--model", args.model] if args.model else []
    return command


def step_seconds(progress: str) -> float | None:
    """Seconds per step of the last rate a tqdm progress bar printed (``2.31s/it`` or ``1.52it/s``), or ``None``."""
    rates = re.findall(r"(\d+(?:\.\d+)?)(s/it|it/s)\]", progress)
    if not rates:
        return None
    value, unit = float(rates[-1][0]), rates[-1][1]
    return value if unit == "s/it" else (1.0 / value if value > 0 else None)


def _run_once(command: list[str], env: dict[str, str]) -> tuple[float, float | None]:
    """Wall-clock seconds of one command and its progress bar's seconds per step (a failure raises)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return seconds, step_seconds(done.stderr)


def unet_steps(model: str | None, side: int, settings: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds of one UNet call (one denoising step) on a ``side`` x ``side`` input per setting, in this process:
    each setting's UNet prepared as [`optimize_pipeline`] does, a warm-up call each, then ``rounds`` interleaved
    rounds."""
    import copy

    import torch

    from neurop_diff_diffusers.runtime.loading import load_pipeline
    from neurop_diff_diffusers.runtime.optimization import resolve_dtype

    unet = load_pipeline(model).unet.eval()
    noisy = torch.randn(1, unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    models = {}
    for setting in settings:
        dtype, channels_last = parse_setting(setting)
        model_copy = copy.deepcopy(unet).to(dtype=resolve_dtype(dtype, "cpu"))
        if channels_last:
            model_copy.to(memory_format=torch.channels_last)
        models[setting] = model_copy
    times: dict[str, list[float]] = {setting: [] for setting in settings}
    with torch.inference_mode():
        for model_copy in models.values():
            model_copy(noisy.to(model_copy.dtype), 0.5)
        for _ in range(rounds):
            for setting, model_copy in models.items():
                start = time.perf_counter()
                model_copy(noisy.to(model_copy.dtype), 0.5)
                times[setting].append(time.perf_counter() - start)
    return times


def _unet_steps_in(kind: str, args: argparse.Namespace, side: int) -> dict[str, list[float]]:
    """[`unet_steps`] in a fresh process with the environment of ``kind``."""
    job = {"model": args.model, "side": side, "settings": args.settings, "rounds": args.unet_rounds}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--unet_worker", json.dumps(job)],
        env=_env(kind),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the UNet timing under {kind} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every (kind, setting, steps) ``--repeats`` times, interleaved; the medians, the per-step times and ratios."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="cpu-dtype-") as folder:
        image = Path(folder) / "input.png"
        with Image.open(args.input) as source:
            crop = source.convert("RGB")
            if args.size:
                crop = crop.crop((0, 0, min(args.size, crop.width), min(args.size, crop.height)))
            crop.save(image)
            input_size = (crop.height, crop.width)
        chosen = {kind: _auto_choice(kind) for kind in args.kinds}
        times: dict[tuple[str, str], list[float]] = {}
        steps: dict[tuple[str, str], list[float]] = {}
        for round_index in range(args.repeats):
            for kind in args.kinds:
                for setting in args.settings:
                    out = Path(folder) / f"out-{kind}-{setting.replace(':', '-')}.png"
                    seconds, step = _run_once(_command(args, image, out, setting, args.steps), _env(kind))
                    times.setdefault((kind, setting), []).append(seconds)
                    steps.setdefault((kind, setting), []).extend([] if step is None else [step])
                    print(
                        f"round {round_index + 1}/{args.repeats} {kind:8s} {setting:12s} {seconds:8.2f} s / image, "
                        f"{'-' if step is None else f'{step:.2f}'} s / step",
                        flush=True,
                    )
    side = round(max(input_size) * args.scale)
    unet = {kind: _unet_steps_in(kind, args, side) for kind in args.kinds} if args.unet_rounds else {}
    for kind, measured in unet.items():
        print(kind, {setting: round(statistics.median(t), 3) for setting, t in measured.items()}, flush=True)
    rows = []
    for kind in args.kinds:
        reference = None
        for setting in args.settings:
            per_image = statistics.median(times[(kind, setting)])
            per_step = statistics.median(steps[(kind, setting)]) if steps[(kind, setting)] else None
            unet_step = statistics.median(unet[kind][setting]) if kind in unet else None
            reference = reference or (per_image, per_step, unet_step)
            rows.append(
                {
                    "kind": kind,
                    "setting": setting,
                    "dtype": parse_setting(setting)[0],
                    "channels_last": parse_setting(setting)[1],
                    "seconds_per_image": per_image,
                    "seconds_per_step": per_step,
                    "over_reference_per_image": per_image / reference[0],
                    "over_reference_per_step": per_step / reference[1] if per_step and reference[1] else None,
                    "all_seconds": times[(kind, setting)],
                    "all_seconds_per_step": steps[(kind, setting)],
                    "unet_seconds_per_step": unet_step,
                    "unet_over_reference": unet_step / reference[2] if unet_step and reference[2] else None,
                    "all_unet_seconds": unet[kind][setting] if kind in unet else [],
                }
            )
    name, flags = read_cpuinfo()
    verdicts = {}
    for kind in args.kinds:
        by = {r["setting"]: r["seconds_per_image"] for r in rows if r["kind"] == kind}
        if "auto:cl" in by and "float32" in by:
            verdicts[kind] = {
                "auto_cl_over_float32": by["auto:cl"] / by["float32"],
                "no_slower": by["auto:cl"] <= by["float32"],
            }
    return {
        "benchmark": "cpu_dtype",
        "command": " ".join(["python", "benchmarks/cpu_dtype.py", *sys.argv[1:]]),
        "cpu": name or platform.processor(),
        "cpu_bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "cpu_count": os.cpu_count(),
        "kinds": {kind: {"env": KINDS[kind], "auto_picks": chosen[kind]} for kind in args.kinds},
        "input": str(args.input),
        "input_size": list(input_size),
        "model": args.model or "embedded",
        "scale": args.scale,
        "steps": args.steps,
        "repeats": args.repeats,
        "versions": package_versions(),
        "results": rows,
        "auto_cl_versus_float32": verdicts,
    }


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def format_table(report: dict[str, Any]) -> str:
    """A markdown table per kind: seconds per image and per step (medians), and the ratio to the first setting."""
    height, width = report["input_size"]
    lines = [
        f"{report['cpu']} ({report['cpu_count']} cores, bf16 flags: {', '.join(report['cpu_bf16_flags']) or 'none'}), "
        f"model {report['model']}, {height}x{width} px x{report['scale']:g}, {report['steps']} steps, medians of "
        f"{report['repeats']} interleaved runs (a fresh process each: start, model load and output included)",
    ]
    for kind, info in report["kinds"].items():
        env = " ".join(f"{k}={v}" for k, v in info["env"].items()) or "as it is"
        lines += ["", f"**{kind}** ({env}): `--dtype auto` picks {info['auto_picks']}", ""]
        lines += [
            "| setting | s / image | s / step | vs first (image) | vs first (step) | UNet step alone | vs first |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in report["results"]:
            if row["kind"] != kind:
                continue
            cells = [
                f"{row['seconds_per_image']:.2f}",
                _fmt(row["seconds_per_step"]),
                f"{row['over_reference_per_image']:.2f}x",
                _fmt(row["over_reference_per_step"], "x"),
                _fmt(row["unet_seconds_per_step"]),
                _fmt(row["unet_over_reference"], "x"),
            ]
            lines.append(f"| {row['setting']} | " + " | ".join(cells) + " |")
        verdict = report["auto_cl_versus_float32"].get(kind)
        if verdict:
            lines.append(
                f"`--dtype auto --channels-last` / `--dtype float32`: {verdict['auto_cl_over_float32']:.2f}x per "
                f"image ({'no slower' if verdict['no_slower'] else 'SLOWER'})"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse, validate (ValueError before any work), measure, print the table and write the JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--unet_worker"]:  # the in-process UNet timing, run by [`_unet_steps_in`]
        print(json.dumps(unet_steps(**json.loads(argv[1]))))
        return {}
    args = build_parser().parse_args(argv)
    _check(args)
    report = run(args)
    print(format_table(report))
    atomic_write_json(Path(args.output), report)
    print(f"Wrote {args.output}")
    return report


if __name__ == "__main__":
    main()

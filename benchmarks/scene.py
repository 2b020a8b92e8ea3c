"""Whole scenes: memory and time of the scene engine, and its fidelity to the whole-scene pass (seams, PSNR).

Three measurements (README "Whole scenes"):

- ``memory``: peak RSS and time of ``neurop-diff upscale scene.tif -o out.tif --scale 2 --prior-only`` (a fresh
  process each, measured from outside with ``getrusage(RUSAGE_CHILDREN)``) on 3-band uint8 scenes of growing size.
  The engine's bound says the peak depends on the window and the output width, not the area.
- ``fidelity``: on a scene that also fits the whole-scene pass (one window covering it; a 384 px crop of one RSSCN7
  image, so that no mosaic edge looks like a seam), the windowed output against
  the whole-scene output (PSNR, in the image's 8-bit range) and the seam visibility: the mean absolute difference of
  neighbouring output pixels across window borders divided by the same mean across the other lines of the same phase
  (1 = invisible; see [`seam_ratio`]), for several windows / halos, with the operator alone and with diffusion. The
  same ratio of the whole-scene output at the same lines is the control.
- ``speed``: seconds per output megapixel for several window sizes (the halo's overhead against the operator's cost).

Test scenes are mosaics of real UCMerced images (``../shared/data``; synthetic texture when absent), 3 bands uint8,
georeferenced (UTM, 0.3 m).

Example:
    python benchmarks/scene.py memory --sides 800 1600 3200 --out runs/scene
    python benchmarks/scene.py fidelity --side 384 --out runs/scene
    python benchmarks/scene.py throughput --side 256 --before_src ../old-checkout/src --out /tmp/scene
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "UCMerced_LandUse"
TILE = 256


def _tiles(seed: int) -> list[np.ndarray]:
    """UCMerced images (256 px RGB), in a fixed shuffled order; synthetic textures without the data."""
    from PIL import Image

    files = sorted(DATA.rglob("*.tif")) if DATA.is_dir() else []
    rng = np.random.default_rng(seed)
    if not files:
        yy, xx = np.mgrid[0:TILE, 0:TILE]
        return [
            (127 + 120 * np.sin(xx / (5 + k) + k) * np.cos(yy / (7 + k))).astype(np.uint8)[..., None].repeat(3, -1)
            for k in range(16)
        ]
    order = rng.permutation(len(files))[:64]
    tiles = []
    for k in order:
        with Image.open(files[k]) as im:
            tiles.append(np.asarray(im.convert("RGB").resize((TILE, TILE)), dtype=np.uint8))
    return tiles


def make_scene(path: Path, side: int, seed: int = 0) -> Path:
    """A ``side`` x ``side`` 3-band uint8 GeoTIFF mosaic of real images, written row of tiles by row of tiles."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    tiles = _tiles(seed)
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32611",
        "transform": from_origin(500000.0, 3800000.0, 0.3, 0.3),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "BIGTIFF": "IF_SAFER",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    n = math.ceil(side / TILE)
    with rasterio.open(path, "w", **profile) as dst:
        for i in range(n):
            rows = min(TILE, side - i * TILE)
            strip = np.concatenate([tiles[(i * n + j) % len(tiles)] for j in range(n)], axis=1)[:rows, :side]
            dst.write(strip.transpose(2, 0, 1), window=Window(0, i * TILE, side, rows))
    return path


RSSCN7 = DATA.parent / "RSSCN7"


def make_single_scene(path: Path, side: int, name: str = "fResident/f001.jpg") -> Path:
    """A ``side`` px square 3-band uint8 GeoTIFF cut from one 400 px RSSCN7 image (no mosaic edges, which would
    look like seams); the UCMerced mosaic when RSSCN7 is absent."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    source = RSSCN7 / name
    if not source.is_file() or side > 400:
        return make_scene(path, side, seed=1)
    with Image.open(source) as im:
        data = np.asarray(im.convert("RGB"), dtype=np.uint8)[:side, :side].transpose(2, 0, 1)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8", "crs": "EPSG:32611"}
    profile["transform"] = from_origin(500000.0, 3800000.0, 0.3, 0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _measured(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` in a fresh child of a fresh Python; returns (seconds, peak RSS in MB, stderr tail)."""
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'s': time.perf_counter() - t, 'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'rc': p.returncode, 'err': p.stderr[-2000:]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result['err']}")
    return result["s"], result["kb"] / 1024, result["err"]


def cmd_memory(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = []
    for side in args.sides:
        scene = make_scene(out / f"scene_{side}.tif", side)
        target = out / f"scene_{side}_x2.tif"
        command = ["neurop-diff", "upscale", str(scene), "-o", str(target), "--scale", "2", "--prior-only"]
        command += ["--overwrite", *args.extra]
        seconds, peak, _ = _measured(command)
        row = {"side": side, "seconds": round(seconds, 1), "peak_rss_mb": round(peak), "command": " ".join(command)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")
        target.unlink(missing_ok=True)
        if not args.keep:
            scene.unlink(missing_ok=True)
    base = rows[0]
    for row in rows:
        area = (row["side"] / base["side"]) ** 2
        print(
            f"{row['side']:>6} px: {row['seconds']:>8.1f} s ({row['seconds'] / base['seconds'] / area:.2f} x linear), "
            f"peak RSS {row['peak_rss_mb']} MB ({row['peak_rss_mb'] / base['peak_rss_mb']:.2f} x the smallest)"
        )
    (out / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")


def seam_ratio(image: np.ndarray, borders_y: list[int], borders_x: list[int], period: int = 1) -> float:
    """Mean |difference of neighbouring pixels| across window borders / the same mean across other lines of the same
    phase.

    At an integer scale ``s`` a line between two output rows that straddles an LR pixel edge has larger steps than
    one inside an LR pixel, in any upscaled image: lines are compared with lines of the same phase (``r % period``),
    so that a seamless image scores 1.

    Args:
        image: ``(bands, H, W)`` float.
        borders_y: output rows ``r`` where a window border lies between rows ``r - 1`` and ``r``.
        borders_x: output columns likewise.
        period: the phase period in output pixels (the integer scale; 1 compares with every other line).
    """

    def one_axis(steps: np.ndarray, borders: list[int]) -> tuple[list[float], list[float]]:
        lines = np.arange(1, len(steps) + 1)  # steps[r - 1]: between r - 1 and r
        phases = {r % period for r in borders}
        other = [steps[r - 1] for r in lines if r % period in phases and r not in borders]
        return [steps[r - 1] for r in borders], other

    dy = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))
    dx = np.abs(np.diff(image, axis=2)).mean(axis=(0, 1))
    at_y, rest_y = one_axis(dy, borders_y)
    at_x, rest_x = one_axis(dx, borders_x)
    return float(np.mean(at_y + at_x) / np.mean(rest_y + rest_x))


def _borders(plan) -> tuple[list[int], list[int]]:
    """The output positions of the window cores' edges (where neighbouring windows meet)."""
    from neurop_diff_diffusers.jobs.scene import core_bounds, output_start

    ys = [output_start(b, plan.size[0], plan.out_size[0]) for b in core_bounds(plan.size[0], plan.window)[1:-1]]
    xs = [output_start(b, plan.size[1], plan.out_size[1]) for b in core_bounds(plan.size[1], plan.window)[1:-1]]
    return ys, xs


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def cmd_fidelity(args: argparse.Namespace) -> None:
    import rasterio
    import torch

    from neurop_diff_diffusers.jobs.scene import ScenePlan, upscale_scene
    from neurop_diff_diffusers.runtime.loading import load_pipeline

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    scene = make_single_scene(out / f"fidelity_{args.side}.tif", args.side)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    modes = {"operator": {"prior_only": True}, "diffusion": {"num_inference_steps": args.steps}}
    rows = []
    for mode in args.modes:
        kwargs = modes[mode]
        whole_path = out / f"fid_{mode}_whole.tif"
        start = time.perf_counter()
        upscale_scene(pipe, scene, whole_path, scale=args.scale, window=4096, halo=0, overwrite=True, **kwargs)
        whole_s = time.perf_counter() - start
        with rasterio.open(whole_path) as f:
            whole = f.read()
        for window, halo in args.configs:
            path = out / f"fid_{mode}_{window}_{halo}.tif"
            start = time.perf_counter()
            upscale_scene(pipe, scene, path, scale=args.scale, window=window, halo=halo, overwrite=True, **kwargs)
            seconds = time.perf_counter() - start
            with rasterio.open(path) as f:
                tiled = f.read()
            plan = ScenePlan.create((args.side, args.side), tiled.shape[1:], window, halo)
            ys, xs = _borders(plan)
            # the same phase: the integer scale times the 8 px blocks of the JPEG source (block edges are steeper)
            period = args.period or (8 * round(args.scale) if float(args.scale).is_integer() else 1)
            row = {
                "mode": mode,
                "scale": args.scale,
                "window": window,
                "halo": halo,
                "windows": len(plan.windows()),
                "psnr_vs_whole": round(_psnr(tiled, whole), 2),
                "seam_ratio": round(seam_ratio(tiled.astype(np.float64), ys, xs, period), 3),
                "seam_ratio_whole_scene_same_lines": round(seam_ratio(whole.astype(np.float64), ys, xs, period), 3),
                "seconds": round(seconds, 1),
                "whole_seconds": round(whole_s, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / f"fidelity_{args.side}.json").write_text(json.dumps(rows, indent=2) + "\n")


def cmd_throughput(args: argparse.Namespace) -> None:
    """Output kilopixels per second of ``neurop-diff upscale scene.tif --scale 2`` with the operator alone and with
    the default diffusion, for this checkout and, with ``--before_src``, another checkout's ``src`` (e.g. an earlier
    release), alternating in one run (a fresh process each, model loading included)."""
    out = Path(args.out)
    scene = make_scene(out / f"throughput_{args.side}.tif", args.side)
    sources = {"this checkout": None} if args.before_src is None else {"before": args.before_src, "after": None}
    rows = []
    for mode in args.modes:
        for _ in range(args.repeats):
            for label, src in sources.items():
                target = out / f"throughput_{args.side}_x2.tif"
                command = [sys.executable, "-m", "neurop_diff_diffusers.cli", "upscale", str(scene), "-o", str(target)]
                command += [
                    "--scale",
                    "2",
                    "--overwrite",
                    *(["--prior-only"] if mode == "operator" else []),
                    *args.extra,
                ]
                env = dict(os.environ)
                if src is not None:
                    env["PYTHONPATH"] = str(Path(src).resolve())
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    raise RuntimeError(f"{label}: {' '.join(command)} failed: {done.stderr[-2000:]}")
                kpx = (2 * args.side) ** 2 / 1000
                row = {"mode": mode, "code": label, "seconds": round(seconds, 2), "kpx_per_s": round(kpx / seconds, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                target.unlink(missing_ok=True)
    (out / "throughput.json").write_text(json.dumps({"side": args.side, "rows": rows}, indent=2) + "\n")
    print("| mode | code | kpx/s (best) |\n| --- | --- | --- |")
    for mode in args.modes:
        for label in sources:
            best = max(r["kpx_per_s"] for r in rows if r["mode"] == mode and r["code"] == label)
            print(f"| {mode} | {label} | {best:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mem = sub.add_parser("memory", help="peak RSS and time of the CLI on growing scenes")
    mem.add_argument("--sides", type=int, nargs="+", default=[800, 1600, 3200])
    mem.add_argument("--out", default="/tmp/neurop-diff-scene")
    mem.add_argument("--keep", action="store_true", help="keep the test scenes")
    mem.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for neurop-diff upscale")
    fid = sub.add_parser("fidelity", help="windowed vs whole-scene: PSNR and seam ratio")
    fid.add_argument("--side", type=int, default=384)
    fid.add_argument("--scale", type=float, default=2.0)
    fid.add_argument("--steps", type=int, default=10)
    fid.add_argument("--model", default=None)
    fid.add_argument("--threads", type=int, default=1)
    fid.add_argument("--modes", nargs="+", default=["operator", "diffusion"], choices=["operator", "diffusion"])
    fid.add_argument(
        "--configs",
        type=lambda t: tuple(int(v) for v in t.split(",")),
        nargs="+",
        default=[(64, 8), (128, 8), (128, 16), (128, 32), (256, 16)],
        help="WINDOW,HALO pairs",
    )
    fid.add_argument("--period", type=int, default=None, help="seam phase period (default 8 x scale: JPEG blocks)")
    fid.add_argument("--out", default="/tmp/neurop-diff-scene")
    thr = sub.add_parser("throughput", help="kpx/s of the CLI (operator alone, default diffusion), before and after")
    thr.add_argument("--side", type=int, default=256, help="the scene's side in pixels (the output is twice that)")
    thr.add_argument("--before_src", default=None, help="another checkout's src folder to time beside this one")
    thr.add_argument("--repeats", type=int, default=1)
    thr.add_argument("--modes", nargs="+", default=["operator", "diffusion"], choices=["operator", "diffusion"])
    thr.add_argument("--out", default="/tmp/neurop-diff-scene")
    thr.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for neurop-diff upscale")
    args = parser.parse_args(argv)
    {"memory": cmd_memory, "fidelity": cmd_fidelity, "throughput": cmd_throughput}[args.command](args)


if __name__ == "__main__":
    main()

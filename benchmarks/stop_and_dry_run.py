"""Stop means stop, and a dry run in seconds: one run measures both on a GeoTIFF (README "Whole scenes").

On a ``--side`` px 3-band scene (a mosaic of real images, [`scene.make_scene`]) at x2 with ``--window`` and the
embedded model at ``--steps``:

- ``dry_run``: the wall time of ``neurop-diff upscale ... --dry-run`` and its estimate (parsed from its report),
  against the real run: the command's wall time and its windows' time (the progress bar's elapsed time);
- ``stop``: the same command started again (fresh output), SIGINT sent as soon as the first window file is saved:
  the seconds from the signal to the exit, the exit code, the windows kept, whether an output was written; then
  the same command once more: it resumes from the kept windows (the bar starts there) and writes the same bytes as
  the uninterrupted run.

The machine's load average is recorded before and after (a shared machine skews every timing). Prints the figures
and writes them as JSON (``--out``).

Example:
    python benchmarks/stop_and_dry_run.py --side 384 --window 96 --steps 20 --out runs/stop
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene import make_scene  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _command(src: Path, dst: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    flags = ["--scale", "2", "--window", str(args.window), "--steps", str(args.steps), *extra]
    return [sys.executable, "-m", "neurop_diff_diffusers.cli", "upscale", str(src), "-o", str(dst), *flags]


def _timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done


def _bar_seconds(stderr: str) -> float | None:
    """The progress bar's last elapsed time (``[MM:SS<`` or ``[H:MM:SS<``)."""
    found = re.findall(r"\[(?:(\d+):)?(\d+):(\d+)<", stderr)
    if not found:
        return None
    h, m, s = found[-1]
    return 3600 * int(h or 0) + 60 * int(m) + int(s)


def _estimate(text: str) -> dict[str, float]:
    """The dry run's estimate and basis, from its report."""
    rounds, workers, window = re.search(r"= (\d+) round\(s\) of (\d+) window\(s\) x ([\d.]+) s", text).groups()
    step, steps = re.search(r"one denoising step ([\d.]+) s x (\d+) steps", text).groups()
    return {
        "estimated_seconds": int(rounds) * float(window),
        "window_seconds": float(window),
        "step_seconds": float(step),
        "steps_per_window": int(steps),
        "workers": int(workers),
    }


def _stop_run(command: list[str], folder: Path, dst: Path) -> dict[str, object]:
    """Start ``command``, SIGINT when the first window is saved; the stop's figures."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not list(folder.glob("w*.npy")) and proc.poll() is None:
        time.sleep(0.02)
    first_window = time.perf_counter() - start
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=3600)
    return {
        "first_window_after_s": round(first_window, 2),
        "exit_after_signal_s": round(time.perf_counter() - sent, 2),
        "exit_code": proc.returncode,
        "windows_kept": len(list(folder.glob("w*.npy"))),
        "output_written": dst.exists(),
        "message": [line for line in err.replace("\r", "\n").splitlines() if line.startswith("neurop-diff")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--window", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("stop_and_dry_run"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    src = make_scene(args.out / f"scene{args.side}.tif", args.side)
    real, stopped, dry = args.out / "real.tif", args.out / "stopped.tif", args.out / "dry.tif"
    for path in (real, stopped):
        path.unlink(missing_ok=True)
        shutil.rmtree(path.parent / f".{path.name}.neurop-diff-scene", ignore_errors=True)
    load_before = os.getloadavg()

    dry_seconds, done = _timed(_command(src, dry, args, "--dry-run"))
    estimate = _estimate(done.stdout)
    real_seconds, done = _timed(_command(src, real, args))
    windows_seconds = _bar_seconds(done.stderr)

    folder = stopped.parent / f".{stopped.name}.neurop-diff-scene"
    stop = _stop_run(_command(src, stopped, args), folder, stopped)
    resume_seconds, done = _timed(_command(src, stopped, args))
    total = estimate["steps_per_window"] * (args.side // args.window) ** 2
    resumed_from = re.search(r"(\d+)/" + str(total), done.stderr)
    load_after = os.getloadavg()

    one_window = estimate["window_seconds"]
    results = {
        "scene": f"{args.side}x{args.side} px, 3 bands uint8, x2, window {args.window}, {args.steps} steps",
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "dry_run": {
            "wall_seconds": round(dry_seconds, 2),
            **estimate,
            "real_wall_seconds": round(real_seconds, 2),
            "real_windows_seconds": windows_seconds,
            "dry_over_real_wall": round(dry_seconds / real_seconds, 3),
            "estimate_over_real_windows": round(estimate["estimated_seconds"] / windows_seconds, 3)
            if windows_seconds
            else None,
            "estimate_over_real_wall": round(estimate["estimated_seconds"] / real_seconds, 3),
        },
        "stop": {
            **stop,
            "bound_s": round(max(10.0, 1.5 * one_window), 2),
            "resume_wall_seconds": round(resume_seconds, 2),
            "resume_progress_started_at": resumed_from.group(0) if resumed_from else None,
            "resumed_output_equals_uninterrupted": stopped.read_bytes() == real.read_bytes(),
        },
    }
    print(json.dumps(results, indent=2))
    (args.out / "stop_and_dry_run.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

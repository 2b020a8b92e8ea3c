"""Stop means stop (a stop flag checked between denoising steps; SIGINT / SIGTERM in the CLI), the dry run from one
denoising step, and progress over denoising steps; small rasters and the tiny random model."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")

from conftest import smooth_scene, write_geotiff  # noqa: E402
from neurop_diff_diffusers.jobs.scene import dry_run, prepare_scene, upscale_scene, work_folder  # noqa: E402
from neurop_diff_diffusers.jobs.scene.workers import window_steps  # noqa: E402
from neurop_diff_diffusers.jobs.stopping import RunStopped  # noqa: E402
from neurop_diff_diffusers.jobs.upscale_file import JobOptions, plan_file, run_job  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
SCENE = dict(scale=2, window=16, halo=4, seed=1)  # a 32 x 32 scene: 2 x 2 = 4 windows


class _Steps:
    """A progress bar that records its total and counts the steps; sets ``stop`` at step ``stop_at``."""

    def __init__(self, stop=None, stop_at=None):
        self.stop, self.stop_at, self.total, self.initial, self.n = stop, stop_at, None, None, 0

    def __call__(self, total, done):
        self.total, self.initial = total, done
        return self

    def update(self, n):
        self.n += n
        if self.stop_at is not None and self.n >= self.stop_at:
            self.stop.set()

    def close(self):
        pass


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stop_flag_ends_the_run_between_steps_and_the_same_call_resumes_to_the_same_bytes(pipe, tmp_path, workers):
    path = write_geotiff(tmp_path / "s.tif", smooth_scene(32, 32))
    steps = 4
    stop = threading.Event()
    bar = _Steps(stop, stop_at=steps + 1)  # the first step of the second window (in order, with one worker)
    target = tmp_path / "o.tif"
    with pytest.raises(RunStopped):
        upscale_scene(pipe, path, target, num_inference_steps=steps, workers=workers, progress=bar, stop=stop, **SCENE)
    assert bar.total == 4 * steps
    assert bar.n < 4 * steps  # fewer steps ran than windows x steps
    saved = sorted(p.name for p in work_folder(target).glob("w*.npy"))
    if workers == 1:  # exactly one more step ran: the one that saw the flag; the first window is kept
        assert bar.n == steps + 1 and saved == ["w000000.npy"]
    assert len(saved) < 4 and not target.exists()
    resumed = _Steps()
    upscale_scene(pipe, path, target, num_inference_steps=steps, workers=workers, progress=resumed, **SCENE)
    assert (resumed.total, resumed.initial) == (4 * steps, len(saved) * steps)
    assert resumed.initial + resumed.n == resumed.total
    upscale_scene(pipe, path, tmp_path / "u.tif", num_inference_steps=steps, workers=workers, **SCENE)
    assert target.read_bytes() == (tmp_path / "u.tif").read_bytes()
    assert not work_folder(target).exists()


def test_a_flag_set_before_the_run_computes_nothing_and_leaves_no_work_folder(pipe, tmp_path):
    path = write_geotiff(tmp_path / "s.tif", smooth_scene(32, 32))
    stop = threading.Event()
    stop.set()
    with pytest.raises(RunStopped):
        upscale_scene(pipe, path, tmp_path / "o.tif", num_inference_steps=2, stop=stop, **SCENE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    with pytest.raises(TypeError, match="`stop` must be None or a flag with is_set()"):
        upscale_scene(pipe, path, tmp_path / "o.tif", stop=True, **SCENE)


def test_progress_counts_windows_times_steps_strength_and_the_prior_alone(pipe, tmp_path):
    path = write_geotiff(tmp_path / "s.tif", smooth_scene(32, 32))
    bar = _Steps()
    upscale_scene(pipe, path, tmp_path / "o.tif", num_inference_steps=3, workers=1, progress=bar, **SCENE)
    assert (bar.total, bar.initial, bar.n) == (12, 0, 12)
    job = prepare_scene(path, tmp_path / "x.tif", scale=2, window=16, halo=4, num_inference_steps=10, strength=0.5)
    assert window_steps(pipe, job) == 5
    job = prepare_scene(path, tmp_path / "x.tif", scale=2, window=16, halo=4, prior_only=True)
    assert window_steps(pipe, job) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_the_dry_run_times_one_step_per_worker_never_the_whole_sampler(pipe, tmp_path, workers):
    path = write_geotiff(tmp_path / "s.tif", smooth_scene(40, 60))
    job = prepare_scene(path, tmp_path / "o.tif", scale=2, window=16, halo=4, num_inference_steps=30)
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        report = dry_run(pipe, job, workers=workers)
    finally:
        hook.remove()
    assert len(calls) == workers  # one denoising step (one UNet call) on each worker, at once
    assert report["windows"] == 12 and report["steps_per_window"] == 30 and report["workers"] == workers
    one = report["read_seconds"] + report["operator_seconds"] + 30 * report["step_seconds"] + report["write_seconds"]
    assert report["step_seconds"] > 0 and report["window_seconds"] == pytest.approx(one)
    assert report["estimated_seconds"] == pytest.approx(math.ceil(12 / workers) * one)
    assert "x 30 steps" in report["text"] and f"timed with {workers} worker(s) at once" in report["text"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_a_plain_image_job_stops_between_steps_and_writes_nothing(pipe, tmp_path):
    from PIL import Image

    src = tmp_path / "a.png"
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(src)
    job = plan_file(src, tmp_path / "a_x2.png", 2.0, None, JobOptions(steps=5))
    stop, calls = threading.Event(), []

    def first_step(*args):  # the flag is set during the first denoising step
        calls.append(1)
        stop.set()

    hook = pipe.unet.register_forward_hook(first_step)
    try:
        with pytest.raises(RunStopped):
            run_job(pipe, job, stop=stop)
    finally:
        hook.remove()
    assert len(calls) == 1 and not (tmp_path / "a_x2.png").exists()


def _env():
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_the_first_window_stops_the_command_and_a_rerun_completes(tmp_path, sig, code):
    path = write_geotiff(tmp_path / "s.tif", smooth_scene(64, 64))
    out = tmp_path / "k.tif"
    flags = [str(path), "-o", str(out), "--scale", "2", "--steps", "20", "--window", "16", "--halo", "4"]
    command = [sys.executable, "-m", "neurop_diff_diffusers.cli", "upscale", *flags, "--model", "preset:tiny"]
    folder = work_folder(out)
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(folder.glob("w*.npy")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)  # 16 windows x 20 steps would take longer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err[-2000:]
    kept = len(list(folder.glob("w*.npy")))
    assert 1 <= kept < 16 and not out.exists()
    assert "stopping after the denoising steps in flight" in err and f"kept in {folder}" in err
    rerun = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{kept * 20}/320" in rerun.stderr and out.exists() and not folder.exists()


def test_a_stopped_batch_exits_130_writes_no_output_and_a_rerun_completes(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from neurop_diff_diffusers.cli import batch as cli_batch
    from neurop_diff_diffusers.cli import commands
    from neurop_diff_diffusers.cli.helpers import SignalStop

    (tmp_path / "in").mkdir()
    for k in range(2):
        Image.fromarray(np.full((12, 12, 3), 40 * k, np.uint8)).save(tmp_path / "in" / f"a{k}.png")

    @contextlib.contextmanager
    def signalled():  # Ctrl-C before the first file
        flag = SignalStop()
        flag.signum = signal.SIGINT
        flag.set()
        yield flag

    monkeypatch.setattr(cli_batch, "stop_on_signals", signalled)
    argv = ["upscale", "--input-dir", str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"), "--scale", "2"]
    argv += ["--steps", "2", "--model", "preset:tiny"]
    assert commands.main(argv) == 130
    assert "stopped; the files done are in" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.png"))
    monkeypatch.undo()
    assert commands.main(argv) == 0  # the folder's lock was released
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_the_app_stops_the_requests_of_a_closed_page_or_its_stop_and_removes_their_folder(tmp_path):
    pytest.importorskip("gradio", reason="the web app is the optional extra [app] (gradio)")
    from neurop_diff_diffusers import app

    (tmp_path / "work").mkdir()
    upscaler = app.Upscaler(app.AppConfig(model="preset:tiny"), tmp_path / "work")
    path = write_geotiff(tmp_path / "s.tif", smooth_scene(32, 32))
    with upscaler.session_stop("page-1") as stop, upscaler.session_stop("page-2") as other:
        assert upscaler.stop_session("page-1") == 1 and stop.is_set() and not other.is_set()
        with pytest.raises(app.InputFailed, match="stopped: the upscaling was cancelled"):
            upscaler.run(path, scale=2, steps=3, stop=stop)
    assert upscaler.stop_session("page-1") == 0  # a finished request is no longer registered
    assert list((tmp_path / "work").iterdir()) == []  # the request's folder is removed
    demo = app.build_app(app.AppConfig(model="preset:tiny"), workdir=tmp_path / "app")
    targets = [target[1] for dep in demo.fns.values() for target in dep.targets]
    assert "unload" in targets  # closing the page stops its requests
    assert any(getattr(block, "elem_id", None) == "stop" for block in demo.blocks.values())

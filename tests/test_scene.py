"""The scene engine: windows at scene coordinates, blending, determinism (order, workers, processes), resume after
SIGKILL, journal settings, COG output, dry run and value ranges; small rasters and the tiny random model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")
from rasterio.transform import from_origin  # noqa: E402

from conftest import one_error_line  # noqa: E402
from conftest import smooth_scene as _smooth_scene  # noqa: E402
from conftest import write_geotiff as _write  # noqa: E402
from neurop_diff_diffusers import build_pipeline  # noqa: E402
from neurop_diff_diffusers.cli import commands as cli  # noqa: E402
from neurop_diff_diffusers.file_safety import WORK_MARKER  # noqa: E402
from neurop_diff_diffusers.io.geo import STRETCH_TAG  # noqa: E402
from neurop_diff_diffusers.jobs.scene import (  # noqa: E402
    SceneOptions,
    ScenePlan,
    assemble_and_commit,
    compute_windows,
    output_start,
    parse_value_range,
    prepare_scene,
    ramp_weights,
    uncertainty_path,
    upscale_scene,
    work_folder,
)

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ("--model", "preset:tiny", "--seed", "3")


def _env():
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, out", [(40, 100), (37, 91), (10, 10), (723, 1807)])
def test_output_start_matches_pixel_centres(size, out):
    for r in range(size + 1):
        i = output_start(r, size, out)
        # the first output pixel whose centre (i + 0.5) * size / out is at or after r
        assert (i + 0.5) * size / out >= r - 1e-9
        assert i == 0 or (i - 0.5) * size / out < r
    assert output_start(size, size, out) == out


def test_plan_covers_the_output_and_weights_never_vanish():
    plan = ScenePlan.create((50, 70), (125, 175), window=16, halo=4)
    assert plan.grid == (4, 5) and len(plan.windows()) == 20
    covered = np.zeros(plan.out_size, int)
    for w in plan.windows():
        covered[slice(*w.out_rows), slice(*w.out_cols)] += 1
        assert w.lr_rows[0] >= 0 and w.lr_rows[1] <= 50
    assert covered.min() >= 1 and covered.max() == 4  # overlaps at the corners of four windows
    assert all(w.min() > 0 for w in plan.weights(0) + plan.weights(1))
    assert np.allclose(ramp_weights(8, 4, 0)[:4] + ramp_weights(8, 0, 4)[4:], 1.0)  # a partition of unity
    with pytest.raises(ValueError, match="`halo` must be an int in \\[0, window = 16\\]"):
        ScenePlan.create((50, 70), (125, 175), window=16, halo=17)
    with pytest.raises(ValueError, match="`window` must be an int >= 8"):
        ScenePlan.create((50, 70), (125, 175), window=4, halo=0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"window": 4}, ValueError, "`window` must be an int >= 8 (LR pixels), got 4."),
        ({"halo": 300}, ValueError, "`halo` must be an int in [0, window = 256] (LR pixels), got 300."),
        ({"workers": 0}, ValueError, "`workers` must be None (one window per intra-op thread) or an int >= 1, got 0."),
        ({"rgb_bands": (1, 2)}, ValueError, "`rgb_bands` must be three 1-based band numbers (ints >= 1), got (1, 2)."),
        ({"seed": 1.5}, ValueError, "`seed` must be an int, got 1.5."),
        ({"value_range": "p2"}, ValueError, "`value_range` must be 'minmax', 'LOW,HIGH' with LOW < HIGH"),
        ({"restart": "yes"}, TypeError, "`restart` must be a bool, got str."),
        ({"progress": 3}, TypeError, "`progress` must be None or a callable (total, done), got int."),
        ({"pipe_kwargs": {"output_type": "np"}}, TypeError, "`pipe_kwargs` must not hold `output_type`: it is set"),
        ({"pipe_kwargs": {"window": 8}}, TypeError, "`pipe_kwargs` must not hold `window`: it is a SceneOptions"),
        ({"num_samples": 2, "pipe_kwargs": {"prior_only": True}}, ValueError, "`num_samples` needs diffusion samples"),
    ],
)
def test_scene_options_are_checked_once_naming_the_argument(kwargs, error, message):
    with pytest.raises(error) as caught:
        SceneOptions(**kwargs)
    assert str(caught.value).startswith(message)


def test_scene_options_from_keywords_split_fields_seed_and_pipeline_arguments():
    options = SceneOptions.from_kwargs(
        window=64, generator=torch.Generator().manual_seed(9), num_inference_steps=3, chunk_size=None, strength=None
    )
    assert (options.window, options.halo, options.seed, options.num_samples) == (64, 16, 9, None)
    assert dict(options.pipe_kwargs) == {"num_inference_steps": 3, "strength": None}  # None dropped, but strength
    again = options.updated(num_samples=4, halo=0)
    assert (again.window, again.halo, again.seed, again.call_kwargs["num_samples"]) == (64, 0, 9, 4)
    assert options.updated(seed=None).seed == 9 and SceneOptions.from_kwargs().seed == 0
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator or None, got int"):
        SceneOptions.from_kwargs(generator=3)
    with pytest.raises(AttributeError):  # frozen
        options.window = 8


def test_options_object_and_keywords_give_the_same_bytes(pipe, tmp_path):
    path = _write(tmp_path / "s.tif", _smooth_scene(20, 24))
    by_name = upscale_scene(pipe, path, tmp_path / "a.tif", scale=2, window=8, halo=2, prior_only=True)
    options = SceneOptions(window=8, halo=2, pipe_kwargs={"prior_only": True})
    by_object = upscale_scene(pipe, path, tmp_path / "b.tif", scale=2, options=options)
    assert by_name.read_bytes() == by_object.read_bytes()
    with pytest.raises(ValueError, match="`halo` must be an int in \\[0, window = 8\\]"):  # keywords on top, checked
        upscale_scene(pipe, path, tmp_path / "c.tif", scale=2, options=options, halo=9)
    assert not (tmp_path / "c.tif").exists()


# --------------------------------------------------------------------------------------------------------------------
# Fidelity to the whole-scene pass
# --------------------------------------------------------------------------------------------------------------------
def test_one_window_is_the_whole_scene_pass(pipe, tmp_path):
    data = _smooth_scene(30, 38)
    path = _write(tmp_path / "s.tif", data)
    out = upscale_scene(pipe, path, tmp_path / "o.tif", scale=2.5, prior_only=True)
    whole = pipe(torch.from_numpy(data / 255.0).float()[None], scale=2.5, prior_only=True, output_type="np").images[0]
    expected = np.rint(whole.transpose(2, 0, 1) * 255.0)
    with rasterio.open(out) as dst:
        got = dst.read().astype(float)
    assert got.shape == (3, 75, 95)
    assert np.abs(got - expected).max() <= 1.0  # float summation order only


def test_windows_agree_with_the_whole_scene_and_show_no_seams(pipe, tmp_path):
    data = _smooth_scene(64, 64, seed=2)
    path = _write(tmp_path / "s.tif", data)
    whole = upscale_scene(pipe, path, tmp_path / "whole.tif", scale=2, prior_only=True, window=64, halo=0)
    tiled = upscale_scene(pipe, path, tmp_path / "tiled.tif", scale=2, prior_only=True, window=16, halo=8)
    with rasterio.open(whole) as a, rasterio.open(tiled) as b:
        a, b = a.read().astype(float), b.read().astype(float)
    psnr = 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))
    assert psnr > 30.0
    # seams: the mean step across window borders (output rows / columns 32, 64, 96) against the mean step elsewhere
    dy, dx = np.abs(np.diff(b, axis=1)).mean(axis=(0, 2)), np.abs(np.diff(b, axis=2)).mean(axis=(0, 1))
    borders = [31, 63, 95]
    ratio = np.mean(np.r_[dy[borders], dx[borders]]) / np.mean(np.r_[np.delete(dy, borders), np.delete(dx, borders)])
    assert ratio < 1.1


# --------------------------------------------------------------------------------------------------------------------
# Determinism: order, workers, processes
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("samples", [None, 2], ids=["image", "uncertainty"])
def test_window_order_and_workers_do_not_change_a_bit(pipe, tmp_path, samples):
    data = _smooth_scene(40, 44)
    path = _write(tmp_path / "s.tif", data, nodata=None)
    extra = {} if samples is None else {"num_samples": samples}  # the uncertainty map: the same bytes too
    kwargs = dict(scale=2, window=16, halo=4, num_inference_steps=2, generator=torch.Generator().manual_seed(5))
    one = upscale_scene(pipe, path, tmp_path / "one.tif", workers=1, **kwargs, **extra)
    kwargs["generator"] = torch.Generator().manual_seed(5)
    two = upscale_scene(pipe, path, tmp_path / "two.tif", workers=2, **kwargs, **extra)
    job = prepare_scene(path, tmp_path / "rev.tif", scale=2, window=16, halo=4, seed=5, num_inference_steps=2, **extra)
    job.folder.mkdir()
    compute_windows(pipe, job, list(range(len(job.plan.windows())))[::-1], workers=1)  # the other way round
    rev = assemble_and_commit(job, overwrite=False)
    outputs = [one, two, rev] if samples is None else [one, two, rev, *map(uncertainty_path, (one, two, rev))]
    assert len({p.read_bytes() for p in outputs[:3]}) == 1 and len({p.read_bytes() for p in outputs[3:]}) <= 1
    assert not work_folder(one).exists() and not work_folder(two).exists()
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == sorted(["s.tif", *(p.name for p in outputs)])


def _launch(n, *args):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command += ["-m", "neurop_diff_diffusers.cli", "upscale", *map(str, args), "--device", "cpu"]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("extra", [(), ("--uncertainty", "2")], ids=["image", "uncertainty"])
def test_two_processes_write_the_file_of_one_process_bit_for_bit(tmp_path, extra):
    path = _write(tmp_path / "s.tif", _smooth_scene(40, 48), nodata=0)
    flags = ("--scale", "2", "--steps", "2", "--window", "16", "--halo", "4", *TINY, *extra)
    assert cli.main(["upscale", str(path), "-o", str(tmp_path / "one.tif"), *flags]) == 0
    done = _launch(2, path, "-o", tmp_path / "two.tif", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "one.tif").read_bytes() == (tmp_path / "two.tif").read_bytes()
    names = ["one.tif", "s.tif", "two.tif"]
    if extra:  # the map, blended from windows computed by both processes
        one, two = tmp_path / "one.uncertainty.tif", tmp_path / "two.uncertainty.tif"
        assert one.read_bytes() == two.read_bytes()
        names += [one.name, two.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# --------------------------------------------------------------------------------------------------------------------
# Resume and the journal
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [(), ("--uncertainty", "2")], ids=["image", "uncertainty"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, extra):
    path = _write(tmp_path / "s.tif", _smooth_scene(64, 64))
    flags = [str(path), "--scale", "2", "--steps", "6", "--window", "16", "--halo", "4", "--workers", "1", *TINY]
    flags += extra
    command = [sys.executable, "-m", "neurop_diff_diffusers.cli", "upscale", *flags, "-o", str(tmp_path / "k.tif")]
    folder = work_folder(tmp_path / "k.tif")
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list(folder.glob("w*.npy"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done_before = len(list(folder.glob("w*.npy")))
    assert 3 <= done_before < 16 and not (tmp_path / "k.tif").exists()
    assert not (tmp_path / "k.uncertainty.tif").exists()
    journal = json.loads((folder / "journal.json").read_text())
    assert journal["windows"] == 16 and journal["settings"]["window"] == 16
    assert journal["settings"].get("num_samples") == (2 if extra else None)
    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{done_before * 6}/96" in resumed.stderr  # the bar (steps) starts at the windows already done
    assert cli.main(["upscale", *flags, "-o", str(tmp_path / "u.tif")]) == 0
    assert (tmp_path / "k.tif").read_bytes() == (tmp_path / "u.tif").read_bytes()
    if extra:  # each window's map was saved with it: the resumed map is the uninterrupted one
        assert (tmp_path / "k.uncertainty.tif").read_bytes() == (tmp_path / "u.uncertainty.tif").read_bytes()
    assert not folder.exists()


@pytest.mark.parametrize(
    "first, then, key",
    [
        ({}, {"num_inference_steps": 3}, "pipeline"),
        ({"num_samples": 2}, {"num_samples": 3}, "num_samples"),  # another number of samples for the map
        ({"num_samples": 2}, {}, "num_samples"),  # no map now: the saved windows hold one
        ({"value_range": "p2,p98"}, {"value_range": "p2,p98", "clip": True}, "clip"),  # clipped windows now
    ],
)
def test_a_journal_of_other_settings_is_refused_then_restarted(pipe, tmp_path, first, then, key):
    path = _write(tmp_path / "s.tif", _smooth_scene(32, 32))
    target = tmp_path / "o.tif"
    calls = []

    def stop_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _partial_run(pipe, path, target, stop_after_two, **first)
    folder = work_folder(target)
    assert len(list(folder.glob("w*.npy"))) == 2
    again = {"num_inference_steps": 2, **then}
    with pytest.raises(ValueError, match=rf"other settings \({key}\).*--restart"):
        upscale_scene(pipe, path, target, scale=2, window=16, halo=4, seed=1, **again)
    assert len(list(folder.glob("w*.npy"))) == 2  # untouched
    upscale_scene(pipe, path, target, scale=2, window=16, halo=4, seed=1, restart=True, **again)
    assert target.exists() and not folder.exists()
    assert uncertainty_path(target).exists() == ("num_samples" in then)


def _partial_run(pipe, path, target, hook, **kwargs):
    """Run the engine with a progress hook called at the first step of each window after the first (two steps per
    window): a hook that fails at its second call is a crash midway, after two windows."""

    class Bar:
        total, n = 8, 0

        def update(self, n):
            self.n += n
            if self.n % 2 == 1 and self.n > 1:
                hook()

    upscale_scene(
        pipe, path, target, scale=2, window=16, halo=4, num_inference_steps=2, seed=1, workers=1,
        progress=lambda total, done: Bar(), **kwargs,
    )  # fmt: skip


def test_cli_says_which_flag_discards_a_stale_journal(tmp_path, capsys):
    path = _write(tmp_path / "s.tif", _smooth_scene(20, 20))
    folder = work_folder(tmp_path / "o.tif")
    folder.mkdir()
    (folder / WORK_MARKER).write_text("an earlier run")  # a folder this tool made
    (folder / "journal.json").write_text(json.dumps({"settings": {"seed": 99}, "windows": 1}))
    assert cli.main(["upscale", str(path), "-o", str(tmp_path / "o.tif"), "--scale", "2", "--prior-only", *TINY]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert (
        cli.main(
            ["upscale", str(path), "-o", str(tmp_path / "o.tif"), "--scale", "2", "--prior-only", "--restart", *TINY]
        )
        == 0
    )


# --------------------------------------------------------------------------------------------------------------------
# Output: a COG, BigTIFF when needed, georeferencing and nodata as the whole-scene path
# --------------------------------------------------------------------------------------------------------------------
def test_output_is_a_valid_cog_with_overviews(tmp_path):
    cogeo = pytest.importorskip("rio_cogeo.cogeo", reason="rio-cogeo validates COGs (extra [test])")
    data = np.random.default_rng(0).integers(1, 4000, (4, 300, 280), dtype=np.uint16)
    data[:, :20, :30] = 0
    path = _write(tmp_path / "s.tif", data, nodata=0)
    out = tmp_path / "o.tif"
    assert (
        cli.main(["upscale", str(path), "-o", str(out), "--scale", "2", "--prior-only", "--window", "128", *TINY]) == 0
    )
    valid, errors, _ = cogeo.cog_validate(str(out))
    assert valid, errors
    with rasterio.open(path) as src, rasterio.open(out) as dst:
        assert dst.profile["tiled"] and dst.block_shapes[0] == (512, 512) and dst.compression.value == "DEFLATE"
        assert dst.overviews(1) == [2] and dst.crs == src.crs and dst.nodata == 0
        assert (dst.width, dst.height) == (560, 600) and dst.transform.a == 5.0
        assert (dst.read(1, window=((0, 40), (0, 60))) == 0).all() and json.loads(dst.tags()[STRETCH_TAG])


# --------------------------------------------------------------------------------------------------------------------
# Dry run and value ranges
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [(), ("--uncertainty", "3")], ids=["image", "uncertainty"])
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, extra):
    path = _write(tmp_path / "s.tif", _smooth_scene(40, 60))
    out = tmp_path / "o.tif"
    flags = ["--scale", "2", "--dry-run", "--window", "16", "--halo", "4", "--steps", "2", *TINY, *extra]
    assert cli.main(["upscale", str(path), "-o", str(out), *flags]) == 0
    text = capsys.readouterr().out
    assert "40x60 px (3 bands) -> 80x120 px" in text and "windows: 3 x 4 = 12" in text
    assert "estimated time:" in text and "estimated peak memory:" in text
    if extra:  # the map, its size, and one more plane in the strip accumulator
        assert f"uncertainty map: {tmp_path / 'o.uncertainty.tif'} (80x120 px, 1 band float32 = 0 MB" in text
        assert "3 samples per window" in text and "strip accumulator: (3 + 1 map + 1) x" in text
    else:
        assert "uncertainty" not in text and "strip accumulator: (3 + 1) x" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_value_range_forms_and_errors():
    assert str(parse_value_range("0,10000")) == "0,10000" and str(parse_value_range(" p2 , p98 ")) == "p2,p98"
    assert parse_value_range(None).kind == "minmax"
    for bad in ("10,0", "p5,p101", "x", "1,2,3"):
        with pytest.raises(ValueError, match="`value_range` must be"):
            parse_value_range(bad)


def _identity(image, output_size, output_type, **kwargs):
    assert tuple(image.shape[-2:]) == tuple(output_size)
    return type("Out", (), {"images": image.clone()})


def test_fixed_range_clips_counts_and_maps_back_to_input_units(tmp_path):
    data = np.random.default_rng(1).integers(0, 12000, (3, 20, 24), dtype=np.uint16)
    path = _write(tmp_path / "s.tif", data)
    outside = int((data > 10000).sum())
    with pytest.warns(UserWarning, match=f"{outside} of 1440 valid input values.*they were clipped"):
        out = upscale_scene(_identity, path, tmp_path / "o.tif", scale=1, value_range="0,10000", clip=True)
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(), np.minimum(data, 10000))  # input units; clipped above 10000
        assert dst.tags()["NEUROP_DIFF_VALUE_RANGE"] == "0,10000"
    with pytest.warns(UserWarning, match=f"{outside} of 1440 .*their part outside it was upscaled bicubically"):
        out = upscale_scene(_identity, path, tmp_path / "o.tif", scale=1, value_range="0,10000", overwrite=True)
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(), data)  # without clip: what lies outside is added back


def test_percentile_stretch_over_valid_pixels(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(1, 4096, (3, 30, 40), dtype=np.uint16)
    data[:, :5] = 0  # nodata rows, excluded from the percentiles
    path = _write(tmp_path / "s.tif", data, nodata=0)
    job = prepare_scene(path, tmp_path / "o.tif", scale=2, value_range="p2,p98")
    for b in range(3):
        valid = np.sort(data[b][data[b] > 0])
        assert job.stats.stretch.low[b] == valid[int(np.ceil(0.02 * valid.size)) - 1]
        assert job.stats.stretch.high[b] == valid[int(np.ceil(0.98 * valid.size)) - 1]
        expected = int((valid < job.stats.stretch.low[b]).sum() + (valid > job.stats.stretch.high[b]).sum())
        assert job.stats.clipped[b] == expected
    with pytest.warns(UserWarning, match="lie outside the stretch"):
        out = upscale_scene(_identity, path, tmp_path / "o.tif", scale=1, value_range="p2,p98", clip=True)
    with rasterio.open(out) as dst:
        got = dst.read()
    low, high = job.stats.stretch.low, job.stats.stretch.high
    for b in range(3):
        ok = data[b] > 0
        np.testing.assert_array_equal(got[b][ok], np.clip(data[b][ok], low[b], high[b]))
        assert (got[b][~ok] == 0).all()


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--value-range", "10,0"), "--value-range must be 'minmax', 'LOW,HIGH'"),
        (("--window", "4"), "--window must be >= 8"),
        (("--halo", "300"), "--halo must be in [0, --window = 256]"),
        (("--workers", "0"), "--workers must be >= 1"),
    ],
)
def test_bad_scene_flags_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    path = _write(tmp_path / "s.tif", _smooth_scene(20, 20))
    assert cli.main(["upscale", str(path), "-o", str(tmp_path / "o.tif"), "--scale", "2", *flags, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


# --------------------------------------------------------------------------------------------------------------------
# The raster behaviours of io/geo.py / io/rasters.py, window by window
# --------------------------------------------------------------------------------------------------------------------
def _bicubic(image, output_size, output_type, **kwargs):
    """A 'model' that returns the bicubic upscale of its window (deterministic, fast)."""
    up = torch.nn.functional.interpolate(image, size=output_size, mode="bicubic").clamp(0, 1)
    return type("Out", (), {"images": up})


def test_alpha_band_is_nearest_across_windows(tmp_path):
    """Several blended windows: the alpha band is still exactly the nearest-upscaled mask (no blending seams)."""
    data = _smooth_scene(40, 36, bands=4, seed=4)
    data[3] = 0
    data[3, 5:31, 7:29] = 255
    src = _write(tmp_path / "rgba.tif", data, photometric="rgb", alpha="YES")
    out = upscale_scene(_bicubic, src, tmp_path / "up.tif", scale=3, window=12, halo=4)
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(4), data[3].repeat(3, axis=0).repeat(3, axis=1))
        assert dst.colorinterp[3] == rasterio.enums.ColorInterp.alpha


def test_palette_and_undeclared_nan_across_windows(tmp_path):
    indices = np.zeros((1, 24, 20), np.uint8)
    indices[0, :, 10:] = 1
    pal = _write(tmp_path / "p.tif", indices, photometric="palette")
    with rasterio.open(pal, "r+") as dst:
        dst.write_colormap(1, {0: (10, 200, 30, 255), 1: (250, 40, 120, 255)})
    out = upscale_scene(_bicubic, pal, tmp_path / "rgb.tif", scale=1, window=8, halo=2)
    with rasterio.open(out) as dst:
        assert dst.count == 3 and dst.dtypes == ("uint8",) * 3
        np.testing.assert_array_equal(dst.read()[:, 0, :2].T, [[10, 200, 30]] * 2)
        np.testing.assert_array_equal(dst.read()[:, -1, -2:].T, [[250, 40, 120]] * 2)

    values = np.linspace(0, 1, 3 * 24 * 20, dtype=np.float32).reshape(3, 24, 20)
    values[:, 3, 17] = np.nan
    values[1, 20, 2] = np.inf
    src = _write(tmp_path / "f.tif", values)
    with pytest.warns(UserWarning, match="has 4 NaN or infinite band values that no nodata value marks"):
        out = upscale_scene(_bicubic, src, tmp_path / "f_up.tif", scale=2, window=8, halo=2)
    with rasterio.open(out) as dst:
        masks, got = dst.read_masks(1), dst.read()
    assert (masks[6:8, 34:36] == 0).all() and (masks[40:42, 4:6] == 0).all() and masks.sum() == 255 * (48 * 40 - 8)
    assert np.isfinite(got).all()  # the other pixels were not poisoned by the NaN


def test_a_nan_model_writes_nothing_even_prior_only(tmp_path):
    pipe = build_pipeline("tiny", seed=0)
    with torch.no_grad():
        for parameter in pipe.neural_operator.parameters():
            parameter.fill_(float("nan"))
    pipe.set_progress_bar_config(disable=True)
    src = _write(tmp_path / "scene.tif", _smooth_scene(20, 20))
    from neurop_diff_diffusers import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError):
        upscale_scene(pipe, src, tmp_path / "out.tif", scale=2, prior_only=True, window=8, halo=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]  # no output, no work folder


def test_cli_geotiff_output_goes_by_windows_but_the_app_keeps_its_cap(tmp_path):
    from neurop_diff_diffusers.jobs.upscale_file import InputFailed, prepare_job

    src = _write(tmp_path / "scene.tif", _smooth_scene(20, 20))
    job = prepare_job(src, tmp_path / "up.tif", 4.0, None, 1000)  # 80 x 80 = 6400 output pixels > 1000
    assert job[3] == (80, 80)
    with pytest.raises(InputFailed, match="the output 80x80 .* exceeds --max-pixels 1000"):
        prepare_job(src, tmp_path / "up.tif", 4.0, None, 1000, cap_geo_output=True)
    with pytest.raises(InputFailed, match="the input needs 3 bands x 20x20 pixels"):  # the input stage still counts
        prepare_job(src, tmp_path / "up.tif", 4.0, None, 50)


def test_pipeline_prior_argument_with_samples_and_back_projection(pipe):
    """The scene branch's ``prior=`` beside main's ``num_samples`` / ``data_consistency_steps``."""
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    prior = pipe(image, scale=2, prior_only=True, output_type="pt").images * 2 - 1
    common = dict(scale=2, num_inference_steps=2, output_type="pt")
    seeded = dict(num_samples=2, flip_samples=False)  # with flips a given prior is flipped, not recomputed
    own = pipe(image, generator=torch.Generator().manual_seed(1), **seeded, **common)
    given = pipe(image, generator=torch.Generator().manual_seed(1), prior=prior, **seeded, **common)
    torch.testing.assert_close(given.images, own.images, atol=1e-5, rtol=0)
    assert given.uncertainty.shape == (1, 16, 16)
    out = pipe(image, prior=prior, data_consistency_steps=3, **common).images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"`prior` must have shape \(1, 3, 16, 16\), got \(1, 3, 8, 8\)"):
        pipe(image, prior=prior[..., :8, :8], **common)
    with pytest.raises(TypeError, match="`prior` must be a torch.Tensor or None, got list"):
        pipe(image, prior=[0.0], **common)


# --------------------------------------------------------------------------------------------------------------------
# The uncertainty map of a scene (num_samples / --uncertainty N)
# --------------------------------------------------------------------------------------------------------------------
def test_one_window_map_and_mean_are_the_pipelines(pipe, tmp_path):
    """One window is the whole-scene pass: its output is the samples' mean and its map their spread, as
    ``pipe(..., num_samples=N, prior=...)`` returns them for the window's seed and prior (over flips, by default, the
    prior is flipped rather than recomputed on the flipped window)."""
    from neurop_diff_diffusers.jobs.scene import window_seed

    data = _smooth_scene(24, 20)
    path = _write(tmp_path / "s.tif", data)
    out = upscale_scene(pipe, path, tmp_path / "o.tif", scale=2, num_inference_steps=2, num_samples=3, seed=7)
    generator = torch.Generator().manual_seed(window_seed(7, 0))
    lr = torch.from_numpy(data / 255.0).float()[None]
    prior = pipe(lr, output_size=(48, 40), prior_only=True, output_type="pt").images * 2 - 1
    api = pipe(lr, output_size=(48, 40), num_inference_steps=2, num_samples=3, output_type="np", generator=generator,
               prior=prior)  # fmt: skip
    with rasterio.open(out) as dst, rasterio.open(uncertainty_path(out)) as spread:
        image, values = dst.read().astype(float), spread.read(1)
    np.testing.assert_allclose(image, np.rint(api.images[0].transpose(2, 0, 1) * 255), atol=1)
    np.testing.assert_allclose(values, api.uncertainty[0], atol=2e-3)  # the prior at scene coordinates: float order
    assert values.max() > 0.01


def test_uncertainty_map_is_a_float32_cog_georeferenced_like_the_output(pipe, tmp_path):
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC

    data = np.random.default_rng(3).integers(1, 4000, (4, 30, 26), dtype=np.uint16)
    corners = ((0, 0), (0, 26), (30, 0))
    gcps = [GroundControlPoint(row=r, col=c, x=13.0 + c / 1e3, y=52.0 - r / 1e3) for r, c in corners]
    unit, one = [0] * 20, [1] + [0] * 19  # an RPC model that is the identity on normalised coordinates
    rpcs = RPC(height_off=10, height_scale=50, lat_off=52, lat_scale=0.1, long_off=13, long_scale=0.1, line_off=15,
               line_scale=15, samp_off=13, samp_scale=13, line_num_coeff=[0, 0, 1] + unit[3:], line_den_coeff=one,
               samp_num_coeff=[0, 1] + unit[2:], samp_den_coeff=one)  # fmt: skip
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", width=26, height=30, count=4, dtype="uint16",
                       gcps=gcps, crs="EPSG:4326", rpcs=rpcs, nodata=0) as dst:  # fmt: skip
        dst.write(data)
    out = upscale_scene(pipe, tmp_path / "s.tif", tmp_path / "o.tif", scale=2.5, window=12, halo=3,
                        num_inference_steps=2, num_samples=2, value_range="0,4000")  # fmt: skip
    spread_path = tmp_path / "o.uncertainty.tif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif", "o.uncertainty.tif", "s.tif"]
    with rasterio.open(out) as dst, rasterio.open(spread_path) as spread:
        assert spread.count == 1 and spread.dtypes == ("float32",) and spread.shape == dst.shape == (75, 65)
        assert [repr(g) for g in spread.gcps[0]] == [repr(g) for g in dst.gcps[0]] and len(dst.gcps[0]) == 3
        assert spread.gcps[0][1].col == 65.0 and spread.gcps[1] == dst.gcps[1] == rasterio.crs.CRS.from_epsg(4326)
        assert spread.transform == dst.transform
        assert spread.rpcs.to_dict() == dst.rpcs.to_dict() and spread.crs == dst.crs
        assert spread.nodata is None and spread.descriptions == ("uncertainty",)
        assert spread.tags()["NEUROP_DIFF_VALUE_RANGE"] == "0,4000"  # the 0..1 scale: 0..4000 in input units
        assert json.loads(spread.tags()["NEUROP_DIFF_UNCERTAINTY"])["samples"] == 2
        assert spread.profile["tiled"] and spread.compression.value == "DEFLATE"
        values = spread.read(1)
    # the spread is taken before clamping: a random tiny model's can exceed 0.5 (half the 0..1 range)
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() > 0.01
    cogeo = pytest.importorskip("rio_cogeo.cogeo", reason="rio-cogeo validates COGs (extra [test])")
    valid, errors, _ = cogeo.cog_validate(str(spread_path))
    assert valid, errors


def test_a_failed_commit_leaves_neither_the_output_nor_the_map(pipe, tmp_path):
    path = _write(tmp_path / "s.tif", _smooth_scene(20, 20))
    target = tmp_path / "o.tif"

    class Bar:  # the output appears (another process) while the last window is computed
        total, n = 4, 0

        def update(self, n):
            self.n += n
            if self.n == self.total:
                target.write_bytes(b"theirs")

    with pytest.raises(FileExistsError, match="o.tif` exists; pass overwrite=True"):
        upscale_scene(pipe, path, target, scale=2, window=10, halo=2, num_inference_steps=1, num_samples=2,
                      workers=1, progress=lambda total, done: Bar())  # fmt: skip
    assert target.read_bytes() == b"theirs"  # theirs, kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif", "s.tif"]  # no map without its output


def test_num_samples_refusals_come_before_any_work(pipe, tmp_path):
    path = _write(tmp_path / "s.tif", _smooth_scene(20, 20))
    with pytest.raises(ValueError, match="`num_samples` needs diffusion samples; it cannot go with `prior_only"):
        upscale_scene(pipe, path, tmp_path / "o.tif", scale=2, prior_only=True, num_samples=2)
    with pytest.raises(ValueError, match=r"`num_samples` must be None .* or an int in \[2, 64\], got 1"):
        upscale_scene(pipe, path, tmp_path / "o.tif", scale=2, num_samples=1)
    (tmp_path / "o.uncertainty.tif").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="o.uncertainty.tif` exists"):
        upscale_scene(pipe, path, tmp_path / "o.tif", scale=2, num_samples=2)
    renamed = path.rename(tmp_path / "in.uncertainty.tif")
    with pytest.raises(ValueError, match="would replace the input"):
        upscale_scene(pipe, renamed, tmp_path / "in.tif", scale=2, num_samples=2, overwrite=True)
    with pytest.raises(ValueError, match="needs a pipeline that returns `.uncertainty`"):
        upscale_scene(_identity, renamed, tmp_path / "x.tif", scale=1, num_samples=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.uncertainty.tif", "o.uncertainty.tif"]
    assert (tmp_path / "o.uncertainty.tif").read_bytes() == b"keep"


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--uncertainty", "2", "--prior-only"), "--uncertainty needs diffusion samples"),
        (("--uncertainty", "65"), "--uncertainty must be a number of samples in [2, 64]"),
        (("--uncertainty", "2", "-o", "OUT/o.tif"), "o.uncertainty.tif exists; pass --overwrite"),
    ],
)
def test_cli_uncertainty_refusals_of_a_geotiff_are_one_line_before_the_model(tmp_path, capsys, no_model, extra,
                                                                             message):  # fmt: skip
    path = _write(tmp_path / "s.tif", _smooth_scene(20, 20))
    (tmp_path / "o.uncertainty.tif").write_bytes(b"keep")
    extra = [e.replace("OUT", str(tmp_path)) for e in extra]
    output = [] if "-o" in extra else ["-o", str(tmp_path / "new.tif")]
    assert cli.main(["upscale", str(path), *output, "--scale", "2", *extra, *TINY]) == 2
    assert message in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.uncertainty.tif", "s.tif"]


def test_uncertainty_map_overviews_stay_non_negative(tmp_path):
    """The map's COG overviews are averages: GDAL's default (cubic) rings below 0 around an isolated bright pixel."""
    from neurop_diff_diffusers.jobs.scene.cog import write_cog

    values = np.zeros((600, 560), np.float32)
    values[::7, ::5] = 0.5
    profile = dict(driver="GTiff", width=560, height=600, count=1, dtype="float32", crs="EPSG:32633")
    with rasterio.open(tmp_path / "a.tif", "w", transform=from_origin(0, 0, 1, 1), **profile) as dst:
        dst.write(values, 1)
    lows = []
    for average in (False, True):
        write_cog(str(tmp_path / "a.tif"), str(tmp_path / f"{average}.tif"), "AVERAGE" if average else None)
        with rasterio.open(tmp_path / f"{average}.tif") as cog:
            assert cog.overviews(1) == [2]
            lows.append(cog.read(1, out_shape=(300, 280)).min())
    assert lows[0] < 0 and lows[1] == 0.0


# --------------------------------------------------------------------------------------------------------------------
# The input read once before the model runs: the header checked once, every block read once (the damage scan too)
# --------------------------------------------------------------------------------------------------------------------
class _ReadCounter:
    """Counts, per band and pixel of one input, how often rasterio read its values and its masks."""

    def __init__(self, monkeypatch, path: Path, shape: tuple[int, int, int]):
        from rasterio.io import DatasetReader

        self.path, self.counts, self.frozen = path.resolve(), {}, None
        for name in ("read", "read_masks"):
            self.counts[name] = np.zeros(shape, np.int64)
            monkeypatch.setattr(DatasetReader, name, self._wrap(name, getattr(DatasetReader, name)))

    def _wrap(self, name, original):
        def counting(src, *args, **kwargs):
            if Path(src.name).resolve() == self.path:
                indexes = args[0] if args else kwargs.get("indexes")
                bands = slice(None) if indexes is None else [i - 1 for i in np.atleast_1d(indexes)]
                w = kwargs.get("window")
                rows = slice(None) if w is None else slice(int(w.row_off), int(w.row_off + w.height))
                cols = slice(None) if w is None else slice(int(w.col_off), int(w.col_off + w.width))
                self.counts[name][bands, rows, cols] += 1
            return original(src, *args, **kwargs)

        return counting

    def freeze(self):
        """The counts so far (called when the first window starts: before the model runs)."""
        if self.frozen is None:
            self.frozen = {name: counts.copy() for name, counts in self.counts.items()}


@pytest.mark.parametrize(
    "dtype, value_range, entry",
    [
        ("uint16", None, "upscale_geotiff"),
        ("float32", "0,1000", "upscale_scene"),
        ("uint16", "p2,p98", "plan_raster"),
        ("uint16", "p2,p98", "cli"),
    ],
)
def test_each_pixel_is_read_once_before_the_model_runs(tmp_path, monkeypatch, dtype, value_range, entry):
    from neurop_diff_diffusers.jobs.scene import plan as scene_plan
    from neurop_diff_diffusers.jobs.scene import plan_raster, upscale_geotiff
    from neurop_diff_diffusers.jobs.scene import workers as scene_workers

    data = (_smooth_scene(30, 34, bands=4).astype(np.float64) * 7).astype(dtype)
    path = _write(tmp_path / "s.tif", data, nodata=0, tiled=True, blockxsize=16, blockysize=16)
    counter = _ReadCounter(monkeypatch, path, data.shape)
    inspected = []
    original_inspect, original_run = scene_plan.inspect_raster, scene_workers.run_window
    # the names that plan_raster and compute_windows look up (a patch of another module's name would not count)
    monkeypatch.setattr(scene_plan, "inspect_raster", lambda p: inspected.append(p) or original_inspect(p))
    monkeypatch.setattr(scene_workers, "run_window", lambda *a: counter.freeze() or original_run(*a))
    kwargs = dict(scale=2, window=12, halo=3, value_range=value_range, workers=1)
    if entry == "upscale_geotiff":
        out = upscale_geotiff(_bicubic, path, tmp_path / "o.tif", **kwargs)
    elif entry == "upscale_scene":
        out = upscale_scene(_bicubic, path, tmp_path / "o.tif", **kwargs)
    elif entry == "cli":  # the command plans the file (header, budget, statistics) before it loads its model
        flags = ["--scale", "2", "--window", "12", "--halo", "3", "--value-range", value_range, "--workers", "1"]
        assert cli.main(["upscale", str(path), *flags, *TINY, "-o", str(tmp_path / "o.tif")]) == 0
        out = tmp_path / "o.tif"
    else:  # a caller that checked the header and scanned the pixels before loading its model hands the plan on
        raster = plan_raster(path).scan(parse_value_range(value_range))
        assert raster.header.bands == 4 and raster.notes == () and raster.stats.valid[0] > 0
        out = upscale_scene(_bicubic, raster, tmp_path / "o.tif", **kwargs)
    assert counter.frozen is not None, "the first window never started: the patch missed the engine's run_window"
    assert np.array_equal(counter.frozen["read"], np.ones(data.shape, np.int64))  # every value read exactly once
    assert np.array_equal(counter.frozen["read_masks"], np.ones(data.shape, np.int64))
    assert len(inspected) == 1  # the header: read and checked once
    with rasterio.open(out) as dst:
        assert dst.shape == (60, 68) and dst.count == 4


def test_the_statistics_pass_is_the_damage_scan(tmp_path):
    path = _write(tmp_path / "s.tif", _smooth_scene(40, 40))
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as caught:
        upscale_scene(_bicubic, cut, tmp_path / "o.tif", scale=2, window=16, halo=2)
    assert str(caught.value).startswith("not a readable raster (") and "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif", "s.tif"]  # no output, no work folder


def test_channels_last_weights_have_the_fingerprint_of_contiguous_ones_and_a_geotiff_runs(tmp_path):
    from neurop_diff_diffusers.jobs.scene.journal import model_fingerprint
    from neurop_diff_diffusers.runtime.optimization import optimize_pipeline

    pipe = build_pipeline("tiny")
    before = model_fingerprint(pipe)
    optimize_pipeline(pipe, channels_last=True)  # (N, C, 1, 1) weights then have a last-axis stride of C
    assert model_fingerprint(pipe) == before
    path = _write(tmp_path / "s.tif", _smooth_scene(24, 24))
    out = tmp_path / "o.tif"
    assert (
        cli.main(["upscale", str(path), "--scale", "2", "--steps", "2", "--channels-last", *TINY, "-o", str(out)]) == 0
    )
    with rasterio.open(out) as dst:
        assert dst.shape == (48, 48)

"""The `neurop-diff` command: upscale (images and GeoTIFF), refusals before any work, atomic writes, info, export."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from neurop_diff_diffusers.cli import main
from neurop_diff_diffusers.jobs import upscale_file as upscale_job


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)
    return path


def _run(*args):
    return main([str(a) for a in args])


def test_upscale_writes_the_scaled_image(image, tmp_path, capsys):
    rc = _run(
        "upscale", image, "--scale", "2.5", "--model", "preset:tiny", "--steps", "2", "--out-dir", tmp_path / "o"
    )
    assert rc == 0
    out = tmp_path / "o" / "in_x2.5.png"
    assert Image.open(out).size == (40, 30)
    assert str(out) in capsys.readouterr().out


def test_upscale_explicit_size_and_output(image, tmp_path):
    out = tmp_path / "big.jpg"
    assert _run("upscale", image, "--size", "25x33", "-o", out, "--model", "preset:tiny", "--steps", "1") == 0
    assert Image.open(out).size == (33, 25)


def test_prior_only_is_deterministic(image, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert _run("upscale", image, "--scale", "3", "-o", out, "--model", "preset:tiny", "--prior-only") == 0
    np.testing.assert_array_equal(np.array(Image.open(a)), np.array(Image.open(b)))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scale", "0.5"], "--scale"),
        (["--scale", "nan"], "--scale"),
        (["--size", "10by10"], "--size"),
        (["--size", "0x10"], "--size"),
        (["--scale", "2", "--steps", "0"], "--steps"),
        (["--scale", "2", "--strength", "0"], "--strength"),
        (["--scale", "2", "--strength", "1.5"], "--strength"),
        (["--scale", "100", "--max-pixels", "1000"], "--max-pixels"),
        (["--scale", "2", "--model", "preset:nope"], "preset"),
        (["--scale", "2", "--model", "/does/not/exist"], ""),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(image, tmp_path, capsys, args, message):
    rc = _run("upscale", image, "--out-dir", tmp_path / "o", *args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("neurop-diff: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_missing_input_and_several_inputs_with_one_output(image, tmp_path, capsys):
    assert _run("upscale", tmp_path / "missing.png", "--scale", "2") == 2
    assert "input not found" in capsys.readouterr().err
    assert _run("upscale", image, image, "--scale", "2", "-o", tmp_path / "x.png") == 2
    assert "--out-dir" in capsys.readouterr().err


def test_never_overwrites_without_flag(image, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    assert _run("upscale", image, "--scale", "2", "-o", out, "--model", "preset:tiny", "--steps", "1") == 2
    assert out.read_bytes() == b"precious" and "--overwrite" in capsys.readouterr().err
    args = ("upscale", image, "--scale", "2", "-o", out, "--model", "preset:tiny", "--steps", "1", "--overwrite")
    assert _run(*args) == 0
    assert Image.open(out).size == (32, 24)


def test_interrupt_leaves_no_partial_file(image, tmp_path, monkeypatch, capsys):
    from neurop_diff_diffusers import NeurOpDiffPipeline

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(NeurOpDiffPipeline, "__call__", interrupted)
    rc = _run("upscale", image, "--scale", "2", "--out-dir", tmp_path / "o", "--model", "preset:tiny")
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_save_is_atomic_when_encoding_fails(tmp_path):
    class Broken:
        def save(self, path):
            with open(path, "wb") as f:
                f.write(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError):
        upscale_job.save_image_atomic(Broken(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_geotiff_keeps_georeferencing(tmp_path):
    rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo]")
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(100, 4000, (3, 10, 14), dtype=np.uint16)
    src = tmp_path / "scene.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=14,
        height=10,
        count=3,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(300000, 5000000, 2.0, 2.0),
        nodata=0,
    ) as dst:
        dst.write(data)
    assert _run("upscale", src, "--scale", "2.5", "--model", "preset:tiny", "--steps", "1") == 0
    with rasterio.open(tmp_path / "scene_x2.5.tif") as out:
        assert out.crs.to_epsg() == 32633 and out.shape == (25, 35) and out.dtypes[0] == "uint16"
        assert out.transform.a == pytest.approx(0.8) and (out.transform.c, out.transform.f) == (300000, 5000000)
    assert _run("upscale", src, "--scale", "2", "-o", tmp_path / "scene.png", "--model", "preset:tiny") == 2


def test_info_and_export(tmp_path, capsys):
    assert _run("info") == 0
    out = capsys.readouterr().out
    assert "torch" in out and "default model" in out
    assert _run("export", tmp_path / "hub", "--model", "preset:tiny") == 0
    index = json.loads((tmp_path / "hub" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_neurop_diff", "NeurOpDiffPipeline"]
    assert _run("export", tmp_path / "hub", "--model", "preset:tiny") == 2  # not empty


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "neurop_diff_diffusers.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "upscale" in result.stdout


@pytest.mark.parametrize("command", ["upscale", "batch", "export"])
def test_the_no_model_guard_stops_every_command_that_loads_the_model(tmp_path, no_model, command):
    """The ``no_model`` fixture of the refusal tests takes effect in every command (it replaces the loader that they
    all call in the end), so that a refusal test passing means the refusal came before the model."""
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (8, 8)).save(image)
    argv = {
        "upscale": ["upscale", image, "--scale", "2", "--out-dir", tmp_path / "o"],
        "batch": ["upscale", "--input-dir", image.parent, "--out-dir", tmp_path / "o", "--scale", "2"],
        "export": ["export", tmp_path / "exported"],
    }[command]
    with pytest.raises(AssertionError, match="the model was loaded"):
        _run(*argv, "--model", "preset:tiny")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], {"steps": 25, "dtype": "auto", "channels_last": True, "data_consistency": None}),
        (["--preset", "paper"], {"steps": 50, "dtype": "float32", "channels_last": False, "data_consistency": 0}),
        (["--steps", "7", "--no-channels-last"], {"steps": 7, "dtype": "auto", "channels_last": False}),
        (["--preset", "paper", "--dtype", "auto", "--data-consistency", "3"], {"steps": 50, "data_consistency": 3}),
    ],
    ids=["fast-default", "paper", "fast-overridden", "paper-overridden"],
)
def test_presets_fill_the_flags_left_unset(flags, expected):
    from neurop_diff_diffusers.cli.options import apply_preset, build_parser

    args = apply_preset(build_parser().parse_args(["upscale", "a.png", "--scale", "2", *flags]))
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize("preset", [None, "paper"])
def test_the_command_runs_with_the_presets_settings(image, tmp_path, monkeypatch, preset):
    """What reaches the model: the fast path by default (25 steps, dtype auto, channels-last), the paper's recipe
    with --preset paper (50 steps, float32, contiguous, no back-projection)."""
    from neurop_diff_diffusers.pipelines.pipeline_neurop_diff import NeurOpDiffPipeline
    from neurop_diff_diffusers.runtime import optimization  # the command imports optimize_pipeline from it when run

    optimized, calls = [], []
    real_optimize, real_call = optimization.optimize_pipeline, NeurOpDiffPipeline.__call__
    monkeypatch.setattr(
        optimization, "optimize_pipeline", lambda pipe, **kw: optimized.append(kw) or real_optimize(pipe, **kw)
    )
    monkeypatch.setattr(
        NeurOpDiffPipeline, "__call__", lambda self, *a, **kw: calls.append(kw) or real_call(self, *a, **kw)
    )
    flags = [] if preset is None else ["--preset", preset]
    assert _run("upscale", image, "--scale", "2", "--model", "preset:tiny", *flags, "-o", tmp_path / "o.png") == 0
    fast = preset is None
    assert optimized == [{"dtype": "auto" if fast else "float32", "channels_last": fast, "scheduler": None}]
    assert calls[0]["num_inference_steps"] == (25 if fast else 50)
    assert calls[0].get("data_consistency_steps") == (None if fast else 0)


def test_the_web_app_serves_the_fast_path_by_default():
    from neurop_diff_diffusers.app import AppConfig

    config = AppConfig()
    assert (config.default_steps, config.dtype, config.channels_last) == (25, "auto", True)

"""The web app's uncertainty map: the heat-map and overlay functions (known answers), the samples
setting (validated, within the pixel budget, not with the prior alone), the CLI's mean and ``.uncertainty.tif``, and a
toggle that redraws from the kept arrays without running the model again (a tiny random model)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES_DIR, run_cli
from neurop_diff_diffusers.io.heatmap import (
    HEATMAP_RAMP,
    overlay,
    ramp_colours,
    uncertainty_heatmap,
    uncertainty_scale,
)

LOWEST, HIGHEST = HEATMAP_RAMP[0][1], HEATMAP_RAMP[-1][1]

# ---- the pure functions ----


def test_ramp_runs_from_black_to_pale_yellow_with_rising_luminance():
    colours = ramp_colours(np.linspace(0, 1, 256)).astype(np.float64)
    assert colours.shape == (256, 3) and tuple(colours[0]) == LOWEST == (0, 0, 0) and tuple(colours[-1]) == HIGHEST
    luminance = colours @ [0.2126, 0.7152, 0.0722]  # Rec. 709 weights
    assert (np.diff(luminance) > 0).all()  # reads the same printed in grey
    assert ramp_colours([-1.0, 2.0]).tolist() == [list(LOWEST), list(HIGHEST)]  # clipped


def test_uncertainty_heatmap_known_answers():
    values = np.array([[0.0, 0.05, 0.1, 0.4]], np.float32)
    heat = uncertainty_heatmap(values, vmax=0.1)
    assert heat.shape == (1, 4, 3) and heat.dtype == np.uint8
    assert heat[0].tolist() == [[0, 0, 0], [180, 40, 80], [255, 255, 200], [255, 255, 200]]  # 0, the middle, >= vmax
    assert (uncertainty_heatmap(np.zeros((3, 5), np.float32)) == LOWEST).all()  # all zeros: all the lowest colour
    # By default the scale is the 99th percentile: one outlier does not wash the map out.
    ramp = np.linspace(0, 1, 1000, dtype=np.float32).reshape(40, 25)
    ramp[0, 0] = 1e3
    assert uncertainty_scale(ramp) == pytest.approx(np.percentile(ramp.astype(np.float64), 99))
    assert uncertainty_scale(np.arange(101, dtype=np.float64).reshape(1, 101)) == 99.0
    assert uncertainty_scale(np.arange(101, dtype=np.float64).reshape(1, 101), 100) == 100.0
    default = uncertainty_heatmap(ramp)
    assert tuple(default[0, 0]) == HIGHEST and tuple(default.reshape(-1, 3)[1]) == LOWEST  # the max: the top colour
    np.testing.assert_array_equal(default, uncertainty_heatmap(ramp, vmax=uncertainty_scale(ramp)))
    assert (default.reshape(-1, 3)[1:980] != HIGHEST).any(axis=1).all()  # below the 99th percentile: not saturated


@pytest.mark.parametrize(
    "values, kwargs, error, message",
    [
        (np.array([[0.1, np.nan]], np.float32), {}, ValueError, "NaN or infinite"),
        (np.array([[0.1, np.inf]], np.float32), {}, ValueError, "NaN or infinite"),
        (np.array([[0.1, -0.2]], np.float32), {}, ValueError, r"must be >= 0 \(.*\), got a minimum -0.2"),
        (np.zeros((2, 2, 1), np.float32), {}, ValueError, r"2-D \(height, width\)"),
        (np.zeros((0, 3), np.float32), {}, ValueError, "non-empty"),
        (np.zeros((2, 2), np.uint8), {}, TypeError, "float array, got uint8"),
        (np.zeros((2, 2), np.float32), {"vmax": 0.0}, ValueError, r"`vmax` must be a finite number > 0"),
        (np.zeros((2, 2), np.float32), {"vmax": float("nan")}, ValueError, r"`vmax` must be a finite number > 0"),
    ],
)
def test_uncertainty_heatmap_refuses_bad_maps(values, kwargs, error, message):
    with pytest.raises(error, match=message):
        uncertainty_heatmap(values, **kwargs)


def test_overlay_blends_known_answers_and_refuses_bad_arguments():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    heat = uncertainty_heatmap(np.random.default_rng(1).random((5, 4)).astype(np.float32))
    np.testing.assert_array_equal(overlay(rgb, heat, 0.0), rgb)  # alpha 0: the output
    np.testing.assert_array_equal(overlay(rgb, heat, 1.0), heat)  # alpha 1: the heat-map
    half = overlay(np.full((1, 2, 3), 100, np.uint8), np.array([[[0, 0, 0], [255, 255, 200]]], np.uint8), 0.5)
    assert half.dtype == np.uint8 and half.tolist() == [[[50, 50, 50], [178, 178, 150]]]
    assert overlay(rgb, heat, 0.25).shape == (5, 4, 3)
    for alpha in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"`alpha` must be a number in \[0, 1\]"):
            overlay(rgb, heat, alpha)
    with pytest.raises(ValueError, match="must have the same shape"):
        overlay(rgb, heat[:4], 0.5)
    with pytest.raises(ValueError, match=r"`heat` must be a \(height, width, 3\) uint8 array"):
        overlay(rgb, heat.astype(np.float32), 0.5)


# ---- the app's setting and request, in this process (no server) ----


def test_check_app_samples_messages():
    from neurop_diff_diffusers.app import InputFailed, check_app_samples

    assert [check_app_samples(v, False) for v in (None, 0, 0.0, 2, 8.0)] == [0, 0, 0, 2, 8]
    assert check_app_samples(0, True) == 0  # off goes with the prior alone
    expected = r"^the uncertainty samples must be 0 \(off\) or a whole number in \[2, 8\], got "
    for value, shown in [(1, r"1 \(one sample has no spread\)"), (9, "9"), (2.5, "2.5"), (True, "True"), ("2", "'2'")]:
        with pytest.raises(InputFailed, match=expected + shown + "$"):
            check_app_samples(value, False)
    with pytest.raises(InputFailed, match=r'cannot go with "Prior only" \(set the samples to 0\)$'):
        check_app_samples(2, True)


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    """A 48 x 40 crop of a shipped UCMerced sample: x2 gives 96 x 80."""
    path = tmp_path_factory.mktemp("inputs") / "airplane.png"
    Image.open(SAMPLES_DIR / "airplane30.png").convert("RGB").crop((0, 0, 40, 48)).save(path)
    return path


@pytest.fixture
def pipe_calls(monkeypatch) -> list:
    """The ``num_samples`` of every pipeline call made while the test runs (the app's copies included)."""
    from neurop_diff_diffusers.pipelines import NeurOpDiffPipeline

    calls = []
    original = NeurOpDiffPipeline.__call__

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("num_samples"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NeurOpDiffPipeline, "__call__", counting)
    return calls


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    from neurop_diff_diffusers.app import AppConfig, Upscaler

    return Upscaler(AppConfig(model="preset:tiny", max_output_pixels=200 * 200), tmp_path_factory.mktemp("work"))


def test_upscaler_writes_the_cli_mean_and_map(upscaler, crop, tmp_path, pipe_calls):
    result = upscaler.run(crop, scale=2.0, steps=2, strength=1.0, seed=0, uncertainty_samples=2)
    assert pipe_calls == [2, None]  # the samples (one batch), then the prior view
    tif = result["uncertainty_tif"]
    assert tif.name == "airplane_x2.uncertainty.tif" and tif.parent == result["png"].parent  # the request's folder
    assert tif.parent.parent == upscaler.workdir and result["samples"] == 2
    assert not [p for p in tif.parent.iterdir() if p.name.startswith(".") or "tmp" in p.name]  # no temporary left
    spread = result["uncertainty"]
    assert spread.shape == (96, 80) and spread.dtype == np.float32 and np.isfinite(spread).all()
    assert (spread >= 0).all() and spread.max() > 0
    with Image.open(tif) as image:
        assert image.mode == "F"
        np.testing.assert_array_equal(np.asarray(image), spread)
    # The PNG and the map are what `neurop-diff upscale --uncertainty 2` writes for the same settings.
    out = tmp_path / "cli.png"
    argv = ["upscale", crop, "--scale", 2, "--steps", 2, "--seed", 0, "--strength", 1, "--model", "preset:tiny"]
    assert run_cli(*argv, "--uncertainty", "2", "-o", out) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(result["png"])), np.asarray(Image.open(out)))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli.uncertainty.tif")), spread)
    # Off: no map.
    plain = upscaler.run(crop, scale=2.0, steps=2, strength=1.0, seed=0)
    assert plain["uncertainty"] is None and plain["uncertainty_tif"] is None
    assert not list(plain["png"].parent.glob("*.uncertainty.tif"))


def test_upscaler_refuses_samples_over_the_budget_before_any_work(upscaler, crop, pipe_calls):
    from neurop_diff_diffusers.app import InputFailed

    before = set(upscaler.workdir.glob("request-*"))
    with pytest.raises(InputFailed) as caught:  # x3.7 is 178 x 148 = 26,344 pixels: 1 fits 40,000, 2 do not
        upscaler.run(crop, scale=3.7, steps=2, uncertainty_samples=2)
    assert str(caught.value) == (
        "2 uncertainty samples of the output 178x148 (height x width) are 2 x 26344 = 52688 pixels of work, over the "
        "server's limit 40000; use fewer samples or a smaller output"
    )
    with pytest.raises(InputFailed, match="whole number in"):
        upscaler.run(crop, scale=2.0, steps=2, uncertainty_samples=1)
    with pytest.raises(InputFailed, match="Prior only"):
        upscaler.run(crop, scale=2.0, steps=2, uncertainty_samples=2, prior_only=True)
    assert pipe_calls == [] and set(upscaler.workdir.glob("request-*")) == before  # no work, no folder left


def test_upscaler_geotiff_with_samples_gives_the_map_or_one_line(upscaler, tmp_path):
    """A GeoTIFF with samples: its georeferenced map when the CLI's job writes one, else the job's refusal in the
    page's words (never the request folder's path, never a traceback)."""
    rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")
    from rasterio.transform import from_origin

    from neurop_diff_diffusers.app import InputFailed

    scene = tmp_path / "scene.tif"
    data = np.random.default_rng(0).integers(1000, 20000, (3, 20, 24), dtype=np.uint16)
    profile = {"driver": "GTiff", "width": 24, "height": 20, "count": 3, "dtype": "uint16", "crs": "EPSG:32633"}
    with rasterio.open(scene, "w", transform=from_origin(500000.0, 4100000.0, 10.0, 10.0), **profile) as dst:
        dst.write(data)
    try:
        result = upscaler.run(scene, scale=2.0, steps=1, uncertainty_samples=2)
    except InputFailed as err:
        message = str(err)
        assert message.startswith("scene.tif: ") and "uncertainty map" in message, message
        assert "\n" not in message and str(upscaler.workdir) not in message and "--" not in message
        return
    assert result["uncertainty"].shape == (40, 48) and result["uncertainty_tif"].name == "scene_x2.uncertainty.tif"


# ---- through the page's API: the toggle redraws without the model ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    pytest.importorskip("gradio", reason="the web app is the optional extra [app] (gradio)")
    pytest.importorskip("gradio_client", reason="the app tests drive it with gradio_client")
    from neurop_diff_diffusers.app import AppConfig, build_app

    demo = build_app(
        AppConfig(model="preset:tiny", max_output_pixels=200 * 200), workdir=tmp_path_factory.mktemp("app")
    )
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _upscale(client, path, scale=2.0, samples=2, show=True, alpha=0.6):
    import gradio_client

    args = (gradio_client.handle_file(str(path)), "scale", scale, 64, 64, 2, 1.0, 0, False, "model's own (ddim)")
    return client.predict(*args, samples, show, alpha, api_name="/upscale")


def test_page_shows_the_overlay_and_the_toggle_never_reruns_the_model(tiny_server, crop, tmp_path, pipe_calls):
    import gradio_client

    from neurop_diff_diffusers.app import DEFAULT_OVERLAY_ALPHA

    client = gradio_client.Client(tiny_server, verbose=False, download_files=str(tmp_path / "client"))
    (_, after), _, info, downloads, view = _upscale(client, crop, alpha=DEFAULT_OVERLAY_ALPHA)
    assert pipe_calls == [2, None]
    assert [Path(p).name for p in downloads] == ["airplane_x2.png", "airplane_x2.uncertainty.tif"]
    output = np.asarray(Image.open(after).convert("RGB"))
    np.testing.assert_array_equal(output, np.asarray(Image.open(downloads[0]).convert("RGB")))  # the CLI's mean
    spread = np.asarray(Image.open(downloads[1]), dtype=np.float32)
    heat = uncertainty_heatmap(spread)
    vmax = uncertainty_scale(spread)
    assert f"pale yellow = **{vmax:.3g}** or more (the map's 99th percentile)" in info and "**2 samples**" in info
    np.testing.assert_array_equal(np.asarray(Image.open(view)), overlay(output, heat, DEFAULT_OVERLAY_ALPHA))

    toggled = client.predict(False, DEFAULT_OVERLAY_ALPHA, api_name="/uncertainty_view")  # the plain output
    np.testing.assert_array_equal(np.asarray(Image.open(toggled)), output)
    toggled = client.predict(True, 1.0, api_name="/uncertainty_view")  # the heat-map alone
    np.testing.assert_array_equal(np.asarray(Image.open(toggled)), heat)
    toggled = client.predict(True, 0.3, api_name="/uncertainty_view")
    np.testing.assert_array_equal(np.asarray(Image.open(toggled)), overlay(output, heat, 0.3))
    assert pipe_calls == [2, None]  # toggling ran no model

    # Off: no map, no view; the toggle has nothing to show.
    (_, _), _, info, downloads, view = _upscale(client, crop, samples=0)
    assert view is None and [Path(p).name for p in downloads] == ["airplane_x2.png"] and "samples" not in info
    assert client.predict(True, 0.6, api_name="/uncertainty_view") is None


def test_page_refuses_bad_samples_and_the_budget_with_one_message(tiny_server, crop, tmp_path, pipe_calls):
    import gradio_client

    client = gradio_client.Client(tiny_server, verbose=False, download_files=str(tmp_path / "client"))
    for kwargs, message in [
        ({"samples": 1}, r"whole number in \[2, 8\], got 1 \(one sample has no spread\)"),
        ({"samples": 9}, "9 is greater than maximum value 8"),  # Gradio's own check of the slider's range
        ({"samples": 2, "scale": 3.7}, "2 x 26344 = 52688 pixels of work, over the server's limit 40000"),
    ]:
        with pytest.raises(gradio_client.exceptions.AppError, match=message) as caught:
            _upscale(client, crop, **kwargs)
        assert "Traceback" not in str(caught.value)
    assert pipe_calls == []

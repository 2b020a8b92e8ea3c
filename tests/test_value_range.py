"""Values at the edges of their types through the GeoTIFF path: stretches that cannot overflow (float32 near 3.4e38,
float64 near 1e308, constant 64-bit bands), and what ``value_range`` keeps of values outside the stretch."""

from __future__ import annotations

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")

from conftest import cli_messages, one_error_line, run_cli  # noqa: E402
from conftest import write_geotiff as _write  # noqa: E402
from neurop_diff_diffusers.io.geo import BandStretch, band_stretch, stretch_bounds  # noqa: E402
from neurop_diff_diffusers.jobs.scene import prepare_scene, upscale_scene  # noqa: E402

TINY = ("--model", "preset:tiny", "--seed", "3", "--steps", "2")
F32_MAX = float(np.finfo(np.float32).max)
F64_MAX = float(np.finfo(np.float64).max)


# --------------------------------------------------------------------------------------------------------------------
# Stretches that never overflow
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "low, high, dtype",
    [
        (2.0**64, 2.0**64, "uint64"),
        (3e38, 3e38, "float32"),
        (-F64_MAX, F64_MAX, "float64"),
        (F64_MAX, F64_MAX, "float64"),
    ],
)
def test_stretch_of_extreme_bands_is_finite_and_maps_back(low, high, dtype):
    stretch = band_stretch(np.array([low]), np.array([high]), dtype)
    assert stretch.high[0] > stretch.low[0]
    unit = stretch.forward(np.array([low, high]), 0)
    assert np.isfinite(unit).all() and 0.0 <= unit.min() and unit.max() <= 1.0
    back = stretch.inverse(np.array([-0.5, 0.0, 1.0, 1.5], np.float32), 0)
    assert back.dtype == np.dtype(dtype)
    if dtype.startswith("float"):
        assert np.isfinite(back).all()  # overshoot past the type's range is held at its finite limit


def test_a_stretch_far_narrower_than_the_values_is_refused_before_any_work(tmp_path, capsys):
    """``--value-range 1e-320,1e-310``: every value lies some 1e314 widths out. The stretch itself holds such values
    at the unit limit (``UNIT_LIMIT`` widths out) without numpy's overflow warning, but they could not be added back
    to the output: the range is refused in one line naming it and the allowed relation, before anything is
    written."""
    import warnings

    stretch = BandStretch((1e-320,), (1e-310,), "uint16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unit = stretch.forward(np.array([0, 1000, 25500], dtype=np.uint16), 0)
    assert unit[0] == pytest.approx(-1e-10, abs=1e-9) and (unit[1:] == np.float32(1e30)).all()
    assert stretch.beyond_limit(np.array([0, 1000, 25500]), 0).tolist() == [False, True, True]
    src = _write(tmp_path / "in.tif", np.full((3, 16, 16), 1000, dtype=np.uint16))
    args = ("--scale", "2", "--prior-only", "--value-range", "1e-320,1e-310", *TINY)
    assert run_cli("upscale", src, "-o", tmp_path / "o.tif", *args) == 2
    assert one_error_line(capsys) == (
        f"{src}: --value-range 9.99989e-321,1e-310 is too narrow for band 1: its value 1000 lies more than "
        "1e+30 range widths outside [9.99989e-321, 1e-310] (more than the stretch holds); every valid value must lie "
        "within 1e+30 x (HIGH - LOW) of the range: choose a wider range or 'minmax'."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_the_python_api_refuses_a_range_too_narrow_for_its_values_and_takes_one_just_wide_enough(tmp_path):
    src = _write(tmp_path / "in.tif", np.full((1, 16, 16), 100, np.uint16))
    with pytest.raises(ValueError, match=r"^`value_range` 0,1e-30 is too narrow for band 1: its value 100 lies more"):
        upscale_scene(lambda *a, **k: None, src, tmp_path / "o.tif", scale=2, value_range="0,1e-30")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    stats = prepare_scene(src, tmp_path / "o.tif", scale=2, value_range="0,1e-27").stats  # 1e29 widths out: held
    assert stats.clipped == (256,) and stats.stretch.high == (1e-27,)


def test_a_constant_band_maps_to_a_constant_and_back_exactly():
    assert stretch_bounds(7.0, 7.0) == (7.0, 8.0)  # small values: the width 1 of before
    low, high = stretch_bounds(2.0**64, 2.0**64)
    assert high - low == 2.0**44
    stretch = BandStretch((low,), (high,), "uint64")
    top = np.iinfo(np.uint64).max
    assert stretch.inverse(stretch.forward(np.array([top], np.uint64), 0), 0).tolist() == [top]
    assert stretch.inverse(np.array([0.0, 1e-9, 5.0], np.float32), 0).tolist() == [top] * 3  # never wraps round


def test_int64_extremes_round_trip_without_a_cast_warning():
    info = np.iinfo(np.int64)
    stretch = band_stretch(np.array([info.min]), np.array([info.max]), "int64")
    with np.errstate(all="raise"):
        back = stretch.inverse(np.array([0.0, 1.0, 1.2], np.float32), 0)
    assert back.tolist() == [info.min, info.max, info.max]


@pytest.mark.parametrize(
    "name, data",
    [
        ("const_u64.tif", np.full((1, 12, 12), np.iinfo(np.uint64).max, np.uint64)),
        ("const_f32.tif", np.full((3, 12, 12), 3e38, np.float32)),
        ("edge_f32.tif", np.random.default_rng(0).choice([-F32_MAX, F32_MAX], (3, 12, 12)).astype(np.float32)),
        ("wide_f64.tif", np.random.default_rng(1).uniform(-1, 1, (1, 12, 12)) * F64_MAX),
    ],
)
@pytest.mark.parametrize("value_range", ["minmax", "p2,p98"])
def test_extreme_values_give_an_output_not_a_damaged_weights_message(tmp_path, capsys, name, data, value_range):
    """These bands made the stretch divide by zero or overflow, and the model's NaN was blamed on its weights."""
    src, out = _write(tmp_path / name, data), tmp_path / f"up_{name}"
    assert run_cli("upscale", src, "-o", out, "--scale", "2", "--value-range", value_range, *TINY) == 0
    assert not [m for m in cli_messages(capsys.readouterr().err) if "error" in m]
    with rasterio.open(out) as dst:
        got = dst.read()
    assert got.dtype == data.dtype and got.shape == (data.shape[0], 24, 24)
    if got.dtype.kind == "f":
        assert np.isfinite(got).all()
        assert np.abs(got.astype(np.float64)).max() <= np.abs(data.astype(np.float64)).max() * (1 + 1e-6)
    if name.startswith("const"):  # a constant maps to a constant (up to the model's noise on a 2**-20 width)
        np.testing.assert_allclose(got.astype(np.float64), data.flat[0], rtol=2e-6)


# --------------------------------------------------------------------------------------------------------------------
# Nothing lost by --value-range: the model sees the stretch clipped, the rest is added back bicubically
# --------------------------------------------------------------------------------------------------------------------
def _elevation(h=40, w=48, seed=0):
    """A float32 elevation model (metres): smooth terrain from about 8 to 30 m, a few pits and spikes outside it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    dem = 19 + 8 * np.sin(xx / 7.0) * np.cos(yy / 9.0) + rng.normal(0, 0.3, (h, w))
    dem[5, 6], dem[6, 6], dem[30, 40] = 39.05, 36.0, 6.96  # a mast, its neighbour, a pit
    dem[20:22, 10:12] = 120.0  # a tower block far above the terrain
    return dem[None].astype(np.float32)


def _bicubic_model(image, output_size, output_type, **kwargs):
    """A 'model' that returns the bicubic upscale of its window (deterministic, fast)."""
    import torch

    up = torch.nn.functional.interpolate(image, size=output_size, mode="bicubic").clamp(0, 1)
    return type("Out", (), {"images": up})


def _bicubic_reference(dem, scale):
    import torch

    up = torch.nn.functional.interpolate(torch.from_numpy(dem)[None].double(), scale_factor=scale, mode="bicubic")
    return up[0, 0].numpy()


def test_values_outside_the_stretch_are_added_back_and_windows_stay_seamless(tmp_path):
    from neurop_diff_diffusers.jobs.scene import prepare_scene, upscale_scene

    dem = _elevation()
    src = _write(tmp_path / "dem.tif", dem, nodata=-9999.0)
    stretch = prepare_scene(src, tmp_path / "x.tif", scale=2, value_range="p2,p98").stats.stretch
    low, high = stretch.low[0], stretch.high[0]
    assert dem.min() < low and high < dem.max()  # the outliers lie outside the stretch
    with pytest.warns(UserWarning, match="added back"):
        whole = upscale_scene(_bicubic_model, src, tmp_path / "whole.tif", scale=2, value_range="p2,p98", window=64)
    with pytest.warns(UserWarning, match="added back"):
        tiled = upscale_scene(
            _bicubic_model, src, tmp_path / "tiled.tif", scale=2, value_range="p2,p98", window=12, halo=4
        )
    with pytest.warns(UserWarning, match="they were clipped"):
        clipped = upscale_scene(
            _bicubic_model, src, tmp_path / "clip.tif", scale=2, value_range="p2,p98", window=12, halo=4, clip=True
        )
    with rasterio.open(whole) as a, rasterio.open(tiled) as b, rasterio.open(clipped) as c:
        whole, tiled, clipped = a.read(1), b.read(1), c.read(1)
    # the input's extremes are kept, within bicubic overshoot: those of the whole-scene bicubic of the input
    span = float(dem.max() - dem.min())
    reference = _bicubic_reference(dem, 2)
    assert reference.max() >= dem.max() and reference.min() <= dem.min()
    # (less the overshoot of the clipped plateau that the model clamps to [0, 1]: a fraction of the stretch's width)
    assert abs(float(tiled.max()) - reference.max()) < 0.3 * (high - low)
    assert abs(float(tiled.min()) - reference.min()) < 0.3 * (high - low)
    assert tiled.max() > high + 0.5 * (dem.max() - high)  # far above the 98th percentile: the tower is kept
    assert np.median(np.abs(tiled - reference)) < 1e-4 * span  # but where the model's own overshoot was clamped
    # blended windows: the same output as one window, no seams from the added-back part
    np.testing.assert_allclose(tiled, whole, atol=1e-3 * span)
    # --clip: what the model saw, clipped as before
    assert clipped.max() <= high * (1 + 1e-6) and clipped.min() >= low * (1 - 1e-6)


def test_cli_value_range_keeps_a_dems_extremes_and_clip_clips(tmp_path, capsys):
    import json

    dem = _elevation()
    src = _write(tmp_path / "dem.tif", dem)
    args = ("--scale", "2", "--value-range", "p2,p98", "--prior-only", *TINY)
    assert run_cli("upscale", src, "-o", tmp_path / "kept.tif", *args) == 0
    warned = [m for m in cli_messages(capsys.readouterr().err) if m.startswith("neurop-diff: warning")]
    assert len(warned) == 1 and "added back" in warned[0]
    assert run_cli("upscale", src, "-o", tmp_path / "clip.tif", "--clip", *args) == 0
    assert "they were clipped" in capsys.readouterr().err
    with rasterio.open(tmp_path / "kept.tif") as kept, rasterio.open(tmp_path / "clip.tif") as clip:
        stretch = json.loads(kept.tags()["NEUROP_DIFF_STRETCH"])
        kept, clip = kept.read(1), clip.read(1)
    low, high = stretch["low"][0], stretch["high"][0]
    width = high - low  # the model's own output may lie anywhere in [low, high] at a pixel
    reference = _bicubic_reference(dem, 2)  # the input's extremes within bicubic overshoot
    assert reference.max() - width <= kept.max() <= reference.max() + width  # about 120 m, not 30
    assert kept.min() <= low  # the pit below the 2nd percentile is kept below it
    assert clip.max() <= high * (1 + 1e-6) and clip.min() >= low * (1 - 1e-6)


def test_the_output_tags_say_whether_values_outside_the_range_were_clipped(tmp_path):
    from neurop_diff_diffusers.jobs.scene.cog import OUTSIDE_RANGE_TAG

    src = _write(tmp_path / "dem.tif", _elevation())
    args = ("--scale", "2", "--value-range", "p2,p98", "--prior-only", *TINY)
    assert run_cli("upscale", src, "-o", tmp_path / "kept.tif", *args) == 0
    assert run_cli("upscale", src, "-o", tmp_path / "clip.tif", "--clip", *args) == 0
    with rasterio.open(tmp_path / "kept.tif") as kept, rasterio.open(tmp_path / "clip.tif") as clip:
        assert kept.tags()[OUTSIDE_RANGE_TAG] == "added back" and clip.tags()[OUTSIDE_RANGE_TAG] == "clipped"
        assert kept.tags()["NEUROP_DIFF_VALUE_RANGE"] == clip.tags()["NEUROP_DIFF_VALUE_RANGE"] == "p2,p98"


def test_clip_is_a_setting_of_the_journal_and_the_batch_manifest(tmp_path):
    from pathlib import Path

    from neurop_diff_diffusers.jobs.batch import batch_settings
    from neurop_diff_diffusers.jobs.scene import SceneOptions
    from neurop_diff_diffusers.jobs.scene.journal import scene_settings
    from neurop_diff_diffusers.jobs.scene.plan import ScenePlan
    from neurop_diff_diffusers.jobs.upscale_file import JobOptions

    src = _write(Path(tmp_path) / "dem.tif", _elevation())
    plan = ScenePlan.create((40, 48), (80, 96), 16, 4)
    args = (_bicubic_model, src, plan, 0, "p2,p98", [0, 0, 0], {})
    assert scene_settings(*args)["clip"] is False and scene_settings(*args, clip=True)["clip"] is True
    assert "clip" not in batch_settings(None, 2.0, None, JobOptions(), "float32", None)  # old manifests stay valid
    assert batch_settings(None, 2.0, None, JobOptions(clip=True), "float32", None)["clip"] is True
    assert JobOptions(clip=True).scene_kwargs()["clip"] is True
    with pytest.raises(TypeError, match="`clip` must be a bool"):
        SceneOptions(clip="yes")


def test_a_negative_low_is_taken_as_the_value_of_value_range(tmp_path, capsys):
    """``--value-range -100,3000`` (a DEM below sea level): the value starts with ``-`` and is not a plain negative
    number, which argparse would take for an unknown flag ("expected one argument")."""
    dem = np.linspace(-100, 3000, 16 * 16, dtype=np.float32).reshape(1, 16, 16)
    src = _write(tmp_path / "dem.tif", dem)
    args = ("upscale", src, "--scale", "2", "--prior-only", *TINY)
    assert run_cli(*args, "-o", tmp_path / "spaced.tif", "--value-range", "-100,3000") == 0
    assert not [m for m in cli_messages(capsys.readouterr().err) if "error" in m]
    assert run_cli(*args, "-o", tmp_path / "joined.tif", "--value-range=-100,3000") == 0
    with rasterio.open(tmp_path / "spaced.tif") as spaced, rasterio.open(tmp_path / "joined.tif") as joined:
        assert spaced.tags()["NEUROP_DIFF_VALUE_RANGE"] == "-100,3000"
        assert np.array_equal(spaced.read(), joined.read())
    assert run_cli(*args, "-o", tmp_path / "bad.tif", "--value-range", "-100") == 2  # still checked
    line = [m for m in cli_messages(capsys.readouterr().err) if "error" in m]
    assert len(line) == 1 and "--value-range must be 'minmax', 'LOW,HIGH'" in line[0] and "got '-100'" in line[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dem.tif", "joined.tif", "spaced.tif"]

"""Values at the edges of their types through the GeoTIFF path: stretches that cannot overflow (float32 near 3.4e38,
float64 near 1e308, constant 64-bit bands), and what ``value_range`` keeps of values outside the stretch."""

from __future__ import annotations

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")

from conftest import cli_messages, run_cli  # noqa: E402
from conftest import write_geotiff as _write  # noqa: E402
from neurop_diff_diffusers.io.geo import BandStretch, band_stretch, stretch_bounds  # noqa: E402

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

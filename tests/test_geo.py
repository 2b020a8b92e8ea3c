"""GeoTIFF round trips on small synthetic scenes written in the test (CRS, transform, nodata, uint16, RGB+NIR)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

rasterio = pytest.importorskip("rasterio", reason="GeoTIFF support is the optional extra [geo] (rasterio)")
from rasterio.transform import from_origin  # noqa: E402

from neurop_diff_diffusers.io.geo import STRETCH_TAG, band_stretch, is_georeferenced, read_scene  # noqa: E402
from neurop_diff_diffusers.jobs.scene import upscale_geotiff  # noqa: E402


def _write(path, data, nodata=0, crs="EPSG:32633", transform=None, **extra):
    bands, h, w = data.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": bands,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform or from_origin(500000.0, 4100000.0, 10.0, 10.0),
        "nodata": nodata,
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 20000, (4, 24, 30), dtype=np.uint16)  # R, G, B, NIR
    data[:, :6, :8] = 0  # a nodata corner
    return _write(tmp_path / "scene.tif", data), data


def test_round_trip_keeps_georeferencing(pipe, scene, tmp_path):
    path, data = scene
    out = upscale_geotiff(
        pipe, path, tmp_path / "up.tif", scale=2.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    with rasterio.open(path) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert (dst.width, dst.height) == (75, 60)
        assert dst.count == 4 and dst.dtypes == ("uint16",) * 4 and dst.nodata == 0
        a, b = src.transform, dst.transform
        assert (b.c, b.f) == (a.c, a.f)  # same origin
        assert b.a == pytest.approx(a.a / 2.5) and b.e == pytest.approx(a.e / 2.5)
        assert b.b == a.b == 0 and b.d == a.d == 0
        up = dst.read()
        stretch = json.loads(dst.tags()[STRETCH_TAG])
    # the nodata corner is nodata in every band (6 x 8 px at x2.5 = 15 x 20 px), valid pixels never are
    assert (up[:, :15, :20] == 0).all()
    assert (up[:, 15:, :] > 0).all() and (up[:, :, 20:] > 0).all()
    assert stretch["low"] == [float(v) for v in np.where(data > 0, data, 65535).reshape(4, -1).min(1)]
    assert stretch["high"] == [float(v) for v in data.reshape(4, -1).max(1)]


def test_extra_band_is_bicubic_without_the_model(pipe, scene, tmp_path):
    path, _ = scene
    out = upscale_geotiff(pipe, path, tmp_path / "up.tif", scale=2, num_inference_steps=1)
    unit, valid, stretch, _ = read_scene(path)
    expected = F.interpolate(torch.from_numpy(unit[3:4])[None], size=(48, 60), mode="bicubic")[0, 0].clamp(0, 1)
    expected = stretch.inverse(expected.numpy(), 3)
    with rasterio.open(out) as dst:
        nir = dst.read(4)
    mask = np.kron(valid, np.ones((2, 2), bool))
    np.testing.assert_array_equal(nir[mask], expected[mask])


def test_model_that_returns_its_input_gives_back_the_values(tmp_path):
    """The stretch is reversible: with an identity 'model' at scale 1 the output equals the input."""
    data = np.random.default_rng(1).integers(0, 65535, (3, 16, 20), dtype=np.uint16)
    path = _write(tmp_path / "s.tif", data, nodata=None)

    def identity(image, output_size, output_type, **kw):
        assert output_type == "pt" and tuple(image.shape[-2:]) == output_size
        return type("Out", (), {"images": image.clone()})

    out = upscale_geotiff(identity, path, tmp_path / "same.tif", scale=1)
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(), data)


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_float_and_signed_bands_round_trip_dtype(pipe, tmp_path, dtype):
    data = (np.random.default_rng(2).random((3, 12, 12)) * 200 - 50).astype(dtype)
    path = _write(
        tmp_path / "f.tif", data, nodata=None, crs="EPSG:4326", transform=from_origin(10.0, 50.0, 0.001, 0.001)
    )
    out = upscale_geotiff(pipe, path, tmp_path / "f2.tif", scale=1.5, prior_only=True)
    with rasterio.open(out) as dst:
        assert dst.dtypes == (dtype,) * 3 and (dst.width, dst.height) == (18, 18)
        values = dst.read()
    assert values.min() >= data.min() and values.max() <= data.max()


def test_single_band_goes_through_the_model_as_grey(pipe, tmp_path):
    data = np.random.default_rng(3).integers(0, 255, (1, 10, 10), dtype=np.uint8)
    path = _write(tmp_path / "g.tif", data, nodata=None)
    out = upscale_geotiff(pipe, path, tmp_path / "g2.tif", output_size=(25, 20), prior_only=True)
    with rasterio.open(out) as dst:
        assert dst.count == 1 and dst.shape == (25, 20) and dst.dtypes == ("uint8",)


def test_errors_before_writing(pipe, scene, tmp_path):
    path, _ = scene
    target = tmp_path / "exists.tif"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        upscale_geotiff(pipe, path, target, scale=2)
    assert target.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="rgb_bands"):
        upscale_geotiff(pipe, path, tmp_path / "x.tif", scale=2, rgb_bands=(1, 2, 5))
    with pytest.raises(ValueError, match="scale"):
        upscale_geotiff(pipe, path, tmp_path / "x.tif", scale=0.5)
    with pytest.raises(ValueError, match=".tif"):
        upscale_geotiff(pipe, path, tmp_path / "x.png", scale=2)
    two = _write(tmp_path / "two.tif", np.ones((2, 8, 8), np.uint8), nodata=None)
    with pytest.raises(ValueError, match="2 bands"):
        upscale_geotiff(pipe, two, tmp_path / "x.tif", scale=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.tif", "scene.tif", "two.tif"]


def test_no_partial_file_after_an_error(scene, tmp_path):
    path, _ = scene

    def failing(*args, **kwargs):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        upscale_geotiff(failing, path, tmp_path / "out.tif", scale=2)
    assert not (tmp_path / "out.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_is_georeferenced(scene, tmp_path):
    path, _ = scene
    assert is_georeferenced(path)
    plain = tmp_path / "plain.tif"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(plain)
    assert not is_georeferenced(plain)
    assert not is_georeferenced(tmp_path / "x.png")


def test_band_stretch_uint8_is_fixed():
    s = band_stretch(np.array([3.0, 4.0, 5.0]), np.array([9.0, 9.0, 9.0]), "uint8")
    assert s.low == (0.0,) * 3 and s.high == (255.0,) * 3


def _dark_model(image, output_size, output_type, **kwargs):
    """A 'model' that maps every pixel to black: the worst case for a nodata value of 0."""
    return type("Out", (), {"images": torch.zeros(image.shape[0], 3, *output_size)})


def _nearest(mask: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(mask, np.ones((factor, factor), mask.dtype))


def test_output_mask_is_the_nearest_upscaled_input_mask(tmp_path):
    data = np.random.default_rng(4).integers(1, 255, (3, 10, 12), dtype=np.uint8)
    data[:, :3, :4] = 0  # nodata in every band
    data[1, 7, 9] = 0  # nodata in band 2 only
    path = _write(tmp_path / "s.tif", data, nodata=0)
    out = upscale_geotiff(_dark_model, path, tmp_path / "up.tif", scale=2)
    with rasterio.open(path) as src, rasterio.open(out) as dst:
        expected = _nearest(src.read_masks(), 2)
        np.testing.assert_array_equal(dst.read_masks(), expected)
        values = dst.read()
    # the model mapped valid pixels to 0 == nodata: they were nudged to the nearest valid value, 1
    assert (values[expected > 0] == 1).all() and (values[expected == 0] == 0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "up.tif"]


@pytest.mark.parametrize(
    "values, nodata, reference, expected",
    [
        (np.array([255, 255], np.uint8), 255, None, [254, 254]),  # top of the range: downwards
        (np.array([-9999, -9999], np.int16), -9999, np.array([-9999.4, -9998.7]), [-10000, -9998]),
        (np.array([0.0, 0.0], np.float32), 0.0, np.array([-0.1, 0.2]), "next-floats"),
    ],
)
def test_avoid_nodata_moves_to_the_nearest_valid_value(values, nodata, reference, expected):
    from neurop_diff_diffusers.io.geo import avoid_nodata

    avoid_nodata(values, np.array([True, True]), nodata, reference)
    if expected == "next-floats":
        zero = np.float32(0)
        expected = [np.nextafter(zero, np.float32(-1)), np.nextafter(zero, np.float32(1))]
    np.testing.assert_array_equal(values, np.array(expected, values.dtype))
    assert (values != nodata).all()


def test_band_meaning_is_copied_and_nir_is_not_alpha(tmp_path):
    from rasterio.enums import ColorInterp

    data = np.random.default_rng(5).integers(1, 255, (4, 10, 12), dtype=np.uint8)  # R, G, B, NIR (NAIP-like)
    path = tmp_path / "naip.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=12, height=10, count=4, dtype="uint8", crs="EPSG:26915",
        transform=from_origin(500000.0, 4100000.0, 1.0, 1.0),
    ) as dst:  # fmt: skip
        dst.write(data)
        dst.colorinterp = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined, ColorInterp.undefined]
        for band, name in enumerate(("red", "green", "blue", "nir"), start=1):
            dst.set_band_description(band, name)
        dst.scales, dst.offsets = (1.0, 1.0, 1.0, 0.5), (0.0, 0.0, 0.0, 3.0)
        dst.update_tags(4, WAVELENGTH="842nm")
        dst.update_tags(SOURCE="naip")
    out = upscale_geotiff(_dark_model, path, tmp_path / "up.tif", scale=2)
    with rasterio.open(path) as src, rasterio.open(out) as dst:
        assert dst.colorinterp == src.colorinterp and ColorInterp.alpha not in dst.colorinterp
        assert dst.descriptions == ("red", "green", "blue", "nir")
        assert dst.scales == src.scales and dst.offsets == src.offsets
        assert dst.tags(4)["WAVELENGTH"] == "842nm" and dst.tags()["SOURCE"] == "naip"
        assert (dst.dataset_mask() == 255).all()  # band 4's (dark) values do not make pixels transparent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["naip.tif", "up.tif"]


def test_output_appearing_meanwhile_is_not_replaced(scene, tmp_path):
    path, _ = scene
    target = tmp_path / "up.tif"

    def racing(image, output_size, output_type, **kwargs):
        target.write_bytes(b"another run")
        return _dark_model(image, output_size, output_type)

    with pytest.raises(FileExistsError, match="overwrite"):
        upscale_geotiff(racing, path, target, scale=2)
    assert target.read_bytes() == b"another run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "up.tif"]
    upscale_geotiff(racing, path, target, scale=2, overwrite=True)
    with rasterio.open(target) as dst:
        assert dst.shape == (48, 60)


def test_damaged_geotiff_is_one_line_in_the_cli(scene, tmp_path, capsys):
    from neurop_diff_diffusers.cli import commands as cli

    path, _ = scene
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    assert cli.main(["upscale", str(cut), "--scale", "2", "--model", "preset:tiny", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"neurop-diff: error: {cut}: ")
    assert not (tmp_path / "cut_x2.tif").exists()


# ---- GCPs / RPCs, alpha, overviews, 16-bit grey for Pillow, wide types, refusals ----


def _bicubic_model(image, output_size, output_type, **kwargs):
    """A 'model' that returns the bicubic upscale of its input (deterministic, fast)."""
    return type("Out", (), {"images": F.interpolate(image, size=output_size, mode="bicubic").clamp(0, 1)})


def test_gcps_and_rpcs_are_kept_on_the_output_grid(tmp_path):
    from rasterio.control import GroundControlPoint
    from rasterio.transform import RPCTransformer

    from test_raster_io import _rpc

    gcps = [GroundControlPoint(row=0, col=0, x=10.0, y=50.0), GroundControlPoint(row=8, col=10, x=11.0, y=49.0)]
    data = np.random.default_rng(5).integers(1, 255, (3, 8, 10), dtype=np.uint8)
    path = _write(tmp_path / "gcp.tif", data, nodata=None, crs="EPSG:4326", gcps=gcps)
    out = upscale_geotiff(_bicubic_model, path, tmp_path / "gcp_up.tif", scale=2)
    with rasterio.open(out) as dst:
        out_gcps, crs = dst.gcps
        assert crs == rasterio.crs.CRS.from_epsg(4326) and dst.shape == (16, 20)
        assert [(g.row, g.col, g.x, g.y) for g in out_gcps] == [(0, 0, 10, 50), (16, 20, 11, 49)]

    identity = rasterio.Affine.identity()
    rpc_path = _write(
        tmp_path / "rpc.tif", data.astype(np.uint16) * 100, nodata=None, crs=None, transform=identity, rpcs=_rpc()
    )
    out = upscale_geotiff(_bicubic_model, rpc_path, tmp_path / "rpc_up.tif", output_size=(20, 15))
    with rasterio.open(out) as dst:
        assert dst.rpcs is not None and dst.transform.is_identity and dst.crs is None
        after = RPCTransformer(dst.rpcs)
    np.testing.assert_allclose(after.xy(5.0, 6.0, offset="ul"), RPCTransformer(_rpc()).xy(2.0, 4.0, offset="ul"))


def test_alpha_band_is_upscaled_with_nearest_neighbour(tmp_path):
    data = np.random.default_rng(6).integers(0, 255, (4, 6, 8), dtype=np.uint8)
    data[3] = 0
    data[3, 1:4, 2:7] = 255  # an alpha mask
    path = _write(tmp_path / "rgba.tif", data, nodata=None, photometric="rgb", alpha="YES")
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == rasterio.enums.ColorInterp.alpha
    out = upscale_geotiff(_bicubic_model, path, tmp_path / "up.tif", scale=3)
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(4), _nearest(data[3], 3))
        assert dst.colorinterp[3] == rasterio.enums.ColorInterp.alpha


def test_internal_overviews_are_built_in_the_output(tmp_path):
    data = np.random.default_rng(7).integers(0, 4000, (3, 32, 32), dtype=np.uint16)
    path = _write(tmp_path / "cog.tif", data, nodata=None, tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4])
    out = upscale_geotiff(_bicubic_model, path, tmp_path / "up.tif", scale=2)
    with rasterio.open(out) as dst:
        assert dst.overviews(1) == [2, 4] and dst.shape == (64, 64)
        assert dst.read(1, out_shape=(16, 16)).shape == (16, 16)
    plain = _write(tmp_path / "plain.tif", data, nodata=None)
    with rasterio.open(upscale_geotiff(_bicubic_model, plain, tmp_path / "plain_up.tif", scale=2)) as dst:
        assert dst.overviews(1) == []


def test_16_bit_grey_output_opens_in_pillow(tmp_path):
    from PIL import Image

    data = np.random.default_rng(8).integers(0, 65535, (1, 150, 150), dtype=np.uint16)
    path = _write(tmp_path / "g16.tif", data, nodata=None, crs=None, transform=rasterio.Affine.identity())
    out = upscale_geotiff(_bicubic_model, path, tmp_path / "up.tif", scale=2)  # 300 x 300: tiled, band-interleaved
    with Image.open(out) as image:
        assert image.tag_v2[284] == 1  # PlanarConfiguration: contiguous (2 is what Pillow cannot decode)
        image.load()
        assert image.mode == "I;16" and image.size == (300, 300)
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(np.asarray(image), dst.read(1))


@pytest.mark.parametrize("dtype, base", [("int32", 1_000_000_000), ("float64", 1e9 + 0.25)])
def test_wide_types_keep_their_precision_through_the_stretch(tmp_path, dtype, base):
    """float32 rounds 1e9 + k to a multiple of 64: the stretch is computed in float64, so an identity 'model' gives
    back the input exactly (at scale 1)."""
    data = (base + np.arange(3 * 6 * 7).reshape(3, 6, 7)).astype(dtype)
    path = _write(tmp_path / "w.tif", data, nodata=None)

    def identity(image, output_size, output_type, **kw):
        return type("Out", (), {"images": image.clone()})

    out = upscale_geotiff(identity, path, tmp_path / "same.tif", scale=1)
    with rasterio.open(out) as dst:
        got = dst.read()
    if dtype == "int32":
        np.testing.assert_array_equal(got, data)
    else:
        np.testing.assert_allclose(got, data, rtol=0, atol=1e-4)


def test_complex_geotiff_is_refused_before_writing(tmp_path):
    path = _write(tmp_path / "c.tif", np.ones((1, 4, 4), np.complex64), nodata=None)
    with pytest.raises(ValueError, match="complex bands"):
        upscale_geotiff(_bicubic_model, path, tmp_path / "c_up.tif", scale=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif"]


def test_palette_geotiff_is_expanded_to_rgb_through_its_colour_table(tmp_path):
    indices = np.zeros((1, 4, 6), np.uint8)
    indices[0, :, 3:] = 1
    indices[0, 0, 0] = 9  # nodata
    path = _write(tmp_path / "p.tif", indices, nodata=9, photometric="palette")
    colours = {0: (10, 200, 30, 255), 1: (250, 40, 120, 255), 9: (0, 0, 0, 0)}
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, colours)
    out = upscale_geotiff(_bicubic_model, path, tmp_path / "rgb.tif", scale=1)  # identity at scale 1
    with rasterio.open(out) as dst, rasterio.open(path) as src:
        assert dst.count == 3 and dst.dtypes == ("uint8",) * 3 and dst.crs == src.crs
        assert dst.colorinterp == (rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                                   rasterio.enums.ColorInterp.blue)  # fmt: skip
        rgb, masks = dst.read(), dst.read_masks()
    expected = np.stack([np.vectorize(lambda i, c=c: colours[i][c])(indices[0]) for c in range(3)])
    valid = indices[0] != 9
    np.testing.assert_array_equal(rgb[:, valid], expected[:, valid])
    assert (masks[:, ~valid] == 0).all() and (masks[:, valid] == 255).all()


def test_uint8_gcp_tiff_keeps_its_gcps_in_the_cli_and_a_palette_says_it_is_expanded(tmp_path, capsys):
    """End to end: a uint8 GCP TIFF once took the plain-image path and lost its GCPs."""
    from rasterio.control import GroundControlPoint

    from neurop_diff_diffusers.cli import commands as cli

    gcps = [GroundControlPoint(row=0, col=0, x=10.0, y=50.0), GroundControlPoint(row=8, col=10, x=11.0, y=49.0)]
    data = np.random.default_rng(9).integers(0, 255, (3, 8, 10), dtype=np.uint8)
    path = _write(tmp_path / "gcp.tif", data, nodata=None, crs="EPSG:4326", gcps=gcps)
    assert cli.main(["upscale", str(path), "--scale", "2", "--model", "preset:tiny", "--steps", "1"]) == 0
    with rasterio.open(tmp_path / "gcp_x2.tif") as dst:
        assert [(g.row, g.col, g.x, g.y) for g in dst.gcps[0]] == [(0, 0, 10, 50), (16, 20, 11, 49)]
    pal = _write(tmp_path / "pal.tif", np.zeros((1, 6, 6), np.uint8), nodata=None, photometric="palette")
    with rasterio.open(pal, "r+") as dst:
        dst.write_colormap(1, {0: (10, 200, 30, 255)})
    capsys.readouterr()
    assert cli.main(["upscale", str(pal), "--scale", "2", "--model", "preset:tiny", "--steps", "1"]) == 0
    warnings_ = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings_ == [f"neurop-diff: warning: {pal}: palette (colour-table) raster: expanded to RGB through its "
                         "colour table; the output is an RGB GeoTIFF (3 uint8 bands, no colour table)"]  # fmt: skip
    with rasterio.open(tmp_path / "pal_x2.tif") as dst:
        assert dst.count == 3 and dst.crs.to_epsg() == 32633 and dst.shape == (12, 12)

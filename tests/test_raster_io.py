"""The safe raster opener: allow-listed drivers, local files only, no sidecars."""

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from conftest import sparse_many_band_tiff  # noqa: E402
from neurop_diff_diffusers.io.rasters import check_raster_name, open_raster  # noqa: E402


def _geotiff(path, bands=3):
    profile = dict(driver="GTiff", width=8, height=8, count=bands, dtype="uint8", crs="EPSG:32633")
    with rasterio.open(path, "w", transform=from_origin(500000, 4000000, 10, 10), **profile) as dst:
        dst.write(np.arange(bands * 64, dtype=np.uint8).reshape(bands, 8, 8))


def test_opens_a_geotiff(tmp_path):
    _geotiff(tmp_path / "a.tif")
    with open_raster(tmp_path / "a.tif") as src:
        assert (src.driver, src.count, src.height, src.width) == ("GTiff", 3, 8, 8)
        assert src.read(1)[0, 1] == 1


def test_vrt_named_tif_cannot_read_another_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET" * 20)
    evil = tmp_path / "evil.tif"
    evil.write_text(
        '<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1" '
        f'subClass="VRTRawRasterBand"><SourceFilename relativetoVRT="0">{secret}</SourceFilename>'
        "<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>8</LineOffset></VRTRasterBand>"
        "</VRTDataset>"
    )
    with rasterio.open(evil) as src:  # what plain GDAL does: the secret's bytes as pixels
        assert bytes(src.read(1)[0]) == b"SECRETSE"
    with pytest.raises(ValueError, match="not a raster of an allowed format"):
        with open_raster(evil):
            pass


@pytest.mark.parametrize(
    "name", ["/vsicurl/http://127.0.0.1/a.tif", "/vsizip/a.zip/a.tif", "http://127.0.0.1/a.tif", "GTIFF_DIR:1:a.tif"]
)
def test_special_names_refused(name):
    with pytest.raises(ValueError, match="only local files are read"):
        check_raster_name(name)


def test_folder_and_missing_refused(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        check_raster_name(tmp_path)
    with pytest.raises(ValueError, match="not a regular file"):
        check_raster_name(tmp_path / "missing.tif")
    with pytest.raises(TypeError, match="`path`"):
        check_raster_name(3)


def test_sidecar_metadata_is_not_read(tmp_path):
    _geotiff(tmp_path / "a.tif")
    (tmp_path / "a.tif.aux.xml").write_text(
        '<PAMDataset><Metadata><MDI key="INJECTED">yes</MDI></Metadata></PAMDataset>'
    )
    with rasterio.open(tmp_path / "a.tif") as src:  # GDAL's default reads the sidecar
        assert src.tags().get("INJECTED") == "yes"
    with open_raster(tmp_path / "a.tif") as src:
        assert "INJECTED" not in src.tags()


# ---- headers, budgets, routing: refused before any pixel is read ----

from rasterio.control import GroundControlPoint  # noqa: E402
from rasterio.rpc import RPC  # noqa: E402
from rasterio.transform import RPCTransformer  # noqa: E402

from neurop_diff_diffusers.io.rasters import (  # noqa: E402
    check_budget,
    check_header,
    inspect_raster,
    needs_raster_path,
    output_georeferencing,
    route_tiff,
    tiff_geo_tags,
)


def _plain(path, data, **extra):
    bands, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype=data.dtype.name, **extra) as d:
        d.write(data)
    return path


def _rpc(line_off=4.0, samp_off=5.0):
    """An affine-like RPC: longitude follows the sample, latitude the line (enough to check the grid mapping)."""
    unit = [1.0] + [0.0] * 19
    return RPC(
        height_off=0, height_scale=100, lat_off=50, lat_scale=0.1, long_off=10, long_scale=0.1,
        line_off=line_off, line_scale=4, samp_off=samp_off, samp_scale=5,
        line_num_coeff=[0.0, 0.0, -1.0] + [0.0] * 17, line_den_coeff=unit,
        samp_num_coeff=[0.0, 1.0] + [0.0] * 18, samp_den_coeff=unit, err_bias=-1, err_rand=-1,
    )  # fmt: skip


GCPS = [
    GroundControlPoint(row=0, col=0, x=10.0, y=50.0, z=0.0),
    GroundControlPoint(row=0, col=10, x=11.0, y=50.0, z=0.0),
    GroundControlPoint(row=8, col=0, x=10.0, y=49.0, z=0.0),
]


def test_inspect_reads_the_header(tmp_path):
    path = tmp_path / "cog.tif"
    data = np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64)
    _plain(path, data, crs="EPSG:32633", transform=from_origin(5e5, 4e6, 10, 10), nodata=0, compress="deflate",
           tiled=True, blockxsize=32, blockysize=32)  # fmt: skip
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4])
    header = inspect_raster(path)
    assert (header.driver, header.bands, header.height, header.width) == ("GTiff", 4, 64, 64)
    assert header.dtypes == ("uint16",) * 4 and header.nodata == 0 and header.has_mask
    assert header.compression == "deflate" and header.block_shapes == ((32, 32),) * 4
    assert header.overviews == (2, 4) and header.transform == (10.0, 0.0, 5e5, 0.0, -10.0, 4e6)
    assert "32633" in header.crs and header.gcp_count == 0 and not header.has_rpcs
    assert header.is_georeferenced and header.colorinterp[:3] == ("gray", "undefined", "undefined")


def test_budget_counts_bands_from_the_header(tmp_path):
    path = sparse_many_band_tiff(tmp_path / "bands.tif")
    assert path.stat().st_size < 2_000_000
    header = inspect_raster(path)
    assert header.bands == 2000
    with pytest.raises(ValueError) as err:
        check_budget(header, (2048, 2048), 4096 * 4096)
    assert str(err.value) == (
        "the input needs 2000 bands x 1024x1024 pixels x 5 bytes = 10.5 GB, over --max-pixels 16777216 (which "
        "allows 16777216 pixels x 4 bands x 5 bytes = 335.5 MB); raise it"
    )
    check_budget(header, None, 2000 * 1024 * 1024 // 4)  # the input stage alone fits exactly
    check_budget(header, (2048, 2048), 2000 * 2048 * 2048 // 4)  # both stages fit exactly
    with pytest.raises(ValueError, match=r"^the output needs 2000 bands x 2048x2048 pixels x 5 bytes = 41.9 GB"):
        check_budget(header, (2048, 2048), 2000 * 2048 * 2048 // 4 - 1)


def test_an_rgb_nir_scene_fits_the_pixel_limit(tmp_path):
    header = inspect_raster(_plain(tmp_path / "a.tif", np.zeros((4, 8, 8), np.uint16)))
    check_budget(header, (16, 16), 256)  # 4 bands at exactly the limit
    with pytest.raises(ValueError, match="over --max-pixels 255"):
        check_budget(header, (16, 16), 255)


@pytest.mark.parametrize(
    "dtype, extra, match",
    [
        ("complex64", {}, r"^complex bands \(complex64\) are refused"),
        ("uint8", {"count": 2}, r"^has 2 bands; the model needs 1 \(grey\) or at least 3"),
    ],
)
def test_check_header_refusals(tmp_path, dtype, extra, match):
    data = np.ones((extra.get("count", 1), 6, 6), dtype=dtype)
    path = _plain(tmp_path / "x.tif", data, photometric="palette" if extra.get("palette") else "minisblack")
    if extra.get("palette"):
        with rasterio.open(path, "r+") as dst:
            dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255)})
    with pytest.raises(ValueError, match=match):
        check_header(inspect_raster(path))


@pytest.mark.parametrize("dtype", ["int32", "float64"])
def test_wide_types_are_accepted_with_a_warning(tmp_path, dtype):
    notes = check_header(inspect_raster(_plain(tmp_path / "w.tif", np.ones((3, 6, 6), dtype))))
    assert len(notes) == 1 and notes[0].startswith(f"{dtype} bands: each band is stretched to [0, 1] in float64")
    assert check_header(inspect_raster(_plain(tmp_path / "n.tif", np.ones((3, 6, 6), "uint16")))) == []


def test_routing_by_header(tmp_path):
    rgb = np.ones((3, 8, 10), np.uint8)
    cases = {
        "plain_rgb": (_plain(tmp_path / "rgb.tif", rgb), False),
        "rgba": (_plain(tmp_path / "rgba.tif", np.ones((4, 8, 10), np.uint8), photometric="rgb", alpha="YES"), False),
        "rgb_nir": (_plain(tmp_path / "rgbn.tif", np.ones((4, 8, 10), np.uint8), photometric="minisblack"), True),
        "gcps": (_plain(tmp_path / "gcp.tif", rgb, gcps=GCPS, crs="EPSG:4326"), True),
        "rpcs": (_plain(tmp_path / "rpc.tif", rgb, rpcs=_rpc()), True),
        "uint16": (_plain(tmp_path / "u16.tif", rgb.astype(np.uint16)), True),
        "nodata": (_plain(tmp_path / "nd.tif", rgb, nodata=0), True),
        "crs": (_plain(tmp_path / "crs.tif", rgb, crs="EPSG:32633", transform=from_origin(0, 0, 1, 1)), True),
    }
    got = {name: (route_tiff(path), needs_raster_path(inspect_raster(path))) for name, (path, _) in cases.items()}
    assert got == {name: (want, want) for name, (_, want) in cases.items()}


def test_a_tif_that_is_no_tiff_is_refused_before_gdal_or_pil(tmp_path):
    evil = tmp_path / "evil.tif"
    evil.write_text('<VRTDataset rasterXSize="8" rasterYSize="8"></VRTDataset>')
    with pytest.raises(ValueError, match=r"^not a TIFF file \(a \.tif / \.tiff input must be a TIFF or GeoTIFF"):
        route_tiff(evil)
    png = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(png)
    assert route_tiff(png) is False  # not a TIFF: the plain-image path


def test_a_geotiff_named_png_is_routed_by_its_content(tmp_path):
    path = _plain(tmp_path / "scene.tif", np.ones((3, 4, 4), np.uint8), crs="EPSG:32633",
                  transform=from_origin(0, 0, 1, 1))  # fmt: skip
    renamed = path.rename(tmp_path / "scene.png")
    assert route_tiff(renamed) is True


def test_without_rasterio_a_georeferenced_tiff_is_refused_naming_the_extra(tmp_path, monkeypatch):
    geo = _plain(tmp_path / "g.tif", np.ones((3, 4, 4), np.uint8), crs="EPSG:32633", transform=from_origin(0, 0, 1, 1))
    rpc = _plain(tmp_path / "r.tif", np.ones((3, 4, 4), np.uint8), rpcs=_rpc())
    gcp = _plain(tmp_path / "c.tif", np.ones((3, 4, 4), np.uint8), gcps=GCPS, crs="EPSG:4326")
    plain = _plain(tmp_path / "p.tif", np.ones((3, 4, 4), np.uint8))
    assert set(tiff_geo_tags(geo)) >= {"ModelPixelScale", "ModelTiepoint", "GeoKeyDirectory"}
    assert "RPCCoefficient" in tiff_geo_tags(rpc) and "ModelTiepoint" in tiff_geo_tags(gcp)
    assert tiff_geo_tags(plain) == []
    monkeypatch.setitem(__import__("sys").modules, "rasterio", None)  # as if the package were not installed
    for path in (geo, rpc, gcp):
        with pytest.raises(ValueError, match=r"rasterio is not installed: pip install 'neurop-diff-diffusers\[geo\]'"):
            route_tiff(path)
    assert route_tiff(plain) is False


def test_gcps_are_scaled_to_the_output_grid(tmp_path):
    path = _plain(tmp_path / "gcp.tif", np.ones((3, 8, 10), np.uint8), gcps=GCPS, crs="EPSG:4326")
    geo = output_georeferencing(inspect_raster(path), (20, 15))  # x2.5 rows, x1.5 columns
    assert "transform" not in geo and geo["crs"] == rasterio.crs.CRS.from_epsg(4326)
    assert [(g.row, g.col, g.x, g.y) for g in geo["gcps"]] == [(0, 0, 10, 50), (0, 15, 11, 50), (20, 0, 10, 49)]


def test_rpcs_map_each_output_pixel_to_the_ground_point_it_covers(tmp_path):
    path = _plain(tmp_path / "rpc.tif", np.ones((1, 8, 10), np.uint16), rpcs=_rpc())
    geo = output_georeferencing(inspect_raster(path), (20, 15))
    before, after = RPCTransformer(_rpc()), RPCTransformer(geo["rpcs"])
    for row, col in [(0, 0), (3.25, 7.5), (8, 10)]:  # corner coordinates of the input grid
        np.testing.assert_allclose(
            after.xy(row * 2.5, col * 1.5, offset="ul"), before.xy(row, col, offset="ul"), rtol=0, atol=1e-9
        )


def test_palette_is_accepted_with_a_warning_and_counted_as_rgb(tmp_path):
    path = _plain(tmp_path / "p.tif", np.ones((1, 6, 6), np.uint8), photometric="palette")
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255)})
    header = inspect_raster(path)
    assert header.has_palette and header.working_bands == 3
    assert check_header(header) == [
        "palette (colour-table) raster: expanded to RGB through its colour table; the output is an RGB GeoTIFF "
        "(3 uint8 bands, no colour table)"
    ]
    with pytest.raises(ValueError, match=r"^the output needs 3 bands x 12x12 pixels"):
        check_budget(header, (12, 12), 107)  # 3 x 144 > 4 x 107
    assert not needs_raster_path(header)  # without georeferencing: a plain image (PIL expands it, as for a PNG)


def test_a_geotiff_gdal_cannot_open_is_not_handed_to_pil(tmp_path, monkeypatch):
    from neurop_diff_diffusers.io import rasters as raster_io

    path = _plain(
        tmp_path / "g.tif", np.ones((3, 4, 4), np.uint8), crs="EPSG:32633", transform=from_origin(0, 0, 1, 1)
    )

    def gdal_fails(name):
        raise ValueError(f"`{name}`: not a raster of an allowed format (GTiff): TIFFReadDirectory failed")

    monkeypatch.setattr(raster_io, "inspect_raster", gdal_fails)
    with pytest.raises(
        ValueError, match=r"^a GeoTIFF \(ModelPixelScale, .*\) that GDAL cannot open: TIFFReadDirectory"
    ):
        route_tiff(path)
    plain = _plain(tmp_path / "p.tif", np.ones((3, 4, 4), np.uint8))
    assert route_tiff(plain) is False  # no georeferencing to lose: PIL may read it


# ---- names: a real local file whose name looks like GDAL syntax, and names that would forge a line ----


def test_a_local_file_named_like_gdal_syntax_is_read_as_that_file(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from conftest import run_cli
    from neurop_diff_diffusers.io.rasters import inspect_raster

    monkeypatch.chdir(tmp_path)
    _geotiff(tmp_path / "GTIFF_DIR:1:x.tif")
    assert inspect_raster(Path("./GTIFF_DIR:1:x.tif")).width == 8  # `Path` prints it as GTIFF_DIR:1:x.tif
    with open_raster("./GTIFF_DIR:1:x.tif") as src:
        assert src.name == str(tmp_path / "GTIFF_DIR:1:x.tif")  # GDAL was handed the absolute name
    with pytest.raises(ValueError, match="only local files are read"):
        check_raster_name("GTIFF_DIR:1:missing.tif")  # no such file: the name is refused, never handed to GDAL
    args = ("--scale", "2", "--model", "preset:tiny", "--steps", "1", "--prior-only")
    assert run_cli("upscale", "./GTIFF_DIR:1:x.tif", "-o", "out.tif", *args) == 0
    with rasterio.open(tmp_path / "out.tif") as dst:
        assert (dst.width, dst.count) == (16, 3)
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "suffix, content", [(".tif", b"II*\x00" + bytes(40)), (".png", b"\x89PNG damaged")], ids=["tif", "png"]
)
def test_a_newline_in_a_file_name_never_forges_a_second_line(tmp_path, capsys, no_model, suffix, content):
    from conftest import one_error_line, run_cli

    bad = tmp_path / f"a\nneurop-diff: all good{suffix}"
    bad.write_bytes(content)
    assert run_cli("upscale", bad, "-o", tmp_path / f"o{suffix}", "--scale", "2") == 2
    message = one_error_line(capsys)  # exactly one line, which is an error
    assert "a\\nneurop-diff: all good" in message


def test_a_warning_naming_a_file_is_one_line(tmp_path, capsys):
    from pathlib import Path

    from neurop_diff_diffusers.jobs.upscale_file import geotiff_header

    path = tmp_path / "p\nneurop-diff: fine.tif"
    profile = dict(driver="GTiff", width=8, height=8, count=1, dtype="uint8", photometric="palette")
    with rasterio.open(path, "w", crs="EPSG:32633", transform=from_origin(0, 80, 10, 10), **profile) as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
        dst.write_colormap(1, {0: (1, 2, 3, 255)})
    geotiff_header(Path(path))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("neurop-diff: warning: ") and "\\nneurop-diff: fine" in lines[0]


# ---- the header's budgets, checked before GDAL parses a tag ----


def _handmade_tiff(path, extra_tags, size=16):
    """A classic little-endian TIFF of ``size`` x ``size`` uint8 pixels in one strip, with ``extra_tags``
    ``(tag, type, count, value bytes)`` (values of more than 4 bytes are stored after the directory)."""
    import struct

    def short(v):
        return struct.pack("<H", v)

    base = [(256, 3, 1, short(size)), (257, 3, 1, short(size)), (258, 3, 1, short(8)), (259, 3, 1, short(1))]
    base += [(262, 3, 1, short(1)), (273, 4, 1, None), (277, 3, 1, short(1)), (278, 3, 1, short(size))]
    base += [(279, 4, 1, struct.pack("<I", size * size))]
    entries = sorted(base + list(extra_tags), key=lambda e: e[0])
    data_start = 8 + 2 + 12 * len(entries) + 4
    blob, fields = b"", []
    for tag, kind, count, value in entries:
        if value is not None and len(value) > 4:
            fields.append((tag, kind, count, struct.pack("<I", data_start + len(blob))))
            blob += value + b"\0" * (len(value) % 2)
        else:
            fields.append((tag, kind, count, value))
    pixels_at = struct.pack("<I", data_start + len(blob))
    ifd = struct.pack("<H", len(fields))
    ifd += b"".join(
        struct.pack("<HHI", t, k, c) + (pixels_at if v is None else v.ljust(4, b"\0")) for t, k, c, v in fields
    )
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + blob + bytes(size * size))
    return path


def _metadata_xml(items, value="v"):
    body = "".join(f'<Item name="k{i}">{value}</Item>' for i in range(items))
    return f"<GDALMetadata>{body}</GDALMetadata>".encode() + b"\0"


def test_a_tiff_within_the_header_budgets_opens(tmp_path):
    xml = _metadata_xml(50)
    path = _handmade_tiff(tmp_path / "ok.tif", [(270, 2, 6, b"hello\0"), (42112, 2, len(xml), xml)])
    with open_raster(path) as src:
        assert src.tags()["k49"] == "v" and src.read().shape == (1, 16, 16)


@pytest.mark.parametrize(
    "tags, limit",
    [
        ("items", "holds 10001 items or more, more than the 10000 allowed (MAX_METADATA_ITEMS)"),
        ("description", "more than 1048576 bytes, more than allowed (MAX_METADATA_BYTES)"),
        ("many", "image 1 of the TIFF has 609 tags, more than the 512 allowed (MAX_TIFF_TAGS)"),
    ],
)
def test_a_header_over_budget_is_refused_before_gdal_parses_it(tmp_path, capsys, no_model, monkeypatch, tags, limit):
    """A 30 MB 16 x 16 px GeoTIFF with 100,000 metadata items kept GDAL busy for minutes; these are small versions."""
    import struct

    from conftest import one_error_line, run_cli

    if tags == "items":  # 10,001 short items: 200 kB, within the byte budget
        xml = _metadata_xml(10_001)
        extra = [(42112, 2, len(xml), xml)]
    elif tags == "description":
        extra = [(270, 2, (1 << 20) + 1, b"x" * (1 << 20) + b"\0")]
    else:  # private tags: nothing GDAL knows, only their number
        extra = [(64000 + i, 3, 1, struct.pack("<H", i)) for i in range(600)]
    path = _handmade_tiff(tmp_path / "meta.tif", extra)
    opened = []
    monkeypatch.setattr(rasterio, "open", lambda *a, **k: opened.append(a) or pytest.fail("GDAL opened it"))
    with pytest.raises(ValueError, match=limit.replace("(", r"\(").replace(")", r"\)")):
        with open_raster(path):
            pass
    assert run_cli("upscale", path, "-o", tmp_path / "o.tif", "--scale", "2") == 2
    message = one_error_line(capsys)
    assert message.startswith(f"{path}: ") and message.endswith(limit)
    assert not opened and sorted(p.name for p in tmp_path.iterdir()) == ["meta.tif"]


def test_too_many_images_in_the_chain_are_refused(tmp_path, monkeypatch):
    from neurop_diff_diffusers.io import tiff_header

    path = tmp_path / "ovr.tif"
    profile = dict(driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs="EPSG:32633")
    with rasterio.open(path, "w", transform=from_origin(0, 640, 10, 10), **profile) as dst:
        dst.write(np.zeros((1, 64, 64), np.uint8))
        dst.build_overviews([2, 4, 8])  # 4 images in the chain
    with open_raster(path) as src:
        assert src.overviews(1) == [2, 4, 8]
    monkeypatch.setattr(tiff_header, "MAX_TIFF_IMAGES", 3)
    with pytest.raises(ValueError, match=r"chains more than 3 images .* \(MAX_TIFF_IMAGES\)"):
        with open_raster(path):
            pass

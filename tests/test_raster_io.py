"""The safe raster opener: allow-listed drivers, local files only, no sidecars."""

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from neurop_diff_diffusers.raster_io import check_raster_name, open_raster  # noqa: E402


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

"""Loading: local folders, splits, hub names (download mocked), offline errors, normalised columns, HR preparation."""

from __future__ import annotations

import functools
import re
import socket
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from neurop_diff_diffusers.data import (
    HUB_DATASET_IDS,
    HubUnavailableError,
    load_image_folder,
    load_rs_dataset,
    loading,
    preprocess_hr,
    select_split,
    split_file_names,
    split_indices,
    split_to_indices,
    ucmerced_convention_split,
)

# Width x height of the UCMerced images in ../shared/data that are not 256 x 256 (SOURCES.md).
UCMERCED_ODD_SIZES = {
    "baseballdiamond/baseballdiamond15.tif": (256, 253),
    "golfcourse/golfcourse04.tif": (256, 251),
    "harbor/harbor10.tif": (257, 257),
    "mobilehomepark/mobilehomepark22.tif": (253, 256),
    "parkinglot/parkinglot20.tif": (256, 247),
    "tenniscourt/tenniscourt14.tif": (247, 256),
}


@functools.cache
def _load_all(path: Path) -> datasets.Dataset:
    return load_rs_dataset(path, "all")


@pytest.fixture
def ucmerced(shared_data: Path) -> datasets.Dataset:
    return _load_all(shared_data / "UCMerced_LandUse")


def _synthetic(n_per_class: int = 5, classes: tuple[str, ...] = ("farm", "forest", "river")) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images, names = [], []
    for cls in classes:
        for _ in range(n_per_class):
            images.append(PIL.Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)))  # grey, mode "L"
            names.append(cls)
    return datasets.Dataset.from_dict({"img": images, "category": names, "extra": list(range(len(names)))})


# ---------------------------------------------------------------- local folders


def test_ucmerced_folder_loads_735_images_in_21_classes(ucmerced):
    assert len(ucmerced) == 735
    assert ucmerced.column_names == ["image", "label", "file_name"]
    assert isinstance(ucmerced.features["label"], datasets.ClassLabel)
    assert ucmerced.features["label"].num_classes == 21
    assert ucmerced.features["label"].names[0] == "agricultural"
    assert set(Counter(ucmerced["label"]).values()) == {35}
    assert ucmerced["file_name"][:2] == ["agricultural/agricultural00.tif", "agricultural/agricultural01.tif"]
    first = ucmerced[0]["image"]
    assert isinstance(first, PIL.Image.Image) and first.mode == "RGB" and first.size == (256, 256)


@pytest.mark.parametrize(
    ("folder", "count", "classes", "size"), [("RSSCN7", 210, 7, 400), ("AID_150px", 300, 30, 150)]
)
def test_rsscn7_and_aid_folders_load(shared_data, folder, count, classes, size):
    ds = load_rs_dataset(shared_data / folder, "all")
    assert len(ds) == count
    assert ds.features["label"].num_classes == classes
    assert set(Counter(ds["label"]).values()) == {count // classes}
    assert ds[count - 1]["image"].size == (size, size)


def test_local_folder_skips_unreadable_images_with_a_counted_warning(tmp_path):
    for cls, color in (("beach", (200, 180, 100)), ("forest", (20, 120, 30))):
        (tmp_path / cls).mkdir()
        PIL.Image.new("RGB", (20, 16), color).save(tmp_path / cls / "b.png")
        PIL.Image.new("RGB", (20, 16), color).save(tmp_path / cls / "a.tif")
    (tmp_path / "forest" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "forest" / "notes.txt").write_text("ignored: not an image extension")
    (tmp_path / ".hidden").mkdir()
    PIL.Image.new("RGB", (4, 4)).save(tmp_path / ".hidden" / "c.png")

    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image file\(s\).*forest/broken.jpg"):
        ds = load_image_folder(tmp_path)
    assert ds["file_name"] == ["beach/a.tif", "beach/b.png", "forest/a.tif", "forest/b.png"]
    assert ds["label"] == [0, 0, 1, 1]
    assert ds.features["label"].names == ["beach", "forest"]
    assert ds[3]["image"].getpixel((0, 0)) == (20, 120, 30)


def test_local_copy_of_a_hub_dataset_loads(tmp_path):
    _synthetic().save_to_disk(str(tmp_path / "copy"))
    ds = load_rs_dataset(tmp_path / "copy", "all")
    assert len(ds) == 15 and ds.features["label"].names == ["farm", "forest", "river"]


def test_local_parquet_copy_of_a_hub_dataset_loads(tmp_path):
    (tmp_path / "UC_Merced" / "data").mkdir(parents=True)
    _synthetic().to_parquet(str(tmp_path / "UC_Merced" / "data" / "train-00000-of-00001.parquet"))
    ds = load_rs_dataset(tmp_path / "UC_Merced", "all", cache_dir=tmp_path / "cache")
    assert len(ds) == 15 and ds.features["label"].names == ["farm", "forest", "river"]
    assert ds[14]["image"].mode == "RGB"


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such folder"):
        load_rs_dataset(str(tmp_path / "nowhere"))


def test_a_folder_without_images_or_data_files_is_refused_before_datasets_scans_it(tmp_path, monkeypatch):
    for i in range(50):
        (tmp_path / "empty" / f"class{i}").mkdir(parents=True)
    (tmp_path / "empty" / "class0" / "notes.md").write_text("no data")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets was asked to scan it"))
    with pytest.raises(ValueError, match=r"No image \(.tif, .*\) or data file \(.parquet, .*\) under '.*empty'"):
        load_rs_dataset(str(tmp_path / "empty"), "all")


# ---------------------------------------------------------------- splits


def test_split_is_deterministic_stratified_disjoint_and_covering(ucmerced):
    parts = split_indices(ucmerced, test_fraction=0.2, seed=0)
    assert parts == split_indices(ucmerced, test_fraction=0.2, seed=0)
    assert parts != split_indices(ucmerced, test_fraction=0.2, seed=1)
    train, test = set(parts["train"]), set(parts["test"])
    assert not train & test
    assert train | test == set(range(len(ucmerced)))
    labels = ucmerced["label"]
    assert set(Counter(labels[i] for i in test).values()) == {7}  # round(0.2 * 35) per class
    assert set(Counter(labels[i] for i in train).values()) == {28}


def test_split_does_not_depend_on_the_other_classes(ucmerced):
    """Per-class ordering by sha256(seed:file_name): a subset of the classes keeps its split."""
    agricultural = ucmerced.select(range(35))
    names = split_file_names(agricultural, 0.2, seed=3)
    full = split_file_names(ucmerced, 0.2, seed=3)
    assert set(names["test"]) == {n for n in full["test"] if n.startswith("agricultural/")}


def test_split_can_be_recorded_and_replayed(shared_data, ucmerced):
    path = shared_data / "UCMerced_LandUse"
    test = load_rs_dataset(path, "test", test_fraction=0.2, seed=0)
    recorded = split_file_names(ucmerced, 0.2, seed=0)
    assert test["file_name"] == recorded["test"]
    assert load_rs_dataset(path, recorded["test"])["file_name"] == recorded["test"]
    indices = split_indices(ucmerced, 0.2, seed=0)["test"]
    assert select_split(ucmerced, indices)["file_name"] == recorded["test"]
    assert split_to_indices(ucmerced, recorded["test"]) == indices == split_to_indices(ucmerced, "test")
    assert len(load_rs_dataset(path, "train")) + len(test) == 735


def test_ucmerced_convention_split(ucmerced):
    parts = ucmerced_convention_split(ucmerced)
    assert len(parts["train"]) == 21 * 28 and len(parts["test"]) == 21 * 7
    numbers = [int(re.search(r"(\d+)\.tif$", n).group(1)) for n in ucmerced["file_name"]]
    assert {numbers[i] for i in parts["train"]} == set(range(28))
    assert {numbers[i] for i in parts["test"]} == set(range(28, 35))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "validation"}, ValueError, "`split` must be one of"),
        ({"split": [0, "a"]}, TypeError, "only ints"),
        ({"split": [99]}, ValueError, r"\[0, 15\)"),
        ({"split": ["farm/none.png"]}, ValueError, "not in the dataset"),
        ({"test_fraction": 0.0}, ValueError, r"`test_fraction` must be in \(0, 1\)"),
        ({"test_fraction": 1.5}, ValueError, r"`test_fraction` must be in \(0, 1\)"),
    ],
)
def test_bad_split_arguments(kwargs, error, match):
    ds = _synthetic().add_column("file_name", [f"{i}.png" for i in range(15)])
    with pytest.raises(error, match=match):
        load_rs_dataset(ds, **kwargs)


# ---------------------------------------------------------------- synthetic datasets and the hub


def test_synthetic_dataset_goes_through_the_same_path():
    ds = load_rs_dataset(_synthetic(), "train", test_fraction=0.2, seed=0)
    assert ds.column_names == ["image", "label", "file_name"]
    assert ds.features["label"].names == ["farm", "forest", "river"]
    assert len(ds) == 12  # 4 of 5 per class
    assert ds[0]["image"].mode == "RGB"
    assert ds["file_name"] == [None] * 12


def test_dataset_without_labels_gets_a_single_class():
    ds = load_rs_dataset(datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (4, 4))] * 5}), "all")
    assert ds.features["label"].names == ["all"] and ds["label"] == [0] * 5


@pytest.mark.parametrize(("name", "repo_id"), sorted(HUB_DATASET_IDS.items()) + [("UCMerced", "blanchon/UC_Merced")])
def test_hub_names_resolve_to_their_ids(monkeypatch, name, repo_id):
    calls = []

    def fake_download(repo, *, cache_dir=None, revision=None):
        calls.append((repo, cache_dir, revision))
        return datasets.DatasetDict({"train": _synthetic()})

    monkeypatch.setattr(loading, "_download_hub_dataset", fake_download)
    ds = load_rs_dataset(name, "test", cache_dir="/tmp/cache")
    assert calls == [(repo_id, "/tmp/cache", None)]
    assert len(ds) == 3 and ds.column_names == ["image", "label", "file_name"]


def test_other_hub_ids_pass_through(monkeypatch):
    repos = []
    monkeypatch.setattr(loading, "_download_hub_dataset", lambda repo, **_: repos.append(repo) or _synthetic())
    assert len(load_rs_dataset("me/scenes", "all")) == 15
    assert repos == ["me/scenes"]


def test_offline_mode_fails_fast_with_local_copy_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="use a local copy") as info:
        load_rs_dataset("ucmerced", cache_dir=tmp_path)
    assert time.monotonic() - start < 5.0
    assert "hf download blanchon/UC_Merced --repo-type dataset" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def _no_download(*args, **kwargs):
    raise AssertionError("the download must not start when the Hub is unreachable")


@pytest.mark.parametrize("server", ["refusing", "silent"])
def test_unreachable_hub_fails_fast(monkeypatch, tmp_path, server):
    """A closed port (refused at once) and a server that accepts but never answers (bounded by the probe timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if server == "refusing":
        listener.close()
    else:
        listener.listen(4)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(loading, "HUB_PROBE_TIMEOUT", 0.5)
    monkeypatch.setattr(datasets, "load_dataset", _no_download)
    start = time.monotonic()
    try:
        with pytest.raises(HubUnavailableError, match="use a local copy"):
            load_rs_dataset("rsscn7", cache_dir=tmp_path)
    finally:
        listener.close()
    assert time.monotonic() - start < 3.0


# ---------------------------------------------------------------- HR preparation


@pytest.mark.parametrize(("size", "resolution"), [((600, 600), 256), ((400, 400), 256), ((300, 280), 128)])
def test_preprocess_hr_crops_and_downsamples(size, resolution):
    assert preprocess_hr(PIL.Image.new("RGB", size), resolution).size == (resolution, resolution)


def test_preprocess_hr_centre_crops_without_distortion():
    array = np.zeros((400, 600, 3), dtype=np.uint8)
    array[:, 100:500] = 255  # the centre square is white, the sides black
    out = np.asarray(preprocess_hr(PIL.Image.fromarray(array), 256))
    assert out.shape == (256, 256, 3) and out.min() == 255


def test_preprocess_hr_ucmerced_odd_sizes(shared_data):
    folder = shared_data / "UCMerced_LandUse"
    for name, size in UCMERCED_ODD_SIZES.items():
        image = PIL.Image.open(folder / name)
        assert image.size == size
        out = preprocess_hr(image, 256)
        assert out.size == (256, 256) and out.mode == "RGB"
        if min(size) >= 256:
            continue  # harbor10, 257 x 257: centre square resized to 256 like any larger image
        # a side < 256: never resampled, real pixels in the middle; the mirror padding only adds borders
        width, height = image.size
        left, top = (256 - min(width, 256)) // 2, (256 - min(height, 256)) // 2
        crop_l, crop_t = (width - min(width, 256)) // 2, (height - min(height, 256)) // 2
        original = np.asarray(image.convert("RGB"))[crop_t : crop_t + 200, crop_l : crop_l + 200]
        np.testing.assert_array_equal(np.asarray(out)[top : top + 200, left : left + 200], original)


def test_preprocess_hr_never_upsamples(shared_data):
    image = PIL.Image.open(shared_data / "AID_150px" / "Airport" / "airport_1.jpg")
    assert preprocess_hr(image, 128).size == (128, 128)
    assert preprocess_hr(image, 256, undersized="keep").size == (150, 150)
    padded = np.asarray(preprocess_hr(image, 256))
    assert padded.shape == (256, 256, 3)
    np.testing.assert_array_equal(padded[53:203, 53:203], np.asarray(image.convert("RGB")))
    with pytest.raises(ValueError, match="never upsampled"):
        preprocess_hr(image, 256, undersized="error")


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"resolution": 0}, "positive int"), ({"undersized": "stretch"}, "`undersized` must be")]
)
def test_preprocess_hr_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        preprocess_hr(PIL.Image.new("RGB", (8, 8)), **kwargs)
